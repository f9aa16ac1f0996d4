//! Fault-injection backends for the resilience tests (retries, passive health, circuit
//! breakers, fallbacks), and the observation helpers those tests share: counters read from
//! `/metrics` (absent means 0), targets read from `/upstreams`, and a one-upstream config.
//!
//! Every backend listens on `127.0.0.1:0` and counts, with atomics, the connections it
//! accepted and the requests it saw (the *attempts* weir made on it), so a test can check
//! from the outside how often weir tried each target.
//!
//! - [`refusing_url`]: nothing listens there (connect failures; attempts cannot be counted).
//! - [`RawFault`]: byte-level misbehaviour: a reset before any response byte
//!   ([`Fault::ResetBeforeHead`]), a reset in the middle of a response body
//!   ([`Fault::ResetMidBody`]), or never answering ([`Fault::Hang`]).
//! - [`Flaky`]: a real HTTP server whose behaviour is switched at run time: answer with a
//!   failure status (always, or for the next N requests), answer after a delay, or reset new
//!   connections before answering.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::Gateway;

/// A `url` for a target where nothing listens: every connection attempt is refused.
pub fn refusing_url() -> String {
    format!("http://{}", super::dead_addr())
}

/// What a [`RawFault`] does with each request it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reads the request head, then resets the connection (`SO_LINGER` 0) without sending a
    /// byte: the `reset` retry condition.
    ResetBeforeHead,
    /// Reads the request head, answers `200 OK` with `Content-Length: 100000` and
    /// [`MID_BODY_BYTES`] bytes of body, then resets the connection.
    ResetMidBody,
    /// Reads the request head and never answers; the connection stays open until weir
    /// closes it or the backend is dropped.
    Hang,
}

/// Body bytes a [`Fault::ResetMidBody`] backend sends before it resets.
pub const MID_BODY_BYTES: usize = 1000;
/// The `Content-Length` a [`Fault::ResetMidBody`] backend announces.
pub const MID_BODY_LENGTH: usize = 100_000;

/// Connections accepted and requests seen by a fault backend.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicUsize,
    /// Requests whose head was read: the attempts weir made on this backend.
    pub requests: AtomicUsize,
}

/// A TCP backend that misbehaves at the byte level (see [`Fault`]).
pub struct RawFault {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for RawFault {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it ends them all,
        // which also closes every connection a `Hang` backend kept open.
        self.task.abort();
    }
}

impl RawFault {
    pub async fn start(fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fault backend");
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                while conns.try_join_next().is_some() {}
                conns.spawn(misbehave(stream, fault, Arc::clone(&c)));
            }
        });
        Self { addr, counts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests whose head this backend read (weir's attempts on it).
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }
}

