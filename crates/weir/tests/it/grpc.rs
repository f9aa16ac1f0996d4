//! Native gRPC through weir (`upstreams.<name>.protocol: grpc`): a tonic client calls the
//! test order service (`weir_test_grpc`) through the gateway. Metadata and statuses pass
//! through unchanged, every streaming shape streams (neither direction buffered), deadlines
//! hold, and every error weir makes itself reaches the client as a gRPC status (HTTP 200,
//! `application/grpc`, `grpc-status`), never as a JSON problem it cannot read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use weir_test_grpc::TestServer;
use weir_test_grpc::pb::{ChatMessage, GetOrderRequest, Item, ListOrdersRequest};

use crate::common::faults::{Fault, RawFault};
use crate::common::grpc::{client, frame, grpc_config, native_route, seen};
use crate::common::{Backend, DEADLINE, Gateway, dead_addr, h2c_client, start};

fn get(id: &str) -> GetOrderRequest {
    GetOrderRequest {
        id: id.to_owned(),
        view: String::new(),
    }
}

/// weir on the native route to `url`, with `extra` under the route (route keys, each line
/// indented by two spaces) and `top` at the top level.
async fn gateway(url: &str, top: &str, extra: &str) -> Gateway {
    start(&grpc_config(url, top, &native_route(extra))).await
}

/// A gRPC call made by hand over h2c: `GetOrder` of `id` on `path`, with `headers`.
async fn raw_call(gw: &Gateway, path: &str, id: &str, headers: &[(&str, &str)]) -> RawAnswer {
    let mut req = h2c_client()
        .post(gw.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame(&get(id)));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.expect("an h2c gRPC call through weir");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("the body");
    RawAnswer {
        status,
        headers,
        body,
    }
}

