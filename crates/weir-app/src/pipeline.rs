//! The request pipeline, top to bottom. Each step is one line with the reason it is there.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use weir_domain::ErrorKind;
use weir_domain::auth::{AuthFailure, Principal, Provider};
use weir_domain::balance::hash_key;
use weir_domain::discovery::Endpoint;
use weir_domain::grpc;
use weir_domain::net::Cidr;
use weir_domain::path;
use weir_domain::retry;
use weir_domain::route::{Fallback, MethodSet, Route, RouteAction};
use weir_domain::router::{Lookup, RequestHead, RouteTable};
use weir_domain::upstream::{HashKey, InFlight, Protocol, Target, Upstream};

use crate::access::{self, Authenticator, RouteAccess};
use crate::body::{LimitedBody, ReqBody};
use crate::cache::flights::Flights;
use crate::cache::{CacheKey, ResponseCache};
use crate::cached::{self, CacheResult, Flow, Looked, Refresh, Reply, Stored};
use crate::convert::{self, RequestConverter};
use crate::error::GatewayError;
use crate::forward::{Connector, Forwarder};
use crate::headers;
use crate::limits::{Admission, Caller, RateInfo, RouteLimits, SharedLimiter};
use crate::members::Members;
use crate::transform::{RequestFacts, RouteTransforms};
use crate::tries::{self, Dest, Outgoing, Replay};

/// Marks a response served by a route's `fallback`.
pub static X_FALLBACK: header::HeaderName = header::HeaderName::from_static("x-fallback");

/// How a route with `cache` served the request: `HIT`, `MISS`, `STALE` or `BYPASS`.
pub static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");

/// One connection's facts, computed once when it is accepted.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address with IPv4-mapped IPv6 folded to IPv4.
    pub peer_ip: IpAddr,
    /// The peer address as a header value, for `X-Forwarded-For`.
    pub peer_value: HeaderValue,
    pub peer_trusted: bool,
    /// The connection came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The subject of the client's certificate, on an mTLS listener.
    pub client_subject: Option<Arc<str>>,
}

impl ConnInfo {
    #[must_use]
    pub fn new(peer: SocketAddr, trusted: &[Cidr]) -> Self {
        let ip = peer.ip().to_canonical();
        let peer_value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            peer,
            peer_ip: ip,
            peer_value,
            peer_trusted: trusted.iter().any(|c| c.contains(ip)),
            tls: false,
            client_subject: None,
        }
    }
}

/// When each phase of a traced request started and ended. Only a sampled request carries
/// one, so an untraced request never reads the clock for it.
#[derive(Debug, Default)]
pub struct Phases {
    pub auth: Option<(Instant, Instant)>,
    pub rate_limit: Option<(Instant, Instant)>,
    pub cache: Option<(Instant, Instant)>,
    /// From the first try to the response head (or the last failure).
    pub upstream: Option<(Instant, Instant)>,
}

/// The start of a phase, when the request is traced.
fn phase_start(ex: &Exchange) -> Option<Instant> {
    ex.phases.is_some().then(Instant::now)
}

/// Records a phase that started at `start` as ending now.
fn phase_end(
    ex: &mut Exchange,
    start: Option<Instant>,
    slot: fn(&mut Phases) -> &mut Option<(Instant, Instant)>,
) {
    if let (Some(p), Some(start)) = (ex.phases.as_mut(), start) {
        *slot(p) = Some((start, Instant::now()));
    }
}

