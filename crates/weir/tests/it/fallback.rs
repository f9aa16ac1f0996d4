//! Route fallbacks (contract §3 `fallback`, §4 `X-Fallback`): when weir itself would answer
//! 502 `bad_gateway`, 503 `upstream_unavailable` or 504 `gateway_timeout`, a route's
//! fallback answers instead: a static response or another upstream (one try), marked with
//! `X-Fallback: true` and counted in `weir_fallbacks_total`. An upstream's own 5xx passed
//! through is not replaced. When the upstream comes back, normal answers resume without a
//! restart. `weir explain` shows the retry plan and the fallback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::faults::{
    Fault, Flaky, RawFault, content_type, counter, fallback_header, is_problem, refusing_url,
    retries, retry_line,
};
use crate::common::{Backend, DEADLINE, Gateway, TempDir, backend_of, start, weir_command};

/// `weir_fallbacks_total{route, kind}`.
async fn fallbacks(gw: &Gateway, route: &str, kind: &str) -> u64 {
    counter(
        gw,
        "weir_fallbacks_total",
        &[("route", route), ("kind", kind)],
    )
    .await
}

/// Checks a static fallback answer: status, content type, body, `X-Fallback: true`.
async fn assert_static(resp: reqwest::Response, status: u16, ct: &str, body: &str) {
    assert_eq!(resp.status().as_u16(), status, "fallback status");
    assert_eq!(
        fallback_header(&resp).as_deref(),
        Some("true"),
        "X-Fallback"
    );
    let got_ct = content_type(&resp).unwrap_or_default();
    assert!(got_ct.starts_with(ct), "fallback Content-Type: {got_ct}");
    assert_eq!(resp.text().await.unwrap(), body, "fallback body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_fallback_answers_502_and_504_cases_until_the_upstream_is_back() {
    let primary = Flaky::resetting("primary").await;
    let hang = RawFault::start(Fault::Hang).await;
    let gw = start(&format!(
        r#"
        upstreams:
          be: {{ targets: [{{ url: "{}" }}] }}
          gone: {{ targets: [{{ url: "{}" }}] }}
          stuck: {{ targets: [{{ url: "{}" }}] }}
        routes:
          - name: r
            match: {{ prefix: / }}
            upstream: be
            fallback: {{ status: 200, content_type: application/json, body: '{{"fallback":true}}', headers: {{ X-Served-By: fallback }} }}
          - name: refused
            match: {{ prefix: /refused }}
            upstream: gone
            fallback: {{ status: 503, content_type: text/plain, body: try later }}
          - name: stuck
            match: {{ prefix: /stuck }}
            upstream: stuck
            timeout: 300ms
            fallback: {{ status: 200, content_type: text/plain, body: cached }}
        "#,
        primary.url(),
        refusing_url(),
        hang.url()
    ))
    .await;

    // Reset before any response byte (502 bad_gateway) → the static fallback.
    for i in 0..3 {
        let resp = gw.get(&format!("/x/{i}")).await;
        assert_eq!(
            resp.headers()
                .get("x-served-by")
                .map(|v| v.to_str().unwrap()),
            Some("fallback"),
            "the fallback's own headers"
        );
        assert_static(resp, 200, "application/json", r#"{"fallback":true}"#).await;
    }
    assert_eq!(primary.requests(), 3, "one try each, no retry configured");
    assert_eq!(fallbacks(&gw, "r", "static").await, 3);

    // Connection refused (502 bad_gateway) → that route's fallback.
    assert_static(gw.get("/refused/x").await, 503, "text/plain", "try later").await;
    assert_eq!(fallbacks(&gw, "refused", "static").await, 1);

    // Route timeout (504 gateway_timeout) → that route's fallback.
    let started = Instant::now();
    assert_static(gw.get("/stuck/x").await, 200, "text/plain", "cached").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(hang.requests(), 1);
    assert_eq!(fallbacks(&gw, "stuck", "static").await, 1);

    // The primary recovers: normal answers, no X-Fallback, same weir.
    primary.set_resetting(false);
    for i in 0..3 {
        let resp = gw.get(&format!("/y/{i}")).await;
        assert_eq!(
            fallback_header(&resp),
            None,
            "a normal answer is not marked"
        );
        assert_eq!(backend_of(resp).await, "primary");
    }
    assert_eq!(primary.requests(), 6);
    assert_eq!(fallbacks(&gw, "r", "static").await, 3, "no more fallbacks");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_answers_while_the_circuit_is_open() {
    let primary = Flaky::failing("primary", 503).await;
    let gw = start(&format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
            circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_requests: 1 }}
        routes:
          - name: r
            match: {{ prefix: / }}
            upstream: be
            fallback: {{ status: 200, content_type: application/json, body: '{{"fallback":true}}' }}
        "#,
        primary.url()
    ))
    .await;

    // The upstream's own 503s pass through while the circuit is closed.
    for i in 0..4 {
        let resp = gw.get(&format!("/fail/{i}")).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(
            fallback_header(&resp),
            None,
            "an upstream 503 is not replaced"
        );
        assert!(!is_problem(&resp));
    }
    assert_eq!(fallbacks(&gw, "r", "static").await, 0);

    // Open: the fallback answers and the primary is not contacted.
    let mut served = 0;
    for i in 0..3 {
        assert_static(
            gw.get(&format!("/open/{i}")).await,
            200,
            "application/json",
            r#"{"fallback":true}"#,
        )
        .await;
        served += 1;
    }
    assert_eq!(
        primary.requests(),
        4,
        "no contact while the circuit is open"
    );
    assert_eq!(fallbacks(&gw, "r", "static").await, served);

    // Recovered: after open_for the probe succeeds and normal answers resume.
    primary.set_failing(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = gw.get("/probe").await;
        if fallback_header(&resp).is_none() {
            assert_eq!(backend_of(resp).await, "primary");
            break;
        }
        assert_static(resp, 200, "application/json", r#"{"fallback":true}"#).await;
        served += 1;
        assert!(Instant::now() < deadline, "the primary never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..3 {
        let resp = gw.get(&format!("/back/{i}")).await;
        assert_eq!(fallback_header(&resp), None);
        assert_eq!(backend_of(resp).await, "primary");
    }
    assert_eq!(fallbacks(&gw, "r", "static").await, served);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_upstream_serves_while_the_primary_is_down() {
    let primary = Flaky::resetting("primary").await;
    let spare = Backend::start("spare").await;
    let standby = Flaky::resetting("standby").await;
    let gw = start(&format!(
        r#"
        upstreams:
          be: {{ targets: [{{ url: "{}" }}] }}
          spare: {{ targets: [{{ url: "{}" }}] }}
          gone: {{ targets: [{{ url: "{}" }}] }}
          standby:
            targets: [{{ url: "{}" }}]
            {}
        routes:
          - name: r
            match: {{ prefix: / }}
            upstream: be
            fallback: {{ upstream: spare }}
          - name: both
            match: {{ prefix: /both }}
            upstream: gone
            fallback: {{ upstream: standby }}
        "#,
        primary.url(),
        spare.url(),
        refusing_url(),
        standby.url(),
        retry_line(3, "connect_failure, reset", "")
    ))
    .await;

    for i in 0..3 {
        let resp = gw.get(&format!("/x/{i}")).await;
        assert_eq!(
            fallback_header(&resp).as_deref(),
            Some("true"),
            "X-Fallback"
        );
        assert_eq!(
            backend_of(resp).await,
            "spare",
            "answered by the fallback upstream"
        );
    }
    assert_eq!(primary.requests(), 3);
    assert_eq!(spare.hits(), 3);
    assert_eq!(fallbacks(&gw, "r", "upstream").await, 3);
    assert_eq!(fallbacks(&gw, "r", "static").await, 0);

    // A fallback upstream gets one try, even with a retry policy of its own.
    for i in 0..2 {
        let resp = gw.get(&format!("/both/{i}")).await;
        assert!(
            resp.status().is_server_error(),
            "both down: {}",
            resp.status()
        );
    }
    assert_eq!(
        standby.requests(),
        2,
        "one try per request on the fallback upstream"
    );
    assert_eq!(retries(&gw, "standby").await, 0);

    // The primary is back: traffic returns to it.
    primary.set_resetting(false);
    for i in 0..3 {
        let resp = gw.get(&format!("/y/{i}")).await;
        assert_eq!(fallback_header(&resp), None);
        assert_eq!(backend_of(resp).await, "primary");
    }
    assert_eq!(
        spare.hits(),
        3,
        "the fallback upstream is not used any more"
    );
    assert_eq!(fallbacks(&gw, "r", "upstream").await, 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_5xx_passed_through_is_not_replaced_by_the_fallback() {
    let plain = Flaky::failing("plain", 503).await;
    let (a, b) = (
        Flaky::failing("a", 502).await,
        Flaky::failing("b", 502).await,
    );
    let gw = start(&format!(
        r#"
        upstreams:
          plain: {{ targets: [{{ url: "{}" }}] }}
          retried:
            targets: [{{ url: "{}" }}, {{ url: "{}" }}]
            {}
        routes:
          - name: plain
            match: {{ prefix: /plain }}
            upstream: plain
            fallback: {{ status: 200, content_type: text/plain, body: fallback }}
          - name: retried
            match: {{ prefix: /retried }}
            upstream: retried
            fallback: {{ status: 200, content_type: text/plain, body: fallback }}
        "#,
        plain.url(),
        a.url(),
        b.url(),
        retry_line(2, r#""502""#, "")
    ))
    .await;

    for i in 0..3 {
        let resp = gw.get(&format!("/plain/{i}")).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(fallback_header(&resp), None);
        assert_eq!(
            resp.headers().get("x-backend").map(|v| v.to_str().unwrap()),
            Some("plain"),
            "the upstream's own 503"
        );
    }
    assert_eq!(plain.requests(), 3);

    // Retries exhausted on a retryable status: the last upstream answer passes through.
    for i in 0..3 {
        let resp = gw.get(&format!("/retried/{i}")).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(fallback_header(&resp), None);
        assert!(
            !is_problem(&resp),
            "the upstream's 502, not weir's bad_gateway"
        );
    }
    assert_eq!(a.requests() + b.requests(), 6, "two tries per request");
    assert_eq!(retries(&gw, "retried").await, 3);
    let text = gw.metrics().await;
    assert_eq!(
        crate::common::faults::sample(&text, "weir_fallbacks_total", &[]),
        0.0,
        "no fallback was served"
    );
    gw.stop().await;
}

#[test]
fn explain_shows_the_retry_plan_and_the_fallback() {
    // Free ports, held while the test runs (explain never connects to them).
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let urls: Vec<String> = held
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let dir = TempDir::new("explain-resilience");
    let config = dir.write(
        "weir.yaml",
        &crate::common::config(&format!(
            r#"
            upstreams:
              be:
                targets: [{{ url: "{}" }}, {{ url: "{}" }}]
                retry: {{ attempts: 3, on: [connect_failure, reset, "503"], per_try_timeout: 300ms }}
                circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_requests: 1 }}
            routes:
              - name: r
                match: {{ prefix: / }}
                upstream: be
                fallback: {{ status: 200, content_type: application/json, body: '{{"fallback":true}}' }}
            "#,
            urls[0], urls[1]
        )),
    );
    let out = weir_command()
        .args([
            "explain",
            "-c",
            config.to_str().unwrap(),
            "GET",
            "http://localhost/x",
        ])
        .output()
        .expect("run weir explain");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "explain: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lower = stdout.to_lowercase();
    assert!(lower.contains("route: \"r\""), "{stdout}");
    assert!(lower.contains("retry"), "the retry plan is shown: {stdout}");
    assert!(
        lower.contains("fallback"),
        "the fallback is shown: {stdout}"
    );
}
