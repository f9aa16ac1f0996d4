//! Active health checks (contract §3 `health_check.active`): targets leave rotation after
//! `unhealthy_threshold` failed probes and come back after `healthy_threshold` good ones;
//! the admin API and the metrics show it; no healthy target is a 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crate::common::{Backend, DEADLINE, Gateway, assert_problem, backend_of, eventually, start};

fn checked_upstream(urls: &[String], interval: &str, healthy: u32, unhealthy: u32) -> String {
    let targets: Vec<String> = urls.iter().map(|u| format!("{{ url: \"{u}\" }}")).collect();
    format!(
        r#"
        upstreams:
          be:
            targets: [{targets}]
            health_check:
              active: {{ path: /health, interval: {interval}, timeout: 1s, healthy_threshold: {healthy}, unhealthy_threshold: {unhealthy} }}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#,
        targets = targets.join(", ")
    )
}

async fn healthy_per_admin(gw: &Gateway, url: &str) -> bool {
    let v = gw.admin_json("/upstreams").await;
    let up = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "be")
        .expect("upstream be");
    let t = up["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == url)
        .expect("target listed");
    t["healthy"].as_bool().expect("healthy is a boolean")
}

/// `weir_upstream_target_healthy` for one target, from `/metrics`.
async fn healthy_gauge(gw: &Gateway, url: &str) -> Option<String> {
    let text = gw.metrics().await;
    let prefix = format!("weir_upstream_target_healthy{{upstream=\"be\",target=\"{url}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

async fn answering(gw: &Gateway, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..n {
        ids.insert(backend_of(gw.get("/x").await).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_leaves_and_returns_by_the_thresholds() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = start(&checked_upstream(&[a.url(), b.url()], "100ms", 2, 3)).await;
    let (gw_ref, b_url) = (&gw, b.url());
    let b_url = b_url.as_str();

    assert_eq!(
        answering(&gw, 10).await,
        HashSet::from(["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(healthy_gauge(&gw, b_url).await.as_deref(), Some("1"));

    b.set_healthy(false);
    // One failed probe is not enough (threshold 3). Checked only when no further probe
    // failed while we asked, so a slow test machine cannot make this flaky.
    eventually("a first failed probe", DEADLINE, || async {
        b.state.probes_failed.load(Ordering::SeqCst) >= 1
    })
    .await;
    let healthy = healthy_per_admin(&gw, b_url).await;
    if b.state.probes_failed.load(Ordering::SeqCst) < 3 {
        assert!(healthy, "the target left rotation before 3 failed probes");
    }
    eventually("b to leave rotation", DEADLINE, || async move {
        !healthy_per_admin(gw_ref, b_url).await
    })
    .await;
    let failed = b.state.probes_failed.load(Ordering::SeqCst);
    assert!(
        failed >= 3,
        "b left rotation after {failed} failed probes; the threshold is 3"
    );
    assert_eq!(
        answering(&gw, 20).await,
        HashSet::from(["a".to_owned()]),
        "no traffic to an unhealthy target"
    );
    assert_eq!(healthy_gauge(&gw, b_url).await.as_deref(), Some("0"));

    // Back after 2 good probes.
    let ok_before = b.state.probes_ok.load(Ordering::SeqCst);
    b.set_healthy(true);
    eventually("b to return to rotation", DEADLINE, || {
        healthy_per_admin(gw_ref, b_url)
    })
    .await;
    let ok = b.state.probes_ok.load(Ordering::SeqCst) - ok_before;
    assert!(
        ok >= 2,
        "b returned after {ok} good probes; the threshold is 2"
    );
    assert!(
        answering(&gw, 20).await.contains("b"),
        "traffic goes to b again"
    );
    assert_eq!(healthy_gauge(&gw, b_url).await.as_deref(), Some("1"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_target_is_upstream_unavailable() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.set_healthy(false);
    b.set_healthy(false);
    let gw = start(&checked_upstream(&[a.url(), b.url()], "50ms", 1, 1)).await;
    let gw_ref = &gw;
    let urls = [a.url(), b.url()];
    for url in &urls {
        let url = url.as_str();
        eventually("both targets to leave rotation", DEADLINE, || async move {
            !healthy_per_admin(gw_ref, url).await
        })
        .await;
    }
    let hits = a.hits() + b.hits();
    let body = assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    let detail = body["detail"].as_str().unwrap();
    for be in [&a, &b] {
        assert!(
            !detail.contains(&be.addr.port().to_string()),
            "detail reveals a target address: {detail}"
        );
    }
    assert_eq!(a.hits() + b.hits(), hits, "nothing was forwarded");

    a.set_healthy(true);
    let a_url = urls[0].as_str();
    eventually("a to return", DEADLINE, || healthy_per_admin(gw_ref, a_url)).await;
    assert_eq!(backend_of(gw.get("/x").await).await, "a");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_taken_out_and_traffic_flows_to_the_rest() {
    let live = Backend::start("live").await;
    let dead = format!("http://{}", crate::common::dead_addr());
    let gw = start(&checked_upstream(&[live.url(), dead.clone()], "50ms", 1, 2)).await;
    let (gw_ref, dead_ref) = (&gw, dead.as_str());
    eventually(
        "the dead target to leave rotation",
        DEADLINE,
        || async move { !healthy_per_admin(gw_ref, dead_ref).await },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(backend_of(gw.get("/x").await).await, "live");
    }
    assert_eq!(healthy_gauge(&gw, &dead).await.as_deref(), Some("0"));
    assert_eq!(healthy_gauge(&gw, &live.url()).await.as_deref(), Some("1"));
    gw.stop().await;
}
