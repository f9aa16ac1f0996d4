//! gRPC-Web (`routes[].grpc.web: true`): a browser-style client over HTTP/1.1 calls the test
//! order service through weir, which speaks gRPC (HTTP/2, trailers) upstream. Binary and
//! base64 text modes, the trailers as the body's last frame, server streaming, errors, and
//! a route that does not convert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use prost::Message as _;
use weir_test_grpc::TestServer;
use weir_test_grpc::pb::{GetOrderRequest, ListOrdersRequest, Order};

use crate::common::faults::content_type;
use crate::common::grpc::{WebFrame, frame, grpc_config, native_route, parse_frames, seen};
use crate::common::{Gateway, start};

const BINARY: &str = "application/grpc-web+proto";
const TEXT: &str = "application/grpc-web-text+proto";

async fn web_gateway(server: &TestServer) -> Gateway {
    start(&grpc_config(
        &server.url(),
        "",
        &native_route("  grpc: { web: true }\n"),
    ))
    .await
}

fn get(id: &str) -> GetOrderRequest {
    GetOrderRequest {
        id: id.to_owned(),
        view: String::new(),
    }
}

struct WebAnswer {
    status: u16,
    headers: http::HeaderMap,
    /// The body as sent (base64 in text mode).
    raw: Bytes,
}

impl WebAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The frames of the body, base64-decoded first in text mode.
    fn frames(&self, text: bool) -> Vec<WebFrame> {
        let body = if text {
            Bytes::from(decode_text(&self.raw))
        } else {
            self.raw.clone()
        };
        parse_frames(body)
    }

    /// The call's status and its message (percent-decoded): from the trailer frame, or
    /// from the headers of a trailers-only answer. Panics when both or neither carry it.
    fn grpc_status(&self, frames: &[WebFrame]) -> (String, Option<String>) {
        let trailer = frames
            .iter()
            .find(|f| f.is_trailer())
            .map(WebFrame::trailers);
        let in_headers = self.header("grpc-status").map(str::to_owned);
        let (code, message) = match (trailer, in_headers) {
            (Some(t), None) => {
                let get = |n: &str| t.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let code = get("grpc-status").expect("grpc-status in the trailer frame");
                (code, get("grpc-message"))
            }
            (None, Some(code)) => (code, self.header("grpc-message").map(str::to_owned)),
            (t, h) => panic!("the status must be in one place: trailer frame {t:?}, header {h:?}"),
        };
        (code, message.map(|m| percent_decode(&m)))
    }
}

/// A gRPC-Web call to `method` of the order service over HTTP/1.1.
async fn web_call(gw: &Gateway, method: &str, content_type: &str, message: Bytes) -> WebAnswer {
    let body = if content_type == TEXT {
        Bytes::from(STANDARD.encode(&message))
    } else {
        message
    };
    let resp = gw
        .client
        .post(gw.url(&format!("/weir.test.v1.Orders/{method}")))
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .header("x-customer", "web")
        .body(body)
        .send()
        .await
        .expect("a gRPC-Web call through weir");
    assert_eq!(resp.version(), http::Version::HTTP_11);
    WebAnswer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        raw: resp.bytes().await.expect("the body"),
    }
}

/// grpc-web-text: base64, possibly several padded pieces one after the other (one per
/// chunk the server wrote). Each 4-character group decodes on its own.
fn decode_text(raw: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert_eq!(clean.len() % 4, 0, "base64 text in whole groups: {raw:?}");
    clean
        .chunks(4)
        .flat_map(|g| {
            STANDARD
                .decode(g)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(raw)))
        })
        .collect()
}

/// `grpc-message` is percent-encoded on the wire (tonic encodes even spaces).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 grpc-message")
}

