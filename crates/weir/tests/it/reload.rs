//! Hot reload end to end (contract §6, the reload issue), through the real gateway on real
//! sockets: `POST /reload`, `watch: true` and SIGHUP on the `weir` binary.
//!
//! - Under load: 50 keep-alive connections busy for 10 s through 20 reloads and a broken
//!   file: no failed request, no connection dropped, every answer from a config that was
//!   current while its request ran; an h2c connection's streams likewise; a request in
//!   flight finishes on the config it began on, even when the next one drops its upstream.
//! - A broken file: 422 with file:line:col, logged likewise, counted; the running config
//!   stays. Concurrent reloads are serialized.
//! - Listeners a reload adds open, those it removes close after their requests finish; a
//!   reload whose listener cannot bind changes nothing; a certificate renewed in place is
//!   served after a reload.
//! - What a reload leaves alone keeps its state: rate-limit counters, circuits, health,
//!   pooled upstream connections, the cache; old generations' health checks stop.
//! - `watch: true`: saves by rename, a ConfigMap's symlink swap, and `watch` turned on by a
//!   reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpStream;

use crate::common::faults::{Flaky, is_problem, target_info};
use crate::common::idp::TestCa;
use crate::common::reload::{KeepAlive, Live, position, reloads_in, save_renamed, text};
use crate::common::tls::{ClientTls, H1, KeyType, served_leaf};
use crate::common::{
    Backend, DEADLINE, RawResponse, TempDir, assert_problem, client, closed_within, config,
    eventually, free_port, spawn_weir,
};

// ---------------------------------------------------------------------------------------
// Configurations

