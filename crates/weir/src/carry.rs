//! What a reloaded configuration takes over from the one it replaces: everything it did
//! not change. An upstream whose section (and the discovery registries it may use) reads
//! the same keeps its client and its target set, so its targets keep their health, circuit
//! and ejection state, their connections and their counters; metrics are kept by name, so
//! counters never go back; rate-limit tables are kept per unchanged policy (by the app).

use std::sync::Arc;

use serde_json::Value;
use weir_app::members::Members;
use weir_config::Loaded;
use weir_infra::metrics::{RouteMetrics, UpstreamMetrics};

use crate::forward::{Forward, TargetConn};
use crate::snapshot::Snapshot;

/// The old generation, and for each new upstream the old one it continues.
pub struct Carry<'a> {
    previous: Option<&'a Snapshot>,
    /// Per new upstream (same index): the index of the same, unchanged upstream before.
    same: Vec<Option<usize>>,
}

impl<'a> Carry<'a> {
    pub fn new(previous: Option<&'a Snapshot>, next: &Loaded) -> Self {
        let same = match previous {
            None => Vec::new(),
            Some(old) => next
                .upstreams
                .iter()
                .map(|u| {
                    let j = old.upstream_names.iter().position(|n| **n == *u.name)?;
                    let unchanged = section(&old.effective, "upstreams", &u.name)
                        == section(&next.effective, "upstreams", &u.name)
                        && old.gateway.upstreams[j].tls == u.tls
                        && registries(&old.effective) == registries(&next.effective);
                    unchanged.then_some(j)
                })
                .collect(),
        };
        Self { previous, same }
    }

    /// New upstream `i`'s client and current target set, when it did not change.
    pub fn upstream(&self, i: usize) -> Option<(Forward, Arc<Members<Arc<TargetConn>>>)> {
        let old = self.previous?;
        let j = (*self.same.get(i)?)?;
        let forward = old.gateway.forwarders[j].clone();
        Some((forward, old.gateway.members(j)))
    }

    pub fn upstream_metrics(&self, name: &str) -> Arc<UpstreamMetrics> {
        self.previous
            .and_then(|old| {
                let j = old.upstream_names.iter().position(|n| **n == *name)?;
                Some(Arc::clone(&old.upstream_metrics[j]))
            })
            .unwrap_or_default()
    }

    pub fn route_metrics(&self, name: &str) -> Arc<RouteMetrics> {
        self.previous
            .and_then(|old| {
                let j = old.route_names.iter().position(|n| **n == *name)?;
                Some(Arc::clone(&old.route_metrics[j]))
            })
            .unwrap_or_default()
    }

    pub fn unmatched_metrics(&self) -> Arc<RouteMetrics> {
        self.previous
            .map(|old| Arc::clone(&old.unmatched_metrics))
            .unwrap_or_default()
    }

    pub fn limit_tables(&self) -> Option<&'a weir_app::limits::Tables> {
        self.previous.map(|old| old.gateway.limit_tables())
    }
}

fn section<'v>(effective: &'v Value, key: &str, name: &str) -> Option<&'v Value> {
    effective.get(key)?.get(name)
}

/// The discovery registries an upstream's `discovery` may name.
fn registries(effective: &Value) -> (Option<&Value>, Option<&Value>) {
    (effective.get("etcd"), effective.get("consul"))
}
