//! Shared helpers of weir's black-box tests: real backends on `127.0.0.1:0`, weir started
//! in-process (`weir::start`) or as the `weir` binary, and small clients (reqwest and raw
//! TCP for byte-level checks). Nothing here uses a fixed port: every test starts its own
//! servers, so the tests run in parallel.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod backend;
pub mod cache;
pub mod consul;
pub mod discovery;
pub mod dns;
pub mod etcd;
pub mod faults;
pub mod grpc;
pub mod h2raw;
pub mod idp;
pub mod limits;
pub mod pebble;
mod process;
mod raw;
pub mod recorder;
pub mod redis;
pub mod reload;
pub mod tls;

#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use raw::*;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_config::{Loaded, Overrides};

/// Where the admin API listens in tests: port 0, like every listener.
pub const ADMIN_LISTEN: &str = "127.0.0.1:0";

/// A port of 127.0.0.1 that was free a moment ago, for servers that cannot be told to bind
/// port 0 and report it (redis-server, etcd, Consul).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A real component a test needs is not installed: under `CI=true` that is a failure (CI
/// must have installed it), elsewhere the test is skipped, loudly. Returns false.
pub fn missing_component(msg: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {msg}"
    );
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

/// Generous upper bound for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Environment and configuration

pub use weir_config::MapEnv;

/// Removes the common leading indentation, so YAML can be written indented in a test.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out.trim_start_matches('\n').to_owned()
}

/// A complete test config: `body` (dedented) plus, unless `body` sets them, one listener on
/// `127.0.0.1:0`, the admin API on [`ADMIN_LISTEN`], no access log and a short shutdown grace.
pub fn config(body: &str) -> String {
    let body = dedent(body);
    let has = |key: &str| body.lines().any(|l| l.starts_with(&format!("{key}:")));
    let mut out = String::new();
    if !has("listeners") {
        out.push_str("listeners:\n  - name: public\n    address: 127.0.0.1:0\n");
    }
    if !has("admin") {
        out.push_str(&format!("admin:\n  listen: {ADMIN_LISTEN}\n"));
    }
    if !has("observability") {
        out.push_str("observability:\n  access_log: { enabled: false }\n");
    }
    if !has("shutdown_grace") {
        out.push_str("shutdown_grace: 3s\n");
    }
    out.push_str(&body);
    out
}

/// Loads a config that must be valid (after [`config`]), printing its problems otherwise.
pub fn load(yaml: &str, env: &MapEnv) -> Loaded {
    let text = config(yaml);
    match weir_config::load_str("test.yaml", &text, env, &Overrides::default()) {
        Ok(l) => l,
        Err(p) => panic!("the test config does not load:\n{p}\n--- config ---\n{text}"),
    }
}

// ---------------------------------------------------------------------------------------
// weir in-process

/// A gateway started in this process.
pub struct Gateway {
    running: Option<weir::Running>,
    /// The first listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn running(&self) -> &weir::Running {
        self.running.as_ref().expect("running")
    }

    /// GET on the gateway; the response must arrive.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request through weir")
    }

    /// GET on the admin API, as JSON, expecting 200.
    pub async fn admin_json(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(self.admin_url(path))
            .send()
            .await
            .expect("admin request");
        assert_eq!(resp.status(), 200, "GET {path} on the admin API");
        resp.json().await.expect("admin JSON")
    }

    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("metrics text")
    }

    /// Drains and stops; returns whether every request finished within the grace period.
    pub async fn stop(mut self) -> bool {
        match self.running.take() {
            Some(r) => r.shutdown().await,
            None => true,
        }
    }
}

/// Starts weir in this process from a test config (see [`config`]).
pub async fn start(yaml: &str) -> Gateway {
    start_with_env(yaml, &MapEnv::default()).await
}

pub async fn start_with_env(yaml: &str, env: &MapEnv) -> Gateway {
    let loaded = load(yaml, env);
    let running = weir::start(loaded).await.expect("weir starts");
    let addr = running.addrs[0];
    let admin = running.admin_addr.expect("admin API address");
    Gateway {
        running: Some(running),
        addr,
        admin,
        client: client(),
    }
}

/// A plain HTTP/1.1 client that ignores proxy settings of the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client")
}

/// Asserts the contract's problem+json shape (§5) and returns the body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(
        resp.status().as_u16(),
        status,
        "status of a `{code}` problem"
    );
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "Content-Type of a `{code}` problem"
    );
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.expect("problem body is JSON");
    check_problem_body(&body, status, code, request_id.as_deref());
    body
}

pub fn check_problem_body(body: &Value, status: u16, code: &str, request_id: Option<&str>) {
    assert_eq!(
        body["type"],
        format!("https://weir.dev/errors/{code}"),
        "{body}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title: {body}"
    );
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "detail: {body}"
    );
    assert_eq!(body["code"], code, "{body}");
    let id = body["request_id"].as_str().expect("request_id");
    assert!(!id.is_empty());
    if let Some(h) = request_id {
        assert_eq!(
            id, h,
            "the problem's request_id is the X-Request-Id returned"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Polls `check` until it is true; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Files

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "weir-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first line of the file at `path` that contains `needle`, waiting for it to be written.
pub async fn eventually_line(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {needle:?} in {}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// weir started from the file at `path`, so it can reload it. The file is read with an empty
/// environment: the test's own variables (`WEIR_CONSUL` names the test's Consul binary) must
/// not act as `WEIR_*` overrides of the file.
pub async fn start_file(path: PathBuf) -> Result<weir::Running, weir::StartError> {
    let file = path.clone();
    weir::start::start_source(weir::reload::Source {
        path,
        load: std::sync::Arc::new(move || {
            weir_config::load_file(&file, &MapEnv::default(), &Overrides::default())
        }),
    })
    .await
}
