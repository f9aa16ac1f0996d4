//! The cache step of the pipeline, on routes with `cache`: look the request up before it is
//! forwarded, and store what comes back.
//!
//! - A fresh entry is the answer (`HIT`), without touching the upstream.
//! - An entry past freshness but within `stale_while_revalidate` is the answer too
//!   (`STALE`), and one request refreshes it in the background.
//! - Otherwise the request goes to the upstream, coalesced with concurrent misses of its key
//!   ([`Flights`]); its response is stored when the HTTP rules allow ([`policy`]) and its
//!   body is known to fit `max_body`.
//! - When that fails (the upstream is unavailable, its circuit open, it timed out, or it
//!   answered 500/502/503/504) an entry within `stale_if_error` is the answer (`STALE`),
//!   before the route's `fallback`.
//! - A request that cannot use the cache (a method other than GET and HEAD, credentials on a
//!   route without `per_consumer`, a protocol upgrade) or a store that is down goes straight
//!   to the upstream (`BYPASS`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use weir_domain::cache::CacheSpec;

use crate::cache::flights::{Flights, Join, Lead};
use crate::cache::policy::{self, Verdict};
use crate::cache::{CacheKey, Entry, ResponseCache, unix_ms};
use crate::error::GatewayError;
use weir_domain::ErrorKind;

/// How a cache route's request was served: the `X-Cache` header and the `result` label of
/// `weir_cache_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    Hit = 0,
    Miss = 1,
    Stale = 2,
    Bypass = 3,
}

impl CacheResult {
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Bypass => "BYPASS",
        }
    }
}

/// A response served from the cache.
#[derive(Debug)]
pub struct Reply {
    pub entry: Arc<Entry>,
    /// A HEAD: the stored head without the body.
    pub head_only: bool,
    /// A stale answer's background refresh, for the caller to spawn with
    /// `Gateway::revalidate`.
    pub refresh: Option<Box<Refresh>>,
}

impl Reply {
    /// The response head to send: the stored headers with `Age` and `Content-Length`.
    #[must_use]
    pub fn head(&self, now: u64) -> (StatusCode, HeaderMap) {
        let mut headers = self.entry.headers.clone();
        headers.insert(header::AGE, self.entry.age(now).into());
        headers.insert(header::CONTENT_LENGTH, self.entry.body.len().into());
        (self.entry.status, headers)
    }

    /// The body to send (empty for a HEAD).
    #[must_use]
    pub fn body(&self) -> Bytes {
        if self.head_only {
            Bytes::new()
        } else {
            self.entry.body.clone()
        }
    }

    /// The stored body even for a HEAD (whose headers describe it), and whether only the
    /// head is sent.
    #[must_use]
    pub fn stored_body(&self) -> (Bytes, bool) {
        (self.entry.body.clone(), self.head_only)
    }
}

/// A refresh to run after a stale answer: the request as it would have been forwarded.
#[derive(Debug)]
pub struct Refresh {
    pub(crate) upstream: usize,
    pub(crate) head: http::request::Parts,
    pub(crate) path_and_query: http::uri::PathAndQuery,
    pub(crate) hash: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) flow: Box<Flow>,
}

/// What a lookup decided.
pub(crate) enum Looked {
    /// Answer with this.
    Answer(Reply),
    /// Go to the upstream, then [`Flow::store`].
    Fetch(Box<Flow>),
    /// Answer with this stale entry now; the flow, when there is one, refreshes it.
    Stale(Reply, Option<Box<Flow>>),
    /// Go to the upstream as if the route had no cache.
    Bypass,
}

/// A cache route's request on its way to the upstream.
#[derive(Debug)]
pub(crate) struct Flow {
    key: CacheKey,
    spec: Arc<CacheSpec>,
    /// Set when this request fetches for the concurrent misses of its key.
    lead: Option<Lead>,
    /// A stored entry past freshness, kept for `stale_if_error`.
    stale: Option<Arc<Entry>>,
    head_only: bool,
    uri: Uri,
    /// The request's own cache directives (its `no-store` is honoured).
    directives: HeaderMap,
}

/// Keeps, of a request whose response may be stored for others, only the headers its key
/// holds (and the few that say how it is fetched, not what it is): `Host`, the route's
/// `vary` headers, `Cache-Control` and `Pragma`, `X-Forwarded-Proto` (kept only from
/// trusted proxies, later), and `Authorization` when the consumer is in the key.
pub(crate) fn keep_keyed(spec: &CacheSpec, headers: &mut HeaderMap) {
    let mut kept = HeaderMap::with_capacity(spec.vary.len() + 4);
    let mut keep = |name: &str| {
        for v in headers.get_all(name) {
            if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) {
                kept.append(n, v.clone());
            }
        }
    };
    for name in ["host", "cache-control", "pragma", "x-forwarded-proto"] {
        keep(name);
    }
    if spec.per_consumer {
        keep("authorization");
    }
    for name in &spec.vary {
        keep(name);
    }
    *headers = kept;
}

/// `X-Forwarded-For` of a request whose response may be stored: the client's address alone.
pub(crate) fn set_client_ip(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    if let Ok(v) = http::HeaderValue::from_str(&ip.to_string()) {
        headers.insert(&crate::headers::X_FORWARDED_FOR, v);
    }
}

/// Whether a request can use the cache at all, before its key is built.
#[must_use]
pub(crate) fn eligible(spec: &CacheSpec, method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (spec.per_consumer || !headers.contains_key(header::AUTHORIZATION))
        && !crate::headers::is_upgrade(headers)
}

