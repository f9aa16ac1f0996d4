//! HTTP/2 abuse against the real gateway: what RFC 9113 clients never do, done on purpose
//! with hand-written frames (h2c with prior knowledge, and once over TLS with ALPN), while a
//! polite client on another connection must go on being served.
//!
//! What protects weir is hyper's HTTP/2 server (h2 0.4) as `listener.rs` configures it, plus
//! weir's own idle watchdog (`activity.rs`). The tests pin down what is true of that stack:
//! - a burst of streams reset by the client is cut off with GOAWAY ENHANCE_YOUR_CALM once
//!   more than `max_pending_accept_reset_streams` (100) wait to be accepted;
//! - streams the server has to reset itself are limited by `max_local_error_reset_streams`
//!   (1024 per connection), refused streams included;
//! - a header block may take at most a few CONTINUATION frames and 4 × `max_header_bytes`;
//! - PINGs and SETTINGS are answered one at a time, so a client that does not read its ACKs
//!   stops being read once the socket buffers are full, and the idle watchdog closes it;
//! - responses are not read from the origin faster than the client's flow-control window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::h2raw::{Collector, FrameReader, H2c, code, flag, kind, setting};
use crate::common::{Backend, DEADLINE, Gateway, Mode, TempDir, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The limits of the tests: small enough that the protections trip fast.
const LIMITS: &str =
    "{ http2_max_concurrent_streams: 20, idle_timeout: 2s, header_read_timeout: 1s }";

fn gateway_config(limits: &str, upstream_url: &str) -> String {
    format!(
        r#"
        limits: {limits}
        upstreams:
          be:
            targets: [{{ url: "{upstream_url}" }}]
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#
    )
}

/// Client-initiated stream ids: 1, 3, 5, ...
fn stream_id(n: u32) -> u32 {
    2 * n + 1
}

fn count(
    frames: &[crate::common::h2raw::Frame],
    pred: impl Fn(&crate::common::h2raw::Frame) -> bool,
) -> usize {
    frames.iter().filter(|f| pred(f)).count()
}

/// Resident memory of this process (weir runs in it), from /proc.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---------------------------------------------------------------------------------------
// The polite client beside the abuser

struct Polite {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, Vec<String>)>,
}

/// Sequential GETs over one h2c connection until [`Polite::finish`].
fn polite_traffic(url: String) -> Polite {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let client = crate::common::h2c_client();
        let (mut latencies, mut failures) = (Vec::new(), Vec::new());
        while !flag.load(Ordering::SeqCst) {
            let t = Instant::now();
            match tokio::time::timeout(DEADLINE, client.get(&url).send()).await {
                Ok(Ok(r)) if r.status() == 200 && r.version() == http::Version::HTTP_2 => {
                    match r.bytes().await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(e) => failures.push(format!("body: {e}")),
                    }
                }
                Ok(Ok(r)) => failures.push(format!("{} {:?}", r.status(), r.version())),
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(_) => failures.push("no answer within 10 s".into()),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (latencies, failures)
    });
    Polite { stop, task }
}

impl Polite {
    /// Stops the traffic and checks that every request succeeded, with p99 under 5 s;
    /// prints the latencies. Returns how many requests were made.
    async fn finish(self, during: &str) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let (mut lat, failures) = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "polite requests failed during {during}: {failures:?}"
        );
        assert!(
            lat.len() >= 3,
            "only {} polite requests during {during}",
            lat.len()
        );
        lat.sort();
        let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        let (p50, p99, max) = (pick(0.5), pick(0.99), lat[lat.len() - 1]);
        eprintln!(
            "polite client during {during}: {} requests, p50 {p50:?}, p99 {p99:?}, max {max:?}",
            lat.len()
        );
        // Loose: the attacker, weir and this client share two cores with the rest of the
        // suite on CI. The printed numbers are the measurement; this only catches a stall.
        assert!(
            p99 < Duration::from_secs(5),
            "polite p99 {p99:?} during {during}"
        );
        lat.len()
    }
}

// ---------------------------------------------------------------------------------------
// Rapid reset (CVE-2023-44487)

/// `n` streams from `first`, each opened with a complete GET and at once cancelled.
fn open_and_cancel(first: u32, n: u32, block: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n as usize * (block.len() + 30));
    for k in first..first + n {
        let id = stream_id(k);
        crate::common::h2raw::put_frame(
            &mut buf,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            block,
        );
        buf.extend_from_slice(&crate::common::h2raw::rst_stream(id, code::CANCEL));
    }
    buf
}

