//! Rate limits in the pipeline: each request's key per policy, and all-or-nothing admission
//! over a route's policies and then its upstream's. The arithmetic (GCRA) and the state
//! (a fixed lock-free table per policy) are the domain's; this module decides which bucket
//! a request falls in and what the client is told.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use weir_domain::ErrorKind;
use weir_domain::auth::Principal;
use weir_domain::limiter::{LimitTable, Taken};
use weir_domain::ratelimit::{LimitKey, Rate, RateLimitPolicy, ceil_secs};
use weir_domain::route::{Route, RouteAction};
use weir_domain::upstream::Upstream;

use crate::error::GatewayError;

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Most policies a request is checked against (a route's plus its upstream's).
pub(crate) const MAX_POLICIES: usize = 16;

/// What the client is told about the tightest policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the full burst is available again.
    pub reset: u64,
}

/// One policy as a route applies it.
#[derive(Debug)]
struct Limit {
    table: Arc<LimitTable>,
    rate: Rate,
    key: LimitKey,
    /// For an upstream's `key: route` policy: the route, so each route has its own bucket.
    route_tag: Option<u32>,
    /// `limit of 10 per 1m for ip exceeded`.
    detail: Arc<str>,
}

/// A route's policies, its own first, then its upstream's.
#[derive(Debug, Default)]
pub(crate) struct RouteLimits {
    limits: Vec<Limit>,
}

/// Builds every route's limits; upstream policies share one table across their routes.
pub(crate) fn build(routes: &[Route], upstreams: &[Upstream]) -> Result<Vec<RouteLimits>, String> {
    let upstream_tables: Vec<Vec<Arc<LimitTable>>> = upstreams
        .iter()
        .map(|u| {
            u.rate_limits
                .iter()
                .map(|p| Arc::new(LimitTable::new(p.max_keys)))
                .collect()
        })
        .collect();
    routes
        .iter()
        .map(|route| {
            let mut limits: Vec<Limit> = route
                .rate_limits
                .iter()
                .map(|p| limit(p, Arc::new(LimitTable::new(p.max_keys)), None))
                .collect();
            if let RouteAction::Upstream(id) = &route.action
                && let (Some(u), Some(tables)) = (upstreams.get(id.0), upstream_tables.get(id.0))
            {
                for (p, table) in u.rate_limits.iter().zip(tables) {
                    let tag = (p.key == LimitKey::Route)
                        .then(|| u32::try_from(route.index).unwrap_or(u32::MAX));
                    limits.push(limit(p, Arc::clone(table), tag));
                }
            }
            if limits.len() > MAX_POLICIES {
                return Err(format!(
                    "route {}: more than {MAX_POLICIES} rate limits (its own and its upstream's)",
                    route.name
                ));
            }
            Ok(RouteLimits { limits })
        })
        .collect()
}

fn limit(p: &RateLimitPolicy, table: Arc<LimitTable>, route_tag: Option<u32>) -> Limit {
    Limit {
        table,
        rate: p.rate(),
        key: p.key.clone(),
        route_tag,
        detail: Arc::from(format!(
            "limit of {} per {} for {} exceeded",
            p.limit,
            duration_text(p.per),
            p.key.describe()
        )),
    }
}

/// `1m`, `30s`, `1h`, `250ms`: the largest whole unit, as configs write durations.
fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Who a request is, for choosing its buckets.
pub(crate) struct Caller<'a> {
    pub(crate) principal: Option<&'a Principal>,
    pub(crate) ip: IpAddr,
    pub(crate) headers: &'a HeaderMap,
}

/// What admission found out, for the response and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    pub(crate) info: Option<RateInfo>,
    /// Some key found no slot and shared the overflow bucket.
    pub(crate) overflowed: bool,
}

impl RouteLimits {
    pub(crate) fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Admits the request only if every policy does; a refusal gives back what the earlier
    /// policies took, so a refused request consumes nothing.
    pub(crate) fn admit(
        &self,
        caller: &Caller<'_>,
        out: &mut Admission,
    ) -> Result<(), GatewayError> {
        let now = now_nanos();
        let mut taken: [Option<Taken>; MAX_POLICIES] = [None; MAX_POLICIES];
        let mut tightest: Option<RateInfo> = None;
        for (i, limit) in self.limits.iter().enumerate() {
            let key = limit.key_of(caller);
            let (decision, took, overflowed) = limit.table.acquire(key, &limit.rate, now);
            out.overflowed |= overflowed;
            let info = RateInfo {
                limit: limit.rate.limit,
                remaining: decision.remaining,
                reset: ceil_secs(decision.reset_after),
            };
            if !decision.allowed {
                for (j, t) in taken.iter().enumerate().take(i) {
                    if let Some(t) = t {
                        self.limits[j].table.release(*t, &self.limits[j].rate);
                    }
                }
                out.info = Some(info);
                let mut err = GatewayError::new(ErrorKind::RateLimited, limit.detail.to_string());
                err.retry_after = Some(ceil_secs(decision.retry_after).max(1));
                return Err(err);
            }
            if let Some(slot) = taken.get_mut(i) {
                *slot = Some(took);
            }
            if tightest.is_none_or(|t| {
                (info.remaining, std::cmp::Reverse(info.reset))
                    < (t.remaining, std::cmp::Reverse(t.reset))
            }) {
                tightest = Some(info);
            }
        }
        out.info = tightest;
        Ok(())
    }
}

impl Limit {
    fn key_of(&self, caller: &Caller<'_>) -> u64 {
        let t = &self.table;
        match &self.key {
            LimitKey::Consumer => match caller.principal {
                Some(p) => t.key(b'c', p.name.as_bytes()),
                None => ip_key(t, caller.ip),
            },
            LimitKey::Ip => ip_key(t, caller.ip),
            LimitKey::Header(name) => t.key(
                b'h',
                caller
                    .headers
                    .get(name.as_str())
                    .map_or(&[][..], HeaderValue::as_bytes),
            ),
            LimitKey::Route => match self.route_tag {
                Some(r) => t.key(b'r', &r.to_le_bytes()),
                None => t.key(b'g', &[]),
            },
            LimitKey::Global => t.key(b'g', &[]),
        }
    }
}

fn ip_key(t: &LimitTable, ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => t.key(b'i', &v4.octets()),
        IpAddr::V6(v6) => t.key(b'i', &v6.octets()),
    }
}

/// Nanoseconds on a process-wide monotonic clock, never 0 (0 means "never seen").
fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Adds `RateLimit-*` headers to a response.
pub(crate) fn decorate(info: RateInfo, h: &mut HeaderMap) {
    h.insert(&RATELIMIT_LIMIT, HeaderValue::from(info.limit));
    h.insert(&RATELIMIT_REMAINING, HeaderValue::from(info.remaining));
    h.insert(&RATELIMIT_RESET, HeaderValue::from(info.reset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(duration_text(Duration::from_secs(60)), "1m");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_text(Duration::from_secs(7200)), "2h");
    }
}
