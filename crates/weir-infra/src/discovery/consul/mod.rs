//! Consul discovery: the instances of a service whose health checks all pass, from the
//! agent's `/v1/health/service/<service>?passing`, followed with blocking queries.
//!
//! One GET in a loop, by hand over hyper: the first request returns at once with the list
//! and an index (`X-Consul-Index`); each next one sends that index and a `wait`, and Consul
//! holds it until the list changes or the wait ends. Every answer is reported whole (an
//! unchanged one too: it says the source is alive). The index rules are Consul's: one that
//! goes backwards starts over, 0 is taken as 1. Requests start at least
//! [`MIN_INTERVAL`] apart, so an agent (or a proxy) that answers at once cannot make weir
//! spin, and a burst of changes costs a few requests, not one each.
//!
//! A failure (no connection, a status other than 2xx such as an ACL denial, an answer that
//! is not health entries, no answer within wait + wait/16 + 5 s) is reported, the index is
//! dropped so the next good answer is read afresh, and the next try comes after a backoff
//! with full jitter (up to 0.5 s, doubling per failure in a row, at most 15 s). The ACL token
//! travels in `X-Consul-Token`, marked sensitive, never in the URL or a message.

mod protocol;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use weir_domain::discovery::{ConsulAgent, ConsulDiscovery};

use self::protocol::{endpoints, health_path, next_index, request_timeout, retry_delay};
use super::Update;
use crate::auth::tls::{self, HttpsClient};

/// Requests never start closer together than this.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Connecting to the agent gives up after this (the request timeout bounds the rest).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read: a health entry is 1 to 2 KiB, so this is tens of thousands of
/// instances; anything larger is not a health answer worth holding in memory.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Idle connections are dropped after this; a blocking query keeps its connection busy, so
/// this matters only between failures.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks Consul for the passing instances of `spec.service` with blocking queries, forever,
/// and calls `sink` with the whole target list after every answer, unchanged ones too (the
/// caller compares). A failure is [`Update::Failed`], retried with backoff. Nothing is
/// logged here but instances that cannot be targets (at debug); `upstream` names the
/// task's tracing span.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the name is taken as the caller holds it; only the span borrows it"
)]
pub fn watch_consul(
    upstream: Arc<str>,
    spec: ConsulDiscovery,
    sink: impl Fn(Update) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let span =
        tracing::debug_span!("consul_discovery", upstream = %upstream, service = %spec.service);
    tokio::spawn(run(spec, sink).instrument(span))
}

async fn run(spec: ConsulDiscovery, sink: impl Fn(Update)) {
    // Built on the first request (and again after one that could not build it), so that a
    // bad address or CA is a failure like any other, reported.
    let mut agent: Option<Agent> = None;
    let mut index: u64 = 0;
    let mut failures: u32 = 0;
    let mut last_start: Option<Instant> = None;
    loop {
        if let Some(t) = last_start {
            tokio::time::sleep_until(t + MIN_INTERVAL).await;
        }
        last_start = Some(Instant::now());
        let result = match &agent {
            Some(a) => a.health(&spec, index).await,
            None => match Agent::new(&spec.agent) {
                Ok(a) => agent.insert(a).health(&spec, index).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(answer) => {
                failures = 0;
                index = next_index(index, answer.index);
                sink(Update::Endpoints(answer.endpoints));
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                index = 0;
                sink(Update::Failed(reason));
                tokio::time::sleep(retry_delay(failures, crate::discovery::random())).await;
            }
        }
    }
}

/// One health answer.
#[derive(Debug)]
struct Answer {
    index: u64,
    endpoints: Vec<weir_domain::discovery::Endpoint>,
}

/// The agent: where it is, how it is reached, and the token to show it.
struct Agent {
    /// `scheme://authority`, no trailing slash.
    base: String,
    client: Transport,
    token: Option<HeaderValue>,
}

enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(HttpsClient),
}

impl Agent {
    fn new(agent: &ConsulAgent) -> Result<Self, String> {
        let address = agent.address.trim_end_matches('/');
        let uri: Uri = address
            .parse()
            .map_err(|e| format!("the Consul address {address:?} does not parse: {e}"))?;
        let authority = match uri.authority() {
            Some(a) if !a.as_str().contains('@') && uri.path() == "/" && uri.query().is_none() => a,
            _ => {
                return Err(format!(
                    "the Consul address {address:?} must be http(s)://host:port only"
                ));
            }
        };
        let client = match uri.scheme_str() {
            Some("http") => {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(CONNECT_TIMEOUT));
                http.set_nodelay(true);
                Transport::Plain(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(IDLE_TIMEOUT)
                        .pool_timer(TokioTimer::new())
                        .build(http),
                )
            }
            Some("https") => {
                let ca = agent.ca_pem.as_deref();
                let clients = tls::clients(authority.host(), ca, CONNECT_TIMEOUT, 1)?;
                match clients.into_vec().pop() {
                    Some(c) => Transport::Tls(c),
                    None => return Err("no TLS client was built".to_owned()),
                }
            }
            _ => {
                return Err(format!(
                    "the Consul address {address:?} is not http:// or https://"
                ));
            }
        };
        let token = match &agent.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose())
                    .map_err(|_| "the Consul token is not a valid header value".to_owned())?;
                // Kept out of hyper's debug output and HTTP/2 header compression tables.
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            base: format!("{}://{authority}", uri.scheme_str().unwrap_or("http")),
            client,
            token,
        })
    }

    /// One health request, blocking on `index` when it is not 0.
    async fn health(&self, spec: &ConsulDiscovery, index: u64) -> Result<Answer, String> {
        let url = format!("{}{}", self.base, health_path(spec, index));
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("cannot build the request URL: {e}"))?;
        let mut req = Request::get(uri);
        if let Some(token) = &self.token {
            req = req.header("x-consul-token", token.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let timeout = request_timeout(spec.agent.wait);
        let (index, body) = tokio::time::timeout(timeout, self.exchange(req))
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))??;
        let (endpoints, skipped) = endpoints(&body)?;
        if !skipped.is_empty() {
            tracing::debug!(?skipped, "instances that cannot be targets are left out");
        }
        Ok(Answer { index, endpoints })
    }

    /// Sends `req`; a 2xx answer's index and body.
    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<(u64, Bytes), String> {
        let sent = match &self.client {
            Transport::Plain(c) => c.request(req).await,
            Transport::Tls(c) => c.request(req).await,
        };
        let resp = sent.map_err(|e| format!("request failed: {}", tls::error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            // Consul says why in a line of text ("ACL not found", "No cluster leader").
            let why = read(resp.into_body(), 4096).await.unwrap_or_default();
            let why = String::from_utf8_lossy(&why);
            let why: String = why.trim().chars().take(200).collect();
            return Err(if why.is_empty() {
                format!("answered {status}")
            } else {
                format!("answered {status}: {why}")
            });
        }
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(
                "the answer has no X-Consul-Index (is something other than Consul answering?)",
            )?;
        let body = read(resp.into_body(), MAX_BODY)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        Ok((index, body))
    }
}

/// A body, at most `limit` bytes.
async fn read(body: Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
