//! Checking a route's `cache` and building the domain's [`CacheSpec`].

use weir_domain::cache::{CacheSpec, CacheStore};

use crate::checks::{duration, header_name, size};
use crate::model::{CacheConfig, RouteConfig};
use crate::node::KeyPath;
use crate::report::Report;

/// A stored body larger than this is not a cache's job (and a Redis value of that size
/// would stall every other command on the connection).
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The most a Redis store keeps in one value (body and metadata together).
const MAX_REDIS_BODY: u64 = 8 * 1024 * 1024;

/// `routes[i].cache` (at `path`), given its route; `None` when it has problems (reported).
pub(crate) fn build(
    c: &CacheConfig,
    route: &RouteConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<CacheSpec> {
    let before = r.issues.len();
    if route.respond.is_some() {
        r.at_key(
            path,
            "`cache` applies to routes with an `upstream`; a `respond:` route answers from \
             memory already",
        );
    }
    let ttl = duration(r, &path.key("ttl"), &c.ttl, true);
    let store = match c.store.trim() {
        "memory" => Some(CacheStore::Memory),
        "redis" => Some(CacheStore::Redis),
        other => {
            r.at(
                &path.key("store"),
                format!("unknown store \"{other}\" (expected memory or redis)"),
            );
            None
        }
    };
    let mut vary = Vec::with_capacity(c.vary.len());
    for (i, name) in c.vary.iter().enumerate() {
        let at = path.key("vary").index(i);
        let name = name.trim();
        if r.check(&at, header_name(name)).is_some() {
            let lower = name.to_ascii_lowercase();
            if lower == "authorization" || lower == "cookie" {
                r.at(
                    &at,
                    format!(
                        "varying on `{name}` would keep a copy per credential; use \
                         `per_consumer: true` on a route with `auth` instead"
                    ),
                );
            }
            vary.push(lower);
        }
    }
    vary.sort();
    vary.dedup();
    let swr = duration(
        r,
        &path.key("stale_while_revalidate"),
        &c.stale_while_revalidate,
        false,
    );
    let sie = duration(r, &path.key("stale_if_error"), &c.stale_if_error, false);
    let max_body = match size(r, &path.key("max_body"), &c.max_body) {
        Some(0) => {
            r.at(&path.key("max_body"), "must be at least 1 byte");
            None
        }
        Some(n) if n > MAX_BODY_LIMIT => {
            r.at(
                &path.key("max_body"),
                format!("{n} bytes is more than the most, 64MiB"),
            );
            None
        }
        n => n,
    };
    if store == Some(CacheStore::Redis) && max_body.is_some_and(|n| n > MAX_REDIS_BODY) {
        r.at(
            &path.key("max_body"),
            "with store: redis, max_body is at most 8MiB (one Redis value holds the whole \
             response)",
        );
    }
    if c.per_consumer == Some(true) && route.auth.is_none() {
        r.at(
            &path.key("per_consumer"),
            "`per_consumer` keys the cache by the authenticated consumer, so the route needs \
             `auth`",
        );
    }
    if r.issues.len() != before {
        return None;
    }
    Some(CacheSpec {
        ttl: ttl?,
        store: store?,
        vary,
        stale_while_revalidate: swr?,
        stale_if_error: sie?,
        max_body: max_body?,
        per_consumer: c.per_consumer.unwrap_or(route.auth.is_some()),
    })
}
