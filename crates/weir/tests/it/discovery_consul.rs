//! Consul discovery (`discovery.consul`) against a real Consul agent (`consul agent -dev`):
//! registered instances take traffic within a second, deregistered or critical ones leave
//! (requests in flight finish), tags filter, an agent that is gone keeps the last-known-good
//! set (stale) until it is back, no passing instance is a 503, and ACL tokens are honoured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::consul::Consul;
use crate::common::discovery::{
    answering, hold_at, removed_target_drains, set, stale_gauge, target_urls, upstream_json,
};
use crate::common::idp::TestCa;
use crate::common::{Backend, Gateway, assert_problem, eventually, start};

/// The blocking-query wait: short, so an idle watch is renewed within a test, though
/// changes arrive at once either way.
const WAIT: &str = "5s";

fn config(consul: &Consul, discovery: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!("\n          token: \"{t}\""));
    config_at(&consul.address(), discovery, &token)
}

/// The config for an agent at `address`; `extra` is more of the `consul` section.
fn config_at(address: &str, discovery: &str, extra: &str) -> String {
    format!(
        r#"
        consul:
          address: {address}
          wait: {WAIT}{extra}
        upstreams:
          users:
            discovery:
              consul: {discovery}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: users
        "#
    )
}

const USERS: &str = "{ service: users }";

