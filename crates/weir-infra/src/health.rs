//! Active health checks: one task per upstream probing `GET <path>` on each of its current
//! targets every `interval`.
//! A 2xx or 3xx answer within `timeout` is a success; anything else a failure. The tasks
//! stop when the [`Checks`] handle is dropped (a reload or shutdown).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use weir_domain::health::{self, Transition};
use weir_domain::upstream::{Target, Upstream};

use crate::client::{TargetPool, UpstreamClient};

/// Running probes; dropping this stops them.
#[derive(Debug, Default)]
pub struct Checks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Checks {
    /// Starts probes for every upstream with `health_check.active`, with `clients[u]` (the
    /// upstream's own client, so TLS settings are shared). `current(u)` gives
    /// upstream `u`'s targets at the moment (they change with discovery); it is asked
    /// before each round, so new targets are probed and removed ones are not.
    #[must_use]
    pub fn start<C>(upstreams: &[Upstream], clients: &[&UpstreamClient], current: C) -> Self
    where
        C: Fn(usize) -> Vec<Arc<Target>> + Send + Sync + Clone + 'static,
    {
        let mut tasks = Vec::new();
        for (u, upstream) in upstreams.iter().enumerate() {
            let Some(policy) = upstream.health_check.clone() else {
                continue;
            };
            // The forwarder's client (its TLS config built once), with the probe's timeout.
            let Some(client) = clients.get(u) else {
                continue;
            };
            let client = client.with_connect_timeout(upstream.timeouts.connect.min(policy.timeout));
            let name: Arc<str> = Arc::from(upstream.name.as_str());
            let current = current.clone();
            tasks.push(tokio::spawn(async move {
                // Pools by target URL, kept while the target is.
                let mut pools: HashMap<String, Arc<TargetPool<Empty<Bytes>>>> = HashMap::new();
                let mut tick = tokio::time::interval(policy.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let targets = current(u);
                    pools.retain(|url, _| targets.iter().any(|t| t.url == *url));
                    let probes = targets.iter().map(|t| {
                        let pool = Arc::clone(
                            pools
                                .entry(t.url.clone())
                                .or_insert_with(|| client.pool(&t.addr.authority)),
                        );
                        let (client, policy) = (&client, &policy);
                        async move {
                            let ok = probe(client, &pool, t, &policy.path, policy.timeout).await;
                            (t, ok)
                        }
                    });
                    for (target, ok) in futures_util::future::join_all(probes).await {
                        match health::record(target, &policy, ok) {
                            Some(Transition::BecameUnhealthy) => tracing::warn!(
                                upstream = %name, target_url = %target.url, "target failed health checks; out of rotation"
                            ),
                            Some(Transition::BecameHealthy) => tracing::info!(
                                upstream = %name, target_url = %target.url, "target passed health checks; back in rotation"
                            ),
                            None => {}
                        }
                    }
                }
            }));
        }
        Self { tasks }
    }
}

async fn probe(
    client: &UpstreamClient,
    pool: &Arc<TargetPool<Empty<Bytes>>>,
    target: &Target,
    path: &str,
    timeout: std::time::Duration,
) -> bool {
    let Ok(req) = Request::get(path)
        .header(http::header::HOST, target.addr.authority.as_str())
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(Empty::new())
    else {
        return false;
    };
    match tokio::time::timeout(timeout, client.send(pool, req)).await {
        Ok(Ok(resp)) => {
            let s = resp.status();
            // The body is dropped unread; the pool discards the connection if it was not empty.
            s.is_success() || s.is_redirection() || s == StatusCode::NOT_MODIFIED
        }
        _ => false,
    }
}