/// One rapid-reset connection: streams opened and cancelled in batches as fast as the
/// socket takes them, until the GOAWAY. Returns the streams written and the GOAWAY.
async fn rapid_reset_once(conn: &mut H2c) -> (u32, crate::common::h2raw::GoAway) {
    const MAX_STREAMS: u32 = 20_000;
    const BATCH: u32 = 200;
    let block = crate::common::h2raw::request_block("GET", "/attack", &[]);
    let mut sent = 0;
    while sent < MAX_STREAMS && conn.collector.goaway().is_none() {
        if conn
            .send(&open_and_cancel(sent, BATCH, &block))
            .await
            .is_err()
        {
            break;
        }
        sent += BATCH;
    }
    let goaway = conn.collector.wait_goaway(DEADLINE).await;
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} reset streams"));
    // Our FIN ends weir's lingering read of what we sent after its GOAWAY.
    let _ = conn.writer.shutdown().await;
    assert!(
        conn.collector.wait_closed(DEADLINE).await.is_some(),
        "the connection is closed after the GOAWAY"
    );
    (sent, goaway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_enhance_your_calm_and_spares_the_origin() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let polite = polite_traffic(gw.url("/polite"));

    // An attacker reconnects when told off: keep at it for a while so the polite client's
    // latency is measured under attack.
    let t = Instant::now();
    let (mut connections, mut written, mut processed) = (0u32, 0u32, 0u32);
    while connections < 3 || t.elapsed() < Duration::from_millis(1500) {
        let mut conn = H2c::connect(gw.addr, &[]).await;
        let (sent, goaway) = rapid_reset_once(&mut conn).await;
        assert_eq!(
            (goaway.code, goaway.debug.as_str()),
            (code::ENHANCE_YOUR_CALM, "too_many_resets"),
            "{goaway}"
        );
        connections += 1;
        written += sent;
        processed += goaway.last_stream.div_ceil(2);
    }
    let polite_requests = polite.finish("a rapid reset attack").await;
    let attack_hits = backend.hits() - polite_requests;
    eprintln!(
        "rapid reset: {connections} connections, {written} streams opened and cancelled, \
         {processed} of them processed by weir before its GOAWAYs, {attack_hits} reached the \
         origin"
    );
    assert!(
        processed <= connections * 150,
        "each connection is cut off after about 100 resets: {processed} streams processed \
         over {connections} connections"
    );
    assert!(
        attack_hits <= processed as usize,
        "{attack_hits} origin hits, {processed} streams processed"
    );
    gw.stop().await;
}

/// The same attack paced so that hyper accepts every stream before its RST_STREAM arrives
/// (batches under the concurrency limit, each cancelled 1 ms after it was sent): no stream
/// is ever reset while waiting to be accepted, so h2's `max_pending_accept_reset_streams`
/// never trips, and a cancelled stream stops counting toward `http2_max_concurrent_streams`
/// at once. Without weir's own budget of cancelled requests one connection drove a 200 ms
/// origin to 6,800-9,100 requests in 2 s, where 20 streams allow ~200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_cannot_exceed_the_concurrency_limit_at_the_origin() {
    let backend = Backend::with_mode("b", Mode::Slow(Duration::from_millis(200))).await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let polite = polite_traffic(gw.url("/polite"));
    let mut conn = H2c::connect(gw.addr, &[]).await;
    let block = crate::common::h2raw::request_block("GET", "/attack", &[]);
    const BATCH: u32 = 10;
    let window = Duration::from_secs(2);
    let t = Instant::now();
    let mut opened = 0u32;
    let mut max_in_flight = 0;
    while t.elapsed() < window && conn.collector.goaway().is_none() {
        let mut open = Vec::new();
        let mut cancel = Vec::new();
        for k in opened..opened + BATCH {
            open.extend_from_slice(&crate::common::h2raw::headers(
                stream_id(k),
                flag::END_HEADERS | flag::END_STREAM,
                &block,
            ));
            cancel.extend_from_slice(&crate::common::h2raw::rst_stream(
                stream_id(k),
                code::CANCEL,
            ));
        }
        if conn.send(&open).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if conn.send(&cancel).await.is_err() {
            break;
        }
        opened += BATCH;
        max_in_flight = max_in_flight.max(backend.state.in_flight.load(Ordering::SeqCst));
    }
    let elapsed = t.elapsed();
    // The attack is cut off early; others are still served for the rest of the window.
    tokio::time::sleep(window.saturating_sub(elapsed)).await;
    let polite_requests = polite.finish("a paced rapid reset attack").await;
    let attack_hits = backend.hits() - polite_requests;
    eprintln!(
        "paced rapid reset: {opened} streams opened and cancelled in {elapsed:?} on one \
         connection; {attack_hits} reached the origin (up to {max_in_flight} at once there); \
         {}",
        conn.collector
            .goaway()
            .map_or_else(|| "no GOAWAY".into(), |g| g.to_string())
    );
    // The budget (100 cancelled, and more cancelled than answered) plus what the stream
    // limit lets be in flight when it runs out; without it, thousands.
    let allowed = 100 + 2 * 20;
    assert!(
        attack_hits <= allowed,
        "one connection limited to 20 concurrent streams made {attack_hits} origin requests \
         in {elapsed:?} (at most {allowed} expected)"
    );
    // The budget of cancelled requests (100, and more cancelled than answered) ends it.
    let goaway = conn.collector.goaway();
    assert!(
        goaway.is_some(),
        "no GOAWAY after {opened} cancelled streams"
    );
    drop(conn);
    gw.stop().await;
}

