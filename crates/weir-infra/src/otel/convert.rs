//! A [`SpanRecord`] as the OpenTelemetry SDK's `SpanData`, the input of the OTLP exporter.
//!
//! Done on the export task, not in `record`, so the request path pays only for the queue.

use std::str::FromStr;

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind as OtelSpanKind, Status, TraceFlags,
    TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{AttrValue, SpanKind, SpanRecord};

/// The instrumentation scope every span is reported under: the gateway itself.
pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("weir")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

pub(super) fn span_data(record: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_state = record
        .trace_state
        .as_deref()
        // The domain's check is the spec's grammar, so this only fails on a caller that
        // skipped it; the span is still worth sending without its tracestate.
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    SpanData {
        // Only sampled spans are ever recorded, so the flag is always set.
        span_context: SpanContext::new(
            OtelTraceId::from_bytes(record.trace_id.0),
            OtelSpanId::from_bytes(record.span_id.0),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: record
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: record.parent.is_some() && record.remote_parent,
        span_kind: match record.kind {
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
            SpanKind::Internal => OtelSpanKind::Internal,
        },
        name: record.name,
        start_time: record.start,
        end_time: record.end,
        attributes: record
            .attributes
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    AttrValue::Str(s) => Value::from(s),
                    AttrValue::Int(i) => Value::I64(i),
                    AttrValue::Bool(b) => Value::Bool(b),
                };
                KeyValue::new(Key::from_static_str(key), value)
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match record.error {
            Some(message) => Status::error(message),
            // Unset, not Ok: per the OpenTelemetry conventions only an error is asserted.
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