/// What the pipeline learned about a request, for the access log and metrics, filled in as
/// far as the request got.
#[derive(Debug)]
pub struct Exchange {
    /// When the request is traced: when each phase ran, for its child span.
    pub phases: Option<Box<Phases>>,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    /// The subject of the client's TLS certificate, when it presented one.
    pub client_subject: Option<Arc<str>>,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    pub target: Option<Arc<Target>>,
    /// The target's index in its upstream, for per-target metrics.
    pub target_index: Option<usize>,
    /// The identity the request proved, on routes with `auth`.
    pub principal: Option<Principal>,
    /// Why access was refused, for `weir_auth_failures_total`.
    pub auth_failure: Option<AuthFailure>,
    /// The request's `Origin` when the route's CORS policy allows it: the response gets
    /// CORS headers, whatever it is.
    pub cors_origin: Option<HeaderValue>,
    /// The tightest rate limit's state, for the `RateLimit-*` headers.
    pub rate: Option<RateInfo>,
    /// The request was refused by a rate limit (`weir_rate_limited_total`).
    pub rate_limited: bool,
    /// A rate-limit key found no slot and shared the overflow bucket.
    pub rate_overflow: bool,
    /// The shared rate-limit store could not decide (`weir_rate_limit_store_errors_total`).
    pub rate_store_failed: bool,
    /// Tries after the first.
    pub retries: u32,
    /// A retry was refused by the upstream's budget.
    pub retry_budget_exhausted: bool,
    /// The response came from the route's `fallback`.
    pub fallback: Option<FallbackKind>,
    /// How a route with `cache` served the request (`X-Cache`).
    pub cache: Option<CacheResult>,
    /// What the route's request converter did, in its own terms, for the response side.
    pub conversion: Option<u32>,
}

/// Which kind of `fallback` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackKind {
    Static = 0,
    Upstream = 1,
}

impl FallbackKind {
    pub const ALL: [Self; 2] = [Self::Static, Self::Upstream];

    /// The `kind` label of `weir_fallbacks_total`.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Upstream => "upstream",
        }
    }
}

impl Exchange {
    #[must_use]
    pub fn new(request_id: HeaderValue, client_ip: IpAddr) -> Self {
        Self {
            phases: None,
            request_id,
            client_ip,
            client_subject: None,
            route: None,
            upstream: None,
            target: None,
            target_index: None,
            principal: None,
            auth_failure: None,
            cors_origin: None,
            rate: None,
            rate_limited: false,
            rate_overflow: false,
            rate_store_failed: false,
            retries: 0,
            retry_budget_exhausted: false,
            fallback: None,
            cache: None,
            conversion: None,
        }
    }
}

/// How the request was answered when it did not fail.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The upstream's response, and the guard that keeps the target's in-flight count until
    /// the response body is done.
    Proxied(Response<R>, InFlight),
    /// The matched route answers with its `respond:` (index into the route table).
    Respond(usize),
    /// A CORS preflight the route's policy answers: `204` with these headers.
    Preflight(http::HeaderMap),
    /// The upstream failed and the route's static `fallback` answers (route index).
    Fallback(usize),
    /// The route's cache answers.
    Cached(Reply),
}

/// What a [`Gateway`] is assembled from.
#[derive(Debug)]
pub struct Parts<F, A, S, C> {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// One forwarder per upstream (same index).
    pub forwarders: Vec<F>,
    /// The identity providers, indexed by `ProviderId`, and their verifier.
    pub providers: Vec<Provider>,
    pub authenticator: A,
    /// The store of `store: redis` rate limits.
    pub shared_limiter: S,
    /// The stores of routes with `cache` (shared by every configuration of the process).
    pub cache: C,
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Per route (same index), the converter of its request bodies, if it has one; empty
    /// when no route has one.
    pub converters: Vec<Option<Arc<dyn RequestConverter>>>,
}

/// One config generation's request pipeline: routes, upstreams and their forwarders.
#[derive(Debug)]
pub struct Gateway<F: Connector, A, S, C> {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// One forwarder per upstream (same index).
    pub forwarders: Vec<F>,
    /// Per upstream (same index), its current targets; discovery swaps them.
    members: Vec<ArcSwap<Members<F::Conn>>>,
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub providers: Vec<Provider>,
    pub authenticator: A,
    pub shared_limiter: S,
    pub cache: C,
    /// Concurrent cache misses, coalesced per key.
    flights: Flights,
    /// Per route (same index), its access answers prebuilt.
    access: Vec<RouteAccess>,
    /// Per route (same index), its rate limits and their state.
    limits: Vec<RouteLimits>,
    /// The memory tables behind `limits`, for the next generation to keep.
    tables: crate::limits::Tables,
    /// Per route (same index), its header transforms, literal values prebuilt.
    transforms: Vec<RouteTransforms>,
    /// Per route (same index), its request body converter (empty when none has one).
    converters: Vec<Option<Arc<dyn RequestConverter>>>,
}