/// "MadeYouReset" (CVE-2025-8671): the client makes the server reset its streams (here with
/// a PRIORITY frame that makes a stream depend on itself, a stream error). Server-side
/// resets are capped per connection by `max_local_error_reset_streams` (1024), and the
/// requests they cancel by weir's budget of cancelled requests (100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_server_must_reset_end_the_connection_after_1024() {
    let backend = Backend::with_mode("b", Mode::Slow(Duration::from_millis(200))).await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    let block = crate::common::h2raw::request_block("GET", "/made-you-reset", &[]);
    // Each batch is accepted (and forwarded) before it is made to fail, as an attacker
    // wanting the origin's work would do; batches stay under the concurrency limit.
    const BATCH: u32 = 10;
    let mut sent = 0u32;
    while sent < 5_000 && conn.collector.goaway().is_none() {
        let mut open = Vec::new();
        let mut fail = Vec::new();
        for k in sent..sent + BATCH {
            let id = stream_id(k);
            crate::common::h2raw::put_frame(
                &mut open,
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                id,
                &block,
            );
            // Exclusive dependency on itself: a stream error (RFC 9113 §5.3.1).
            let mut priority = (id | 0x8000_0000).to_be_bytes().to_vec();
            priority.push(16);
            crate::common::h2raw::put_frame(&mut fail, kind::PRIORITY, 0, id, &priority);
        }
        if conn.send(&open).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if conn.send(&fail).await.is_err() {
            break;
        }
        sent += BATCH;
    }
    let goaway = conn.collector.wait_goaway(DEADLINE).await.expect("GOAWAY");
    let frames = conn.collector.frames();
    let resets = count(&frames, |f| {
        f.reset_code() == Some(code::PROTOCOL_ERROR) && f.stream != 0
    });
    eprintln!(
        "server-side resets: {sent} streams sent, {resets} reset by weir, {} reached the \
         origin, then {goaway}",
        backend.hits()
    );
    // The streams were accepted, so each reset cancels a request weir's budget counts: the
    // connection gets GOAWAY after ~100 (h2's own cap of 1024 internal resets is the
    // backstop, with ENHANCE_YOUR_CALM).
    assert!(
        goaway.code == code::NO_ERROR
            || (goaway.code, goaway.debug.as_str())
                == (code::ENHANCE_YOUR_CALM, "too_many_internal_resets"),
        "{goaway}"
    );
    assert!(resets <= 1024, "{resets} resets before the GOAWAY");
    assert!(
        backend.hits() <= 100 + 2 * 20,
        "{} origin hits",
        backend.hits()
    );
    drop(conn);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// CONTINUATION flood

/// The most a flood may write before it must have been told off.
const FLOOD_CAP_FRAMES: usize = 1000;
const FLOOD_CAP_BYTES: usize = 10 << 20;

