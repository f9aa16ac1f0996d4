//! Route and upstream `rate_limit`: the policies built, their defaults, and every problem at
//! its exact place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{ok, problems};
use serde_json::json;
use weir_domain::ratelimit::{LimitKey, LimitStore, OnError, RateLimitPolicy};

const GOOD: &str = "\
auth:
  providers:
    keys: { type: api_key }
upstreams:
  orders:
    targets: [{ url: http://10.0.0.1:9000 }]
    rate_limit:
      - { key: global, limit: 1000, per: 1s, max_keys: 1000 }
routes:
  - name: orders
    match: { prefix: /orders }
    upstream: orders
    auth: { providers: [keys] }
    rate_limit:
      - { key: ip, limit: 10, per: 1m }
      - key: consumer
        limit: 100
        per: 1m
        burst: 20
        store: memory
        max_keys: 16
      - { key: 'header:X-Tenant', limit: 5, per: 250ms }
      - { key: ip, limit: 10, per: 1m, burst: 1 }
  - name: open
    respond: {}
";

fn policy(
    key: LimitKey,
    limit: u32,
    per: Duration,
    burst: u32,
    max_keys: usize,
) -> RateLimitPolicy {
    RateLimitPolicy {
        key,
        limit,
        per,
        burst,
        store: LimitStore::Memory,
        on_error: OnError::Allow,
        max_keys,
    }
}

#[test]
fn a_good_config_builds_its_policies_with_defaults() {
    let l = ok(GOOD);
    let minute = Duration::from_secs(60);
    let route = &l.routes.routes()[0];
    assert_eq!(
        route.rate_limits,
        [
            // burst = limit, memory store, on_error allow, 65536 keys.
            policy(LimitKey::Ip, 10, minute, 10, 65_536),
            policy(LimitKey::Consumer, 100, minute, 20, 16),
            policy(
                LimitKey::Header("x-tenant".into()),
                5,
                Duration::from_millis(250),
                5,
                65_536
            ),
            // Same key, limit and per as the first, another burst: a different limit.
            policy(LimitKey::Ip, 10, minute, 1, 65_536),
        ]
    );
    assert!(l.routes.routes()[1].rate_limits.is_empty());
    // max_keys is rounded up to a power of two: 1000 -> 1024.
    assert_eq!(
        l.upstreams[0].rate_limits,
        [policy(
            LimitKey::Global,
            1000,
            Duration::from_secs(1),
            1000,
            1024
        )]
    );
}

#[test]
fn the_effective_config_shows_every_policy_with_its_defaults() {
    let l = ok(GOOD);
    let route = &l.effective["routes"][0]["rate_limit"];
    assert_eq!(
        route,
        &json!([
            { "key": "ip", "limit": 10, "per": "1m", "burst": 10, "store": "memory", "max_keys": 65536 },
            { "key": "consumer", "limit": 100, "per": "1m", "burst": 20, "store": "memory", "max_keys": 16 },
            { "key": "header:x-tenant", "limit": 5, "per": "250ms", "burst": 5, "store": "memory", "max_keys": 65536 },
            { "key": "ip", "limit": 10, "per": "1m", "burst": 1, "store": "memory", "max_keys": 65536 },
        ])
    );
    assert_eq!(
        l.effective["upstreams"]["orders"]["rate_limit"],
        json!([{ "key": "global", "limit": 1000, "per": "1s", "burst": 1000, "store": "memory", "max_keys": 1024 }])
    );
    // A route without limits shows none.
    assert!(l.effective["routes"][1].get("rate_limit").is_none());
}

#[test]
fn extreme_but_exact_limits_load() {
    // One request per microsecond per key is the finest spacing; 16 and 2^24 keys the bounds.
    let l = ok("\
routes:
  - name: r
    respond: {}
    rate_limit:
      - { key: route, limit: 1000, per: 1ms, max_keys: 16 }
      - { key: global, limit: 1, per: 8760h, burst: 500, max_keys: 16777216 }
      - { key: ip, limit: 4294967295, per: 5000s, max_keys: 17 }
");
    let limits = &l.routes.routes()[0].rate_limits;
    assert_eq!(limits[0].rate().interval, 1_000);
    assert_eq!(limits[1].max_keys, 1 << 24);
    assert_eq!(limits[2].max_keys, 32);
}

/// A valid base: an upstream and a route to append a broken route to.
const BASE: &str = "\
upstreams:
  users:
    targets: [{ url: http://10.0.0.1:9000 }]
routes:
  - name: ok
    match: { prefix: /ok }
    upstream: users
";

fn with_route(route: &str) -> Vec<String> {
    problems(&format!("{BASE}{route}"))
}

#[test]
fn key_problems() {
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { key: consumr, limit: 1, per: 1s }
      - { key: 'header:', limit: 1, per: 1s }
      - { key: 'headers:X-Tenant', limit: 1, per: 1s }
      - { key: 'header:X Tenant', limit: 1, per: 1s }
      - { key: user, limit: 1, per: 1s }
",
    );
    assert_eq!(
        p,
        [
            r#"weir.yaml:11:16: routes[1].rate_limit[0].key: "consumr" is not one of consumer, ip, route, header:NAME, global; did you mean "consumer"?"#,
            "weir.yaml:12:16: routes[1].rate_limit[1].key: `header:` needs a header name, such as header:X-Tenant",
            r#"weir.yaml:13:16: routes[1].rate_limit[2].key: "headers:X-Tenant" is not one of consumer, ip, route, header:NAME, global; did you mean "header:X-Tenant"?"#,
            r#"weir.yaml:14:16: routes[1].rate_limit[3].key: "X Tenant" is not a valid header name"#,
            r#"weir.yaml:15:16: routes[1].rate_limit[4].key: "user" is not one of consumer, ip, route, header:NAME, global"#,
        ]
    );
    // A missing key stops the typing of the route, like every missing required key.
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { limit: 1, per: 1s }
",
    );
    assert_eq!(
        p,
        [r#"weir.yaml:11:9: routes[1].rate_limit[0]: missing required key "key""#]
    );
}

#[test]
fn number_and_duration_problems() {
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { key: ip, limit: 0, per: 0s, burst: 0 }
      - { key: ip, limit: 1, per: 1 }
      - { key: ip, limit: 2000, per: 1ms }
      - { key: ip, limit: 1, per: 1h, burst: 4294967295 }
      - { key: ip, limit: 1, per: 1s, max_keys: 15 }
      - { key: ip, limit: 2, per: 1s, max_keys: 16777217 }
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:11:27: routes[1].rate_limit[0].limit: must be at least 1",
            "weir.yaml:11:35: routes[1].rate_limit[0].per: must be longer than 0",
            "weir.yaml:11:46: routes[1].rate_limit[0].burst: must be at least 1",
            "weir.yaml:12:35: routes[1].rate_limit[1].per: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            "weir.yaml:13:27: routes[1].rate_limit[2].limit: more than 1,000,000 requests per second per key cannot be limited precisely",
            "weir.yaml:14:46: routes[1].rate_limit[3].burst: per / limit × burst must be under 584 years",
            "weir.yaml:15:49: routes[1].rate_limit[4].max_keys: 15 is not between 16 and 16777216",
            "weir.yaml:16:49: routes[1].rate_limit[5].max_keys: 16777217 is not between 16 and 16777216",
        ]
    );
}

#[test]
fn store_problems() {
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { key: ip, limit: 1, per: 1s, store: redis }
      - { key: ip, limit: 2, per: 1s, on_error: deny }
      - { key: ip, limit: 3, per: 1s, store: memory, on_error: allow }
      - { key: ip, limit: 4, per: 1s, store: disk }
      - { key: ip, limit: 5, per: 1s, store: redis, on_error: maybe, max_keys: 1024 }
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:11:46: routes[1].rate_limit[0].store: store: redis needs the top-level `redis` section (url or cluster)",
            "weir.yaml:12:39: routes[1].rate_limit[1].on_error: on_error applies only to store: redis",
            "weir.yaml:13:54: routes[1].rate_limit[2].on_error: on_error applies only to store: redis",
            r#"weir.yaml:14:46: routes[1].rate_limit[3].store: "disk" is not one of memory, redis"#,
            "weir.yaml:15:46: routes[1].rate_limit[4].store: store: redis needs the top-level `redis` section (url or cluster)",
            r#"weir.yaml:15:63: routes[1].rate_limit[4].on_error: "maybe" is not one of allow, deny"#,
            "weir.yaml:15:70: routes[1].rate_limit[4].max_keys: max_keys applies only to store: memory",
        ]
    );
}