fn assert_unary_ok(answer: &WebAnswer, text: bool, id: &str) {
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert_eq!(
        answer.header("content-type"),
        Some(if text { TEXT } else { BINARY })
    );
    assert_eq!(
        answer.header("x-served-by"),
        Some("weir-test-grpc"),
        "the service's headers come back"
    );
    let frames = answer.frames(text);
    assert_eq!(frames.len(), 2, "a message and the trailers: {frames:?}");
    assert_eq!(frames[0].flags, 0, "an uncompressed message first");
    let order = Order::decode(frames[0].payload.clone()).expect("an Order");
    assert_eq!(order.id, id);
    assert_eq!(
        order.customer, "web",
        "headers reach the service as metadata"
    );
    assert_eq!(order.amount_cents, 9_007_199_254_740_993);
    assert_eq!(order.items, ["a", "b"]);
    assert!(frames[1].is_trailer(), "the trailers last: {frames:?}");
    assert_eq!(answer.grpc_status(&frames).0, "0");
    assert!(
        frames[1]
            .trailers()
            .iter()
            .any(|(n, v)| n == "grpc-status" && v == "0"),
        "{:?}",
        frames[1].trailers()
    );
}

#[tokio::test]
async fn binary_grpc_web_unary_call() {
    let server = TestServer::start().await;
    let gw = web_gateway(&server).await;

    let answer = web_call(&gw, "GetOrder", BINARY, frame(&get("42"))).await;
    assert_unary_ok(&answer, false, "42");

    // Upstream, it was a plain gRPC call.
    assert_eq!(
        seen(&server, "content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(seen(&server, "te").as_deref(), Some("trailers"));
    assert_eq!(seen(&server, "x-grpc-web"), None);
}

#[tokio::test]
async fn text_grpc_web_unary_call() {
    let server = TestServer::start().await;
    let gw = web_gateway(&server).await;

    let answer = web_call(&gw, "GetOrder", TEXT, frame(&get("43"))).await;
    assert!(
        answer
            .raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)),
        "the body is base64: {:?}",
        answer.raw
    );
    assert_unary_ok(&answer, true, "43");
    assert_eq!(
        seen(&server, "content-type").as_deref(),
        Some("application/grpc")
    );
}