impl<F: Connector, A, S, C> Gateway<F, A, S, C> {
    /// Assembles a pipeline. Target authorities were validated by the config layer; one that
    /// still fails to parse is a bug reported here rather than per request.
    pub fn new(parts: Parts<F, A, S, C>) -> Result<Self, String> {
        Self::after(parts, Vec::new(), &crate::limits::Tables::default())
    }

    /// Assembles the generation that replaces another (a reload). `members[i]`, when given,
    /// is upstream `i`'s target set taken over from the old generation (the same upstream,
    /// unchanged): its targets keep their health, circuits and connections. Rate-limit
    /// tables of unchanged policies are taken from `tables`.
    pub fn after(
        parts: Parts<F, A, S, C>,
        members: Vec<Option<Arc<Members<F::Conn>>>>,
        tables: &crate::limits::Tables,
    ) -> Result<Self, String> {
        let Parts {
            routes,
            upstreams,
            forwarders,
            providers,
            authenticator,
            shared_limiter,
            cache,
            trusted_proxies,
            max_header_bytes,
            max_body_bytes,
            converters,
        } = parts;
        let access = routes
            .routes()
            .iter()
            .map(|r| RouteAccess::build(r, &providers))
            .collect::<Result<Vec<_>, _>>()?;
        let (limits, tables) = crate::limits::build(routes.routes(), &upstreams, tables)?;
        let transforms = routes
            .routes()
            .iter()
            .map(|r| RouteTransforms::build(&r.transforms))
            .collect::<Result<Vec<_>, _>>()?;
        let mut carried = members.into_iter();
        let members = upstreams
            .iter()
            .zip(&forwarders)
            .map(|(u, f)| match carried.next().flatten() {
                Some(m) => Ok(ArcSwap::new(m)),
                None => Members::initial(u, f).map(ArcSwap::from_pointee),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            routes,
            upstreams,
            forwarders,
            members,
            trusted_proxies,
            max_header_bytes,
            max_body_bytes,
            providers,
            authenticator,
            shared_limiter,
            cache,
            flights: Flights::default(),
            access,
            limits,
            tables,
            transforms,
            converters,
        })
    }

    /// The rate-limit tables, for the generation that replaces this one.
    #[must_use]
    pub const fn limit_tables(&self) -> &crate::limits::Tables {
        &self.tables
    }

    /// Adds what the route's policies tell every response: CORS headers when the request's
    /// origin was allowed, `RateLimit-*` on rate-limited routes.
    pub fn decorate(&self, ex: &mut Exchange, headers: &mut http::HeaderMap) {
        if let (Some(origin), Some(route)) = (ex.cors_origin.take(), ex.route)
            && let Some(cors) = &self.access[route].cors
        {
            cors.decorate(origin, headers);
        }
        if let Some(info) = ex.rate {
            crate::limits::decorate(info, headers);
        }
        if ex.fallback.is_some() {
            headers.insert(&X_FALLBACK, HeaderValue::from_static("true"));
        }
        if let Some(result) = ex.cache {
            headers.insert(&X_CACHE, HeaderValue::from_static(result.label()));
        }
    }

    /// Applies the route's response header transform to an answer from its upstream (or
    /// its cache), not to weir's own errors.
    pub fn transform_response(&self, ex: &Exchange, headers: &mut http::HeaderMap) {
        let Some(changes) = ex.route.map(|r| &self.transforms[r].response) else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        let facts = RequestFacts::of(ex, &[], None, None);
        let rendered = changes.render(&facts);
        changes.apply(headers, rendered);
    }

    /// Upstream `id`'s current targets.
    #[must_use]
    pub fn members(&self, id: usize) -> Arc<Members<F::Conn>> {
        self.members[id].load_full()
    }

    /// Applies a discovery source's answer to upstream `id`. Requests in flight keep the set
    /// they started with. Returns whether the targets changed.
    pub fn set_targets(&self, id: usize, endpoints: &[Endpoint]) -> bool {
        let current = self.members[id].load();
        match current.update(&self.upstreams[id], &self.forwarders[id], endpoints) {
            Some(next) => {
                self.members[id].store(Arc::new(next));
                true
            }
            None => false,
        }
    }

    /// The route at `index` (from [`Outcome::Respond`] or [`Exchange::route`]).
    #[must_use]
    pub fn route(&self, index: usize) -> &Route {
        &self.routes.routes()[index]
    }
}

