//! Identity providers: API keys, Basic passwords, JWTs (secret, PEM key or JWKS) and OAuth2
//! token introspection, each turning one extracted credential into a [`Verdict`].
//!
//! Everything that can be prepared is prepared in [`Authenticators::new`]: keys parsed,
//! consumers indexed, one principal built per consumer. Per request, a provider answers from
//! its per-worker cache when it can (one SHA-256 and a map lookup), and otherwise verifies
//! and remembers. Nothing here logs or returns a credential.

mod api_key;
mod basic;
mod cache;
mod claims;
mod fetch;
mod introspect;
mod jwks;
mod jwt;
#[cfg(test)]
mod test_server;
#[cfg(test)]
pub(crate) mod test_tls;
pub(crate) mod tls;
#[cfg(test)]
mod tls_tests;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use weir_domain::auth::{AuthFailure, AuthSettings, Principal, ProviderId, ProviderKind, Verdict};

use self::api_key::ApiKeys;
use self::basic::Passwords;
use self::introspect::Introspector;
use self::jwt::Tokens;

/// Every provider of one configuration, ready to verify.
#[derive(Debug)]
pub struct Authenticators {
    providers: Box<[Verifier]>,
}

#[derive(Debug)]
enum Verifier {
    // The consumers are the same for every api_key (and every basic) provider, so those
    // providers share one index and one cache.
    ApiKey(Arc<ApiKeys>),
    Basic(Arc<Passwords>),
    Jwt(Box<Tokens>),
    OAuth2(Box<Introspector>),
}

impl Authenticators {
    /// Builds the verifiers (parses keys, indexes consumers, sets up TLS). No network I/O:
    /// JWKS documents are fetched on first use. An `https://` provider without `ca_file`
    /// reads the system's trust store here, and fails when it holds no certificate.
    pub fn new(settings: &AuthSettings, workers: usize) -> Result<Self, String> {
        // jsonwebtoken panics at the first verification if it cannot tell which crypto
        // backend to use (say, when feature unification enables two); name it explicitly.
        // An error only means a provider is already installed, which is just as good.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let workers = workers.max(1);
        let principals: Arc<[Principal]> = settings
            .consumers
            .iter()
            .map(|c| {
                let roles: Vec<&str> = c.roles.iter().map(String::as_str).collect();
                Principal::new(&c.name, &roles)
            })
            .collect();
        let mut api_keys = None;
        let mut passwords = None;
        let mut providers = Vec::with_capacity(settings.providers.len());
        for provider in &settings.providers {
            let named = |e: String| format!("auth provider {:?}: {e}", provider.name);
            let verifier = match &provider.kind {
                ProviderKind::ApiKey(_) => Verifier::ApiKey(match &api_keys {
                    Some(k) => Arc::clone(k),
                    None => {
                        let k = Arc::new(
                            ApiKeys::new(&settings.consumers, Arc::clone(&principals))
                                .map_err(named)?,
                        );
                        api_keys.insert(k).clone()
                    }
                }),
                ProviderKind::Basic(_) => Verifier::Basic(match &passwords {
                    Some(p) => Arc::clone(p),
                    None => {
                        let p = Arc::new(
                            Passwords::new(
                                &settings.consumers,
                                Arc::clone(&principals),
                                Arc::new(Semaphore::new(hash_permits())),
                                workers,
                            )
                            .map_err(named)?,
                        );
                        passwords.insert(p).clone()
                    }
                }),
                ProviderKind::Jwt(spec) => Verifier::Jwt(Box::new(
                    Tokens::new(&provider.name, spec, workers).map_err(named)?,
                )),
                ProviderKind::OAuth2(spec) => Verifier::OAuth2(Box::new(
                    Introspector::new(&provider.name, spec, workers).map_err(named)?,
                )),
            };
            providers.push(verifier);
        }
        Ok(Self {
            providers: providers.into_boxed_slice(),
        })
    }

    /// Verifies `credential` with provider `id`. The credential is what the pipeline
    /// extracted for the provider's kind: the key for `api_key`, the base64 text after
    /// `Basic ` for `basic`, the token after `Bearer ` for `jwt` and `oauth2`.
    #[allow(
        clippy::manual_async_fn,
        reason = "the signature promises `Send`, which an `async fn` cannot state"
    )]
    pub fn verify<'a>(
        &'a self,
        id: ProviderId,
        credential: &'a str,
    ) -> impl Future<Output = Verdict> + Send + 'a {
        async move {
            match self.providers.get(id.0) {
                Some(Verifier::ApiKey(v)) => v.verify(credential),
                Some(Verifier::Basic(v)) => v.verify(credential).await,
                Some(Verifier::Jwt(v)) => v.verify(credential).await,
                Some(Verifier::OAuth2(v)) => v.verify(credential).await,
                // A provider id from another configuration: nothing can decide, so refuse.
                None => Verdict::Rejected(AuthFailure::Unavailable),
            }
        }
    }
}

