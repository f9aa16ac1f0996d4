//! An OTLP trace collector in the test process: what a tracing test points the gateway's
//! span exporter at, to assert on the spans that arrived and on how they were batched.
//!
//! It speaks the real protocol (`opentelemetry.proto.collector.trace.v1.TraceService` over
//! plaintext HTTP/2, the generated server of `opentelemetry-proto`), so a test exercises the
//! exporter's encoding and transport, not a mock of them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status};

use crate::incoming::{self, SharedSockets};

/// One span as received, flattened out of its resource and scope.
#[derive(Clone, Debug)]
pub struct CollectedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` when the span is a root (the wire's empty parent id).
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Values stringified: strings as they are, ints and doubles in decimal, bools as
    /// `true`/`false`, anything else in its Debug form.
    pub attributes: Vec<(String, String)>,
    /// OTLP `StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// The `service.name` attribute of the span's resource ("" without one).
    pub service_name: String,
    /// OTLP span flags: trace flags in the low byte, 0x100 "has is-remote", 0x200 "parent is
    /// remote".
    pub flags: u32,
    /// The span's W3C `tracestate`, "" when none.
    pub trace_state: String,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<CollectedSpan>>,
    requests: Mutex<usize>,
    arrived: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The collector on `127.0.0.1`, accepting every Export and keeping its spans. Dropping it
/// stops the server and cuts its connections, like a collector that went away.
pub struct OtlpCollector {
    addr: SocketAddr,
    received: Arc<Received>,
    sockets: SharedSockets,
    shutdown: Option<oneshot::Sender<()>>,
}

impl OtlpCollector {
    /// Starts the collector on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// When no local port can be bound, or outside a tokio runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the test OTLP collector");
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let received = Arc::new(Received::default());
        let service = TraceServiceServer::new(Collector {
            received: Arc::clone(&received),
        });
        let (sockets, shutdown) = incoming::spawn(
            listener,
            tonic::service::Routes::new(service),
            "the OTLP test collector",
        );
        OtlpCollector {
            addr,
            received,
            sockets,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:PORT`, an OTLP/gRPC endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.received.spans).clone()
    }

    /// How many Export calls arrived (each one batch).
    pub fn requests(&self) -> usize {
        *lock(&self.received.requests)
    }

    /// Waits until at least `n` spans have arrived and returns them all.
    ///
    /// # Panics
    ///
    /// On timeout, listing what did arrive.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<CollectedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so an arrival between the two still wakes us.
            let arrived = self.received.arrived.notified();
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans();
                if spans.len() >= n {
                    return spans;
                }
                panic!(
                    "the OTLP collector got {} of {n} spans in {timeout:?} ({} requests): {spans:#?}",
                    spans.len(),
                    self.requests()
                );
            }
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        incoming::close_all(&self.sockets);
        if let Some(shutdown) = self.shutdown.take() {
            // Fails only when the server task has already ended.
            let _ = shutdown.send(());
        }
    }
}

struct Collector {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut collected = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| stringify(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let status = span.status.unwrap_or_default();
                collected.push(CollectedSpan {
                    trace_id: id(&span.trace_id, "trace_id"),
                    span_id: id(&span.span_id, "span_id"),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| id(&span.parent_span_id, "parent_span_id")),
                    name: span.name,
                    kind: span.kind,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: span.attributes.iter().map(attribute).collect(),
                    status_code: status.code,
                    status_message: status.message,
                    service_name: service_name.clone(),
                    flags: span.flags,
                    trace_state: span.trace_state,
                });
            }
        }
        // Counted with the spans under one lock order (requests, then spans), so a test that
        // sees n spans also sees the request that brought them.
        {
            let mut requests = lock(&self.received.requests);
            *requests += 1;
            lock(&self.received.spans).extend(collected);
        }
        self.received.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A malformed id is the exporter's bug, and this is a test: fail loudly.
fn id<const N: usize>(bytes: &[u8], what: &str) -> [u8; N] {
    bytes
        .try_into()
        .unwrap_or_else(|_| panic!("{what} has {} bytes, not {N}", bytes.len()))
}

fn attribute(kv: &KeyValue) -> (String, String) {
    (kv.key.clone(), stringify(kv.value.as_ref()))
}

fn stringify(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue(service.to_owned()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[tokio::test]
    async fn flattens_what_an_exporter_sends() {
        let collector = OtlpCollector::start().await;
        let mut client = TraceServiceClient::connect(collector.endpoint())
            .await
            .expect("connect to the collector");
        let root = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "root".to_owned(),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                kv("s", any_value::Value::StringValue("text".to_owned())),
                kv("i", any_value::Value::IntValue(-7)),
                kv("b", any_value::Value::BoolValue(true)),
                kv("d", any_value::Value::DoubleValue(1.5)),
            ],
            status: Some(Status {
                message: "boom".to_owned(),
                code: 2,
            }),
            flags: 0x301,
            trace_state: "k=v".to_owned(),
            ..Default::default()
        };
        let child = Span {
            trace_id: vec![1; 16],
            span_id: vec![3; 8],
            parent_span_id: vec![2; 8],
            name: "child".to_owned(),
            ..Default::default()
        };
        client
            .export(request("svc-a", vec![root]))
            .await
            .expect("export");
        client
            .export(request("svc-b", vec![child]))
            .await
            .expect("export");

        let spans = collector.wait_for_spans(2, Duration::from_secs(5)).await;
        assert_eq!(collector.requests(), 2);
        let root = &spans[0];
        assert_eq!(root.trace_id, [1; 16]);
        assert_eq!(root.span_id, [2; 8]);
        assert_eq!(root.parent_span_id, None);
        assert_eq!(root.name, "root");
        assert_eq!(root.kind, 2);
        assert_eq!((root.start_unix_nanos, root.end_unix_nanos), (10, 20));
        assert_eq!(
            root.attributes,
            [("s", "text"), ("i", "-7"), ("b", "true"), ("d", "1.5")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            (root.status_code, root.status_message.as_str()),
            (2, "boom")
        );
        assert_eq!(root.service_name, "svc-a");
        assert_eq!(root.flags, 0x301);
        assert_eq!(root.trace_state, "k=v");
        let child = &spans[1];
        assert_eq!(child.parent_span_id, Some([2; 8]));
        assert_eq!(child.service_name, "svc-b");
        assert_eq!(child.status_code, 0);
    }

    #[tokio::test]
    #[should_panic(expected = "got 0 of 1 spans")]
    async fn waiting_too_long_panics_with_what_arrived() {
        let collector = OtlpCollector::start().await;
        collector.wait_for_spans(1, Duration::from_millis(50)).await;
    }
}
