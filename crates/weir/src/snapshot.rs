//! One configuration generation, fully built: the pipeline, its metric handles, prebuilt
//! static responses and running health checks. A request holds one snapshot from its first
//! byte to its last, so it never sees half of a config.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use weir_app::Gateway;
use weir_app::pipeline::Parts;
use weir_config::{Loaded, Settings};
use weir_domain::route::{Fallback, RouteAction};
use weir_infra::access_log::AccessLog;
use weir_infra::client::UpstreamClient;
use weir_infra::health::Checks;
use weir_infra::metrics::{RouteMetrics, UpstreamMetrics};

use crate::bodies::RouteBodies;
use crate::cache::Caches;
use crate::forward::{Auth, Forward, Shared};

/// A `respond:` answer, built once.
#[derive(Debug, Clone)]
pub struct StaticReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What every generation of a process shares: built once at start.
#[derive(Debug, Clone)]
pub struct Process {
    /// The access log writer, shared across generations (reopened when its settings change).
    pub access_log: Option<AccessLog>,
    /// Worker threads; each gets its own idle upstream connections.
    pub workers: usize,
}

#[derive(Debug)]
pub struct Snapshot {
    /// Shared with the discovery watchers, which swap upstreams' targets.
    pub gateway: Arc<Gateway<Forward, Auth, Shared, Arc<Caches>>>,
    pub settings: Settings,
    /// Per listener of `settings` (same index): what its connections are served with.
    pub listeners: Vec<Arc<crate::listener::ListenerRuntime>>,
    /// Kept across reloads by route name, so counters never go back.
    pub route_metrics: Vec<Arc<RouteMetrics>>,
    /// Requests that matched no route (`route=""`).
    pub unmatched_metrics: Arc<RouteMetrics>,
    pub upstream_metrics: Vec<Arc<UpstreamMetrics>>,
    pub route_names: Vec<Arc<str>>,
    pub upstream_names: Vec<Arc<str>>,
    /// Per route, its static reply when it has one.
    pub replies: Vec<Option<StaticReply>>,
    /// Per route, its static `fallback` when it has one.
    pub fallbacks: Vec<Option<StaticReply>>,
    /// Per route, what it does to bodies.
    pub bodies: Vec<RouteBodies>,
    pub access_log: Option<AccessLog>,
    pub effective: serde_json::Value,
    pub version: String,
    pub loaded_at: SystemTime,
    pub checks: Checks,
    pub watchers: crate::discovery::Watchers,
    /// OpenTelemetry tracing, when configured.
    pub tracer: Option<crate::trace::Tracer>,
    /// Per listener (same index): its ACME manager, for `tls.acme`.
    pub acme: Vec<Option<Arc<crate::acme::Managed>>>,
    /// The pending ACME challenges, when a listener uses ACME (HTTP-01 is answered on
    /// every plain listener).
    pub challenges: Option<Arc<weir_infra::acme::Challenges>>,
}

