//! Local (memory-store) rate limits (issue 4; contract §3 `rate_limit`, §4 headers, §5
//! `rate_limited`, §7 `weir_rate_limited_total`): how many requests pass, what the client is
//! told, what each key counts by, and that refused requests never reach the upstream.
//!
//! Every policy here has a long window (`per: 1m` or more), so a test's requests all fall in
//! one window and the outcomes do not depend on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use crate::common::limits::{
    Answer, assert_ten_of_thirty, concurrently, metric_sum, rate_limited_total, send,
    start_on_workers,
};
use crate::common::{Backend, DEADLINE, eventually, start};

const ACME_KEY: &str = "rl-acme-key-6b1f0e";
const BOB_KEY: &str = "rl-bob-key-94c2d7";

/// One upstream `be` on `backend` and the given routes (a YAML list, indented as a key of
/// the top level), after `top` (other top-level keys, e.g. `trusted_proxies`).
fn with_routes(backend: &Backend, top: &str, routes: &str) -> String {
    format!(
        "{top}\nupstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\nroutes:\n{routes}",
        top = crate::common::dedent(top),
        url = backend.url(),
        routes = crate::common::dedent(routes)
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>(),
    )
}

/// The route `r` (`/r`) with `policies` (a YAML flow list) and `open` (`/open`) without any.
fn one_route(backend: &Backend, top: &str, policies: &str) -> String {
    with_routes(
        backend,
        top,
        &format!(
            r"
            - name: r
              match: {{ prefix: /r }}
              upstream: be
              rate_limit: {policies}
            - name: open
              match: {{ prefix: /open }}
              upstream: be
            "
        ),
    )
}

const TRUSTED: &str = "trusted_proxies: [127.0.0.1/32]";

fn xff(ip: &str) -> [(&str, &str); 1] {
    [("x-forwarded-for", ip)]
}