#[tokio::test]
async fn a_grpc_error_reaches_a_web_client() {
    let server = TestServer::start().await;
    let gw = web_gateway(&server).await;

    for ct in [BINARY, TEXT] {
        let answer = web_call(&gw, "GetOrder", ct, frame(&get("missing"))).await;
        assert_eq!(answer.status, 200, "{ct}: {:?}", answer.headers);
        assert_eq!(answer.header("content-type"), Some(ct));
        let frames = answer.frames(ct == TEXT);
        assert!(
            frames.iter().all(WebFrame::is_trailer),
            "{ct}: no message on an error: {frames:?}"
        );
        let (code, message) = answer.grpc_status(&frames);
        assert_eq!(code, "5", "{ct}");
        assert_eq!(message.as_deref(), Some("order missing not found"), "{ct}");
    }

    // weir's own errors take the web client's form too: nothing routes this service.
    let resp = gw
        .client
        .post(gw.url("/other.v1.Service/Method"))
        .header("content-type", BINARY)
        .body(frame(&get("1")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(content_type(&resp).as_deref(), Some(BINARY));
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("12")
    );
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn server_streaming_over_grpc_web() {
    let server = TestServer::start().await;
    let gw = web_gateway(&server).await;
    let request = ListOrdersRequest {
        status: 2,
        limit: 4,
        customer: "acme".to_owned(),
    };

    for ct in [BINARY, TEXT] {
        let answer = web_call(&gw, "ListOrders", ct, frame(&request)).await;
        assert_eq!(answer.status, 200, "{ct}: {:?}", answer.headers);
        assert_eq!(answer.header("content-type"), Some(ct));
        let frames = answer.frames(ct == TEXT);
        assert_eq!(
            frames.len(),
            5,
            "{ct}: four orders and the trailers: {frames:?}"
        );
        for (i, f) in (1..).zip(&frames[..4]) {
            assert_eq!(f.flags, 0, "{ct}");
            let order = Order::decode(f.payload.clone()).unwrap();
            assert_eq!(order.id, format!("o{i}"), "{ct}");
            assert_eq!(order.amount_cents, i * 100);
            assert_eq!(order.customer, "acme");
        }
        assert!(frames[4].is_trailer(), "{ct}");
        assert_eq!(answer.grpc_status(&frames).0, "0", "{ct}");
    }

    // An error after the first message: one order, then the status in the trailer frame.
    let failing = ListOrdersRequest {
        customer: "fail-mid".to_owned(),
        ..request
    };
    let answer = web_call(&gw, "ListOrders", BINARY, frame(&failing)).await;
    let frames = answer.frames(false);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(Order::decode(frames[0].payload.clone()).unwrap().id, "o1");
    assert!(frames[1].is_trailer());
    let (code, message) = answer.grpc_status(&frames);
    assert_eq!(code, "14");
    assert_eq!(message.as_deref(), Some("stream broke"));
}

#[tokio::test]
async fn a_grpc_web_stream_is_passed_on_as_it_comes() {
    use futures_util::StreamExt;

    let server = TestServer::start().await;
    let gw = web_gateway(&server).await;
    let request = ListOrdersRequest {
        status: 0,
        limit: 3,
        customer: "slow".to_owned(),
    };

    for ct in [BINARY, TEXT] {
        let body = if ct == TEXT {
            Bytes::from(STANDARD.encode(frame(&request)))
        } else {
            frame(&request)
        };
        let started = Instant::now();
        let resp = gw
            .client
            .post(gw.url("/weir.test.v1.Orders/ListOrders"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut raw = Vec::new();
        let mut first_at = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            if first_at.is_none() && !chunk.is_empty() {
                first_at = Some(started.elapsed());
            }
            raw.extend_from_slice(&chunk);
        }
        let end_at = started.elapsed();
        let first_at = first_at.expect("a body");
        // `slow` waits 200 ms between orders: the first frame must come long before the end.
        assert!(
            end_at - first_at >= Duration::from_millis(300),
            "{ct}: the first bytes came at {first_at:?}, the end at {end_at:?}"
        );
        let answer = WebAnswer {
            status: 200,
            headers: http::HeaderMap::new(),
            raw: Bytes::from(raw),
        };
        let frames = answer.frames(ct == TEXT);
        assert_eq!(frames.len(), 4, "{ct}: {frames:?}");
        assert!(frames[3].is_trailer());
    }
}

#[tokio::test]
async fn a_route_without_web_does_not_convert() {
    let server = TestServer::start().await;
    let gw = start(&grpc_config(&server.url(), "", &native_route(""))).await;

    let answer = web_call(&gw, "GetOrder", BINARY, frame(&get("42"))).await;
    // The call goes upstream as it came: content type application/grpc-web+proto, which
    // tonic happens to serve as gRPC (it accepts any application/grpc* type)...
    assert_eq!(server.calls(), 1);
    assert_eq!(seen(&server, "content-type").as_deref(), Some(BINARY));
    assert_eq!(seen(&server, "x-grpc-web").as_deref(), Some("1"));
    // ... and nothing turns the answer into gRPC-Web: the client gets the gRPC answer as an
    // HTTP/1.1 response, `application/grpc`, the message frame alone. The status, sent as
    // HTTP trailers, does not reach it (an HTTP/1.1 client that did not send `TE: trailers`
    // gets none), so a gRPC-Web client cannot tell how the call ended.
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert_eq!(answer.header("grpc-status"), None);
    let frames = parse_frames(answer.raw);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(!frames[0].is_trailer(), "no trailer frame: {frames:?}");
    assert_eq!(Order::decode(frames[0].payload.clone()).unwrap().id, "42");
}
