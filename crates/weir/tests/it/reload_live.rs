//! Reloading a running gateway: under load (no failed request, every answer from the
//! config current when its request began, no connection dropped), with a broken file (422
//! with its line and column, the running config stays), listeners opened and closed,
//! state of what did not change kept, `watch: true`, and SIGHUP on the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use weir_config::{MapEnv, Overrides};

use crate::common::{Backend, TempDir, client, config, eventually, spawn_weir};

/// weir started from a file, so it can reload it.
struct Live {
    running: Option<weir::Running>,
    path: PathBuf,
    client: reqwest::Client,
}

impl Live {
    async fn start(dir: &TempDir, yaml: &str) -> Self {
        let path = dir.write("weir.yaml", &config(yaml));
        // The test's own environment (WEIR_CONSUL names the test's Consul binary) must not
        // act as `WEIR_*` overrides of the file.
        let file = path.clone();
        let source = weir::reload::Source {
            path: path.clone(),
            load: Arc::new(move || {
                weir_config::load_file(&file, &MapEnv::default(), &Overrides::default())
            }),
        };
        let running = weir::start::start_source(source)
            .await
            .expect("weir starts");
        Self {
            running: Some(running),
            path,
            client: client(),
        }
    }

    fn running(&self) -> &weir::Running {
        self.running.as_ref().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.running().addrs[0]
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().admin_addr.unwrap())
    }

    /// Writes the file as an editor does: a new file renamed over the old one.
    fn save(&self, yaml: &str) {
        let tmp = self.path.with_extension("swp");
        std::fs::write(&tmp, config(yaml)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    async fn reload(&self) -> (u16, Value) {
        let resp = self
            .client
            .post(self.admin("/reload"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn metric(&self, line_start: &str) -> Option<String> {
        let text = self
            .client
            .get(self.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .map(str::to_owned)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            drop(tokio::spawn(r.shutdown()));
        }
    }
}

/// Generation `n` of the load test's config: `/gen` answers `n`, `/changed` answers
/// `changed-n`, and `/extra-n` exists only in even generations.
fn generation(n: u64) -> String {
    let extra = if n.is_multiple_of(2) {
        format!(
            "  - name: extra-{n}\n    match: {{ path: /extra-{n} }}\n    respond: {{ status: 200, body: extra }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "routes:
  - name: gen
    match: {{ path: /gen }}
    respond: {{ status: 200, body: '{n}' }}
  - name: changed
    match: {{ path: /changed }}
    respond: {{ status: 200, body: 'changed-{n}' }}
{extra}"
    )
}

/// One keep-alive HTTP/1.1 connection: `GET path`, the status and body.
async fn request(stream: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: weir.test\r\n\r\n");
    stream.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_drop_no_connection() {
    let dir = TempDir::new("reload-load");
    let live = Arc::new(Live::start(&dir, &generation(0)).await);
    // `committed`: the newest generation whose reload has answered 200; `attempted`: the
    // newest one asked for. An answer must lie between the two.
    let committed = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    for c in 0..50 {
        let (addr, committed, attempted) =
            (live.addr(), Arc::clone(&committed), Arc::clone(&attempted));
        clients.push(tokio::spawn(async move {
            let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
            let mut served = 0u64;
            while Instant::now() < stop {
                let path = if served.is_multiple_of(2) {
                    "/gen"
                } else {
                    "/changed"
                };
                let low = committed.load(Ordering::SeqCst);
                let (status, body) = request(&mut conn, path)
                    .await
                    .unwrap_or_else(|e| panic!("client {c}: request {served} failed: {e}"));
                let high = attempted.load(Ordering::SeqCst);
                assert_eq!(status, 200, "client {c}: {path} -> {status} {body}");
                let n: u64 = body.trim_start_matches("changed-").parse().unwrap();
                assert!(
                    (low..=high).contains(&n),
                    "client {c}: {path} answered by generation {n}, current was {low}..={high}"
                );
                served += 1;
            }
            served
        }));
    }
    let mut broken_seen = false;
    for n in 1..=20u64 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if n == 10 {
            // A broken file: line 5 holds a duration without a unit.
            live.save(
                "routes:\n  - name: gen\n    match: { path: /gen }\n    respond: { status: 200, body: x }\n    timeout: 5\n",
            );
            let (status, body) = live.reload().await;
            assert_eq!(status, 422, "{body}");
            let p = &body["problems"][0];
            assert_eq!(
                p["message"], "a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
                "{body}"
            );
            // The test's defaults come first in the file; the problem is found where it is.
            let text = std::fs::read_to_string(&live.path).unwrap();
            let line = text.lines().position(|l| l.contains("timeout: 5")).unwrap() + 1;
            assert_eq!(p["line"], line as u64, "{body}");
            assert_eq!(p["col"], 14, "{body}");
            broken_seen = true;
        }
        attempted.store(n, Ordering::SeqCst);
        live.save(&generation(n));
        let (status, body) = live.reload().await;
        assert_eq!(status, 200, "{body}");
        committed.store(n, Ordering::SeqCst);
        // Routes added and removed: `/extra-n` exists exactly in even generations.
        let extra = live.get(&format!("/extra-{n}")).await.status().as_u16();
        assert_eq!(
            extra,
            if n.is_multiple_of(2) { 200 } else { 404 },
            "generation {n}"
        );
    }
    assert!(broken_seen);
    let mut total = 0;
    for c in clients {
        // Each client's one connection served all its requests: none was dropped.
        total += c.await.unwrap();
    }
    assert!(total > 500, "the clients kept busy: {total} requests");
    assert_eq!(
        live.metric("weir_config_reloads_total{result=\"success\"}")
            .await
            .as_deref(),
        Some("weir_config_reloads_total{result=\"success\"} 20")
    );
    assert_eq!(
        live.metric("weir_config_reloads_total{result=\"failure\"}")
            .await
            .as_deref(),
        Some("weir_config_reloads_total{result=\"failure\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_and_the_running_config_stays() {
    let dir = TempDir::new("reload-broken");
    let live = Live::start(&dir, &generation(1)).await;
    live.save("routes:\n  - name: gen\n    match: { pathh: /gen }\n    respond: {}\n");
    let (status, body) = live.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_config");
    let p = &body["problems"][0];
    assert!(
        p["text"]
            .as_str()
            .unwrap()
            .contains("unknown key \"pathh\""),
        "{body}"
    );
    assert!(p["line"].as_u64().unwrap() > 0 && p["col"].as_u64().unwrap() > 0);
    assert_eq!(live.get("/gen").await.text().await.unwrap(), "1");
    // A reload of an unchanged file is a success that changes nothing.
    live.save(&generation(1));
    assert_eq!(live.reload().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_open_and_close_and_requests_in_flight_finish() {
    let dir = TempDir::new("reload-listeners");
    let backend = Backend::start("slow").await;
    let routes = format!(
        "upstreams:\n  be:\n    targets: [{{ url: '{}' }}]\nroutes:\n  - name: all\n    match: {{ prefix: / }}\n    upstream: be\n",
        backend.url()
    );
    let one = format!("listeners:\n  - {{ name: public, address: '127.0.0.1:0' }}\n{routes}");
    let two = format!(
        "listeners:\n  - {{ name: public, address: '127.0.0.1:0' }}\n  - {{ name: second, address: '127.0.0.1:0' }}\n{routes}"
    );
    let live = Live::start(&dir, &one).await;
    assert!(live.running().addr_of("second").await.is_none());
    live.save(&two);
    assert_eq!(live.reload().await.0, 200);
    let second = live.running().addr_of("second").await.expect("opened");
    let resp = live
        .client
        .get(format!("http://{second}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A request in flight on `second` when a reload removes it still gets its answer.
    backend.hold();
    let slow = {
        let c = live.client.clone();
        tokio::spawn(async move {
            c.get(format!("http://{second}/slow"))
                .header("x-hold", "1")
                .send()
                .await
        })
    };
    eventually(
        "the request reaches the backend",
        Duration::from_secs(5),
        || async { backend.held() == 1 },
    )
    .await;
    live.save(&one);
    assert_eq!(live.reload().await.0, 200);
    assert!(live.running().addr_of("second").await.is_none());
    eventually(
        "the removed listener refuses",
        Duration::from_secs(5),
        || async { TcpStream::connect(second).await.is_err() },
    )
    .await;
    backend.release();
    let resp = slow
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.status(), 200);
    // The listener that stayed never stopped.
    assert_eq!(live.get("/y").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_reload_does_not_change_keeps_its_state() {
    let dir = TempDir::new("reload-state");
    let backend = Backend::start("b").await;
    let yaml = |limit: u32, other: &str| {
        format!(
            "upstreams:
  be:
    targets: [{{ url: '{url}' }}]
    health_check:
      active: {{ path: /health, interval: 200ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
routes:
  - name: limited
    match: {{ prefix: /limited }}
    respond: {{ status: 200 }}
    rate_limit: [{{ key: ip, limit: {limit}, per: 1m }}]
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: '{other}' }}
  - name: proxied
    match: {{ prefix: /p }}
    upstream: be
",
            url = backend.url()
        )
    };
    let live = Live::start(&dir, &yaml(3, "a")).await;
    for _ in 0..3 {
        assert_eq!(live.get("/limited").await.status(), 200);
    }
    // The target goes unhealthy.
    backend.set_healthy(false);
    let healthy = |live: &Live| {
        let url = live.admin("/upstreams");
        let c = live.client.clone();
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["upstreams"][0]["targets"][0]["healthy"]
                .as_bool()
                .unwrap()
        }
    };
    eventually(
        "the target is unhealthy",
        Duration::from_secs(5),
        || async { !healthy(&live).await },
    )
    .await;

    // Another route changes: the limit's counter and the target's health stay.
    live.save(&yaml(3, "b"));
    assert_eq!(live.reload().await.0, 200);
    assert_eq!(live.get("/other").await.text().await.unwrap(), "b");
    assert_eq!(
        live.get("/limited").await.status(),
        429,
        "the counter was kept"
    );
    assert!(!healthy(&live).await, "the target's health was kept");
    assert_eq!(
        live.get("/p").await.status(),
        503,
        "and it still gets no traffic"
    );

    // The limit itself changes: a new policy starts counting afresh.
    live.save(&yaml(5, "b"));
    assert_eq!(live.reload().await.0, 200);
    assert_eq!(live.get("/limited").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_when_the_file_is_saved() {
    let dir = TempDir::new("reload-watch");
    let live = Live::start(&dir, &format!("watch: true\n{}", generation(1))).await;
    assert_eq!(live.get("/gen").await.text().await.unwrap(), "1");
    live.save(&format!("watch: true\n{}", generation(2)));
    eventually(
        "the saved file is served",
        Duration::from_secs(10),
        || async { live.get("/gen").await.text().await.unwrap() == "2" },
    )
    .await;
    // A broken save is refused; the running config stays.
    live.save(
        "watch: true\nroutes: [ { name: gen, match: { path: /gen }, respond: { status: 999 } } ]\n",
    );
    eventually(
        "the failure is counted",
        Duration::from_secs(10),
        || async {
            live.metric("weir_config_reloads_total{result=\"failure\"}")
                .await
                .is_some_and(|l| l.ends_with(" 1"))
        },
    )
    .await;
    assert_eq!(live.get("/gen").await.text().await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_listener_cannot_bind_changes_nothing() {
    let dir = TempDir::new("reload-bind");
    let live = Live::start(&dir, &generation(1)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    live.save(&format!(
        "listeners:\n  - {{ name: public, address: '127.0.0.1:0' }}\n  - {{ name: busy, address: '{addr}' }}\n{}",
        generation(2)
    ));
    let (status, body) = live.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(&addr.to_string()),
        "{body}"
    );
    assert_eq!(live.get("/gen").await.text().await.unwrap(), "1");
}

#[test]
fn sighup_reloads_the_real_binary() {
    let dir = TempDir::new("reload-hup");
    let path = dir.write("weir.yaml", &config(&generation(1)));
    let w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    let get = |p: &str| {
        let mut s = std::net::TcpStream::connect(w.addr).unwrap();
        std::io::Write::write_all(
            &mut s,
            format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    assert!(get("/gen").ends_with("\r\n\r\n1"));
    write_renamed(&path, &config(&generation(2)));
    w.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get("/gen").ends_with("\r\n\r\n2") {
        assert!(Instant::now() < deadline, "not reloaded: {}", w.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.stderr().contains("configuration reloaded"),
        "{}",
        w.stderr()
    );
}

fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
