//! Resilience toward upstreams (contract §3 `retry` and `health_check.passive`): retries on
//! connect failures, resets, timeouts and retryable statuses go to another target; what must
//! never be retried is not (POST/PATCH by default, bodies that cannot be replayed, responses
//! already streaming); the retry budget caps retries in a failure storm; passive health
//! ejects a failing target for `eject_for`, never more than `max_ejected_percent`.
//!
//! Every test checks three things: what the client got, how many attempts each backend
//! counted (from the backend's side), and weir's metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::faults::{
    Fault, Flaky, MID_BODY_LENGTH, RawFault, counter, failures, one_upstream, refusing_url,
    retries, retry_line, sample, target_info, upstream_info,
};
use crate::common::{Backend, DEADLINE, Gateway, assert_problem, eventually, start};
use serde_json::{Value, json};

/// All the retry conditions of the spec.
const ALL_CONDITIONS: &str = r#"connect_failure, reset, timeout, "502", "503", "504""#;

/// A retry budget that never refuses in these tests.
const GENEROUS_BUDGET: &str = "budget: { ratio: 1, min_per_second: 1000 }";

/// `weir_upstream_requests_total` of one target, over all statuses.
async fn responses_from(gw: &Gateway, upstream: &str, target: &str) -> u64 {
    counter(
        gw,
        "weir_upstream_requests_total",
        &[("upstream", upstream), ("target", target)],
    )
    .await
}

/// GET `path`; it must be a 200 (else the answer and weir's metrics are shown); the id of
/// the backend that answered.
async fn answered_by(gw: &Gateway, path: &str) -> String {
    let resp = gw.get(path).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if status != 200 {
        let metrics = gw.metrics().await;
        let relevant: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("weir_retr") || l.starts_with("weir_upstream_failures"))
            .collect();
        panic!("GET {path}: {status} {text}\n{}", relevant.join("\n"));
    }
    let v: Value = serde_json::from_str(&text).expect("a JSON answer");
    v["backend"].as_str().expect("backend id").to_owned()
}

#[test]
fn the_metrics_reader_sums_by_label_subset_and_reads_absent_as_zero() {
    let text = "# HELP weir_a a\n# TYPE weir_a counter\n\
        weir_a{upstream=\"be\",target=\"http://h:1\",reason=\"connect\"} 3\n\
        weir_a{upstream=\"be\",target=\"http://h:2\",reason=\"reset\"} 4\n\
        weir_b 7\n";
    assert!((sample(text, "weir_a", &[("upstream", "be")]) - 7.0).abs() < f64::EPSILON);
    assert!((sample(text, "weir_a", &[("reason", "reset")]) - 4.0).abs() < f64::EPSILON);
    assert!((sample(text, "weir_b", &[]) - 7.0).abs() < f64::EPSILON);
    assert!(sample(text, "weir_c", &[]).abs() < f64::EPSILON);
    assert!(sample(text, "weir_a", &[("upstream", "other")]).abs() < f64::EPSILON);
}