async fn misbehave(mut stream: TcpStream, fault: Fault, counts: Arc<Counts>) {
    let mut buf = Vec::new();
    if !read_head(&mut stream, &mut buf).await {
        return;
    }
    counts.requests.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::ResetBeforeHead => reset(stream),
        Fault::ResetMidBody => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {MID_BODY_LENGTH}\r\n\r\n"
            );
            let mut out = head.into_bytes();
            out.extend(std::iter::repeat_n(b'x', MID_BODY_BYTES));
            if stream.write_all(&out).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            // Let weir read the head and start streaming the body before the reset.
            tokio::time::sleep(Duration::from_millis(100)).await;
            reset(stream);
        }
        Fault::Hang => {
            // Keep the connection open, reading (and ignoring) whatever comes, until weir
            // gives up and closes it.
            let mut scratch = [0u8; 4096];
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

/// Closes `stream` with a TCP reset instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads from `stream` until `buf` holds a complete request head; false on EOF or error.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A switchable HTTP backend (HTTP/1.1 and h2c).
///
/// Each request is counted when it arrives, its body is read, and then it is answered, in
/// this order of precedence: with the failure status (503 unless set otherwise) while
/// failing or while [`Flaky::fail_next`] has requests left; else `200`. Every answer waits
/// the configured delay first, carries `x-backend: <id>` and is JSON:
/// `{"backend", "method", "path", "status", "body"}` (the request body as text), so
/// `backend_of` works on it.
///
/// While resetting, every *new* connection is reset after its first request head was read
/// (and counted); connections accepted before keep being served.
pub struct Flaky {
    pub addr: SocketAddr,
    pub state: Arc<FlakyState>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
pub struct FlakyState {
    pub id: String,
    pub connections: AtomicUsize,
    /// Requests seen (answered or reset): the attempts weir made on this backend.
    pub requests: AtomicUsize,
    failing: AtomicBool,
    fail_next: AtomicUsize,
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    resetting: AtomicBool,
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Flaky {
    /// A backend that answers 200 until told otherwise.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind flaky backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FlakyState {
            id: id.to_owned(),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            fail_next: AtomicUsize::new(0),
            fail_status: AtomicU16::new(503),
            delay_ms: AtomicU64::new(0),
            resetting: AtomicBool::new(false),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                while conns.try_join_next().is_some() {}
                let st = Arc::clone(&st);
                conns.spawn(async move {
                    if st.resetting.load(Ordering::SeqCst) {
                        let mut buf = Vec::new();
                        if read_head(&mut stream, &mut buf).await {
                            st.requests.fetch_add(1, Ordering::SeqCst);
                        }
                        reset(stream);
                        return;
                    }
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(flaky_answer(req, &st).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// A backend that answers every request with `status` until [`Flaky::set_failing`]`(false)`.
    pub async fn failing(id: &str, status: u16) -> Self {
        let b = Self::start(id).await;
        b.state.fail_status.store(status, Ordering::SeqCst);
        b.set_failing(true);
        b
    }

    /// A backend that answers 200 after `delay`.
    pub async fn slow(id: &str, delay: Duration) -> Self {
        let b = Self::start(id).await;
        b.set_delay(delay);
        b
    }

    /// A backend that resets every new connection until [`Flaky::set_resetting`]`(false)`.
    pub async fn resetting(id: &str) -> Self {
        let b = Self::start(id).await;
        b.set_resetting(true);
        b
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Requests seen: weir's attempts on this backend.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// The next `n` requests get the failure status (a burst of failures), then 200 again.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    pub fn set_resetting(&self, resetting: bool) {
        self.state.resetting.store(resetting, Ordering::SeqCst);
    }
}

async fn flaky_answer(req: Request<Incoming>, st: &FlakyState) -> Response<Full<Bytes>> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let burst = st
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if burst || st.failing.load(Ordering::SeqCst) {
        st.fail_status.load(Ordering::SeqCst)
    } else {
        200
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let answer = json!({
        "backend": st.id, "method": method, "path": path, "status": status,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("x-backend", st.id.parse().unwrap());
    resp
}

// ---------------------------------------------------------------------------------------
// Configuration

/// A config with one upstream `be` over `targets` (each line of `upstream_lines` added under
/// it, e.g. `"retry: { attempts: 3 }"`) and one catch-all route `r` to it (with
/// `route_lines` added under the route, e.g. `"timeout: 500ms"`).
pub fn one_upstream(targets: &[String], upstream_lines: &[&str], route_lines: &[&str]) -> String {
    let mut y = String::from("upstreams:\n  be:\n");
    y.push_str(&format!("    targets: [{}]\n", target_list(targets)));
    for l in upstream_lines {
        y.push_str(&format!("    {l}\n"));
    }
    y.push_str("routes:\n  - name: r\n    match: { prefix: / }\n    upstream: be\n");
    for l in route_lines {
        y.push_str(&format!("    {l}\n"));
    }
    y
}

/// `{ url: "..." }, { url: "..." }` for a `targets: [...]` list.
pub fn target_list(urls: &[String]) -> String {
    urls.iter()
        .map(|u| format!("{{ url: \"{u}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `retry:` line: `attempts` tries on `on`, with a short backoff so tests stay fast.
pub fn retry_line(attempts: u32, on: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "retry: {{ attempts: {attempts}, backoff: {{ initial: 1ms, max: 5ms, multiplier: 2, jitter: none }}, on: [{on}]{extra} }}"
    )
}

// ---------------------------------------------------------------------------------------
// Observing weir

/// The sum of the samples of `name` in Prometheus text whose labels include all of
/// `labels`; 0 when there is none (counters may be absent while 0).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    super::limits::metric_sum(text, name, labels).unwrap_or(0.0)
}

/// A counter or gauge from weir's `/metrics`, summed over the samples matching `labels`
/// (absent = 0), as an integer.
pub async fn counter(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = gw.metrics().await;
    let v = sample(&text, name, labels);
    assert!(
        v >= 0.0 && v.fract() == 0.0,
        "{name}{labels:?} is not a count: {v}"
    );
    v as u64
}

/// `weir_retries_total{upstream}`.
pub async fn retries(gw: &Gateway, upstream: &str) -> u64 {
    counter(gw, "weir_retries_total", &[("upstream", upstream)]).await
}

/// `weir_upstream_failures_total{upstream, target, reason}`.
pub async fn failures(gw: &Gateway, upstream: &str, target: &str, reason: &str) -> u64 {
    counter(
        gw,
        "weir_upstream_failures_total",
        &[
            ("upstream", upstream),
            ("target", target),
            ("reason", reason),
        ],
    )
    .await
}

/// One upstream of `GET /upstreams` on the admin API.
pub async fn upstream_info(gw: &Gateway, name: &str) -> Value {
    let v = gw.admin_json("/upstreams").await;
    v["upstreams"]
        .as_array()
        .expect("upstreams is a list")
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("upstream {name} in /upstreams: {v}"))
        .clone()
}

/// One target (by its configured `url`) of an upstream in `GET /upstreams`.
pub async fn target_info(gw: &Gateway, upstream: &str, url: &str) -> Value {
    let up = upstream_info(gw, upstream).await;
    up["targets"]
        .as_array()
        .expect("targets is a list")
        .iter()
        .find(|t| t["url"] == url)
        .unwrap_or_else(|| panic!("target {url} of {upstream} in /upstreams: {up}"))
        .clone()
}

/// The `X-Fallback` header of a response, if any.
pub fn fallback_header(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-fallback")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The `Content-Type` of a response, if any.
pub fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Whether a response is a problem weir made itself (`application/problem+json`), as opposed
/// to an upstream's answer passed through.
pub fn is_problem(resp: &reqwest::Response) -> bool {
    content_type(resp).as_deref() == Some("application/problem+json")
}