/// Looks `key` up in the route's store. `wait` bounds how long a follower waits for the
/// leader of a concurrent miss.
pub(crate) async fn look<C: ResponseCache>(
    cache: &C,
    flights: &Flights,
    spec: &Arc<CacheSpec>,
    key: CacheKey,
    req: (&Method, &Uri, &HeaderMap),
    wait: Duration,
) -> Looked {
    let (method, uri, headers) = req;
    let head_only = method == Method::HEAD;
    let Ok(found) = cache.get(spec.store, &key).await else {
        return Looked::Bypass;
    };
    let now = unix_ms();
    let mut stale = None;
    if let Some(entry) = found {
        match entry.stale_by(now) {
            None => {
                return Looked::Answer(Reply {
                    entry,
                    head_only,
                    refresh: None,
                });
            }
            Some(late) if late <= entry.stale_while_revalidate && !head_only => {
                // One request refreshes; the others keep being answered stale meanwhile.
                let refresh = match flights.join(&key) {
                    Join::Lead(lead) => Some(Box::new(Flow {
                        key,
                        spec: Arc::clone(spec),
                        lead: Some(lead),
                        stale: None,
                        head_only,
                        uri: uri.clone(),
                        directives: policy::directives(headers),
                    })),
                    Join::Follow(_) => None,
                };
                let reply = Reply {
                    entry,
                    head_only,
                    refresh: None,
                };
                return Looked::Stale(reply, refresh);
            }
            Some(late) if late <= entry.stale_if_error => stale = Some(entry),
            Some(_) => {}
        }
    }
    let mut lead = None;
    if !head_only {
        match flights.join(&key) {
            Join::Lead(l) => lead = Some(l),
            Join::Follow(follow) => {
                if let Some(entry) = follow.wait(wait).await {
                    return Looked::Answer(Reply {
                        entry,
                        head_only,
                        refresh: None,
                    });
                }
            }
        }
    }
    Looked::Fetch(Box::new(Flow {
        key,
        spec: Arc::clone(spec),
        lead,
        stale,
        head_only,
        uri: uri.clone(),
        directives: policy::directives(headers),
    }))
}

/// What became of a response on a cache route.
pub(crate) enum Stored<R> {
    /// Stored (or served stale instead): answer from the cache.
    Reply(Box<Reply>, CacheResult),
    /// Not stored: pass the upstream's response on (`MISS`).
    Pass(Response<R>),
    /// The body could not be read.
    Failed(GatewayError),
}

impl Flow {
    /// The stale entry to answer with when the upstream failed, if `stale_if_error` allows.
    pub(crate) fn stale_for_error(&self) -> Option<Reply> {
        let entry = self.stale.as_ref()?;
        let late = entry.stale_by(unix_ms())?;
        (late <= entry.stale_if_error).then(|| Reply {
            entry: Arc::clone(entry),
            head_only: self.head_only,
            refresh: None,
        })
    }

    /// Stores the upstream's response when it may be, and decides what to answer. `limit`
    /// bounds reading the body.
    pub(crate) async fn store<C, R>(
        mut self,
        cache: &C,
        resp: Response<R>,
        limit: Duration,
    ) -> Stored<R>
    where
        C: ResponseCache,
        R: http_body::Body<Data = Bytes> + Unpin,
    {
        if matches!(resp.status().as_u16(), 500 | 502 | 503 | 504)
            && let Some(reply) = self.stale_for_error()
        {
            return Stored::Reply(Box::new(reply), CacheResult::Stale);
        }
        let lead = self.lead.take();
        if self.head_only {
            return Stored::Pass(resp);
        }
        let length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Only a body known to fit is read into memory: anything else streams through.
        if length.is_none_or(|n| n > self.spec.max_body) {
            return Stored::Pass(resp);
        }
        let (parts, body) = resp.into_parts();
        let lifetimes = match policy::decide(
            &self.spec,
            &self.uri,
            &self.directives,
            &parts,
            SystemTime::now(),
        ) {
            Verdict::Store(l) => l,
            Verdict::Pass(_) => return Stored::Pass(Response::from_parts(parts, body)),
        };
        let body = match tokio::time::timeout(limit, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            // The upstream broke off or stalled mid-body: nothing to store, and nothing of
            // the response reached the client yet, so it is told so.
            _ => {
                drop(lead);
                return Stored::Failed(GatewayError::new(
                    ErrorKind::BadGateway,
                    "the upstream's response body broke off",
                ));
            }
        };
        let mut headers = parts.headers;
        crate::headers::remove_hop_by_hop(&mut headers, false);
        headers.remove(header::AGE);
        headers.remove(header::CONTENT_LENGTH);
        let entry = Arc::new(Entry {
            status: parts.status,
            headers,
            body,
            stored_at: unix_ms(),
            initial_age: lifetimes.initial_age,
            fresh_for: lifetimes.fresh_for,
            stale_while_revalidate: lifetimes.stale_while_revalidate,
            stale_if_error: lifetimes.stale_if_error,
        });
        // A store that fails now is reported by the store; the client still gets the
        // response.
        let _ = cache
            .put(self.spec.store, &self.key, Arc::clone(&entry))
            .await;
        if let Some(lead) = lead {
            lead.finish(Some(Arc::clone(&entry)));
        }
        Stored::Reply(
            Box::new(Reply {
                entry,
                head_only: false,
                refresh: None,
            }),
            CacheResult::Miss,
        )
    }
}
