//! Tracing at the edge: the W3C trace context of each request (continued from the client's
//! `traceparent` or started here), passed to the upstream with weir's own span as parent,
//! and, for sampled requests, the spans sent to the OTLP exporter when the response ends.
//!
//! Spans are built after the fact from the phase times the pipeline recorded, so a request
//! that is not sampled costs a few random ids and one header; it allocates no span.

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use weir_app::pipeline::{Exchange, Phases};
use weir_config::TracingSettings;
use weir_domain::trace::{self, FLAG_SAMPLED, SpanId, TraceId, TraceParent};
use weir_infra::otel::{AttrValue, ExporterSettings, SpanExporter, SpanKind, SpanRecord};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A generation's tracer: its exporter and sampling ratio.
#[derive(Clone)]
pub struct Tracer {
    exporter: SpanExporter,
    ratio: f64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

/// One request's trace context.
#[derive(Debug)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// weir's server span.
    span: SpanId,
    /// The client's span, when it sent a `traceparent`.
    parent: Option<SpanId>,
    /// The upstream call's span: the parent the upstream sees.
    upstream: SpanId,
    pub sampled: bool,
    trace_state: Option<String>,
    start: Instant,
    wall: SystemTime,
    /// The request's method and path, kept only when sampled (for the span).
    pub target: Option<(http::Method, String)>,
}

impl Tracer {
    /// Starts the exporter (inside the runtime).
    pub fn start(settings: &TracingSettings) -> Result<Self, String> {
        let exporter = SpanExporter::start(ExporterSettings::new(
            settings.endpoint.clone(),
            settings.service_name.clone(),
        ))
        .map_err(|e| format!("observability.tracing: {e}"))?;
        Ok(Self {
            exporter,
            ratio: settings.sample_ratio,
        })
    }

    /// Reads the client's context from the request and puts the upstream's in its place.
    pub fn begin<B>(&self, req: &mut http::Request<B>, start: Instant) -> RequestTrace {
        let mut t = self.context(req.headers_mut(), start);
        // Only a sampled request pays for copying what its span names.
        if t.sampled {
            t.target = Some((req.method().clone(), req.uri().path().to_owned()));
        }
        t
    }

    fn context(&self, headers: &mut HeaderMap, start: Instant) -> RequestTrace {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| TraceParent::parse(v.as_bytes()));
        // A malformed tracestate is dropped; without a valid parent it means nothing.
        let trace_state = match headers.get(&TRACESTATE) {
            Some(v) if parent.is_some() && trace::tracestate_ok(v.as_bytes()) => {
                v.to_str().ok().map(str::to_owned)
            }
            Some(_) => {
                headers.remove(&TRACESTATE);
                None
            }
            None => None,
        };
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = trace::sample(self.ratio, parent.as_ref(), &trace_id);
        let upstream = new_span_id();
        let outgoing = TraceParent {
            trace_id,
            parent_id: upstream,
            flags: (parent.map_or(0, |p| p.flags) & !FLAG_SAMPLED) | u8::from(sampled),
        };
        if let Ok(v) = HeaderValue::from_bytes(&outgoing.encode()) {
            headers.insert(&TRACEPARENT, v);
        }
        RequestTrace {
            trace_id,
            span: new_span_id(),
            parent: parent.map(|p| p.parent_id),
            upstream,
            sampled,
            trace_state,
            start,
            wall: SystemTime::now(),
            target: None,
        }
    }

    /// Sends a sampled request's spans: weir's server span and a child per phase.
    pub fn finish(&self, t: &RequestTrace, end: Instant, about: &Finished<'_>) {
        let Some((method, path)) = &t.target else {
            return;
        };
        let method = method.as_str();
        let at = |i: Instant| t.wall + i.saturating_duration_since(t.start);
        let error = (about.status >= 500).then(|| Cow::Owned(format!("HTTP {}", about.status)));
        let mut attributes = vec![
            ("http.request.method", str(method.to_owned())),
            ("url.path", str(path.clone())),
            (
                "http.response.status_code",
                AttrValue::Int(i64::from(about.status)),
            ),
            (
                "weir.request_id",
                str(String::from_utf8_lossy(about.ex.request_id.as_bytes()).into_owned()),
            ),
        ];
        if let Some(route) = about.route {
            attributes.push(("http.route", str(route.to_owned())));
        }
        let name = match about.route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        };
        let mut spans = vec![SpanRecord {
            trace_id: t.trace_id,
            span_id: t.span,
            parent: t.parent,
            name: Cow::Owned(name),
            kind: SpanKind::Server,
            start: t.wall,
            end: at(end),
            attributes,
            error,
            remote_parent: t.parent.is_some(),
            trace_state: t.trace_state.clone(),
        }];
        if let Some(phases) = about.ex.phases.as_deref() {
            Self::children(t, phases, about, &at, &mut spans);
        }
        self.exporter.record(spans);
    }

    fn children(
        t: &RequestTrace,
        phases: &Phases,
        about: &Finished<'_>,
        at: &dyn Fn(Instant) -> SystemTime,
        spans: &mut Vec<SpanRecord>,
    ) {
        let child =
            |name: &'static str, span_id: SpanId, kind, (s, e): (Instant, Instant)| SpanRecord {
                trace_id: t.trace_id,
                span_id,
                parent: Some(t.span),
                name: Cow::Borrowed(name),
                kind,
                start: at(s),
                end: at(e),
                attributes: Vec::new(),
                error: None,
                remote_parent: false,
                trace_state: None,
            };
        let internal = [
            ("auth", phases.auth),
            ("rate_limit", phases.rate_limit),
            ("cache", phases.cache),
        ];
        for (name, times) in internal {
            if let Some(times) = times {
                let mut span = child(name, new_span_id(), SpanKind::Internal, times);
                if name == "auth" && about.ex.auth_failure.is_some() {
                    span.error = Some(Cow::Borrowed("authentication failed"));
                }
                if name == "rate_limit" && about.ex.rate_limited {
                    span.error = Some(Cow::Borrowed("rate limited"));
                }
                spans.push(span);
            }
        }
        if let Some(times) = phases.upstream {
            let mut span = child("upstream", t.upstream, SpanKind::Client, times);
            if let Some(upstream) = about.upstream {
                span.attributes
                    .push(("weir.upstream", str(upstream.to_owned())));
            }
            if let Some(target) = &about.ex.target {
                span.attributes
                    .push(("server.address", str(target.url.clone())));
            }
            span.attributes
                .push(("weir.retries", AttrValue::Int(i64::from(about.ex.retries))));
            spans.push(span);
        }
    }
}

/// What the finished request was, for its span.
pub struct Finished<'a> {
    pub ex: &'a Exchange,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
}

fn str(s: String) -> AttrValue {
    AttrValue::Str(Cow::Owned(s))
}

fn new_trace_id() -> TraceId {
    loop {
        let id = TraceId(rand::random());
        if id.is_valid() {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = SpanId(rand::random());
        if id.is_valid() {
            return id;
        }
    }
}