struct RawAnswer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// weir's own gRPC error: HTTP 200, `application/grpc`, `grpc-status` in the headers
    /// (trailers-only) and no body, least of all a JSON problem.
    fn assert_weir_status(&self, code: u32) {
        assert_eq!(self.status, 200, "headers {:?}", self.headers);
        assert_eq!(self.header("content-type"), Some("application/grpc"));
        assert_eq!(
            self.header("grpc-status"),
            Some(code.to_string().as_str()),
            "headers {:?}",
            self.headers
        );
        assert!(
            self.header("grpc-message").is_some_and(|m| !m.is_empty()),
            "weir says why: {:?}",
            self.headers
        );
        assert!(
            self.body.is_empty(),
            "a trailers-only answer has no body: {:?}",
            self.body
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pass-through

#[tokio::test]
async fn unary_metadata_reaches_both_sides_and_te_trailers_is_sent() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let mut req = Request::new(get("42"));
    req.metadata_mut()
        .insert("x-customer", "acme".parse().unwrap());
    req.metadata_mut().insert_bin(
        "x-trace-bin",
        tonic::metadata::MetadataValue::from_bytes(b"\x00\xffok"),
    );
    let resp = c.get_order(req).await.expect("GetOrder through weir");

    assert_eq!(
        resp.metadata().get("x-served-by").unwrap(),
        "weir-test-grpc",
        "the service's response metadata comes back"
    );
    let order = resp.into_inner();
    assert_eq!(order.id, "42");
    assert_eq!(
        order.customer, "acme",
        "request metadata reached the service"
    );
    assert_eq!(order.amount_cents, 9_007_199_254_740_993);
    assert_eq!(order.items, ["a", "b"]);

    assert_eq!(server.calls(), 1);
    assert_eq!(seen(&server, "x-customer").as_deref(), Some("acme"));
    assert_eq!(seen(&server, "te").as_deref(), Some("trailers"));
    assert_eq!(
        seen(&server, "content-type").as_deref(),
        Some("application/grpc")
    );
    // A binary value travels as its unpadded base64 wire text, untouched.
    let trace = seen(&server, "x-trace-bin").expect("x-trace-bin reached the service");
    assert_eq!(trace.trim_end_matches('='), "AP9vaw");
    assert!(
        seen(&server, "x-request-id").is_some_and(|v| !v.is_empty()),
        "weir's request id is sent along: {:?}",
        server.last_metadata()
    );
}

#[tokio::test]
async fn error_statuses_pass_through_unchanged() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let err = c.get_order(get("err-5")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "forced 5");

    let err = c.get_order(get("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "order missing not found");

    // The codes weir also uses for its own errors: the service's message shows they are the
    // service's, passed through, and not weir's reading of them.
    for (id, code) in [
        ("err-3", Code::InvalidArgument),
        ("err-4", Code::DeadlineExceeded),
        ("err-8", Code::ResourceExhausted),
        ("err-14", Code::Unavailable),
        ("err-16", Code::Unauthenticated),
    ] {
        let err = c.get_order(get(id)).await.unwrap_err();
        assert_eq!(err.code(), code, "{id}: {err:?}");
        assert_eq!(err.message(), format!("forced {}", &id[4..]), "{id}");
    }
    assert_eq!(server.calls(), 7, "every call reached the service once");

    // The connection still serves calls after errors.
    let ok = c.get_order(get("1")).await.unwrap().into_inner();
    assert_eq!(ok.id, "1");
}

#[tokio::test]
async fn server_streaming_passes_every_message_as_it_comes() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let mut stream = c
        .list_orders(ListOrdersRequest {
            status: 1,
            limit: 5,
            customer: "acme".to_owned(),
        })
        .await
        .expect("ListOrders through weir")
        .into_inner();
    let mut got = Vec::new();
    while let Some(order) = stream.message().await.expect("a stream without error") {
        got.push(order);
    }
    let ids: Vec<&str> = got.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["o1", "o2", "o3", "o4", "o5"]);
    for (i, o) in (1..).zip(&got) {
        assert_eq!(o.amount_cents, i * 100);
        assert_eq!(o.status, 1);
        assert_eq!(o.customer, "acme");
    }

    // `slow` waits 200 ms between orders: the first must arrive long before the last, so
    // weir does not gather the stream before passing it on.
    let started = Instant::now();
    let mut stream = c
        .list_orders(ListOrdersRequest {
            status: 0,
            limit: 3,
            customer: "slow".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first order");
    let first_at = started.elapsed();
    assert_eq!(first.id, "o1");
    let mut n = 1;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    let last_at = started.elapsed();
    assert_eq!(n, 3);
    assert!(
        last_at - first_at >= Duration::from_millis(300),
        "the first order came at {first_at:?}, the stream ended at {last_at:?}"
    );

    // An error after the first message still ends the stream with the service's status.
    let mut stream = c
        .list_orders(ListOrdersRequest {
            status: 0,
            limit: 3,
            customer: "fail-mid".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().id, "o1");
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "stream broke");
}

#[tokio::test]
async fn client_streaming_delivers_every_item() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let items: Vec<Item> = (1..=50)
        .map(|i| Item {
            sku: format!("sku-{i}"),
            quantity: i,
        })
        .collect();
    let summary = c
        .upload_items(tokio_stream::iter(items))
        .await
        .expect("UploadItems through weir")
        .into_inner();
    assert_eq!(summary.items, 50);
    assert_eq!(summary.quantity, (1..=50).sum::<i64>());

    // No item at all is a stream too.
    let summary = c
        .upload_items(tokio_stream::iter(Vec::<Item>::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.items, summary.quantity), (0, 0));
}

#[tokio::test]
async fn bidi_chat_interleaves_without_buffering_either_way() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let (tx, rx) = mpsc::channel(1);
    // The first message goes before the call, so a proxy that waits for request bytes
    // before answering cannot be what makes this pass or hang.
    tx.send(ChatMessage {
        seq: 0,
        text: "m1".to_owned(),
    })
    .await
    .unwrap();
    let mut replies = tokio::time::timeout(DEADLINE, c.chat(ReceiverStream::new(rx)))
        .await
        .expect("the call's headers came while the client stream is still open")
        .expect("Chat through weir")
        .into_inner();
    for i in 1..=5 {
        if i > 1 {
            tx.send(ChatMessage {
                seq: 0,
                text: format!("m{i}"),
            })
            .await
            .unwrap();
        }
        // The echo of this message must come before the next is sent: neither weir's
        // request side nor its response side may hold data back.
        let reply = tokio::time::timeout(DEADLINE, replies.message())
            .await
            .unwrap_or_else(|_| panic!("no echo of message {i} while the stream is open"))
            .expect("no error")
            .expect("an echo, not the end");
        assert_eq!(reply.seq, i);
        assert_eq!(reply.text, format!("echo: m{i}"));
    }
    // Half-closing ends the service's side, and so the call, with OK.
    drop(tx);
    let end = tokio::time::timeout(DEADLINE, replies.message())
        .await
        .expect("the call ends after the client half-closes");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

// ---------------------------------------------------------------------------------------
// Deadlines

/// A `grpc-timeout` value (`300m`, `299999u`...) as a duration.
fn parse_grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().expect("grpc-timeout digits");
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        other => panic!("grpc-timeout unit {other:?} in {value:?}"),
    }
}

