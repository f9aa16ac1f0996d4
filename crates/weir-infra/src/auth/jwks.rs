//! A JWT provider's keys from a JWKS URL: fetched on first use, refreshed in the background
//! when older than `refresh`, and fetched again early (at most once per 10 s) when a token
//! names a key id the set does not have, which is how a key rotation shows up.
//!
//! Fetches are coalesced: at most one is in flight per provider, and requests that need its
//! result wait for it (bounded by the provider's timeout) instead of starting their own, so
//! a storm of tokens with random key ids is not a storm of fetches. The lock that serializes
//! fetches is a `tokio::sync::Mutex`, which works across the per-worker runtimes; the key
//! set itself is an `Arc` behind a `std` `RwLock`, read only when a token is not in the
//! verified-token cache. A failed refresh keeps the last good keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use weir_domain::auth::{Algorithm, KeyFamily};

use super::fetch::{Endpoint, FailureLog, FetchError};

/// A token with an unknown key id triggers a fetch only if the last one started at least
/// this long ago.
const UNKNOWN_KID_GAP: Duration = Duration::from_secs(10);
/// While no key set was ever fetched, how often requests may try again. Without it, an
/// identity provider that refuses connections at once would see one fetch per request.
const EMPTY_RETRY_GAP: Duration = Duration::from_secs(1);

/// One verification key from the set.
pub(crate) struct JwksKey {
    kid: Option<String>,
    pub(crate) key: DecodingKey,
    family: KeyFamily,
    /// The only algorithm this key verifies, when the JWK says (`alg`) or its curve implies.
    alg: Option<Algorithm>,
}

impl JwksKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one fetch.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<JwksKey>,
    /// The JWKs the keys came from, to tell whether a fetch changed anything.
    source: Vec<Jwk>,
    fetched: Option<Instant>,
}

/// What a token's `kid` finds in a key set.
pub(crate) enum Lookup<'a> {
    Found(&'a JwksKey),
    /// The key exists but is for another algorithm or key type.
    WrongAlgorithm,
    /// No key with that id: perhaps a newer set has it.
    Unknown,
    /// No `kid` and not exactly one key to fall back on.
    Ambiguous,
}

impl KeySet {
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let Some(kid) = kid else {
            return match self.keys.as_slice() {
                [only] if only.accepts(alg) => Lookup::Found(only),
                [_] => Lookup::WrongAlgorithm,
                _ => Lookup::Ambiguous,
            };
        };
        let mut named = self
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .peekable();
        if named.peek().is_none() {
            return Lookup::Unknown;
        }
        named
            .find(|k| k.accepts(alg))
            .map_or(Lookup::WrongAlgorithm, Lookup::Found)
    }
}

