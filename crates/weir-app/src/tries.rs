//! Sending a request to an upstream: choosing an available target, trying again where the
//! upstream's `retry` allows, and reporting every try's outcome to passive health and the
//! circuit breaker.
//!
//! A retry is decided right after a failed try, before anything of it reached the client:
//! only for a listed condition, with tries and time left, and with the budget's leave. A
//! retried status response is held until the next try is actually sent, so when no target
//! is left it is still the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use tokio::time::Instant;
use weir_domain::ErrorKind;
use weir_domain::breaker::{CircuitState, Pass};
use weir_domain::health::{self, Transition};
use weir_domain::retry::{Failure, RetryPolicy};
use weir_domain::upstream::{Changes, InFlight, Protocol, Target, TargetSet, Tried, Upstream};

use crate::body::{LimitedBody, ReqBody};
use crate::clock;
use crate::error::GatewayError;
use crate::forward::{Connector, ForwardError, Forwarder};
use crate::members::Members;
use crate::pipeline::Exchange;
use crate::request_id;

/// The request as it goes upstream, kept so that a retry or a fallback can send it again.
pub(crate) struct Outgoing<B> {
    /// Method, headers and version; the URI holds only the path and query, the target's
    /// authority is added per try.
    pub head: Option<http::request::Parts>,
    pub path_and_query: PathAndQuery,
    pub body: Replay<B>,
    /// A fallback upstream may still need the head after the last try.
    pub keep_head: bool,
    /// The route's body limit, for the 413 when a streamed body passes it.
    pub max_body: u64,
}

/// The request body, as far as it can be sent again.
pub(crate) enum Replay<B> {
    Empty,
    /// Small enough to buffer: every try sends these bytes.
    Buffered(Bytes),
    /// The client's stream, sent by the first try only (`None` after).
    Stream(Option<LimitedBody<B>>),
}

impl<B> Replay<B> {
    fn take(&mut self) -> Option<ReqBody<B>> {
        match self {
            Self::Empty => Some(ReqBody::Empty),
            Self::Buffered(b) => Some(ReqBody::Full(Some(b.clone()))),
            Self::Stream(s) => s.take().map(ReqBody::Stream),
        }
    }
}

impl<B> Outgoing<B> {
    /// The request of one try to the target at `authority`. The last try takes the head
    /// unless it must be kept; others copy it (without extensions, which only the edge
    /// reads).
    fn request(
        &mut self,
        authority: &Authority,
        protocol: Protocol,
        body: ReqBody<B>,
        last: bool,
    ) -> Result<Request<ReqBody<B>>, GatewayError> {
        let spent = || GatewayError::new(ErrorKind::BadGateway, "request spent");
        let mut req = if last && !self.keep_head {
            Request::from_parts(self.head.take().ok_or_else(spent)?, body)
        } else {
            let head = self.head.as_ref().ok_or_else(spent)?;
            let mut req = Request::new(body);
            *req.method_mut() = head.method.clone();
            *req.headers_mut() = head.headers.clone();
            req
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(self.path_and_query.clone());
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| {
            GatewayError::new(ErrorKind::BadRequest, "cannot build the upstream URI")
        })?;
        // The version spoken upstream is the upstream's, whatever the client spoke.
        *req.version_mut() = match protocol {
            Protocol::Http1 => Version::HTTP_11,
            Protocol::Http2 | Protocol::Grpc => Version::HTTP_2,
        };
        Ok(req)
    }
}

/// An upstream, its targets as the request found them, and its forwarder.
pub(crate) struct Dest<'a, F: Connector> {
    pub id: usize,
    pub upstream: &'a Upstream,
    pub forwarder: &'a F,
    pub members: Arc<Members<F::Conn>>,
}

