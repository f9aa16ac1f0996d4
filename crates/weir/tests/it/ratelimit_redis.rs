//! Distributed (Redis-store) rate limits (issue 4; contract §3 `rate_limit` with
//! `store: redis`, the top-level `redis`, §4 headers, §5 `rate_limited`): several weir
//! gateways sharing one real `redis-server` share one limit, exactly and accurately; when
//! Redis is down or frozen each policy's `on_error` decides and weir never answers 5xx; when
//! Redis is back, limits apply again without a restart.
//!
//! Each test starts its own `redis-server` on a free port (`crate::common::redis`) and several weir
//! gateways in this process with the same config: each gateway has its own state, so they
//! model several weir processes sharing one Redis. Without `redis-server` the tests are
//! skipped loudly, or fail under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::idp::TestCa;
use crate::common::limits::{
    Answer, assert_ten_of_thirty, concurrently, metric_sum, rate_limited_total, send,
};
use crate::common::redis::RedisServer;
use crate::common::{Backend, DEADLINE, Gateway, check_problem_body, eventually, start};
use serde_json::Value;

/// `redis.timeout` of the tests about outages: the documented default.
const OUTAGE_TIMEOUT: &str = "50ms";
/// `redis.timeout` of the tests about counting: generous, so that a debug build on a busy
/// machine never falls back to `on_error` (which every such test checks did not happen).
const COUNTING_TIMEOUT: &str = "1s";

/// A config with the top-level `redis` on `redis` (`url`, or `cluster` for a cluster node;
/// with `timeout`), one upstream `be` on `backend` and one route per `(name, policies)`:
/// prefix `/<name>`, `rate_limit: <policies>` (a YAML flow list).
fn redis_config(
    redis: &RedisServer,
    timeout: &str,
    backend: &Backend,
    routes: &[(&str, &str)],
) -> String {
    let server = if redis.is_cluster() {
        format!("cluster: [\"{}\"]", redis.url())
    } else {
        format!("url: \"{}\"", redis.url())
    };
    let mut out = format!(
        "redis: {{ {server}, timeout: {timeout} }}\n\
         upstreams:\n  be:\n    targets: [{{ url: \"{backend}\" }}]\n\
         routes:\n",
        backend = backend.url(),
    );
    for (name, policies) in routes {
        out.push_str(&format!(
            "  - name: {name}\n    match: {{ prefix: /{name} }}\n    upstream: be\n    \
             rate_limit: {policies}\n"
        ));
    }
    out
}

/// `n` gateways started from the same config: `n` weir instances sharing one Redis.
async fn gateways(yaml: &str, n: usize) -> Vec<Gateway> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(start(yaml).await);
    }
    out
}

async fn stop_all(gws: Vec<Gateway>) {
    for gw in gws {
        gw.stop().await;
    }
}

/// `weir_rate_limit_store_errors_total` of `route` (0 when absent).
fn store_errors(metrics: &str, route: &str) -> f64 {
    metric_sum(
        metrics,
        "weir_rate_limit_store_errors_total",
        &[("route", route)],
    )
    .unwrap_or(0.0)
}

/// `weir_rate_limit_store_errors_total{route}` summed over the gateways.
async fn store_errors_of(gws: &[Gateway], route: &str) -> f64 {
    let mut sum = 0.0;
    for gw in gws {
        sum += store_errors(&gw.metrics().await, route);
    }
    sum
}

/// Asserts that no gateway fell back to `on_error` for `route`: every decision was Redis's.
async fn assert_no_store_errors(gws: &[Gateway], route: &str) {
    for (i, gw) in gws.iter().enumerate() {
        let text = gw.metrics().await;
        assert!(
            store_errors(&text, route).abs() < f64::EPSILON,
            "gateway {i}: weir_rate_limit_store_errors_total{{route=\"{route}\"}} should be 0 \
             (a decision that was not Redis's makes the counts meaningless):\n{text}"
        );
    }
}

