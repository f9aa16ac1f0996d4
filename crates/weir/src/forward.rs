//! Glue between the pipeline's ports (`Forwarder`, `Authenticator`) and infra's pooled
//! client and identity providers. It lives here, in the composition root, because only this
//! crate may name both layers.

use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;
use weir_app::body::{LimitedBody, is_body_too_large};
use weir_app::limits::{SharedAnswer, SharedCheck, SharedLimiter};
use weir_app::{Authenticator, ForwardError, Forwarder};
use weir_domain::auth::{ProviderId, Verdict};
use weir_infra::auth::Authenticators;
use weir_infra::client::{PooledBody, UpstreamClient};
use weir_infra::ratelimit::{RedisAnswer, RedisCheck, RedisLimiter};

use crate::body::CountingBody;

/// The request body as it travels upstream.
pub type UpstreamBody = LimitedBody<CountingBody<Incoming>>;

/// One upstream's client.
pub struct Forward(pub UpstreamClient<UpstreamBody>);

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Forwarder<UpstreamBody> for Forward {
    type ResBody = PooledBody<UpstreamBody>;

    async fn forward(
        &self,
        target: usize,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Self::ResBody>, ForwardError> {
        self.0.send(target, req).await.map_err(|e| {
            if e.is_connect() {
                ForwardError::Connect(Box::new(e))
            } else if is_body_too_large(&e) {
                ForwardError::BodyTooLarge
            } else {
                ForwardError::Other(Box::new(e))
            }
        })
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
