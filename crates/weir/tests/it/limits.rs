//! Edge protection (contract §3 `limits`): oversized heads and bodies, slow and idle
//! connections, and the connection cap, observed on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{Backend, DEADLINE, assert_problem, closed_within, read_response, start};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn limited(limits: &str, backend: &Backend) -> String {
    format!(
        r#"
        limits: {limits}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: small
            match: {{ prefix: /small }}
            upstream: be
            max_body_bytes: 1KiB
          - name: big
            match: {{ prefix: /big }}
            upstream: be
            max_body_bytes: 1MiB
          - name: default
            match: {{ prefix: / }}
            upstream: be
        "#,
        url = backend.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431_problems() {
    let backend = Backend::start("b").await;
    let gw = start(&limited("{ max_header_bytes: 1KiB }", &backend)).await;
    let resp = gw
        .client
        .get(gw.url("/x"))
        .header("x-small", "y".repeat(100))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .client
        .get(gw.url("/x"))
        .header("x-big", "y".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 431, "headers_too_large").await;
    // Many small headers add up.
    let mut req = gw.client.get(gw.url("/x"));
    for i in 0..40 {
        req = req.header(
            format!("x-h{i}"),
            "0123456789012345678901234567890123456789",
        );
    }
    assert_problem(req.send().await.unwrap(), 431, "headers_too_large").await;
    assert_eq!(
        backend.hits(),
        1,
        "only the small request reached the backend"
    );
    gw.stop().await;
}

/// Up to `max_header_bytes` + 64 KiB weir reads the head and answers with a problem; past
/// that, the HTTP parser refuses the head before weir sees a request, still with 431 and
/// nothing forwarded, but without a body (documented in docs/configuration.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_large_headers_are_431_problems_too() {
    let backend = Backend::start("b").await;
    let gw = start(&limited("{ max_header_bytes: 1KiB }", &backend)).await;
    let send = |n: usize| {
        gw.client
            .get(gw.url("/x"))
            .header("x-huge", "y".repeat(n))
            .send()
    };
    assert_problem(send(48 * 1024).await.unwrap(), 431, "headers_too_large").await;
    let beyond = send(100 * 1024).await.unwrap();
    assert_eq!(beyond.status(), 431);
    assert_eq!(backend.hits(), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_bodies_over_the_limit_are_413_and_never_forwarded() {
    let backend = Backend::start("b").await;
    let gw = start(&limited("{ max_body_bytes: 2KiB }", &backend)).await;
    let post = |path: &str, n: usize| gw.client.post(gw.url(path)).body(vec![b'x'; n]).send();

    // Route limit (1 KiB).
    assert_eq!(post("/small", 1024).await.unwrap().status(), 200);
    assert_problem(
        post("/small", 1025).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // Global limit (2 KiB) on a route without its own.
    assert_eq!(post("/other", 2000).await.unwrap().status(), 200);
    assert_problem(
        post("/other", 3000).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // A route may also raise it.
    assert_eq!(post("/big", 100_000).await.unwrap().status(), 200);
    assert_eq!(
        backend.hits(),
        3,
        "the refused bodies never reached the backend"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_cut_off_at_the_limit_while_streaming() {
    let backend = Backend::start("b").await;
    let gw = start(&limited("{}", &backend)).await;
    let chunk = bytes::Bytes::from(vec![b'z'; 64 * 1024]);
    // Within the limit, chunked: fine.
    let within: Vec<Result<bytes::Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(chunk.clone())).collect();
    let resp = gw
        .client
        .post(gw.url("/big"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            within,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let received = backend
        .state
        .bytes_received
        .load(std::sync::atomic::Ordering::SeqCst);

    // 40 chunks of 64 KiB = 2.5 MiB against 1 MiB: no length to refuse up front.
    let over: Vec<Result<bytes::Bytes, std::io::Error>> =
        (0..40).map(|_| Ok(chunk.clone())).collect();
    let resp = gw
        .client
        .post(gw.url("/big"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(over)))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            assert_problem(resp, 413, "payload_too_large").await;
        }
        Err(e) => panic!("expected a 413 answer, the exchange failed: {e}"),
    }
    let forwarded = backend
        .state
        .bytes_received
        .load(std::sync::atomic::Ordering::SeqCst)
        - received;
    assert!(
        forwarded <= 1024 * 1024,
        "{forwarded} bytes reached the backend; the limit is 1 MiB"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_while_others_are_served() {
    let backend = Backend::start("b").await;
    let gw = start(&limited(
        "{ header_read_timeout: 300ms, idle_timeout: 30s }",
        &backend,
    ))
    .await;

    // A head that never completes.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\n")
        .await
        .unwrap();
    // A head trickled one byte every 50 ms: it would take 10 s to send.
    let mut trickle = TcpStream::connect(gw.addr).await.unwrap();
    let trickler = tokio::spawn(async move {
        let head = format!(
            "GET /x HTTP/1.1\r\nHost: test.local\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(160)
        );
        for b in head.bytes() {
            if trickle.write_all(&[b]).await.is_err() {
                return (trickle, false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (trickle, true)
    });

    // Meanwhile a normal client is served, on its own connections.
    let mut served = 0;
    for _ in 0..5 {
        assert_eq!(gw.get("/x").await.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 5);
    assert!(
        closed_within(&mut stalled, DEADLINE).await,
        "a stalled request head must be cut off"
    );
    let (mut trickle, finished) = trickler.await.unwrap();
    assert!(
        !finished || closed_within(&mut trickle, Duration::from_millis(10)).await,
        "a trickled head must be cut off"
    );
    assert!(closed_within(&mut trickle, DEADLINE).await);
    assert_eq!(gw.get("/x").await.status(), 200, "still serving");
    gw.stop().await;
}

async fn keep_alive_get(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .ok()?;
    read_response(stream, buf).await.map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_idle_timeout_not_header_timeout() {
    let backend = Backend::start("b").await;
    let gw = start(&limited(
        "{ header_read_timeout: 200ms, idle_timeout: 1500ms }",
        &backend,
    ))
    .await;
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(keep_alive_get(&mut conn, &mut buf).await, Some(200));
    // Idle for three header timeouts, well inside the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        keep_alive_get(&mut conn, &mut buf).await,
        Some(200),
        "an idle keep-alive connection was closed by the header timeout"
    );
    // Then idle for good: closed.
    assert!(
        closed_within(&mut conn, DEADLINE).await,
        "an idle connection must be closed after idle_timeout"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_connections_until_one_closes() {
    let backend = Backend::start("b").await;
    let gw = start(&limited("{ max_connections: 2 }", &backend)).await;
    let mut buf1 = Vec::new();
    let mut buf2 = Vec::new();
    let mut c1 = TcpStream::connect(gw.addr).await.unwrap();
    let mut c2 = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(keep_alive_get(&mut c1, &mut buf1).await, Some(200));
    assert_eq!(keep_alive_get(&mut c2, &mut buf2).await, Some(200));

    // A third connection is queued, not served.
    let mut c3 = TcpStream::connect(gw.addr).await.unwrap();
    c3.write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf3 = Vec::new();
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        read_response(&mut c3, &mut buf3),
    )
    .await;
    assert!(
        early.is_err(),
        "a third connection was served while two were open: {early:?}"
    );

    // The second one keeps working; closing the first lets the third in.
    assert_eq!(keep_alive_get(&mut c2, &mut buf2).await, Some(200));
    drop(c1);
    let resp = tokio::time::timeout(DEADLINE, read_response(&mut c3, &mut buf3))
        .await
        .expect("served once a slot frees");
    assert_eq!(resp.map(|r| r.status), Some(200));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_keeps_its_connection_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backend = crate::common::WsBackend::start().await;
    let gw = start(&format!(
        r#"
        limits: {{ max_connections: 1 }}
        upstreams:
          ws:
            targets: [{{ url: "{}" }}]
        routes:
          - name: ws
            match: {{ prefix: / }}
            upstream: ws
        "#,
        backend.url()
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: hi"));
    // The switched connection still holds the only slot: another client waits.
    let mut other = TcpStream::connect(gw.addr).await.unwrap();
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        read_response(&mut other, &mut buf),
    )
    .await;
    assert!(early.is_err(), "served beside an open tunnel: {early:?}");
    // Closing the tunnel frees the slot.
    ws.close(None).await.unwrap();
    drop(ws);
    let resp = tokio::time::timeout(DEADLINE, read_response(&mut other, &mut buf))
        .await
        .expect("served once the tunnel closed");
    assert!(resp.is_some());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_tunnel_is_closed_at_idle_timeout_and_frees_its_slot() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backend = crate::common::WsBackend::start().await;
    let gw = start(&format!(
        r#"
        limits: {{ max_connections: 1, idle_timeout: 1s }}
        upstreams:
          ws:
            targets: [{{ url: "{}" }}]
        routes:
          - name: ws
            match: {{ prefix: / }}
            upstream: ws
        "#,
        backend.url()
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    // Traffic keeps it open past the idle timeout.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("echo: {i}"))
        );
    }
    // Silence for longer than idle_timeout ends it.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("closed");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "a message instead of the close: {end:?}"
    );
    println!("idle tunnel closed after {:?}", started.elapsed());
    // The slot is free again.
    let mut other = TcpStream::connect(gw.addr).await.unwrap();
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let resp = tokio::time::timeout(DEADLINE, read_response(&mut other, &mut buf))
        .await
        .expect("served once the idle tunnel closed");
    assert!(resp.is_some());
    gw.stop().await;
}
