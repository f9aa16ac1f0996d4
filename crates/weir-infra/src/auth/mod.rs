//! Identity providers: API keys, Basic passwords, JWTs (secret, PEM key or JWKS) and OAuth2
//! token introspection, each turning one extracted credential into a [`Verdict`].

use std::future::Future;

use weir_domain::auth::{AuthFailure, AuthSettings, ProviderId, Verdict};

/// Every provider of one configuration, ready to verify.
#[derive(Debug)]
pub struct Authenticators {
    count: usize,
}

impl Authenticators {
    /// Builds the verifiers (parses keys, indexes consumers). No I/O; JWKS documents are
    /// fetched on first use.
    pub fn new(settings: &AuthSettings, workers: usize) -> Result<Self, String> {
        let _ = workers;
        Ok(Self {
            count: settings.providers.len(),
        })
    }

    /// Verifies `credential` with provider `id`. The credential is what the pipeline
    /// extracted for the provider's kind: the key for `api_key`, the base64 text after
    /// `Basic ` for `basic`, the token after `Bearer ` for `jwt` and `oauth2`.
    pub fn verify<'a>(
        &'a self,
        id: ProviderId,
        credential: &'a str,
    ) -> impl Future<Output = Verdict> + Send + 'a {
        let _ = (id, credential, self.count);
        async { Verdict::Rejected(AuthFailure::Unavailable) }
    }
}
