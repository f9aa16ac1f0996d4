//! Errors as values: every phase returns one, and the `weir` crate renders it once.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderValue;

use weir_domain::ErrorKind;
use weir_domain::route::MethodSet;

/// A failure weir answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// Human-readable; never a secret or an upstream's internal address.
    pub detail: Cow<'static, str>,
    /// For 405: the methods to list in `Allow`.
    pub allow: Option<MethodSet>,
    /// For 401: the `WWW-Authenticate` challenges, one per accepted scheme.
    pub challenges: Option<Arc<[HeaderValue]>>,
    /// For 429: seconds until a request would pass (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl GatewayError {
    #[must_use]
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            allow: None,
            challenges: None,
            retry_after: None,
        }
    }

    #[must_use]
    pub fn method_not_allowed(allow: MethodSet) -> Self {
        Self {
            kind: ErrorKind::MethodNotAllowed,
            detail: Cow::Borrowed("the route does not accept this method"),
            allow: Some(allow),
            challenges: None,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)
    }
}

impl std::error::Error for GatewayError {}
