//! etcd discovery (contract §3 `discovery.etcd`) against a real etcd: targets follow puts and
//! deletes at once, in-flight requests finish on a removed target, an etcd that goes away
//! keeps the last-known-good set (stale) until it is back, a compacted watch is recovered by
//! listing again, an empty prefix is no targets, and auth and mutual TLS work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weir_domain::discovery::{EtcdCluster, EtcdDiscovery};
use weir_infra::discovery::{Update, watch_etcd};

use crate::common::discovery::{
    answering, hold_at, removed_target_drains, set, stale_gauge, target_urls, upstream_json,
};
use crate::common::etcd::{Etcd, ROOT_PASSWORD, StallProxy};
use crate::common::{Backend, assert_problem, eventually, start};

const PREFIX: &str = "/weir/upstreams/users/";

/// One upstream `users` read from `PREFIX` of the cluster at `endpoint`; `extra` adds lines
/// to the `etcd` section (credentials, TLS files).
fn etcd_config(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
        etcd:
          endpoints: ["{endpoint}"]
          timeout: 2s
          {extra}
        upstreams:
          users:
            discovery:
              etcd: {{ prefix: {PREFIX} }}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: users
        "#
    )
}

fn key(b: &Backend) -> String {
    format!("{PREFIX}{}", b.id())
}

