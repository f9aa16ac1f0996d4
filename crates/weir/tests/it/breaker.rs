//! Circuit breakers (contract §3 `circuit_breaker`), per target: closed → open when the
//! failure ratio over the window reaches `failure_ratio` with at least `min_requests`; open
//! rejects at once with 503 `upstream_unavailable` and contacts nobody; after `open_for`,
//! half-open admits `half_open_requests` probes; success closes it, a failure reopens it.
//! The state shows in `/upstreams` (`circuit`) and in `weir_circuit_breaker_state`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::faults::{Flaky, counter, is_problem, one_upstream, target_info, upstream_info};
use crate::common::{Backend, DEADLINE, Gateway, assert_problem, backend_of, eventually, start};

const BREAKER: &str = "circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, half_open_requests: 1 }";
const OPEN_FOR: Duration = Duration::from_secs(1);

/// The `circuit` of a target of upstream `be` in `/upstreams`.
async fn circuit(gw: &Gateway, target: &str) -> String {
    let t = target_info(gw, "be", target).await;
    t["circuit"]
        .as_str()
        .unwrap_or_else(|| panic!("circuit is a string: {t}"))
        .to_owned()
}

/// `weir_circuit_breaker_state` of a target of upstream `be` (absent = 0).
async fn state_gauge(gw: &Gateway, target: &str) -> u64 {
    counter(
        gw,
        "weir_circuit_breaker_state",
        &[("upstream", "be"), ("target", target)],
    )
    .await
}

/// Four failures (min_requests 4, all failing) open the circuit of a lone failing target:
/// those four are the upstream's 503s; the fifth request is rejected without contact.
async fn open_the_circuit(gw: &Gateway, bad: &Flaky) {
    for i in 0..4 {
        let resp = gw.get(&format!("/fail/{i}")).await;
        assert_eq!(resp.status(), 503, "request {i}");
        assert!(
            !is_problem(&resp),
            "request {i}: the upstream's 503 passed through, the circuit is still closed"
        );
    }
    assert_eq!(bad.requests(), 4);
    assert_problem(gw.get("/fail/open").await, 503, "upstream_unavailable").await;
    assert_eq!(bad.requests(), 4, "an open circuit rejects without contact");
}

