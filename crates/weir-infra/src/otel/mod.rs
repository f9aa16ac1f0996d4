//! Sending the gateway's spans to an OpenTelemetry collector (OTLP over gRPC).
//!
//! The request path builds a [`SpanRecord`] per span it finished and hands them to
//! [`SpanExporter::record`], which only tries to put them on a bounded queue: it never waits,
//! never locks against the network, and when the queue is full the spans are dropped and
//! counted. A tokio task owned by the exporter takes them off the queue in batches (by size
//! or every `flush_every`) and sends each batch with `opentelemetry-otlp`'s tonic client.
//!
//! Why our own batching and not the SDK's `BatchSpanProcessor`: that processor runs its own
//! thread and drives the exporter with `futures_executor::block_on`, while the tonic client
//! needs the tokio runtime it was built in (see opentelemetry-rust issue #2715, a deadlock
//! of exactly this pairing). Its runtime-based variant sits behind an `experimental_*`
//! feature. The SDK's tracer would also re-create spans we have already measured. So we
//! build `SpanData` ourselves and call the OTLP `SpanExporter::export` from one task; the
//! OTLP encoding, the gRPC client and its retries stay the library's.
//!
//! The collector being slow or down must never reach a caller: exports are bounded by
//! `export_timeout`, failures drop the batch and log one `warn!` per 30 s at most, and the
//! queue bounds memory whatever the collector does. Only plain `http://` collectors for now:
//! TLS would need one of opentelemetry-otlp's tonic TLS features, left out until needed.

mod convert;
mod worker;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weir_domain::trace::{SpanId, TraceId};

/// One finished span, as the request path measured it.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span this one is a child of; `None` for a trace's root span.
    pub parent: Option<SpanId>,
    /// Low-cardinality, e.g. "GET /users/{id}" built once per route.
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// `Some` marks the span's status as Error with this message; `None` leaves it unset.
    pub error: Option<Cow<'static, str>>,
    /// The parent came from an incoming `traceparent` (another process), not from this one.
    pub remote_parent: bool,
    /// The incoming `tracestate`, already checked with `weir_domain::trace::tracestate_ok`.
    pub trace_state: Option<String>,
}

/// What a span stands for, as OTLP's `SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The gateway handling a request it received.
    Server,
    /// The gateway calling an upstream.
    Client,
    /// Work inside the gateway (a policy, a lookup).
    Internal,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

