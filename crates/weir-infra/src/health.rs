//! Active health checks: one task per target probing `GET <path>` every `interval`.
//! A 2xx or 3xx answer within `timeout` is a success; anything else a failure. The tasks
//! stop when the [`Checks`] handle is dropped (a reload or shutdown).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use weir_domain::health::{self, Transition};
use weir_domain::upstream::{Target, Upstream};

use crate::client::UpstreamClient;

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
    /// Starts probes for every upstream with `health_check.active`.
    #[must_use]
    pub fn start(upstreams: &[Upstream]) -> Self {
        let mut tasks = Vec::new();
        for upstream in upstreams {
            let Some(policy) = upstream.health_check.clone() else {
                continue;
            };
            let authorities: Vec<&str> = upstream
                .targets
                .iter()
                .map(|t| t.addr.authority.as_str())
                .collect();
            let client = UpstreamClient::<Empty<Bytes>>::new(
                upstream.protocol,
                upstream.timeouts.connect.min(policy.timeout),
                &authorities,
                1,
            );
            let name: Arc<str> = Arc::from(upstream.name.as_str());
            let count = upstream.targets.len().max(1) as u32;
            for (i, target) in upstream.targets.iter().enumerate() {
                let name = Arc::clone(&name);
                let target = Arc::clone(target);
                let client = client.clone();
                let policy = policy.clone();
                tasks.push(tokio::spawn(async move {
                    // Spread the first probes over the interval so targets are not probed in lockstep.
                    tokio::time::sleep(policy.interval / count * i as u32).await;
                    let mut tick = tokio::time::interval(policy.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let ok = probe(&client, i, &target, &policy.path, policy.timeout).await;
                        match health::record(&target, &policy, ok) {
                            Some(Transition::BecameUnhealthy) => tracing::warn!(
                                upstream = %name, target_url = %target.url, "target failed health checks; out of rotation"
                            ),
                            Some(Transition::BecameHealthy) => tracing::info!(
                                upstream = %name, target_url = %target.url, "target passed health checks; back in rotation"
                            ),
                            None => {}
                        }
                    }
                }));
            }
        }
        Self { tasks }
    }
}

async fn probe(
    client: &UpstreamClient<Empty<Bytes>>,
    index: usize,
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
    match tokio::time::timeout(timeout, client.send(index, req)).await {
        Ok(Ok(resp)) => {
            let s = resp.status();
            // The body is dropped unread; the pool discards the connection if it was not empty.
            s.is_success() || s.is_redirection() || s == StatusCode::NOT_MODIFIED
        }
        _ => false,
    }
}