struct Head<'a> {
    host: Option<&'a str>,
    method_bit: u16,
    headers: &'a http::HeaderMap,
}

impl RequestHead for Head<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn method_bit(&self) -> u16 {
        self.method_bit
    }
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.headers.get(lower_name).map(HeaderValue::as_bytes)
    }
}

impl<F: Connector, A: Authenticator, S: SharedLimiter, C: ResponseCache> Gateway<F, A, S, C> {
    /// Takes a request from the edge to an upstream response (or a static one).
    pub async fn handle<B>(
        &self,
        mut req: Request<B>,
        conn: &ConnInfo,
        ex: &mut Exchange,
    ) -> Result<Outcome<F::ResBody>, GatewayError>
    where
        F: Forwarder<ReqBody<B>>,
        F::ResBody: http_body::Body<Data = Bytes> + Unpin,
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Oversized heads are refused before any work is spent on them.
        check_header_size(req.headers(), self.max_header_bytes)?;
        headers::check_host(req.version(), req.uri(), req.headers())
            .map_err(|e| GatewayError::new(ErrorKind::BadRequest, e))?;
        // Route and forward the same normalized path, so they cannot disagree.
        let path = path::normalize(req.uri().path())
            .map_err(|e| GatewayError::new(ErrorKind::BadRequest, e.to_string()))?;
        // The client address other policies and the log use; trusted proxies are looked through.
        ex.client_ip = headers::client_ip(
            conn.peer_ip,
            conn.peer_trusted,
            req.headers(),
            &self.trusted_proxies,
        );
        ex.client_subject.clone_from(&conn.client_subject);
        let host = request_host(&req);
        let head = Head {
            host: host.as_deref(),
            method_bit: MethodSet::bit(req.method().as_str()).unwrap_or(0),
            headers: req.headers(),
        };
        // A CORS preflight is routed as the request it announces; the route's policy answers
        // it, without credentials (browsers send none) and without the upstream.
        if let Some(asked) = access::preflight_method(req.method(), req.headers()) {
            let announced = Head {
                method_bit: asked,
                ..head
            };
            if let Lookup::Found(f) = self.routes.lookup(&announced, &path)
                && let Some(cors) = &self.access[f.route.index].cors
            {
                ex.route = Some(f.route.index);
                self.check_ip(f.route, ex)?;
                return cors.preflight(req.headers()).map(Outcome::Preflight);
            }
        }
        let found = match self.routes.lookup(&head, &path) {
            Lookup::Found(f) => f,
            Lookup::MethodNotAllowed(allow) => return Err(GatewayError::method_not_allowed(allow)),
            Lookup::NotFound => {
                return Err(GatewayError::new(
                    ErrorKind::RouteNotFound,
                    "no route matches this request",
                ));
            }
        };
        let route = found.route;
        if !route.allow_ambiguous_paths && path::is_ambiguous(&path) {
            return Err(GatewayError::new(
                ErrorKind::BadRequest,
                "the request path has a separator servers read differently \
                 (an encoded slash or backslash, a backslash, or `..;`)",
            ));
        }
        // Template parameters, for transforms that name them (kept past the path's borrow).
        let params: Vec<(&str, String)> =
            if route.transforms.is_empty() && !route.path_transform.reads_params() {
                Vec::new()
            } else {
                found
                    .params
                    .iter()
                    .map(|(k, v)| (*k, (*v).to_owned()))
                    .collect()
            };
        ex.route = Some(route.index);
        self.check_ip(route, ex)?;
        let route_access = &self.access[route.index];
        if let Some(cors) = &route_access.cors {
            ex.cors_origin = cors.allowed_origin(req.headers());
        }
        // Authentication comes before anything that costs the upstream, `respond:` included.
        // The provider whose credential authenticated the request, to take it out.
        let mut credential = None;
        if let Some(auth) = &route.access.auth {
            let started = phase_start(ex);
            // Boxed, as the rate-limit and cache steps below: each is kilobytes of future
            // state that every request (most take none of these steps) would otherwise carry
            // and move; a step taken pays one allocation instead.
            let authenticated = Box::pin(access::authenticate(
                auth,
                &self.providers,
                &self.authenticator,
                req.headers(),
                req.uri().query(),
            ))
            .await;
            phase_end(ex, started, |p| &mut p.auth);
            let authenticated = authenticated.map_err(|f| {
                ex.auth_failure = Some(f);
                access::failure_error(f, route_access.challenges.as_ref())
            })?;
            credential = Some(&self.providers[authenticated.provider.0].kind);
            ex.principal = Some(authenticated.principal);
        }
        // Rate limits after auth, so `key: consumer` knows who is calling.
        let route_limits = &self.limits[route.index];
        if !route_limits.is_empty() {
            let caller = Caller {
                principal: ex.principal.as_ref(),
                ip: ex.client_ip,
                headers: req.headers(),
            };
            let mut admission = Admission::default();
            let started = phase_start(ex);
            let admitted =
                Box::pin(route_limits.admit(&caller, &self.shared_limiter, &mut admission)).await;
            phase_end(ex, started, |p| &mut p.rate_limit);
            ex.rate = admission.info;
            ex.rate_overflow = admission.overflowed;
            ex.rate_store_failed = admission.store_failed;
            if let Err(e) = admitted {
                ex.rate_limited = true;
                return Err(e);
            }
        }
        // A declared body over the limit is refused before it is read; chunked bodies are
        // cut off while streaming by `LimitedBody`.
        let max_body = route.max_body_bytes.unwrap_or(self.max_body_bytes);
        if content_length(req.headers()).is_some_and(|n| n > max_body) {
            return Err(payload_too_large(max_body));
        }
        let upstream_id = match &route.action {
            RouteAction::Respond(_) => return Ok(Outcome::Respond(route.index)),
            RouteAction::Upstream(id) => id.0,
        };
        let upstream = &self.upstreams[upstream_id];
        let mut timeout = route.timeout.unwrap_or(upstream.timeouts.request);
        // A gRPC client's deadline is the call's: weir gives up when the client would.
        if let Some(deadline) = req
            .headers()
            .get(&headers::GRPC_TIMEOUT)
            .and_then(|v| grpc::parse_timeout(v.as_bytes()))
        {
            timeout = timeout.min(deadline);
        }
        // The query the upstream sees (and the cache keys on): without an API key that
        // authenticated the request through it.
        let stripped = match (
            credential.and_then(access::credential_param),
            req.uri().query(),
        ) {
            (Some(name), Some(q)) => Some(access::without_param(q, name)),
            _ => None,
        };
        let query = match &stripped {
            Some(q) => q.as_deref(),
            None => req.uri().query(),
        };
        let mut flow = None;
        let mut stale_answer = None;
        if let Some(spec) = &route.cache {
            ex.cache = Some(CacheResult::Bypass);
            if cached::eligible(spec, req.method(), req.headers()) {
                let consumer = ex
                    .principal
                    .as_ref()
                    .filter(|_| spec.per_consumer)
                    .map(|p| &*p.name);
                let key = CacheKey::new(
                    &route.name,
                    host.as_deref().map_or("", strip_port),
                    &path,
                    query,
                    &spec.vary,
                    req.headers(),
                    consumer,
                );
                let request = (req.method(), req.uri(), req.headers());
                let started = phase_start(ex);
                let looked = Box::pin(cached::look(
                    &self.cache,
                    &self.flights,
                    spec,
                    key,
                    request,
                    timeout,
                ))
                .await;
                phase_end(ex, started, |p| &mut p.cache);
                match looked {
                    Looked::Answer(reply) => {
                        ex.cache = Some(CacheResult::Hit);
                        return Ok(Outcome::Cached(reply));
                    }
                    Looked::Fetch(f) => flow = Some(*f),
                    Looked::Stale(reply, refresh) => stale_answer = Some((reply, refresh)),
                    Looked::Bypass => {}
                }
            }
        }
        // A response that may be stored for others is asked for with only what its key
        // holds: no header outside the key can shape what other clients get.
        let stored_for_others = route
            .cache
            .as_deref()
            .filter(|_| flow.is_some() || stale_answer.as_ref().is_some_and(|(_, r)| r.is_some()));
        let readable = stored_for_others.map(|spec| spec.vary.as_slice());
        // Where `consistent_hash` reads its key, before the headers change.
        let hash = upstream
            .hash_key
            .as_ref()
            .map(|k| key_hash(k, req.headers(), &path, ex.client_ip));
        // The path the upstream sees: normalized, then the route's rewrite.
        let upstream_path = if route.path_transform.is_identity() {
            path
        } else {
            Cow::Owned(route.path_transform.apply_with(&path, &params))
        };
        // `Host` as the client sent it; HTTP/2 clients name the host in :authority instead,
        // and then it must be added for the upstream.
        let (host_value, host_missing) = match req.headers().get(header::HOST) {
            Some(h) => (Some(h.clone()), false),
            None => (
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                true,
            ),
        };
        let mut path_and_query = upstream_path_and_query(req.uri(), &upstream_path, query)?;
        // A query transform runs once the headers are final, so its `${header.NAME}` reads
        // what the header transform reads (never a credential or a client's claimed identity).
        let late_query = (!route.transforms.query.is_empty())
            .then(|| (upstream_path.to_string(), query.map(str::to_owned)));
        // Hop-by-hop and client-claimed identity out; X-Forwarded-*, the request id and the
        // proven identity in (after, so a client cannot name them in `Connection` to strip
        // them).
        let upgrade = headers::is_upgrade(req.headers());
        let h = req.headers_mut();
        headers::remove_hop_by_hop(h, upgrade);
        if upstream.protocol == Protocol::Grpc {
            // gRPC servers require it: it says the client reads trailers (grpc-status).
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        access::remove_client_identity(h);
        if let Some(spec) = stored_for_others {
            cached::keep_keyed(spec, h);
        }
        if let Some(kind) = credential {
            access::remove_credential(kind, h);
        }
        headers::set_forwarded(h, conn, host_value.as_ref());
        if stored_for_others.is_some() {
            // The client's own address, as weir resolved it: not a value a client chooses.
            cached::set_client_ip(h, ex.client_ip);
        }
        h.insert(&headers::X_REQUEST_ID, ex.request_id.clone());
        let identity_keyed = stored_for_others.is_none_or(|spec| spec.per_consumer);
        if let Some(p) = ex.principal.as_ref().filter(|_| identity_keyed)
            && access::set_identity(h, p).is_err()
        {
            ex.auth_failure = Some(AuthFailure::Invalid);
            return Err(access::failure_error(
                AuthFailure::Invalid,
                self.access[route.index].challenges.as_ref(),
            ));
        }
        if host_missing && let Some(a) = host_value {
            h.insert(header::HOST, a);
        }
        let changes = &self.transforms[route.index].request;
        if !changes.is_empty() {
            let facts = RequestFacts::of(ex, &params, Some(h), readable);
            let rendered = changes.render(&facts);
            changes.apply(h, rendered);
        }
        if let Some((p, q)) = late_query {
            let facts = RequestFacts::of(ex, &params, Some(req.headers()), readable);
            let changed = route.transforms.query.apply(q.as_deref(), &facts);
            path_and_query = join_path_query(&p, changed.as_deref())?;
        }
        // Retries only where the policy allows this method; a protocol switch is never
        // retried (it is not a request/response the client could see twice).
        let retry = upstream.retry.as_ref().filter(|p| {
            !upgrade && (!p.idempotent_only || retry::is_idempotent(req.method().as_str()))
        });
        let fallback_upstream = match &route.fallback {
            Some(Fallback::Upstream(id)) => Some(id.0),
            _ => None,
        };
        let (mut head, body) = req.into_parts();
        let converter = self
            .converters
            .get(route.index)
            .and_then(Option::as_deref)
            .filter(|c| c.wants(&head));
        let body = if let Some(c) = converter {
            // Converted whole, so it can be replayed like any buffered body.
            let original = convert::buffer(body, max_body, timeout).await?;
            let out = convert::Outbound {
                head: &mut head,
                path_and_query: &mut path_and_query,
                ex,
                timeout,
            };
            let converted = c.convert(out, original)?;
            convert::set_length(&mut head, converted.len());
            if converted.is_empty() {
                Replay::Empty
            } else {
                Replay::Buffered(converted)
            }
        } else {
            let replay_wanted = retry.is_some() || fallback_upstream.is_some();
            replay_body(body, &head.headers, replay_wanted, max_body, timeout).await?
        };
        let mut out = Outgoing {
            head: Some(head),
            path_and_query,
            body,
            keep_head: fallback_upstream.is_some(),
            max_body,
        };
        if let Some((mut reply, refresh)) = stale_answer {
            // Answered stale now; the request goes to the upstream in the background.
            ex.cache = Some(CacheResult::Stale);
            reply.refresh = refresh.zip(out.head.as_ref()).map(|(flow, head)| {
                Box::new(Refresh {
                    upstream: upstream_id,
                    head: copy_head(head),
                    path_and_query: out.path_and_query.clone(),
                    hash,
                    timeout,
                    flow,
                })
            });
            return Ok(Outcome::Cached(reply));
        }
        let primary = self.dest(upstream_id);
        let started = phase_start(ex);
        let sent = tries::send(&primary, &mut out, hash, timeout, retry, ex).await;
        phase_end(ex, started, |p| &mut p.upstream);
        let failed = match sent {
            Ok((resp, in_flight)) => {
                let Some(f) = flow else {
                    return Ok(Outcome::Proxied(resp, in_flight));
                };
                return match Box::pin(f.store(&self.cache, resp, timeout)).await {
                    Stored::Reply(reply, result) => {
                        ex.cache = Some(result);
                        Ok(Outcome::Cached(*reply))
                    }
                    Stored::Pass(resp) => {
                        ex.cache = Some(CacheResult::Miss);
                        Ok(Outcome::Proxied(resp, in_flight))
                    }
                    Stored::Failed(e) => Err(e),
                };
            }
            Err(e) => e,
        };
        // Stale beats the fallback: it is this route's own answer, only older.
        if matches!(
            failed.kind,
            ErrorKind::UpstreamUnavailable | ErrorKind::BadGateway | ErrorKind::GatewayTimeout
        ) && let Some(reply) = flow.as_ref().and_then(Flow::stale_for_error)
        {
            ex.cache = Some(CacheResult::Stale);
            return Ok(Outcome::Cached(reply));
        }
        if flow.is_some() {
            ex.cache = Some(CacheResult::Miss);
        }
        // The fallback answers only what weir itself would have answered for the upstream.
        if !matches!(
            failed.kind,
            ErrorKind::UpstreamUnavailable | ErrorKind::BadGateway | ErrorKind::GatewayTimeout
        ) {
            return Err(failed);
        }
        match &route.fallback {
            None => Err(failed),
            Some(Fallback::Respond(_)) => {
                ex.fallback = Some(FallbackKind::Static);
                Ok(Outcome::Fallback(route.index))
            }
            Some(Fallback::Upstream(id)) => {
                let to = self.dest(id.0);
                let hash = to
                    .upstream
                    .hash_key
                    .as_ref()
                    .zip(out.head.as_ref())
                    .map(|(k, head)| {
                        key_hash(k, &head.headers, out.path_and_query.path(), ex.client_ip)
                    });
                let primary = (ex.upstream, ex.target.clone(), ex.target_index);
                out.keep_head = false;
                match tries::send(&to, &mut out, hash, to.upstream.timeouts.request, None, ex).await
                {
                    Ok((resp, in_flight)) => {
                        ex.fallback = Some(FallbackKind::Upstream);
                        Ok(Outcome::Proxied(resp, in_flight))
                    }
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e.detail, "fallback upstream failed too");
                        (ex.upstream, ex.target, ex.target_index) = primary;
                        Err(failed)
                    }
                }
            }
        }
    }

    /// Runs the background refresh of a stale answer: the request as it would have been
    /// forwarded, its response stored when it may be. A failure leaves the stale entry in
    /// place (and the next stale answer tries again). `B` is the client body type the
    /// forwarder speaks; a refresh sends no body.
    pub async fn revalidate<B>(&self, r: Box<Refresh>)
    where
        F: Forwarder<ReqBody<B>>,
        F::ResBody: http_body::Body<Data = Bytes> + Unpin,
    {
        let r = *r;
        let mut out: Outgoing<B> = Outgoing {
            head: Some(r.head),
            path_and_query: r.path_and_query,
            body: Replay::Empty,
            keep_head: false,
            max_body: 0,
        };
        let mut ex = Exchange::new(crate::request_id::generate(), IpAddr::from([0, 0, 0, 0]));
        let dest = self.dest(r.upstream);
        let retry = dest.upstream.retry.as_ref();
        if let Ok((resp, _in_flight)) =
            tries::send(&dest, &mut out, r.hash, r.timeout, retry, &mut ex).await
        {
            let _ = Box::pin(r.flow.store(&self.cache, resp, r.timeout)).await;
        }
    }

    fn dest(&self, id: usize) -> Dest<'_, F> {
        Dest {
            id,
            upstream: &self.upstreams[id],
            forwarder: &self.forwarders[id],
            members: self.members[id].load_full(),
        }
    }

    /// The route's `ip` lists, against the client address (trusted proxies looked through).
    fn check_ip(&self, route: &Route, ex: &mut Exchange) -> Result<(), GatewayError> {
        match &route.access.ip {
            Some(policy) if !policy.permits(ex.client_ip) => {
                ex.auth_failure = Some(AuthFailure::IpDenied);
                Err(access::failure_error(AuthFailure::IpDenied, None))
            }
            _ => Ok(()),
        }
    }
}