/// The JWKS of one provider.
pub(crate) struct Jwks {
    provider: Arc<str>,
    endpoint: Endpoint,
    refresh: Duration,
    timeout: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped whenever a fetch brings a different key set; tokens verified under an older
    /// generation are verified again.
    generation: AtomicU64,
    /// Origin of the millisecond clock below.
    epoch: Instant,
    /// When (ms since `epoch`) a background refresh is due; never before the first fetch.
    refresh_due: AtomicU64,
    refreshing: AtomicBool,
    /// Held while fetching: one fetch at a time per provider.
    fetching: tokio::sync::Mutex<()>,
    /// Finished fetch attempts, so a request that waited for a fetch uses its result.
    attempts: AtomicU64,
    last_start: Mutex<Option<Instant>>,
    log: FailureLog,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("endpoint", &self.endpoint)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// `ca_pem`: the certificates an `https://` URL is checked against (`ca_file`), the
    /// system's trust store when `None`.
    pub(crate) fn new(
        provider: &str,
        url: &str,
        ca_pem: Option<&[u8]>,
        refresh: Duration,
        timeout: Duration,
        workers: usize,
    ) -> Result<Self, String> {
        Ok(Self {
            provider: Arc::from(provider),
            endpoint: Endpoint::new(url, ca_pem, timeout, workers)
                .map_err(|e| format!("jwks_url: {e}"))?,
            refresh,
            timeout,
            keys: RwLock::new(Arc::default()),
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
            refresh_due: AtomicU64::new(u64::MAX),
            refreshing: AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_start: Mutex::new(None),
            log: FailureLog::default(),
        })
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts a background refresh when the keys are due for one. Cheap when they are not
    /// (one atomic load), so it runs on every request, cached tokens included: otherwise a
    /// gateway serving only cached tokens would never notice a key being withdrawn.
    pub(crate) fn refresh_if_due(self: &Arc<Self>) {
        if self.now_ms() < self.refresh_due.load(Ordering::Relaxed)
            || self.refreshing.swap(true, Ordering::Acquire)
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        // The guard travels in the task, so the flag clears however the task ends, even
        // if it is dropped before it ever runs.
        let guard = Refreshing(Arc::clone(self));
        rt.spawn(async move {
            let this = &guard.0;
            let due = |_: &KeySet| this.now_ms() >= this.refresh_due.load(Ordering::Relaxed);
            this.fetch_coalesced(Duration::ZERO, due).await;
        });
    }

    /// The keys to verify with, fetched now if there never were any. `None`: there are no
    /// keys and the identity provider could not give any.
    pub(crate) async fn key_set(&self) -> Option<Arc<KeySet>> {
        let set = self.current();
        if set.fetched.is_some() {
            return Some(set);
        }
        let set = self
            .fetch_coalesced(EMPTY_RETRY_GAP, |s| s.fetched.is_none())
            .await;
        set.fetched.is_some().then_some(set)
    }

    /// A token named a key id the set lacks: fetch again unless a fetch started within the
    /// last 10 s, and return the newest set either way.
    pub(crate) async fn refetch_for(&self, kid: Option<&str>, alg: Algorithm) -> Arc<KeySet> {
        self.fetch_coalesced(UNKNOWN_KID_GAP, |s| {
            matches!(s.find(kid, alg), Lookup::Unknown)
        })
        .await
    }

    /// Fetches unless another fetch finished while this one waited its turn, the fetch is no
    /// longer `needed`, or the last one started less than `min_gap` ago.
    async fn fetch_coalesced(
        &self,
        min_gap: Duration,
        needed: impl Fn(&KeySet) -> bool,
    ) -> Arc<KeySet> {
        let seen = self.attempts.load(Ordering::Acquire);
        let Ok(_turn) = tokio::time::timeout(self.timeout, self.fetching.lock()).await else {
            return self.current();
        };
        let current = self.current();
        if self.attempts.load(Ordering::Acquire) != seen || !needed(&current) {
            return current;
        }
        {
            let mut last = self
                .last_start
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < min_gap) {
                return current;
            }
            *last = Some(Instant::now());
        }
        let fetched = self.fetch().await;
        self.store(fetched);
        self.attempts.fetch_add(1, Ordering::Release);
        self.current()
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let req = self
            .endpoint
            .request(http::Method::GET)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let body = self.endpoint.exchange(req, self.timeout).await?;
        parse(&body)
    }

    fn store(&self, fetched: Result<KeySet, FetchError>) {
        match fetched {
            Ok(set) => {
                let changed = !same_keys(&self.current().source, &set.source);
                let count = set.keys.len();
                // Keys first, generation second: a request that reads the new generation
                // then reads the new keys, so nothing is cached under a generation whose
                // keys it was not verified with.
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                if changed {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(provider = %self.provider, keys = count, "JWKS key set loaded");
                }
                let due = self.now_ms().saturating_add(millis(self.refresh));
                self.refresh_due.store(due, Ordering::Relaxed);
                self.log.succeeded(&self.provider, "JWKS fetch");
            }
            Err(e) => {
                if self.current().fetched.is_some() {
                    // Keep serving the last good keys; try again a little later.
                    let retry = millis(self.refresh.min(UNKNOWN_KID_GAP));
                    self.refresh_due
                        .store(self.now_ms().saturating_add(retry), Ordering::Relaxed);
                }
                self.log.failed(&self.provider, "JWKS fetch", &e);
            }
        }
    }
}