// ---------------------------------------------------------------------------------------
// Connect failures, resets, timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_the_other_target() {
    let ok = Backend::start("ok").await;
    let dead = refusing_url();
    let gw = start(&one_upstream(
        &[dead.clone(), ok.url()],
        // A budget that never interferes here; the default one is tested on its own.
        &[&retry_line(3, "connect_failure", GENEROUS_BUDGET)],
        &[],
    ))
    .await;

    const N: usize = 20;
    for i in 0..N {
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}: the refused try is retried on the healthy target"
        );
    }
    assert_eq!(ok.hits(), N, "each request reached the healthy target once");

    let retried = retries(&gw, "be").await;
    assert!(
        retried > 0,
        "round robin sent first tries to the refusing target"
    );
    assert!(
        retried <= N as u64,
        "at most one retry per request: the retry goes to the target not tried yet ({retried})"
    );
    assert_eq!(
        failures(&gw, "be", &dead, "connect").await,
        retried,
        "one connect failure per retry"
    );
    assert_eq!(failures(&gw, "be", &ok.url(), "connect").await, 0);
    assert_eq!(responses_from(&gw, "be", &ok.url()).await, N as u64);
    assert!(
        upstream_info(&gw, "be").await["retry"].is_object(),
        "/upstreams shows the retry plan"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_response_is_retried_once_elsewhere() {
    let reset = RawFault::start(Fault::ResetBeforeHead).await;
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(
        &[reset.url(), ok.url()],
        &[&retry_line(3, "reset", GENEROUS_BUDGET)],
        &[],
    ))
    .await;

    const N: usize = 16;
    let mut reset_tries = 0;
    for i in 0..N {
        let before = reset.requests();
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}"
        );
        let tries = reset.requests() - before;
        assert!(
            tries <= 1,
            "request {i} was tried {tries} times on the resetting target"
        );
        reset_tries += tries;
    }
    assert!(
        reset_tries > 0,
        "round robin sent first tries to the resetting target"
    );
    assert_eq!(ok.hits(), N);
    assert_eq!(
        retries(&gw, "be").await,
        reset_tries as u64,
        "one retry per reset"
    );
    assert_eq!(
        failures(&gw, "be", &reset.url(), "reset").await,
        reset_tries as u64,
        "each reset is counted as a failure of that target"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_avoid_the_targets_already_tried() {
    // Two of three targets reset every request; 3 attempts reach the good one every time,
    // which only works if no target is tried twice for one request.
    let (r1, r2) = (
        RawFault::start(Fault::ResetBeforeHead).await,
        RawFault::start(Fault::ResetBeforeHead).await,
    );
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(
        &[r1.url(), r2.url(), ok.url()],
        &[&retry_line(3, "reset", GENEROUS_BUDGET)],
        &[],
    ))
    .await;
    const N: usize = 12;
    for i in 0..N {
        let before = (r1.requests(), r2.requests());
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}"
        );
        let tries = (r1.requests() - before.0, r2.requests() - before.1);
        assert!(
            tries.0 <= 1 && tries.1 <= 1,
            "request {i} tried a target twice: {tries:?}"
        );
    }
    assert_eq!(ok.hits(), N);
    assert_eq!(
        retries(&gw, "be").await,
        (r1.requests() + r2.requests()) as u64,
        "every try on a resetting target was followed by a retry"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_not_listed_in_on_is_passed_through_after_one_try() {
    let bad = Flaky::failing("bad", 500).await;
    let ok = Flaky::start("ok").await;
    let gw = start(&one_upstream(
        &[bad.url(), ok.url()],
        &[&retry_line(3, r#""502", "503", "504""#, "")],
        &[],
    ))
    .await;
    let mut passed_through = 0;
    for i in 0..6 {
        let before = bad.requests();
        let resp = gw.get(&format!("/r/{i}")).await;
        let tries = bad.requests() - before;
        match resp.status().as_u16() {
            500 => {
                assert_eq!(
                    resp.headers().get("x-backend").map(|v| v.to_str().unwrap()),
                    Some("bad")
                );
                assert_eq!(tries, 1, "request {i}: a 500 is not listed, no retry");
                passed_through += 1;
            }
            200 => assert_eq!(tries, 0, "request {i}"),
            s => panic!("request {i}: {s}"),
        }
    }
    assert!(passed_through > 0, "round robin reached the failing target");
    assert_eq!(retries(&gw, "be").await, 0);
    assert_eq!(
        counter(
            &gw,
            "weir_upstream_requests_total",
            &[
                ("upstream", "be"),
                ("target", &bad.url()),
                ("status", "500")
            ]
        )
        .await,
        passed_through,
        "each 500 counted once"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_times_out_per_try_and_the_retry_succeeds() {
    let hang = RawFault::start(Fault::Hang).await;
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(
        &[hang.url(), ok.url()],
        &[&retry_line(3, "timeout", "per_try_timeout: 200ms")],
        &[],
    ))
    .await;

    const N: usize = 6;
    let mut hung = 0;
    for i in 0..N {
        let before = hang.requests();
        let started = Instant::now();
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "request {i} took {:?}: the per-try timeout is 200ms",
            started.elapsed()
        );
        let tries = hang.requests() - before;
        assert!(
            tries <= 1,
            "request {i} tried the hanging target {tries} times"
        );
        hung += tries;
    }
    assert!(
        hung > 0,
        "round robin sent first tries to the hanging target"
    );
    assert_eq!(ok.hits(), N);
    assert_eq!(retries(&gw, "be").await, hung as u64);
    assert_eq!(
        failures(&gw, "be", &hang.url(), "timeout").await,
        hung as u64,
        "each abandoned try is a timeout failure"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_hanging_target_ends_in_504_at_the_route_timeout() {
    let hang = RawFault::start(Fault::Hang).await;
    let gw = start(&one_upstream(
        &[hang.url()],
        &[&retry_line(3, "timeout", "per_try_timeout: 200ms")],
        &["timeout: 500ms"],
    ))
    .await;

    let started = Instant::now();
    let resp = gw.get("/x").await;
    let elapsed = started.elapsed();
    assert_problem(resp, 504, "gateway_timeout").await;
    assert!(
        elapsed < Duration::from_secs(5),
        "the route timeout is 500ms, the answer took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(350),
        "at least two 200ms tries ran before the 504, it came after {elapsed:?}"
    );
    let tries = hang.requests();
    assert!(
        (1..=3).contains(&tries),
        "3 attempts at most, the first included: {tries}"
    );
    let retried = retries(&gw, "be").await;
    assert!(retried <= 2, "{retried} retries with attempts: 3");
    assert!(failures(&gw, "be", &hang.url(), "timeout").await >= 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_is_abandoned_after_the_per_try_timeout() {
    // The slow target would answer 200 after 800ms; an answer from "ok" proves its try was
    // given up at the per-try timeout and retried elsewhere.
    let slow = Flaky::slow("slow", Duration::from_millis(800)).await;
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(
        &[slow.url(), ok.url()],
        &[&retry_line(3, "timeout", "per_try_timeout: 300ms")],
        &[],
    ))
    .await;

    const N: usize = 4;
    let mut slow_tries = 0;
    for i in 0..N {
        let before = slow.requests();
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}"
        );
        let tries = slow.requests() - before;
        assert!(
            tries <= 1,
            "request {i} tried the slow target {tries} times"
        );
        slow_tries += tries;
    }
    assert!(
        slow_tries > 0,
        "round robin sent first tries to the slow target"
    );
    assert_eq!(retries(&gw, "be").await, slow_tries as u64);
    assert_eq!(
        failures(&gw, "be", &slow.url(), "timeout").await,
        slow_tries as u64
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// What is never retried

/// Sends `method path` with `body`; the status and the JSON answer of a `Flaky` backend.
async fn send(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = gw
        .client
        .request(method.parse().unwrap(), gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request through weir");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} answer is not JSON ({e}): {text}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_patch_are_retried_only_when_idempotent_only_is_false() {
    let (bad_strict, ok_strict) = (
        Flaky::failing("bad-strict", 503).await,
        Flaky::start("ok-strict").await,
    );
    let (bad_lax, ok_lax) = (
        Flaky::failing("bad-lax", 503).await,
        Flaky::start("ok-lax").await,
    );
    let retry = retry_line(3, r#""503""#, "");
    let retry_lax = retry_line(3, r#""503""#, "idempotent_only: false");
    let gw = start(&format!(
        r#"
        upstreams:
          strict:
            targets: [{{ url: "{}" }}, {{ url: "{}" }}]
            {retry}
          lax:
            targets: [{{ url: "{}" }}, {{ url: "{}" }}]
            {retry_lax}
        routes:
          - name: strict
            match: {{ prefix: /strict }}
            upstream: strict
          - name: lax
            match: {{ prefix: /lax }}
            upstream: lax
        "#,
        bad_strict.url(),
        ok_strict.url(),
        bad_lax.url(),
        ok_lax.url()
    ))
    .await;

    // Default (idempotent_only: true): a POST or PATCH that lands on the failing target gets
    // its 503, after exactly one attempt there.
    for method in ["POST", "PATCH"] {
        let (mut failed, mut passed) = (0, 0);
        for i in 0..20 {
            if failed > 0 && passed > 0 {
                break;
            }
            let (bad, ok) = (bad_strict.requests(), ok_strict.requests());
            let (status, v) = send(&gw, method, "/strict/orders", &format!("{{\"n\":{i}}}")).await;
            let (bad, ok) = (bad_strict.requests() - bad, ok_strict.requests() - ok);
            match status {
                503 => {
                    assert_eq!(v["backend"], "bad-strict", "{v}");
                    assert_eq!((bad, ok), (1, 0), "{method} {i}: one attempt, no retry");
                    failed += 1;
                }
                200 => {
                    assert_eq!(v["backend"], "ok-strict", "{v}");
                    assert_eq!((bad, ok), (0, 1), "{method} {i}");
                    passed += 1;
                }
                s => panic!("{method} {i}: unexpected {s}: {v}"),
            }
        }
        assert!(
            failed > 0 && passed > 0,
            "{method}: round robin should reach both targets ({failed} failed, {passed} passed)"
        );
    }
    assert_eq!(retries(&gw, "strict").await, 0, "no POST/PATCH was retried");
    // The same upstream does retry a GET.
    for i in 0..4 {
        let (status, v) = send(&gw, "GET", &format!("/strict/{i}"), "").await;
        assert_eq!((status, v["backend"].as_str()), (200, Some("ok-strict")));
    }

    // idempotent_only: false: POSTs are retried, and the body is replayed intact.
    let mut bad_tries = 0;
    for i in 0..10 {
        let body = json!({"order": i, "items": ["a", "b"], "note": "ünïcode"}).to_string();
        let before = bad_lax.requests();
        let (status, v) = send(&gw, "POST", "/lax/orders", &body).await;
        assert_eq!(status, 200, "POST {i}: {v}");
        assert_eq!(v["backend"], "ok-lax");
        assert_eq!(v["method"], "POST");
        assert_eq!(
            v["body"], body,
            "POST {i}: the replayed body arrived intact"
        );
        let tries = bad_lax.requests() - before;
        assert!(tries <= 1, "POST {i}: {tries} tries on the failing target");
        bad_tries += tries;
    }
    assert!(
        bad_tries > 0,
        "round robin sent POSTs to the failing target"
    );
    assert_eq!(retries(&gw, "lax").await, bad_tries as u64);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_or_chunked_are_not_replayed() {
    let bad = Flaky::failing("bad", 503).await;
    let ok = Flaky::start("ok").await;
    let gw = start(&format!(
        "{}limits: {{ max_body_bytes: 1MiB }}\n",
        one_upstream(
            &[bad.url(), ok.url()],
            &[&retry_line(3, r#""503""#, "")],
            &[]
        )
    ))
    .await;

    // A small PUT (idempotent) is retried: always 200.
    let small = "s".repeat(1024);
    for i in 0..4 {
        let (status, v) = send(&gw, "PUT", &format!("/small/{i}"), &small).await;
        assert_eq!(status, 200, "small PUT {i}");
        assert_eq!(v["body"].as_str().map(str::len), Some(1024));
    }
    let retried_small = retries(&gw, "be").await;
    assert!(retried_small > 0, "small PUTs were retried");

    // 100 KiB with Content-Length: never retried.
    let big = "b".repeat(100 * 1024);
    let mut failed = 0;
    for i in 0..20 {
        if failed >= 2 {
            break;
        }
        let before = bad.requests();
        let (status, v) = send(&gw, "PUT", &format!("/big/{i}"), &big).await;
        let tries = bad.requests() - before;
        if status == 503 {
            assert_eq!(tries, 1, "big PUT {i}: one attempt");
            failed += 1;
        } else {
            assert_eq!(status, 200, "big PUT {i}: {v}");
            assert_eq!(tries, 0);
            assert_eq!(v["body"].as_str().map(str::len), Some(big.len()));
        }
    }
    assert_eq!(
        failed, 2,
        "big PUTs landing on the failing target got its 503"
    );

    // A chunked body (no Content-Length): never retried, however small.
    let mut failed = 0;
    for i in 0..20 {
        if failed >= 2 {
            break;
        }
        let before = bad.requests();
        let chunks = futures_util::stream::iter(
            ["{\"chunked\":", "true}"].map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s))),
        );
        let resp = gw
            .client
            .put(gw.url(&format!("/chunked/{i}")))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        let tries = bad.requests() - before;
        if status == 503 {
            assert_eq!(tries, 1, "chunked PUT {i}: one attempt");
            failed += 1;
        } else {
            assert_eq!(status, 200, "chunked PUT {i}: {v}");
            assert_eq!(v["body"], "{\"chunked\":true}");
        }
    }
    assert_eq!(
        failed, 2,
        "chunked PUTs landing on the failing target got its 503"
    );
    assert_eq!(
        retries(&gw, "be").await,
        retried_small,
        "no retry for big or chunked bodies"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_truncates_the_response_and_is_not_retried() {
    let broken = RawFault::start(Fault::ResetMidBody).await;
    let gw = start(&one_upstream(
        &[broken.url()],
        &[&retry_line(3, ALL_CONDITIONS, "")],
        &[],
    ))
    .await;

    const N: usize = 4;
    let mut heads = 0;
    for i in 0..N {
        let before = broken.requests();
        match gw.client.get(gw.url(&format!("/r/{i}"))).send().await {
            // weir may close the connection before the client read the head.
            Err(_) => {}
            Ok(resp) => {
                heads += 1;
                assert_eq!(
                    resp.status(),
                    200,
                    "request {i}: the head was received, so the upstream's 200 is what the client gets"
                );
                if let Ok(body) = resp.bytes().await {
                    assert!(
                        body.len() < MID_BODY_LENGTH,
                        "request {i}: a complete body after a reset mid-body"
                    );
                }
            }
        }
        assert_eq!(
            broken.requests() - before,
            1,
            "request {i}: a response already streaming is never retried"
        );
    }
    assert!(
        heads > 0,
        "the upstream's 200 head reached the client, then the body was cut"
    );
    assert_eq!(retries(&gw, "be").await, 0);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Retry budget

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_in_a_failure_storm() {
    let (a, b) = (
        Flaky::failing("a", 503).await,
        Flaky::failing("b", 503).await,
    );
    let gw = start(&one_upstream(
        &[a.url(), b.url()],
        &[&retry_line(
            3,
            r#""503""#,
            "budget: { ratio: 0.2, min_per_second: 1 }",
        )],
        &[],
    ))
    .await;

    const REQUESTS: usize = 200;
    const WORKERS: usize = 4;
    let url = gw.url("/storm");
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (client, url) = (gw.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..REQUESTS / WORKERS {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 503, "every target answers 503");
                let _ = resp.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let attempts = a.requests() + b.requests();
    let retried = retries(&gw, "be").await;
    assert_eq!(
        retried as usize,
        attempts - REQUESTS,
        "weir_retries_total counts exactly the tries after the first ({attempts} attempts)"
    );
    assert!(retried > 0, "the budget allows some retries");
    assert_eq!(
        counter(
            &gw,
            "weir_upstream_requests_total",
            &[("upstream", "be"), ("status", "503")]
        )
        .await as usize,
        attempts,
        "every try's 503 is counted, retried ones included"
    );
    // Without a budget: 3 × 200 = 600 attempts. With it, over the 10 s window, retries ≤
    // max(min_per_second × 10, ratio × requests) = max(10, 40); plus a slack of one retry per
    // try that can be in flight at once (4 workers × 2 retries), which may pass the check
    // together.
    let bound = REQUESTS + 40 + 10 + WORKERS * 2;
    assert!(
        attempts <= bound,
        "{attempts} attempts for {REQUESTS} requests; the budget allows at most {bound}"
    );
    let missing = 3 * REQUESTS - attempts;
    let exhausted = counter(
        &gw,
        "weir_retry_budget_exhausted_total",
        &[("upstream", "be")],
    )
    .await as usize;
    assert!(
        exhausted > 0 && exhausted >= missing.div_ceil(2) && exhausted <= missing,
        "{exhausted} retries refused by the budget; {missing} tries were not made (each \
         refused request misses one or two)"
    );

    let budget = &upstream_info(&gw, "be").await["retry_budget"];
    assert!(budget.is_object(), "/upstreams shows the budget: {budget}");
    assert_eq!(budget["ratio"], 0.2, "{budget}");
    assert_eq!(budget["min_per_second"], 1, "{budget}");
    let window_retries = budget["window_retries"].as_u64().expect("window_retries");
    assert!(
        window_retries > 0 && window_retries <= retried,
        "window_retries {window_retries}, retries {retried}"
    );
    let window_requests = budget["window_requests"].as_u64().expect("window_requests");
    assert!(
        window_requests > 0 && window_requests <= REQUESTS as u64,
        "window_requests {window_requests}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_budget_allows_a_burst_of_min_per_second_times_ten_retries() {
    // Default budget {ratio: 0.2, min_per_second: 10}: over the 10 s window, retries may
    // reach max(10 × 10, 0.2 × requests) = 100. A quick burst of 60 requests with one target
    // refusing needs at most 60 retries: none is refused.
    let ok = Backend::start("ok").await;
    let dead = refusing_url();
    let gw = start(&one_upstream(
        &[dead.clone(), ok.url()],
        &[&retry_line(3, "connect_failure", "")],
        &[],
    ))
    .await;
    const N: usize = 60;
    for i in 0..N {
        assert_eq!(
            answered_by(&gw, &format!("/r/{i}")).await,
            "ok",
            "request {i}"
        );
    }
    let retried = retries(&gw, "be").await;
    assert!(retried > 0 && retried <= N as u64, "{retried} retries");
    assert_eq!(failures(&gw, "be", &dead, "connect").await, retried);
    assert_eq!(
        counter(
            &gw,
            "weir_retry_budget_exhausted_total",
            &[("upstream", "be")]
        )
        .await,
        0,
        "the budget refused a retry within its floor"
    );
    let budget = &upstream_info(&gw, "be").await["retry_budget"];
    assert_eq!(budget["ratio"], 0.2, "the default ratio: {budget}");
    assert_eq!(budget["min_per_second"], 10, "the default floor: {budget}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Passive health: ejection

/// `weir_upstream_target_healthy` of one target; `None` when absent.
async fn healthy_gauge(gw: &Gateway, target: &str) -> Option<u64> {
    let text = gw.metrics().await;
    let labels = [("upstream", "be"), ("target", target)];
    text.lines()
        .any(|l| l.starts_with("weir_upstream_target_healthy{") && l.contains(target))
        .then(|| sample(&text, "weir_upstream_target_healthy", &labels) as u64)
}

async fn ejections(gw: &Gateway, target: &str) -> u64 {
    counter(
        gw,
        "weir_outlier_ejections_total",
        &[("upstream", "be"), ("target", target)],
    )
    .await
}

async fn ejected(gw: &Gateway, target: &str) -> bool {
    target_info(gw, "be", target).await["ejected"]
        .as_bool()
        .expect("ejected is a boolean")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_a_target_for_eject_for() {
    let bad = Flaky::failing("bad", 503).await;
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(
        &[bad.url(), ok.url()],
        &["health_check: { passive: { consecutive_failures: 3, eject_for: 2s, max_ejected_percent: 50 } }"],
        &[],
    ))
    .await;
    let bad_url = bad.url();

    // Requests alternate until the third consecutive failure of `bad` ejects it.
    let mut sent = 0;
    while !ejected(&gw, &bad_url).await {
        assert!(sent < 20, "bad was not ejected after {sent} requests");
        let resp = gw.get(&format!("/r/{sent}")).await;
        assert!(
            [200, 503].contains(&resp.status().as_u16()),
            "no retry: the upstream's 503 is passed through"
        );
        sent += 1;
    }
    assert_eq!(
        bad.requests(),
        3,
        "ejected at the third consecutive failure"
    );
    let t = target_info(&gw, "be", &bad_url).await;
    assert_eq!(t["ejections"], 1, "{t}");
    assert_eq!(t["available"], false, "{t}");
    assert_eq!(target_info(&gw, "be", &ok.url()).await["available"], true);
    assert_eq!(ejections(&gw, &bad_url).await, 1);
    assert_eq!(
        healthy_gauge(&gw, &bad_url).await,
        Some(0),
        "0 while ejected"
    );
    assert_eq!(healthy_gauge(&gw, &ok.url()).await, Some(1));
    assert!(upstream_info(&gw, "be").await["passive"].is_object());

    // While ejected, nothing reaches it.
    for i in 0..10 {
        assert_eq!(answered_by(&gw, &format!("/e/{i}")).await, "ok");
    }
    assert_eq!(bad.requests(), 3, "no request reaches an ejected target");
    assert!(ejected(&gw, &bad_url).await, "still within eject_for");

    // After eject_for it gets traffic again.
    bad.set_failing(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (gw_ref, bad_ref) = (&gw, &bad);
    eventually(
        "bad to get traffic after eject_for",
        DEADLINE,
        || async move {
            assert_eq!(gw_ref.get("/back").await.status(), 200);
            bad_ref.requests() > 3
        },
    )
    .await;
    assert!(!ejected(&gw, &bad_url).await);
    assert_eq!(healthy_gauge(&gw, &bad_url).await, Some(1));
    assert_eq!(ejections(&gw, &bad_url).await, 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_keeps_one_of_two_failing_targets() {
    let (a, b) = (
        Flaky::failing("a", 503).await,
        Flaky::failing("b", 503).await,
    );
    let gw = start(&one_upstream(
        &[a.url(), b.url()],
        &["health_check: { passive: { consecutive_failures: 3, eject_for: 10s, max_ejected_percent: 50 } }"],
        &[],
    ))
    .await;
    let urls = [a.url(), b.url()];

    let mut sent = 0;
    loop {
        let resp = gw.get(&format!("/r/{sent}")).await;
        assert_eq!(resp.status(), 503, "the upstream's 503 passes through");
        sent += 1;
        if ejected(&gw, &urls[0]).await || ejected(&gw, &urls[1]).await {
            break;
        }
        assert!(sent < 20, "no target ejected after {sent} requests");
    }
    // Plenty more failures: the other target stays, 50% of 2 is 1.
    let before = [a.requests(), b.requests()];
    for i in 0..10 {
        assert_eq!(gw.get(&format!("/more/{i}")).await.status(), 503);
    }
    let after = [a.requests(), b.requests()];
    let states = [ejected(&gw, &urls[0]).await, ejected(&gw, &urls[1]).await];
    assert_eq!(
        states.iter().filter(|e| **e).count(),
        1,
        "exactly one of two targets ejected with max_ejected_percent 50: {states:?}"
    );
    let kept = usize::from(states[0]);
    assert_eq!(
        after[kept] - before[kept],
        10,
        "the target kept in rotation takes all the traffic"
    );
    assert_eq!(after[1 - kept], before[1 - kept], "the ejected one none");
    assert_eq!(ejections(&gw, &urls[1 - kept]).await, 1);
    assert_eq!(ejections(&gw, &urls[kept]).await, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_target_may_be_ejected_and_then_nothing_is_contacted() {
    // max_ejected_percent 50 of one target rounds down to none, but at least one target may
    // always be ejected.
    let bad = Flaky::failing("bad", 503).await;
    let gw = start(&one_upstream(
        &[bad.url()],
        &["health_check: { passive: { consecutive_failures: 3, eject_for: 10s, max_ejected_percent: 50 } }"],
        &[],
    ))
    .await;
    for i in 0..3 {
        let resp = gw.get(&format!("/r/{i}")).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers().get("x-backend").map(|v| v.to_str().unwrap()),
            Some("bad"),
            "the first three 503s are the upstream's"
        );
    }
    let bad_url = bad.url();
    let gw_ref = &gw;
    eventually("the lone target to be ejected", DEADLINE, || async {
        ejected(gw_ref, &bad_url).await
    })
    .await;
    for i in 0..5 {
        assert_problem(
            gw.get(&format!("/e/{i}")).await,
            503,
            "upstream_unavailable",
        )
        .await;
    }
    assert_eq!(
        bad.requests(),
        3,
        "no target was contacted while all are ejected"
    );
    assert_eq!(ejections(&gw, &bad_url).await, 1);
    gw.stop().await;
}