/// A copy of a request head, for a background request (extensions are not copied).
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

fn check_header_size(headers: &http::HeaderMap, max: usize) -> Result<(), GatewayError> {
    let mut total = 0usize;
    for (name, value) in headers {
        total += name.as_str().len() + value.len() + 4;
    }
    if total > max {
        return Err(GatewayError::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers exceed {max} bytes"),
        ));
    }
    Ok(())
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) fn payload_too_large(max: u64) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds {max} bytes"),
    )
}

/// Lower-case host without port, from `Host` or (HTTP/2) the URI authority.
fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().host()?,
    };
    let host = strip_port(raw);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn key_hash(key: &HashKey, headers: &http::HeaderMap, path: &str, ip: IpAddr) -> u64 {
    match key {
        HashKey::Header(name) => headers
            .get(name.as_str())
            .map_or(0, |v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                c.trim()
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix('='))
            })
            .map_or(0, |v| hash_key(v.as_bytes())),
        HashKey::Ip => match ip {
            IpAddr::V4(v4) => hash_key(&v4.octets()),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        },
        HashKey::Path => hash_key(path.as_bytes()),
    }
}

/// The path and query sent upstream, reusing the original bytes when neither changed.
fn upstream_path_and_query(
    original: &Uri,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, GatewayError> {
    match original.path_and_query() {
        Some(pq) if pq.path() == path && pq.query() == query => Ok(pq.clone()),
        _ => join_path_query(path, query),
    }
}

fn join_path_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
    let mut s = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(path);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).map_err(|_| {
        GatewayError::new(
            ErrorKind::BadRequest,
            "the rewritten path is not a valid URI path",
        )
    })
}

