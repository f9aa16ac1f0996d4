//! Response caching with the memory store (docs/configuration.md, "Response caching"),
//! through the real gateway: what is looked up and under which key, what is stored and for
//! how long, what clients see (`X-Cache`, `Age`), coalesced misses, stale answers, purging
//! and the metrics. Every test counts what reached the origin, so a cache that answers too
//! much or too little fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::cache::{
    Origin, assert_cache, cache_requests, fetch, gauge, get, origin_n, origin_saw, purge, x_cache,
};
use crate::common::limits::{Answer, concurrently};
use crate::common::{DEADLINE, assert_problem, check_problem_body, eventually, start};

/// One upstream `be` on `origin` and one catch-all route `r` with `cache: <cache>` (a YAML
/// flow map) and `extra` lines under the route.
fn one_route(origin: &Origin, cache: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: be\n    \
         cache: {cache}\n{extra}",
        url = origin.url()
    )
}

/// Request headers of a test case.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// The JSON echo of an origin answer.
fn echo(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not an echo ({e}): {}", a.body))
}

/// `Age` of an answer, which must have one.
fn age(a: &Answer, what: &str) -> u64 {
    a.int("age")
        .unwrap_or_else(|| panic!("{what}: no Age header: {:?}", a.headers))
}

#[tokio::test]
async fn a_miss_is_stored_and_then_hit_with_age_without_reaching_the_origin() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    let first = get(&gw, "/items/1", &[]).await;
    assert_cache(&first, "MISS", "first request");
    assert_eq!(origin_n(&first), 1);
    assert_eq!(first.header("content-type"), Some("application/json"));

    let second = get(&gw, "/items/1", &[]).await;
    assert_cache(&second, "HIT", "second request");
    assert_eq!(second.body, first.body, "the HIT is the stored MISS");
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert!(
        age(&second, "HIT") <= 1,
        "a fresh entry: {:?}",
        second.headers
    );
    assert_eq!(origin.hits(), 1, "the HIT never reached the origin");

    // Another path is another entry.
    let other = get(&gw, "/items/2", &[]).await;
    assert_cache(&other, "MISS", "another path");
    assert_eq!(origin_n(&other), 2);

    // Age grows with the entry's time in the cache.
    let gw_ref = &gw;
    eventually("a HIT with Age >= 1", DEADLINE, move || async move {
        let a = get(gw_ref, "/items/1", &[]).await;
        assert_cache(&a, "HIT", "later request");
        assert_eq!(origin_n(&a), 1);
        age(&a, "later HIT") >= 1
    })
    .await;
    assert_eq!(origin.hits(), 2, "only the two misses reached the origin");
    gw.stop().await;
}