/// Password hashes checked at once, across all workers: twice the cores, so the cores stay
/// busy while a flood of wrong passwords waits its turn instead of taking every thread.
fn hash_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_domain::auth::{
        Algorithm, ApiKey, ApiKeySpec, BasicSpec, Consumer, JwtKey, JwtSpec, KeyFamily, Provider,
        Secret,
    };

    use super::*;

    fn settings(providers: Vec<(&str, ProviderKind)>) -> AuthSettings {
        AuthSettings {
            providers: providers
                .into_iter()
                .map(|(name, kind)| Provider {
                    name: name.to_owned(),
                    kind,
                })
                .collect(),
            consumers: vec![Consumer {
                name: "acme".to_owned(),
                roles: vec!["orders:read".to_owned()],
                api_keys: vec![ApiKey::Plain(Secret::new("k1".to_owned()))],
                basic: None,
            }],
        }
    }

    fn jwt(key: JwtKey) -> ProviderKind {
        ProviderKind::Jwt(JwtSpec {
            key,
            algorithms: vec![Algorithm::RS256],
            issuer: None,
            audiences: vec![],
            roles_claim: None,
            leeway: Duration::ZERO,
            timeout: Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn providers_answer_by_id() {
        let auth = Authenticators::new(
            &settings(vec![
                (
                    "keys",
                    ProviderKind::ApiKey(ApiKeySpec {
                        header: Some("x-api-key".to_owned()),
                        query: None,
                    }),
                ),
                (
                    "staff",
                    ProviderKind::Basic(BasicSpec {
                        realm: "staff".to_owned(),
                    }),
                ),
            ]),
            2,
        )
        .unwrap();
        match auth.verify(ProviderId(0), "k1").await {
            Verdict::Accepted(p) => assert_eq!(&*p.roles_header, "orders:read"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            auth.verify(ProviderId(0), "k2").await,
            Verdict::Rejected(AuthFailure::Invalid)
        );
        assert_eq!(
            auth.verify(ProviderId(0), "").await,
            Verdict::Rejected(AuthFailure::Missing)
        );
        // No consumer has a password.
        assert_eq!(
            auth.verify(ProviderId(1), "YTpi").await,
            Verdict::Rejected(AuthFailure::Invalid)
        );
        assert_eq!(
            auth.verify(ProviderId(1), "").await,
            Verdict::Rejected(AuthFailure::Missing)
        );
        assert_eq!(
            auth.verify(ProviderId(7), "k1").await,
            Verdict::Rejected(AuthFailure::Unavailable)
        );
    }

    #[test]
    fn load_errors_name_the_provider_and_keep_secrets_out() {
        let bad_pem = JwtKey::PublicKey {
            path: "corp.pem".to_owned(),
            pem: b"not a pem".to_vec(),
            family: KeyFamily::Rsa,
        };
        let err = Authenticators::new(&settings(vec![("corp", jwt(bad_pem))]), 1).unwrap_err();
        assert!(
            err.starts_with("auth provider \"corp\": public_key_file \"corp.pem\""),
            "{err}"
        );

        let ftp = JwtKey::Jwks {
            url: "ftp://id.example/jwks".to_owned(),
            refresh: Duration::from_secs(60),
            ca_pem: None,
        };
        let err = Authenticators::new(&settings(vec![("corp", jwt(ftp))]), 1).unwrap_err();
        assert!(err.contains("auth provider \"corp\": jwks_url"), "{err}");
        let bad_ca = JwtKey::Jwks {
            url: "https://id.example/jwks".to_owned(),
            refresh: Duration::from_secs(60),
            ca_pem: Some(b"no certificate here".to_vec()),
        };
        let err = Authenticators::new(&settings(vec![("corp", jwt(bad_ca))]), 1).unwrap_err();
        assert!(
            err.starts_with("auth provider \"corp\": jwks_url: ca_file"),
            "{err}"
        );

        let mut s = settings(vec![(
            "keys",
            ProviderKind::ApiKey(ApiKeySpec {
                header: None,
                query: Some("k".to_owned()),
            }),
        )]);
        let mut twin = s.consumers[0].clone();
        twin.name = "twin".to_owned();
        s.consumers.push(twin);
        let err = Authenticators::new(&s, 1).unwrap_err();
        assert!(err.starts_with("auth provider \"keys\""), "{err}");
        assert!(!err.contains("k1"), "{err}");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let s = settings(vec![
            (
                "keys",
                ProviderKind::ApiKey(ApiKeySpec {
                    header: None,
                    query: Some("k".to_owned()),
                }),
            ),
            (
                "hs",
                ProviderKind::Jwt(JwtSpec {
                    key: JwtKey::Secret(Secret::new("hmac-secret".to_owned())),
                    algorithms: vec![Algorithm::HS256],
                    issuer: None,
                    audiences: vec![],
                    roles_claim: None,
                    leeway: Duration::ZERO,
                    timeout: Duration::from_secs(1),
                }),
            ),
        ]);
        let text = format!("{:?}", Authenticators::new(&s, 1).unwrap());
        assert!(
            !text.contains("hmac-secret") && !text.contains("k1"),
            "{text}"
        );
    }
}
