//! `jwt`: bearer tokens signed with an HMAC secret, a PEM public key or a key from a JWKS.
//!
//! The token's header only *selects*; it never decides. Its `alg` must be one the provider
//! accepts and must fit the key's type before any verification is tried, so an HS256 token
//! "signed" with an RSA public key as the HMAC secret (the classic confusion attack) is
//! refused outright. Verified tokens are cached per worker until they expire, so a token
//! presented again costs a SHA-256 and a map lookup instead of an RSA verification.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};
use weir_domain::auth::{Algorithm, AuthFailure, JwtKey, JwtSpec, KeyFamily, Principal, Verdict};

use super::cache::{self, WorkerCache};
use super::claims;
use super::jwks::{Jwks, Lookup};

/// Longest token looked at. Real tokens are a few hundred bytes to a few KiB; a longer one
/// is refused before any parsing, so nobody can make weir decode megabytes of base64.
pub(crate) const MAX_TOKEN: usize = 8 * 1024;

enum Keys {
    Static { key: DecodingKey, family: KeyFamily },
    Jwks(Arc<Jwks>),
}

/// A verified token, as remembered: enough to answer again without verifying.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    exp: u64,
    nbf: Option<u64>,
    /// The JWKS generation it was verified under (0 for a fixed key).
    generation: u64,
}

/// One `jwt` provider.
pub(crate) struct Tokens {
    keys: Keys,
    /// One prepared validation per accepted algorithm; the token's `alg` picks it.
    validations: Vec<(Algorithm, Validation)>,
    roles_claim: Option<String>,
    leeway: u64,
    /// [`cache::CAPACITY`] tokens per worker, each until its `exp` (plus leeway).
    verified: WorkerCache<Verified>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::Static { family, .. } => format!("{family:?} key"),
            Keys::Jwks(j) => format!("{j:?}"),
        };
        let algorithms: Vec<_> = self.validations.iter().map(|(a, _)| a.name()).collect();
        f.debug_struct("Tokens")
            .field("keys", &keys)
            .field("algorithms", &algorithms)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub(crate) fn new(provider: &str, spec: &JwtSpec, workers: usize) -> Result<Self, String> {
        if spec.algorithms.is_empty() {
            return Err("no algorithms are accepted".to_owned());
        }
        let keys = match &spec.key {
            JwtKey::Secret(secret) => Keys::Static {
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
                family: KeyFamily::Hmac,
            },
            JwtKey::PublicKey { path, pem, family } => Keys::Static {
                key: pem_key(pem, *family).map_err(|e| format!("public_key_file {path:?}: {e}"))?,
                family: *family,
            },
            JwtKey::Jwks {
                url,
                refresh,
                ca_pem,
            } => Keys::Jwks(Arc::new(Jwks::new(
                provider,
                url,
                ca_pem.as_deref(),
                *refresh,
                spec.timeout,
                workers,
            )?)),
        };
        if let Keys::Static { family, .. } = &keys
            && !spec.algorithms.iter().any(|a| a.family() == *family)
        {
            return Err(format!(
                "none of the algorithms fits the configured {family:?} key, so no token could verify"
            ));
        }
        let validations = spec
            .algorithms
            .iter()
            .map(|a| (*a, validation(*a, spec)))
            .collect();
        Ok(Self {
            keys,
            validations,
            roles_claim: spec.roles_claim.clone(),
            leeway: spec.leeway.as_secs(),
            verified: WorkerCache::new(workers, cache::CAPACITY)?,
        })
    }

    /// `token` is the text after `Bearer `.
    pub(crate) async fn verify(&self, token: &str) -> Verdict {
        if token.is_empty() {
            return Verdict::Rejected(AuthFailure::Missing);
        }
        if token.len() > MAX_TOKEN {
            return Verdict::Rejected(AuthFailure::Invalid);
        }
        // Read before any key is, so a token verified with keys older than this generation
        // is never cached under it.
        let generation = match &self.keys {
            Keys::Static { .. } => 0,
            Keys::Jwks(jwks) => {
                jwks.refresh_if_due();
                jwks.generation()
            }
        };
        let key = self.verified.key(token.as_bytes());
        if let Some(hit) = self.verified.get(&key)
            && hit.generation == generation
        {
            return match self.still_valid(&hit, claims::unix_now()) {
                Ok(()) => Verdict::Accepted(hit.principal),
                Err(f) => Verdict::Rejected(f),
            };
        }
        match self.verify_uncached(token, generation).await {
            Ok(verified) => {
                let now = claims::unix_now();
                let ttl = verified.exp.saturating_add(self.leeway).saturating_sub(now);
                let principal = verified.principal.clone();
                self.verified
                    .insert(key, verified, Duration::from_secs(ttl));
                Verdict::Accepted(principal)
            }
            Err(f) => Verdict::Rejected(f),
        }
    }

    /// The time checks again, for a token from the cache.
    fn still_valid(&self, v: &Verified, now: u64) -> Result<(), AuthFailure> {
        if v.exp.saturating_add(self.leeway) < now {
            return Err(AuthFailure::Expired);
        }
        if v.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(AuthFailure::NotYetValid);
        }
        Ok(())
    }

    async fn verify_uncached(&self, token: &str, generation: u64) -> Result<Verified, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_failure(token))?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions weir does not understand must not be ignored.
            return Err(AuthFailure::Invalid);
        }
        let alg = from_jwt(header.alg).ok_or(AuthFailure::Algorithm)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthFailure::Algorithm)?;
        let claims = match &self.keys {
            Keys::Static { key, family } => {
                if *family != alg.family() {
                    return Err(AuthFailure::Algorithm);
                }
                decode(token, key, validation)?
            }
            Keys::Jwks(jwks) => {
                let kid = header.kid.as_deref();
                let mut set = jwks.key_set().await.ok_or(AuthFailure::Unavailable)?;
                if matches!(set.find(kid, alg), Lookup::Unknown) {
                    set = jwks.refetch_for(kid, alg).await;
                }
                match set.find(kid, alg) {
                    Lookup::Found(k) => decode(token, &k.key, validation)?,
                    Lookup::WrongAlgorithm => return Err(AuthFailure::Algorithm),
                    Lookup::Unknown | Lookup::Ambiguous => return Err(AuthFailure::Invalid),
                }
            }
        };
        let principal = claims::principal(&claims, &["sub"], self.roles_claim.as_deref())?;
        Ok(Verified {
            principal,
            exp: claims::numeric_date(&claims, "exp").ok_or(AuthFailure::Invalid)?,
            nbf: claims::numeric_date(&claims, "nbf"),
            generation,
        })
    }
}

