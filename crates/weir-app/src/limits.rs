//! Rate limits in the pipeline: each request's key per policy, and all-or-nothing admission
//! over a route's policies and then its upstream's. The arithmetic (GCRA) and the memory
//! store (a fixed lock-free table per policy) are the domain's; `store: redis` policies are
//! decided together in one call through the [`SharedLimiter`] port. This module decides
//! which bucket a request falls in and what the client is told.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use weir_domain::ErrorKind;
use weir_domain::auth::Principal;
use weir_domain::limiter::{LimitTable, Taken};
use weir_domain::ratelimit::{LimitKey, LimitStore, OnError, Rate, RateLimitPolicy, ceil_secs};
use weir_domain::route::{Route, RouteAction};
use weir_domain::upstream::Upstream;

use crate::error::GatewayError;

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Most policies a request is checked against (a route's plus its upstream's).
pub(crate) const MAX_POLICIES: usize = 16;

/// One `store: redis` decision's input: the key (stable across processes) and the rate.
#[derive(Clone, Debug)]
pub struct SharedCheck {
    pub key: Vec<u8>,
    pub rate: Rate,
}

/// The shared store's answer for all the checks of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedAnswer {
    /// Every check admitted: `(remaining, reset_after_ns)` per check, in order.
    Admitted(Vec<(u32, u64)>),
    /// Check `index` refused; nothing was recorded.
    Refused {
        index: usize,
        retry_after_ns: u64,
        reset_after_ns: u64,
    },
}

/// The store shared by every weir (Redis): decides all of a request's checks at once.
pub trait SharedLimiter: Send + Sync + 'static {
    /// `Err` when the store cannot decide in time; each policy's `on_error` then applies.
    fn decide<'a>(
        &'a self,
        checks: &'a [SharedCheck],
    ) -> impl Future<Output = Result<SharedAnswer, ()>> + Send + 'a;
}

/// What the client is told about the tightest policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the full burst is available again.
    pub reset: u64,
}

/// Where a policy's state lives.
#[derive(Clone, Debug)]
enum Store {
    /// This process's table (shared by the routes of an upstream's policy).
    Memory(Arc<LimitTable>),
    /// Decided through the `SharedLimiter`; nothing is kept here.
    Redis,
}

impl Store {
    fn of(p: &RateLimitPolicy) -> Self {
        match p.store {
            LimitStore::Memory => Self::Memory(Arc::new(LimitTable::new(p.max_keys))),
            LimitStore::Redis => Self::Redis,
        }
    }
}

/// One policy as a route applies it.
#[derive(Debug)]
struct Limit {
    store: Store,
    rate: Rate,
    key: LimitKey,
    /// For `key: header:NAME`: the name, parsed once here rather than per request.
    header: Option<HeaderName>,
    /// For an upstream's `key: route` policy: the route's name, so each route has its own
    /// bucket, and keeps it when routes are added or moved by a reload.
    route_tag: Option<Arc<str>>,
    /// `limit of 10 per 1m for ip exceeded`.
    detail: Arc<str>,
    on_error: OnError,
    /// The policy's name in the shared store, the same in every weir: `r:<route>:<i>` or
    /// `u:<upstream>:<i>`.
    shared_id: Arc<str>,
}

/// A route's policies, its own first, then its upstream's.
#[derive(Debug, Default)]
pub(crate) struct RouteLimits {
    limits: Vec<Limit>,
}

/// The memory tables of a generation's policies, by policy id (`r:<route>:<i>`,
/// `u:<upstream>:<i>`), so the next generation keeps the counters of every policy it did not
/// change: a reload must not hand every client a fresh burst.
#[derive(Debug, Default)]
pub struct Tables(std::collections::HashMap<String, (RateLimitPolicy, Arc<LimitTable>)>);

impl Tables {
    /// The store of policy `id`: the previous generation's table when the policy is the
    /// same, else a new one; recorded in `next`.
    fn store(&self, next: &mut Self, id: String, p: &RateLimitPolicy) -> Store {
        let store = match self.0.get(&id) {
            Some((old, table)) if old == p => Store::Memory(Arc::clone(table)),
            _ => Store::of(p),
        };
        if let Store::Memory(t) = &store {
            next.0.insert(id, (p.clone(), Arc::clone(t)));
        }
        store
    }
}