/// The request body as it will be sent: buffered when a retry or fallback may have to send
/// it again and its declared length is small enough, streamed (once) otherwise.
async fn replay_body<B>(
    body: B,
    headers: &http::HeaderMap,
    wanted: bool,
    max_body: u64,
    timeout: Duration,
) -> Result<Replay<B>, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.is_end_stream() {
        return Ok(Replay::Empty);
    }
    if !wanted || content_length(headers).is_none_or(|n| n > retry::MAX_REPLAY_BODY) {
        // Watched: how the body ended tells the client's failures and slowness from the
        // upstream's, so neither counts against a healthy target.
        return Ok(Replay::Stream(Some(
            LimitedBody::new(body, max_body).watched(),
        )));
    }
    convert::buffer(body, max_body, timeout)
        .await
        .map(Replay::Buffered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(strip_port("api.example.com:8080"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("x"), "x");
    }

    #[test]
    fn path_and_query_keeps_query_and_reuses_bytes() {
        let pq = |uri: &str, path, query| {
            upstream_path_and_query(&uri.parse().unwrap(), path, query)
                .unwrap()
                .to_string()
        };
        assert_eq!(pq("/a/b?x=1", "/a/b", Some("x=1")), "/a/b?x=1");
        assert_eq!(pq("/a/./b?x=1", "/a/b", Some("x=1")), "/a/b?x=1");
        assert_eq!(pq("/a/b?x=1&k=2", "/a/b", Some("x=1")), "/a/b?x=1");
        assert_eq!(pq("/a/b?k=2", "/a/b", None), "/a/b");
    }
}
