//! The errors weir makes itself. One closed list, so the single mapper in the `weir` crate
//! can turn every failure into the contract's problem+json without guessing.

/// Every error response weir can produce, by the contract's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    RouteNotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    HeadersTooLarge,
    BadRequest,
    RateLimited,
    UpstreamUnavailable,
    AuthUnavailable,
    BadGateway,
    GatewayTimeout,
}

impl ErrorKind {
    /// The stable machine-readable code (`code` and the tail of `type` in problem+json).
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BadRequest => "bad_request",
            Self::RateLimited => "rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::AuthUnavailable => "auth_unavailable",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The HTTP status code.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::RouteNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::PayloadTooLarge => 413,
            Self::HeadersTooLarge => 431,
            Self::BadRequest => 400,
            Self::RateLimited => 429,
            Self::UpstreamUnavailable | Self::AuthUnavailable => 503,
            Self::BadGateway => 502,
            Self::GatewayTimeout => 504,
        }
    }

    /// The status's reason phrase, used as the problem's `title`.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::RouteNotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::HeadersTooLarge => "Request Header Fields Too Large",
            Self::BadRequest => "Bad Request",
            Self::RateLimited => "Too Many Requests",
            Self::UpstreamUnavailable | Self::AuthUnavailable => "Service Unavailable",
            Self::BadGateway => "Bad Gateway",
            Self::GatewayTimeout => "Gateway Timeout",
        }
    }

    /// Who is at fault, which decides whether a retry elsewhere could help.
    #[must_use]
    pub const fn is_client_error(self) -> bool {
        self.status() < 500
    }

    pub const ALL: [Self; 12] = [
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::BadRequest,
        Self::RateLimited,
        Self::UpstreamUnavailable,
        Self::AuthUnavailable,
        Self::BadGateway,
        Self::GatewayTimeout,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_match_the_contract() {
        let mut codes: Vec<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::HeadersTooLarge.status(), 431);
        assert_eq!(ErrorKind::AuthUnavailable.status(), 503);
    }
}