#[tokio::test]
async fn responses_that_must_not_be_stored_are_fetched_every_time() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    // (path, request headers, why it is never stored)
    let cases: &[(&str, Headers, &str)] = &[
        (
            "/no-store",
            &[("x-respond-header", "Cache-Control: no-store")],
            "no-store",
        ),
        (
            "/private",
            &[("x-respond-header", "Cache-Control: private, max-age=60")],
            "private",
        ),
        (
            "/no-cache",
            &[("x-respond-header", "Cache-Control: no-cache")],
            "no-cache",
        ),
        (
            "/cookie",
            &[
                ("x-respond-header", "Cache-Control: public, max-age=60"),
                ("x-respond-header", "Set-Cookie: session=s3cr3t"),
            ],
            "Set-Cookie",
        ),
        ("/vary-star", &[("x-respond-header", "Vary: *")], "Vary: *"),
        ("/error", &[("x-status", "500")], "a 500"),
        (
            "/redirect",
            &[("x-status", "302")],
            "a 302 without explicit freshness",
        ),
        (
            "/asked-no-store",
            &[("cache-control", "no-store")],
            "the request's own no-store",
        ),
    ];
    for (path, headers, why) in cases {
        let a = get(&gw, path, headers).await;
        let b = get(&gw, path, headers).await;
        for (n, x) in [(1, &a), (2, &b)] {
            assert_eq!(x_cache(x), "MISS", "{why}: request {n} to {path}: {x:?}");
        }
        assert_ne!(a.body, b.body, "{why}: two upstream answers");
        assert_eq!(origin.hits_for(path), 2, "{why}: both reached the origin");
    }
    // The Set-Cookie response itself reaches its client unchanged.
    let cookie = get(&gw, "/cookie", cases[3].1).await;
    assert_eq!(cookie.header("set-cookie"), Some("session=s3cr3t"));

    // Controls: the same route stores an ordinary 200 and a 404 (cacheable by default).
    let plain = get(&gw, "/plain", &[]).await;
    assert_cache(&plain, "MISS", "plain");
    assert_cache(&get(&gw, "/plain", &[]).await, "HIT", "plain again");
    let missing = get(&gw, "/missing", &[("x-status", "404")]).await;
    assert_eq!((missing.status, x_cache(&missing)), (404, "MISS"));
    let again = get(&gw, "/missing", &[("x-status", "404")]).await;
    assert_eq!((again.status, x_cache(&again)), (404, "HIT"));
    assert_eq!(again.body, missing.body);
    assert_eq!(
        (origin.hits_for("/plain"), origin.hits_for("/missing")),
        (1, 1)
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_upstreams_freshness_beats_the_route_ttl() {
    let origin = Origin::start().await;
    let yaml = format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n\
         \x20 - {{ name: long, match: {{ prefix: /long }}, upstream: be, cache: {{ ttl: 60s }} }}\n\
         \x20 - {{ name: short, match: {{ prefix: /short }}, upstream: be, cache: {{ ttl: 1s }} }}\n",
        url = origin.url()
    );
    let gw = start(&yaml).await;
    let max1: &[(&str, &str)] = &[("x-respond-header", "Cache-Control: max-age=1")];
    let smax1: &[(&str, &str)] = &[("x-respond-header", "Cache-Control: max-age=60, s-maxage=1")];
    let max60: &[(&str, &str)] = &[("x-respond-header", "Cache-Control: max-age=60")];
    let aged: &[(&str, &str)] = &[
        ("x-respond-header", "Cache-Control: max-age=600"),
        ("x-respond-header", "Age: 100"),
    ];
    // (path, headers, expires after about 1s)
    let cases: &[(&str, Headers, bool)] = &[
        ("/long/max-age-1", max1, true),
        ("/long/s-maxage-1", smax1, true),
        ("/long/plain", &[], false),
        ("/long/aged", aged, false),
        ("/short/plain", &[], true),
        ("/short/max-age-60", max60, false),
    ];
    let stored = Instant::now();
    for (path, headers, _) in cases {
        assert_cache(&get(&gw, path, headers).await, "MISS", path);
        assert_cache(&get(&gw, path, headers).await, "HIT", path);
    }
    // The upstream's Age counts: the entry arrived 100 s old.
    let a = get(&gw, "/long/aged", &[]).await;
    assert_cache(&a, "HIT", "aged");
    let a_age = age(&a, "aged HIT");
    assert!((100..=102).contains(&a_age), "Age {a_age}, expected 100+");

    for (path, headers, _) in cases.iter().filter(|c| c.2) {
        let gw = &gw;
        eventually(&format!("{path} expires"), DEADLINE, move || async move {
            let a = get(gw, path, headers).await;
            match x_cache(&a) {
                "HIT" => false,
                "MISS" => true,
                other => panic!("{path}: X-Cache {other}"),
            }
        })
        .await;
        let elapsed = stored.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900),
            "{path} expired after {elapsed:?}, fresh for 1s"
        );
        assert_eq!(origin.hits_for(path), 2, "{path}: one refetch");
    }
    // The others are still fresh (the long ones hours from expiring).
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(stored.elapsed())).await;
    for (path, headers, _) in cases.iter().filter(|c| !c.2) {
        assert_cache(&get(&gw, path, headers).await, "HIT", path);
        assert_eq!(origin.hits_for(path), 1, "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn vary_keeps_one_variant_per_value_of_a_listed_header() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s, vary: [Accept] }", "")).await;
    let json: &[(&str, &str)] = &[
        ("accept", "application/json"),
        ("x-respond-header", "Vary: Accept"),
    ];
    let text: &[(&str, &str)] = &[
        ("accept", "text/plain"),
        ("x-respond-header", "Vary: Accept"),
    ];

    let j1 = get(&gw, "/doc", json).await;
    let t1 = get(&gw, "/doc", text).await;
    assert_cache(&j1, "MISS", "json");
    assert_cache(&t1, "MISS", "text");
    let j2 = get(&gw, "/doc", json).await;
    let t2 = get(&gw, "/doc", text).await;
    assert_cache(&j2, "HIT", "json again");
    assert_cache(&t2, "HIT", "text again");
    assert_eq!(j2.body, j1.body, "json gets its own variant");
    assert_eq!(t2.body, t1.body, "text gets its own variant");
    assert_eq!(origin_saw(&echo(&j2), "accept"), Some("application/json"));
    assert_eq!(origin_saw(&echo(&t2), "accept"), Some("text/plain"));
    assert_eq!(j2.header("vary"), Some("Accept"));
    assert_eq!(origin.hits_for("/doc"), 2);
    // No Accept is a third variant.
    let none = get(&gw, "/doc", &[("x-respond-header", "Vary: Accept")]).await;
    assert_cache(&none, "MISS", "no Accept");

    // A Vary naming a header the route does not key on: never stored.
    let lang: &[(&str, &str)] = &[("x-respond-header", "Vary: Accept, Accept-Language")];
    assert_cache(
        &get(&gw, "/lang", lang).await,
        "MISS",
        "Vary: Accept-Language",
    );
    assert_cache(
        &get(&gw, "/lang", lang).await,
        "MISS",
        "Vary: Accept-Language again",
    );
    assert_eq!(origin.hits_for("/lang"), 2);
    gw.stop().await;
}

