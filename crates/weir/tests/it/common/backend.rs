//! In-process backends: an HTTP echo server with knobs, and a WebSocket echo server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a backend answers requests that do not ask for something else by header.
#[derive(Clone, Debug)]
pub enum Mode {
    /// JSON describing the request.
    Echo,
    /// The JSON echo, with this status.
    Status(u16),
    /// The JSON echo, after this delay.
    Slow(Duration),
}

/// What a backend saw; shared with the test.
#[derive(Debug)]
pub struct BackendState {
    pub id: String,
    mode: Mode,
    /// Requests other than health probes.
    pub hits: AtomicUsize,
    /// Requests other than health probes currently being answered.
    pub in_flight: AtomicUsize,
    /// Requests (other than health probes) waiting at the gate.
    pub held: AtomicUsize,
    /// What `/health` answers: 200 when true, 500 when false.
    pub healthy: AtomicBool,
    pub probes_ok: AtomicUsize,
    pub probes_failed: AtomicUsize,
    /// Request body bytes received, over all requests.
    pub bytes_received: AtomicU64,
    /// True: requests carrying `x-hold` wait until [`Backend::release`].
    gate: watch::Sender<bool>,
}

/// An HTTP backend (HTTP/1.1 and h2c) on `127.0.0.1:0`.
///
/// `GET /health` answers by [`BackendState::healthy`]. Every other request is counted and
/// answered after these request headers are applied, in order: `x-hold` (wait at the gate),
/// `x-delay-ms: N`, `x-status: N`, `x-stream-bytes: N` (a streamed body of N bytes),
/// `x-echo-body` (the request body back); otherwise a JSON echo: backend id, method, path
/// with query, version, headers, body length and FNV-1a hash (skipped with `x-count-only`). `x-respond-header: Name: value`
/// (repeatable) adds response headers. Every response carries `x-backend: <id>`.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(id: &str) -> Self {
        Self::with_mode(id, Mode::Echo).await
    }

    pub async fn with_mode(id: &str, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let (gate, _) = watch::channel(false);
        let state = Arc::new(BackendState {
            id: id.to_owned(),
            mode,
            hits: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            probes_ok: AtomicUsize::new(0),
            probes_failed: AtomicUsize::new(0),
            bytes_received: AtomicU64::new(0),
            gate,
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(answer(req, &st).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, for a target's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// From now on, requests carrying `x-hold` wait.
    pub fn hold(&self) {
        self.state.gate.send_replace(true);
    }

    /// Lets every waiting request go on.
    pub fn release(&self) {
        self.state.gate.send_replace(false);
    }

    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }
}

struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type ResBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> ResBody {
    http_body_util::Full::new(b.into()).boxed()
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn answer(req: Request<Incoming>, st: &BackendState) -> Response<ResBody> {
    if req.uri().path() == "/health" {
        let ok = st.healthy.load(Ordering::SeqCst);
        if ok {
            st.probes_ok.fetch_add(1, Ordering::SeqCst);
        } else {
            st.probes_failed.fetch_add(1, Ordering::SeqCst);
        }
        let mut resp = Response::new(full(if ok { "ok" } else { "unhealthy" }));
        *resp.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return resp;
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = Counted(&st.in_flight);

    if req.headers().contains_key("x-hold") {
        let mut rx = st.gate.subscribe();
        st.held.fetch_add(1, Ordering::SeqCst);
        let _held = Counted(&st.held);
        let _ = rx.wait_for(|holding| !*holding).await;
    }
    let delay = header_str(&req, "x-delay-ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let delay = match (delay, &st.mode) {
        (Some(d), _) => Some(d),
        (None, Mode::Slow(d)) => Some(*d),
        _ => None,
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let status = header_str(&req, "x-status")
        .and_then(|v| v.parse().ok())
        .or(match st.mode {
            Mode::Status(s) => Some(s),
            _ => None,
        })
        .unwrap_or(200);
    let extra: Vec<(String, String)> = req
        .headers()
        .get_all("x-respond-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();

    let mut resp =
        if let Some(n) = header_str(&req, "x-stream-bytes").and_then(|v| v.parse::<u64>().ok()) {
            Response::new(RepeatBody::new(n, 256 * 1024).boxed())
        } else if req.headers().contains_key("x-echo-body") {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            st.bytes_received
                .fetch_add(body.len() as u64, Ordering::SeqCst);
            Response::new(full(body))
        } else {
            let method = req.method().to_string();
            let path = req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), ToString::to_string);
            let version = format!("{:?}", req.version());
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in req.headers() {
                headers
                    .entry(name.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
            // Hashing a GiB byte by byte in a debug build takes seconds: `x-count-only` skips it.
            let hashing = !headers.contains_key("x-count-only");
            let mut body = req.into_body();
            let mut len = 0u64;
            let mut hash = Fnv::new();
            let mut body_error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            len += d.len() as u64;
                            if hashing {
                                hash.update(d);
                            }
                            st.bytes_received
                                .fetch_add(d.len() as u64, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        body_error = Some(e.to_string());
                        break;
                    }
                }
            }
            let echo = json!({
                "backend": st.id, "method": method, "path": path, "version": version,
                "headers": headers, "body_len": len, "body_fnv": format!("{:016x}", hash.0),
                "body_error": body_error,
            });
            let mut resp = Response::new(full(echo.to_string()));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            resp
        };
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert("x-backend", st.id.parse().unwrap());
    for (n, v) in extra {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

/// FNV-1a, 64 bits: a cheap fingerprint to compare bodies without keeping them.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(data: &[u8]) -> String {
        let mut f = Self::new();
        f.update(data);
        format!("{:016x}", f.0)
    }
}

/// A body of `remaining` bytes made of one shared chunk: large bodies without large buffers.
pub struct RepeatBody {
    chunk: Bytes,
    remaining: u64,
}

impl RepeatBody {
    pub fn new(total: u64, chunk_size: usize) -> Self {
        let chunk: Vec<u8> = (0..chunk_size).map(|i| (i % 251) as u8).collect();
        Self {
            chunk: Bytes::from(chunk),
            remaining: total,
        }
    }
}

impl hyper::body::Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The id of the backend that answered a JSON echo.
pub async fn backend_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200, "expected a proxied 200");
    let v: Value = resp.json().await.expect("echo JSON");
    v["backend"].as_str().expect("backend id").to_owned()
}

/// The JSON echo of a request that must succeed.
pub async fn echo(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "expected a proxied 200, got {status}: {text}");
    serde_json::from_str(&text).expect("echo JSON")
}

/// The only value of a header in an echo, if the backend saw it.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    let values = echo["headers"][name].as_array()?;
    assert_eq!(
        values.len(),
        1,
        "header {name} seen {} times: {echo}",
        values.len()
    );
    values[0].as_str()
}

/// A WebSocket backend that echoes each message back, prefixed with `echo: ` for text.
pub struct WsBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBackend {
    pub async fn start() -> Self {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws backend");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let reply = match msg {
                            Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An address that refuses connections for the rest of the test: a socket bound to it but
/// never listening, kept open. A port merely bound and closed could be taken by a server of
/// a test running beside this one, which would then answer where nothing should.
pub fn dead_addr() -> SocketAddr {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).expect("bind");
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Each test is its own process (nextest): the socket lives until the test ends.
    std::mem::forget(s);
    addr
}
