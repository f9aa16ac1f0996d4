//! Glue between the pipeline's ports (`Forwarder`, `Authenticator`) and infra's pooled
//! client and identity providers. It lives here, in the composition root, because only this
//! crate may name both layers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use weir_app::body::{ReqBody, Tripped, is_body_too_large, is_client_body_error};
use weir_app::limits::{SharedAnswer, SharedCheck, SharedLimiter};
use weir_app::{Authenticator, Connector, ForwardError, Forwarder};
use weir_domain::auth::{ProviderId, Verdict};
use weir_domain::upstream::Target;
use weir_infra::auth::Authenticators;
use weir_infra::client::{PooledBody, TargetPool, UpstreamClient};
use weir_infra::metrics::{FailureReason, TargetMetrics, UpstreamMetrics};
use weir_infra::ratelimit::{RedisAnswer, RedisCheck, RedisLimiter};

use crate::body::CountingBody;

/// The request body as it travels upstream.
pub type UpstreamBody = ReqBody<CountingBody<Incoming>>;

/// One upstream's client, and the metrics every try counts in.
#[derive(Debug, Clone)]
pub struct Forward {
    pub client: UpstreamClient,
    pub metrics: Arc<UpstreamMetrics>,
}

/// What weir keeps per target: its connections and its counters.
#[derive(Debug)]
pub struct TargetConn {
    pub pool: Arc<TargetPool<UpstreamBody>>,
    pub metrics: TargetMetrics,
}

impl Connector for Forward {
    type Conn = Arc<TargetConn>;

    fn conn(&self, target: &Target) -> Arc<TargetConn> {
        Arc::new(TargetConn {
            pool: self.client.pool(&target.addr.authority),
            metrics: TargetMetrics::default(),
        })
    }
}

impl Forwarder<UpstreamBody> for Forward {
    type ResBody = PooledBody<UpstreamBody>;

    async fn forward(
        &self,
        conn: &Arc<TargetConn>,
        req: Request<UpstreamBody>,
        timeout: Duration,
    ) -> Result<Response<Self::ResBody>, ForwardError> {
        let start = Instant::now();
        let tripped = req.body().tripped();
        let sent = tokio::time::timeout(timeout, self.client.send(&conn.pool, req)).await;
        let result = match sent {
            // Still waiting for the client's body: the client is slow, not the target.
            Err(_) if tripped.as_ref().is_some_and(Tripped::unfinished) => {
                return Err(ForwardError::ClientSlow);
            }
            Err(_) => Err(ForwardError::Timeout),
            Ok(Ok(resp)) => {
                self.metrics.duration.observe(start.elapsed());
                conn.metrics
                    .responses
                    .increment(u32::from(resp.status().as_u16()));
                return Ok(resp);
            }
            Ok(Err(e)) if e.is_connect() => Err(ForwardError::Connect(Box::new(e))),
            // The client's body passed the limit: not the target's failure.
            Ok(Err(e))
                if is_body_too_large(&e) || tripped.as_ref().is_some_and(Tripped::too_large) =>
            {
                return Err(ForwardError::BodyTooLarge);
            }
            Ok(Err(e))
                if is_client_body_error(&e)
                    || tripped.as_ref().is_some_and(Tripped::client_failed) =>
            {
                return Err(ForwardError::ClientBody);
            }
            Ok(Err(e)) => Err(ForwardError::Other(Box::new(e))),
        };
        let reason = match &result {
            Err(ForwardError::Connect(_)) => FailureReason::Connect,
            Err(ForwardError::Timeout) => FailureReason::Timeout,
            _ => FailureReason::Reset,
        };
        conn.metrics.failures[reason as usize].fetch_add(1, Ordering::Relaxed);
        result
    }
}

/// The identity providers, behind the pipeline's `Authenticator` port.
#[derive(Debug)]
pub struct Auth(pub Authenticators);

impl Authenticator for Auth {
    fn verify<'a>(
        &'a self,
        provider: ProviderId,
        credential: &'a str,
    ) -> impl Future<Output = Verdict> + Send + 'a {
        self.0.verify(provider, credential)
    }
}

/// The store of `store: redis` rate limits, when the config has `redis`, behind the
/// pipeline's `SharedLimiter` port.
#[derive(Debug)]
pub struct Shared(pub Option<RedisLimiter>);

impl SharedLimiter for Shared {
    async fn decide(&self, checks: &[SharedCheck]) -> Result<SharedAnswer, ()> {
        // Config refuses `store: redis` without `redis`, so `None` cannot decide anything.
        let redis = self.0.as_ref().ok_or(())?;
        let checks: Vec<RedisCheck<'_>> = checks
            .iter()
            .map(|c| RedisCheck {
                key: &c.key,
                interval_ns: c.rate.interval,
                tolerance_ns: c.rate.tolerance,
            })
            .collect();
        match redis.decide(&checks).await {
            Ok(RedisAnswer::Admitted(answers)) => Ok(SharedAnswer::Admitted(answers)),
            Ok(RedisAnswer::Refused {
                index,
                retry_after_ns,
                reset_after_ns,
            }) => Ok(SharedAnswer::Refused {
                index,
                retry_after_ns,
                reset_after_ns,
            }),
            // The limiter logs once per state change; the metric counts each request.
            Err(_) => Err(()),
        }
    }
}