/// The unkeyed-header attack, with a client that is not a trusted proxy: the
/// `X-Forwarded-Host` it sends is replaced by weir (from `Host`), so the upstream never sees
/// it, and what is stored for everyone (the attacker's own MISS) carries none of it.
#[tokio::test]
async fn a_forged_x_forwarded_host_does_not_poison_the_cache() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    let attack = get(&gw, "/page", &[("x-forwarded-host", "evil.example")]).await;
    assert_cache(
        &attack,
        "MISS",
        "the attacker's request populates the entry",
    );
    let seen = echo(&attack);
    assert_eq!(
        origin_saw(&seen, "x-forwarded-host"),
        Some(gw.addr.to_string().as_str()),
        "weir replaced the forged X-Forwarded-Host with the Host: {seen}"
    );
    assert!(!attack.body.contains("evil"), "{}", attack.body);

    let victim = get(&gw, "/page", &[]).await;
    assert_cache(&victim, "HIT", "the victim is served the stored entry");
    assert_eq!(victim.body, attack.body);
    assert!(!victim.body.contains("evil"), "poisoned: {}", victim.body);
    assert_eq!(origin.hits(), 1);
    gw.stop().await;
}

/// Behind a trusted proxy weir keeps the client's `X-Forwarded-Host`; the docs promise that
/// such an unkeyed header "never reaches a stored response, so it cannot poison the cache for
/// others".
#[tokio::test]
async fn x_forwarded_host_from_a_trusted_proxy_does_not_poison_the_cache() {
    let origin = Origin::start().await;
    let gw = start(&format!(
        "trusted_proxies: [127.0.0.1/32]\n{}",
        one_route(&origin, "{ ttl: 60s }", "")
    ))
    .await;

    let attack = get(&gw, "/page", &[("x-forwarded-host", "evil.example")]).await;
    assert_cache(&attack, "MISS", "the attacker's request");
    let victim = get(&gw, "/page", &[]).await;
    assert_eq!(victim.status, 200);
    assert!(
        !victim.body.contains("evil"),
        "X-Cache {}: the victim was served the attacker's reflection: {}",
        x_cache(&victim),
        victim.body
    );
    gw.stop().await;
}