/// Sends `out` to the upstream, retrying under `retry` (`None`: one try), all within
/// `timeout` (until the response head). Fills in the exchange's upstream, target and retry
/// facts.
pub(crate) async fn send<F, B>(
    to: &Dest<'_, F>,
    out: &mut Outgoing<B>,
    hash: Option<u64>,
    timeout: Duration,
    retry: Option<&RetryPolicy>,
    ex: &mut Exchange,
) -> Result<(Response<F::ResBody>, InFlight), GatewayError>
where
    F: Forwarder<ReqBody<B>>,
{
    let upstream = to.upstream;
    let members = &*to.members;
    let set = &members.set;
    let deadline = Instant::now() + timeout;
    let mut try_timeout = timeout;
    let attempts = retry.map_or(1, |p| p.attempts.max(1));
    if retry.is_some() {
        upstream.budget.record_request(clock::now_ms());
    }
    let mut tried = Tried::default();
    let mut held: Option<(Response<F::ResBody>, InFlight)> = None;
    let mut last_failure = None;
    for attempt in 1..=attempts {
        let Some((index, pass)) = choose(upstream, set, hash, tried) else {
            break;
        };
        let mut guard = PassGuard {
            upstream,
            set,
            index,
            pass: Some(pass),
        };
        let Some(body) = out.body.take() else {
            break;
        };
        let req = out.request(
            &members.authorities[index],
            upstream.protocol,
            body,
            attempt == attempts,
        )?;
        if attempt > 1 {
            upstream.budget.count_retry();
            ex.retries += 1;
        }
        // The held response of the previous try is dropped only now that this one goes.
        drop(held.take());
        tried.add(index);
        let target = &set.targets[index];
        ex.upstream = Some(to.id);
        ex.target = Some(Arc::clone(target));
        ex.target_index = Some(index);
        let in_flight = target.start_request();
        let left = if attempt == 1 {
            timeout
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        try_timeout = retry
            .and_then(|p| p.per_try_timeout)
            .map_or(left, |t| t.min(left));
        let (failure, response) = match to
            .forwarder
            .forward(&members.conns[index], req, try_timeout)
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let failure = (status >= 500).then_some(Failure::Status(status));
                (failure, Some(resp))
            }
            Err(ForwardError::BodyTooLarge) => {
                // The client's fault, not the target's: no outcome to record.
                return Err(crate::pipeline::payload_too_large(out.max_body));
            }
            Err(ForwardError::ClientSlow) => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    "the request body did not arrive within the route's timeout",
                ));
            }
            Err(ForwardError::ClientBody) => {
                return Err(GatewayError::new(
                    ErrorKind::BadRequest,
                    "the request body is malformed or was cut off",
                ));
            }
            Err(ForwardError::Connect(e)) => {
                report_connect_failure(upstream, target, &*e);
                (Some(Failure::Connect), None)
            }
            Err(ForwardError::Other(e)) => {
                tracing::warn!(upstream = %upstream.name, target_url = %target.url, error = %e, "upstream exchange failed");
                (Some(Failure::Reset), None)
            }
            Err(ForwardError::Timeout) => (Some(Failure::Timeout), None),
        };
        log_changes(upstream, target, guard.record(failure.is_none()));
        let Some(failure) = failure else {
            if let Some(resp) = response {
                return Ok((resp, in_flight));
            }
            break;
        };
        last_failure = Some(failure);
        let retry_in = retry.and_then(|p| {
            (attempt < attempts && p.on.matches(failure)).then(|| {
                p.backoff
                    .delay(attempt, request_id::next_random())
                    .min(deadline.saturating_duration_since(Instant::now()))
            })
        });
        let granted = match (retry, retry_in) {
            (Some(p), Some(delay)) if Instant::now() + delay < deadline => {
                let ok = upstream.budget.try_retry(clock::now_ms(), &p.budget);
                ex.retry_budget_exhausted |= !ok;
                ok.then_some(delay)
            }
            _ => None,
        };
        let Some(delay) = granted else {
            return match response {
                Some(resp) => Ok((resp, in_flight)),
                None => Err(failure_error(failure, try_timeout)),
            };
        };
        if let Some(resp) = response {
            held = Some((resp, in_flight));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    if let Some(held) = held {
        return Ok(held);
    }
    Err(match last_failure {
        Some(f) => failure_error(f, try_timeout),
        None => GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            format!("upstream \"{}\" has no available target", upstream.name),
        ),
    })
}

/// An available target and its circuit pass. A half-open circuit may have handed out its
/// last probe since the balancer looked, so a refused pass means trying another target.
fn choose(
    upstream: &Upstream,
    set: &TargetSet,
    hash: Option<u64>,
    tried: Tried,
) -> Option<(usize, Pass)> {
    let now = clock::now_ms();
    let mut skip = tried;
    for _ in 0..set.targets.len().min(8) {
        let index = upstream.pick(set, hash, request_id::next_random(), now, skip)?;
        if let Some(pass) = upstream.acquire(&set.targets[index], now) {
            return Some((index, pass));
        }
        skip.add(index);
    }
    None
}

/// Records a try's outcome; a try abandoned before it had one (the client left) gives its
/// circuit pass back instead.
struct PassGuard<'a> {
    upstream: &'a Upstream,
    set: &'a TargetSet,
    index: usize,
    pass: Option<Pass>,
}

impl PassGuard<'_> {
    fn record(&mut self, ok: bool) -> Changes {
        match self.pass.take() {
            Some(pass) => self
                .upstream
                .record(self.set, self.index, pass, ok, clock::now_ms()),
            None => Changes::default(),
        }
    }
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        if let Some(pass) = self.pass.take() {
            self.set.targets[self.index].breaker.cancel(pass);
        }
    }
}

fn log_changes(upstream: &Upstream, target: &Target, changes: Changes) {
    match changes.circuit {
        Some(CircuitState::Open) => {
            tracing::warn!(upstream = %upstream.name, target_url = %target.url, "circuit opened");
        }
        Some(CircuitState::Closed) => {
            tracing::info!(upstream = %upstream.name, target_url = %target.url, "circuit closed");
        }
        Some(CircuitState::HalfOpen) | None => {}
    }
    if let Some(d) = changes.ejected {
        tracing::warn!(upstream = %upstream.name, target_url = %target.url, eject_for_ms = d.as_millis() as u64, "target ejected after consecutive failures");
    }
}

/// Connection errors count against a target's health when active checks run, so a dead
/// target leaves rotation without waiting for the next probe. Without active checks nothing
/// would bring it back, so they are only logged (passive health has its own count).
fn report_connect_failure(
    upstream: &Upstream,
    target: &Target,
    error: &(dyn std::error::Error + Send + Sync),
) {
    tracing::warn!(upstream = %upstream.name, target_url = %target.url, error = %error, "connect to target failed");
    if let Some(policy) = &upstream.health_check
        && health::record(target, policy, false) == Some(Transition::BecameUnhealthy)
    {
        tracing::warn!(upstream = %upstream.name, target_url = %target.url, "target unhealthy after connection errors");
    }
}

/// The error for a request whose last try failed so; `timeout` was that try's time.
fn failure_error(failure: Failure, timeout: Duration) -> GatewayError {
    match failure {
        Failure::Connect => {
            GatewayError::new(ErrorKind::BadGateway, "could not connect to the upstream")
        }
        Failure::Reset | Failure::Status(_) => {
            GatewayError::new(ErrorKind::BadGateway, "the upstream failed to answer")
        }
        Failure::Timeout => timed_out(timeout),
    }
}

fn timed_out(timeout: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::GatewayTimeout,
        format!(
            "the upstream did not answer within {}ms",
            timeout.as_millis()
        ),
    )
}
