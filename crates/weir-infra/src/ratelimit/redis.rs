//! The Redis limiter: one lazily made multiplexed connection (or cluster connection) shared
//! by every worker, replaced when it breaks, and the scripts of `script.rs` run over it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{AsyncConnectionConfig, Client, RedisError, Script, ScriptInvocation};

use super::script;
use super::{
    MAX_TOLERANCE_NS, RECONNECT_EVERY, RedisAnswer, RedisCheck, RedisFailure, RedisSettings,
};

/// Rate-limit decisions in Redis; see the module docs. Cheap to share (`Arc` it): every
/// worker uses the same connection.
pub struct RedisLimiter {
    target: Target,
    timeout: Duration,
    conn: ArcSwapOption<Conn>,
    /// Held while connecting, so at most one attempt is in flight.
    connecting: tokio::sync::Mutex<()>,
    /// When the last failed connection attempt started (ms since `born`, 0 for none).
    failed_at: AtomicU64,
    born: Instant,
    healthy: AtomicBool,
    /// Passwords from the URLs, as written and decoded, scrubbed from every message.
    secrets: Vec<String>,
    decide_script: Script,
    give_back_script: Script,
}

enum Target {
    Single(Box<Client>),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("cluster", &matches!(self.target, Target::Cluster(_)))
            .field("timeout", &self.timeout)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// No I/O: connects lazily on first use, from whichever runtime calls first. Errs on a
    /// malformed URL, on several URLs without `cluster`, on no URL at all, and on a CA with a
    /// URL that is not `rediss://`.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let secrets: Vec<String> = settings.urls.iter().flat_map(|u| password_of(u)).collect();
        let scrub = |e: &RedisError| scrub(&e.to_string(), &secrets);
        // The cluster builder would quietly turn TLS on for a redis:// seed given roots.
        if settings.ca_pem.is_some() && !settings.urls.iter().all(|u| u.starts_with("rediss://")) {
            return Err("redis: a CA applies only to rediss:// urls".to_owned());
        }
        let target = match settings.urls.as_slice() {
            [] => return Err("redis: no url".to_owned()),
            [url] if !settings.cluster => Target::Single(Box::new(
                match &settings.ca_pem {
                    None => Client::open(url.as_str()),
                    Some(_) => Client::build_with_tls(url.as_str(), certificates(settings)),
                }
                .map_err(|e| format!("redis url: {}", scrub(&e)))?,
            )),
            _ if !settings.cluster => {
                return Err("redis: several urls need cluster: true".to_owned());
            }
            urls => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(2);
                if settings.ca_pem.is_some() {
                    builder = builder.certs(certificates(settings));
                }
                Target::Cluster(Box::new(
                    builder
                        .build()
                        .map_err(|e| format!("redis url: {}", scrub(&e)))?,
                ))
            }
        };
        Ok(Self {
            target,
            timeout: settings.timeout,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            failed_at: AtomicU64::new(0),
            born: Instant::now(),
            healthy: AtomicBool::new(true),
            secrets,
            decide_script: Script::new(script::DECIDE),
            give_back_script: Script::new(script::GIVE_BACK),
        })
    }

    /// Whether the last decision reached Redis (true before the first one).
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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
        let result = match tokio::time::timeout(self.timeout, self.decide_within(checks)).await {
            Ok(r) => r,
            Err(_) => {
                // A connection that stops answering may be half-open: make a fresh one.
                self.conn.store(None);
                Err(RedisFailure(format!(
                    "redis: no answer within {:?}",
                    self.timeout
                )))
            }
        };
        self.note(result.as_ref().err());
        result
    }

    /// Logs a state change (never each request).
    fn note(&self, failure: Option<&RedisFailure>) {
        let ok = failure.is_none();
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            match failure {
                None => tracing::warn!("rate-limit redis reachable again"),
                Some(f) => tracing::warn!(error = %f, "rate-limit redis unreachable"),
            }
        }
    }

    async fn decide_within(&self, checks: &[RedisCheck<'_>]) -> Result<RedisAnswer, RedisFailure> {
        let conn = self.connection().await?;
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
                tracing::debug!(error = %scrub(&e.to_string(), &self.secrets), "rate-limit redis give-back failed");
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
            Err(e) => {
                if e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout() {
                    self.drop_connection(conn);
                }
                Err(RedisFailure(format!(
                    "redis: {}",
                    scrub(&e.to_string(), &self.secrets)
                )))
            }
        }
    }

    /// Forgets a broken connection (unless another caller already replaced it).
    fn drop_connection(&self, broken: &Arc<Conn>) {
        let current = self.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            self.conn.compare_and_swap(&*current, None);
        }
    }

    /// The shared connection, made if there is none: one attempt at a time, and while Redis
    /// is down at most one per `RECONNECT_EVERY`; callers in between fail at once.
    async fn connection(&self) -> Result<Arc<Conn>, RedisFailure> {
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let now = self.ms_since_born();
        if failed_at != 0 && now.saturating_sub(failed_at) < millis(RECONNECT_EVERY) {
            return Err(RedisFailure("redis: unreachable (reconnecting)".to_owned()));
        }
        let made = match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        };
        match made {
            Ok(c) => {
                let c = Arc::new(c);
                self.failed_at.store(0, Ordering::Relaxed);
                self.conn.store(Some(Arc::clone(&c)));
                Ok(c)
            }
            Err(e) => {
                self.failed_at.store(now.max(1), Ordering::Relaxed);
                Err(RedisFailure(format!(
                    "redis: connect: {}",
                    scrub(&e.to_string(), &self.secrets)
                )))
            }
        }
    }

    fn ms_since_born(&self) -> u64 {
        millis(self.born.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

/// The roots `rediss://` trusts when the settings name a CA: exactly those (the redis crate
/// then leaves the system store out), with no client certificate.
fn certificates(settings: &RedisSettings) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: settings.ca_pem.clone(),
    }
}

/// The password in `scheme://[user]:password@host...`, as written and percent-decoded.
fn password_of(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    if password.is_empty() {
        return Vec::new();
    }
    let decoded = percent_decode(password);
    if decoded == password {
        vec![password.to_owned()]
    } else {
        vec![password.to_owned(), decoded]
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text with every secret replaced by `***`.
pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn passwords_are_found_and_scrubbed() {
        assert_eq!(
            password_of("redis://:s3cr%40t@h:6379/0"),
            ["s3cr%40t", "s3cr@t"]
        );
        assert_eq!(password_of("rediss://user:pw@h"), ["pw"]);
        assert!(password_of("redis://h:6379").is_empty());
        let s = password_of("redis://:hunter2@h");
        assert_eq!(scrub("auth hunter2 failed", &s), "auth *** failed");
    }

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