/// Any request header outside the key that the origin reflects: the attacker's MISS must not
/// be what others are served.
#[tokio::test]
async fn an_unkeyed_header_the_origin_reflects_does_not_poison_the_cache() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    let attack = get(&gw, "/page", &[("x-original-url", "/evil")]).await;
    assert_eq!(attack.status, 200);
    let victim = get(&gw, "/page", &[]).await;
    assert_eq!(victim.status, 200);
    assert!(
        !victim.body.contains("evil"),
        "X-Cache {}: the victim was served the attacker's reflection: {}",
        x_cache(&victim),
        victim.body
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_key_ignores_query_order_host_case_and_port_and_path_spelling() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    let first = get(&gw, "/q?a=1&b=2", &[]).await;
    assert_cache(&first, "MISS", "?a=1&b=2");
    let swapped = get(&gw, "/q?b=2&a=1", &[]).await;
    assert_cache(&swapped, "HIT", "?b=2&a=1 is the same entry");
    assert_eq!(swapped.body, first.body);
    assert_eq!(origin.hits_for("/q?b=2&a=1"), 0);

    assert_cache(&get(&gw, "/q?a=1&b=3", &[]).await, "MISS", "another value");
    assert_cache(&get(&gw, "/q", &[]).await, "MISS", "no query");
    // Repeated names keep their order: a list in another order is another query.
    assert_cache(&get(&gw, "/q?a=1&a=2", &[]).await, "MISS", "?a=1&a=2");
    assert_cache(&get(&gw, "/q?a=2&a=1", &[]).await, "MISS", "?a=2&a=1");
    assert_cache(&get(&gw, "/q?a=2&a=1", &[]).await, "HIT", "?a=2&a=1 again");

    // The host is keyed, without port and case.
    let h1 = get(&gw, "/h", &[("host", "Shop.Example")]).await;
    assert_cache(&h1, "MISS", "Host: Shop.Example");
    let h2 = get(&gw, "/h", &[("host", "shop.example:8080")]).await;
    assert_cache(&h2, "HIT", "Host: shop.example:8080");
    assert_eq!(h2.body, h1.body);
    assert_cache(
        &get(&gw, "/h", &[("host", "other.example")]).await,
        "MISS",
        "another host",
    );
    assert_eq!(origin.hits_for("/h"), 2);

    // The path is keyed normalized: an encoded unreserved character is the same path.
    let p1 = get(&gw, "/path/x", &[]).await;
    assert_cache(&p1, "MISS", "/path/x");
    let p2 = get(&gw, "/p%61th/x", &[]).await;
    assert_cache(&p2, "HIT", "/p%61th/x");
    assert_eq!(p2.body, p1.body);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start().await;
    origin.set_delay(Duration::from_millis(300));
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    let answers = concurrently(&gw, "/cold", vec![Vec::new(); 100]).await;
    assert_eq!(origin.hits(), 1, "one upstream request for 100 misses");
    let body = &answers[0].body;
    origin_n(&answers[0]);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
        assert_eq!(&a.body, body, "request {i} got another body");
    }
    let misses = answers.iter().filter(|a| x_cache(a) == "MISS").count();
    let hits = answers.iter().filter(|a| x_cache(a) == "HIT").count();
    assert_eq!(
        (misses, hits),
        (1, 99),
        "one fetched, the others served from it"
    );
    let m = gw.metrics().await;
    assert_eq!(
        (
            cache_requests(&m, "r", "miss"),
            cache_requests(&m, "r", "hit")
        ),
        (1, 99)
    );
    gw.stop().await;
}

#[tokio::test]
async fn authorization_bypasses_a_route_without_per_consumer() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;
    let auth: &[(&str, &str)] = &[("authorization", "Bearer token-of-alice")];

    for i in 1..=2 {
        let a = get(&gw, "/me", auth).await;
        assert_cache(&a, "BYPASS", &format!("with Authorization, request {i}"));
        assert_eq!(
            origin_saw(&echo(&a), "authorization"),
            Some("Bearer token-of-alice")
        );
    }
    assert_eq!(origin.hits(), 2);
    // Nothing was stored by them; an anonymous request stores, and still a credentialed one
    // is not served from it.
    assert_cache(&get(&gw, "/me", &[]).await, "MISS", "anonymous");
    assert_cache(&get(&gw, "/me", &[]).await, "HIT", "anonymous again");
    let a = get(&gw, "/me", auth).await;
    assert_cache(&a, "BYPASS", "with Authorization, after a stored entry");
    assert_eq!(origin_n(&a), 4);
    assert_eq!(origin.hits(), 4);
    gw.stop().await;
}

const ACME_KEY: &str = "cache-acme-key-6b1f0e";
const BOB_KEY: &str = "cache-bob-key-2d93aa";

/// An api_key provider `keys` (header `X-Api-Key`, query `api_key`) with consumers `acme`
/// and `bob`, and the catch-all route `r` behind it with `cache: <cache>`.
fn keys_route(origin: &Origin, cache: &str) -> String {
    format!(
        "auth:\n  providers:\n    keys: {{ type: api_key, header: X-Api-Key, query: api_key }}\n\
         consumers:\n\
         \x20 - {{ name: acme, roles: [], api_keys: [\"{ACME_KEY}\"] }}\n\
         \x20 - {{ name: bob, roles: [], api_keys: [\"{BOB_KEY}\"] }}\n{}",
        one_route(origin, cache, "    auth: { providers: [keys] }\n")
    )
}

