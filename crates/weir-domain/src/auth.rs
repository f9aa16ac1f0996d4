//! Who may call a route: identity providers, consumers, the identity a request proves, the
//! reasons it can fail, and the edge policies (IP lists, CORS) that run before it.
//!
//! These are descriptions, built once from the config. Verifying a credential takes crypto
//! and I/O, so it happens in an adapter; the pipeline asks it through a port and gets a
//! [`Verdict`] back.

use std::sync::Arc;
use std::time::Duration;

use crate::net::Cidr;
use crate::route::MethodSet;

/// A value that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that needs it (a verifier, an HTTP header).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Index of a provider in [`AuthSettings::providers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProviderId(pub usize);

/// The identity providers and consumers of one configuration.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    pub providers: Vec<Provider>,
    pub consumers: Vec<Consumer>,
}

/// One entry of `auth.providers`.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
}

#[derive(Clone, Debug)]
pub enum ProviderKind {
    ApiKey(ApiKeySpec),
    Basic(BasicSpec),
    Jwt(JwtSpec),
    OAuth2(IntrospectionSpec),
}

impl ProviderKind {
    /// The scheme named in `WWW-Authenticate` when this provider's credential is missing or
    /// wrong.
    #[must_use]
    pub const fn scheme(&self) -> &'static str {
        match self {
            Self::ApiKey(_) => "ApiKey",
            Self::Basic(_) => "Basic",
            Self::Jwt(_) | Self::OAuth2(_) => "Bearer",
        }
    }
}

/// `type: api_key`: a key in a header and/or a query parameter, looked up among the
/// consumers' `api_keys`.
#[derive(Clone, Debug)]
pub struct ApiKeySpec {
    /// Lower-case header name; `None` when only the query is read.
    pub header: Option<String>,
    /// Query parameter name; `None` when only the header is read.
    pub query: Option<String>,
}

/// `type: basic`: `Authorization: Basic`, checked against the consumers' password hashes.
#[derive(Clone, Debug)]
pub struct BasicSpec {
    pub realm: String,
}

/// The JWS algorithms weir verifies. `none` is deliberately absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// What kind of key an algorithm needs; a key of another kind never verifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Algorithm {
    pub const ALL: [Self; 12] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    #[must_use]
    pub const fn family(self) -> KeyFamily {
        match self {
            Self::HS256 | Self::HS384 | Self::HS512 => KeyFamily::Hmac,
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                KeyFamily::Rsa
            }
            Self::ES256 | Self::ES384 => KeyFamily::Ec,
            Self::EdDSA => KeyFamily::Ed,
        }
    }
}

/// Where a JWT provider's verification keys come from.
#[derive(Clone, Debug)]
pub enum JwtKey {
    /// An HMAC secret (HS256/384/512).
    Secret(Secret),
    /// A PEM public key (SPKI or PKCS#1 RSA), read from `public_key_file` at load time.
    PublicKey {
        path: String,
        pem: Vec<u8>,
        family: KeyFamily,
    },
    /// A JWKS document fetched from this `http://` or `https://` URL, cached and refreshed.
    Jwks {
        url: String,
        refresh: Duration,
        /// PEM certificates trusted for an `https://` URL (`ca_file`, read at load time);
        /// `None`: the system's trust store.
        ca_pem: Option<Vec<u8>>,
    },
}

/// `type: jwt`.
#[derive(Clone, Debug)]
pub struct JwtSpec {
    pub key: JwtKey,
    /// Accepted `alg` values; a token with any other is rejected.
    pub algorithms: Vec<Algorithm>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// The token's `aud` must name one of these, when any are set.
    pub audiences: Vec<String>,
    /// Claim holding the roles (array of strings, or a space-separated string).
    pub roles_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Time allowed for a JWKS fetch.
    pub timeout: Duration,
}

/// `type: oauth2`: RFC 7662 token introspection with client credentials.
#[derive(Clone, Debug)]
pub struct IntrospectionSpec {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// PEM certificates trusted for an `https://` URL (`ca_file`, read at load time);
    /// `None`: the system's trust store.
    pub ca_pem: Option<Vec<u8>>,
    pub client_id: String,
    pub client_secret: Secret,
    /// Longest time an active token's answer is reused (it is never reused past its `exp`).
    pub cache_ttl: Duration,
    /// How long an inactive answer is reused, so a bad token cannot hammer the endpoint.
    pub negative_ttl: Duration,
    pub roles_claim: Option<String>,
    /// Time allowed for one introspection call.
    pub timeout: Duration,
}

/// A configured identity, for `api_key` and `basic` providers.
#[derive(Clone, Debug)]
pub struct Consumer {
    pub name: String,
    pub roles: Vec<String>,
    pub api_keys: Vec<ApiKey>,
    pub basic: Option<BasicCredential>,
}

/// A consumer's API key, as configured.
#[derive(Clone, Debug)]
pub enum ApiKey {
    Plain(Secret),
    /// `sha256:<hex>`: the SHA-256 digest of the key, so the file holds no key.
    Sha256([u8; 32]),
}

#[derive(Clone, Debug)]
pub struct BasicCredential {
    pub username: String,
    /// A PHC `$argon2id$...` or bcrypt `$2b$...` string.
    pub password_hash: Secret,
}

