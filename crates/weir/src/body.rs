//! Bodies at the edge: the request body counted on its way in, and the response body that
//! records metrics and the access-log line when it has been sent (or abandoned).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use weir_app::pipeline::{Exchange, FallbackKind};
use weir_domain::upstream::InFlight;
use weir_infra::access_log::Record;
use weir_infra::client::PooledBody;

use crate::forward::UpstreamBody;

use crate::snapshot::Snapshot;

/// Counts request body bytes for the access log (only when the log is on).
#[derive(Debug)]
pub struct CountingBody<B> {
    inner: B,
    counter: Option<Arc<AtomicU64>>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, counter }
    }
}

impl<B: HttpBody + Unpin> HttpBody for CountingBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(c)) = (&polled, &self.counter)
            && let Some(d) = frame.data_ref()
        {
            c.fetch_add(d.remaining() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

enum Inner {
    Upstream(PooledBody<UpstreamBody>),
    Full(Option<Bytes>),
    /// Bytes already read, then the rest of the body they came from.
    Prefixed(Option<Bytes>, Box<Body>),
    /// A body weir converts as it streams (gRPC transcoding, gRPC-Web).
    Converted(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

/// What to record when the response is done.
pub struct Finish {
    pub snapshot: Arc<Snapshot>,
    pub start: Instant,
    pub method_index: u8,
    pub status: u16,
    pub exchange: Exchange,
    pub in_flight: Option<InFlight>,
    /// Present when the access log is on.
    pub log: Option<LogParts>,
    /// Present when tracing is on.
    pub trace: Option<crate::trace::RequestTrace>,
}

/// Access-log fields captured from the request head.
pub struct LogParts {
    pub method: http::Method,
    pub path: String,
    pub user_agent: Option<http::HeaderValue>,
    pub bytes_in: Arc<AtomicU64>,
}

/// The response body weir sends: an upstream's stream or bytes weir made itself.
pub struct Body {
    inner: Inner,
    bytes_out: u64,
    finish: Option<Box<Finish>>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl Body {
    #[must_use]
    pub fn upstream(b: PooledBody<UpstreamBody>) -> Self {
        Self {
            inner: Inner::Upstream(b),
            bytes_out: 0,
            finish: None,
        }
    }

    #[must_use]
    pub fn full(b: Bytes) -> Self {
        Self {
            inner: Inner::Full(if b.is_empty() { None } else { Some(b) }),
            bytes_out: 0,
            finish: None,
        }
    }

    #[must_use]
    pub fn empty() -> Self {
        Self {
            inner: Inner::Full(None),
            bytes_out: 0,
            finish: None,
        }
    }

    /// `prefix`, then the rest of `rest`.
    #[must_use]
    pub fn prefixed(prefix: Bytes, rest: Self) -> Self {
        Self {
            inner: Inner::Prefixed(Some(prefix), Box::new(rest)),
            bytes_out: 0,
            finish: None,
        }
    }

    #[must_use]
    pub fn converted<B>(b: B) -> Self
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        Self {
            inner: Inner::Converted(http_body_util::BodyExt::boxed_unsync(b)),
            bytes_out: 0,
            finish: None,
        }
    }

    pub fn set_finish(&mut self, finish: Box<Finish>) {
        self.finish = Some(finish);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Inner::Prefixed(prefix, rest) => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Inner::Converted(b) => Pin::new(b).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            let n = d.len() as u64;
            self.bytes_out += n;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
            Inner::Prefixed(prefix, rest) => prefix.is_none() && rest.is_end_stream(),
            Inner::Converted(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Prefixed(..) => SizeHint::default(),
            Inner::Converted(b) => b.size_hint(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            f.record(self.bytes_out);
        }
    }
}

impl Finish {
    /// Metrics and the access-log line, once per request, when the body is done.
    fn record(self, bytes_out: u64) {
        let elapsed = self.start.elapsed();
        let snap = &self.snapshot;
        let route_metrics = self
            .exchange
            .route
            .map_or(&snap.unmatched_metrics, |i| &snap.route_metrics[i]);
        route_metrics
            .requests
            .increment(weir_infra::metrics::method_status_key(
                self.method_index,
                self.status,
            ));
        route_metrics.duration.observe(elapsed);
        if self.exchange.rate_limited {
            route_metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        if self.exchange.rate_store_failed {
            route_metrics
                .rate_store_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.exchange.rate_overflow {
            route_metrics.rate_overflow.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(result) = self.exchange.cache {
            route_metrics.cache[result as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(kind) = self.exchange.fallback {
            route_metrics.fallbacks[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(f) = self.exchange.auth_failure {
            route_metrics.auth_failures[f.index()].fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(t), Some(tracer)) = (&self.trace, &snap.tracer) {
            tracer.finish(
                t,
                Instant::now(),
                &crate::trace::Finished {
                    ex: &self.exchange,
                    status: self.status,
                    route: self.exchange.route.map(|i| &*snap.route_names[i]),
                    upstream: self.exchange.upstream.map(|i| &*snap.upstream_names[i]),
                },
            );
        }
        if let (Some(log), Some(sink)) = (self.log, &snap.access_log) {
            let route = self
                .exchange
                .route
                .map(|i| Arc::clone(&snap.route_names[i]));
            let upstream = self
                .exchange
                .upstream
                .map(|i| Arc::clone(&snap.upstream_names[i]));
            let target = self
                .exchange
                .target
                .as_ref()
                .map(|t| Arc::<str>::from(t.url.as_str()));
            sink.log(Record {
                time: std::time::SystemTime::now() - elapsed,
                request_id: self.exchange.request_id,
                trace_id: self.trace.as_ref().map(|t| t.trace_id.to_hex()),
                client_ip: self.exchange.client_ip,
                method: log.method,
                path: log.path,
                route,
                upstream,
                target,
                consumer: self
                    .exchange
                    .principal
                    .as_ref()
                    .map(|p| Arc::clone(&p.name)),
                tls_client: self.exchange.client_subject.clone(),
                status: self.status,
                retries: self.exchange.retries,
                fallback: self.exchange.fallback.map(FallbackKind::label),
                cache: self
                    .exchange
                    .cache
                    .map(weir_app::cached::CacheResult::label),
                duration: elapsed,
                bytes_in: log.bytes_in.load(Ordering::Relaxed),
                bytes_out,
                user_agent: log.user_agent,
            });
        }
        drop(self.in_flight);
    }
}
