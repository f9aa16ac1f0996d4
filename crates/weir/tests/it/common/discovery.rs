//! What the discovery tests look at through a running gateway: which backends answer, the
//! targets and staleness `/upstreams` shows, and the `weir_discovery_stale` gauge.

use std::collections::HashSet;
use std::time::Duration;

use super::{Backend, Gateway, backend_of, client, eventually};

/// The ids of the backends that answered `n` requests to `/x` (errors are left out).
pub async fn answering(gw: &Gateway, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..n {
        let resp = gw.get("/x").await;
        if resp.status() == 200 {
            ids.insert(backend_of(resp).await);
        }
    }
    ids
}

pub fn set(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// The first upstream of `/upstreams`.
pub async fn upstream_json(gw: &Gateway) -> serde_json::Value {
    gw.admin_json("/upstreams").await["upstreams"][0].clone()
}

/// The target URLs of the first upstream, as `/upstreams` lists them.
pub async fn target_urls(gw: &Gateway) -> Vec<String> {
    upstream_json(gw).await["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap().to_owned())
        .collect()
}

/// The value of `weir_discovery_stale{upstream}`, as `/metrics` writes it.
pub async fn stale_gauge(gw: &Gateway, upstream: &str) -> Option<String> {
    let prefix = format!("weir_discovery_stale{{upstream=\"{upstream}\"}} ");
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
}

/// A request held by the backend it reached, answering its status once released.
pub type Held = tokio::task::JoinHandle<reqwest::Result<u16>>;

/// Holds `at` (it keeps the requests it gets), sends four requests (round robin over three
/// targets puts at least one on `at`) and waits until `at` holds one.
pub async fn hold_at(gw: &Gateway, at: &Backend) -> Vec<Held> {
    at.hold();
    let held: Vec<Held> = (0..4)
        .map(|_| {
            let req = client().get(gw.url("/held")).header("x-hold", "1");
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually(
        "a request held at a",
        Duration::from_secs(3),
        || async move { at.held() > 0 },
    )
    .await;
    held
}

/// Once `removed` has left the set: new requests reach only `others` and never `removed`,
/// and the requests held on it complete with 200 when it lets them go.
pub async fn removed_target_drains(
    gw: &Gateway,
    removed: &Backend,
    held: Vec<Held>,
    others: &[&str],
) {
    let hits = removed.hits();
    assert_eq!(answering(gw, 12).await, set(others));
    assert_eq!(
        removed.hits(),
        hits,
        "no new request reaches a removed target"
    );
    removed.release();
    for h in held {
        let status = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("the held request finishes")
            .unwrap()
            .expect("answered");
        assert_eq!(
            status, 200,
            "requests in flight on a removed target complete"
        );
    }
}