#[test]
fn duplicate_policies() {
    // `1m` and `60s` are the same period; the default burst is the limit.
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { key: 'header:X-Tenant', limit: 10, per: 1m }
      - { key: ip, limit: 10, per: 1m }
      - { key: 'header:x-tenant', limit: 10, per: 60s, burst: 10, max_keys: 16 }
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:13:9: routes[1].rate_limit[2]: duplicate rate limit: rate_limit[0] has the same key, limit, per and burst"
        ]
    );
}

#[test]
fn upstream_problems_are_located_under_the_upstream() {
    let yaml = "\
upstreams:
  users:
    targets: [{ url: http://10.0.0.1:9000 }]
    rate_limit:
      - { key: global, limit: 0, per: 1s }
      - { key: route, limit: 1, per: 1s }
      - { key: route, limit: 1, per: 1000ms }
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:5:31: upstreams.users.rate_limit[0].limit: must be at least 1",
            "weir.yaml:7:9: upstreams.users.rate_limit[2]: duplicate rate limit: rate_limit[1] has the same key, limit, per and burst",
        ]
    );
}

#[test]
fn a_rate_limit_is_a_list() {
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit: { key: ip, limit: 1, per: 1s }
",
    );
    assert_eq!(
        p,
        ["weir.yaml:10:17: routes[1].rate_limit: expected a list, found a map"]
    );
}

#[test]
fn a_rate_limit_key_is_neither_hidden_nor_scrubbed() {
    // `key` is a secret's name elsewhere; here it says what is counted, and a message that
    // mentions "consumer" or the header is not mangled.
    let p = with_route(
        "  - name: r
    respond: {}
    rate_limit:
      - { key: 'header:X Tenant', limit: 1, per: 1s }
      - { key: consumer, limit: 0, per: 1s }
    auth: { providers: [consumer-keys] }
",
    );
    assert_eq!(
        p,
        [
            r#"weir.yaml:11:16: routes[1].rate_limit[0].key: "X Tenant" is not a valid header name"#,
            "weir.yaml:12:33: routes[1].rate_limit[1].limit: must be at least 1",
            r#"weir.yaml:13:25: routes[1].auth.providers[0]: unknown provider "consumer-keys" (no providers are defined under auth.providers)"#,
        ]
    );
}
