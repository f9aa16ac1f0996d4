//! Helpers for the response-cache tests: an origin that counts requests per path and
//! answers uniquely each time (so a body tells which upstream answer it was), switchable at
//! run time and stoppable for good; requests with any method read to the end; the cache
//! counters of `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::Gateway;
use super::limits::{Answer, metric_sum};

/// What an [`Origin`] saw and how it answers; shared with the test.
#[derive(Debug, Default)]
pub struct OriginState {
    /// Requests other than `/health`, in order: the `n` of each answer.
    hits: AtomicUsize,
    /// Requests per path and query, as received.
    paths: Mutex<HashMap<String, usize>>,
    /// Delay before every answer (ms).
    delay_ms: AtomicU64,
    /// Status of every answer without `x-status` (0: 200).
    status: AtomicU16,
}

/// An HTTP origin on `127.0.0.1:0` for the cache tests.
///
/// `GET /health` answers 200 and is not counted. Every other request is counted (in total
/// and per path with query) and answered, after the configured delay (or `x-delay-ms: N`),
/// with the configured status (or `x-status: N`, else 200) and:
///
/// - `x-body-bytes: N`: a body of N bytes `a` with its `Content-Length`;
/// - `x-chunked-bytes: N`: a body of N bytes `a` streamed without a length (chunked);
/// - otherwise JSON `{"n", "method", "path", "headers"}`, `n` being this request's number
///   (1 for the first): every upstream answer differs, so a body shows which one it was.
///   `headers` are the request headers, each name's values joined with `, `.
///
/// `x-respond-header: Name: value` (repeatable) adds a response header.
/// [`Origin::stop`] closes the listener and every open connection: the port then refuses.
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let st = Arc::clone(&state);
        // The accept task owns the connection tasks: aborting it ends them all.
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let st = Arc::clone(&st);
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, Infallible>(answer(req, &st).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen (other than `/health`).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests seen for `path_and_query`, exactly as the origin received it.
    pub fn hits_for(&self, path_and_query: &str) -> usize {
        self.state
            .paths
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// Every later answer waits `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// Every later answer without `x-status` has `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Stops for good: the listener and every connection are closed once this returns.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }
}

type ResBody = BoxBody<Bytes, Infallible>;

/// The origin's controls (`x-status`, `x-respond-header`, ...) of each request sent by
/// [`fetch_with`], by request id. A request that may be stored reaches the origin with only
/// the headers of its cache key, so the controls travel beside it: weir forwards the
/// client's well-formed `X-Request-Id`, and the origin looks its controls up by it.
static CONTROLS: std::sync::LazyLock<Mutex<ControlTable>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Request id to its controls, as (name, value) pairs.
type ControlTable = HashMap<String, Vec<(String, String)>>;

const CONTROL_NAMES: [&str; 5] = [
    "x-status",
    "x-delay-ms",
    "x-respond-header",
    "x-body-bytes",
    "x-chunked-bytes",
];

/// The values of control `name`: from the request's headers, else from [`CONTROLS`].
fn controls(req: &Request<Incoming>, name: &str) -> Vec<String> {
    let direct: Vec<String> = req
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    if !direct.is_empty() {
        return direct;
    }
    let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    else {
        return direct;
    };
    CONTROLS
        .lock()
        .unwrap()
        .get(id)
        .map(|all| {
            all.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn header_num(req: &Request<Incoming>, name: &str) -> Option<u64> {
    controls(req, name)
        .first()
        .and_then(|v| v.trim().parse().ok())
}

async fn answer(req: Request<Incoming>, st: &OriginState) -> Response<ResBody> {
    if req.uri().path() == "/health" {
        return Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")).boxed());
    }
    let n = st.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), ToString::to_string);
    *st.paths.lock().unwrap().entry(path.clone()).or_default() += 1;
    let delay =
        header_num(&req, "x-delay-ms").unwrap_or_else(|| st.delay_ms.load(Ordering::SeqCst));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = header_num(&req, "x-status")
        .and_then(|s| u16::try_from(s).ok())
        .or_else(|| Some(st.status.load(Ordering::SeqCst)).filter(|s| *s != 0))
        .unwrap_or(200);
    let extra: Vec<(String, String)> = controls(&req, "x-respond-header")
        .iter()
        .filter_map(|v| v.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut resp = if let Some(len) = header_num(&req, "x-body-bytes") {
        let body = vec![b'a'; usize::try_from(len).unwrap()];
        Response::new(http_body_util::Full::new(Bytes::from(body)).boxed())
    } else if let Some(len) = header_num(&req, "x-chunked-bytes") {
        Response::new(Chunked { remaining: len }.boxed())
    } else {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in req.headers() {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let headers: BTreeMap<String, String> = headers
            .into_iter()
            .map(|(k, v)| (k, v.join(", ")))
            .collect();
        let echo = json!({
            "n": n, "method": req.method().as_str(), "path": path, "headers": headers,
        });
        let mut resp =
            Response::new(http_body_util::Full::new(Bytes::from(echo.to_string())).boxed());
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        resp
    };
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (n, v) in extra {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}

/// `remaining` bytes `a` in chunks of 1 KiB, with no length announced.
struct Chunked {
    remaining: u64,
}

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(1024);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            b'a';
            usize::try_from(n)
                .unwrap()
        ])))))
    }
}

