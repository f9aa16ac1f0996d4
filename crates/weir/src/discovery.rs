//! Discovery watchers: one task per upstream with a dynamic source, applying each answer to
//! the gateway's target set. A failing source keeps the last-known-good targets and marks
//! the upstream stale; both changes are logged once per change of state, not per retry.

use std::sync::{Arc, Weak};

use weir_app::clock;
use weir_domain::discovery::Discovery;
use weir_infra::discovery::{Update, watch_consul, watch_dns, watch_etcd};

use crate::cache::Caches;
use crate::forward::{Auth, Forward, Shared};

type Gw = weir_app::Gateway<Forward, Auth, Shared, Arc<Caches>>;

/// Running watchers; dropping this stops them (a reload or shutdown).
#[derive(Debug, Default)]
pub struct Watchers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watchers {
    /// Starts a watcher for every upstream with `discovery`. They hold the gateway weakly,
    /// so they never keep an old configuration alive.
    #[must_use]
    pub fn start(gateway: &Arc<Gw>) -> Self {
        let mut tasks = Vec::new();
        for (id, upstream) in gateway.upstreams.iter().enumerate() {
            let weak = Arc::downgrade(gateway);
            let sink = move |update| apply(&weak, id, update);
            let name: Arc<str> = Arc::from(upstream.name.as_str());
            tasks.push(match &upstream.discovery {
                Discovery::Static => continue,
                Discovery::Dns(spec) => watch_dns(name, spec.clone(), sink),
                Discovery::Etcd(spec) => watch_etcd(name, spec.clone(), sink),
                Discovery::Consul(spec) => watch_consul(name, spec.clone(), sink),
            });
        }
        Self { tasks }
    }
}

fn apply(gateway: &Weak<Gw>, id: usize, update: Update) {
    let Some(gw) = gateway.upgrade() else { return };
    let upstream = &gw.upstreams[id];
    let state = &upstream.discovery_state;
    match update {
        Update::Endpoints(endpoints) => {
            let changed = gw.set_targets(id, &endpoints);
            if state.fresh(clock::now_ms()) {
                tracing::info!(upstream = %upstream.name, source = upstream.discovery.kind(), targets = endpoints.len(), "discovery source answers again");
            }
            if changed {
                tracing::info!(upstream = %upstream.name, source = upstream.discovery.kind(), targets = endpoints.len(), "discovered targets changed");
            }
        }
        Update::Failed(reason) => {
            if state.failed() {
                tracing::warn!(upstream = %upstream.name, source = upstream.discovery.kind(), reason = %reason, "discovery source failed; keeping the last-known-good targets");
            }
        }
    }
}