/// Builds every route's limits; upstream policies share one table across their routes.
/// Tables of unchanged policies are taken from `previous`; the new ones are returned.
pub(crate) fn build(
    routes: &[Route],
    upstreams: &[Upstream],
    previous: &Tables,
) -> Result<(Vec<RouteLimits>, Tables), String> {
    let mut next = Tables::default();
    let upstream_stores: Vec<Vec<Store>> = upstreams
        .iter()
        .map(|u| {
            u.rate_limits
                .iter()
                .enumerate()
                .map(|(i, p)| previous.store(&mut next, format!("u:{}:{i}", u.name), p))
                .collect()
        })
        .collect();
    routes
        .iter()
        .map(|route| {
            let mut limits: Vec<Limit> = route
                .rate_limits
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let id = format!("r:{}:{i}", route.name);
                    let store = previous.store(&mut next, id.clone(), p);
                    limit(p, store, None, id)
                })
                .collect();
            if let RouteAction::Upstream(id) = &route.action
                && let (Some(u), Some(stores)) = (upstreams.get(id.0), upstream_stores.get(id.0))
            {
                for (i, (p, store)) in u.rate_limits.iter().zip(stores).enumerate() {
                    let tag = (p.key == LimitKey::Route).then(|| Arc::from(route.name.as_str()));
                    let id = match tag {
                        Some(_) => format!("u:{}:{i}:{}", u.name, route.name),
                        None => format!("u:{}:{i}", u.name),
                    };
                    limits.push(limit(p, store.clone(), tag, id));
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
        .collect::<Result<Vec<_>, String>>()
        .map(|limits| (limits, next))
}

fn limit(p: &RateLimitPolicy, store: Store, route_tag: Option<Arc<str>>, id: String) -> Limit {
    Limit {
        store,
        rate: p.rate(),
        header: match &p.key {
            LimitKey::Header(name) => HeaderName::from_bytes(name.as_bytes()).ok(),
            _ => None,
        },
        key: p.key.clone(),
        route_tag,
        on_error: p.on_error,
        shared_id: Arc::from(id),
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
    /// The shared store could not decide; `on_error` applied.
    pub(crate) store_failed: bool,
}

impl RouteLimits {
    pub(crate) fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Admits the request only if every policy does; a refusal gives back what the earlier
    /// memory policies took, so a refused request consumes nothing. Memory policies are
    /// decided here; `store: redis` ones together in one call to `shared`.
    pub(crate) async fn admit<S: SharedLimiter>(
        &self,
        caller: &Caller<'_>,
        shared: &S,
        out: &mut Admission,
    ) -> Result<(), GatewayError> {
        let now = crate::clock::now_nanos();
        let mut taken: [Option<Taken>; MAX_POLICIES] = [None; MAX_POLICIES];
        let mut tightest: Option<RateInfo> = None;
        // The `store: redis` policies (by position) and their checks, for one call.
        let mut remote: Vec<usize> = Vec::new();
        let mut checks: Vec<SharedCheck> = Vec::new();
        for (i, limit) in self.limits.iter().enumerate() {
            let Store::Memory(table) = &limit.store else {
                remote.push(i);
                checks.push(SharedCheck {
                    key: limit.with_key(caller, |tag, bytes| limit.shared_key(tag, bytes)),
                    rate: limit.rate,
                });
                continue;
            };
            let key = limit.with_key(caller, |tag, bytes| table.key(tag, bytes));
            let (decision, took, overflowed) = table.acquire(key, &limit.rate, now);
            out.overflowed |= overflowed;
            let info = info(limit, decision.remaining, decision.reset_after);
            if !decision.allowed {
                self.give_back(&taken);
                out.info = Some(info);
                return Err(refusal(limit, decision.retry_after));
            }
            if let Some(slot) = taken.get_mut(i) {
                *slot = Some(took);
            }
            tightest = tighter(tightest, info);
        }
        if !checks.is_empty() {
            match shared.decide(&checks).await {
                Ok(SharedAnswer::Admitted(answers)) => {
                    for (i, (remaining, reset)) in remote.iter().zip(answers) {
                        tightest = tighter(tightest, info(&self.limits[*i], remaining, reset));
                    }
                }
                Ok(SharedAnswer::Refused {
                    index,
                    retry_after_ns,
                    reset_after_ns,
                }) => {
                    self.give_back(&taken);
                    let limit = &self.limits[remote.get(index).copied().unwrap_or(0)];
                    out.info = Some(info(limit, 0, reset_after_ns));
                    return Err(refusal(limit, retry_after_ns));
                }
                Err(()) => {
                    out.store_failed = true;
                    let deny = remote
                        .iter()
                        .find(|i| self.limits[**i].on_error == OnError::Deny);
                    if let Some(i) = deny {
                        self.give_back(&taken);
                        let mut err = GatewayError::new(
                            ErrorKind::RateLimited,
                            format!(
                                "{}: the rate-limit store cannot decide and the policy denies on error",
                                self.limits[*i].detail.trim_end_matches(" exceeded")
                            ),
                        );
                        err.retry_after = Some(1);
                        return Err(err);
                    }
                }
            }
        }
        out.info = tightest;
        Ok(())
    }

    fn give_back(&self, taken: &[Option<Taken>; MAX_POLICIES]) {
        for (limit, t) in self.limits.iter().zip(taken) {
            if let (Some(t), Store::Memory(table)) = (t, &limit.store) {
                table.release(*t, &limit.rate);
            }
        }
    }
}

fn info(limit: &Limit, remaining: u32, reset_after: u64) -> RateInfo {
    RateInfo {
        limit: limit.rate.limit,
        remaining,
        reset: ceil_secs(reset_after),
    }
}

/// The tighter of two: fewer remaining, then the later reset.
fn tighter(current: Option<RateInfo>, info: RateInfo) -> Option<RateInfo> {
    match current {
        Some(t)
            if (t.remaining, std::cmp::Reverse(t.reset))
                <= (info.remaining, std::cmp::Reverse(info.reset)) =>
        {
            Some(t)
        }
        _ => Some(info),
    }
}

fn refusal(limit: &Limit, retry_after: u64) -> GatewayError {
    let mut err = GatewayError::new(ErrorKind::RateLimited, limit.detail.to_string());
    err.retry_after = Some(ceil_secs(retry_after).max(1));
    err
}

/// Longest key material kept in a shared key; longer header values share by this prefix.
const MAX_SHARED_KEY: usize = 256;

impl Limit {
    /// Calls `f` with the request's key for this policy: a tag byte and the key bytes.
    fn with_key<R>(&self, caller: &Caller<'_>, f: impl FnOnce(u8, &[u8]) -> R) -> R {
        match &self.key {
            LimitKey::Consumer => match caller.principal {
                Some(p) => f(b'c', p.name.as_bytes()),
                None => with_ip(caller.ip, f),
            },
            LimitKey::Ip => with_ip(caller.ip, f),
            LimitKey::Header(_) => f(
                b'h',
                self.header
                    .as_ref()
                    .and_then(|name| caller.headers.get(name))
                    .map_or(&[][..], HeaderValue::as_bytes),
            ),
            LimitKey::Route => match &self.route_tag {
                Some(r) => f(b'r', r.as_bytes()),
                None => f(b'g', &[]),
            },
            LimitKey::Global => f(b'g', &[]),
        }
    }

    /// `weir:rl:{<policy>:<tag><hex key>}`: the same in every weir, one cluster slot per key
    /// (the braces are the hash tag), and no byte of the key can break out of it.
    fn shared_key(&self, tag: u8, bytes: &[u8]) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = &bytes[..bytes.len().min(MAX_SHARED_KEY)];
        let mut key = Vec::with_capacity(12 + self.shared_id.len() + 2 * bytes.len());
        key.extend_from_slice(b"weir:rl:{");
        key.extend_from_slice(self.shared_id.as_bytes());
        key.push(b':');
        key.push(tag);
        for b in bytes {
            key.push(HEX[usize::from(b >> 4)]);
            key.push(HEX[usize::from(b & 15)]);
        }
        key.push(b'}');
        key
    }
}

fn with_ip<R>(ip: IpAddr, f: impl FnOnce(u8, &[u8]) -> R) -> R {
    match ip {
        IpAddr::V4(v4) => f(b'i', &v4.octets()),
        IpAddr::V6(v6) => f(b'i', &v6.octets()),
    }
}

/// Adds `RateLimit-*` headers to a response.
pub(crate) fn decorate(info: RateInfo, h: &mut HeaderMap) {
    h.insert(&RATELIMIT_LIMIT, number(u64::from(info.limit)));
    h.insert(&RATELIMIT_REMAINING, number(u64::from(info.remaining)));
    h.insert(&RATELIMIT_RESET, number(info.reset));
}

/// Header values of the small numbers most responses carry, rendered once per process, so
/// a limited response formats and allocates nothing for its three headers.
const CACHED_NUMBERS: u64 = 4096;

fn number(n: u64) -> HeaderValue {
    static NUMBERS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let cached = NUMBERS.get_or_init(|| {
        (0..CACHED_NUMBERS)
            .map(|i| HeaderValue::from_maybe_shared(bytes::Bytes::from(i.to_string())))
            .collect::<Result<_, _>>()
            .unwrap_or_default()
    });
    usize::try_from(n)
        .ok()
        .and_then(|i| cached.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_the_same_cached_or_not() {
        for n in [0, 1, 9, 4095, 4096, 1 << 40] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(duration_text(Duration::from_secs(60)), "1m");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_text(Duration::from_secs(7200)), "2h");
    }
}