/// Writes `first`, then frames made by `next` one at a time, with a short pause for the
/// GOAWAY to be read, until a GOAWAY arrives, the connection fails or closes, or a cap is
/// reached. Returns the frames written after `first` and the bytes written in all.
async fn flood(conn: &mut H2c, first: &[u8], mut next: impl FnMut() -> Vec<u8>) -> (usize, usize) {
    let (mut frames, mut bytes) = (0, 0);
    if conn.send(first).await.is_err() {
        return (frames, bytes);
    }
    bytes += first.len();
    while frames < FLOOD_CAP_FRAMES
        && bytes < FLOOD_CAP_BYTES
        && conn.collector.goaway().is_none()
        && conn.collector.closed().is_none()
    {
        let frame = next();
        if conn.send(&frame).await.is_err() {
            break;
        }
        frames += 1;
        bytes += frame.len();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (frames, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off_after_a_few_frames() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(
        "{ max_header_bytes: 16KiB, idle_timeout: 2s, header_read_timeout: 1s }",
        &backend.url(),
    ))
    .await;
    let start_block = crate::common::h2raw::request_block("GET", "/continued", &[]);

    // Each CONTINUATION carries complete header fields.
    let mut field = Vec::new();
    crate::common::h2raw::hpack_literal(&mut field, "x-filler", &[b'a'; 4000]);
    // A single field whose declared length (16 MiB) is never reached: every frame only adds
    // bytes of its value, so nothing can be decoded and the block must be buffered.
    let mut endless = Vec::new();
    endless.push(0x00);
    crate::common::h2raw::hpack_str(&mut endless, b"x-endless");
    crate::common::h2raw::hpack_int(&mut endless, 7, 0, 16 << 20);
    let mut first_endless = start_block.clone();
    first_endless.extend_from_slice(&endless);

    let cases: [(&str, Vec<u8>, Vec<u8>); 3] = [
        ("empty CONTINUATION frames", start_block.clone(), Vec::new()),
        (
            "CONTINUATION frames of 4 KB header fields",
            start_block.clone(),
            field.clone(),
        ),
        (
            "CONTINUATION frames of one endless header value",
            first_endless,
            vec![b'v'; 16_384],
        ),
    ];
    for (what, first, payload) in cases {
        let mut conn = H2c::connect(gw.addr, &[]).await;
        let (frames, bytes) = flood(
            &mut conn,
            &crate::common::h2raw::headers(1, 0, &first),
            || crate::common::h2raw::continuation(1, false, &payload),
        )
        .await;
        let goaway = conn.collector.wait_goaway(DEADLINE).await;
        let closed = conn.collector.wait_closed(DEADLINE).await;
        eprintln!(
            "{what}: {frames} CONTINUATION frames ({bytes} bytes) written, then {}",
            goaway
                .as_ref()
                .map_or_else(|| "no GOAWAY".into(), ToString::to_string)
        );
        let goaway = goaway.unwrap_or_else(|| panic!("{what}: no GOAWAY"));
        assert_eq!(goaway.code, code::ENHANCE_YOUR_CALM, "{what}: {goaway}");
        assert_eq!(goaway.last_stream, 0, "{what}: the stream never started");
        assert!(closed.is_some(), "{what}: the connection is closed");
        assert!(
            frames < FLOOD_CAP_FRAMES && bytes < FLOOD_CAP_BYTES,
            "{what}: {frames} frames ({bytes} bytes) taken without a GOAWAY"
        );
    }
    assert_eq!(backend.hits(), 0);
    assert_eq!(gw.get("/after").await.status(), 200, "weir still serves");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Control-frame floods: PING and SETTINGS

/// A client that makes one request (so the connection is past its first-request header
/// timeout and only the idle timeout applies), then writes `frames` without ever reading.
/// Returns the bytes it could write before weir stopped reading, and checks that weir then
/// closes the connection, that memory stayed bounded and that the polite client was served.
async fn control_flood(what: &str, frames: impl Fn(u64) -> Vec<u8>) {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let polite = polite_traffic(gw.url("/polite"));
    let rss_before = rss_bytes();

    let stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    crate::common::h2raw::handshake(&mut reader, &mut w, &[]).await;
    w.write_all(&crate::common::h2raw::get(1, "/first", &[]))
        .await
        .unwrap();
    loop {
        let f = tokio::time::timeout(DEADLINE, reader.next())
            .await
            .expect("the first response in time")
            .unwrap()
            .expect("the first response");
        if f.stream == 1 && f.has(flag::END_STREAM) {
            break;
        }
    }

    // From here on nothing is read: weir's ACKs pile up in the socket buffers.
    const CHUNK: usize = 64 * 1024;
    const CAP: usize = 512 << 20;
    let t = Instant::now();
    let mut written = 0usize;
    let mut seq = 0u64;
    let pushed_back = loop {
        let mut chunk = Vec::with_capacity(CHUNK + 64);
        while chunk.len() < CHUNK {
            chunk.extend_from_slice(&frames(seq));
            seq += 1;
        }
        match tokio::time::timeout(Duration::from_secs(1), w.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("{what}: the write failed before weir pushed back: {e}"),
            Err(_) => break true,
        }
        if written >= CAP {
            break false;
        }
    };
    let rss_during = rss_bytes();
    eprintln!(
        "{what}: {} frames ({} KiB) written in {:?} before weir stopped reading; RSS {} -> {} \
         MiB",
        seq,
        written / 1024,
        t.elapsed(),
        rss_before.map_or(0, |b| b >> 20),
        rss_during.map_or(0, |b| b >> 20),
    );
    assert!(
        pushed_back,
        "{what}: weir read {written} bytes of control frames without pushing back"
    );
    // Socket buffers: ours, and weir's receive and send buffers on loopback (tcp_rmem and
    // tcp_wmem allow tens of MiB); what weir holds itself is a frame or two.
    assert!(
        written < 128 << 20,
        "{what}: {written} bytes accepted before weir pushed back"
    );
    if let (Some(before), Some(during)) = (rss_before, rss_during) {
        assert!(
            during.saturating_sub(before) < 128 << 20,
            "{what}: RSS grew from {before} to {during}"
        );
    }

    // Stuck writing ACKs nobody reads, weir sees no progress: the idle timeout (2 s) closes
    // the connection, which fails our blocked write (or ends it with a reset).
    let stuck = Instant::now();
    let mut more = vec![0u8; 0];
    for s in seq..seq + 4096 {
        more.extend_from_slice(&frames(s));
    }
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Err(e) = w.write_all(&more).await {
                return e;
            }
        }
    })
    .await;
    eprintln!(
        "{what}: connection closed {:?} after the pushback: {outcome:?}",
        stuck.elapsed()
    );
    assert!(
        outcome.is_ok(),
        "{what}: the stuck connection is never closed"
    );
    polite.finish(what).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_the_acks_is_pushed_back_and_closed_when_idle() {
    control_flood("PING flood", |n| {
        crate::common::h2raw::ping(n.to_be_bytes())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_without_reading_the_acks_is_pushed_back_and_closed_when_idle() {
    control_flood("SETTINGS flood", |n| {
        // Every frame changes something, so each must be applied and acknowledged.
        crate::common::h2raw::settings(&[
            (setting::INITIAL_WINDOW_SIZE, 65_535 - (n % 2) as u32),
            (setting::MAX_FRAME_SIZE, 16_384 + (n % 2) as u32),
            (setting::HEADER_TABLE_SIZE, 0),
        ])
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Zero-window stall

/// An HTTP/1.1 origin: `GET /big` is answered with a body of [`BIG`] bytes written as fast
/// as the socket takes them, counting what was written; anything else with a short body.
struct BigOrigin {
    addr: SocketAddr,
    written: Arc<AtomicU64>,
    big_requests: Arc<AtomicUsize>,
    /// `/big` responses whose connection weir closed before they were complete.
    cut: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

const BIG: u64 = 64 << 20;

impl Drop for BigOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BigOrigin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let big_requests = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (w, b, c) = (
            Arc::clone(&written),
            Arc::clone(&big_requests),
            Arc::clone(&cut),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (w, b, c) = (Arc::clone(&w), Arc::clone(&b), Arc::clone(&c));
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match s.read(&mut byte).await {
                                Ok(1) => head.push(byte[0]),
                                _ => return,
                            }
                        }
                        if !head.starts_with(b"GET /big") {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(ok).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        b.fetch_add(1, Ordering::SeqCst);
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        let mut left = BIG;
                        while left > 0 {
                            match s.write(&chunk[..chunk.len().min(left as usize)]).await {
                                Ok(n) if n > 0 => {
                                    left -= n as u64;
                                    w.fetch_add(n as u64, Ordering::SeqCst);
                                }
                                _ => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            written,
            big_requests,
            cut,
            task,
        }
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

/// Clients whose flow-control windows never open: one announces a zero stream window, one
/// keeps the default 64 KiB windows and never sends WINDOW_UPDATE. Each asks for 64 MiB on
/// 10 streams. weir must only read from the origin what it can send (plus socket buffers),
/// and close the stalled connections after `idle_timeout`, dropping the origin requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_clients_hold_back_the_origin_and_are_closed_when_idle() {
    let origin = BigOrigin::start().await;
    let gw = start(&gateway_config(LIMITS, &format!("http://{}", origin.addr))).await;
    let polite = polite_traffic(gw.url("/polite"));
    const STREAMS: u32 = 10;
    let requests: Vec<u8> = (0..STREAMS)
        .flat_map(|k| crate::common::h2raw::get(stream_id(k), "/big", &[]))
        .collect();

    let mut zero = H2c::connect(gw.addr, &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
    let mut unread = H2c::connect(gw.addr, &[]).await;
    let sent_at = Instant::now();
    zero.send(&requests).await.unwrap();
    unread.send(&requests).await.unwrap();
    for (name, conn) in [
        ("zero window", &mut zero),
        ("no WINDOW_UPDATE", &mut unread),
    ] {
        let all = conn
            .collector
            .wait_for(DEADLINE, |fs| {
                count(fs, |f| f.kind == kind::HEADERS && f.status() == Some(200))
                    == STREAMS as usize
            })
            .await;
        assert!(all, "{name}: the 10 responses start");
    }
    // Let the origin fill every buffer on the way, then see that it is held back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let held = origin.written();
    let data = |c: &H2c| -> usize {
        c.collector
            .frames()
            .iter()
            .filter(|f| f.kind == kind::DATA)
            .map(|f| f.len)
            .sum()
    };
    let (zero_data, unread_data) = (data(&zero), data(&unread));
    eprintln!(
        "zero window: {} origin requests; the origin could write {} MiB of {} MiB; the \
         clients received {zero_data} and {unread_data} bytes of DATA",
        origin.big_requests.load(Ordering::SeqCst),
        held >> 20,
        (2 * u64::from(STREAMS) * BIG) >> 20,
    );
    assert_eq!(
        origin.big_requests.load(Ordering::SeqCst),
        2 * STREAMS as usize
    );
    assert_eq!(zero_data, 0, "nothing is sent into a zero window");
    assert!(
        unread_data <= 65_535,
        "at most the connection window is sent"
    );
    assert!(
        held < u64::from(STREAMS) * BIG / 2,
        "weir read {held} bytes from the origin for 20 responses nobody can receive"
    );

    for (name, conn) in [
        ("zero window", &mut zero),
        ("no WINDOW_UPDATE", &mut unread),
    ] {
        let closed = conn.collector.wait_closed(DEADLINE).await;
        let after = closed.map(|c| c.duration_since(sent_at));
        eprintln!("{name}: closed {after:?} after the requests");
        let after = after.unwrap_or_else(|| panic!("{name}: the stalled connection stays open"));
        assert!(
            after >= Duration::from_millis(1500),
            "{name}: closed after {after:?}, before the idle timeout (2 s)"
        );
    }
    crate::common::eventually("the origin's responses to be dropped", DEADLINE, || async {
        origin.cut.load(Ordering::SeqCst) == 2 * STREAMS as usize
    })
    .await;
    polite.finish("zero-window stalls").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Too many streams

/// `n` GETs from stream number `first`, held by the origin until released.
fn held_gets(first: u32, n: u32) -> Vec<u8> {
    (first..first + n)
        .flat_map(|k| crate::common::h2raw::get(stream_id(k), "/held", &[("x-hold", "1")]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_refused_and_the_allowed_ones_served() {
    let backend = Backend::start("b").await;
    backend.hold();
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    assert_eq!(
        conn.server_setting(setting::MAX_CONCURRENT_STREAMS),
        Some(20),
        "weir announces its limit"
    );
    conn.send(&held_gets(0, 30)).await.unwrap();
    let refused = conn
        .collector
        .wait_for(DEADLINE, |fs| {
            count(fs, |f| f.reset_code() == Some(code::REFUSED_STREAM)) == 10
        })
        .await;
    assert!(refused, "10 streams refused: {:?}", conn.collector.frames());
    crate::common::eventually("20 requests at the origin", DEADLINE, || async {
        backend.held() == 20
    })
    .await;
    let frames = conn.collector.frames();
    let refused_ids: Vec<u32> = frames
        .iter()
        .filter(|f| f.reset_code() == Some(code::REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    assert_eq!(
        refused_ids,
        (20..30).map(stream_id).collect::<Vec<_>>(),
        "the streams past the 20th are refused"
    );

    backend.release();
    let served = conn
        .collector
        .wait_for(DEADLINE, |fs| {
            count(fs, |f| f.kind == kind::HEADERS && f.status() == Some(200)) == 20
                && count(fs, |f| f.has(flag::END_STREAM) && f.stream != 0) == 20
        })
        .await;
    assert!(served, "the 20 allowed streams are answered");
    // Room again: the connection goes on serving.
    conn.send(&crate::common::h2raw::get(stream_id(30), "/next", &[]))
        .await
        .unwrap();
    let next = conn
        .collector
        .wait_for(DEADLINE, |fs| {
            fs.iter()
                .any(|f| f.stream == stream_id(30) && f.status() == Some(200))
        })
        .await;
    assert!(next, "a new stream is served once the others are done");
    assert_eq!(backend.hits(), 21, "refused streams never reach the origin");
    assert!(conn.collector.goaway().is_none());
    drop(conn);
    gw.stop().await;
}

/// Refusals are server-side resets too: a client that keeps opening streams past the limit
/// is told off after 1024 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_streams_over_and_over_ends_in_enhance_your_calm() {
    let backend = Backend::start("b").await;
    backend.hold();
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    conn.send(&held_gets(0, 20)).await.unwrap();
    crate::common::eventually("20 requests at the origin", DEADLINE, || async {
        backend.held() == 20
    })
    .await;
    let mut next = 20;
    while next < 3_000 && conn.collector.goaway().is_none() {
        if conn.send(&held_gets(next, 100)).await.is_err() {
            break;
        }
        next += 100;
        tokio::task::yield_now().await;
    }
    let goaway = conn.collector.wait_goaway(DEADLINE).await.expect("GOAWAY");
    let refused = count(&conn.collector.frames(), |f| {
        f.reset_code() == Some(code::REFUSED_STREAM)
    });
    eprintln!(
        "refusal flood: {} streams opened, {refused} refused, then {goaway}",
        next
    );
    assert_eq!(
        (goaway.code, goaway.debug.as_str()),
        (code::ENHANCE_YOUR_CALM, "too_many_internal_resets")
    );
    assert_eq!(refused, 1024);
    assert_eq!(backend.hits(), 20, "refused streams never reach the origin");
    backend.release();
    drop(conn);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Oversized header lists

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_list_is_431_on_its_stream_and_the_connection_goes_on() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(
        "{ max_header_bytes: 4KiB, idle_timeout: 2s, header_read_timeout: 1s }",
        &backend.url(),
    ))
    .await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    let big = "y".repeat(6000);
    conn.send(&crate::common::h2raw::get(
        1,
        "/big-head",
        &[("x-big", &big)],
    ))
    .await
    .unwrap();
    conn.send(&crate::common::h2raw::get(
        3,
        "/small-head",
        &[("x-small", "y")],
    ))
    .await
    .unwrap();
    let answered = conn
        .collector
        .wait_for(DEADLINE, |fs| {
            fs.iter().any(|f| f.stream == 1 && f.status().is_some())
                && fs.iter().any(|f| f.stream == 3 && f.status().is_some())
        })
        .await;
    assert!(
        answered,
        "both streams answered: {:?}",
        conn.collector.frames()
    );
    let status = |id| {
        conn.collector
            .on_stream(id)
            .iter()
            .find_map(crate::common::h2raw::Frame::status)
    };
    assert_eq!(status(1), Some(431));
    assert_eq!(status(3), Some(200));
    assert_eq!(backend.hits(), 1, "only the small head reached the origin");
    assert!(conn.collector.goaway().is_none(), "the connection goes on");
    drop(conn);
    gw.stop().await;
}

/// Past 4 × the limit, h2 stops decoding and ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_list_far_over_the_limit_ends_the_connection() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(
        "{ max_header_bytes: 2KiB, idle_timeout: 2s, header_read_timeout: 1s }",
        &backend.url(),
    ))
    .await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    // 12 KB in one HEADERS frame: over 4 × 2 KiB.
    let fields: Vec<(String, String)> = (0..4)
        .map(|i| (format!("x-big-{i}"), "y".repeat(3000)))
        .collect();
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    conn.send(&crate::common::h2raw::get(1, "/huge-head", &refs))
        .await
        .unwrap();
    let goaway = conn.collector.wait_goaway(DEADLINE).await.expect("GOAWAY");
    assert_eq!(
        (goaway.code, goaway.debug.as_str()),
        (code::ENHANCE_YOUR_CALM, "header_list_way_too_large")
    );
    // Our FIN ends weir's lingering read after its GOAWAY.
    conn.writer.shutdown().await.unwrap();
    assert!(conn.collector.wait_closed(DEADLINE).await.is_some());
    assert_eq!(backend.hits(), 0);
    assert_eq!(gw.get("/after").await.status(), 200, "weir still serves");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Protocol violations

/// Each violation, alone on a fresh connection after the handshake, is a connection error:
/// GOAWAY, then the close. The codes are the ones h2 0.4 sends; for three of them RFC 9113
/// names another code (marked), which changes nothing for the client: the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_end_the_connection_with_goaway() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let get1 = crate::common::h2raw::get(1, "/", &[]);
    let with = |a: &[u8], b: &[u8]| [a, b].concat();
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "DATA on stream 0",
            crate::common::h2raw::data(0, false, b"hello"),
            code::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on an even (server-initiated) stream",
            crate::common::h2raw::get(2, "/", &[]),
            code::PROTOCOL_ERROR,
        ),
        (
            "a stream id lower than one already used",
            with(&crate::common::h2raw::get(5, "/", &[]), &get1),
            code::PROTOCOL_ERROR,
        ),
        (
            "a DATA frame over SETTINGS_MAX_FRAME_SIZE",
            with(
                &crate::common::h2raw::headers(
                    1,
                    flag::END_HEADERS,
                    &crate::common::h2raw::request_block("POST", "/", &[]),
                ),
                &crate::common::h2raw::data(1, true, &vec![0u8; 16_385]),
            ),
            code::FRAME_SIZE_ERROR,
        ),
        (
            // RFC 9113 §6.7: FRAME_SIZE_ERROR.
            "a PING of 7 bytes",
            crate::common::h2raw::frame(kind::PING, 0, 0, &[0; 7]),
            code::PROTOCOL_ERROR,
        ),
        (
            // RFC 9113 §6.5: FRAME_SIZE_ERROR.
            "a SETTINGS frame of 5 bytes",
            crate::common::h2raw::frame(kind::SETTINGS, 0, 0, &[0; 5]),
            code::PROTOCOL_ERROR,
        ),
        (
            "a PING on stream 1",
            crate::common::h2raw::frame(kind::PING, 0, 1, &[0; 8]),
            code::PROTOCOL_ERROR,
        ),
        (
            "a WINDOW_UPDATE of 0 on the connection",
            crate::common::h2raw::window_update(0, 0),
            code::PROTOCOL_ERROR,
        ),
        (
            "a CONTINUATION without HEADERS",
            crate::common::h2raw::continuation(
                1,
                true,
                &crate::common::h2raw::request_block("GET", "/", &[]),
            ),
            code::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            crate::common::h2raw::rst_stream(7, code::CANCEL),
            code::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_ENABLE_PUSH = 2",
            crate::common::h2raw::settings(&[(setting::ENABLE_PUSH, 2)]),
            code::PROTOCOL_ERROR,
        ),
        (
            // RFC 9113 §6.5.2: FLOW_CONTROL_ERROR.
            "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1",
            crate::common::h2raw::settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
            code::PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            crate::common::h2raw::frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
            code::PROTOCOL_ERROR,
        ),
        (
            "a WINDOW_UPDATE overflowing the connection window",
            with(
                &crate::common::h2raw::window_update(0, 0x7fff_ffff),
                &crate::common::h2raw::window_update(0, 0x7fff_ffff),
            ),
            code::FLOW_CONTROL_ERROR,
        ),
    ];
    let mut mismatches = Vec::new();
    for (what, bytes, expected) in cases {
        let mut conn = H2c::connect(gw.addr, &[]).await;
        conn.send(&bytes).await.unwrap();
        let goaway = conn.collector.wait_goaway(DEADLINE).await;
        let closed = conn.collector.wait_closed(DEADLINE).await;
        let got = goaway.as_ref().map(|g| g.code);
        eprintln!(
            "{what}: {}",
            goaway
                .as_ref()
                .map_or_else(|| "no GOAWAY".into(), ToString::to_string)
        );
        assert!(closed.is_some(), "{what}: the connection stays open");
        if got != Some(expected) {
            mismatches.push(format!(
                "{what}: expected GOAWAY {}, got {:?}",
                code::name(expected),
                got.map(code::name)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert_eq!(gw.get("/after").await.status(), 200, "weir still serves");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Empty DATA frames

/// Empty DATA frames cost the server a frame each and carry nothing (CVE-2019-9518): h2
/// allows 100 per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_frame_flood_ends_in_enhance_your_calm() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(LIMITS, &backend.url())).await;
    let mut conn = H2c::connect(gw.addr, &[]).await;
    let post = crate::common::h2raw::headers(
        1,
        flag::END_HEADERS,
        &crate::common::h2raw::request_block("POST", "/upload", &[]),
    );
    let (frames, _) = flood(&mut conn, &post, || {
        crate::common::h2raw::data(1, false, &[])
    })
    .await;
    let goaway = conn.collector.wait_goaway(DEADLINE).await.expect("GOAWAY");
    eprintln!("empty DATA flood: {frames} empty DATA frames written, then {goaway}");
    assert_eq!(
        (goaway.code, goaway.debug.as_str()),
        (code::ENHANCE_YOUR_CALM, "too_many_data_frames")
    );
    assert!(conn.collector.wait_closed(DEADLINE).await.is_some());
    drop(conn);
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Over TLS

/// A TLS listener negotiates h2 by ALPN and is served by the same HTTP/2 settings: the
/// rapid reset is cut off there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_over_tls_is_cut_off_too() {
    use crate::common::idp::TestCa;
    use crate::common::tls::{ClientTls, KeyType};

    let backend = Backend::start("b").await;
    let dir = TempDir::new("h2-abuse-tls");
    let ca = TestCa::new();
    let leaf = ca.leaf(&["weir.test"], KeyType::EcdsaP256, false);
    let (cert, key) = leaf.write(&dir, "leaf");
    let gw: Gateway = start(&format!(
        r#"
        listeners:
          - name: tls
            address: 127.0.0.1:0
            tls: {{ certificates: [{{ cert_file: '{}', key_file: '{}' }}] }}
        {}
        "#,
        cert.display(),
        key.display(),
        gateway_config(LIMITS, &backend.url())
    ))
    .await;

    let ca_pem = ca.pem();
    let mut client = ClientTls::new(&ca_pem, "weir.test");
    client.alpn = &["h2"];
    let tls = client.connect(gw.addr).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (r, mut w) = tokio::io::split(tls);
    let mut reader = FrameReader::new(r);
    let (_, early) = crate::common::h2raw::handshake(&mut reader, &mut w, &[]).await;
    let mut collector = Collector::start(reader, early);
    let block = crate::common::h2raw::request_block("GET", "/attack", &[]);
    let mut sent = 0;
    while sent < 20_000 && collector.goaway().is_none() {
        if w.write_all(&open_and_cancel(sent, 200, &block))
            .await
            .is_err()
        {
            break;
        }
        sent += 200;
    }
    let goaway = collector.wait_goaway(DEADLINE).await.expect("GOAWAY");
    eprintln!("rapid reset over TLS: {sent} streams written, then {goaway}");
    assert_eq!(
        (goaway.code, goaway.debug.as_str()),
        (code::ENHANCE_YOUR_CALM, "too_many_resets")
    );
    assert!(goaway.last_stream <= 2 * 150);
    assert!(backend.hits() <= 150);
    drop((collector, w));
    gw.stop().await;
}
