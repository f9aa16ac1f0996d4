//! The Redis limiter: the scripts of `script.rs` run over the shared connection of
//! `crate::redis_conn` (one per limiter, used by every worker, replaced when it breaks).

use std::fmt;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::aio::ConnectionLike;
use redis::cluster_routing::Slot;
use redis::{RedisError, Script, ScriptInvocation};

use super::script;
use super::{MAX_TOLERANCE_NS, RedisAnswer, RedisCheck, RedisFailure, RedisSettings};
use crate::redis_conn::{Conn, RedisConn};

/// Rate-limit decisions in Redis; see the module docs. Cheap to share (`Arc` it): every
/// worker uses the same connection.
pub struct RedisLimiter {
    redis: RedisConn,
    decide_script: Script,
    give_back_script: Script,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("cluster", &self.redis.is_cluster())
            .field("timeout", &self.redis.timeout())
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// No I/O: connects lazily on first use, from whichever runtime calls first. Errs on a
    /// malformed URL, on several URLs without `cluster`, on no URL at all, and on a CA with a
    /// URL that is not `rediss://`.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        Ok(Self {
            redis: RedisConn::new(settings)?,
            decide_script: Script::new(script::DECIDE),
            give_back_script: Script::new(script::GIVE_BACK),
        })
    }

    /// Whether the last decision reached Redis (true before the first one).
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.redis.is_healthy()
    }

    /// One decision for one request: every check admitted, or none (nothing written when one
    /// refuses). Bounded by the settings' timeout.
    pub async fn decide(&self, checks: &[RedisCheck<'_>]) -> Result<RedisAnswer, RedisFailure> {
        if checks.is_empty() {
            return Ok(RedisAnswer::Admitted(Vec::new()));
        }
        if let Some(c) = checks
            .iter()
            .find(|c| c.interval_ns == 0 || c.interval_ns.max(c.tolerance_ns) > MAX_TOLERANCE_NS)
        {
            return Err(RedisFailure(format!(
                "redis: interval {} ns / tolerance {} ns out of range (1..={MAX_TOLERANCE_NS})",
                c.interval_ns, c.tolerance_ns
            )));
        }
        let timeout = self.redis.timeout();
        let result = match tokio::time::timeout(timeout, self.decide_within(checks)).await {
            Ok(r) => r,
            Err(_) => Err(RedisFailure(self.redis.timed_out())),
        };
        self.note(result.as_ref().err());
        result
    }

    /// Logs a state change (never each request).
    fn note(&self, failure: Option<&RedisFailure>) {
        if self.redis.set_healthy(failure.is_none()) {
            match failure {
                None => tracing::warn!("rate-limit redis reachable again"),
                Some(f) => tracing::warn!(error = %f, "rate-limit redis unreachable"),
            }
        }
    }

    async fn decide_within(&self, checks: &[RedisCheck<'_>]) -> Result<RedisAnswer, RedisFailure> {
        let conn = self.redis.connection().await.map_err(RedisFailure)?;
        let groups = match &*conn {
            Conn::Single(_) => None,
            Conn::Cluster(_) => slot_groups(checks),
        };
        let Some(groups) = groups else {
            return self.run(&conn, checks).await;
        };
        // Several slots: one script each, concurrently; a refusal anywhere gives back the rest.
        let picked: Vec<Vec<RedisCheck<'_>>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| checks[i]).collect())
            .collect();
        let answers = join_all(picked.iter().map(|p| self.run(&conn, p))).await;
        let mut admitted = vec![(0, 0); checks.len()];
        let mut refused: Option<RedisAnswer> = None;
        let mut failure: Option<RedisFailure> = None;
        let mut to_give_back: Vec<RedisCheck<'_>> = Vec::new();
        for ((group, p), answer) in groups.iter().zip(&picked).zip(answers) {
            match answer {
                Ok(RedisAnswer::Admitted(values)) => {
                    for (&i, v) in group.iter().zip(values) {
                        admitted[i] = v;
                    }
                    to_give_back.extend_from_slice(p);
                }
                Ok(RedisAnswer::Refused {
                    index,
                    retry_after_ns,
                    reset_after_ns,
                }) => {
                    let index = group.get(index).copied().unwrap_or(usize::MAX);
                    // Report the first refusing check in the caller's order.
                    if refused.as_ref().is_none_or(
                        |r| matches!(r, RedisAnswer::Refused { index: j, .. } if index < *j),
                    ) {
                        refused = Some(RedisAnswer::Refused {
                            index,
                            retry_after_ns,
                            reset_after_ns,
                        });
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if refused.is_none() && failure.is_none() {
            return Ok(RedisAnswer::Admitted(admitted));
        }
        if !to_give_back.is_empty() {
            self.give_back(&conn, &to_give_back).await;
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(refused.unwrap_or(RedisAnswer::Refused {
                index: 0,
                retry_after_ns: 0,
                reset_after_ns: 0,
            })),
        }
    }

    /// Gives back one interval per check (each group of one slot in one script). Best effort:
    /// a failure here is only logged at debug level, the decision stands.
    async fn give_back(&self, conn: &Arc<Conn>, checks: &[RedisCheck<'_>]) {
        let groups = slot_groups(checks).unwrap_or_else(|| vec![(0..checks.len()).collect()]);
        let runs = groups.iter().map(|g| async move {
            let mut inv = self.give_back_script.prepare_invoke();
            for &i in g {
                inv.key(checks[i].key).arg(checks[i].interval_ns);
            }
            let r: Result<i64, RedisError> = invoke(conn, &inv).await;
            if let Err(e) = r {
                tracing::debug!(error = %self.redis.scrub(&e.to_string()), "rate-limit redis give-back failed");
            }
        });
        join_all(runs).await;
    }

    /// One script over checks that share a slot.
    async fn run(
        &self,
        conn: &Arc<Conn>,
        checks: &[RedisCheck<'_>],
    ) -> Result<RedisAnswer, RedisFailure> {
        let inv = prepare(&self.decide_script, checks);
        match invoke::<Vec<i64>>(conn, &inv).await {
            Ok(values) => parse(&values, checks.len()),
            Err(e) => Err(RedisFailure(self.redis.failed(conn, &e))),
        }
    }
}

/// The decide script's invocation for these checks.
pub(super) fn prepare<'s>(script: &'s Script, checks: &[RedisCheck<'_>]) -> ScriptInvocation<'s> {
    let mut inv = script.prepare_invoke();
    for c in checks {
        inv.key(c.key).arg(c.interval_ns).arg(c.tolerance_ns);
    }
    inv
}

async fn invoke<T: redis::FromRedisValue>(
    conn: &Conn,
    inv: &ScriptInvocation<'_>,
) -> Result<T, RedisError> {
    match conn.clone() {
        Conn::Single(mut c) => run_on(&mut c, inv).await,
        Conn::Cluster(mut c) => run_on(&mut c, inv).await,
    }
}

async fn run_on<C: ConnectionLike, T: redis::FromRedisValue>(
    c: &mut C,
    inv: &ScriptInvocation<'_>,
) -> Result<T, RedisError> {
    inv.invoke_async(c).await
}

/// The decide script's reply: `{1, remaining, reset_after, ...}` or
/// `{0, index (1-based), retry_after, reset_after}`.
pub(super) fn parse(values: &[i64], n: usize) -> Result<RedisAnswer, RedisFailure> {
    let bad = || RedisFailure(format!("redis: unexpected script reply {values:?}"));
    let nonneg = |v: i64| u64::try_from(v).map_err(|_| bad());
    match values {
        [1, rest @ ..] if rest.len() == 2 * n => rest
            .chunks_exact(2)
            .map(|p| {
                Ok((
                    u32::try_from(p[0].max(0)).unwrap_or(u32::MAX),
                    nonneg(p[1])?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(RedisAnswer::Admitted),
        &[0, index, retry, reset] => {
            let index = usize::try_from(index)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .filter(|&i| i < n)
                .ok_or_else(bad)?;
            Ok(RedisAnswer::Refused {
                index,
                retry_after_ns: nonneg(retry)?,
                reset_after_ns: nonneg(reset)?,
            })
        }
        _ => Err(bad()),
    }
}

/// Check indices grouped by cluster slot (first appearance order), or `None` when they all
/// share one slot.
fn slot_groups(checks: &[RedisCheck<'_>]) -> Option<Vec<Vec<usize>>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        let slot = Slot::for_key(c.key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    (groups.len() > 1).then(|| groups.into_iter().map(|(_, g)| g).collect())
}

#[cfg(test)]
mod unit {
    use std::time::Duration;

    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse(&[1, 9, 6, 8, 7], 2),
            Ok(RedisAnswer::Admitted(vec![(9, 6), (8, 7)]))
        );
        assert_eq!(
            parse(&[0, 2, 5, 6], 2),
            Ok(RedisAnswer::Refused {
                index: 1,
                retry_after_ns: 5,
                reset_after_ns: 6
            })
        );
        assert!(parse(&[0, 3, 5, 6], 2).is_err());
        assert!(parse(&[1, 9], 2).is_err());
    }

    #[test]
    fn malformed_settings_fail_without_io() {
        let s = |urls: &[&str], cluster| RedisSettings {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            cluster,
            timeout: Duration::from_millis(100),
            ca_pem: None,
        };
        assert!(RedisLimiter::new(&s(&["redis://127.0.0.1:1"], false)).is_ok());
        assert!(RedisLimiter::new(&s(&["rediss://127.0.0.1:1"], false)).is_ok());
        assert!(RedisLimiter::new(&s(&["http://x"], false)).is_err());
        assert!(RedisLimiter::new(&s(&[], false)).is_err());
        assert!(RedisLimiter::new(&s(&["redis://a:1", "redis://b:1"], false)).is_err());
        assert!(RedisLimiter::new(&s(&["redis://a:1", "redis://b:1"], true)).is_ok());
    }

    #[test]
    fn checks_group_by_slot() {
        let c = |key: &'static [u8]| RedisCheck {
            key,
            interval_ns: 1,
            tolerance_ns: 1,
        };
        assert_eq!(slot_groups(&[c(b"a{x}1"), c(b"b{x}2")]), None);
        assert_eq!(
            slot_groups(&[c(b"{x}1"), c(b"{y}2"), c(b"{x}3")]),
            Some(vec![vec![0, 2], vec![1]])
        );
    }
}
