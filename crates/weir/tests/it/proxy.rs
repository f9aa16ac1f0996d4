//! Proxying (contract §4 and §5): what weir adds to and removes from traffic, bodies,
//! upstream failures, HTTP/2 on both sides, and WebSocket upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{
    Backend, Fnv, Mode, WsBackend, assert_problem, echo, echoed_header, raw_request, start,
};

fn one_upstream(url: &str, extra_route: &str) -> String {
    format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
            {extra_route}
        "#
    )
}

fn h2_upstream(url: &str) -> String {
    format!(
        r#"
        upstreams:
          be:
            protocol: http2
            targets: [{{ url: "{url}" }}]
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: be
        "#
    )
}

fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let v = echo(
        gw.client
            .get(gw.url("/x?y=1"))
            .header("host", "api.example.com")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        echoed_header(&v, "x-forwarded-for"),
        Some("127.0.0.1"),
        "a forged XFF is replaced: {v}"
    );
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        Some("api.example.com")
    );
    assert_eq!(
        echoed_header(&v, "host"),
        Some("api.example.com"),
        "Host passes through unchanged"
    );
    assert_eq!(v["path"], "/x?y=1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_appended_when_the_peer_is_a_trusted_proxy() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        "trusted_proxies: [127.0.0.0/8]\n{}",
        crate::common::dedent(&one_upstream(&backend.url(), ""))
    );
    let gw = start(&yaml).await;
    let v = echo(
        gw.client
            .get(gw.url("/"))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        echoed_header(&v, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1"),
        "{v}"
    );
    let v = echo(gw.get("/").await).await;
    assert_eq!(
        echoed_header(&v, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_kept_or_replaced() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;

    // None sent: a ULID, the same upstream and back to the client.
    let resp = gw.get("/").await;
    let returned = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v = echo(resp).await;
    assert!(is_ulid(&returned), "generated id {returned:?} is a ULID");
    assert_eq!(echoed_header(&v, "x-request-id"), Some(returned.as_str()));
    let other = gw.get("/").await.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(other, returned, "every request gets its own id");

    // A well-formed one is kept.
    let uuid = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let resp = gw
        .client
        .get(gw.url("/"))
        .header("x-request-id", uuid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], uuid);
    assert_eq!(echoed_header(&echo(resp).await, "x-request-id"), Some(uuid));

    // A malformed one is replaced, upstream and in the response.
    for bad in ["has spaces in it", "semi;colon", &"x".repeat(200)] {
        let resp = gw
            .client
            .get(gw.url("/"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let returned = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            is_ulid(&returned),
            "{bad:?} replaced by a ULID, got {returned:?}"
        );
        assert_eq!(
            echoed_header(&echo(resp).await, "x-request-id"),
            Some(returned.as_str())
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_from_requests() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let resp = raw_request(
        gw.addr,
        "GET /hop HTTP/1.1\r\n\
         Host: test.local\r\n\
         Connection: keep-alive, X-Secret, x-request-id\r\n\
         Keep-Alive: timeout=5\r\n\
         X-Secret: s3cret\r\n\
         TE: gzip\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-Request-Id: client-id-123\r\n\
         X-Keep: yes\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    for gone in [
        "connection",
        "keep-alive",
        "x-secret",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            v["headers"].get(gone).is_none(),
            "{gone} must not reach the upstream: {v}"
        );
    }
    assert_eq!(echoed_header(&v, "x-keep"), Some("yes"));
    // Naming X-Request-Id in Connection cannot strip weir's own header.
    assert_eq!(
        echoed_header(&v, "x-request-id"),
        Some("client-id-123"),
        "{v}"
    );
    assert_eq!(resp.header("x-request-id"), Some("client-id-123"));

    // Nor the one weir generates.
    let resp = raw_request(
        gw.addr,
        "GET /hop HTTP/1.1\r\nHost: test.local\r\nConnection: x-request-id\r\n\r\n",
    )
    .await;
    let generated = resp
        .header("x-request-id")
        .expect("a generated id")
        .to_owned();
    assert!(is_ulid(&generated), "{generated:?}");
    assert_eq!(
        echoed_header(&resp.json(), "x-request-id"),
        Some(generated.as_str())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_from_responses() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let resp = raw_request(
        gw.addr,
        "GET /resp HTTP/1.1\r\n\
         Host: test.local\r\n\
         X-Respond-Header: Connection: X-Backend-Secret\r\n\
         X-Respond-Header: X-Backend-Secret: internal\r\n\
         X-Respond-Header: Keep-Alive: timeout=99\r\n\
         X-Respond-Header: Proxy-Connection: keep-alive\r\n\
         X-Respond-Header: X-Visible: 1\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-visible"), Some("1"), "{:?}", resp.headers);
    assert_eq!(resp.header("x-backend-secret"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("keep-alive"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("proxy-connection"), None, "{:?}", resp.headers);
    if let Some(c) = resp.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-backend-secret"),
            "Connection: {c}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_forwarded_byte_exact() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let mut seed = 0x1234_5678_u32;
    let data: Vec<u8> = (0..(1 << 20) + 13)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 24) as u8
        })
        .collect();
    // With Content-Length, back through weir unchanged.
    let resp = gw
        .client
        .post(gw.url("/upload"))
        .header("x-echo-body", "1")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.unwrap();
    assert!(
        back.as_ref() == data.as_slice(),
        "the body came back changed ({} bytes vs {})",
        back.len(),
        data.len()
    );

    // Chunked (no length): re-framed, but the same bytes reach the upstream.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(100_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let v = echo(
        gw.client
            .put(gw.url("/upload"))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["body_len"], data.len());
    assert_eq!(v["body_fnv"], Fnv::hex(&data));

    // A raw chunked request, with a chunk extension: framing is weir's business, not the body's.
    let resp = raw_request(
        gw.addr,
        "POST /raw HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let v = resp.json();
    assert_eq!(v["body_len"], 11);
    assert_eq!(v["body_fnv"], Fnv::hex(b"hello world"));

    // Empty POST.
    let v = echo(gw.client.post(gw.url("/empty")).send().await.unwrap()).await;
    assert_eq!(v["body_len"], 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_pass_through_unchanged() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    for status in [201_u16, 404, 500, 503] {
        let resp = gw
            .client
            .get(gw.url("/s"))
            .header("x-status", status.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "the upstream's own body, not a problem"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_bad_gateway() {
    let dead = crate::common::dead_addr();
    let gw = start(&one_upstream(&format!("http://{dead}"), "")).await;
    let body = assert_problem(gw.get("/x").await, 502, "bad_gateway").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains(&dead.port().to_string()),
        "detail must not reveal the upstream address: {detail}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_gateway_timeout() {
    let backend = Backend::with_mode("slow", Mode::Slow(Duration::from_secs(3))).await;
    let gw = start(&one_upstream(&backend.url(), "timeout: 200ms")).await;
    let body = assert_problem(gw.get("/x").await, 504, "gateway_timeout").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        !detail.contains(&backend.addr.port().to_string()),
        "{detail}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_proxied_to_http1_upstreams() {
    let backend = Backend::start("b").await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let client = crate::common::h2c_client();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let req = client
            .post(gw.url(&format!("/h2/{i}?q={i}")))
            .body(vec![b'x'; 1000 + i]);
        tasks.push(tokio::spawn(async move { req.send().await.unwrap() }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.headers()["x-request-id"].len(), 26);
        let v = echo(resp).await;
        assert_eq!(v["path"], format!("/h2/{i}?q={i}"));
        assert_eq!(v["body_len"], 1000 + i);
        assert_eq!(v["version"], "HTTP/1.1");
        // HTTP/2 names the host in :authority; the HTTP/1.1 upstream needs it as Host.
        assert_eq!(
            echoed_header(&v, "host"),
            Some(gw.addr.to_string().as_str()),
            "{v}"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_get_x_forwarded_host() {
    // An http2 upstream: HTTP/2 end to end.
    let backend = Backend::start("b").await;
    let gw = start(&h2_upstream(&backend.url())).await;
    let v = echo(
        crate::common::h2c_client()
            .get(gw.url("/h2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        Some(gw.addr.to_string().as_str()),
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_are_reached_with_prior_knowledge() {
    let backend = Backend::start("h2").await;
    let gw = start(&h2_upstream(&backend.url())).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = gw
            .client
            .post(gw.url(&format!("/n/{i}")))
            .body(vec![b'y'; 10 * i]);
        tasks.push(tokio::spawn(async move { req.send().await.unwrap() }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let v = echo(t.await.unwrap()).await;
        assert_eq!(v["version"], "HTTP/2.0", "{v}");
        assert_eq!(v["path"], format!("/n/{i}"));
        assert_eq!(v["body_len"], 10 * i);
    }
    // And HTTP/2 at both ends.
    let v = echo(
        crate::common::h2c_client()
            .get(gw.url("/both"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["path"], "/both");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = WsBackend::start().await;
    let gw = start(&one_upstream(&backend.url(), "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .expect("WebSocket through weir");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = tokio::time::timeout(crate::common::DEADLINE, ws.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::text(format!("echo: hello {i}")));
    }
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i % 256) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let reply = tokio::time::timeout(crate::common::DEADLINE, ws.next())
        .await
        .expect("a reply")
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_data().as_ref(), blob.as_slice());
    ws.close(None).await.unwrap();
    gw.stop().await;
}

/// An HTTP/1.0 upstream (Python's http.server, old appliances) answers `HTTP/1.0` and closes;
/// the client spoke HTTP/1.1 and must get an HTTP/1.1 answer on a connection that stays open.
#[tokio::test]
async fn an_http_1_0_upstream_does_not_downgrade_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let gw = start(&one_upstream(&url, "")).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .await
            .unwrap();
        let resp = crate::common::read_response(&mut conn, &mut buf)
            .await
            .expect("an answer on the same connection");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"ok");
    }
    let mut raw = Vec::new();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut chunk = [0u8; 1024];
    while !raw.ends_with(b"ok") {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(conn);
    gw.stop().await;
}
