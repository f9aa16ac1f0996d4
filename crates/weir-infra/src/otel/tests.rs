//! The exporter against a real OTLP/gRPC collector in the test process (weir-test-grpc), and
//! against a port that refuses connections.

use std::borrow::Cow;
use std::time::{Duration, Instant, UNIX_EPOCH};

use weir_domain::trace::{SpanId, TraceId};
use weir_test_grpc::otlp::{CollectedSpan, OtlpCollector};

use super::{AttrValue, ExporterSettings, SpanExporter, SpanKind, SpanRecord};
use crate::test_logs::Logs;
use crate::test_net::dead_addr;

const WAIT: Duration = Duration::from_secs(10);

fn settings(endpoint: String) -> ExporterSettings {
    ExporterSettings {
        flush_every: Duration::from_millis(50),
        export_timeout: Duration::from_secs(5),
        ..ExporterSettings::new(endpoint, "weir-test")
    }
}

fn trace_id(n: u16) -> TraceId {
    let mut id = [0x11; 16];
    id[14..].copy_from_slice(&n.to_be_bytes());
    TraceId(id)
}

fn span_id(n: u16) -> SpanId {
    let mut id = [0x22; 8];
    id[6..].copy_from_slice(&n.to_be_bytes());
    SpanId(id)
}

const START_NANOS: u64 = 1_767_225_600_123_456_789;

fn span(trace: u16, id: u16, parent: Option<u16>) -> SpanRecord {
    let start = UNIX_EPOCH + Duration::from_nanos(START_NANOS);
    SpanRecord {
        trace_id: trace_id(trace),
        span_id: span_id(id),
        parent: parent.map(span_id),
        name: Cow::Borrowed("span"),
        kind: SpanKind::Internal,
        start,
        end: start + Duration::from_micros(1500),
        attributes: Vec::new(),
        error: None,
        remote_parent: false,
        trace_state: None,
    }
}

/// The collector stores spans before its answer reaches the exporter, so the exporter's
/// counters catch up a moment after the spans are seen.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn by_span_id(spans: &[CollectedSpan], id: u16) -> &CollectedSpan {
    spans
        .iter()
        .find(|s| s.span_id == span_id(id).0)
        .unwrap_or_else(|| panic!("span {id} arrived: {spans:#?}"))
}

