//! OpenTelemetry tracing through the real gateway: spans reach an OTLP collector running in
//! this process (a tonic TraceService), with weir's server span continuing the client's
//! `traceparent`, child spans for auth, rate limit and the upstream call, and the upstream
//! seeing weir's upstream span as its parent.

use std::time::Duration;

use serde_json::Value;
use weir_domain::trace::TraceParent;
use weir_test_grpc::otlp::{CollectedSpan, OtlpCollector};

use crate::common::{Backend, echo, echoed_header};
use crate::common::{TempDir, start};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config(collector: &OtlpCollector, backend: &Backend, ratio: &str, access_log: &str) -> String {
    format!(
        "observability:
  access_log: {access_log}
  tracing: {{ otlp_endpoint: '{}', sample_ratio: {ratio}, service_name: weir-test }}
auth:
  providers:
    keys: {{ type: api_key, header: X-Api-Key }}
consumers:
  - name: alice
    api_keys: [alice-key]
upstreams:
  api:
    targets: [{{ url: '{}' }}]
routes:
  - name: orders
    match: {{ prefix: /orders }}
    upstream: api
    auth: {{ providers: [keys] }}
    rate_limit: [{{ key: consumer, limit: 100, per: 1m }}]
",
        collector.endpoint(),
        backend.url()
    )
}

fn by_name<'a>(spans: &'a [CollectedSpan], name: &str) -> &'a CollectedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_a_server_span_with_children_continuing_the_clients_trace() {
    let collector = OtlpCollector::start().await;
    let backend = Backend::start("b").await;
    let dir = TempDir::new("trace-log");
    let log = dir.path().join("access.log");
    let access = format!("{{ enabled: true, path: '{}' }}", log.display());
    let gw = start(&config(&collector, &backend, "0", &access)).await;

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let resp = gw
        .client
        .get(gw.url("/orders/7"))
        .header("x-api-key", "alice-key")
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = echo(resp).await;

    // The upstream continues the same trace, with weir's span as its parent.
    let upstream_parent = echoed_header(&seen, "traceparent").expect("traceparent upstream");
    let parsed = TraceParent::parse(upstream_parent.as_bytes()).expect("a valid traceparent");
    assert_eq!(hex(&parsed.trace_id.0), CLIENT_TRACE);
    assert_ne!(
        hex(&parsed.parent_id.0),
        CLIENT_SPAN,
        "weir is a hop of its own"
    );
    assert!(
        parsed.sampled(),
        "a sampled parent is followed even at ratio 0"
    );
    assert_eq!(echoed_header(&seen, "tracestate"), Some("vendor=abc"));

    let spans = collector.wait_for_spans(4, Duration::from_secs(10)).await;
    let server = by_name(&spans, "GET orders");
    assert_eq!(hex(&server.trace_id), CLIENT_TRACE);
    assert_eq!(
        server.parent_span_id.map(|p| hex(&p)).as_deref(),
        Some(CLIENT_SPAN),
        "the server span's parent is the client's span"
    );
    assert_eq!(server.service_name, "weir-test");
    assert!(
        server
            .attributes
            .iter()
            .any(|(k, v)| k == "http.response.status_code" && v == "200"),
        "{server:?}"
    );
    assert!(
        server
            .attributes
            .iter()
            .any(|(k, v)| k == "weir.request_id" && *v == request_id),
        "{server:?}"
    );
    for name in ["auth", "rate_limit", "upstream"] {
        let child = by_name(&spans, name);
        assert_eq!(child.trace_id, server.trace_id, "{name}");
        assert_eq!(
            child.parent_span_id,
            Some(server.span_id),
            "{name} is a child"
        );
        assert!(
            child.start_unix_nanos >= server.start_unix_nanos
                && child.end_unix_nanos <= server.end_unix_nanos,
            "{name} lies within the request: {child:?} vs {server:?}"
        );
    }
    let upstream = by_name(&spans, "upstream");
    assert_eq!(
        upstream.span_id, parsed.parent_id.0,
        "the upstream saw weir's upstream span as its parent"
    );
    assert!(
        upstream
            .attributes
            .iter()
            .any(|(k, v)| k == "server.address" && v.contains(&backend.url()[7..])),
        "{upstream:?}"
    );

    // The access log line carries the trace id.
    let line = crate::common::eventually_line(&log, &request_id).await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["trace_id"], CLIENT_TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_parent_based_and_unsampled_requests_send_no_spans() {
    let collector = OtlpCollector::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&config(&collector, &backend, "0", "{ enabled: false }")).await;

    // No parent at ratio 0: not sampled, but the upstream still gets a context to continue.
    let seen = echo(
        gw.client
            .get(gw.url("/orders/1"))
            .header("x-api-key", "alice-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let started = TraceParent::parse(echoed_header(&seen, "traceparent").unwrap().as_bytes())
        .expect("weir starts a trace");
    assert!(!started.sampled());

    // An unsampled parent is followed too; a malformed tracestate is dropped.
    let seen = echo(
        gw.client
            .get(gw.url("/orders/2"))
            .header("x-api-key", "alice-key")
            .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
            .header("tracestate", "not a list member")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let followed =
        TraceParent::parse(echoed_header(&seen, "traceparent").unwrap().as_bytes()).unwrap();
    assert_eq!(hex(&followed.trace_id.0), CLIENT_TRACE);
    assert!(!followed.sampled());
    assert_eq!(echoed_header(&seen, "tracestate"), None);

    // A sampled request afterwards is the only one exported.
    let resp = gw
        .client
        .get(gw.url("/orders/3"))
        .header("x-api-key", "alice-key")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = collector.wait_for_spans(4, Duration::from_secs(10)).await;
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == CLIENT_TRACE),
        "only the sampled trace is exported: {spans:#?}"
    );
    let servers = spans.iter().filter(|s| s.name.starts_with("GET")).count();
    assert_eq!(servers, 1, "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_has_an_errored_auth_span_and_no_upstream_span() {
    let collector = OtlpCollector::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&config(&collector, &backend, "1", "{ enabled: false }")).await;
    let resp = gw
        .client
        .get(gw.url("/orders/1"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let spans = collector.wait_for_spans(2, Duration::from_secs(10)).await;
    let auth = by_name(&spans, "auth");
    assert!(!auth.status_message.is_empty(), "{auth:?}");
    assert!(spans.iter().all(|s| s.name != "upstream"), "{spans:#?}");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_fails_a_request() {
    let backend = Backend::start("b").await;
    let dead = crate::common::dead_addr();
    let yaml = format!(
        "observability:
  access_log: {{ enabled: false }}
  tracing: {{ otlp_endpoint: 'http://{dead}' }}
upstreams:
  api:
    targets: [{{ url: '{}' }}]
routes:
  - name: all
    match: {{ prefix: / }}
    upstream: api
",
        backend.url()
    );
    let gw = start(&yaml).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/x").await.status(), 200);
    }
}