/// Asserts a 429 `rate_limited` problem given by `on_error: deny`: `Retry-After: 1`, a detail
/// that mentions the store, never a 5xx.
fn assert_denied_by_store(a: &Answer, what: &str) {
    assert_eq!(
        a.status, 429,
        "{what}: on_error deny must answer 429, got {}: {}",
        a.status, a.body
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{what}: Content-Type"
    );
    let body: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {}", a.body));
    check_problem_body(&body, 429, "rate_limited", a.header("x-request-id"));
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_ascii_lowercase().contains("store"),
        "{what}: the detail should say the rate-limit store could not decide: {detail:?}"
    );
    assert_eq!(
        a.retry_after(),
        Some(1),
        "{what}: Retry-After of an on_error deny"
    );
}

/// Runs `f` (which blocks: starting or killing `redis-server`) without stalling the runtime's
/// other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What [`paced`] traffic got.
struct Steady {
    admitted: usize,
    refused: usize,
    sent: usize,
    /// Between the first request sent and the last.
    elapsed: Duration,
}

/// GETs `path` at `rate` requests a second for `duration`, round robin over `gws`, each
/// request on its own task so that slow answers never slow the pacing. Every answer must be
/// 200 or 429.
async fn paced(gws: &[Gateway], path: &str, rate: u32, duration: Duration) -> Steady {
    let targets: Vec<(reqwest::Client, String)> = gws
        .iter()
        .map(|gw| (gw.client.clone(), gw.url(path)))
        .collect();
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::with_capacity(total);
    let mut first = None;
    let mut last = Instant::now();
    for i in 0..total {
        tick.tick().await;
        last = Instant::now();
        first.get_or_insert(last);
        let (client, url) = &targets[i % targets.len()];
        let req = client.get(url.as_str()).send();
        tasks.push(tokio::spawn(async move {
            match req.await {
                Ok(resp) => (
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                ),
                Err(e) => (0, e.to_string()),
            }
        }));
    }
    let elapsed = last - first.expect("requests were sent");
    let mut admitted = 0;
    let mut refused = 0;
    let mut other = Vec::new();
    for t in tasks {
        match t.await.expect("request task") {
            (200, _) => admitted += 1,
            (429, _) => refused += 1,
            (status, body) => other.push((status, body)),
        }
    }
    assert!(
        other.is_empty(),
        "{} answers neither 200 nor 429 (0: no response), e.g. {:?}",
        other.len(),
        other.iter().take(5).collect::<Vec<_>>()
    );
    Steady {
        admitted,
        refused,
        sent: total,
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------
// Sharing

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_on_one_redis_admit_exactly_the_limit_of_a_burst() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    burst_over_three_gateways(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_on_one_redis_cluster_admit_exactly_the_limit_of_a_burst() {
    let Some(redis) = RedisServer::start_cluster_or_skip() else {
        return;
    };
    burst_over_three_gateways(&redis).await;
}

/// 30 requests at once over three gateways, one `global` limit of 10 per minute in `redis`:
/// exactly 10 admitted, each told its own `RateLimit-Remaining`, 20 refused.
async fn burst_over_three_gateways(redis: &RedisServer) {
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        redis,
        COUNTING_TIMEOUT,
        &backend,
        &[("r", "[ { key: global, limit: 10, per: 1m, store: redis } ]")],
    );
    let gws = gateways(&yaml, 3).await;

    // 30 at once, 10 to each gateway, each over five clients.
    let none = || vec![Vec::new(); 10];
    let (a, b, c) = tokio::join!(
        concurrently(&gws[0], "/r/burst", none()),
        concurrently(&gws[1], "/r/burst", none()),
        concurrently(&gws[2], "/r/burst", none()),
    );
    let answers: Vec<Answer> = a.into_iter().chain(b).chain(c).collect();
    let refused = assert_ten_of_thirty(
        &answers,
        backend.hits(),
        "30 at once over three gateways, one limit of 10",
    );
    for a in &refused {
        let retry = a.assert_rate_limited(
            "limit of 10 per 1m for global exceeded",
            "refused in the burst",
        );
        assert!(
            (1..=6).contains(&retry),
            "Retry-After {retry}: one interval of 10 per 1m is 6 s"
        );
        assert_eq!(a.assert_limited(10, "refused in the burst"), 0);
    }
    assert_no_store_errors(&gws, "r").await;
    eventually("the gateways to count 20 refusals", DEADLINE, || async {
        let mut sum = 0.0;
        for gw in &gws {
            sum += rate_limited_total(&gw.metrics().await, "r");
        }
        (sum - 20.0).abs() < f64::EPSILON
    })
    .await;

    // The state is in Redis: one bucket (`weir:rl:{r:<route>:<position>:<key>}`) that
    // expires by itself once full again, here one minute after the burst.
    let keys = redis.keys("weir:rl:*");
    assert_eq!(keys.len(), 1, "one bucket for a global policy: {keys:?}");
    assert!(
        keys[0].starts_with("weir:rl:{r:r:0") && keys[0].ends_with('}'),
        "bucket key {:?}",
        keys[0]
    );
    let pttl = redis.int(&["PTTL", &keys[0]]);
    assert!(
        (1..=61_000).contains(&pttl),
        "the bucket expires once full again (within 1m): PTTL {pttl}"
    );
    stop_all(gws).await;
}

/// Three gateways, one `limit: 100, per: 1s` policy with `burst`, traffic at 300/s spread
/// over them for 10 s: the admitted total must be `burst + 100 × elapsed` within 2%.
async fn three_gateways_at_three_times_the_rate(burst: u32) {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        COUNTING_TIMEOUT,
        &backend,
        &[(
            "r",
            &format!("[ {{ key: global, limit: 100, per: 1s, burst: {burst}, store: redis }} ]"),
        )],
    );
    let gws = gateways(&yaml, 3).await;
    let Steady {
        admitted,
        refused,
        sent,
        elapsed,
    } = paced(&gws, "/r/steady", 300, Duration::from_secs(10)).await;
    assert_eq!(
        backend.hits(),
        admitted,
        "the backend saw only the admitted"
    );
    assert_no_store_errors(&gws, "r").await;

    // `burst` at once, then one per 10 ms while traffic lasts.
    let expected = f64::from(burst) + 100.0 * elapsed.as_secs_f64();
    let off = (admitted as f64 - expected) / expected;
    eprintln!(
        "accuracy, burst {burst}: {admitted} admitted, {refused} refused, {sent} sent over \
         {elapsed:?}; expected {expected:.1}, off by {:+.2}%",
        off * 100.0
    );
    assert!(
        off.abs() <= 0.02,
        "{admitted} admitted over {elapsed:?} at 3x a limit of 100/s (burst {burst}) through \
         three gateways; expected {expected:.1} within 2%, off by {:+.2}%",
        off * 100.0
    );
    stop_all(gws).await;
}

/// The issue's accuracy check (three gateways, 3x a 100/s limit, 10 s), with the default
/// burst (= limit): the admitted total is the burst plus the limit over the elapsed time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_at_three_times_the_rate_admit_the_limit_within_2_percent() {
    three_gateways_at_three_times_the_rate(100).await;
}