/// A route's `auth`: any listed provider may authenticate; every listed role must be held.
#[derive(Clone, Debug)]
pub struct RouteAuth {
    pub providers: Vec<ProviderId>,
    pub roles: Vec<String>,
}

/// The identity a request proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Consumer name, or the token's `sub`.
    pub name: Arc<str>,
    pub roles: Arc<[Arc<str>]>,
    /// The roles joined with `,`, as sent in `X-Consumer-Roles`; built once per identity.
    pub roles_header: Arc<str>,
}

impl Principal {
    #[must_use]
    pub fn new(name: &str, roles: &[&str]) -> Self {
        Self {
            name: Arc::from(name),
            roles: roles.iter().map(|r| Arc::from(*r)).collect(),
            roles_header: Arc::from(roles.join(",")),
        }
    }

    /// Whether every one of `required` is held.
    #[must_use]
    pub fn holds_all(&self, required: &[String]) -> bool {
        required
            .iter()
            .all(|r| self.roles.iter().any(|h| **h == **r))
    }
}

/// Why a request was not let through. The label of `weir_auth_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No credential for any of the route's providers.
    Missing,
    /// Malformed, unknown, or a signature that does not verify.
    Invalid,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    NotYetValid,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` names none of the configured audiences.
    Audience,
    /// `alg` is `none`, not in `algorithms`, or does not fit the key.
    Algorithm,
    /// The introspection endpoint says the token is not active.
    Inactive,
    /// A valid identity without a required role.
    Forbidden,
    /// The identity provider could not be asked.
    Unavailable,
    /// The client address is not allowed on the route.
    IpDenied,
}

impl AuthFailure {
    pub const ALL: [Self; 11] = [
        Self::Missing,
        Self::Invalid,
        Self::Expired,
        Self::NotYetValid,
        Self::Issuer,
        Self::Audience,
        Self::Algorithm,
        Self::Inactive,
        Self::Forbidden,
        Self::Unavailable,
        Self::IpDenied,
    ];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Algorithm => "algorithm",
            Self::Inactive => "inactive",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::IpDenied => "ip_denied",
        }
    }

    /// Position in [`Self::ALL`], for per-reason counters.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The problem's `detail`: says what was wrong, never echoes the credential.
    #[must_use]
    pub const fn detail(self) -> &'static str {
        match self {
            Self::Missing => "credentials are required",
            Self::Invalid => "the credentials are not valid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::Issuer => "the token's issuer is not accepted",
            Self::Audience => "the token's audience is not accepted",
            Self::Algorithm => "the token's algorithm is not accepted",
            Self::Inactive => "the token is not active",
            Self::Forbidden => "the identity lacks a role this route requires",
            Self::Unavailable => "the identity provider could not be reached",
            Self::IpDenied => "the client address is not allowed on this route",
        }
    }

    /// Which answer wins when several providers each fail: the most telling one. A proven
    /// identity that lacks a role wins (403), then a provider that could not be asked (503,
    /// weir fails closed), then a credential that was present but wrong, then a missing one.
    #[must_use]
    pub const fn weight(self) -> u8 {
        match self {
            Self::Forbidden | Self::IpDenied => 4,
            Self::Unavailable => 3,
            Self::Missing => 0,
            _ => 2,
        }
    }
}

/// A provider's answer for one credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted(Principal),
    Rejected(AuthFailure),
}

/// A route's `ip`: deny wins; a non-empty allow list admits only its ranges.
#[derive(Clone, Debug, Default)]
pub struct IpPolicy {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl IpPolicy {
    #[must_use]
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// A route's `cors`.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    /// Exact origins (`https://app.example.com`); empty with `any_origin` for `*`.
    pub origins: Vec<String>,
    /// `origins: ["*"]`: every origin. Never combined with `credentials`.
    pub any_origin: bool,
    /// Methods a preflight may ask for; empty: the route's methods (or every method).
    pub methods: MethodSet,
    /// Request headers a preflight may ask for (lower case); empty: any.
    pub headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

impl CorsPolicy {
    #[must_use]
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.as_bytes() == origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_must_all_be_held() {
        let p = Principal::new("acme", &["orders:read", "orders:write"]);
        assert!(p.holds_all(&["orders:read".to_owned()]));
        assert!(p.holds_all(&[]));
        assert!(!p.holds_all(&["orders:read".to_owned(), "admin".to_owned()]));
        assert_eq!(&*p.roles_header, "orders:read,orders:write");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "\"***\"");
    }

    #[test]
    fn deny_wins_and_empty_allow_admits() {
        let p = IpPolicy {
            allow: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            deny: vec![Cidr::parse("10.0.0.7").unwrap()],
        };
        assert!(p.permits("10.1.2.3".parse().unwrap()));
        assert!(!p.permits("10.0.0.7".parse().unwrap()));
        assert!(!p.permits("192.168.0.1".parse().unwrap()));
        assert!(IpPolicy::default().permits("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn algorithms_know_their_key() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
        }
        assert_eq!(Algorithm::parse("none"), None);
        assert_eq!(Algorithm::HS256.family(), KeyFamily::Hmac);
        assert_eq!(Algorithm::PS512.family(), KeyFamily::Rsa);
        assert_eq!(Algorithm::EdDSA.family(), KeyFamily::Ed);
    }

    #[test]
    fn failure_indexes_line_up() {
        for (i, f) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
