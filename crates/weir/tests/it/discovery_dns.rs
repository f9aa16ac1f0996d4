//! DNS discovery (contract §3 `discovery.dns`) against a real DNS server on a real socket:
//! targets follow the answers without a reload, in-flight requests finish on a removed
//! target, a failing server keeps the last-known-good set (stale), an empty answer empties it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::common::discovery::{
    answering, hold_at, removed_target_drains, set, stale_gauge, upstream_json,
};
use crate::common::dns::TestDns;
use crate::common::{Backend, assert_problem, eventually, start};

const SRV: &str = "_http._tcp.be.test";
const LOCAL: [Ipv4Addr; 1] = [Ipv4Addr::LOCALHOST];

fn srv_config(dns: &TestDns) -> String {
    format!(
        r#"
        upstreams:
          be:
            discovery:
              dns: {{ srv: {SRV}, refresh: 1s, server: "{}" }}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#,
        dns.addr()
    )
}

/// Publishes `backends` as the SRV answer (priority 10, weight 1, names `<id>.be.test`).
fn publish(dns: &TestDns, backends: &[&Backend]) {
    for b in backends {
        dns.set_a(&format!("{}.be.test", b.id()), &LOCAL, 1);
    }
    let names: Vec<(String, u16)> = backends
        .iter()
        .map(|b| (format!("{}.be.test", b.id()), b.addr.port()))
        .collect();
    let records: Vec<(u16, u16, u16, &str)> = names
        .iter()
        .map(|(n, port)| (10, 1, *port, n.as_str()))
        .collect();
    dns.set_srv(SRV, &records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_srv_answers_without_a_reload() {
    let dns = TestDns::start().await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    publish(&dns, &[&a, &b]);
    let gw = start(&srv_config(&dns)).await;

    let gw_ref = &gw;
    eventually("a and b to answer", Duration::from_secs(3), || async move {
        answering(gw_ref, 10).await == set(&["a", "b"])
    })
    .await;
    let up = upstream_json(&gw).await;
    assert_eq!(up["discovery"]["source"], "dns");
    assert_eq!(up["discovery"]["stale"], false);
    assert_eq!(up["targets"].as_array().unwrap().len(), 2);

    // Added: c takes traffic within a refresh (1 s; the TTL is 1 s too).
    publish(&dns, &[&a, &b, &c]);
    eventually("c to take traffic", Duration::from_secs(3), || async move {
        answering(gw_ref, 12).await.contains("c")
    })
    .await;

    // Removed while a request is in flight on it: the request completes, and no new request
    // reaches the removed target.
    // Round robin over three targets: four requests put at least one on a, held there.
    let held = hold_at(&gw, &a).await;
    let a_ref = &a;
    publish(&dns, &[&b, &c]);
    eventually(
        "a to leave the set",
        Duration::from_secs(3),
        || async move {
            upstream_json(gw_ref).await["targets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["url"] != a_ref.url().as_str())
        },
    )
    .await;
    removed_target_drains(&gw, &a, held, &["b", "c"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_keeps_the_last_known_good_set_and_marks_it_stale() {
    let dns = TestDns::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    publish(&dns, &[&a, &b]);
    let gw = start(&srv_config(&dns)).await;
    let gw_ref = &gw;
    eventually("a and b to answer", Duration::from_secs(3), || async move {
        answering(gw_ref, 10).await == set(&["a", "b"])
    })
    .await;
    assert_eq!(stale_gauge(&gw, "be").await.as_deref(), Some("0"));

    dns.set_servfail(SRV);
    eventually(
        "the upstream to turn stale",
        Duration::from_secs(4),
        || async move { stale_gauge(gw_ref, "be").await.as_deref() == Some("1") },
    )
    .await;
    assert_eq!(upstream_json(&gw).await["discovery"]["stale"], true);
    assert_eq!(
        answering(&gw, 10).await,
        set(&["a", "b"]),
        "traffic continues on the last-known-good set"
    );

    // The server answers again: fresh, and its answer applies.
    publish(&dns, &[&b]);
    eventually(
        "fresh again with b only",
        Duration::from_secs(4),
        || async move {
            stale_gauge(gw_ref, "be").await.as_deref() == Some("0")
                && answering(gw_ref, 6).await == set(&["b"])
        },
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_from_a_working_server_is_honoured() {
    let dns = TestDns::start().await;
    let a = Backend::start("a").await;
    publish(&dns, &[&a]);
    let gw = start(&srv_config(&dns)).await;
    let gw_ref = &gw;
    eventually("a to answer", Duration::from_secs(3), || async move {
        answering(gw_ref, 3).await == set(&["a"])
    })
    .await;

    dns.set_nxdomain(SRV);
    eventually("no targets left", Duration::from_secs(4), || async move {
        upstream_json(gw_ref).await["targets"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    assert_eq!(
        stale_gauge(&gw, "be").await.as_deref(),
        Some("0"),
        "not stale: it answered"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_records_with_the_configured_port() {
    let dns = TestDns::start().await;
    let a = Backend::start("a").await;
    dns.set_a("api.be.test", &LOCAL, 1);
    let gw = start(&format!(
        r#"
        upstreams:
          be:
            discovery:
              dns: {{ name: api.be.test, port: {}, refresh: 1s, server: "{}" }}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#,
        a.addr.port(),
        dns.addr()
    ))
    .await;
    let gw_ref = &gw;
    eventually("a to answer", Duration::from_secs(3), || async move {
        answering(gw_ref, 3).await == set(&["a"])
    })
    .await;
    let up = upstream_json(&gw).await;
    assert_eq!(up["targets"][0]["url"], a.url().as_str());
    assert!(dns.queries("api.be.test") >= 1);
    gw.stop().await;
}
