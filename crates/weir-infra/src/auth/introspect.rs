//! `oauth2`: opaque bearer tokens checked by RFC 7662 token introspection.
//!
//! Answers are cached per worker: an active token until its `exp` or `cache_ttl`, whichever
//! comes first; an inactive one for `negative_ttl`, so a bad token cannot hammer the
//! endpoint. Concurrent requests with the same uncached token on one worker share one call.
//! When the endpoint cannot be asked, the answer is `Unavailable` (weir fails closed) and
//! nothing is cached, so the next request asks again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http_body_util::Full;
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;
use weir_domain::auth::{AuthFailure, IntrospectionSpec, Principal, Verdict};

use super::cache::{self, WorkerCache};
use super::claims;
use super::fetch::{Endpoint, FailureLog, FetchError, form_encode};
use super::jwt::MAX_TOKEN;
use crate::client::worker_index;

/// What the endpoint said about a token, as cached.
#[derive(Clone)]
enum Answer {
    Active(Principal),
    Inactive,
    /// Active, but its `exp` had already passed.
    Expired,
}

impl Answer {
    fn verdict(&self) -> Verdict {
        match self {
            Self::Active(p) => Verdict::Accepted(p.clone()),
            Self::Inactive => Verdict::Rejected(AuthFailure::Inactive),
            Self::Expired => Verdict::Rejected(AuthFailure::Expired),
        }
    }
}

type InFlight = Mutex<FxHashMap<[u8; 32], Arc<OnceCell<Verdict>>>>;

/// One `oauth2` provider.
pub(crate) struct Introspector {
    provider: Arc<str>,
    endpoint: Endpoint,
    /// `Basic` with the client credentials; marked sensitive so no debug output shows it.
    authorization: HeaderValue,
    timeout: Duration,
    cache_ttl: Duration,
    negative_ttl: Duration,
    roles_claim: Option<String>,
    /// [`cache::CAPACITY`] answers per worker.
    answers: WorkerCache<Answer>,
    /// Calls under way per worker, by token key; entries leave when their call ends, and a
    /// worker never holds more than [`cache::CAPACITY`] (beyond that, calls are not shared).
    in_flight: Box<[InFlight]>,
    log: FailureLog,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    pub(crate) fn new(
        provider: &str,
        spec: &IntrospectionSpec,
        workers: usize,
    ) -> Result<Self, String> {
        let credentials = format!(
            "{}:{}",
            form_encode(&spec.client_id),
            form_encode(spec.client_secret.expose())
        );
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
                .map_err(|_| "the client credentials do not form a header".to_owned())?;
        authorization.set_sensitive(true);
        Ok(Self {
            provider: Arc::from(provider),
            endpoint: Endpoint::new(&spec.url, spec.ca_pem.as_deref(), spec.timeout, workers)
                .map_err(|e| format!("introspection_url: {e}"))?,
            authorization,
            timeout: spec.timeout,
            cache_ttl: spec.cache_ttl,
            negative_ttl: spec.negative_ttl,
            roles_claim: spec.roles_claim.clone(),
            answers: WorkerCache::new(workers, cache::CAPACITY)?,
            in_flight: (0..workers.max(1))
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
            log: FailureLog::default(),
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
        let key = self.answers.key(token.as_bytes());
        if let Some(answer) = self.answers.get(&key) {
            return answer.verdict();
        }
        let call = self.join(key);
        // The first caller runs the call; the others wait for its verdict. If the first
        // goes away mid-call, the next waiter makes the call itself.
        let verdict = call
            .get_or_init(|| self.introspect(token, key))
            .await
            .clone();
        self.leave(&key, &call);
        verdict
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, FxHashMap<[u8; 32], Arc<OnceCell<Verdict>>>> {
        self.in_flight[worker_index() % self.in_flight.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn join(&self, key: [u8; 32]) -> Arc<OnceCell<Verdict>> {
        let mut calls = self.in_flight();
        if let Some(call) = calls.get(&key) {
            return Arc::clone(call);
        }
        if calls.len() >= cache::CAPACITY {
            // Only calls nobody waits for any more (their requests went away) can go.
            calls.retain(|_, c| Arc::strong_count(c) > 1);
        }
        let call = Arc::new(OnceCell::new());
        if calls.len() < cache::CAPACITY {
            calls.insert(key, Arc::clone(&call));
        }
        call
    }

    fn leave(&self, key: &[u8; 32], call: &Arc<OnceCell<Verdict>>) {
        let mut calls = self.in_flight();
        if calls.get(key).is_some_and(|c| Arc::ptr_eq(c, call)) {
            calls.remove(key);
        }
    }

    async fn introspect(&self, token: &str, key: [u8; 32]) -> Verdict {
        let claims = match self.ask(token).await {
            Ok(claims) => {
                self.log.succeeded(&self.provider, "token introspection");
                claims
            }
            Err(e) => {
                self.log.failed(&self.provider, "token introspection", &e);
                return Verdict::Rejected(AuthFailure::Unavailable);
            }
        };
        match self.judge(&claims, claims::unix_now()) {
            Ok((answer, ttl)) => {
                let verdict = answer.verdict();
                self.answers.insert(key, answer, ttl);
                verdict
            }
            Err(f) => Verdict::Rejected(f),
        }
    }

    /// POSTs the token and returns the answer's members; any failure to get a well-formed
    /// answer is an error, never a verdict about the token.
    async fn ask(&self, token: &str) -> Result<Map<String, Value>, FetchError> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let req = self
            .endpoint
            .request(http::Method::POST)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, self.authorization.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let body = self.endpoint.exchange(req, self.timeout).await?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|_| FetchError::Answer("not a JSON object"))?;
        if !claims.get("active").is_some_and(Value::is_boolean) {
            return Err(FetchError::Answer("no boolean \"active\" member"));
        }
        Ok(claims)
    }

    /// The answer for a well-formed introspection response, and how long to keep it.
    fn judge(
        &self,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(Answer, Duration), AuthFailure> {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Ok((Answer::Inactive, self.negative_ttl));
        }
        let exp = claims::numeric_date(claims, "exp");
        if exp.is_some_and(|exp| exp <= now) {
            return Ok((Answer::Expired, self.negative_ttl));
        }
        let principal = claims::principal(
            claims,
            &["sub", "username", "client_id"],
            self.roles_claim.as_deref(),
        )?;
        let ttl = exp.map_or(self.cache_ttl, |exp| {
            self.cache_ttl.min(Duration::from_secs(exp - now))
        });
        Ok((Answer::Active(principal), ttl))
    }
}

#[cfg(test)]
#[path = "introspect_tests.rs"]
mod tests;