/// The same with `burst: 2`: a tolerance of one interval absorbs the jitter of real arrivals
/// (network, scheduling). `burst: 1` by definition does not (docs/configuration.md, Rate
/// limiting), so it is checked with paced arrivals in the domain's unit tests instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_at_three_times_the_rate_with_burst_2_admit_the_limit_within_2_percent() {
    three_gateways_at_three_times_the_rate(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remaining_counts_down_across_gateways_sharing_a_key() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        COUNTING_TIMEOUT,
        &backend,
        &[("r", "[ { key: global, limit: 5, per: 1m, store: redis } ]")],
    );
    let gws = gateways(&yaml, 2).await;
    let started = Instant::now();
    for i in 0..5u64 {
        let via = i as usize % 2;
        let a = send(&gws[via], "/r/x", &[]).await;
        let what = format!("request {i} via gateway {via}");
        a.assert_admitted(&what);
        assert_eq!(
            a.assert_limited(5, &what),
            4 - i,
            "{what}: RateLimit-Remaining counts the other gateway's requests too"
        );
        assert!(a.retry_after().is_none(), "{what}: Retry-After on a 200");
        let reset = a.reset().unwrap();
        // Full again 12 s (1m / 5) per request taken, rounded up.
        if started.elapsed() < Duration::from_millis(900) {
            assert_eq!(reset, 12 * (i + 1), "{what}: RateLimit-Reset");
        } else {
            assert!((1..=12 * (i + 1)).contains(&reset), "{what}: {reset}");
        }
    }
    let detail = "limit of 5 per 1m for global exceeded";
    for via in [1, 0] {
        let a = send(&gws[via], "/r/x", &[]).await;
        let what = format!("the 6th, via gateway {via}");
        let retry = a.assert_rate_limited(detail, &what);
        assert!((1..=12).contains(&retry), "{what}: Retry-After {retry}");
        assert_eq!(a.assert_limited(5, &what), 0);
        let reset = a.reset().unwrap();
        assert!((1..=60).contains(&reset), "{what}: RateLimit-Reset {reset}");
    }
    assert_eq!(backend.hits(), 5);
    assert_no_store_errors(&gws, "r").await;
    stop_all(gws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_keys_are_separate_per_route_and_shared_per_route_name() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let policy = "[ { key: route, limit: 2, per: 1m, store: redis } ]";
    let yaml = redis_config(
        &redis,
        COUNTING_TIMEOUT,
        &backend,
        &[("r1", policy), ("r2", policy)],
    );
    let gws = gateways(&yaml, 2).await;
    let detail = "limit of 2 per 1m for route exceeded";
    for path in ["/r1/x", "/r2/x"] {
        // One bucket per route, shared by the two gateways.
        for (i, via) in [0usize, 1].into_iter().enumerate() {
            let a = send(&gws[via], path, &[]).await;
            let what = format!("{path} #{i} via gateway {via}");
            a.assert_admitted(&what);
            assert_eq!(a.assert_limited(2, &what), 1 - i as u64, "{what}");
        }
        for via in [0, 1] {
            let a = send(&gws[via], path, &[]).await;
            a.assert_rate_limited(detail, &format!("{path} exhausted, via gateway {via}"));
        }
    }
    assert_eq!(backend.hits(), 4);
    let keys = redis.keys("weir:rl:*");
    assert_eq!(keys.len(), 2, "one bucket per route: {keys:?}");
    assert!(
        keys[0].starts_with("weir:rl:{r:r1:0") && keys[1].starts_with("weir:rl:{r:r2:0"),
        "{keys:?}"
    );

    // A third gateway whose route for `/r1` has another name has a bucket of its own: the
    // route's name (and position) is what instances share.
    let renamed = redis_config(
        &redis,
        COUNTING_TIMEOUT,
        &backend,
        &[("r1", policy), ("r2", policy)],
    )
    .replace("name: r1", "name: other");
    let third = start(&renamed).await;
    for i in 0..2u64 {
        let a = send(&third, "/r1/x", &[]).await;
        a.assert_admitted(&format!("route `other` #{i}"));
        assert_eq!(a.assert_limited(2, "route `other`"), 1 - i);
    }
    send(&third, "/r1/x", &[])
        .await
        .assert_rate_limited(detail, "route `other` exhausted");
    // The same name on the third gateway shares again.
    send(&third, "/r2/x", &[])
        .await
        .assert_rate_limited(detail, "r2 via the third gateway");
    assert_eq!(backend.hits(), 6);
    assert_no_store_errors(&gws, "r1").await;
    assert_no_store_errors(&gws, "r2").await;
    third.stop().await;
    stop_all(gws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_redis_policies_are_all_or_nothing() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    all_or_nothing(&redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_redis_policies_are_all_or_nothing_on_a_cluster_too() {
    let Some(redis) = RedisServer::start_cluster_or_skip() else {
        return;
    };
    all_or_nothing(&redis).await;
}

/// A tenant limit of 1 and a global limit of 3 on one route, two gateways: a request refused
/// by one policy takes nothing from the other. (On a cluster the two buckets are in
/// different slots: the global policy's take is given back when the tenant's refuses.)
async fn all_or_nothing(redis: &RedisServer) {
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        redis,
        COUNTING_TIMEOUT,
        &backend,
        &[(
            "r",
            "[ { key: header:X-Tenant, limit: 1, per: 1m, store: redis }, \
               { key: global, limit: 3, per: 1m, store: redis } ]",
        )],
    );
    let gws = gateways(&yaml, 2).await;
    let tenant = |t: &'static str| [("x-tenant", t)];
    let tenant_detail = "limit of 1 per 1m for header:X-Tenant exceeded";
    let global_detail = "limit of 3 per 1m for global exceeded";

    let a = send(&gws[0], "/r/x", &tenant("a")).await;
    a.assert_admitted("tenant a");
    assert_eq!(
        a.assert_limited(1, "tenant a: the tenant's policy is the tighter"),
        0
    );
    // Refused by the tenant's policy, three times: the global policy must not count them.
    for via in [1, 0, 1] {
        let a = send(&gws[via], "/r/x", &tenant("a")).await;
        a.assert_rate_limited(tenant_detail, &format!("tenant a again via gateway {via}"));
        assert_eq!(a.assert_limited(1, "refused by the tenant's policy"), 0);
    }
    for (t, via) in [("b", 1), ("c", 0)] {
        let a = send(&gws[via], "/r/x", &tenant(t)).await;
        a.assert_admitted(&format!(
            "tenant {t}: the refusals of tenant a took nothing from the global limit"
        ));
        // Both policies have 0 left: either may be reported.
        let limit = a.limit();
        assert!(
            limit == Some(1) || limit == Some(3),
            "tenant {t}: RateLimit-Limit {limit:?}"
        );
        assert_eq!(a.assert_limited(limit.unwrap(), &format!("tenant {t}")), 0);
    }
    // Now the global policy refuses tenant d, which must not be counted for d.
    for via in [1, 0] {
        let a = send(&gws[via], "/r/x", &tenant("d")).await;
        a.assert_rate_limited(global_detail, &format!("tenant d via gateway {via}"));
        assert_eq!(a.assert_limited(3, "refused by the global policy"), 0);
    }
    assert_eq!(backend.hits(), 3);
    // Three tenant buckets and the global one: tenant d's refusals stored nothing.
    let keys = redis.keys("weir:rl:*");
    assert_eq!(keys.len(), 4, "buckets in Redis: {keys:?}");
    if redis.is_cluster() {
        // The case this test is about on a cluster: one decision over two slots.
        let slots: std::collections::BTreeSet<i64> = keys
            .iter()
            .map(|k| redis.int(&["CLUSTER", "KEYSLOT", k]))
            .collect();
        assert!(slots.len() > 1, "all buckets in one slot: {keys:?}");
    }
    assert_no_store_errors(&gws, "r").await;
    stop_all(gws).await;
}

// ---------------------------------------------------------------------------------------
// Outages

/// Requests sent every few milliseconds, round robin over some gateways, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u16, String)>>,
}

impl Traffic {
    fn start(gws: &[Gateway], path: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<(reqwest::Client, String)> = gws
            .iter()
            .map(|gw| (gw.client.clone(), gw.url(path)))
            .collect();
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut tasks = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                let (client, url) = &targets[i % targets.len()];
                i += 1;
                let req = client.get(url.as_str()).send();
                tasks.push(tokio::spawn(async move {
                    match req.await {
                        Ok(resp) => (
                            resp.status().as_u16(),
                            resp.text().await.unwrap_or_default(),
                        ),
                        Err(e) => (0, format!("no response: {e}")),
                    }
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.expect("request task"));
            }
            out
        });
        Self { stop, task }
    }

    /// Stops sending; every answer, in order of sending.
    async fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("traffic task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_traffic_on_error_allow_lets_requests_through_and_limits_come_back() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        OUTAGE_TIMEOUT,
        &backend,
        &[
            (
                "r",
                "[ { key: global, limit: 100000, per: 1s, store: redis, on_error: allow } ]",
            ),
            (
                "tight",
                "[ { key: global, limit: 2, per: 1m, store: redis } ]",
            ),
        ],
    );
    let gws = gateways(&yaml, 2).await;
    let tight = "limit of 2 per 1m for global exceeded";

    // Redis decides: the tight policy is shared and refuses the third.
    send(&gws[0], "/tight/x", &[])
        .await
        .assert_admitted("tight #1");
    send(&gws[1], "/tight/x", &[])
        .await
        .assert_admitted("tight #2");
    send(&gws[0], "/tight/x", &[])
        .await
        .assert_rate_limited(tight, "tight #3, Redis up");

    let traffic = Traffic::start(&gws, "/r/x", Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocking(|| redis.stop());
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Redis is down: the default on_error (allow) lets even the exhausted policy through.
    for via in [0, 1] {
        let a = send(&gws[via], "/tight/x", &[]).await;
        a.assert_admitted(&format!("tight via gateway {via} while Redis is down"));
    }
    let errors = store_errors_of(&gws, "r").await;
    assert!(
        errors > 0.0,
        "weir_rate_limit_store_errors_total{{route=\"r\"}} should count the decisions Redis \
         did not make: {errors}\n{}",
        gws[0].metrics().await
    );
    assert!(store_errors_of(&gws, "tight").await >= 2.0);

    // Redis back, on the same port and empty: the tight policy admits two and refuses again,
    // with no restart of weir.
    blocking(|| redis.restart());
    let back = Instant::now();
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(
        "the tight policy to refuse again after Redis came back",
        Duration::from_secs(5),
        || async {
            let a = send(&gws[0], "/tight/x", &[]).await;
            seen.lock().unwrap().push(a.status);
            assert!(
                a.status == 200 || a.status == 429,
                "tight while Redis comes back: {} {}",
                a.status,
                a.body
            );
            if a.status == 429 {
                a.assert_rate_limited(tight, "tight after Redis came back");
            }
            a.status == 429
        },
    )
    .await;
    let recovered = back.elapsed();
    let seen = seen.into_inner().unwrap();
    eprintln!(
        "limits enforced again {recovered:?} after Redis answered PING again \
         (statuses on /tight meanwhile: {seen:?})"
    );
    // The issue: "Redis back: limits enforced again within a second, with no restart".
    assert!(
        recovered <= Duration::from_secs(1),
        "limits were enforced again only {recovered:?} after Redis came back (within a \
         second is promised); statuses on /tight meanwhile: {seen:?}"
    );
    // The other gateway shares the new bucket, once it has reconnected too (each gateway
    // reconnects on its own, at most every 100 ms; under load that can lag the first one).
    eventually(
        "the other gateway to refuse too after Redis came back",
        Duration::from_secs(1),
        || async {
            let b = send(&gws[1], "/tight/x", &[]).await;
            if b.status == 429 {
                b.assert_rate_limited(tight, "tight via the other gateway after Redis came back");
            } else {
                b.assert_admitted("tight via the other gateway while it reconnects");
            }
            b.status == 429
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let answers = traffic.finish().await;
    let bad: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        answers.len() > 100,
        "traffic ran: {} requests",
        answers.len()
    );
    assert!(
        bad.is_empty(),
        "{} of {} requests around the outage were not 200 (on_error: allow, limit far away), \
         e.g. {:?}",
        bad.len(),
        answers.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
    stop_all(gws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_on_error_deny_refuses_with_429_and_nothing_reaches_the_backend() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        OUTAGE_TIMEOUT,
        &backend,
        &[(
            "d",
            "[ { key: global, limit: 2, per: 1m, store: redis, on_error: deny } ]",
        )],
    );
    let gw = start(&yaml).await;
    send(&gw, "/d/x", &[])
        .await
        .assert_admitted("Redis up: admitted");

    blocking(|| redis.stop());
    for i in 0..5 {
        let a = send(&gw, "/d/x", &[]).await;
        assert_denied_by_store(&a, &format!("Redis down, request {i}"));
    }
    let answers = concurrently(&gw, "/d/x", vec![Vec::new(); 20]).await;
    for (i, a) in answers.iter().enumerate() {
        assert_denied_by_store(a, &format!("Redis down, concurrent request {i}"));
    }
    assert_eq!(backend.hits(), 1, "no denied request reached the backend");
    let text = gw.metrics().await;
    assert!(
        store_errors(&text, "d") >= 25.0,
        "weir_rate_limit_store_errors_total{{route=\"d\"}} should count the 25 denied:\n{text}"
    );

    // Redis back (empty): the policy's own answers again, no restart.
    blocking(|| redis.restart());
    eventually(
        "a request admitted again",
        Duration::from_secs(5),
        || async {
            let a = send(&gw, "/d/x", &[]).await;
            if a.status == 429 {
                assert_denied_by_store(&a, "while Redis comes back");
            }
            a.status == 200
        },
    )
    .await;
    let a = send(&gw, "/d/x", &[]).await;
    a.assert_admitted("the second of the new bucket");
    assert_eq!(a.assert_limited(2, "the second of the new bucket"), 0);
    send(&gw, "/d/x", &[])
        .await
        .assert_rate_limited("limit of 2 per 1m for global exceeded", "the third");
    assert_eq!(backend.hits(), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weir_starts_while_redis_is_down_and_uses_it_once_it_is_up() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    blocking(|| redis.stop());
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        OUTAGE_TIMEOUT,
        &backend,
        &[
            ("a", "[ { key: global, limit: 1, per: 1m, store: redis } ]"),
            (
                "d",
                "[ { key: global, limit: 1, per: 1m, store: redis, on_error: deny } ]",
            ),
        ],
    );
    let gw = start(&yaml).await;
    for i in 0..3 {
        send(&gw, "/a/x", &[])
            .await
            .assert_admitted(&format!("allow, Redis never seen, #{i}"));
        let a = send(&gw, "/d/x", &[]).await;
        assert_denied_by_store(&a, &format!("deny, Redis never seen, #{i}"));
    }
    let text = gw.metrics().await;
    assert!(store_errors(&text, "a") >= 3.0, "{text}");
    assert!(store_errors(&text, "d") >= 3.0, "{text}");

    blocking(|| redis.restart());
    eventually(
        "the deny policy to admit once Redis is up",
        Duration::from_secs(5),
        || async {
            let a = send(&gw, "/d/x", &[]).await;
            if a.status == 429 {
                assert_denied_by_store(&a, "while Redis comes up");
            }
            a.status == 200
        },
    )
    .await;
    send(&gw, "/d/x", &[])
        .await
        .assert_rate_limited("limit of 1 per 1m for global exceeded", "d, Redis up");
    send(&gw, "/a/x", &[]).await.assert_admitted("a, Redis up");
    send(&gw, "/a/x", &[])
        .await
        .assert_rate_limited("limit of 1 per 1m for global exceeded", "a, Redis up");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_redis_costs_at_most_the_timeout_and_on_error_decides() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = redis_config(
        &redis,
        OUTAGE_TIMEOUT,
        &backend,
        &[
            ("a", "[ { key: global, limit: 2, per: 1m, store: redis } ]"),
            (
                "d",
                "[ { key: global, limit: 2, per: 1m, store: redis, on_error: deny } ]",
            ),
        ],
    );
    let gw = start(&yaml).await;
    send(&gw, "/a/x", &[]).await.assert_admitted("a, Redis up");
    send(&gw, "/d/x", &[]).await.assert_admitted("d, Redis up");

    // Frozen: connections are accepted, nothing is answered. With `timeout: 50ms` every
    // request is answered long before a second (generous for a debug build), as on_error says.
    redis.pause();
    for i in 0..5 {
        let sent = Instant::now();
        let a = send(&gw, "/a/x", &[]).await;
        let took = sent.elapsed();
        a.assert_admitted(&format!("allow, Redis frozen, #{i}"));
        assert!(took < Duration::from_secs(1), "allow #{i} took {took:?}");
        let sent = Instant::now();
        let a = send(&gw, "/d/x", &[]).await;
        let took = sent.elapsed();
        assert_denied_by_store(&a, &format!("deny, Redis frozen, #{i}"));
        assert!(took < Duration::from_secs(1), "deny #{i} took {took:?}");
    }
    let text = gw.metrics().await;
    assert!(store_errors(&text, "a") >= 5.0, "{text}");
    assert!(store_errors(&text, "d") >= 5.0, "{text}");

    // Thawed: Redis decides again (the scripts queued while frozen may have run late, so
    // only "refuses again" is certain for the tight policy).
    redis.resume();
    eventually(
        "the allow policy to refuse again once Redis answers",
        Duration::from_secs(5),
        || async {
            let a = send(&gw, "/a/x", &[]).await;
            assert!(
                a.status == 200 || a.status == 429,
                "{} {}",
                a.status,
                a.body
            );
            if a.status == 429 {
                a.assert_rate_limited("limit of 2 per 1m for global exceeded", "a, thawed");
            }
            a.status == 429
        },
    )
    .await;
    gw.stop().await;
}

/// `rediss://` end to end: weir trusts exactly the CA of `redis.ca_file` and enforces a
/// Redis-store limit over TLS against a real TLS-only `redis-server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_redis_with_ca_file_enforces_the_limit() {
    let ca = TestCa::new();
    let Some(redis) = RedisServer::start_tls_or_skip(&ca) else {
        return;
    };
    let backend = Backend::start("b").await;
    let yaml = format!(
        "redis: {{ url: \"{}\", ca_file: \"{}\", timeout: {COUNTING_TIMEOUT} }}\n\
         upstreams:\n  be:\n    targets: [{{ url: \"{}\" }}]\n\
         routes:\n  - name: r\n    match: {{ prefix: /r }}\n    upstream: be\n    \
         rate_limit: [ {{ key: global, limit: 3, per: 1m, store: redis }} ]\n",
        redis.url(),
        redis.ca_file().display(),
        backend.url(),
    );
    assert!(yaml.contains("rediss://127.0.0.1:"), "{yaml}");
    let gw = start(&yaml).await;
    for i in 0..3 {
        send(&gw, "/r/x", &[])
            .await
            .assert_admitted(&format!("request {i}"));
    }
    send(&gw, "/r/x", &[])
        .await
        .assert_rate_limited("limit of 3 per 1m for global exceeded", "the 4th");
    assert_eq!(backend.hits(), 3);
    assert_no_store_errors(std::slice::from_ref(&gw), "r").await;
    gw.stop().await;
}