#[tokio::test]
async fn spans_reach_the_collector_intact() {
    let collector = OtlpCollector::start().await;
    let exporter = SpanExporter::start(settings(collector.endpoint())).expect("exporter");

    // A request that joined a trace from an incoming traceparent (parent 9 is remote), and
    // the upstream call it made.
    let mut server = span(1, 1, Some(9));
    server.name = Cow::Owned(format!("HTTP {}", "GET"));
    server.kind = SpanKind::Server;
    server.remote_parent = true;
    server.trace_state = Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".to_owned());
    server.attributes = vec![
        ("http.request.method", AttrValue::Str(Cow::Borrowed("GET"))),
        ("http.response.status_code", AttrValue::Int(502)),
        ("weir.cache.hit", AttrValue::Bool(false)),
        (
            "url.path",
            AttrValue::Str(Cow::Owned("/users/42".to_owned())),
        ),
    ];
    server.error = Some(Cow::Borrowed("upstream unavailable"));
    let mut client = span(1, 2, Some(1));
    client.name = Cow::Borrowed("upstream call");
    client.kind = SpanKind::Client;
    // A trace this gateway started: no parent at all.
    let root = span(2, 3, None);
    exporter.record([server, client, root]);

    let spans = collector.wait_for_spans(3, WAIT).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");

    let server = by_span_id(&spans, 1);
    assert_eq!(server.trace_id, trace_id(1).0);
    assert_eq!(server.parent_span_id, Some(span_id(9).0));
    assert_eq!(server.name, "HTTP GET");
    assert_eq!(server.kind, 2, "server");
    assert_eq!(server.start_unix_nanos, START_NANOS);
    assert_eq!(server.end_unix_nanos, START_NANOS + 1_500_000);
    assert_eq!(
        server.attributes,
        [
            ("http.request.method", "GET"),
            ("http.response.status_code", "502"),
            ("weir.cache.hit", "false"),
            ("url.path", "/users/42"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(server.status_code, 2, "error");
    assert_eq!(server.status_message, "upstream unavailable");
    assert_eq!(server.service_name, "weir-test");
    assert_eq!(
        server.trace_state,
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    // Sampled, "has is-remote" and "parent is remote".
    assert_eq!(server.flags, 0x01 | 0x100 | 0x200);

    let client = by_span_id(&spans, 2);
    assert_eq!(client.trace_id, trace_id(1).0, "a child shares the trace");
    assert_eq!(client.parent_span_id, Some(span_id(1).0));
    assert_eq!(client.name, "upstream call");
    assert_eq!(client.kind, 3, "client");
    assert_eq!(client.status_code, 0, "unset");
    assert_eq!(client.status_message, "");
    assert!(client.attributes.is_empty());
    assert_eq!(client.service_name, "weir-test");
    assert_eq!(client.flags, 0x01 | 0x100, "local parent");
    assert_eq!(client.trace_state, "");

    let root = by_span_id(&spans, 3);
    assert_eq!(root.trace_id, trace_id(2).0);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.kind, 1, "internal");

    wait_until("3 exported", || exporter.exported() == 3).await;
    assert_eq!(exporter.dropped(), 0);
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_thousand_spans_arrive_in_batches() {
    let collector = OtlpCollector::start().await;
    let exporter = SpanExporter::start(ExporterSettings {
        max_batch: 100,
        ..settings(collector.endpoint())
    })
    .expect("exporter");

    // As the request path would: a few spans at a time, with the task free to run between.
    for chunk in 0..100u16 {
        exporter.record((0..10).map(|i| span(chunk, chunk * 10 + i + 1, None)));
        tokio::task::yield_now().await;
    }
    let spans = collector.wait_for_spans(1000, WAIT).await;
    assert_eq!(spans.len(), 1000);
    let mut ids: Vec<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "each span exactly once");
    let requests = collector.requests();
    // Full batches of 100, plus a partial one each time the flush timer fired mid-way.
    assert!((10..=50).contains(&requests), "{requests} requests");
    wait_until("1000 exported", || exporter.exported() == 1000).await;
    assert_eq!(exporter.dropped(), 0);
    exporter.shutdown().await;
}

#[tokio::test]
async fn a_dead_collector_drops_without_blocking_and_warns_once() {
    let logs = Logs::capture();
    let exporter = SpanExporter::start(ExporterSettings {
        max_batch: 10,
        export_timeout: Duration::from_millis(500),
        ..settings(format!("http://{}", dead_addr()))
    })
    .expect("an unreachable collector is not an error at start");

    let started = Instant::now();
    for i in 0..30 {
        exporter.record([span(1, i + 1, None)]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "record took {:?}",
        started.elapsed()
    );

    // Three batches of ten, each failing.
    wait_until("30 dropped", || exporter.dropped() == 30).await;
    assert_eq!(exporter.exported(), 0);
    assert_eq!(
        logs.count("exporting spans to the OTLP collector failed"),
        1,
        "one warning for all failures: {}",
        logs.text()
    );

    // Some still queued at shutdown: it gives up on them within the timeout.
    exporter.record((100..120).map(|i| span(1, i, None)));
    let started = Instant::now();
    exporter.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_millis(500 + 250),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(exporter.exported(), 0);
    wait_until("50 dropped", || exporter.dropped() == 50).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let collector = OtlpCollector::start().await;
    let exporter = SpanExporter::start(ExporterSettings {
        max_queue: 10,
        ..settings(collector.endpoint())
    })
    .expect("exporter");

    // On this current-thread runtime the export task cannot run until we await, so the
    // queue takes exactly ten.
    exporter.record((1..=100).map(|i| span(1, i, None)));
    assert_eq!(exporter.dropped(), 90);

    exporter.shutdown().await;
    assert_eq!(exporter.exported(), 10);
    let spans = collector.spans();
    assert_eq!(spans.len(), 10, "{spans:#?}");
    for (n, span) in spans.iter().enumerate() {
        let n = u16::try_from(n + 1).expect("small");
        assert_eq!(span.span_id, span_id(n).0, "the first ten, in order");
    }
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let collector = OtlpCollector::start().await;
    let exporter = SpanExporter::start(ExporterSettings {
        // Neither the timer nor a full batch would send these: only shutdown does.
        flush_every: Duration::from_secs(3600),
        ..settings(collector.endpoint())
    })
    .expect("exporter");
    exporter.record((1..=5).map(|i| span(1, i, None)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(collector.requests(), 0, "nothing sent before the flush");

    exporter.shutdown().await;
    assert_eq!(collector.spans().len(), 5, "sent before shutdown returned");
    assert_eq!(collector.requests(), 1);
    assert_eq!(exporter.exported(), 5);

    // Afterwards spans are refused and counted, and shutting down again is harmless.
    exporter.record([span(1, 6, None)]);
    assert_eq!(exporter.dropped(), 1);
    exporter.shutdown().await;
    assert_eq!(collector.requests(), 1);
}

#[tokio::test]
async fn the_task_ends_when_every_handle_is_dropped() {
    let collector = OtlpCollector::start().await;
    let exporter = SpanExporter::start(ExporterSettings {
        flush_every: Duration::from_secs(3600),
        ..settings(collector.endpoint())
    })
    .expect("exporter");
    let clone = exporter.clone();
    clone.record([span(1, 1, None)]);
    drop(exporter);
    drop(clone);
    // Dropped handles close the queue; the task sends what it had before it ends.
    collector.wait_for_spans(1, WAIT).await;
}

#[tokio::test]
async fn bad_settings_are_errors() {
    let ok = || settings("http://collector.invalid:4317".to_owned());
    assert!(SpanExporter::start(ok()).is_ok());
    assert!(SpanExporter::start(settings("http://collector.invalid:4317/".to_owned())).is_ok());
    for (endpoint, says) in [
        ("", "not a URL"),
        ("collector.invalid:4317", "must start with http://"),
        ("grpc://collector.invalid:4317", "must start with http://"),
        ("https://collector.invalid:4317", "TLS"),
        ("http://collector.invalid:4318/v1/traces", "no path"),
        ("http://", "not a URL"),
        ("http://exa mple:4317", "not a URL"),
    ] {
        let err = SpanExporter::start(settings(endpoint.to_owned()))
            .err()
            .unwrap_or_else(|| panic!("{endpoint:?} must be refused"));
        assert!(
            err.contains(says) && err.contains(endpoint),
            "{endpoint:?}: {err}"
        );
    }
    for (settings, says) in [
        (
            ExporterSettings {
                max_queue: 0,
                ..ok()
            },
            "max_queue",
        ),
        (
            ExporterSettings {
                max_queue: usize::MAX,
                ..ok()
            },
            "max_queue",
        ),
        (
            ExporterSettings {
                max_batch: 0,
                ..ok()
            },
            "max_batch",
        ),
        (
            ExporterSettings {
                flush_every: Duration::ZERO,
                ..ok()
            },
            "flush_every",
        ),
        (
            ExporterSettings {
                export_timeout: Duration::ZERO,
                ..ok()
            },
            "export_timeout",
        ),
    ] {
        let err = SpanExporter::start(settings).err().expect("refused");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let err = SpanExporter::start(settings("http://127.0.0.1:4317".to_owned()))
        .err()
        .expect("refused");
    assert!(err.contains("tokio runtime"), "{err}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = ExporterSettings::new("http://127.0.0.1:4317", "weir");
    assert_eq!(s.max_queue, 2048);
    assert_eq!(s.max_batch, 512);
    assert_eq!(s.flush_every, Duration::from_secs(1));
    assert_eq!(s.export_timeout, Duration::from_secs(10));
}