/// Generation `n` with fixed responses only: `/gen` answers `n` (and `X-Gen: n`).
fn respond_gen(n: u64) -> String {
    format!(
        "routes:
  - name: gen
    match: {{ path: /gen }}
    respond: {{ status: 200, headers: {{ X-Gen: \"{n}\" }}, body: \"{n}\" }}
"
    )
}

/// Generation `n` of the load test. Every answer names its generation in `X-Gen`:
/// `/gen` answers `n`; `/changed` answers `changed-n` (and alternates its methods);
/// `/up` goes to upstream `be` (the same in every generation) with `X-Gen` set on the way
/// back; `/extra-n` exists only in even generations (added, then removed by the next).
fn generation(n: u64, upstream: &str) -> String {
    let methods = if n.is_multiple_of(2) {
        "[GET]"
    } else {
        "[GET, POST]"
    };
    let mut y = format!(
        "upstreams:
  be:
    targets: [{{ url: \"{upstream}\" }}]
routes:
  - name: gen
    match: {{ path: /gen }}
    respond: {{ status: 200, headers: {{ X-Gen: \"{n}\" }}, body: \"{n}\" }}
  - name: changed
    match: {{ prefix: /changed, methods: {methods} }}
    respond: {{ status: 200, headers: {{ X-Gen: \"{n}\" }}, body: \"changed-{n}\" }}
  - name: up
    match: {{ prefix: /up }}
    upstream: be
    transform: {{ response: {{ headers: {{ set: {{ X-Gen: \"{n}\" }} }} }} }}
"
    );
    if n.is_multiple_of(2) {
        y.push_str(&format!(
            "  - name: extra-{n}
    match: {{ path: /extra-{n} }}
    respond: {{ status: 200, body: \"extra-{n}\" }}
"
        ));
    }
    y
}

/// `yaml` with a duration without a unit (`timeout: 5`) added to route `gen`.
fn with_bad_duration(yaml: &str) -> String {
    let broken = yaml.replacen("  - name: gen\n", "  - name: gen\n    timeout: 5\n", 1);
    assert_ne!(broken, yaml, "the config has a route `gen`");
    broken
}

const BAD_DURATION: &str = "a duration needs a unit";

/// Checks a 422 answer of `POST /reload` to a file with one bad duration, `timeout: 5`:
/// the problem names the file, the line and the column of the `5`.
fn assert_bad_duration_refused(live: &Live, written: &str, status: u16, body: &Value) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_config", "{body}");
    assert_eq!(body["status"], 422, "{body}");
    let (line, key_col) = position(written, "timeout: 5");
    let col = key_col + "timeout: ".len() as u64;
    let p = &body["problems"][0];
    let file = live.path.display().to_string();
    assert_eq!(p["file"], file.as_str(), "{body}");
    assert_eq!(p["line"], line, "{body}");
    assert_eq!(p["col"], col, "{body}");
    assert!(
        p["message"].as_str().unwrap().contains(BAD_DURATION),
        "{body}"
    );
    let at = format!("{file}:{line}:{col}");
    assert!(p["text"].as_str().unwrap().starts_with(&at), "{body}");
}

// ---------------------------------------------------------------------------------------
// Under load

const CLIENTS: u64 = 50;
const RELOADS: u64 = 20;
/// The broken file comes after this generation.
const BROKEN_AFTER: u64 = 10;
const LOAD_FOR: Duration = Duration::from_secs(10);

/// What one keep-alive client saw.
struct Report {
    conn: KeepAlive,
    /// Failures (transport errors, statuses, generations out of bounds), the first few.
    errors: Vec<String>,
    failed: u64,
    lowest: u64,
    highest: u64,
}

/// The generation of a load-test answer, if it is right for `path`.
fn generation_of(path: &str, resp: &RawResponse) -> Result<u64, String> {
    let body = text(resp);
    if resp.status != 200 {
        return Err(format!("status {}: {body}", resp.status));
    }
    let n: u64 = resp
        .header("x-gen")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no X-Gen: {:?}", resp.headers))?;
    let expected = match path {
        "/gen" => Some(n.to_string()),
        "/changed/x" => Some(format!("changed-{n}")),
        _ => None,
    };
    if let Some(e) = expected
        && body != e
    {
        return Err(format!(
            "X-Gen {n} but the body is {body:?}: two generations mixed"
        ));
    }
    if path == "/up/x" && resp.header("x-backend") != Some("be") {
        return Err(format!("not from the upstream: {:?}", resp.headers));
    }
    Ok(n)
}

/// The load test's shared state.
#[derive(Default)]
struct Clock {
    /// The newest generation whose reload has answered 200.
    committed: AtomicU64,
    /// The newest generation asked for. The generation serving a request lies between the
    /// two.
    attempted: AtomicU64,
    stop: AtomicBool,
    /// Good answers so far, over all clients.
    answered: AtomicU64,
}

/// Sends requests on one connection until `stop`; each answer's generation must lie between
/// the last one committed before the request was sent and the last one attempted after its
/// answer arrived.
async fn hammer(id: u64, addr: SocketAddr, clock: Arc<Clock>) -> Report {
    let Clock {
        committed,
        attempted,
        stop,
        answered,
    } = &*clock;
    let mut conn = KeepAlive::connect(addr).await;
    let mut errors = Vec::new();
    let (mut failed, mut lowest, mut highest) = (0, u64::MAX, 0);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // `/up` waits a little at the upstream, so reloads land while it is in flight.
        let (path, headers): (&str, &[&str]) = match (i + id) % 3 {
            0 => ("/gen", &[]),
            1 => ("/changed/x", &[]),
            _ => ("/up/x", &["x-delay-ms: 20"]),
        };
        let low = committed.load(Ordering::SeqCst);
        let answer = conn.get(path, headers).await;
        let high = attempted.load(Ordering::SeqCst);
        let outcome = answer.and_then(|resp| {
            let n = generation_of(path, &resp)?;
            if (low..=high).contains(&n) {
                Ok(n)
            } else {
                Err(format!("generation {n}, but {low}..={high} was current"))
            }
        });
        match outcome {
            Ok(n) => {
                lowest = lowest.min(n);
                highest = highest.max(n);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 3 {
                    errors.push(format!("client {id}, request {i}, GET {path}: {e}"));
                }
                if conn.served < i + 1 {
                    // The connection is gone: nothing more to learn from it.
                    break;
                }
            }
        }
        i += 1;
    }
    Report {
        conn,
        errors,
        failed,
        lowest,
        highest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_and_a_broken_file_under_load_fail_no_request_and_drop_no_connection() {
    let backend = Backend::start("be").await;
    let up = backend.url();
    let live = Live::start("reload-load", &generation(0, &up)).await;
    let clock = Arc::new(Clock::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(hammer(id, live.addr, Arc::clone(&clock))))
        .collect();
    let answered = || clock.answered.load(Ordering::SeqCst);
    eventually("the clients are busy", DEADLINE, || async {
        answered() >= CLIENTS
    })
    .await;

    let started = Instant::now();
    // 20 good reloads and a broken one, spread over the 10 s.
    let pace = LOAD_FOR / u32::try_from(RELOADS + 2).unwrap();
    let mut version = String::new();
    for n in 1..=RELOADS {
        tokio::time::sleep(pace).await;
        if n == BROKEN_AFTER + 1 {
            let written = live.save(&with_bad_duration(&generation(n, &up)));
            let (status, body) = live.reload().await;
            assert_bad_duration_refused(&live, &written, status, &body);
            assert_eq!(live.version().await, version, "the running config stays");
            tokio::time::sleep(pace).await;
        }
        clock.attempted.store(n, Ordering::SeqCst);
        live.save(&generation(n, &up));
        version = live.reload_ok().await;
        clock.committed.store(n, Ordering::SeqCst);
        // Routes added and removed: `/extra-n` exists exactly in even generations.
        if n.is_multiple_of(2) {
            assert_eq!(
                live.body(&format!("/extra-{n}")).await,
                format!("extra-{n}")
            );
        } else {
            let gone = live.get(&format!("/extra-{}", n - 1)).await;
            assert_problem(gone, 404, "route_not_found").await;
        }
    }
    // Load on for the full 10 s, and until every client has been answered by the last
    // generation (with one request each in flight at the last commit, 2 per client).
    let mark = answered();
    eventually("answers from the last generation", DEADLINE, || async {
        answered() >= mark + 2 * CLIENTS
    })
    .await;
    tokio::time::sleep_until((started + LOAD_FOR).into()).await;
    clock.stop.store(true, Ordering::SeqCst);

    let mut failed = 0;
    let mut errors = Vec::new();
    let (mut lowest, mut highest, mut served) = (u64::MAX, 0, 0);
    let mut conns = Vec::new();
    for c in clients {
        let r = c.await.expect("a client task");
        failed += r.failed;
        errors.extend(r.errors);
        lowest = lowest.min(r.lowest);
        highest = highest.max(r.highest);
        served += r.conn.served;
        conns.push(r.conn);
    }
    assert!(
        failed == 0,
        "{failed} failed requests, e.g.:\n{}",
        errors.join("\n")
    );
    assert!(
        served >= CLIENTS * 10,
        "the clients kept busy: {served} requests"
    );
    assert_eq!(
        (lowest, highest),
        (0, RELOADS),
        "answers came from the first to the last generation"
    );
    // Every connection is the one it opened, still open, and on the last generation.
    for (id, conn) in conns.iter_mut().enumerate() {
        let before = conn.served;
        let resp = conn
            .get("/gen", &[])
            .await
            .unwrap_or_else(|e| panic!("client {id}'s connection after the run: {e}"));
        assert_eq!(text(&resp), RELOADS.to_string(), "client {id}");
        assert_eq!(conn.served, before + 1);
    }
    let metrics = live.metrics().await;
    assert_eq!(reloads_in(&metrics, "success"), RELOADS, "{metrics}");
    assert_eq!(reloads_in(&metrics, "failure"), 1, "{metrics}");
    assert_eq!(live.version().await, version);
    // Closed first: weir lingers on a connection whose client keeps it open.
    drop(conns);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_connection_and_its_streams_live_through_reloads() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let yaml = |n: u64| {
        format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\", http2: true }}\n{}",
            respond_gen(n)
        )
    };
    let live = Live::start("reload-h2c", &yaml(0)).await;
    let tcp = TcpStream::connect(live.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c prior knowledge");
    let conn = tokio::spawn(conn);
    let get = |mut sender: hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>| async move {
        let req = http::Request::get("http://weir.test/gen")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == 200 {
            body.parse::<u64>().map_err(|e| format!("{body:?}: {e}"))
        } else {
            Err(format!("status {status}: {body}"))
        }
    };

    // Ten streams at a time on the one connection, through ten reloads.
    let clock = Arc::new(Clock::default());
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let (clock, sender) = (Arc::clone(&clock), sender.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while !clock.stop.load(Ordering::SeqCst) {
                    let low = clock.committed.load(Ordering::SeqCst);
                    let answer = get(sender.clone()).await;
                    let high = clock.attempted.load(Ordering::SeqCst);
                    match answer {
                        Ok(n) if (low..=high).contains(&n) => {
                            clock.answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(n) => errors.push(format!("generation {n}, {low}..={high} current")),
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        })
        .collect();
    for n in 1..=10 {
        let mark = clock.answered.load(Ordering::SeqCst);
        eventually("streams answered", DEADLINE, || async {
            clock.answered.load(Ordering::SeqCst) >= mark + 20
        })
        .await;
        clock.attempted.store(n, Ordering::SeqCst);
        live.apply(&yaml(n)).await;
        clock.committed.store(n, Ordering::SeqCst);
    }
    clock.stop.store(true, Ordering::SeqCst);
    for s in streams {
        let errors = s.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    assert!(!conn.is_finished(), "the connection is still open");
    assert_eq!(get(sender.clone()).await, Ok(10));
    drop(sender);
    live.stop().await;
}

/// Generation `n` without upstream `be`: `/up` is answered by weir (`gone-n`).
fn without_upstream(n: u64) -> String {
    format!(
        "{}  - name: up
    match: {{ prefix: /up }}
    respond: {{ status: 200, headers: {{ X-Gen: \"{n}\" }}, body: \"gone-{n}\" }}
",
        respond_gen(n)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let backend = Backend::start("be").await;
    let live = Live::start("reload-in-flight", &generation(1, &backend.url())).await;
    let mut conn = KeepAlive::connect(live.addr).await;
    backend.hold();
    conn.send("/up/held", &["x-hold: 1"]).await.unwrap();
    eventually("the request is at the upstream", DEADLINE, || async {
        backend.held() == 1
    })
    .await;

    // The next generation has no upstream `be` at all and answers `/up` itself.
    live.apply(&without_upstream(2)).await;
    assert_eq!(live.body("/up/new").await, "gone-2");

    backend.release();
    let resp = conn
        .read()
        .await
        .expect("the request in flight is answered");
    assert_eq!(resp.status, 200, "{}", text(&resp));
    assert_eq!(
        resp.header("x-backend"),
        Some("be"),
        "from the old upstream"
    );
    assert_eq!(
        resp.header("x-gen"),
        Some("1"),
        "transformed by the old config"
    );
    // The same connection's next request is served by the new config.
    let next = conn
        .get("/up/next", &[])
        .await
        .expect("the connection stays");
    assert_eq!(
        (text(&next).as_str(), next.header("x-gen")),
        ("gone-2", Some("2"))
    );
    drop(conn);
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// Broken files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_with_its_line_and_column_and_the_running_config_stays() {
    let live = Live::start("reload-broken", &respond_gen(1)).await;
    let version = live.version().await;

    let written = live.save(&with_bad_duration(&respond_gen(2)));
    let (status, body) = live.reload().await;
    assert_bad_duration_refused(&live, &written, status, &body);
    assert_eq!(
        body["type"], "https://weir.dev/errors/invalid_config",
        "{body}"
    );

    // Other kinds of problems: each is found where it is in the file.
    let file = live.path.display().to_string();
    let cases = [
        (
            respond_gen(2).replace("match: { path: /gen }", "match: { pathh: /gen }"),
            "pathh",
            "pathh",
        ),
        (
            format!(
                "{}  - name: lost\n    match: {{ prefix: /lost }}\n    upstream: nowhere\n",
                respond_gen(2)
            ),
            "upstream: nowhere",
            "nowhere",
        ),
        (
            respond_gen(2).replace("body: \"2\" }", "body: \"2\""),
            "",
            "",
        ),
    ];
    for (yaml, needle, says) in &cases {
        let written = live.save(yaml);
        let (status, body) = live.reload().await;
        assert_eq!(status, 422, "{body}\n--- file ---\n{written}");
        let p = &body["problems"][0];
        assert_eq!(p["file"], file.as_str(), "{body}");
        let line = p["line"].as_u64().unwrap();
        let col = p["col"].as_u64().unwrap();
        assert!(line > 0 && col > 0, "{body}");
        if !needle.is_empty() {
            assert_eq!(line, position(&written, needle).0, "{body}\n{written}");
        }
        assert!(p["message"].as_str().unwrap().contains(says), "{body}");
        assert!(
            p["text"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{file}:{line}:{col}")),
            "{body}"
        );
        assert_eq!(live.body("/gen").await, "1", "the running config stays");
    }

    assert_eq!(live.version().await, version);
    assert_eq!(live.reloads("failure").await, 4);
    assert_eq!(live.reloads("success").await, 0);
    // Fixed, it loads.
    let fixed = live.apply(&respond_gen(2)).await;
    assert_ne!(fixed, version);
    assert_eq!(live.body("/gen").await, "2");
    assert_eq!(live.reloads("success").await, 1);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_all_succeed_on_one_version() {
    let live = Live::start("reload-concurrent", &respond_gen(1)).await;
    live.save(&respond_gen(2));
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (live.client.clone(), live.admin_url("/reload"));
            tokio::spawn(async move {
                let resp = c.post(url).send().await.unwrap();
                (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut versions = Vec::new();
    for p in posts {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
        versions.push(body["version"].as_str().unwrap().to_owned());
    }
    versions.dedup();
    assert_eq!(versions, [live.version().await]);
    assert_eq!(live.body("/gen").await, "2");
    assert_eq!(live.reloads("success").await, 8);
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// Listeners

/// Listeners `names` (each on `127.0.0.1:0`) and a catch-all route to `upstream`.
fn listeners_to(names: &[&str], upstream: &str) -> String {
    let mut y = String::from("listeners:\n");
    for n in names {
        y.push_str(&format!("  - {{ name: {n}, address: \"127.0.0.1:0\" }}\n"));
    }
    y.push_str(&format!(
        "upstreams:
  be:
    targets: [{{ url: \"{upstream}\" }}]
routes:
  - name: all
    match: {{ prefix: / }}
    upstream: be
"
    ));
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_a_reload_adds_open_and_those_it_removes_close_after_their_requests() {
    let backend = Backend::start("be").await;
    let one = listeners_to(&["public"], &backend.url());
    let two = listeners_to(&["public", "second"], &backend.url());
    let live = Live::start("reload-listeners", &one).await;
    assert_eq!(live.addr_of("public").await, Some(live.addr));
    assert_eq!(live.addr_of("second").await, None);
    let mut public = KeepAlive::connect(live.addr).await;
    assert_eq!(public.get("/before", &[]).await.unwrap().status, 200);

    live.apply(&two).await;
    let second = live.addr_of("second").await.expect("second is open");
    assert_ne!(second, live.addr);
    assert_eq!(
        live.addr_of("public").await,
        Some(live.addr),
        "public stays"
    );
    let resp = live
        .client
        .get(format!("http://{second}/via-second"))
        .send()
        .await
        .expect("the new listener serves");
    assert_eq!(resp.headers()["x-backend"], "be");
    let metrics = live.metrics().await;
    assert!(
        metrics.contains("weir_connections_active{listener=\"second\"}"),
        "{metrics}"
    );

    // On `second`: one idle keep-alive connection and one with a request in flight.
    let mut idle = KeepAlive::connect(second).await;
    assert_eq!(idle.get("/idle", &[]).await.unwrap().status, 200);
    let mut busy = KeepAlive::connect(second).await;
    backend.hold();
    busy.send("/held", &["x-hold: 1"]).await.unwrap();
    eventually("the request is at the upstream", DEADLINE, || async {
        backend.held() == 1
    })
    .await;

    live.apply(&one).await;
    assert_eq!(live.addr_of("second").await, None);
    eventually(
        "the removed listener refuses new connections",
        DEADLINE,
        || async { TcpStream::connect(second).await.is_err() },
    )
    .await;
    assert!(
        closed_within(idle.stream(), DEADLINE).await,
        "an idle connection of a removed listener is closed"
    );
    backend.release();
    let resp = busy
        .read()
        .await
        .expect("the request in flight is answered");
    assert_eq!(resp.status, 200, "{}", text(&resp));
    assert_eq!(resp.header("x-backend"), Some("be"));
    assert!(
        closed_within(busy.stream(), DEADLINE).await,
        "then its connection closes"
    );
    // (Closed on this side too: weir lingers while a client keeps its side open.)
    drop((idle, busy));

    // The listener that stayed kept its connection through both reloads.
    assert_eq!(public.get("/after", &[]).await.unwrap().status, 200);
    assert_eq!(public.served, 2);
    let metrics = live.metrics().await;
    assert!(
        !metrics.contains("listener=\"second\""),
        "a closed listener leaves /metrics: {metrics}"
    );
    drop(public);
    live.stop().await;
}

/// A listener renamed (or re-addressed onto the port it already holds) is a removal and an
/// addition on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_renamed_on_the_same_address_keeps_serving_there() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let named = |name: &str, n: u64| {
        format!(
            "listeners:\n  - {{ name: {name}, address: \"{addr}\" }}\n{}",
            respond_gen(n)
        )
    };
    let live = Live::start("reload-rename", &named("public", 1)).await;
    assert_eq!(live.addr, addr);
    live.save(&named("main", 2));
    let (status, body) = live.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live.addr_of("main").await, Some(addr));
    assert_eq!(live.addr_of("public").await, None);
    assert_eq!(live.body("/gen").await, "2");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_new_listener_cannot_bind_changes_nothing() {
    let live = Live::start("reload-bind", &respond_gen(1)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let three = |n: u64| {
        format!(
            "listeners:
  - {{ name: public, address: \"127.0.0.1:0\" }}
  - {{ name: second, address: \"127.0.0.1:0\" }}
  - {{ name: busy, address: \"{busy}\" }}
{}",
            respond_gen(n)
        )
    };
    live.save(&three(2));
    let (status, body) = live.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_config", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&busy.to_string()) && detail.contains("busy"),
        "the problem names the listener and its address: {body}"
    );
    // All or nothing: the listener that could bind was not opened either.
    assert_eq!(live.addr_of("second").await, None);
    assert_eq!(live.addr_of("busy").await, None);
    assert_eq!(live.body("/gen").await, "1");
    assert_eq!(live.reloads("failure").await, 1);

    // Once the address is free, the same file loads.
    drop(taken);
    live.reload_ok().await;
    assert_eq!(live.addr_of("busy").await, Some(busy));
    assert!(live.addr_of("second").await.is_some());
    let resp = live
        .client
        .get(format!("http://{busy}/gen"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "2");
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// State kept

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counters_survive_a_reload_that_leaves_their_policy_alone() {
    let yaml = |limit: u32, other: &str| {
        format!(
            "routes:
  - name: limited
    match: {{ prefix: /limited }}
    respond: {{ status: 200, body: ok }}
    rate_limit: [{{ key: ip, limit: {limit}, per: 1m }}]
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: \"{other}\" }}
"
        )
    };
    let live = Live::start("reload-limits", &yaml(3, "a")).await;
    for i in 0..3 {
        assert_eq!(live.get("/limited").await.status(), 200, "request {i}");
    }
    // Another route changes: the counter is kept.
    live.apply(&yaml(3, "b")).await;
    assert_eq!(live.body("/other").await, "b");
    assert_problem(live.get("/limited").await, 429, "rate_limited").await;

    // The limit itself changes: a new policy counts afresh.
    live.apply(&yaml(5, "b")).await;
    for i in 0..5 {
        assert_eq!(live.get("/limited").await.status(), 200, "request {i}");
    }
    assert_problem(live.get("/limited").await, 429, "rate_limited").await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_counters_of_an_upstream_limit_stay_with_their_route_when_routes_move() {
    let backend = Backend::start("be").await;
    // An upstream limit by `route`: each route to `be` has its own counter.
    let yaml = |first: bool| {
        let z = if first {
            "  - name: z\n    match: { prefix: /z }\n    respond: { status: 200 }\n"
        } else {
            ""
        };
        format!(
            "upstreams:
  be:
    targets: [{{ url: \"{}\" }}]
    rate_limit: [{{ key: route, limit: 2, per: 1m }}]
routes:
{z}  - name: a
    match: {{ prefix: /a }}
    upstream: be
  - name: b
    match: {{ prefix: /b }}
    upstream: be
",
            backend.url()
        )
    };
    let live = Live::start("reload-route-limits", &yaml(false)).await;
    assert_eq!(live.get("/a").await.status(), 200);
    assert_eq!(live.get("/a").await.status(), 200);
    assert_problem(live.get("/a").await, 429, "rate_limited").await;
    assert_eq!(live.get("/b").await.status(), 200, "b counts apart");

    // A new route comes first in the file; `a` and `b` and their limit do not change.
    live.apply(&yaml(true)).await;
    assert_problem(live.get("/a").await, 429, "rate_limited").await;
    assert_eq!(live.get("/b").await.status(), 200, "b had one left");
    assert_problem(live.get("/b").await, 429, "rate_limited").await;
    live.stop().await;
}

const BREAKER: &str = "circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1m, half_open_requests: 1 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_and_health_of_unchanged_upstreams_survive_a_reload() {
    let bad = Flaky::failing("bad", 503).await;
    let checked = Backend::start("checked").await;
    let yaml = |other: &str, breaker: &str| {
        format!(
            "upstreams:
  br:
    targets: [{{ url: \"{bad}\" }}]
    {breaker}
  hc:
    targets: [{{ url: \"{checked}\" }}]
    health_check:
      active: {{ path: /health, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
routes:
  - name: br
    match: {{ prefix: /br }}
    upstream: br
  - name: hc
    match: {{ prefix: /hc }}
    upstream: hc
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: \"{other}\" }}
",
            bad = bad.url(),
            checked = checked.url()
        )
    };
    let live = Live::start("reload-circuits", &yaml("a", BREAKER)).await;
    let healthy = || async {
        target_info(&live, "hc", &checked.url()).await["healthy"]
            .as_bool()
            .unwrap()
    };
    let circuit = || async {
        target_info(&live, "br", &bad.url()).await["circuit"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Four failures open the circuit; the target of `hc` fails its probes.
    for i in 0..4 {
        let resp = live.get("/br").await;
        assert_eq!(resp.status(), 503, "request {i}");
        assert!(!is_problem(&resp), "the upstream's own 503");
    }
    assert_problem(live.get("/br").await, 503, "upstream_unavailable").await;
    assert_eq!(circuit().await, "open");
    checked.set_healthy(false);
    eventually("hc's target is unhealthy", DEADLINE, || async {
        !healthy().await
    })
    .await;

    // An unrelated route changes.
    live.apply(&yaml("b", BREAKER)).await;
    assert_eq!(live.body("/other").await, "b");
    assert_eq!(circuit().await, "open", "the circuit was kept");
    assert_problem(live.get("/br").await, 503, "upstream_unavailable").await;
    assert_eq!(bad.requests(), 4, "still rejected without contact");
    assert!(!healthy().await, "the health was kept");
    assert_problem(live.get("/hc").await, 503, "upstream_unavailable").await;

    // The probes go on in the new generation: the target comes back.
    checked.set_healthy(true);
    eventually("hc's target is healthy again", DEADLINE, || async {
        healthy().await
    })
    .await;
    assert!(live.body("/hc").await.contains("checked"));

    // When the upstream itself changes, it starts afresh.
    let changed = BREAKER.replace("open_for: 1m", "open_for: 2m");
    live.apply(&yaml("b", &changed)).await;
    assert_eq!(circuit().await, "closed");
    assert_eq!(live.get("/br").await.status(), 503);
    assert_eq!(bad.requests(), 5, "a closed circuit lets it through");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_upstream_keeps_its_pooled_connections() {
    let origin = Flaky::start("pooled").await;
    let yaml = |other: &str, request: &str| {
        format!(
            "upstreams:
  be:
    targets: [{{ url: \"{}\" }}]
    timeouts: {{ connect: 2s, request: {request} }}
routes:
  - name: p
    match: {{ prefix: /p }}
    upstream: be
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: \"{other}\" }}
",
            origin.url()
        )
    };
    let live = Live::start("reload-pool", &yaml("a", "30s")).await;
    for _ in 0..3 {
        assert_eq!(live.get("/p").await.status(), 200);
    }
    assert_eq!(origin.connections(), 1, "the pool reuses one connection");

    live.apply(&yaml("b", "30s")).await;
    for _ in 0..3 {
        assert_eq!(live.get("/p").await.status(), 200);
    }
    assert_eq!(origin.requests(), 6);
    assert_eq!(
        origin.connections(),
        1,
        "after the reload the same connection is reused"
    );

    // A changed upstream gets a new client, so a new connection.
    live.apply(&yaml("b", "20s")).await;
    assert_eq!(live.get("/p").await.status(), 200);
    assert_eq!(origin.connections(), 2);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_responses_of_an_unchanged_route_survive_a_reload() {
    let backend = Backend::start("origin").await;
    let yaml = |other: &str| {
        format!(
            "upstreams:
  be:
    targets: [{{ url: \"{}\" }}]
routes:
  - name: c
    match: {{ prefix: /c }}
    upstream: be
    cache: {{ ttl: 1m }}
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: \"{other}\" }}
",
            backend.url()
        )
    };
    let live = Live::start("reload-cache", &yaml("a")).await;
    let x_cache = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(x_cache(&live.get("/c/1").await).as_deref(), Some("MISS"));
    assert_eq!(x_cache(&live.get("/c/1").await).as_deref(), Some("HIT"));
    live.apply(&yaml("b")).await;
    assert_eq!(x_cache(&live.get("/c/1").await).as_deref(), Some("HIT"));
    assert_eq!(
        backend.hits(),
        1,
        "only the first request reached the origin"
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_replaced_generations_stop() {
    let backend = Backend::start("checked").await;
    let yaml = |other: u64, checked: bool| {
        let mut y = String::new();
        if checked {
            y.push_str(&format!(
                "upstreams:
  hc:
    targets: [{{ url: \"{}\" }}]
    health_check:
      active: {{ path: /health, interval: 50ms }}
",
                backend.url()
            ));
        }
        y.push_str(&format!(
            "routes:
  - name: other
    match: {{ prefix: /other }}
    respond: {{ status: 200, body: \"{other}\" }}
"
        ));
        if checked {
            y.push_str("  - name: hc\n    match: { prefix: /hc }\n    upstream: hc\n");
        }
        y
    };
    let probes = || backend.state.probes_ok.load(Ordering::SeqCst);
    let live = Live::start("reload-probes", &yaml(0, true)).await;
    eventually("probes run", DEADLINE, || async { probes() >= 2 }).await;
    for n in 1..=5 {
        live.apply(&yaml(n, true)).await;
    }
    let before = probes();
    eventually("probes go on", DEADLINE, || async { probes() > before + 2 }).await;
    // The upstream goes away: no generation probes it any more.
    live.apply(&yaml(6, false)).await;
    eventually("the probes stop", DEADLINE, || async {
        let before = probes();
        tokio::time::sleep(Duration::from_millis(300)).await;
        probes() == before
    })
    .await;
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// watch: true

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_a_file_saved_by_rename_is_reloaded_and_a_broken_save_refused() {
    let watched = |yaml: String| format!("watch: true\n{yaml}");
    let live = Live::start("reload-watch", &watched(respond_gen(1))).await;
    assert_eq!(live.body("/gen").await, "1");

    live.save(&watched(respond_gen(2)));
    eventually("the saved file is served", DEADLINE, || async {
        live.body("/gen").await == "2"
    })
    .await;
    eventually("the reload is counted", DEADLINE, || async {
        live.reloads("success").await >= 1
    })
    .await;

    // A broken save is refused; the running config stays.
    live.save(&with_bad_duration(&watched(respond_gen(3))));
    eventually("the failure is counted", DEADLINE, || async {
        live.reloads("failure").await >= 1
    })
    .await;
    assert_eq!(live.body("/gen").await, "2");

    // Several saves in a row (debounced): the last one wins.
    for n in 4..=6 {
        live.save(&watched(respond_gen(n)));
    }
    eventually("the last save is served", DEADLINE, || async {
        live.body("/gen").await == "6"
    })
    .await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_a_configmap_style_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;
    // As Kubernetes mounts a ConfigMap: weir.yaml -> ..data/weir.yaml, ..data -> ..v1; an
    // update writes ..v2 and renames a new ..data link over the old one.
    let dir = TempDir::new("reload-configmap");
    let root = dir.path().to_owned();
    let version = |v: u64| {
        let d = root.join(format!("..v{v}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("weir.yaml"),
            config(&format!("watch: true\n{}", respond_gen(v))),
        )
        .unwrap();
    };
    version(1);
    symlink("..v1", dir.path().join("..data")).unwrap();
    let path = dir.path().join("weir.yaml");
    symlink("..data/weir.yaml", &path).unwrap();
    let live = Live::start_at(dir, path).await;
    assert_eq!(live.body("/gen").await, "1");

    version(2);
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    eventually("the new ConfigMap is served", DEADLINE, || async {
        live.body("/gen").await == "2"
    })
    .await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_watch_on_starts_watching() {
    let live = Live::start("reload-watch-on", &respond_gen(1)).await;
    live.apply(&format!("watch: true\n{}", respond_gen(2)))
        .await;
    live.save(&format!("watch: true\n{}", respond_gen(3)));
    eventually("the saved file is served", DEADLINE, || async {
        live.body("/gen").await == "3"
    })
    .await;
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// Certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_in_place_is_served_after_a_reload_and_open_connections_stay() {
    let ca = TestCa::new();
    let old = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let new = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let certs = TempDir::new("reload-tls-certs");
    let (cert, key) = old.write(&certs, "api");
    let yaml = format!(
        "listeners:
  - name: tls
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: \"{}\", key_file: \"{}\" }}]
{}",
        cert.display(),
        key.display(),
        respond_gen(1)
    );
    let live = Live::start("reload-tls", &yaml).await;
    let pem = ca.pem();
    let client = ClientTls::new(&pem, "api.test");
    let tls = client.connect(live.addr).await.unwrap();
    assert_eq!(served_leaf(&tls), old.der());
    let mut open = H1::over(tls).await;
    assert_eq!(open.get("/gen", &[]).await, (200, "1".to_owned()));

    // Renewed where it was (as cert-manager or certbot do): the config text is the same.
    new.write(&certs, "api");
    let before = live.version().await;
    assert_ne!(
        live.reload_ok().await,
        before,
        "new key material is a new version"
    );
    let tls = client.connect(live.addr).await.unwrap();
    assert_eq!(
        served_leaf(&tls),
        new.der(),
        "new connections get the new one"
    );
    assert_eq!(
        open.get("/gen", &[]).await,
        (200, "1".to_owned()),
        "the connection opened before goes on"
    );
    drop(open);
    live.stop().await;
}

// ---------------------------------------------------------------------------------------
// SIGHUP on the binary

/// The address of listener `name` from the `listening` log lines.
fn listening_on(stderr: &str, name: &str) -> Option<SocketAddr> {
    stderr
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "listening" && v["listener"] == name)
        .and_then(|v| v["address"].as_str()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_and_a_broken_file_is_logged_with_line_and_column() {
    let dir = TempDir::new("reload-hup");
    let path = dir.write("weir.yaml", &config(&respond_gen(1)));
    let file = path.to_str().unwrap().to_owned();
    let w = spawn_weir(&["run", "-c", &file], &[]);
    let c = client();
    let body = |url: String| {
        let c = c.clone();
        async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    };
    let reloads = |result: &'static str| {
        let (c, url) = (c.clone(), w.admin_url("/metrics"));
        async move {
            reloads_in(
                &c.get(url).send().await.unwrap().text().await.unwrap(),
                result,
            )
        }
    };
    assert_eq!(body(w.url("/gen")).await, "1");

    // A new route and a new listener.
    // `public` as before (its configured address is 127.0.0.1:0), so it stays open.
    let two = format!(
        "listeners:
  - {{ name: public, address: \"127.0.0.1:0\" }}
  - {{ name: second, address: \"127.0.0.1:0\" }}
{}",
        respond_gen(2)
    );
    save_renamed(&path, &config(&two));
    w.signal("HUP");
    eventually("the new file is served", DEADLINE, || async {
        body(w.url("/gen")).await == "2"
    })
    .await;
    eventually("the reload is counted", DEADLINE, || async {
        reloads("success").await == 1
    })
    .await;
    let second = listening_on(&w.stderr(), "second").expect("second listening");
    assert_eq!(body(format!("http://{second}/gen")).await, "2");

    // A broken file: logged with file:line:col and counted; the running config stays.
    let written = config(&with_bad_duration(&two));
    save_renamed(&path, &written);
    w.signal("HUP");
    eventually("the failure is counted", DEADLINE, || async {
        reloads("failure").await == 1
    })
    .await;
    let (line, key_col) = position(&written, "timeout: 5");
    let at = format!("{file}:{line}:{}", key_col + "timeout: ".len() as u64);
    let stderr = w.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&at) && l.contains(BAD_DURATION)),
        "no log line with {at}:\n{stderr}"
    );
    assert_eq!(body(w.url("/gen")).await, "2");
    assert_eq!(body(format!("http://{second}/gen")).await, "2");

    // The listener removed again, on a binary with a socket per worker.
    save_renamed(&path, &config(&respond_gen(3)));
    w.signal("HUP");
    eventually("the third file is served", DEADLINE, || async {
        body(w.url("/gen")).await == "3"
    })
    .await;
    eventually("second refuses", DEADLINE, || async {
        TcpStream::connect(second).await.is_err()
    })
    .await;
    assert_eq!(reloads("success").await, 2);
}
