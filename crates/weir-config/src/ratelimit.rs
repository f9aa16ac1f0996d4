//! Checking a route's or an upstream's `rate_limit` and building the domain's policies.

use weir_domain::ratelimit::{LimitKey, LimitStore, OnError, RateLimitPolicy};

use crate::checks::{duration, header_name};
use crate::model::{FileConfig, RateLimitConfig};
use crate::node::KeyPath;
use crate::report::{Report, closest};
use crate::settings::at_least_one;

/// The bounds of `max_keys`: 16 slots (256 bytes) to 2^24 slots (256 MiB) per policy.
pub(crate) const MIN_MAX_KEYS: u64 = 16;
pub(crate) const MAX_MAX_KEYS: u64 = 1 << 24;

/// The key kinds, in the order messages list them.
const KINDS: &str = "consumer, ip, route, header:NAME, global";
const PLAIN_KINDS: [&str; 4] = ["consumer", "ip", "route", "global"];

/// The longest burst window (`per / limit × burst`) the Redis script keeps exact: 2^52 ns.
const MAX_REDIS_TOLERANCE_NANOS: u128 = 1 << 52;

/// The finest spacing of requests of one key that GCRA on a nanosecond clock keeps exact.
const MIN_INTERVAL_NANOS: u128 = 1_000;

/// The policies of one `rate_limit` list, in order; `None` when any is wrong (all reported).
pub(crate) fn build(
    list: &[RateLimitConfig],
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Vec<RateLimitPolicy>> {
    let mut out = Some(Vec::with_capacity(list.len()));
    let mut seen: Vec<(RateLimitPolicy, usize)> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let at = path.index(i);
        let built = policy(c, &at, r);
        if let Some(p) = &built {
            if let Some((_, j)) = seen.iter().find(|(q, _)| same_limit(q, p)) {
                r.at(
                    &at,
                    format!(
                        "duplicate rate limit: rate_limit[{j}] has the same key, limit, per and burst"
                    ),
                );
                out = None;
                continue;
            }
            seen.push((p.clone(), i));
        }
        match (built, &mut out) {
            (Some(p), Some(v)) => v.push(p),
            _ => out = None,
        }
    }
    out
}

/// Two policies that count the same requests the same way: one of them does nothing.
fn same_limit(a: &RateLimitPolicy, b: &RateLimitPolicy) -> bool {
    a.key == b.key && a.limit == b.limit && a.per == b.per && a.burst == b.burst
}