fn publish(etcd: &Etcd, b: &Backend) {
    etcd.put_target(&key(b), &b.url(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_puts_and_deletes_at_once() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    publish(&etcd, &a);
    publish(&etcd, &b);
    // Not a target: left out, and the rest still work.
    etcd.put(&format!("{PREFIX}broken"), "not json");
    let gw = start(&etcd_config(&etcd.endpoint(), "")).await;
    let gw_ref = &gw;
    eventually("a and b to answer", Duration::from_secs(5), || async move {
        answering(gw_ref, 10).await == set(&["a", "b"])
    })
    .await;
    let up = upstream_json(&gw).await;
    assert_eq!(up["discovery"]["source"], "etcd");
    assert_eq!(up["discovery"]["stale"], false);
    assert_eq!(up["targets"].as_array().unwrap().len(), 2);

    // Added: from etcd's acknowledgement of the put to the first request reaching c.
    publish(&etcd, &c);
    let acked = Instant::now();
    while c.hits() == 0 {
        assert!(
            acked.elapsed() < Duration::from_secs(3),
            "c never took traffic"
        );
        let _ = gw.get("/x").await;
    }
    let latency = acked.elapsed();
    eprintln!("etcd discovery: put acknowledged -> first request at the new target: {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "a put takes effect within 1 s: {latency:?}"
    );

    // Removed while a request is in flight on it: the request completes, and no new request
    // reaches the removed target.
    // Round robin over three targets: four requests put at least one on a, held there.
    let held = hold_at(&gw, &a).await;
    let a_ref = &a;
    etcd.delete(&key(&a));
    eventually(
        "a to leave the set",
        Duration::from_secs(1),
        || async move { !target_urls(gw_ref).await.contains(&a_ref.url()) },
    )
    .await;
    removed_target_drains(&gw, &a, held, &["b", "c"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_last_known_good_set_until_it_is_back() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    publish(&etcd, &a);
    publish(&etcd, &b);
    let gw = start(&etcd_config(&etcd.endpoint(), "")).await;
    let gw_ref = &gw;
    eventually("a and b to answer", Duration::from_secs(5), || async move {
        answering(gw_ref, 10).await == set(&["a", "b"])
    })
    .await;
    assert_eq!(stale_gauge(&gw, "users").await.as_deref(), Some("0"));

    etcd.stop();
    eventually(
        "the upstream to turn stale",
        Duration::from_secs(5),
        || async move { stale_gauge(gw_ref, "users").await.as_deref() == Some("1") },
    )
    .await;
    assert_eq!(upstream_json(&gw).await["discovery"]["stale"], true);
    assert_eq!(
        answering(&gw, 10).await,
        set(&["a", "b"]),
        "traffic continues on the last-known-good set"
    );

    // Back on the same ports with the same data: fresh again, and watched again.
    etcd.restart();
    eventually("fresh again", Duration::from_secs(10), || async move {
        stale_gauge(gw_ref, "users").await.as_deref() == Some("0")
    })
    .await;
    assert_eq!(upstream_json(&gw).await["discovery"]["stale"], false);
    publish(&etcd, &c);
    eventually(
        "c to take traffic after the restart",
        Duration::from_secs(2),
        || async move { answering(gw_ref, 6).await == set(&["a", "b", "c"]) },
    )
    .await;
    gw.stop().await;
}

/// `watch_etcd` run directly, its updates collected in order.
struct Watcher {
    task: tokio::task::JoinHandle<()>,
    updates: mpsc::UnboundedReceiver<Update>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    fn start(endpoint: String, timeout: Duration) -> Self {
        let (tx, updates) = mpsc::unbounded_channel();
        let spec = EtcdDiscovery {
            prefix: PREFIX.to_owned(),
            cluster: Arc::new(EtcdCluster {
                endpoints: vec![endpoint],
                credentials: None,
                ca_pem: None,
                identity: None,
                timeout,
            }),
        };
        let task = watch_etcd(Arc::from("users"), spec, move |u| {
            let _ = tx.send(u);
        });
        Self { task, updates }
    }

    /// The URLs of the next update, which must be a list: the source must not fail here.
    async fn next_urls(&mut self) -> Vec<String> {
        let update = tokio::time::timeout(Duration::from_secs(5), self.updates.recv())
            .await
            .expect("an update")
            .expect("the watcher runs");
        match update {
            Update::Endpoints(list) => list.into_iter().map(|e| e.url).collect(),
            Update::Failed(reason) => panic!("the source reported a failure: {reason}"),
        }
    }
}

/// The watcher itself, between a listing and its watch: the proxy holds the watch while a
/// put and a compaction happen, so the watch starts at a compacted revision. Recovery must be
/// a new listing, without a failure in between (compaction is not the source failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_at_a_compacted_revision_lists_again() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let proxy = StallProxy::start(etcd.addr()).await;
    etcd.put_target(&format!("{PREFIX}a"), "http://10.0.0.1:80", 1);
    proxy.arm();
    let mut watcher = Watcher::start(proxy.endpoint(), Duration::from_secs(5));
    assert_eq!(watcher.next_urls().await, ["http://10.0.0.1:80"]);

    let proxy_ref = &proxy;
    eventually(
        "the watch to be held",
        Duration::from_secs(5),
        || async move { proxy_ref.held() == 1 },
    )
    .await;
    let listed = etcd.revision();
    etcd.put_target(&format!("{PREFIX}b"), "http://10.0.0.2:80", 1);
    let compacted = etcd.compact();
    assert!(
        compacted > listed + 1,
        "the watch's start revision ({}) is compacted ({compacted})",
        listed + 1
    );
    proxy.release();
    assert_eq!(
        watcher.next_urls().await,
        ["http://10.0.0.1:80", "http://10.0.0.2:80"],
        "listed again after the compaction, without a failure"
    );

    // And watched again from the new listing.
    etcd.delete(&format!("{PREFIX}a"));
    assert_eq!(watcher.next_urls().await, ["http://10.0.0.2:80"]);
}

/// `timeout` bounds starting the watch, not how long it lasts: a quiet watch far past it is
/// still the same watch, and a change then arrives without a failure before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_outlives_the_timeout() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let mut watcher = Watcher::start(etcd.endpoint(), Duration::from_millis(200));
    assert!(
        watcher.next_urls().await.is_empty(),
        "an empty prefix is an answer"
    );
    // Nothing to wait for but time itself: five timeouts of silence.
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.put_target(&format!("{PREFIX}a"), "http://10.0.0.1:80", 1);
    assert_eq!(watcher.next_urls().await, ["http://10.0.0.1:80"]);
}

/// The same through the gateway: the target added under the compaction takes traffic and the
/// upstream is fresh. (That no failure came in between is the direct test's to show: the
/// gateway would recover from one too, only later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_under_the_watch_is_recovered_through_the_gateway() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = StallProxy::start(etcd.addr()).await;
    publish(&etcd, &a);
    proxy.arm();
    let gw = start(&etcd_config(&proxy.endpoint(), "")).await;
    let (gw_ref, proxy_ref) = (&gw, &proxy);
    eventually("a to answer", Duration::from_secs(5), || async move {
        answering(gw_ref, 3).await == set(&["a"])
    })
    .await;
    eventually(
        "the watch to be held",
        Duration::from_secs(5),
        || async move { proxy_ref.held() == 1 },
    )
    .await;
    publish(&etcd, &b);
    etcd.compact();
    proxy.release();
    eventually("b to take traffic", Duration::from_secs(3), || async move {
        answering(gw_ref, 6).await == set(&["a", "b"])
    })
    .await;
    assert_eq!(stale_gauge(&gw, "users").await.as_deref(), Some("0"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_is_no_targets() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    // Keys next to the prefix are not under it.
    etcd.put_target("/weir/upstreams/usersx/a", "http://127.0.0.1:1", 1);
    let gw = start(&etcd_config(&etcd.endpoint(), "")).await;
    let gw_ref = &gw;
    eventually("a first answer", Duration::from_secs(5), || async move {
        upstream_json(gw_ref).await["discovery"]["updated_ms_ago"].is_u64()
    })
    .await;
    assert!(target_urls(&gw).await.is_empty());
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    assert_eq!(
        stale_gauge(&gw, "users").await.as_deref(),
        Some("0"),
        "not stale: it answered"
    );

    // Emptied again after a target came and went.
    let a = Backend::start("a").await;
    publish(&etcd, &a);
    eventually("a to answer", Duration::from_secs(2), || async move {
        answering(gw_ref, 2).await == set(&["a"])
    })
    .await;
    etcd.delete(&key(&a));
    eventually("no targets left", Duration::from_secs(2), || async move {
        target_urls(gw_ref).await.is_empty()
    })
    .await;
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_the_right_password_discovers_and_a_wrong_one_fails() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let a = Backend::start("a").await;
    etcd.enable_auth();
    publish(&etcd, &a);

    let good = start(&etcd_config(
        &etcd.endpoint(),
        &format!("username: root\n          password: {ROOT_PASSWORD}"),
    ))
    .await;
    let good_ref = &good;
    eventually("a to answer", Duration::from_secs(5), || async move {
        answering(good_ref, 2).await == set(&["a"])
    })
    .await;
    assert_eq!(stale_gauge(&good, "users").await.as_deref(), Some("0"));

    let bad = start(&etcd_config(
        &etcd.endpoint(),
        "username: root\n          password: wrong",
    ))
    .await;
    let bad_ref = &bad;
    eventually(
        "a wrong password to fail",
        Duration::from_secs(5),
        || async move { stale_gauge(bad_ref, "users").await.as_deref() == Some("1") },
    )
    .await;
    assert_eq!(upstream_json(&bad).await["discovery"]["stale"], true);
    assert!(target_urls(&bad).await.is_empty());
    assert_problem(bad.get("/x").await, 503, "upstream_unavailable").await;
    good.stop().await;
    bad.stop().await;
}

fn tls_lines(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut out = format!("ca_file: {}", ca.display());
    if let Some((cert, key)) = client {
        out.push_str(&format!(
            "\n          cert_file: {}\n          key_file: {}",
            cert.display(),
            key.display()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_ca_file_and_a_client_certificate() {
    let Some(etcd) = Etcd::start_tls_or_skip() else {
        return;
    };
    let a = Backend::start("a").await;
    publish(&etcd, &a);
    let (cert, key) = (etcd.client_cert_file(), etcd.client_key_file());
    let gw = start(&etcd_config(
        &etcd.endpoint(),
        &tls_lines(&etcd.ca_file(), Some((&cert, &key))),
    ))
    .await;
    let gw_ref = &gw;
    eventually("a to answer", Duration::from_secs(5), || async move {
        answering(gw_ref, 2).await == set(&["a"])
    })
    .await;

    // etcd requires a client certificate: without one the source fails.
    let without = start(&etcd_config(
        &etcd.endpoint(),
        &tls_lines(&etcd.ca_file(), None),
    ))
    .await;
    let without_ref = &without;
    eventually(
        "no client certificate to fail",
        Duration::from_secs(5),
        || async move { stale_gauge(without_ref, "users").await.as_deref() == Some("1") },
    )
    .await;
    assert!(target_urls(&without).await.is_empty());
    gw.stop().await;
    without.stop().await;
}