/// A PEM public key of the configured family.
fn pem_key(pem: &[u8], family: KeyFamily) -> Result<DecodingKey, String> {
    let key = match family {
        KeyFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        KeyFamily::Ec => DecodingKey::from_ec_pem(pem),
        KeyFamily::Ed => DecodingKey::from_ed_pem(pem),
        KeyFamily::Hmac => return Err("an HMAC secret is not a PEM key".to_owned()),
    }
    .map_err(|e| format!("not a {family:?} public key in PEM form ({e})"))?;
    if family == KeyFamily::Rsa {
        // jsonwebtoken only unwraps the PEM; check the key itself now, not at the first token.
        let der = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        aws_lc_rs::rsa::PublicKey::from_der(der)
            .map_err(|e| format!("not a usable RSA public key ({e})"))?;
    }
    Ok(key)
}

fn validation(alg: Algorithm, spec: &JwtSpec) -> Validation {
    let mut v = Validation::new(to_jwt(alg));
    v.leeway = spec.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken checks `iss` and `aud` only when the token has them: require them.
    let mut required = vec!["exp"];
    if let Some(iss) = &spec.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    if spec.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&spec.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthFailure> {
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| failure(e.kind()))
}

fn failure(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::Issuer,
        ErrorKind::InvalidAudience => AuthFailure::Audience,
        ErrorKind::InvalidAlgorithm => AuthFailure::Algorithm,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthFailure::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthFailure::Audience,
        _ => AuthFailure::Invalid,
    }
}

/// Why a header jsonwebtoken could not read was refused: an `alg` weir does not verify
/// (`none` above all) is an algorithm problem; anything else is a malformed token.
fn header_failure(token: &str) -> AuthFailure {
    #[derive(serde::Deserialize)]
    struct Head {
        alg: Option<Value>,
    }
    let head = token.split('.').next().unwrap_or_default();
    let Ok(json) = URL_SAFE_NO_PAD.decode(head) else {
        return AuthFailure::Invalid;
    };
    match serde_json::from_slice::<Head>(&json) {
        Ok(Head {
            alg: Some(Value::String(alg)),
        }) if Algorithm::parse(&alg).is_none() => AuthFailure::Algorithm,
        _ => AuthFailure::Invalid,
    }
}

const fn to_jwt(a: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match a {
        Algorithm::HS256 => J::HS256,
        Algorithm::HS384 => J::HS384,
        Algorithm::HS512 => J::HS512,
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        Algorithm::EdDSA => J::EdDSA,
    }
}

fn from_jwt(a: jsonwebtoken::Algorithm) -> Option<Algorithm> {
    Algorithm::ALL.into_iter().find(|d| to_jwt(*d) == a)
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