// ---------------------------------------------------------------------------------------
// Requests

/// `method` `path` on the gateway with extra request headers, read to the end.
pub async fn fetch(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    fetch_with(&gw.client, &gw.url(path), method, headers).await
}

/// `method` on `url` with `client`, read to the end.
pub async fn fetch_with(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> Answer {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let named: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| CONTROL_NAMES.iter().any(|c| c.eq_ignore_ascii_case(n)))
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let has_id = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-request-id"));
    if !named.is_empty() && !has_id {
        let id = format!(
            "ctl-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        CONTROLS.lock().unwrap().insert(id.clone(), named);
        req = req.header("x-request-id", id);
    }
    Answer::read(req.send().await.expect("request through weir")).await
}

/// GET `path` with extra request headers.
pub async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    fetch(gw, "GET", path, headers).await
}

/// `X-Cache` of an answer ("" when absent).
pub fn x_cache(a: &Answer) -> &str {
    a.header("x-cache").unwrap_or("")
}

/// The origin's request number `n` in a JSON echo body.
pub fn origin_n(a: &Answer) -> u64 {
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("not an origin echo ({e}): {} {}", a.status, a.body));
    v["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n in {}", a.body))
}

/// A request header as the origin saw it, from a JSON echo body.
pub fn origin_saw<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

/// Asserts status 200 and `X-Cache: expected`, naming `what`.
pub fn assert_cache(a: &Answer, expected: &str, what: &str) {
    assert_eq!(
        (a.status, x_cache(a)),
        (200, expected),
        "{what}: status and X-Cache; body: {}",
        a.body
    );
}

// ---------------------------------------------------------------------------------------
// Metrics

/// `weir_cache_requests_total{route, result}` in a `/metrics` text (0 when absent).
pub fn cache_requests(metrics: &str, route: &str, result: &str) -> u64 {
    metric_sum(
        metrics,
        "weir_cache_requests_total",
        &[("route", route), ("result", result)],
    )
    .unwrap_or(0.0) as u64
}

/// An unlabelled gauge of a `/metrics` text; panics when it is absent.
pub fn gauge(metrics: &str, name: &str) -> f64 {
    metric_sum(metrics, name, &[]).unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

/// `POST /cache/purge` on the admin API with `body`: the status and the JSON answer.
pub async fn purge(gw: &Gateway, body: &str) -> (u16, Value, Option<String>) {
    let resp = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /cache/purge");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.expect("purge body");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("purge answer is not JSON ({e}): {status} {text}"));
    (status, v, ct)
}