impl Snapshot {
    /// Builds everything a config needs to serve. Must run inside the runtime (it starts
    /// health-check tasks). With `previous` (a reload), everything the new config did not
    /// change is taken over from it: upstreams' targets with their health, circuits and
    /// connections, rate-limit counters, caches and metrics.
    pub fn build(
        loaded: Loaded,
        process: &Process,
        caches: Arc<Caches>,
        previous: Option<&Self>,
    ) -> Result<Self, String> {
        let access_log = process.access_log.clone();
        let workers = process.workers;
        let carry = crate::carry::Carry::new(previous, &loaded);
        let Loaded {
            settings,
            routes,
            upstreams,
            auth,
            effective,
            version,
        } = loaded;
        let replies = routes
            .routes()
            .iter()
            .map(|r| match &r.action {
                RouteAction::Respond(s) => Some(static_reply(s)).transpose(),
                RouteAction::Upstream(_) => Ok(None),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let fallbacks = routes
            .routes()
            .iter()
            .map(|r| match &r.fallback {
                Some(Fallback::Respond(s)) => Some(static_reply(s)).transpose(),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let bodies = routes
            .routes()
            .iter()
            .map(|r| RouteBodies::build(r, settings.limits.max_body_bytes))
            .collect::<Result<Vec<_>, String>>()?;
        let converters = if bodies.iter().any(|b| b.request.is_some()) {
            bodies.iter().map(|b| b.request.clone()).collect()
        } else {
            Vec::new()
        };
        let route_names = routes
            .routes()
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        let route_metrics = routes
            .routes()
            .iter()
            .map(|r| carry.route_metrics(&r.name))
            .collect();
        let upstream_names = upstreams
            .iter()
            .map(|u| Arc::from(u.name.as_str()))
            .collect();
        let upstream_metrics: Vec<Arc<UpstreamMetrics>> = upstreams
            .iter()
            .map(|u| carry.upstream_metrics(&u.name))
            .collect();
        // An unchanged upstream keeps its client (its TLS config) and its target set.
        let mut members = Vec::with_capacity(upstreams.len());
        let mut forwarders = Vec::with_capacity(upstreams.len());
        for (i, (u, metrics)) in upstreams.iter().zip(&upstream_metrics).enumerate() {
            match carry.upstream(i) {
                Some((forward, kept)) => {
                    forwarders.push(forward);
                    members.push(Some(kept));
                }
                None => {
                    forwarders.push(Forward {
                        client: UpstreamClient::of(u, u.timeouts.connect, workers)?,
                        metrics: Arc::clone(metrics),
                    });
                    members.push(None);
                }
            }
        }
        let uses_acme = settings
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.acme.is_some()));
        let challenges = uses_acme.then(|| {
            previous
                .and_then(|p| p.challenges.clone())
                .unwrap_or_default()
        });
        let acme = match &challenges {
            Some(c) => crate::acme::start(&settings, c, previous.map_or(&[], |p| &p.acme))?,
            None => Vec::new(),
        };
        let listeners = settings
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let dynamic = acme
                    .get(i)
                    .cloned()
                    .flatten()
                    .map(|m| m as Arc<dyn weir_infra::tls::server::DynamicCerts>);
                crate::listener::ListenerRuntime::build(l, &settings.limits, dynamic).map(Arc::new)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let authenticator = Auth(weir_infra::auth::Authenticators::new(&auth, workers)?);
        let shared_limiter = Shared(
            settings
                .redis
                .as_ref()
                .map(|r| weir_infra::ratelimit::RedisLimiter::new(&redis_settings(r)))
                .transpose()?,
        );
        let no_tables = weir_app::limits::Tables::default();
        let tables = carry.limit_tables().unwrap_or(&no_tables);
        let gateway = Arc::new(Gateway::after(
            Parts {
                routes,
                upstreams,
                forwarders,
                providers: auth.providers,
                authenticator,
                shared_limiter,
                cache: caches,
                trusted_proxies: settings.trusted_proxies.clone(),
                max_header_bytes: settings.limits.max_header_bytes,
                max_body_bytes: settings.limits.max_body_bytes,
                converters,
            },
            members,
            tables,
        )?);
        // Probes follow the targets as discovery changes them; a weak handle, so the
        // tasks never keep an old generation alive.
        let weak = Arc::downgrade(&gateway);
        let watchers = crate::discovery::Watchers::start(&gateway);
        let tracer = settings
            .tracing
            .as_ref()
            .map(crate::trace::Tracer::start)
            .transpose()?;
        let clients: Vec<&UpstreamClient> = gateway.forwarders.iter().map(|f| &f.client).collect();
        let checks = Checks::start(&gateway.upstreams, &clients, move |u| {
            weak.upgrade()
                .map(|g| g.members(u).set.targets.clone())
                .unwrap_or_default()
        });
        Ok(Self {
            gateway,
            settings,
            listeners,
            route_metrics,
            unmatched_metrics: carry.unmatched_metrics(),
            upstream_metrics,
            route_names,
            upstream_names,
            replies,
            fallbacks,
            bodies,
            access_log,
            effective,
            version,
            loaded_at: SystemTime::now(),
            checks,
            watchers,
            tracer,
            acme,
            challenges,
        })
    }
}

/// The Redis client settings of the top-level `redis` section.
pub fn redis_settings(r: &weir_config::RedisSettings) -> weir_infra::ratelimit::RedisSettings {
    weir_infra::ratelimit::RedisSettings {
        urls: r.urls.iter().map(|u| u.expose().to_owned()).collect(),
        cluster: r.cluster,
        timeout: r.timeout,
        ca_pem: r.ca_pem.clone(),
    }
}

fn static_reply(s: &weir_domain::route::StaticResponse) -> Result<StaticReply, String> {
    let status =
        StatusCode::from_u16(s.status).map_err(|e| format!("respond status {}: {e}", s.status))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &s.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("respond header {name}: {e}"))?;
        let v = HeaderValue::from_str(value).map_err(|e| format!("respond header {name}: {e}"))?;
        headers.append(n, v);
    }
    if !headers.contains_key(http::header::CONTENT_TYPE) && !s.body.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    Ok(StaticReply {
        status,
        headers,
        body: Bytes::copy_from_slice(s.body.as_bytes()),
    })
}
