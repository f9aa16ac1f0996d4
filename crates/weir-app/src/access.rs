//! Who may call a route, in the order the checks run: the IP lists, CORS, then
//! authentication and roles. Verifying a credential is an adapter's job, asked through the
//! [`Authenticator`] port; finding the credential in the request, combining the answers of
//! several providers and deciding 401 / 403 / 503 is the pipeline's.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use weir_domain::ErrorKind;
use weir_domain::auth::{
    AuthFailure, CorsPolicy, Principal, Provider, ProviderId, ProviderKind, RouteAuth, Verdict,
};
use weir_domain::percent;
use weir_domain::route::{MethodSet, Route};

use crate::error::GatewayError;

pub static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");
pub static X_CONSUMER_ROLES: HeaderName = HeaderName::from_static("x-consumer-roles");

/// Verifies one extracted credential with one provider.
pub trait Authenticator: Send + Sync + 'static {
    /// `credential` is the API key for `api_key`, the base64 text after `Basic ` for
    /// `basic`, and the token after `Bearer ` for `jwt` and `oauth2`.
    fn verify<'a>(
        &'a self,
        provider: ProviderId,
        credential: &'a str,
    ) -> impl Future<Output = Verdict> + Send + 'a;
}

/// A route's access answers, built once at config load.
#[derive(Debug, Default)]
pub(crate) struct RouteAccess {
    /// `WWW-Authenticate` challenges, one per scheme the route accepts.
    pub(crate) challenges: Option<Arc<[HeaderValue]>>,
    pub(crate) cors: Option<Cors>,
}

impl RouteAccess {
    pub(crate) fn build(route: &Route, providers: &[Provider]) -> Result<Self, String> {
        let challenges = match &route.access.auth {
            Some(auth) => Some(challenges(auth, providers)?),
            None => None,
        };
        let cors = match &route.access.cors {
            Some(policy) => Some(Cors::build(policy, route)?),
            None => None,
        };
        Ok(Self { challenges, cors })
    }
}

fn challenges(auth: &RouteAuth, providers: &[Provider]) -> Result<Arc<[HeaderValue]>, String> {
    let mut out: Vec<HeaderValue> = Vec::new();
    for id in &auth.providers {
        let provider = providers
            .get(id.0)
            .ok_or_else(|| format!("unknown auth provider #{}", id.0))?;
        let text = match &provider.kind {
            ProviderKind::Basic(b) => format!("Basic realm=\"{}\", charset=\"UTF-8\"", b.realm),
            kind => format!("{} realm=\"weir\"", kind.scheme()),
        };
        let value = HeaderValue::from_str(&text).map_err(|_| {
            format!(
                "auth provider {}: realm is not a header value",
                provider.name
            )
        })?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out.into())
}

/// What a successful authentication leaves behind for forwarding.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub(crate) principal: Principal,
    pub(crate) provider: ProviderId,
}

/// Tries the route's providers in order; the first that accepts an identity holding every
/// required role wins. Otherwise the most telling failure is the answer.
pub(crate) async fn authenticate<A: Authenticator>(
    auth: &RouteAuth,
    providers: &[Provider],
    verifier: &A,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Authenticated, AuthFailure> {
    let mut worst = AuthFailure::Missing;
    for &id in &auth.providers {
        let Some(provider) = providers.get(id.0) else {
            continue;
        };
        let Some(credential) = credential(&provider.kind, headers, query) else {
            continue;
        };
        let failure = match verifier.verify(id, &credential).await {
            Verdict::Accepted(principal) if principal.holds_all(&auth.roles) => {
                return Ok(Authenticated {
                    principal,
                    provider: id,
                });
            }
            Verdict::Accepted(_) => AuthFailure::Forbidden,
            Verdict::Rejected(f) => f,
        };
        if failure.weight() > worst.weight() {
            worst = failure;
        }
    }
    Err(worst)
}

/// The error a failure answers with; 401s carry the route's challenges.
pub(crate) fn failure_error(
    failure: AuthFailure,
    challenges: Option<&Arc<[HeaderValue]>>,
) -> GatewayError {
    let kind = match failure {
        AuthFailure::Unavailable => ErrorKind::AuthUnavailable,
        AuthFailure::Forbidden | AuthFailure::IpDenied => ErrorKind::Forbidden,
        _ => ErrorKind::Unauthorized,
    };
    let mut err = GatewayError::new(kind, failure.detail());
    if kind == ErrorKind::Unauthorized {
        err.challenges = challenges.cloned();
    }
    err
}

/// Finds a provider's credential in the request, if the client sent one.
fn credential<'r>(
    kind: &ProviderKind,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Option<Cow<'r, str>> {
    match kind {
        ProviderKind::ApiKey(spec) => {
            let from_header = spec
                .header
                .as_deref()
                .and_then(|h| headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(Cow::Borrowed);
            from_header.or_else(|| {
                let name = spec.query.as_deref()?;
                query_param(query?, name).filter(|v| !v.is_empty())
            })
        }
        ProviderKind::Basic(_) => authorization(headers, "Basic").map(Cow::Borrowed),
        ProviderKind::Jwt(_) | ProviderKind::OAuth2(_) => {
            authorization(headers, "Bearer").map(Cow::Borrowed)
        }
    }
}

/// The parameter of `Authorization: <scheme> <parameter>`; the scheme is case-insensitive.
fn authorization<'r>(headers: &'r HeaderMap, scheme: &str) -> Option<&'r str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    (s.eq_ignore_ascii_case(scheme) && !rest.is_empty()).then_some(rest)
}