#[tokio::test]
async fn a_client_deadline_ends_a_slow_call_and_reaches_the_service() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "").await;
    let mut c = client(&gw).await;

    let mut req = Request::new(get("slow-5000"));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = c.get_order(req).await.unwrap_err();
    let took = started.elapsed();
    // Whoever times out first answers: weir, the service (both read grpc-timeout) with
    // DEADLINE_EXCEEDED, or tonic's own client-side timer, which reports CANCELLED
    // "Timeout expired". The point is that the call ends at the deadline.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let timeout = server
        .last_grpc_timeout()
        .expect("the service saw a grpc-timeout header");
    let timeout = parse_grpc_timeout(&timeout);
    assert!(
        timeout > Duration::ZERO && timeout <= Duration::from_millis(300),
        "grpc-timeout as received: {timeout:?}"
    );
}

#[tokio::test]
async fn weir_answers_deadline_exceeded_when_the_upstream_never_answers() {
    let hang = RawFault::start(Fault::Hang).await;
    let gw = gateway(&hang.url(), "", "").await;

    // By hand, so that no client-side timer races weir's: the client's deadline is 300 ms
    // and it waits for whatever weir says.
    let started = Instant::now();
    let answer = raw_call(
        &gw,
        "/weir.test.v1.Orders/GetOrder",
        "1",
        &[("grpc-timeout", "300m")],
    )
    .await;
    let took = started.elapsed();
    answer.assert_weir_status(4);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "weir gave up after {took:?}"
    );
    assert!(hang.connections() >= 1, "weir did try the upstream");

    // A tonic client whose own deadline is longer than the route's timeout gets weir's
    // DEADLINE_EXCEEDED as a status, not a transport error.
    let gw = gateway(&hang.url(), "", "  timeout: 300ms\n").await;
    let mut c = client(&gw).await;
    let mut req = Request::new(get("1"));
    req.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let err = c.get_order(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // With a 300 ms deadline on the tonic side too, the call ends at the deadline either
    // way (tonic's own timer says CANCELLED when it fires first).
    let gw = gateway(&hang.url(), "", "").await;
    let mut c = client(&gw).await;
    let mut req = Request::new(get("1"));
    req.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = c.get_order(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// weir's own errors, as gRPC statuses

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    let gw = gateway(&format!("http://{}", dead_addr()), "", "").await;
    let mut c = client(&gw).await;
    let err = c.get_order(get("1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty());

    raw_call(&gw, "/weir.test.v1.Orders/GetOrder", "1", &[])
        .await
        .assert_weir_status(14);
}

#[tokio::test]
async fn a_path_no_route_matches_is_unimplemented() {
    let server = TestServer::start().await;
    // Only GetOrder is routed.
    let routes =
        "- name: get\n  match: { prefix: /weir.test.v1.Orders/GetOrder }\n  upstream: svc\n";
    let gw = start(&grpc_config(&server.url(), "", routes)).await;
    let mut c = client(&gw).await;

    assert_eq!(c.get_order(get("1")).await.unwrap().into_inner().id, "1");
    let err = c
        .list_orders(ListOrdersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(
        server.calls(),
        1,
        "the unrouted call never reached the service"
    );

    raw_call(&gw, "/other.v1.Service/Method", "1", &[])
        .await
        .assert_weir_status(12);
}

#[tokio::test]
async fn a_missing_api_key_is_unauthenticated_and_a_key_is_not_forwarded() {
    let server = TestServer::start().await;
    let top = r#"
        auth:
          providers:
            keys: { type: api_key, header: X-Api-Key }
        consumers:
          - name: acme
            api_keys: ["grpc-key-acme-3f9a1c"]
        "#;
    let gw = gateway(&server.url(), top, "  auth: { providers: [keys] }\n").await;
    let mut c = client(&gw).await;

    let err = c.get_order(get("1")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut req = Request::new(get("1"));
    req.metadata_mut()
        .insert("x-api-key", "wrong-key".parse().unwrap());
    let err = c.get_order(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(server.calls(), 0);

    let mut req = Request::new(get("1"));
    req.metadata_mut()
        .insert("x-api-key", "grpc-key-acme-3f9a1c".parse().unwrap());
    let order = c.get_order(req).await.expect("authenticated").into_inner();
    assert_eq!(order.id, "1");
    assert_eq!(server.calls(), 1);
    assert_eq!(
        seen(&server, "x-api-key"),
        None,
        "the credential is not forwarded"
    );

    let raw = raw_call(&gw, "/weir.test.v1.Orders/GetOrder", "1", &[]).await;
    raw.assert_weir_status(16);
}

#[tokio::test]
async fn an_exceeded_rate_limit_is_resource_exhausted() {
    let server = TestServer::start().await;
    let gw = gateway(
        &server.url(),
        "",
        "  rate_limit: [ { key: route, limit: 1, per: 1m } ]\n",
    )
    .await;
    let mut c = client(&gw).await;

    c.get_order(get("1"))
        .await
        .expect("the first call is admitted");
    let err = c.get_order(get("2")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(server.calls(), 1);

    let raw = raw_call(&gw, "/weir.test.v1.Orders/GetOrder", "3", &[]).await;
    raw.assert_weir_status(8);
    assert!(
        raw.header("retry-after").is_some(),
        "the wait is said: {:?}",
        raw.headers
    );
}

#[tokio::test]
async fn an_http_error_without_grpc_status_becomes_unavailable() {
    // An HTTP server (h2c too) where a gRPC service should be: it answers 503 and JSON.
    let backend = Backend::start("plain").await;
    let gw = gateway(&backend.url(), "", "").await;
    let mut c = client(&gw).await;

    let mut req = Request::new(get("1"));
    req.metadata_mut()
        .insert("x-status", "503".parse().unwrap());
    let err = c.get_order(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(backend.hits(), 1);

    // tonic would guess UNAVAILABLE from a bare 503 too: by hand, the answer is weir's
    // trailers-only status, not the backend's 503 and JSON body.
    let raw = raw_call(
        &gw,
        "/weir.test.v1.Orders/GetOrder",
        "1",
        &[("x-status", "503")],
    )
    .await;
    raw.assert_weir_status(14);
}

#[tokio::test]
async fn request_header_transforms_set_grpc_metadata() {
    let server = TestServer::start().await;
    let transform = "  transform:\n    request:\n      headers:\n        set:\n          \
                     X-Tenant: acme\n";
    let gw = gateway(&server.url(), "", transform).await;
    let mut c = client(&gw).await;

    let order = c.get_order(get("1")).await.unwrap().into_inner();
    assert_eq!(order.id, "1");
    assert_eq!(seen(&server, "x-tenant").as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_client_stream_over_the_body_limit_is_resource_exhausted() {
    let server = TestServer::start().await;
    let gw = gateway(&server.url(), "", "  max_body_bytes: 1KiB\n").await;
    let mut c = client(&gw).await;

    // 100 items of about 40 bytes each (frames included): 4 KiB, no Content-Length.
    let items: Vec<Item> = (1..=100)
        .map(|i| Item {
            sku: format!("sku-{i:0>30}"),
            quantity: 1,
        })
        .collect();
    let err = c.upload_items(tokio_stream::iter(items)).await.unwrap_err();
    // weir's own status (413 payload_too_large for an HTTP client), not the upstream's.
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.metadata().get("x-served-by").is_none(), "{err:?}");
    // The client's excess is not the target's failure.
    let failures = crate::common::faults::failures(&gw, "svc", &server.url(), "reset").await;
    assert_eq!(failures, 0, "the target was blamed for the client's body");

    // Under the limit, it passes.
    let items: Vec<Item> = (1..=5)
        .map(|i| Item {
            sku: format!("sku-{i}"),
            quantity: 2,
        })
        .collect();
    let summary = c
        .upload_items(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.items, summary.quantity), (5, 10));
}
