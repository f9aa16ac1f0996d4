//! Load balancing over real backends (contract §3 `load_balancing`): how requests spread,
//! and that stateful policies react to load and to health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Backend, DEADLINE, Gateway, backend_of, eventually, start};

/// One upstream `be` over `backends` behind a catch-all route.
fn upstream_config(backends: &[&Backend], weights: &[u32], policy: &str, extra: &str) -> String {
    let targets: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{{ url: \"{}\", weight: {} }}",
                b.url(),
                weights.get(i).copied().unwrap_or(1)
            )
        })
        .collect();
    format!(
        r#"
        upstreams:
          be:
            load_balancing: {policy}
            targets: [{targets}]
            {extra}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#,
        targets = targets.join(", ")
    )
}

/// Sends `total` GETs from `workers` concurrent loops; counts answers per backend id.
async fn spread(gw: &Gateway, total: usize, workers: usize) -> HashMap<String, usize> {
    let url = Arc::new(gw.url("/spread"));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let client = gw.client.clone();
        let url = Arc::clone(&url);
        let n = total / workers + usize::from(w < total % workers);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(n);
            for _ in 0..n {
                seen.push(backend_of(client.get(url.as_str()).send().await.unwrap()).await);
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for t in tasks {
        for id in t.await.unwrap() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = start(&upstream_config(&[&a, &b, &c], &[], "round_robin", "")).await;
    let counts = spread(&gw, 300, 4).await;
    for id in ["a", "b", "c"] {
        assert_eq!(
            counts.get(id),
            Some(&100),
            "round robin over 3 targets, 300 requests: {counts:?}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_the_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = start(&upstream_config(&[&a, &b], &[3, 1], "weighted", "")).await;
    let total = 4000;
    let counts = spread(&gw, total, 8).await;
    let share = counts.get("a").copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        (share - 0.75).abs() <= 0.05,
        "weights 3:1 should give a 75% share, got {share:.3}: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), total);
    gw.stop().await;
}

/// Sends requests carrying `x-hold` one at a time until `loaded` holds one of them (the others
/// are answered at once by the other targets, which do not hold). Returns the held request.
async fn hold_one_on(gw: &Gateway, loaded: &Backend) -> tokio::task::JoinHandle<reqwest::Response> {
    loaded.hold();
    for _ in 0..50 {
        let req = gw.client.get(gw.url("/held")).header("x-hold", "1");
        let task = tokio::spawn(async move { req.send().await.unwrap() });
        let deadline = Instant::now() + DEADLINE;
        loop {
            if loaded.held() == 1 {
                return task;
            }
            if task.is_finished() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a request was neither held nor answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(task.await.unwrap().status(), 200);
    }
    panic!("no request reached target {} in 50 tries", loaded.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_prefers_the_idle_target() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = start(&upstream_config(&[&a, &b], &[], "least_connections", "")).await;
    let held = hold_one_on(&gw, &a).await;
    // a has one request in flight, b none: every new request goes to b. (Round robin would
    // send half of them to a, which answers requests without `x-hold` at once.)
    let counts = spread(&gw, 30, 1).await;
    assert!(
        counts.get("a").copied().unwrap_or(0) <= 2,
        "least_connections sent requests to the busy target: {counts:?}"
    );
    a.release();
    let resp = held.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend_of(resp).await, "a");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_spreads_and_avoids_a_loaded_target() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let gw = start(&upstream_config(&[&a, &b, &c], &[], "p2c", "")).await;
    let held = hold_one_on(&gw, &a).await;
    let total = 300;
    let counts = spread(&gw, total, 1).await;
    let get = |id: &str| counts.get(id).copied().unwrap_or(0);
    // Random choice would give each target a third.
    assert!(
        get("a") * 10 <= total,
        "p2c should avoid the loaded target: {counts:?}"
    );
    for id in ["b", "c"] {
        assert!(
            get(id) * 10 >= total * 3,
            "p2c should spread over the idle targets: {counts:?}"
        );
    }
    a.release();
    assert_eq!(held.await.unwrap().status(), 200);
    gw.stop().await;
}

async fn target_healthy(gw: &Gateway, url: &str) -> bool {
    let v = gw.admin_json("/upstreams").await;
    let targets = v["upstreams"][0]["targets"].as_array().expect("targets");
    targets
        .iter()
        .find(|t| t["url"] == url)
        .expect("target listed")["healthy"]
        .as_bool()
        .expect("healthy flag")
}

/// Which backend answers each key (`X-User-Id`), 8 requests at a time.
async fn owners(gw: &Gateway, keys: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(8) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|k| {
                let req = gw
                    .client
                    .get(gw.url("/user"))
                    .header("x-user-id", k.as_str());
                tokio::spawn(async move { backend_of(req.send().await.unwrap()).await })
            })
            .collect();
        for t in tasks {
            out.push(t.await.unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_and_moves_only_those_of_a_lost_target() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let health = "hash_key: header:X-User-Id
            health_check:
              active: { path: /health, interval: 50ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }";
    let gw = start(&upstream_config(&refs, &[], "consistent_hash", health)).await;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();

    let first = owners(&gw, &keys).await;
    assert_eq!(
        owners(&gw, &keys).await,
        first,
        "each key stays on its target"
    );
    for b in &backends {
        let n = first.iter().filter(|o| *o == b.id()).count();
        assert!(
            n >= 20,
            "target {} owns {n} of 200 keys: keys should spread over all four",
            b.id()
        );
    }

    // d fails its health checks and leaves the ring.
    let d = &backends[3];
    d.set_healthy(false);
    let (gw_ref, d_url) = (&gw, d.url());
    let d_url = d_url.as_str();
    eventually("d to be marked unhealthy", DEADLINE, || async move {
        !target_healthy(gw_ref, d_url).await
    })
    .await;
    let after = owners(&gw, &keys).await;
    let mut moved = 0;
    for (i, (before, now)) in first.iter().zip(&after).enumerate() {
        if before == "d" {
            assert_ne!(now, "d", "key {i} still on the unhealthy target");
            moved += 1;
        } else {
            assert_eq!(
                before, now,
                "key {i} moved although its target stayed healthy"
            );
        }
    }
    assert!(
        (20..=80).contains(&moved),
        "about a quarter of the keys should move, {moved} of 200 did"
    );

    // d comes back: every key is where it was at first.
    d.set_healthy(true);
    eventually("d to be healthy again", DEADLINE, || {
        target_healthy(gw_ref, d_url)
    })
    .await;
    assert_eq!(
        owners(&gw, &keys).await,
        first,
        "keys return to their first target"
    );
    gw.stop().await;
}