#[test]
fn metric_helpers_match_by_name_and_label_subset() {
    let metrics = "# TYPE weir_rate_limited_total counter\n\
                   weir_rate_limited_total{route=\"r\"} 20\n\
                   weir_rate_limited_total{route=\"rr\"} 3\n\
                   weir_rate_limit_overflow_total{route=\"r\",policy=\"0\"} 4\n\
                   weir_rate_limit_overflow_total{route=\"r\",policy=\"1\"} 1\n";
    assert!((rate_limited_total(metrics, "r") - 20.0).abs() < f64::EPSILON);
    assert!(rate_limited_total(metrics, "x").abs() < f64::EPSILON);
    assert_eq!(
        metric_sum(metrics, "weir_rate_limit_overflow_total", &[("route", "r")]),
        Some(5.0)
    );
    assert_eq!(
        metric_sum(metrics, "weir_rate_limit_overflow", &[("route", "r")]),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30_concurrent_requests_admits_exactly_10() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        "workers: 2\n{}",
        one_route(&backend, "", "[ { key: ip, limit: 10, per: 1m } ]")
    );
    let (gw, workers) = start_on_workers(&yaml, 2).await;

    // 30 at once: three HTTP/1.1 clients and two h2c clients, so the burst arrives over many
    // connections on both worker threads.
    let answers = concurrently(&gw, "/r/burst", vec![Vec::new(); 30]).await;
    let refused = assert_ten_of_thirty(&answers, backend.hits(), "30 at once, one limit of 10");
    for a in &refused {
        a.assert_rate_limited("limit of 10 per 1m for ip exceeded", "refused in the burst");
        assert_eq!(a.assert_limited(10, "refused in the burst"), 0);
    }

    // Counted once per refusal, under the route's name.
    eventually("weir_rate_limited_total to reach 20", DEADLINE, || async {
        rate_limited_total(&gw.metrics().await, "r") >= 20.0
    })
    .await;
    let text = gw.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("weir_rate_limited_total{") && l.contains(r#"route="r""#)),
        "{text}"
    );
    assert!(
        (rate_limited_total(&text, "r") - 20.0).abs() < f64::EPSILON,
        "weir_rate_limited_total{{route=\"r\"}} should be 20:\n{text}"
    );
    assert!(
        rate_limited_total(&text, "open").abs() < f64::EPSILON,
        "{text}"
    );
    gw.stop().await;
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactness_holds_per_key_under_heavier_contention() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        "workers: 2\n{}",
        one_route(
            &backend,
            "",
            "[ { key: header:X-Tenant, limit: 20, per: 1m } ]"
        )
    );
    let (gw, workers) = start_on_workers(&yaml, 2).await;
    let tenants = ["t1", "t2", "t3"];
    let requests: Vec<Vec<(String, String)>> = (0..180)
        .map(|i| vec![("x-tenant".to_owned(), tenants[i % 3].to_owned())])
        .collect();
    let answers = concurrently(&gw, "/r/x", requests).await;
    for (t, tenant) in tenants.iter().enumerate() {
        let mine: Vec<&Answer> = answers.iter().skip(t).step_by(3).collect();
        let admitted = mine.iter().filter(|a| a.status == 200).count();
        let refused = mine.iter().filter(|a| a.status == 429).count();
        assert_eq!(
            (admitted, refused),
            (20, 40),
            "tenant {tenant}: 60 at once, limit 20"
        );
    }
    assert_eq!(backend.hits(), 60);
    eventually("weir_rate_limited_total to reach 120", DEADLINE, || async {
        rate_limited_total(&gw.metrics().await, "r") >= 120.0
    })
    .await;
    let text = gw.metrics().await;
    assert!(
        (rate_limited_total(&text, "r") - 120.0).abs() < f64::EPSILON,
        "{text}"
    );
    gw.stop().await;
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_a_rate_limited_problem_with_retry_after() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: ip, limit: 10, per: 1m } ]",
    ))
    .await;
    let started = Instant::now();
    for i in 0..10 {
        send(&gw, "/r/x", &[])
            .await
            .assert_admitted(&format!("request {i}"));
    }
    let refused = send(&gw, "/r/x", &[]).await;
    let elapsed = started.elapsed();
    let retry = refused.assert_rate_limited("limit of 10 per 1m for ip exceeded", "the 11th");
    // One request fits again after one interval, 1m / 10 = 6 s (rounded up to whole seconds).
    if elapsed.as_millis() < 900 {
        assert_eq!(retry, 6, "Retry-After for 10 per 1m");
    } else {
        assert!((1..=6).contains(&retry), "Retry-After {retry}");
    }
    let remaining = refused.assert_limited(10, "the 11th");
    assert_eq!(remaining, 0);
    let reset = refused.reset().unwrap();
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
    // A client-chosen request id is the problem's request_id.
    let refused = send(&gw, "/r/x", &[("x-request-id", "rl-test-req-0001")]).await;
    refused.assert_rate_limited("limit of 10 per 1m for ip exceeded", "with a request id");
    assert!(
        refused.body.contains("rl-test-req-0001"),
        "request_id: {}",
        refused.body
    );
    assert_eq!(backend.hits(), 10);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_headers_are_on_every_response_of_a_limited_route_only() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: ip, limit: 10, per: 1m } ]",
    ))
    .await;
    for i in 0..10u64 {
        // The upstream's own errors are responses of the route too.
        let headers: &[(&str, &str)] = if i == 4 { &[("x-status", "503")] } else { &[] };
        let a = send(&gw, "/r/x", headers).await;
        let expected = if i == 4 { 503 } else { 200 };
        assert_eq!(a.status, expected, "request {i}: {}", a.body);
        let remaining = a.assert_limited(10, &format!("request {i}"));
        assert_eq!(remaining, 9 - i, "RateLimit-Remaining of request {i}");
        let reset = a.reset().unwrap();
        assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
        assert!(
            a.retry_after().is_none(),
            "Retry-After on an admitted response"
        );
    }
    for i in 0..3 {
        let a = send(&gw, "/r/x", &[]).await;
        a.assert_rate_limited("limit of 10 per 1m for ip exceeded", "refused");
        assert_eq!(a.assert_limited(10, &format!("refusal {i}")), 0);
    }
    // A route without rate_limit says nothing about limits, also from the same client.
    for _ in 0..3 {
        let a = send(&gw, "/open/x", &[]).await;
        a.assert_admitted("open route");
        assert!(
            a.unlimited(),
            "rate-limit headers on /open: {:?}",
            a.headers
        );
        assert!(a.headers.get("retry-after").is_none());
    }
    // Nor does a request that matches no route.
    let a = send(&gw, "/nowhere", &[]).await;
    assert_eq!(a.status, 404);
    assert!(a.unlimited(), "{:?}", a.headers);
    assert_eq!(backend.hits(), 13);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_how_many_pass_at_once() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: ip, limit: 60, per: 1h, burst: 3 } ]",
    ))
    .await;
    for i in 0..3u64 {
        let a = send(&gw, "/r/x", &[]).await;
        a.assert_admitted(&format!("request {i}"));
        assert_eq!(a.assert_limited(60, "within the burst"), 2 - i);
    }
    let a = send(&gw, "/r/x", &[]).await;
    let retry = a.assert_rate_limited("limit of 60 per 1h for ip exceeded", "past the burst");
    // The next request fits one interval (1h / 60) after the burst.
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(a.assert_limited(60, "past the burst"), 0);
    assert_eq!(backend.hits(), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_all_must_pass_the_tightest_is_reported_and_refusals_consume_nothing() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        TRUSTED,
        "[ { key: ip, limit: 5, per: 1m }, { key: header:X-Tenant, limit: 2, per: 1m } ]",
    ))
    .await;
    let req = |ip: &'static str, tenant: &'static str| {
        let gw = &gw;
        async move { send(gw, "/r/x", &[("x-forwarded-for", ip), ("x-tenant", tenant)]).await }
    };
    let tenant_detail = "limit of 2 per 1m for header:X-Tenant exceeded";
    let ip_detail = "limit of 5 per 1m for ip exceeded";

    // From 10.0.0.1, tenant a: the tenant limit is the tighter.
    let a = req("10.0.0.1", "a").await;
    a.assert_admitted("a#1");
    assert_eq!(a.assert_limited(2, "a#1 (tenant 1 left, ip 4 left)"), 1);
    let a = req("10.0.0.1", "a").await;
    a.assert_admitted("a#2");
    assert_eq!(a.assert_limited(2, "a#2 (tenant 0 left, ip 3 left)"), 0);
    // Refused by the tenant limit, five times: the ip limit must not count them.
    for i in 0..5 {
        let a = req("10.0.0.1", "a").await;
        a.assert_rate_limited(tenant_detail, &format!("a refused {i}"));
        assert_eq!(a.assert_limited(2, "refused by the tenant limit"), 0);
    }
    // Tenants b and c from the same address: 3 more fit in the ip limit of 5.
    let a = req("10.0.0.1", "b").await;
    a.assert_admitted("b#1");
    assert_eq!(a.assert_limited(2, "b#1 (tenant 1 left, ip 2 left)"), 1);
    let a = req("10.0.0.1", "b").await;
    a.assert_admitted("b#2");
    assert_eq!(a.assert_limited(2, "b#2 (tenant 0 left, ip 1 left)"), 0);
    let a = req("10.0.0.1", "c").await;
    a.assert_admitted("c#1: the tenant refusals did not consume the ip limit");
    assert_eq!(
        a.assert_limited(
            5,
            "c#1 (tenant 1 left, ip 0 left): the ip limit is the tighter"
        ),
        0
    );
    // Now the ip limit refuses tenant d, three times: the tenant limit must not count them.
    for i in 0..3 {
        let a = req("10.0.0.1", "d").await;
        a.assert_rate_limited(ip_detail, &format!("d refused {i}"));
        assert_eq!(a.assert_limited(5, "refused by the ip limit"), 0);
    }
    let a = req("10.0.0.2", "d").await;
    a.assert_admitted("d from another address: the ip refusals did not consume tenant d");
    assert_eq!(a.assert_limited(2, "d#1 (tenant 1 left, ip 4 left)"), 1);
    let a = req("10.0.0.2", "d").await;
    a.assert_admitted("d#2");
    assert_eq!(a.assert_limited(2, "d#2"), 0);
    req("10.0.0.2", "d")
        .await
        .assert_rate_limited(tenant_detail, "d#3");

    assert_eq!(
        backend.hits(),
        7,
        "only the 7 admitted requests reach the backend"
    );
    let text = gw.metrics().await;
    assert!(
        (rate_limited_total(&text, "r") - 9.0).abs() < f64::EPSILON,
        "one count per refused request, whichever policy refused:\n{text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_are_separate_per_value_and_a_missing_header_is_one_key() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: header:X-Tenant, limit: 3, per: 1m } ]",
    ))
    .await;
    let detail = "limit of 3 per 1m for header:X-Tenant exceeded";
    for i in 0..3 {
        send(&gw, "/r/x", &[("x-tenant", "a")])
            .await
            .assert_admitted(&format!("tenant a #{i}"));
    }
    send(&gw, "/r/x", &[("x-tenant", "a")])
        .await
        .assert_rate_limited(detail, "tenant a exhausted");
    // Another value is another bucket, also for a client sending the header name in capitals.
    for i in 0..3u64 {
        let a = send(&gw, "/r/x", &[("X-TENANT", "b")]).await;
        a.assert_admitted(&format!("tenant b #{i}"));
        assert_eq!(a.assert_limited(3, "tenant b"), 2 - i);
    }
    send(&gw, "/r/x", &[("x-tenant", "b")])
        .await
        .assert_rate_limited(detail, "tenant b exhausted");
    send(&gw, "/r/x", &[("x-tenant", "a")])
        .await
        .assert_rate_limited(detail, "tenant a still exhausted");
    // Requests without the header share one bucket of their own.
    for i in 0..3u64 {
        let a = send(&gw, "/r/x", &[]).await;
        a.assert_admitted(&format!("no tenant #{i}"));
        assert_eq!(a.assert_limited(3, "no tenant"), 2 - i);
    }
    send(&gw, "/r/x", &[])
        .await
        .assert_rate_limited(detail, "no tenant exhausted");
    let a = send(&gw, "/r/x", &[("x-tenant", "c")]).await;
    a.assert_admitted("tenant c");
    assert_eq!(a.assert_limited(3, "tenant c"), 2);
    assert_eq!(backend.hits(), 10);
    let text = gw.metrics().await;
    assert!(
        (rate_limited_total(&text, "r") - 4.0).abs() < f64::EPSILON,
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_keys_are_the_right_most_untrusted_forwarded_address() {
    let backend = Backend::start("b").await;
    let policy = "[ { key: ip, limit: 2, per: 1m } ]";
    let detail = "limit of 2 per 1m for ip exceeded";
    let gw = start(&one_route(&backend, TRUSTED, policy)).await;
    for i in 0..2u64 {
        let a = send(&gw, "/r/x", &xff("10.0.0.1")).await;
        a.assert_admitted(&format!("10.0.0.1 #{i}"));
        assert_eq!(a.assert_limited(2, "10.0.0.1"), 1 - i);
    }
    send(&gw, "/r/x", &xff("10.0.0.1"))
        .await
        .assert_rate_limited(detail, "10.0.0.1 exhausted");
    // The same client behind other hops: still 10.0.0.1.
    for chain in ["192.0.2.7, 10.0.0.1", "10.0.0.1, 127.0.0.1"] {
        send(&gw, "/r/x", &xff(chain))
            .await
            .assert_rate_limited(detail, chain);
    }
    // Other clients have their own buckets.
    for (chain, what) in [
        ("10.0.0.2", "10.0.0.2"),
        ("10.0.0.1, 10.0.0.3", "10.0.0.3 behind a spoofed 10.0.0.1"),
    ] {
        let a = send(&gw, "/r/x", &xff(chain)).await;
        a.assert_admitted(what);
        assert_eq!(a.assert_limited(2, what), 1, "{what}");
    }
    // No X-Forwarded-For: the peer itself, 127.0.0.1.
    let a = send(&gw, "/r/x", &[]).await;
    a.assert_admitted("the proxy itself");
    assert_eq!(a.assert_limited(2, "127.0.0.1"), 1);
    assert_eq!(backend.hits(), 5);
    gw.stop().await;

    // Without trusted proxies, X-Forwarded-For is the client's word and changes nothing.
    let backend = Backend::start("b2").await;
    let gw = start(&one_route(&backend, "", policy)).await;
    send(&gw, "/r/x", &xff("10.0.0.1"))
        .await
        .assert_admitted("first");
    send(&gw, "/r/x", &xff("10.0.0.2"))
        .await
        .assert_admitted("second");
    send(&gw, "/r/x", &xff("10.0.0.3"))
        .await
        .assert_rate_limited(detail, "a third forged address, same peer");
    send(&gw, "/r/x", &[])
        .await
        .assert_rate_limited(detail, "the peer");
    assert_eq!(backend.hits(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_keys_are_per_consumer_and_fall_back_to_the_client_address() {
    let backend = Backend::start("b").await;
    let top = format!(
        r#"
        {TRUSTED}
        auth:
          providers:
            keys: {{ type: api_key }}
        consumers:
          - name: acme
            roles: []
            api_keys: ["{ACME_KEY}"]
          - name: bob
            roles: []
            api_keys: ["{BOB_KEY}"]
        "#
    );
    let routes = r"
        - name: keyed
          match: { prefix: /keyed }
          upstream: be
          auth: { providers: [keys] }
          rate_limit: [ { key: consumer, limit: 2, per: 1m } ]
        - name: anon
          match: { prefix: /anon }
          upstream: be
          rate_limit: [ { key: consumer, limit: 2, per: 1m } ]
        ";
    let gw = start(&with_routes(&backend, &top, routes)).await;
    let detail = "limit of 2 per 1m for consumer exceeded";
    let as_consumer = |key: &'static str, ip: &'static str| {
        let gw = &gw;
        async move {
            send(
                gw,
                "/keyed/x",
                &[("x-api-key", key), ("x-forwarded-for", ip)],
            )
            .await
        }
    };
    // acme from two addresses: one bucket, the consumer's.
    let a = as_consumer(ACME_KEY, "10.0.0.1").await;
    a.assert_admitted("acme from 10.0.0.1");
    assert_eq!(a.assert_limited(2, "acme"), 1);
    let a = as_consumer(ACME_KEY, "10.0.0.2").await;
    a.assert_admitted("acme from 10.0.0.2");
    assert_eq!(a.assert_limited(2, "acme"), 0);
    as_consumer(ACME_KEY, "10.0.0.3")
        .await
        .assert_rate_limited(detail, "acme exhausted, from a third address");
    // bob from acme's address: his own bucket.
    for i in 0..2u64 {
        let a = as_consumer(BOB_KEY, "10.0.0.1").await;
        a.assert_admitted(&format!("bob #{i}"));
        assert_eq!(a.assert_limited(2, "bob"), 1 - i);
    }
    as_consumer(BOB_KEY, "10.0.0.1")
        .await
        .assert_rate_limited(detail, "bob exhausted");
    assert_eq!(backend.hits(), 4);

    // Without authentication the consumer is the client address.
    for i in 0..2u64 {
        let a = send(&gw, "/anon/x", &xff("10.0.0.1")).await;
        a.assert_admitted(&format!("anonymous 10.0.0.1 #{i}"));
        assert_eq!(a.assert_limited(2, "anonymous 10.0.0.1"), 1 - i);
    }
    send(&gw, "/anon/x", &xff("10.0.0.1"))
        .await
        .assert_rate_limited(detail, "anonymous 10.0.0.1 exhausted");
    send(&gw, "/anon/x", &xff("192.0.2.9, 10.0.0.1"))
        .await
        .assert_rate_limited(detail, "anonymous 10.0.0.1 behind another hop");
    let a = send(&gw, "/anon/x", &xff("10.0.0.2")).await;
    a.assert_admitted("anonymous 10.0.0.2");
    assert_eq!(a.assert_limited(2, "anonymous 10.0.0.2"), 1);
    assert_eq!(backend.hits(), 7);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_global_keys_count_every_client_together_per_route() {
    let backend = Backend::start("b").await;
    let routes = r"
        - name: r1
          match: { prefix: /r1 }
          upstream: be
          rate_limit: [ { key: route, limit: 2, per: 1m } ]
        - name: r2
          match: { prefix: /r2 }
          upstream: be
          rate_limit: [ { key: route, limit: 2, per: 1m } ]
        - name: g1
          match: { prefix: /g1 }
          upstream: be
          rate_limit: [ { key: global, limit: 2, per: 1m } ]
        - name: g2
          match: { prefix: /g2 }
          upstream: be
          rate_limit: [ { key: global, limit: 2, per: 1m } ]
        ";
    let gw = start(&with_routes(&backend, TRUSTED, routes)).await;
    for (path, key) in [("/r1/x", "route"), ("/g1/x", "global")] {
        // Different clients, one bucket.
        for (i, ip) in ["10.0.0.1", "10.0.0.2"].into_iter().enumerate() {
            let a = send(&gw, path, &xff(ip)).await;
            a.assert_admitted(&format!("{path} from {ip}"));
            assert_eq!(a.assert_limited(2, path), 1 - i as u64);
        }
        send(&gw, path, &xff("10.0.0.3")).await.assert_rate_limited(
            &format!("limit of 2 per 1m for {key} exceeded"),
            &format!("{path} exhausted"),
        );
    }
    // The same policy on another route: another bucket.
    for path in ["/r2/x", "/g2/x"] {
        for i in 0..2u64 {
            let a = send(&gw, path, &xff("10.0.0.1")).await;
            a.assert_admitted(&format!("{path} #{i}"));
            assert_eq!(a.assert_limited(2, path), 1 - i);
        }
        assert_eq!(
            send(&gw, path, &xff("10.0.0.1")).await.status,
            429,
            "{path}"
        );
    }
    assert_eq!(backend.hits(), 8);
    let text = gw.metrics().await;
    for route in ["r1", "r2", "g1", "g2"] {
        assert!(
            (rate_limited_total(&text, route) - 1.0).abs() < f64::EPSILON,
            "{route}:\n{text}"
        );
    }
    gw.stop().await;
}

/// Upstream `be` (with `policies`) and `free` (none), both on `backend`; routes `r1` and
/// `r2` to `be` (`r2` also with `r2_policies` of its own) and `other` to `free`.
fn upstream_limited(backend: &Backend, policies: &str, r2_policies: &str) -> String {
    let url = backend.url();
    format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
            rate_limit: {policies}
          free:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: r1
            match: {{ prefix: /r1 }}
            upstream: be
          - name: r2
            match: {{ prefix: /r2 }}
            upstream: be
            rate_limit: {r2_policies}
          - name: other
            match: {{ prefix: /other }}
            upstream: free
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_global_limit_is_shared_by_all_its_routes() {
    let backend = Backend::start("b").await;
    let gw = start(&upstream_limited(
        &backend,
        "[ { key: global, limit: 3, per: 1m } ]",
        "[]",
    ))
    .await;
    let detail = "limit of 3 per 1m for global exceeded";
    let a = send(&gw, "/r2/x", &[]).await;
    a.assert_admitted("r2 #1");
    assert_eq!(a.assert_limited(3, "r2 #1"), 2);
    for i in 0..2u64 {
        let a = send(&gw, "/r1/x", &[]).await;
        a.assert_admitted(&format!("r1 #{i}"));
        assert_eq!(a.assert_limited(3, "r1"), 1 - i);
    }
    for path in ["/r2/x", "/r1/x", "/r2/y"] {
        let a = send(&gw, path, &[]).await;
        a.assert_rate_limited(detail, &format!("{path} after the upstream's 3"));
        assert_eq!(a.assert_limited(3, path), 0);
    }
    // Another upstream, no limit.
    for _ in 0..5 {
        let a = send(&gw, "/other/x", &[]).await;
        a.assert_admitted("other upstream");
        assert!(a.unlimited(), "{:?}", a.headers);
    }
    assert_eq!(backend.hits(), 8);
    let text = gw.metrics().await;
    assert!(
        (rate_limited_total(&text, "r2") - 2.0).abs() < f64::EPSILON,
        "refusals are counted under the route:\n{text}"
    );
    assert!(
        (rate_limited_total(&text, "r1") - 1.0).abs() < f64::EPSILON,
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_route_limit_is_per_route_and_adds_to_the_routes_own() {
    let backend = Backend::start("b").await;
    let gw = start(&upstream_limited(
        &backend,
        "[ { key: route, limit: 2, per: 1m } ]",
        "[ { key: header:X-Tenant, limit: 5, per: 1m } ]",
    ))
    .await;
    let detail = "limit of 2 per 1m for route exceeded";
    for i in 0..2u64 {
        let a = send(&gw, "/r1/x", &[]).await;
        a.assert_admitted(&format!("r1 #{i}"));
        assert_eq!(a.assert_limited(2, "r1"), 1 - i);
    }
    send(&gw, "/r1/x", &[])
        .await
        .assert_rate_limited(detail, "r1 exhausted");
    // r2 has its own bucket of the upstream's policy, and its own tenant limit: both apply,
    // and the upstream's is the tighter.
    for i in 0..2u64 {
        let a = send(&gw, "/r2/x", &[("x-tenant", "a")]).await;
        a.assert_admitted(&format!("r2 #{i}"));
        assert_eq!(a.assert_limited(2, "r2"), 1 - i);
    }
    let a = send(&gw, "/r2/x", &[("x-tenant", "b")]).await;
    a.assert_rate_limited(detail, "r2 exhausted, whatever the tenant");
    assert_eq!(a.assert_limited(2, "r2 refused"), 0);
    assert_eq!(backend.hits(), 4);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_never_reach_the_backend_even_with_a_body() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: ip, limit: 2, per: 1m } ]",
    ))
    .await;
    let body = vec![b'x'; 64 * 1024];
    // A new client per request: weir closes a connection after refusing a request whose body
    // it did not read (without `Connection: close`), and a pooled connection could then be
    // reused just as it closes. That is the server's general behaviour, not the limiter's.
    let post = || {
        crate::common::client()
            .post(gw.url("/r/upload"))
            .header("x-echo-body", "1")
            .body(body.clone())
            .send()
    };
    for i in 0..2 {
        let a = Answer::read(post().await.expect("POST")).await;
        assert_eq!(a.status, 200, "POST #{i}");
        assert_eq!(a.body.len(), body.len());
    }
    for i in 0..4 {
        let a = Answer::read(post().await.expect("POST")).await;
        a.assert_rate_limited(
            "limit of 2 per 1m for ip exceeded",
            &format!("refused POST #{i}"),
        );
    }
    // Other routes are not affected.
    let a = Answer::read(
        crate::common::client()
            .get(gw.url("/open/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    a.assert_admitted("after refused uploads");
    assert_eq!(backend.hits(), 3);
    assert_eq!(
        backend
            .state
            .bytes_received
            .load(std::sync::atomic::Ordering::SeqCst),
        2 * body.len() as u64,
        "no refused body reached the backend"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_stays_within_max_keys() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend,
        "",
        "[ { key: header:X-Key, limit: 1, per: 1m, max_keys: 16 } ]",
    ))
    .await;
    let mut admitted = Vec::new();
    for i in 0..200 {
        let key = format!("flood-key-{i:03}");
        let a = send(&gw, "/r/x", &[("x-key", key.as_str())]).await;
        match a.status {
            200 => admitted.push(key),
            429 => {
                a.assert_rate_limited("limit of 1 per 1m for header:X-Key exceeded", &key);
            }
            s => panic!("{key}: status {s}: {}", a.body),
        }
    }
    // 16 keys hold a slot each; every other key shares one overflow bucket.
    assert!(
        (16..=17).contains(&admitted.len()),
        "{} of 200 distinct keys admitted with max_keys 16: {admitted:?}",
        admitted.len()
    );
    assert_eq!(backend.hits(), admitted.len());
    // A key that holds a slot is still limited.
    let a = send(&gw, "/r/x", &[("x-key", admitted[0].as_str())]).await;
    assert_eq!(a.status, 429, "{} again", admitted[0]);
    let text = gw.metrics().await;
    let overflow = metric_sum(&text, "weir_rate_limit_overflow_total", &[("route", "r")]);
    assert!(
        overflow.is_some_and(|v| v > 0.0),
        "weir_rate_limit_overflow_total{{route=\"r\"}} should be > 0:\n{text}"
    );
    assert!(
        !text.contains("flood-key"),
        "a key value leaked into /metrics:\n{text}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_flood_of_distinct_keys_is_bounded_too() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        "workers: 2\n{}",
        one_route(
            &backend,
            "",
            "[ { key: header:X-Key, limit: 1, per: 1m, max_keys: 16 } ]"
        )
    );
    let (gw, workers) = start_on_workers(&yaml, 2).await;
    let requests: Vec<Vec<(String, String)>> = (0..200)
        .map(|i| vec![("x-key".to_owned(), format!("flood-key-{i:03}"))])
        .collect();
    let answers = concurrently(&gw, "/r/x", requests).await;
    let admitted = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(admitted + refused, 200);
    assert!(
        (16..=17).contains(&admitted),
        "{admitted} of 200 distinct keys at once admitted with max_keys 16"
    );
    assert_eq!(backend.hits(), admitted);
    let text = gw.metrics().await;
    assert!(
        metric_sum(&text, "weir_rate_limit_overflow_total", &[("route", "r")])
            .is_some_and(|v| v > 0.0),
        "{text}"
    );
    gw.stop().await;
    drop(workers);
}
