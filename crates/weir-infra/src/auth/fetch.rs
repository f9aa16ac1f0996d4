//! HTTP calls to identity providers (JWKS documents, token introspection): one endpoint, a
//! deadline over the whole exchange, a cap on the answer's size, and failure logging that
//! speaks once per change of state, not per request.
//!
//! An `http://` endpoint goes through weir's pooled upstream client; an `https://` one
//! through the identity providers' TLS client ([`super::tls`]). Either way a failure to
//! connect, TLS included, is a [`FetchError::Connect`] naming the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use weir_domain::percent;
use weir_domain::upstream::Protocol;

use super::tls::{self, HttpsClient};
use crate::client::{TargetPool, UpstreamClient, worker_index};

/// Largest answer read from an identity provider. A JWKS or an introspection answer is a
/// few KiB; anything near this is not one.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Why a call to an identity provider failed. Never holds a credential or a response body.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// No connection: refused, unreachable, or TLS failed (the message says which).
    Connect(String),
    Timeout(Duration),
    Status(http::StatusCode),
    Body(String),
    /// The answer arrived but is not what the protocol says it must be.
    Answer(&'static str),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "request failed: {e}"),
            Self::Timeout(t) => write!(f, "no complete answer within {t:?}"),
            Self::Status(s) => write!(f, "answered {s}"),
            Self::Body(e) => write!(f, "reading the answer failed: {e}"),
            Self::Answer(what) => write!(f, "bad answer: {what}"),
        }
    }
}

/// How an endpoint is reached.
enum Transport {
    /// `http://`: weir's pooled upstream client.
    Plain(UpstreamClient, Arc<TargetPool<Full<Bytes>>>),
    /// `https://`: one pooling TLS client per worker.
    Tls(Box<[HttpsClient]>),
}

/// One identity-provider URL, resolved into what its client needs.
pub(crate) struct Endpoint {
    /// Absolute `http(s)://authority/path?query`.
    uri: Uri,
    host: HeaderValue,
    transport: Transport,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Accepts `http://` and `https://host[:port]/path?query`. `ca_pem` (PEM certificates)
    /// is what an `https://` endpoint trusts, the system's trust store when `None`; `timeout`
    /// bounds connecting.
    pub(crate) fn new(
        url: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
        workers: usize,
    ) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("the URL {url:?} does not parse: {e}"))?;
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return Err(format!("the URL {url:?} is not http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("the URL {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("the URL must not carry user information".to_owned());
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("the URL {url:?} has an unusable host"))?;
        let transport = if scheme == Scheme::HTTPS {
            Transport::Tls(tls::clients(authority.host(), ca_pem, timeout, workers)?)
        } else {
            if ca_pem.is_some() {
                return Err("ca_file applies only to an https:// URL".to_owned());
            }
            let connect = connect_authority(authority);
            let client = UpstreamClient::new(Protocol::Http1, timeout, workers);
            let pool = client.pool(&connect);
            Transport::Plain(client, pool)
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e| format!("the URL {url:?} does not parse: {e}"))?;
        Ok(Self {
            uri,
            host,
            transport,
        })
    }

    /// A request to this endpoint with the URI and `Host` already set.
    pub(crate) fn request(&self, method: http::Method) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .header(HOST, self.host.clone())
    }

    /// Sends `req` and reads a 2xx answer's body (at most [`MAX_BODY`]), all within `timeout`.
    pub(crate) async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        let exchange = async {
            match &self.transport {
                Transport::Plain(client, pool) => {
                    let resp = client
                        .send(pool, req)
                        .await
                        .map_err(|e| FetchError::Connect(e.to_string()))?;
                    read(resp).await
                }
                Transport::Tls(clients) => {
                    let client = &clients[worker_index() % clients.len()];
                    let resp = client
                        .request(req)
                        .await
                        .map_err(|e| FetchError::Connect(tls::error_chain(&e)))?;
                    read(resp).await
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// A 2xx answer's body, at most [`MAX_BODY`].
async fn read<B>(resp: Response<B>) -> Result<Bytes, FetchError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?;
    Ok(body.to_bytes())
}

/// `host:port` to connect to: the URL's authority with the default port made explicit.
fn connect_authority(authority: &Authority) -> String {
    match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    }
}

/// Remembers whether an identity provider is failing, so a warning is logged when it starts
/// failing and a note when it recovers, instead of a line per request.
#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    failing: AtomicBool,
}

impl FailureLog {
    pub(crate) fn failed(&self, provider: &str, what: &'static str, error: &FetchError) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(provider, error = %error, "{what} failed; failing until it answers again");
        }
    }

    pub(crate) fn succeeded(&self, provider: &str, what: &'static str) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(provider, "{what} answers again");
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value: unreserved characters stay,
/// everything else is percent-encoded (a space too, which is always accepted).
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    percent::encode(value.as_bytes(), percent::unreserved, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_absolute_http_requests() {
        let t = Duration::from_secs(1);
        let e = Endpoint::new("http://127.0.0.1:8081/keys?x=1", None, t, 1).unwrap();
        let req = e
            .request(http::Method::GET)
            .body(Full::<Bytes>::default())
            .unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:8081/keys?x=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8081");
        let e = Endpoint::new("http://idp.example", None, t, 1).unwrap();
        let req = e
            .request(http::Method::GET)
            .body(Full::<Bytes>::default())
            .unwrap();
        assert_eq!(req.uri(), "http://idp.example/");
        assert_eq!(
            connect_authority(req.uri().authority().unwrap()),
            "idp.example:80"
        );
        assert!(Endpoint::new("ftp://idp.example/", None, t, 1).is_err());
        assert!(Endpoint::new("http://u:p@idp.example/", None, t, 1).is_err());
        assert!(Endpoint::new("/relative", None, t, 1).is_err());
        let ca = crate::auth::test_tls::TestCa::new().pem();
        let err = Endpoint::new("http://idp.example/", Some(ca.as_bytes()), t, 1).unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn https_urls_keep_their_scheme_and_host() {
        let t = Duration::from_secs(1);
        let ca = crate::auth::test_tls::TestCa::new().pem();
        let e = Endpoint::new(
            "https://id.example.com/oauth2/introspect",
            Some(ca.as_bytes()),
            t,
            2,
        )
        .unwrap();
        assert!(matches!(&e.transport, Transport::Tls(c) if c.len() == 2));
        let req = e
            .request(http::Method::POST)
            .body(Full::<Bytes>::default())
            .unwrap();
        assert_eq!(req.uri(), "https://id.example.com/oauth2/introspect");
        assert_eq!(req.headers()[HOST], "id.example.com");
        let e = Endpoint::new("https://[::1]:8443/jwks", Some(ca.as_bytes()), t, 1).unwrap();
        assert_eq!(e.uri, "https://[::1]:8443/jwks");
        let err = Endpoint::new("https://idp/", Some(b"not pem"), t, 1).unwrap_err();
        assert!(err.contains("ca_file"), "{err}");
    }

    #[test]
    fn form_encoding_escapes_all_but_unreserved() {
        assert_eq!(form_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(form_encode("a b+c/=&é"), "a%20b%2Bc%2F%3D%26%C3%A9");
    }
}
