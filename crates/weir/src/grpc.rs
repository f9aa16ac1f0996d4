//! gRPC at the edge: which kind of gRPC client sent a request, and weir's own errors in
//! the form that client reads (a trailers-only response with `grpc-status`), never HTML or
//! JSON it cannot parse.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use weir_app::GatewayError;
use weir_domain::ErrorKind;
use weir_domain::grpc::code_for_http;
use weir_domain::percent;

use crate::body::Body;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// How a client speaks gRPC, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// `application/grpc` (and `+proto`, `+json`...).
    Grpc,
    /// gRPC-Web, binary: `application/grpc-web` (and `+proto`).
    Web,
    /// gRPC-Web, base64 text: `application/grpc-web-text` (and `+proto`).
    WebText,
}

impl Client {
    /// `None` for a client that is not speaking gRPC.
    #[must_use]
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
        let essence = ct.split(|&b| b == b';').next().unwrap_or_default();
        let essence = essence.trim_ascii();
        let rest = strip_prefix_ignore_case(essence, b"application/grpc")?;
        let (kind, suffix) = if let Some(r) = strip_prefix_ignore_case(rest, b"-web-text") {
            (Self::WebText, r)
        } else if let Some(r) = strip_prefix_ignore_case(rest, b"-web") {
            (Self::Web, r)
        } else {
            (Self::Grpc, rest)
        };
        (suffix.is_empty() || suffix.starts_with(b"+")).then_some(kind)
    }

    /// The content type of weir's own answers to this client.
    const fn content_type(self) -> &'static str {
        match self {
            Self::Grpc => "application/grpc",
            Self::Web => "application/grpc-web+proto",
            Self::WebText => "application/grpc-web-text+proto",
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// weir's error as a gRPC status: HTTP 200, no body, `grpc-status` and `grpc-message` in the
/// headers (a trailers-only response, which gRPC-Web clients read the same way).
#[must_use]
pub fn error_response(err: &GatewayError, client: Client) -> Response<Body> {
    let code = code_for_http(err.kind.status());
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(client.content_type()),
    );
    h.insert(&GRPC_STATUS, HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encode_message(&err.detail)) {
        h.insert(&GRPC_MESSAGE, v);
    }
    for challenge in err.challenges.iter().flat_map(|c| c.iter()) {
        h.append(header::WWW_AUTHENTICATE, challenge.clone());
    }
    if let Some(secs) = err.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// An upstream answer a gRPC client cannot read: an HTTP error without a `grpc-status`,
/// as the error weir reports for it.
#[must_use]
pub fn upstream_failure<B>(resp: &Response<B>) -> Option<GatewayError> {
    let status = resp.status();
    if status == StatusCode::OK || resp.headers().contains_key(&GRPC_STATUS) {
        return None;
    }
    let kind = match status.as_u16() {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Forbidden,
        404 | 405 | 501 => ErrorKind::RouteNotFound,
        429 => ErrorKind::RateLimited,
        504 => ErrorKind::GatewayTimeout,
        503 => ErrorKind::UpstreamUnavailable,
        _ => ErrorKind::BadGateway,
    };
    Some(GatewayError::new(
        kind,
        format!(
            "the upstream answered HTTP {} without a gRPC status",
            status.as_u16()
        ),
    ))
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    percent::encode(
        message.as_bytes(),
        |b| (0x20..=0x7e).contains(&b) && b != b'%',
        &mut out,
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(ct: &str) -> Option<Client> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        Client::of(&h)
    }

    #[test]
    fn clients_by_content_type() {
        assert_eq!(client("application/grpc"), Some(Client::Grpc));
        assert_eq!(client("application/grpc+proto"), Some(Client::Grpc));
        assert_eq!(client("Application/GRPC-Web"), Some(Client::Web));
        assert_eq!(client("application/grpc-web+proto"), Some(Client::Web));
        assert_eq!(client("application/grpc-web-text"), Some(Client::WebText));
        assert_eq!(
            client("application/grpc-web-text+proto; x=1"),
            Some(Client::WebText)
        );
        assert_eq!(client("application/grpcx"), None);
        assert_eq!(client("application/json"), None);
        assert_eq!(Client::of(&HeaderMap::new()), None);
    }

    #[test]
    fn errors_are_trailers_only_statuses() {
        let err = GatewayError::new(ErrorKind::GatewayTimeout, "50% done, ünïcode");
        let resp = error_response(&err, Client::Grpc);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[&GRPC_STATUS], "4");
        assert_eq!(
            resp.headers()[&GRPC_MESSAGE],
            "50%25 done, %C3%BCn%C3%AFcode"
        );
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc");
        let unavailable = GatewayError::new(ErrorKind::UpstreamUnavailable, "none");
        let resp = error_response(&unavailable, Client::WebText);
        assert_eq!(resp.headers()[&GRPC_STATUS], "14");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/grpc-web-text+proto"
        );
    }
}