fn policy(c: &RateLimitConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<RateLimitPolicy> {
    let before = r.issues.len();
    let key = r.check(&path.key("key"), limit_key(&c.key));
    let limit = at_least_one(r, &path.key("limit"), u64::from(c.limit));
    let per = duration(r, &path.key("per"), &c.per, true);
    let burst = match c.burst {
        Some(b) => at_least_one(r, &path.key("burst"), u64::from(b)),
        None => Some(u64::from(c.limit)),
    };
    let kind = c.store();
    let store = match kind {
        "memory" => Some(LimitStore::Memory),
        "redis" => Some(LimitStore::Redis),
        other => {
            r.at(
                &path.key("store"),
                format!("\"{other}\" is not one of memory, redis"),
            );
            None
        }
    };
    let on_error = match c.on_error.as_deref().map(str::trim) {
        None => Some(OnError::Allow),
        Some("allow" | "deny") if kind == "memory" => {
            r.at_key(
                &path.key("on_error"),
                "on_error applies only to store: redis",
            );
            None
        }
        Some("allow") => Some(OnError::Allow),
        Some("deny") => Some(OnError::Deny),
        Some(other) => {
            r.at(
                &path.key("on_error"),
                format!("\"{other}\" is not one of allow, deny"),
            );
            None
        }
    };
    let max_keys = match c.max_keys {
        Some(_) if kind == "redis" => {
            r.at_key(
                &path.key("max_keys"),
                "max_keys applies only to store: memory",
            );
            None
        }
        Some(n) if !(MIN_MAX_KEYS..=MAX_MAX_KEYS).contains(&n) => {
            r.at(
                &path.key("max_keys"),
                format!("{n} is not between {MIN_MAX_KEYS} and {MAX_MAX_KEYS}"),
            );
            None
        }
        _ => usize::try_from(c.max_keys()).ok(),
    };
    if let (Some(limit), Some(per), Some(burst)) = (limit, per, burst) {
        let per_nanos = per.as_nanos();
        let interval = per_nanos / u128::from(limit);
        if interval < MIN_INTERVAL_NANOS {
            r.at(
                &path.key("limit"),
                "more than 1,000,000 requests per second per key cannot be limited precisely",
            );
        } else if per_nanos > u128::from(u64::MAX)
            || interval * u128::from(burst) > u128::from(u64::MAX)
        {
            // GCRA's state is nanoseconds in 64 bits: about 584 years.
            let at = if c.burst.is_some() { "burst" } else { "per" };
            r.at(&path.key(at), "per / limit × burst must be under 584 years");
        }
    }
    if let (Some(LimitStore::Redis), Some(limit), Some(per), Some(burst)) =
        (store, limit, per, burst)
        && per.as_nanos() / u128::from(limit) * u128::from(burst) > MAX_REDIS_TOLERANCE_NANOS
    {
        // The Lua script computes in doubles, exact below 2^53 nanoseconds.
        r.at(
            &path.key("per"),
            "with store: redis, per / limit × burst must be under 52 days",
        );
    }
    if r.issues.len() != before {
        return None;
    }
    Some(RateLimitPolicy {
        key: key?,
        limit: c.limit,
        per: per?,
        burst: c.burst(),
        store: store?,
        on_error: on_error?,
        max_keys: max_keys?,
    })
}

/// Every `store: redis` policy needs the top-level `redis` section.
pub(crate) fn check_stores(cfg: &FileConfig, r: &mut Report<'_>) {
    if cfg.redis.is_some() {
        return;
    }
    let root = KeyPath::root();
    let routes = cfg.routes.iter().enumerate().filter_map(|(i, c)| {
        c.as_ref()
            .map(|c| (root.key("routes").index(i), &c.rate_limit))
    });
    let upstreams = cfg.upstreams.iter().filter_map(|(name, c)| {
        c.as_ref()
            .map(|c| (root.key("upstreams").key(name), &c.rate_limit))
    });
    for (i, c) in cfg.routes.iter().enumerate() {
        if let Some(cache) = c.as_ref().and_then(|c| c.cache.as_ref())
            && cache.store.trim() == "redis"
        {
            r.at(
                &root.key("routes").index(i).key("cache").key("store"),
                "store: redis needs the top-level `redis` section (url or cluster)",
            );
        }
    }
    for (at, list) in routes.chain(upstreams) {
        for (i, p) in list.iter().enumerate() {
            if p.store() == "redis" {
                r.at(
                    &at.key("rate_limit").index(i).key("store"),
                    "store: redis needs the top-level `redis` section (url or cluster)",
                );
            }
        }
    }
}

/// `consumer`, `ip`, `route`, `global` or `header:NAME` (the name stored in lower case).
pub(crate) fn limit_key(text: &str) -> Result<LimitKey, String> {
    let t = text.trim();
    match t {
        "consumer" => return Ok(LimitKey::Consumer),
        "ip" => return Ok(LimitKey::Ip),
        "route" => return Ok(LimitKey::Route),
        "global" => return Ok(LimitKey::Global),
        _ => {}
    }
    if let Some(name) = t.strip_prefix("header:").or((t == "header").then_some("")) {
        let name = name.trim();
        if name.is_empty() {
            return Err("`header:` needs a header name, such as header:X-Tenant".to_owned());
        }
        header_name(name)?;
        return Ok(LimitKey::Header(name.to_ascii_lowercase()));
    }
    let mut message = format!("\"{t}\" is not one of {KINDS}");
    let near = match t.split_once(':') {
        Some((kind, name)) => {
            closest(kind.trim(), ["header"].into_iter()).map(|_| format!("header:{}", name.trim()))
        }
        None => closest(t, PLAIN_KINDS.into_iter()).map(str::to_owned),
    };
    if let Some(near) = near {
        message.push_str(&format!("; did you mean \"{near}\"?"));
    }
    Err(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(limit_key(" ip "), Ok(LimitKey::Ip));
        assert_eq!(limit_key("consumer"), Ok(LimitKey::Consumer));
        assert_eq!(limit_key("route"), Ok(LimitKey::Route));
        assert_eq!(limit_key("global"), Ok(LimitKey::Global));
        assert_eq!(
            limit_key("header:X-Tenant"),
            Ok(LimitKey::Header("x-tenant".into()))
        );
        assert_eq!(
            limit_key("header: X-Tenant"),
            Ok(LimitKey::Header("x-tenant".into()))
        );
        assert!(
            limit_key("header:")
                .unwrap_err()
                .contains("needs a header name")
        );
        assert!(
            limit_key("header")
                .unwrap_err()
                .contains("needs a header name")
        );
        assert!(
            limit_key("header:X Tenant")
                .unwrap_err()
                .contains("not a valid header name")
        );
        assert!(
            limit_key("consumr")
                .unwrap_err()
                .ends_with("did you mean \"consumer\"?")
        );
        assert!(
            limit_key("IP")
                .unwrap_err()
                .ends_with("did you mean \"ip\"?")
        );
        assert!(
            limit_key("headers:X-Tenant")
                .unwrap_err()
                .ends_with("did you mean \"header:X-Tenant\"?")
        );
        assert_eq!(
            limit_key("user").unwrap_err(),
            "\"user\" is not one of consumer, ip, route, header:NAME, global"
        );
    }
}