/// Where and how the exporter sends spans.
#[derive(Clone, Debug)]
pub struct ExporterSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:port` (TLS is not supported yet).
    pub endpoint: String,
    /// The resource attribute `service.name` of every span.
    pub service_name: String,
    /// Spans waiting to be exported at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans in one Export request at most.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill before it is sent anyway.
    pub flush_every: Duration,
    /// One export (retries included) at most, and the whole of `shutdown`.
    pub export_timeout: Duration,
}

impl ExporterSettings {
    /// The OpenTelemetry SDK's batch defaults: 2048 queued, 512 a batch, 10 s per export;
    /// a flush every second rather than its five, so traces show up while one looks.
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        ExporterSettings {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            max_queue: 2048,
            max_batch: 512,
            flush_every: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// The handle the request path records spans through. Cloning is cheap (an `Arc`); the
/// export task ends after [`shutdown`](Self::shutdown), or once every clone is dropped.
#[derive(Clone)]
pub struct SpanExporter {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<SpanRecord>,
    counters: Arc<Counters>,
    /// `Some(deadline)` once shutdown was asked: the task exports what it has until then.
    stop: watch::Sender<Option<Instant>>,
    /// Turns true when the task has finished.
    done: watch::Receiver<bool>,
    export_timeout: Duration,
}

#[derive(Default)]
struct Counters {
    /// Spans that will never reach the collector: queue full, export failed or timed out,
    /// or recorded after shutdown.
    dropped: AtomicU64,
    /// Spans the collector accepted.
    exported: AtomicU64,
}

impl Counters {
    fn drop_spans(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

impl SpanExporter {
    /// Validates the settings, builds the OTLP client (connecting lazily: an unreachable
    /// collector is not an error here) and starts the export task on the current runtime.
    ///
    /// # Errors
    ///
    /// When called outside a tokio runtime, and for settings that cannot work: an endpoint
    /// that is not `http://host[:port]`, a zero queue, batch, interval or timeout, a queue
    /// beyond tokio's channel limit.
    pub fn start(settings: ExporterSettings) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the span exporter must be started inside a tokio runtime".to_owned())?;
        check_endpoint(&settings.endpoint)?;
        for (what, zero) in [
            ("max_queue", settings.max_queue == 0),
            ("max_batch", settings.max_batch == 0),
            ("flush_every", settings.flush_every.is_zero()),
            ("export_timeout", settings.export_timeout.is_zero()),
        ] {
            if zero {
                return Err(format!("span exporter: {what} must be above zero"));
            }
        }
        // tokio's channel panics above this; no real queue comes near it.
        if settings.max_queue > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(format!(
                "span exporter: max_queue must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }

        let mut otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|err| format!("span exporter for collector {}: {err}", settings.endpoint))?;
        // Not `Resource::builder()`: its detectors read OTEL_SERVICE_NAME and
        // OTEL_RESOURCE_ATTRIBUTES, and the config file is what names the service.
        otlp.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        );

        let (queue, rx) = mpsc::channel(settings.max_queue);
        let (stop, stop_rx) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let export_timeout = settings.export_timeout;
        let worker = worker::Worker::new(otlp, rx, stop_rx, Arc::clone(&counters), settings);
        runtime.spawn(async move {
            worker.run().await;
            // Nobody waiting is fine: shutdown may never be called.
            let _ = done_tx.send(true);
        });
        Ok(SpanExporter {
            inner: Arc::new(Inner {
                queue,
                counters,
                stop,
                done,
                export_timeout,
            }),
        })
    }

    /// Queues finished spans for export. Never blocks, never awaits: when the queue is full
    /// (or the exporter was shut down) the spans are dropped and counted in
    /// [`dropped`](Self::dropped).
    pub fn record(&self, spans: impl IntoIterator<Item = SpanRecord>) {
        let mut dropped = 0;
        for span in spans {
            if self.inner.queue.try_send(span).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.inner.counters.drop_spans(dropped);
        }
    }

    /// Spans that were or will be lost: queue full, export failed or timed out, recorded
    /// after shutdown.
    pub fn dropped(&self) -> u64 {
        self.inner.counters.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.inner.counters.exported.load(Ordering::Relaxed)
    }

    /// Exports what is queued and stops, returning within `export_timeout` whatever the
    /// collector does; what could not be sent by then is dropped. Spans recorded afterwards
    /// are dropped. Calling it again only waits for the first call's work.
    pub async fn shutdown(&self) {
        let deadline = Instant::now() + self.inner.export_timeout;
        self.inner.stop.send_if_modified(|stop| {
            if stop.is_some() {
                return false;
            }
            *stop = Some(deadline);
            true
        });
        let mut done = self.inner.done.clone();
        // An error means the task is gone (its runtime ended): nothing left to wait for.
        let _ = tokio::time::timeout_at(deadline, done.wait_for(|done| *done)).await;
    }
}

/// Checked here, before the OTLP builder, because its fallbacks would hide a mistake: an
/// empty endpoint makes it read OTEL_EXPORTER_OTLP_* or use localhost:4317, and its error for
/// https names cargo features rather than the setting.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|err| {
        format!(
            "span exporter endpoint {endpoint:?} is not a URL: {err} (expected http://host:port)"
        )
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "span exporter endpoint {endpoint:?}: TLS to the collector is not supported yet; use http://"
            ));
        }
        _ => {
            return Err(format!(
                "span exporter endpoint {endpoint:?} must start with http:// (expected http://host:port)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "span exporter endpoint {endpoint:?} has no host (expected http://host:port)"
        ));
    }
    // gRPC calls go to /<service>/<method> at the root whatever the URL says, so a path is a
    // mistake (an OTLP/HTTP URL such as .../v1/traces) rather than something to honour.
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "span exporter endpoint {endpoint:?}: OTLP/gRPC takes no path (expected http://host:port)"
        ));
    }
    Ok(())
}