#[tokio::test]
async fn per_consumer_keeps_one_entry_per_consumer() {
    let origin = Origin::start().await;
    let gw = start(&keys_route(&origin, "{ ttl: 60s, per_consumer: true }")).await;
    let acme: &[(&str, &str)] = &[("x-api-key", ACME_KEY)];
    let bob: &[(&str, &str)] = &[("x-api-key", BOB_KEY)];

    let a1 = get(&gw, "/account", acme).await;
    assert_cache(&a1, "MISS", "acme");
    assert_eq!(origin_saw(&echo(&a1), "x-consumer"), Some("acme"));
    let b1 = get(&gw, "/account", bob).await;
    assert_cache(&b1, "MISS", "bob, after acme's entry");
    assert_eq!(origin_saw(&echo(&b1), "x-consumer"), Some("bob"));

    let a2 = get(&gw, "/account", acme).await;
    assert_cache(&a2, "HIT", "acme again");
    assert_eq!(a2.body, a1.body, "acme gets acme's entry");
    let b2 = get(&gw, "/account", bob).await;
    assert_cache(&b2, "HIT", "bob again");
    assert_eq!(b2.body, b1.body, "bob gets bob's entry");
    assert_eq!(origin.hits(), 2);

    // The key in the query is not part of the cache key: the same consumer, the same entry.
    let a3 = get(&gw, &format!("/account?api_key={ACME_KEY}"), &[]).await;
    assert_cache(&a3, "HIT", "acme by query");
    assert_eq!(a3.body, a1.body);
    // Authorization on a per_consumer route is not a bypass.
    let a4 = get(
        &gw,
        "/account",
        &[("x-api-key", ACME_KEY), ("authorization", "Bearer x")],
    )
    .await;
    assert_cache(&a4, "HIT", "acme with Authorization");
    assert_eq!(a4.body, a1.body);

    // Without a credential, nothing is served from the cache.
    let anon = gw.get("/account").await;
    assert_problem(anon, 401, "unauthorized").await;
    let wrong = gw
        .client
        .get(gw.url("/account"))
        .header("x-api-key", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 401, "unauthorized").await;
    assert_eq!(origin.hits(), 2);
    gw.stop().await;
}

