//! Route `cache`: what it builds, its defaults, and every problem at its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{ok, problems};
use serde_json::json;
use weir_domain::cache::{CacheSpec, CacheStore};

fn config(cache: &str, extra: &str) -> String {
    format!(
        "\
{extra}upstreams:
  be: {{ targets: [{{ url: 'http://127.0.0.1:9000' }}] }}
routes:
  - name: r
    match: {{ prefix: /r }}
    upstream: be
    cache: {cache}
"
    )
}

#[test]
fn defaults() {
    let l = ok(&config("{}", ""));
    assert_eq!(
        l.routes.routes()[0].cache.as_deref(),
        Some(&CacheSpec {
            ttl: Duration::from_secs(60),
            store: CacheStore::Memory,
            vary: Vec::new(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            max_body: 1024 * 1024,
            per_consumer: false,
        })
    );
    assert_eq!(l.settings.limits.max_cache_bytes, 64 * 1024 * 1024);
    assert_eq!(
        l.effective["routes"][0]["cache"],
        json!({ "ttl": "60s", "store": "memory", "vary": [], "stale_while_revalidate": "0s",
                "stale_if_error": "0s", "max_body": "1MiB" })
    );
}

#[test]
fn everything_set() {
    let l = ok(&config(
        "{ ttl: 30s, store: redis, vary: [Accept-Language, accept, Accept], \
         stale_while_revalidate: 10s, stale_if_error: 5m, max_body: 256KiB }",
        "redis: { url: 'redis://127.0.0.1:6379' }\nlimits: { max_cache_bytes: 8MiB }\n",
    ));
    let c = l.routes.routes()[0].cache.as_deref().unwrap().clone();
    assert_eq!(c.store, CacheStore::Redis);
    assert_eq!(
        c.vary,
        ["accept", "accept-language"],
        "lower case, sorted, once each"
    );
    assert_eq!(c.ttl, Duration::from_secs(30));
    assert_eq!(c.stale_while_revalidate, Duration::from_secs(10));
    assert_eq!(c.stale_if_error, Duration::from_secs(300));
    assert_eq!(c.max_body, 256 * 1024);
    assert_eq!(l.settings.limits.max_cache_bytes, 8 * 1024 * 1024);
}

#[test]
fn every_problem_at_its_place() {
    assert_eq!(
        problems(&config(
            "{ ttl: 0s, store: disk, vary: ['X Bad', Authorization], max_body: 0, \
             stale_if_error: 5 }",
            ""
        )),
        [
            "weir.yaml:7:19: routes[0].cache.ttl: must be longer than 0",
            "weir.yaml:7:30: routes[0].cache.store: unknown store \"disk\" (expected memory or redis)",
            "weir.yaml:7:43: routes[0].cache.vary[0]: \"X Bad\" is not a valid header name",
            "weir.yaml:7:52: routes[0].cache.vary[1]: varying on `Authorization` would keep a \
             copy per credential; use `per_consumer: true` on a route with `auth` instead",
            "weir.yaml:7:78: routes[0].cache.max_body: must be at least 1 byte",
            "weir.yaml:7:97: routes[0].cache.stale_if_error: a duration needs a unit: ms, s, m, h, d \
             (e.g. 5s)",
        ]
    );
    assert_eq!(
        problems(&config("{ store: redis }", "")),
        [
            "weir.yaml:7:21: routes[0].cache.store: store: redis needs the top-level `redis` section (url or cluster)"
        ]
    );
    assert_eq!(
        problems(&config("{ per_consumer: true }", "")),
        [
            "weir.yaml:7:28: routes[0].cache.per_consumer: `per_consumer` keys the cache by the \
             authenticated consumer, so the route needs `auth`"
        ]
    );
    assert_eq!(
        problems(&config("{ max_body: 65MiB }", "")),
        ["weir.yaml:7:24: routes[0].cache.max_body: 68157440 bytes is more than the most, 64MiB"]
    );
    let respond =
        "routes:\n  - name: r\n    match: { prefix: /r }\n    respond: {}\n    cache: {}\n";
    assert_eq!(
        problems(respond),
        [
            "weir.yaml:5:5: routes[0].cache: `cache` applies to routes with an `upstream`; a \
             `respond:` route answers from memory already"
        ]
    );
}