/// Sends GETs until one reaches `bad` (the half-open probe) and returns its answer; every
/// request before it must be rejected at once.
async fn until_probe(gw: &Gateway, bad: &Flaky) -> reqwest::Response {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = bad.requests();
        let resp = gw.get("/probe").await;
        let reached = bad.requests() - before;
        if reached > 0 {
            assert_eq!(reached, 1, "half_open_requests is 1");
            return resp;
        }
        assert_problem(resp, 503, "upstream_unavailable").await;
        assert!(Instant::now() < deadline, "no probe within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_rejects_fast_and_a_probe_reopens_or_closes_it() {
    let bad = Flaky::failing("bad", 503).await;
    let gw = start(&one_upstream(&[bad.url()], &[BREAKER], &[])).await;
    let url = bad.url();
    assert_eq!(circuit(&gw, &url).await, "closed");
    assert_eq!(state_gauge(&gw, &url).await, 0);
    let policy = &upstream_info(&gw, "be").await["circuit_breaker"];
    assert!(policy.is_object(), "/upstreams shows the policy: {policy}");

    open_the_circuit(&gw, &bad).await;
    for i in 0..5 {
        assert_problem(
            gw.get(&format!("/open/{i}")).await,
            503,
            "upstream_unavailable",
        )
        .await;
    }
    assert_eq!(bad.requests(), 4, "no contact while open");
    assert_eq!(circuit(&gw, &url).await, "open");
    assert_eq!(state_gauge(&gw, &url).await, 1);
    let t = target_info(&gw, "be", &url).await;
    assert_eq!(t["available"], false, "{t}");

    // After open_for: one probe; it fails, so the circuit opens again.
    tokio::time::sleep(OPEN_FOR).await;
    let probe = until_probe(&gw, &bad).await;
    assert_eq!(probe.status(), 503);
    assert!(!is_problem(&probe), "the probe's answer is the upstream's");
    assert_eq!(circuit(&gw, &url).await, "open", "a failed probe reopens");
    assert_eq!(state_gauge(&gw, &url).await, 1);
    let contacted = bad.requests();
    assert_problem(gw.get("/reopened").await, 503, "upstream_unavailable").await;
    assert_eq!(bad.requests(), contacted, "rejected again without contact");

    // The target recovers: after open_for the probe succeeds and the circuit closes.
    bad.set_failing(false);
    tokio::time::sleep(OPEN_FOR).await;
    let probe = until_probe(&gw, &bad).await;
    assert_eq!(backend_of(probe).await, "bad", "the probe's 200");
    assert_eq!(circuit(&gw, &url).await, "closed", "a good probe closes");
    assert_eq!(state_gauge(&gw, &url).await, 0);
    let contacted = bad.requests();
    for i in 0..5 {
        assert_eq!(
            backend_of(gw.get(&format!("/closed/{i}")).await).await,
            "bad"
        );
    }
    assert_eq!(
        bad.requests(),
        contacted + 5,
        "closed: every request goes through"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_only_its_probes() {
    let bad = Flaky::failing("bad", 503).await;
    let gw = start(&one_upstream(&[bad.url()], &[BREAKER], &[])).await;
    let url = bad.url();
    open_the_circuit(&gw, &bad).await;

    // Recovered but slow: the probe stays in flight for a second.
    bad.set_failing(false);
    bad.set_delay(Duration::from_secs(1));
    tokio::time::sleep(OPEN_FOR).await;
    let (client, probe_url, state) = (gw.client.clone(), gw.url("/probe"), Arc::clone(&bad.state));
    let probe = tokio::spawn(async move {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let before = state.requests.load(Ordering::SeqCst);
            let resp = client.get(&probe_url).send().await.unwrap();
            if state.requests.load(Ordering::SeqCst) > before {
                return resp;
            }
            assert_eq!(resp.status(), 503, "rejected before the probe");
            assert!(Instant::now() < deadline, "no probe within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let bad_ref = &bad;
    eventually("the probe to reach the backend", DEADLINE, || async move {
        bad_ref.requests() == 5
    })
    .await;
    // The probe is in flight (it is answered after 1s).
    assert_eq!(circuit(&gw, &url).await, "half_open");
    assert_eq!(state_gauge(&gw, &url).await, 2);
    for i in 0..2 {
        assert_problem(
            gw.get(&format!("/beside/{i}")).await,
            503,
            "upstream_unavailable",
        )
        .await;
    }
    assert_eq!(bad.requests(), 5, "half-open admits one probe, no more");

    let resp = probe.await.unwrap();
    assert_eq!(resp.status(), 200, "the probe succeeds");
    assert_eq!(circuit(&gw, &url).await, "closed");
    assert_eq!(state_gauge(&gw, &url).await, 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_takes_only_its_own_target_out() {
    let bad = Flaky::failing("bad", 503).await;
    let ok = Backend::start("ok").await;
    let gw = start(&one_upstream(&[bad.url(), ok.url()], &[BREAKER], &[])).await;

    // Round robin: `bad` fails its four requests among the first eight, then opens.
    let mut failed = 0;
    for i in 0..20 {
        let resp = gw.get(&format!("/r/{i}")).await;
        match resp.status().as_u16() {
            503 => {
                assert!(!is_problem(&resp), "request {i}: ok is still available");
                failed += 1;
            }
            200 => assert_eq!(backend_of(resp).await, "ok"),
            s => panic!("request {i}: {s}"),
        }
        if i == 1 {
            // One request each so far: the windows show it.
            let t = target_info(&gw, "be", &bad.url()).await;
            assert_eq!(t["window_requests"], 1, "{t}");
            assert_eq!(t["failure_ratio"].as_f64(), Some(1.0), "{t}");
            let t = target_info(&gw, "be", &ok.url()).await;
            assert_eq!(t["window_requests"], 1, "{t}");
            assert_eq!(t["failure_ratio"].as_f64(), Some(0.0), "{t}");
        }
    }
    assert_eq!(failed, 4, "the circuit opened after min_requests failures");
    assert_eq!(bad.requests(), 4);
    assert_eq!(ok.hits(), 16, "the other target took the rest");
    assert_eq!(circuit(&gw, &bad.url()).await, "open");
    assert_eq!(circuit(&gw, &ok.url()).await, "closed");
    assert_eq!(state_gauge(&gw, &ok.url()).await, 0);
    gw.stop().await;
}
