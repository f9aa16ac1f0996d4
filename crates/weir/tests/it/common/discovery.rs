//! What the discovery tests look at through a running gateway: which backends answer, the
//! targets and staleness `/upstreams` shows, and the `weir_discovery_stale` gauge.

use std::collections::HashSet;

use super::{Gateway, backend_of};

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