#[cfg(test)]
impl Jwks {
    /// Pretends the last fetch started `by` earlier, instead of waiting for the gaps.
    pub(crate) fn age_last_fetch(&self, by: Duration) {
        let mut last = self
            .last_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = last.and_then(|t| t.checked_sub(by));
    }
}

/// Whether two fetches brought the same keys, in any order (some providers shuffle them).
fn same_keys(a: &[Jwk], b: &[Jwk]) -> bool {
    a.len() == b.len() && a.iter().all(|k| b.contains(k))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Clears the refreshing flag when the refresh task ends.
struct Refreshing(Arc<Jwks>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

/// The usable signing keys of a JWKS document; none is an error (a provider without keys
/// would reject every token, so the last good set is better).
fn parse(body: &[u8]) -> Result<KeySet, FetchError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|_| FetchError::Answer("not a JWKS document"))?;
    let mut set = KeySet::default();
    // One key jsonwebtoken cannot read (an unknown curve, a private field) must not cost
    // the others, so keys are read one by one.
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = usable(&jwk) {
            set.keys.push(key);
            set.source.push(jwk);
        }
    }
    if set.keys.is_empty() {
        return Err(FetchError::Answer("no usable signing keys"));
    }
    set.fetched = Some(Instant::now());
    Ok(set)
}

/// The key a JWK describes, if it is for verifying signatures with an algorithm weir knows.
fn usable(jwk: &Jwk) -> Option<JwksKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return None;
    }
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (KeyFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (KeyFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (KeyFamily::Ec, Some(Algorithm::ES384)),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (KeyFamily::Ed, None)
        }
        AlgorithmParameters::OctetKey(_) => (KeyFamily::Hmac, None),
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::parse(&a.to_string())?),
        None => implied,
    };
    if alg.is_some_and(|a| a.family() != family) || (implied.is_some() && alg != implied) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwksKey {
        kid: jwk.common.key_id.clone(),
        key,
        family,
        alg,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn set(doc: &serde_json::Value) -> Result<KeySet, FetchError> {
        parse(doc.to_string().as_bytes())
    }

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn unusable_keys_are_skipped_and_the_rest_kept() {
        let s = set(&json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": N, "e": "AQAB"},
            {"kty": "RSA", "kid": "mixed", "alg": "ES256", "n": N, "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "weird", "kid": "w"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        ]}))
        .unwrap();
        let kids: Vec<_> = s.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("rsa"), Some("h")]);
        assert!(matches!(
            s.find(Some("rsa"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        // The JWK says RS256: PS256 with it is refused, as is HS256 (the confusion attack).
        assert!(matches!(
            s.find(Some("rsa"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            s.find(Some("rsa"), Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            s.find(Some("nope"), Algorithm::RS256),
            Lookup::Unknown
        ));
        assert!(matches!(s.find(None, Algorithm::RS256), Lookup::Ambiguous));
    }

    #[test]
    fn key_order_does_not_make_a_new_set() {
        let a = set(&json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": N, "e": "AQAB"},
            {"kty": "oct", "kid": "b", "k": "c2VjcmV0"},
        ]}))
        .unwrap();
        let b = set(&json!({"keys": [
            {"kty": "oct", "kid": "b", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "a", "n": N, "e": "AQAB"},
        ]}))
        .unwrap();
        assert!(same_keys(&a.source, &b.source));
        assert!(!same_keys(&a.source, &b.source[..1]));
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(set(&json!({"keys": []})).is_err());
        assert!(
            set(&json!({"keys": [{"kty": "RSA", "use": "enc", "n": N, "e": "AQAB"}]})).is_err()
        );
        assert!(set(&json!({"nokeys": 1})).is_err());
        assert!(parse(b"<html>").is_err());
    }

    #[test]
    fn a_lone_key_serves_tokens_without_kid() {
        let s = set(&json!({"keys": [{"kty": "RSA", "n": N, "e": "AQAB"}]})).unwrap();
        assert!(matches!(s.find(None, Algorithm::PS256), Lookup::Found(_)));
        assert!(matches!(
            s.find(None, Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
    }
}