/// A route with `auth` by API key whose cache does not mention `per_consumer`: it is per
/// consumer by default, so no consumer is ever served another's response. Written
/// `per_consumer: false`, every consumer shares one entry, and the upstream is not told who
/// asked (the consumer is not in the key).
#[tokio::test]
async fn on_an_auth_route_one_consumer_is_never_served_anothers_response() {
    let origin = Origin::start().await;
    let gw = start(&keys_route(&origin, "{ ttl: 60s }")).await;

    let a = get(&gw, "/account", &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(origin_saw(&echo(&a), "x-consumer"), Some("acme"));
    let b = get(&gw, "/account", &[("x-api-key", BOB_KEY)]).await;
    assert_eq!(b.status, 200);
    assert_eq!(
        origin_saw(&echo(&b), "x-consumer"),
        Some("bob"),
        "X-Cache {}: bob was served acme's response: {}",
        x_cache(&b),
        b.body
    );
    gw.stop().await;

    let shared = Origin::start().await;
    let gw = start(&keys_route(&shared, "{ ttl: 60s, per_consumer: false }")).await;
    let a = get(&gw, "/account", &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(origin_saw(&echo(&a), "x-consumer"), None, "{}", a.body);
    let b = get(&gw, "/account", &[("x-api-key", BOB_KEY)]).await;
    assert_eq!((x_cache(&b), shared.hits()), ("HIT", 1));
    assert_eq!(b.body, a.body);
    gw.stop().await;
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get_and_post_bypasses() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;

    // A cold HEAD goes upstream and stores nothing.
    let cold = fetch(&gw, "HEAD", "/h", &[]).await;
    assert_eq!((cold.status, x_cache(&cold)), (200, "MISS"));
    let g = get(&gw, "/h", &[]).await;
    assert_cache(&g, "MISS", "GET after a cold HEAD");
    assert_eq!(origin.hits(), 2);

    let head = fetch(&gw, "HEAD", "/h", &[]).await;
    assert_cache(&head, "HIT", "HEAD after a GET");
    assert!(head.body.is_empty(), "a HEAD has no body: {:?}", head.body);
    assert_eq!(head.int("content-length"), Some(g.body.len() as u64));
    assert!(head.header("age").is_some());
    assert_eq!(origin.hits(), 2, "the HEAD did not reach the origin");

    for i in 1..=2 {
        let post = fetch(&gw, "POST", "/h", &[]).await;
        assert_cache(&post, "BYPASS", &format!("POST {i}"));
        assert_eq!(echo(&post)["method"], "POST");
    }
    assert_eq!(origin.hits(), 4, "every POST reached the origin");
    gw.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_or_without_a_length_stream_through_uncached() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s, max_body: 1KiB }", "")).await;

    for i in 1..=2 {
        let big = get(&gw, "/big", &[("x-body-bytes", "1025")]).await;
        assert_cache(&big, "MISS", &format!("1025 bytes, request {i}"));
        assert_eq!(big.body.len(), 1025, "the whole body streamed through");
        assert!(big.body.bytes().all(|b| b == b'a'));

        let huge = get(&gw, "/huge", &[("x-body-bytes", "300000")]).await;
        assert_cache(&huge, "MISS", &format!("300000 bytes, request {i}"));
        assert_eq!(huge.body.len(), 300_000);

        let chunked = get(&gw, "/chunked", &[("x-chunked-bytes", "100")]).await;
        assert_cache(&chunked, "MISS", &format!("no Content-Length, request {i}"));
        assert_eq!(chunked.body.len(), 100);
    }
    assert_eq!(
        (
            origin.hits_for("/big"),
            origin.hits_for("/huge"),
            origin.hits_for("/chunked")
        ),
        (2, 2, 2)
    );
    // At the limit it is stored.
    let fits = get(&gw, "/fits", &[("x-body-bytes", "1024")]).await;
    assert_cache(&fits, "MISS", "1024 bytes");
    let again = get(&gw, "/fits", &[("x-body-bytes", "1024")]).await;
    assert_cache(&again, "HIT", "1024 bytes again");
    assert_eq!(again.body.len(), 1024);
    assert_eq!(origin.hits_for("/fits"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::start().await;
    let gw = start(&one_route(
        &origin,
        "{ ttl: 1s, stale_while_revalidate: 10s }",
        "",
    ))
    .await;
    let first = get(&gw, "/s", &[]).await;
    assert_cache(&first, "MISS", "first");
    let revalidate: &[(&str, &str)] = &[(
        "x-respond-header",
        "Cache-Control: max-age=1, must-revalidate",
    )];
    assert_cache(
        &get(&gw, "/mr", revalidate).await,
        "MISS",
        "must-revalidate",
    );
    assert_cache(
        &get(&gw, "/mr", revalidate).await,
        "HIT",
        "must-revalidate again",
    );

    // The refresh will take a while: a stale answer must not wait for it.
    origin.set_delay(Duration::from_millis(1500));
    let gw_ref = &gw;
    let slot = Mutex::new(None);
    let found = &slot;
    eventually("a STALE answer", DEADLINE, move || async move {
        let t = Instant::now();
        let a = get(gw_ref, "/s", &[]).await;
        match x_cache(&a) {
            "HIT" => false,
            "STALE" => {
                *found.lock().unwrap() = Some((a, t.elapsed()));
                true
            }
            other => panic!("X-Cache {other} before the stale answer: {a:?}"),
        }
    })
    .await;
    let (stale, took) = slot.lock().unwrap().take().unwrap();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body, "the stale answer is the stored one");
    assert!(age(&stale, "STALE") >= 1);
    assert!(
        took < Duration::from_millis(1000),
        "the stale answer waited {took:?} (the refresh takes 1.5s)"
    );
    // While the refresh runs, others are answered stale too, and start no other refresh.
    for i in 0..5 {
        let a = get(&gw, "/s", &[]).await;
        assert_cache(&a, "STALE", &format!("during the refresh, request {i}"));
        assert_eq!(a.body, first.body);
    }
    eventually("the refreshed entry", DEADLINE, || async {
        let a = get(&gw, "/s", &[]).await;
        assert_eq!(a.status, 200);
        x_cache(&a) == "HIT" && origin_n(&a) != origin_n(&first)
    })
    .await;
    assert_eq!(origin.hits_for("/s"), 2, "exactly one background refresh");
    let m = gw.metrics().await;
    assert!(cache_requests(&m, "r", "stale") >= 6, "{m}");

    // must-revalidate is stored without stale windows: past freshness it is a MISS.
    origin.set_delay(Duration::ZERO);
    let mr = get(&gw, "/mr", revalidate).await;
    assert_cache(&mr, "MISS", "must-revalidate past freshness");
    assert_eq!(origin.hits_for("/mr"), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_old_answer_while_the_upstream_is_down() {
    // `checked`: active health checks take the dead target out (503 upstream_unavailable);
    // `plain`: the connection is refused (502 bad_gateway), and the route has a fallback,
    // which stale beats.
    let checked = Origin::start().await;
    let plain = Origin::start().await;
    let yaml = format!(
        "upstreams:\n\
         \x20 checked:\n\
         \x20   targets: [{{ url: \"{c}\" }}]\n\
         \x20   health_check: {{ active: {{ interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }} }}\n\
         \x20 plain:\n\
         \x20   targets: [{{ url: \"{p}\" }}]\n\
         routes:\n\
         \x20 - name: checked\n\
         \x20   match: {{ prefix: /checked }}\n\
         \x20   upstream: checked\n\
         \x20   cache: {{ ttl: 1s, stale_if_error: 2s }}\n\
         \x20 - name: plain\n\
         \x20   match: {{ prefix: /plain }}\n\
         \x20   upstream: plain\n\
         \x20   cache: {{ ttl: 1s, stale_if_error: 2s }}\n\
         \x20   fallback: {{ status: 200, content_type: text/plain, body: fallback }}\n",
        c = checked.url(),
        p = plain.url()
    );
    let gw = start(&yaml).await;
    let c1 = get(&gw, "/checked/x", &[]).await;
    let p1 = get(&gw, "/plain/x", &[]).await;
    let stored = Instant::now();
    assert_cache(&c1, "MISS", "checked");
    assert_cache(&p1, "MISS", "plain");
    checked.stop().await;
    plain.stop().await;

    for (path, first) in [("/checked/x", &c1), ("/plain/x", &p1)] {
        let gw = &gw;
        eventually(
            &format!("{path} served stale"),
            DEADLINE,
            move || async move {
                let a = get(gw, path, &[]).await;
                match x_cache(&a) {
                    "HIT" => false,
                    "STALE" => {
                        assert_eq!(a.status, 200, "{path}");
                        assert_eq!(&a.body, &first.body, "{path}: the old body");
                        assert!(age(&a, path) >= 1);
                        true
                    }
                    other => panic!("{path}: X-Cache {other}: {a:?}"),
                }
            },
        )
        .await;
    }
    assert!(
        stored.elapsed() < Duration::from_millis(2900),
        "checked within the window: {:?}",
        stored.elapsed()
    );

    // Past the window (1s fresh + 2s): weir's own error, and then the fallback.
    let past = Duration::from_millis(3100);
    tokio::time::sleep(past.saturating_sub(stored.elapsed())).await;
    let resp = gw.get("/checked/x").await;
    assert_problem(resp, 503, "upstream_unavailable").await;
    let fb = get(&gw, "/plain/x", &[]).await;
    assert_eq!((fb.status, fb.body.as_str()), (200, "fallback"));
    assert_eq!(fb.header("x-fallback"), Some("true"));
    assert_eq!((checked.hits(), plain.hits()), (1, 1));
    gw.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_old_answer_when_the_upstream_answers_5xx() {
    let origin = Origin::start().await;
    let yaml = format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n\
         \x20 - {{ name: sie, match: {{ prefix: /sie }}, upstream: be, cache: {{ ttl: 1s, stale_if_error: 30s }} }}\n\
         \x20 - {{ name: none, match: {{ prefix: /none }}, upstream: be, cache: {{ ttl: 1s }} }}\n",
        url = origin.url()
    );
    let gw = start(&yaml).await;
    let first = get(&gw, "/sie/x", &[]).await;
    assert_cache(&first, "MISS", "sie");
    assert_cache(&get(&gw, "/none/x", &[]).await, "MISS", "none");

    let gw_ref = &gw;
    let first_ref = &first;
    eventually("a 503 answered stale", DEADLINE, move || async move {
        let a = get(gw_ref, "/sie/x", &[("x-status", "503")]).await;
        match x_cache(&a) {
            "HIT" => false,
            "STALE" => {
                assert_eq!(a.status, 200, "the stale 200, not the 503");
                assert_eq!(a.body, first_ref.body);
                true
            }
            other => panic!("X-Cache {other}: {a:?}"),
        }
    })
    .await;
    assert_eq!(
        origin.hits_for("/sie/x"),
        2,
        "the upstream was asked and answered 503"
    );
    for status in ["500", "502", "504"] {
        let a = get(&gw, "/sie/x", &[("x-status", status)]).await;
        assert_cache(&a, "STALE", &format!("upstream answering {status}"));
        assert_eq!(a.body, first.body);
    }
    // A 404 is an answer, not a failure: it replaces the entry.
    let nf = get(&gw, "/sie/x", &[("x-status", "404")]).await;
    assert_eq!((nf.status, x_cache(&nf)), (404, "MISS"));

    // Without stale_if_error, the 503 passes through.
    let a = get(&gw, "/none/x", &[("x-status", "503")]).await;
    assert_eq!((a.status, x_cache(&a)), (503, "MISS"), "{a:?}");
    gw.stop().await;
}

#[tokio::test]
async fn purge_by_route_and_by_prefix() {
    let origin = Origin::start().await;
    let yaml = format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n\
         \x20 - {{ name: a, match: {{ prefix: /a }}, upstream: be, cache: {{ ttl: 60s }} }}\n\
         \x20 - {{ name: b, match: {{ prefix: /b }}, upstream: be, cache: {{ ttl: 60s }} }}\n\
         \x20 - {{ name: open, match: {{ prefix: / }}, upstream: be }}\n",
        url = origin.url()
    );
    let gw = start(&yaml).await;
    let paths = ["/a/1", "/a/2", "/a/x/3", "/b/1?v=1", "/b/1?v=2", "/b/2"];
    for p in paths {
        assert_cache(&get(&gw, p, &[]).await, "MISS", p);
    }
    assert_eq!(gauge(&gw.metrics().await, "weir_cache_memory_entries"), 6.0);

    let (status, v, _) = purge(&gw, r#"{"route": "a"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 3})));
    for p in ["/a/1", "/a/2", "/a/x/3"] {
        assert_cache(
            &get(&gw, p, &[]).await,
            "MISS",
            &format!("{p} after the purge"),
        );
    }
    assert_cache(&get(&gw, "/b/2", &[]).await, "HIT", "route b untouched");

    // A prefix is matched against the path without the query.
    let (status, v, _) = purge(&gw, r#"{"prefix": "/b/1"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 2})));
    for p in ["/b/1?v=1", "/b/1?v=2"] {
        assert_cache(
            &get(&gw, p, &[]).await,
            "MISS",
            &format!("{p} after the purge"),
        );
    }
    assert_cache(&get(&gw, "/b/2", &[]).await, "HIT", "/b/2 untouched");
    let (status, v, _) = purge(&gw, r#"{"prefix": "/nothing"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 0})));
    // A route without cache can be named; it has nothing.
    let (status, v, _) = purge(&gw, r#"{"route": "open"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 0})));
    let (status, v, _) = purge(&gw, r#"{"prefix": "/"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 6})));
    assert_eq!(gauge(&gw.metrics().await, "weir_cache_memory_entries"), 0.0);

    for bad in [
        "",
        "not json",
        "[1]",
        "{}",
        r#"{"route": "a", "prefix": "/a"}"#,
        r#"{"route": "nope"}"#,
        r#"{"route": 5}"#,
        r#"{"prefix": "b/1"}"#,
        r#"{"route": "a", "extra": 1}"#,
    ] {
        let (status, v, ct) = purge(&gw, bad).await;
        assert_eq!(status, 400, "{bad:?}: {v}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{bad:?}");
        check_problem_body(&v, 400, "bad_request", None);
    }
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_results_per_route_and_memory_entries() {
    let origin = Origin::start().await;
    let gw = start(&one_route(&origin, "{ ttl: 60s }", "")).await;
    let m = gw.metrics().await;
    assert_eq!(gauge(&m, "weir_cache_memory_entries"), 0.0);
    assert!(!m.contains("weir_cache_redis_up "), "no Redis configured");

    assert_cache(&get(&gw, "/m/1", &[]).await, "MISS", "miss");
    assert_cache(&get(&gw, "/m/1", &[]).await, "HIT", "hit");
    assert_cache(&get(&gw, "/m/1", &[]).await, "HIT", "hit");
    assert_cache(&get(&gw, "/m/2", &[]).await, "MISS", "miss");
    assert_cache(&fetch(&gw, "POST", "/m/1", &[]).await, "BYPASS", "post");

    let m = gw.metrics().await;
    let counts: Vec<u64> = ["hit", "miss", "stale", "bypass"]
        .iter()
        .map(|r| cache_requests(&m, "r", r))
        .collect();
    assert_eq!(counts, [2, 2, 0, 1], "hit, miss, stale, bypass:\n{m}");
    assert_eq!(gauge(&m, "weir_cache_memory_entries"), 2.0);
    assert!(gauge(&m, "weir_cache_memory_bytes") > 0.0);

    let (status, _, _) = purge(&gw, r#"{"route": "r"}"#).await;
    assert_eq!(status, 200);
    let m = gw.metrics().await;
    assert_eq!(gauge(&m, "weir_cache_memory_entries"), 0.0);
    gw.stop().await;
}