async fn until_answering(gw: &Gateway, ids: &[&str]) {
    let want = set(ids);
    let want = &want;
    eventually(
        &format!("{ids:?} to answer"),
        Duration::from_secs(5),
        || async move { answering(gw, 2 * want.len().max(2)).await == *want },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_take_traffic_within_a_second_and_deregistered_ones_leave() {
    let Some(consul) = Consul::start_or_skip().await else {
        return;
    };
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    consul.register("a", "users", &[], a.addr).await;
    consul.register("b", "users", &[], b.addr).await;
    let gw = start(&config(&consul, USERS, None)).await;
    until_answering(&gw, &["a", "b"]).await;
    let up = upstream_json(&gw).await;
    assert_eq!(up["discovery"]["source"], "consul");
    assert_eq!(up["discovery"]["stale"], false);

    // Registered: c takes traffic within a second of the registration returning.
    consul.register("c", "users", &[], c.addr).await;
    let registered = Instant::now();
    while c.hits() == 0 {
        assert!(
            registered.elapsed() < Duration::from_secs(1),
            "c took no traffic within 1 s of its registration"
        );
        let _ = gw.get("/x").await;
    }
    let latency = registered.elapsed();
    println!("consul: a registered instance took its first request after {latency:?}");

    // Deregistered while a request is in flight on it: that request completes, and no new
    // request reaches it.
    // Round robin over three targets: four requests put at least one on a, held there.
    let held = hold_at(&gw, &a).await;
    let a_ref = &a;
    consul.deregister("a").await;
    let gw_ref = &gw;
    eventually(
        "a to leave the set",
        Duration::from_secs(3),
        || async move { !target_urls(gw_ref).await.contains(&a_ref.url()) },
    )
    .await;
    removed_target_drains(&gw, &a, held, &["b", "c"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_check_takes_the_instance_out_until_it_passes_again() {
    let Some(consul) = Consul::start_or_skip().await else {
        return;
    };
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register("a", "users", &[], a.addr).await;
    consul.register("b", "users", &[], b.addr).await;
    let gw = start(&config(&consul, USERS, None)).await;
    until_answering(&gw, &["a", "b"]).await;

    consul.fail("b").await;
    until_answering(&gw, &["a"]).await;
    assert_eq!(target_urls(&gw).await, [a.url()]);

    consul.pass("b").await;
    until_answering(&gw, &["a", "b"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_filter_keeps_only_tagged_instances_with_their_weights() {
    let Some(consul) = Consul::start_or_skip().await else {
        return;
    };
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    consul
        .register_weighted("a", "users", &["v2", "eu"], a.addr, 3)
        .await;
    consul.register("b", "users", &["v1"], b.addr).await;
    consul.register("c", "users", &["v2"], c.addr).await;
    // Another service of the same agent is not asked about.
    let other = Backend::start("other").await;
    consul.register("o", "orders", &["v2"], other.addr).await;
    let gw = start(&config(
        &consul,
        "{ service: users, tag: v2, datacenter: dc1 }",
        None,
    ))
    .await;
    until_answering(&gw, &["a", "c"]).await;
    let up = upstream_json(&gw).await;
    let mut targets: Vec<(String, u64)> = up["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["url"].as_str().unwrap().to_owned(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    targets.sort();
    let mut want = vec![(a.url(), 3), (c.url(), 1)];
    want.sort();
    assert_eq!(targets, want, "Weights.Passing is the target's weight");
    assert_eq!(b.hits(), 0);
    assert_eq!(other.hits(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_keeps_the_last_known_good_set_stale_until_it_is_back() {
    let Some(mut consul) = Consul::start_or_skip().await else {
        return;
    };
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    consul.register("a", "users", &[], a.addr).await;
    consul.register("b", "users", &[], b.addr).await;
    let gw = start(&config(&consul, USERS, None)).await;
    until_answering(&gw, &["a", "b"]).await;
    assert_eq!(stale_gauge(&gw, "users").await.as_deref(), Some("0"));

    consul.stop();
    let gw_ref = &gw;
    eventually(
        "the upstream to turn stale",
        Duration::from_secs(4),
        || async move { stale_gauge(gw_ref, "users").await.as_deref() == Some("1") },
    )
    .await;
    assert_eq!(upstream_json(&gw).await["discovery"]["stale"], true);
    assert_eq!(
        answering(&gw, 10).await,
        set(&["a", "b"]),
        "traffic continues on the last-known-good set"
    );

    // Back, and empty (-dev keeps nothing): b registers again, and only b is a target.
    consul.restart().await;
    consul.register("b", "users", &[], b.addr).await;
    eventually(
        "fresh again with b only",
        Duration::from_secs(8),
        || async move {
            stale_gauge(gw_ref, "users").await.as_deref() == Some("0")
                && answering(gw_ref, 6).await == set(&["b"])
        },
    )
    .await;
    assert_eq!(upstream_json(&gw).await["discovery"]["stale"], false);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_passing_instance_is_503_and_not_stale() {
    let Some(consul) = Consul::start_or_skip().await else {
        return;
    };
    let a = Backend::start("a").await;
    consul.register("a", "users", &[], a.addr).await;
    let gw = start(&config(&consul, USERS, None)).await;
    until_answering(&gw, &["a"]).await;

    consul.fail("a").await;
    let gw_ref = &gw;
    eventually("no targets left", Duration::from_secs(3), || async move {
        target_urls(gw_ref).await.is_empty()
    })
    .await;
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    assert_eq!(
        stale_gauge(&gw, "users").await.as_deref(),
        Some("0"),
        "not stale: the agent answered"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_is_what_lets_weir_see_the_instances() {
    const TOKEN: &str = "0f8e2c9a-4b7d-4e1a-9c3f-5d6b7a8e9f01";
    let Some(consul) = Consul::start_acl_or_skip(TOKEN).await else {
        return;
    };
    let a = Backend::start("a").await;
    consul.register("a", "users", &[], a.addr).await;

    // The right token: a is discovered.
    let gw = start(&config(&consul, USERS, Some(TOKEN))).await;
    until_answering(&gw, &["a"]).await;
    assert_eq!(stale_gauge(&gw, "users").await.as_deref(), Some("0"));
    gw.stop().await;
    let hits = a.hits();

    // No token: under default deny, Consul answers with the instances filtered out.
    let gw = start(&config(&consul, USERS, None)).await;
    let gw_ref = &gw;
    eventually(
        "the anonymous answer to apply",
        Duration::from_secs(3),
        || async move { upstream_json(gw_ref).await["discovery"]["updated_ms_ago"].is_u64() },
    )
    .await;
    assert!(target_urls(&gw).await.is_empty());
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    gw.stop().await;

    // A token Consul does not know: 403, so the source is failing (stale, no targets ever
    // known).
    let gw = start(&config(&consul, USERS, Some("not-a-token"))).await;
    let gw_ref = &gw;
    eventually(
        "the upstream to turn stale",
        Duration::from_secs(3),
        || async move { stale_gauge(gw_ref, "users").await.as_deref() == Some("1") },
    )
    .await;
    assert!(target_urls(&gw).await.is_empty());
    assert_eq!(a.hits(), hits, "only the gateway with the token reached a");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agent_is_trusted_through_ca_file() {
    let ca = TestCa::new();
    let Some(consul) = Consul::start_tls_or_skip(&ca).await else {
        return;
    };
    let a = Backend::start("a").await;
    consul.register("a", "users", &[], a.addr).await;
    let dir = crate::common::TempDir::new("consul-ca");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let extra = format!("\n          ca_file: {}", ca_file.display());
    let gw = start(&config_at(&consul.https_address(), USERS, &extra)).await;
    until_answering(&gw, &["a"]).await;
    assert_eq!(stale_gauge(&gw, "users").await.as_deref(), Some("0"));
    gw.stop().await;
}