/// The first value of query parameter `name`, percent-decoded when it needs to be.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// The query without parameter `name` (every occurrence), `None` when nothing is left.
pub(crate) fn without_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let is_it = |pair: &str| pair.split_once('=').map_or(pair, |(k, _)| k) == name;
    if !query.split('&').any(is_it) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_it(p)).collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(v);
    }
    let form = percent::Decoding {
        plus_is_space: true,
        lenient: true,
        ..Default::default()
    };
    let decoded = percent::decode(v.as_bytes(), form).unwrap_or_default();
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

/// Removes every `X-Consumer*` header a client sent: only weir says who the caller is.
/// Most requests carry none, so the common case only reads the names.
pub(crate) fn remove_client_identity(headers: &mut HeaderMap) {
    // `X_Consumer` too: CGI-style servers (PHP, WSGI, Rack) read it as `HTTP_X_CONSUMER`,
    // and `X_Forwarded_For` as the `X-Forwarded-For` weir sets.
    let is_identity = |n: &HeaderName| {
        let b = n.as_str().as_bytes();
        let same = |want: &[u8]| {
            b.iter()
                .zip(want)
                .all(|(&got, &w)| got == w || (w == b'-' && got == b'_'))
        };
        (b.len() >= 10 && same(b"x-consumer"))
            || (b.contains(&b'_')
                && [
                    &b"x-forwarded-for"[..],
                    b"x-forwarded-proto",
                    b"x-forwarded-host",
                    b"x-request-id",
                ]
                .iter()
                .any(|w| w.len() == b.len() && same(w)))
    };
    if !headers.keys().any(is_identity) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_identity(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Sets `X-Consumer` and `X-Consumer-Roles` for the upstream.
pub(crate) fn set_identity(headers: &mut HeaderMap, principal: &Principal) -> Result<(), ()> {
    let name = HeaderValue::from_bytes(principal.name.as_bytes()).map_err(|_| ())?;
    headers.insert(&X_CONSUMER, name);
    if !principal.roles_header.is_empty() {
        let roles = HeaderValue::from_bytes(principal.roles_header.as_bytes()).map_err(|_| ())?;
        headers.insert(&X_CONSUMER_ROLES, roles);
    }
    Ok(())
}

/// Removes the credential header that authenticated the request when it is a password or
/// key the upstream has no business seeing. Bearer tokens travel on: upstreams often read
/// their claims.
pub(crate) fn remove_credential(kind: &ProviderKind, headers: &mut HeaderMap) {
    match kind {
        ProviderKind::ApiKey(spec) => {
            if let Some(h) = spec.header.as_deref() {
                headers.remove(h);
            }
        }
        ProviderKind::Basic(_) => {
            headers.remove(header::AUTHORIZATION);
        }
        ProviderKind::Jwt(_) | ProviderKind::OAuth2(_) => {}
    }
}

/// The query parameter that may carry the provider's credential, to remove before forwarding.
pub(crate) fn credential_param(kind: &ProviderKind) -> Option<&str> {
    match kind {
        ProviderKind::ApiKey(spec) => spec.query.as_deref(),
        _ => None,
    }
}

/// A route's CORS policy with its constant answer headers prebuilt.
#[derive(Debug)]
pub(crate) struct Cors {
    policy: CorsPolicy,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    /// Methods a preflight may ask for.
    methods: MethodSet,
}

static ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
static ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
static ACAM: HeaderName = HeaderName::from_static("access-control-allow-methods");
static ACAH: HeaderName = HeaderName::from_static("access-control-allow-headers");
static ACMA: HeaderName = HeaderName::from_static("access-control-max-age");
static ACEH: HeaderName = HeaderName::from_static("access-control-expose-headers");
static ACRM: HeaderName = HeaderName::from_static("access-control-request-method");
static ACRH: HeaderName = HeaderName::from_static("access-control-request-headers");

impl Cors {
    fn build(policy: &CorsPolicy, route: &Route) -> Result<Self, String> {
        let methods = if policy.methods.is_any() {
            if route.matcher.methods.is_any() {
                MethodSet::from_names(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
                    .unwrap_or_default()
            } else {
                route.matcher.methods
            }
        } else {
            policy.methods
        };
        let value = |s: String| {
            HeaderValue::from_str(&s).map_err(|_| format!("route {}: bad cors value", route.name))
        };
        let list = |v: &[String]| (!v.is_empty()).then(|| v.join(", "));
        Ok(Self {
            allow_methods: value(methods.names().collect::<Vec<_>>().join(", "))?,
            allow_headers: list(&policy.headers).map(value).transpose()?,
            max_age: policy
                .max_age
                .map(|d| value(d.as_secs().to_string()))
                .transpose()?,
            expose: list(&policy.expose_headers).map(value).transpose()?,
            methods,
            policy: policy.clone(),
        })
    }

    /// The origin to echo when the request's `Origin` is allowed.
    pub(crate) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.policy
            .allows_origin(origin.as_bytes())
            .then(|| origin.clone())
    }

    /// Headers on an actual (non-preflight) response to an allowed origin.
    pub(crate) fn decorate(&self, origin: HeaderValue, h: &mut HeaderMap) {
        if self.policy.any_origin {
            h.insert(&ACAO, HeaderValue::from_static("*"));
        } else {
            h.insert(&ACAO, origin);
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.policy.credentials {
            h.insert(&ACAC, HeaderValue::from_static("true"));
        }
        if let Some(e) = &self.expose {
            h.insert(&ACEH, e.clone());
        }
    }

    /// The answer to a preflight, or the reason it is refused.
    pub(crate) fn preflight(&self, req: &HeaderMap) -> Result<HeaderMap, GatewayError> {
        let forbidden = |why: &'static str| GatewayError::new(ErrorKind::Forbidden, why);
        let origin = self
            .allowed_origin(req)
            .ok_or_else(|| forbidden("the origin is not allowed on this route"))?;
        let method = req
            .get(&ACRM)
            .and_then(|m| m.to_str().ok())
            .and_then(|m| MethodSet::bit(m.trim()))
            .unwrap_or(0);
        if !self.methods.contains(method) {
            return Err(forbidden(
                "the method is not allowed for cross-origin requests",
            ));
        }
        let requested = req.get(&ACRH);
        if let (Some(asked), false) = (requested, self.policy.headers.is_empty()) {
            let ok = asked
                .as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|n| !n.is_empty())
                .all(|n| {
                    self.policy
                        .headers
                        .iter()
                        .any(|h| h.as_bytes().eq_ignore_ascii_case(n))
                });
            if !ok {
                return Err(forbidden(
                    "a requested header is not allowed for cross-origin requests",
                ));
            }
        }
        let mut h = HeaderMap::with_capacity(8);
        self.decorate(origin, &mut h);
        h.remove(&ACEH);
        h.insert(&ACAM, self.allow_methods.clone());
        match (&self.allow_headers, requested) {
            (Some(list), _) => {
                h.insert(&ACAH, list.clone());
            }
            (None, Some(asked)) => {
                h.insert(&ACAH, asked.clone());
            }
            (None, None) => {}
        }
        if let Some(age) = &self.max_age {
            h.insert(&ACMA, age.clone());
        }
        if !self.policy.any_origin || h.get(header::VARY).is_none() {
            h.append(
                header::VARY,
                HeaderValue::from_static(
                    "Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            );
        }
        Ok(h)
    }
}

/// For a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`), the
/// method it asks about: the route is chosen as if the actual request came.
pub(crate) fn preflight_method(method: &http::Method, headers: &HeaderMap) -> Option<u16> {
    if method != http::Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let asked = headers.get(&ACRM)?.to_str().ok()?;
    MethodSet::bit(asked.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("a=1&api_key=k%2By&b", "api_key").as_deref(),
            Some("k+y")
        );
        assert_eq!(query_param("a=1", "api_key"), None);
        assert_eq!(
            without_param("a=1&api_key=k&b=2", "api_key").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(without_param("api_key=k", "api_key"), None);
        assert_eq!(without_param("a=1", "api_key").as_deref(), Some("a=1"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn bearer_and_basic() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc.def"),
        );
        assert_eq!(authorization(&h, "Bearer"), Some("abc.def"));
        assert_eq!(authorization(&h, "Basic"), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(authorization(&h, "Bearer"), None);
    }

    #[test]
    fn client_identity_is_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-consumer", HeaderValue::from_static("admin"));
        h.insert("x-consumer-roles", HeaderValue::from_static("admin"));
        h.insert("x-consumerid", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        remove_client_identity(&mut h);
        assert_eq!(h.len(), 1);
    }
}
