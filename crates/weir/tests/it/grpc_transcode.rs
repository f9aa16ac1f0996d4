//! REST → gRPC transcoding (`routes[].grpc.protos` / `descriptor_set`): plain HTTP/1.1 JSON
//! clients call the test order service through its `google.api.http` annotations. The
//! proto3 JSON mapping (int64 as strings, enum names, RFC 3339 timestamps, lowerCamelCase),
//! path, query and body bindings, server streams as a JSON array or NDJSON, gRPC errors as
//! problem+json with the mapped HTTP status, and the config's load-time checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_test_grpc::TestServer;

use crate::common::faults::{content_type, is_problem};
use crate::common::grpc::{PROTOS_DIR, descriptor_file, grpc_config, rest_route, seen};
use crate::common::{Gateway, MapEnv, TempDir, assert_problem, dead_addr, start};

async fn gateway(server: &TestServer) -> Gateway {
    start(&grpc_config(&server.url(), "", &rest_route())).await
}

/// A 200 JSON answer's body.
async fn json_ok(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let ct = content_type(&resp);
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(ct.as_deref(), Some("application/json"), "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// ---------------------------------------------------------------------------------------
// Unary calls

#[tokio::test]
async fn get_maps_the_path_and_renders_proto3_json() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    let resp = gw.get("/v1/orders/42").await;
    let text_form = {
        let v = json_ok(resp).await;
        assert_eq!(v["id"], "42", "{v}");
        // int64 as a string, exactly: 2^53 + 1 does not survive a JSON number.
        assert_eq!(v["amountCents"], "9007199254740993", "{v}");
        assert_eq!(v["status"], "STATUS_SHIPPED", "{v}");
        assert_eq!(v["createdAt"], "2026-01-02T03:04:05.500Z", "{v}");
        assert_eq!(v["items"], json!(["a", "b"]), "{v}");
        // lowerCamelCase only; a field left at its default may be left out.
        assert!(v.get("amount_cents").is_none() && v.get("created_at").is_none());
        assert!(
            v.get("customer").is_none_or(|c| c == ""),
            "no customer was given: {v}"
        );
        v
    };
    assert_eq!(
        text_form.as_object().unwrap().len(),
        5,
        "nothing else: {text_form}"
    );
    // The service was called with the REST path's method and as gRPC.
    assert_eq!(server.calls(), 1);
    assert_eq!(
        seen(&server, "content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(seen(&server, "te").as_deref(), Some("trailers"));

    // A query parameter sets the field of the same name.
    let v = json_ok(gw.get("/v1/orders/7?view=full").await).await;
    assert_eq!(v["id"], "7");
    assert_eq!(v["items"], json!(["a", "b", "full"]), "{v}");

    // Request headers reach the service as metadata.
    let resp = gw
        .client
        .get(gw.url("/v1/orders/8"))
        .header("x-customer", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(resp).await["customer"], "bob");
}

#[tokio::test]
async fn post_takes_the_whole_body_as_the_message() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    let post = |body: Value| gw.client.post(gw.url("/v1/orders")).json(&body).send();
    let v = json_ok(
        post(json!({
            "amountCents": 12345,
            "status": "STATUS_PENDING",
            "createdAt": "2026-05-06T07:08:09Z",
            "items": ["x"],
            "customer": "carol"
        }))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(v["id"], "ord-1", "the service set the id: {v}");
    assert_eq!(v["amountCents"], "12345");
    assert_eq!(v["status"], "STATUS_PENDING");
    assert_eq!(v["createdAt"], "2026-05-06T07:08:09Z");
    assert_eq!(v["items"], json!(["x"]));
    assert_eq!(v["customer"], "carol");

    // int64 as a string keeps every digit; the original field names are accepted too.
    let v = json_ok(
        post(json!({ "amount_cents": "9007199254740993", "status": "STATUS_CANCELLED" }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["amountCents"], "9007199254740993", "{v}");
    assert_eq!(v["status"], "STATUS_CANCELLED");
    assert_eq!(
        v["createdAt"], "2026-01-02T03:04:05.500Z",
        "the default: {v}"
    );
}

#[tokio::test]
async fn patch_and_put_bind_the_path_into_a_nested_field() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    for method in [reqwest::Method::PATCH, reqwest::Method::PUT] {
        let resp = gw
            .client
            .request(method.clone(), gw.url("/v1/orders/7"))
            .json(&json!({ "customer": "bob" }))
            .send()
            .await
            .unwrap();
        let v = json_ok(resp).await;
        assert_eq!(v["id"], "7", "{method}: order.id from the path: {v}");
        assert_eq!(v["customer"], "bob", "{method}: the body is `order`: {v}");
    }
    assert_eq!(server.calls(), 2);
}

// ---------------------------------------------------------------------------------------
// Server streaming

#[tokio::test]
async fn a_server_stream_is_a_json_array() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    let v = json_ok(gw.get("/v1/orders?status=STATUS_PENDING&limit=2").await).await;
    let orders = v.as_array().unwrap_or_else(|| panic!("an array: {v}"));
    assert_eq!(orders.len(), 2, "{v}");
    for (i, o) in (1..).zip(orders) {
        assert_eq!(o["id"], format!("o{i}"));
        assert_eq!(o["amountCents"], format!("{}", i * 100));
        assert_eq!(o["status"], "STATUS_PENDING");
    }

    // The default limit, and the customer from the query.
    let v = json_ok(gw.get("/v1/orders?customer=dave").await).await;
    let orders = v.as_array().unwrap();
    assert_eq!(orders.len(), 3, "{v}");
    assert!(orders.iter().all(|o| o["customer"] == "dave"), "{v}");
}

#[tokio::test]
async fn a_server_stream_is_ndjson_when_asked() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    let resp = gw
        .client
        .get(gw.url("/v1/orders?status=STATUS_PENDING&limit=2"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(content_type(&resp).as_deref(), Some("application/x-ndjson"));
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text:?}")))
        .collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0]["id"], "o1");
    assert_eq!(lines[1]["id"], "o2");
    assert!(text.ends_with('\n'), "{text:?}");

    // A unary method ignores the NDJSON wish: one JSON object.
    let resp = gw
        .client
        .get(gw.url("/v1/orders/5"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(resp).await["id"], "5");
}

#[tokio::test]
async fn a_stream_error_after_the_first_message_is_the_last_element() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;
    let error =
        json!({ "error": { "code": 14, "status": "UNAVAILABLE", "message": "stream broke" } });

    let v = json_ok(gw.get("/v1/orders?customer=fail-mid").await).await;
    let elements = v.as_array().unwrap_or_else(|| panic!("an array: {v}"));
    assert_eq!(elements.len(), 2, "{v}");
    assert_eq!(elements[0]["id"], "o1");
    assert_eq!(elements[1], error);

    let resp = gw
        .client
        .get(gw.url("/v1/orders?customer=fail-mid"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0]["id"], "o1");
    assert_eq!(lines[1], error);
}

#[tokio::test]
async fn a_server_stream_is_passed_on_as_it_comes() {
    use futures_util::StreamExt;

    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    // `slow` waits 200 ms between orders: the first must reach the client long before the
    // last, so weir does not gather the stream into one JSON document first.
    for accept in ["application/json", "application/x-ndjson"] {
        let started = Instant::now();
        let resp = gw
            .client
            .get(gw.url("/v1/orders?customer=slow&limit=3"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        let mut first_at = None;
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if first_at.is_none() && text.contains("\"o1\"") {
                first_at = Some(started.elapsed());
            }
        }
        let end_at = started.elapsed();
        let first_at = first_at.unwrap_or_else(|| panic!("{accept}: no o1 in {text:?}"));
        assert!(
            end_at - first_at >= Duration::from_millis(300),
            "{accept}: o1 came at {first_at:?}, the end at {end_at:?}: {text:?}"
        );
        assert_eq!(text.matches("\"id\"").count(), 3, "{accept}: {text:?}");
    }
}

#[tokio::test]
async fn a_route_timeout_ends_a_slow_call_as_weirs_gateway_timeout() {
    let server = TestServer::start().await;
    let route = format!("{}  timeout: 300ms\n", rest_route());
    let gw = start(&grpc_config(&server.url(), "", &route)).await;

    let started = Instant::now();
    let body = assert_problem(gw.get("/v1/orders/slow-5000").await, 504, "gateway_timeout").await;
    assert!(started.elapsed() < Duration::from_secs(3), "{body}");
    assert!(
        body.get("grpc_status").is_none(),
        "weir's own problem: {body}"
    );
    assert_eq!(server.calls(), 1);
    // The service was told the deadline, so it can stop when weir stops waiting.
    let sent = server.last_grpc_timeout().expect("a grpc-timeout upstream");
    let ms: u64 = sent.strip_suffix('m').unwrap().parse().unwrap();
    assert!((1..=300).contains(&ms), "{sent}");
}

// ---------------------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn grpc_errors_are_problems_with_the_mapped_status() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;

    let body = assert_problem(gw.get("/v1/orders/missing").await, 404, "grpc_not_found").await;
    assert_eq!(body["detail"], "order missing not found", "{body}");
    assert_eq!(body["grpc_status"], 5, "{body}");

    for (code, status, name) in [
        (3, 400, "grpc_invalid_argument"),
        (16, 401, "grpc_unauthenticated"),
        (7, 403, "grpc_permission_denied"),
        (8, 429, "grpc_resource_exhausted"),
        (14, 503, "grpc_unavailable"),
        (4, 504, "grpc_deadline_exceeded"),
        (12, 501, "grpc_unimplemented"),
        (13, 500, "grpc_internal"),
    ] {
        let body = assert_problem(
            gw.get(&format!("/v1/orders/err-{code}")).await,
            status,
            name,
        )
        .await;
        assert_eq!(body["detail"], format!("forced {code}"), "{body}");
        assert_eq!(body["grpc_status"], code, "{body}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_service() {
    let server = TestServer::start().await;
    let gw = gateway(&server).await;
    let post = |body: &'static str| {
        gw.client
            .post(gw.url("/v1/orders"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let bad_json = assert_problem(post("{not json").await.unwrap(), 400, "bad_request").await;
    assert!(
        bad_json["detail"].as_str().unwrap().contains("body"),
        "{bad_json}"
    );
    let unknown = assert_problem(post(r#"{"nope": 1}"#).await.unwrap(), 400, "bad_request").await;
    assert!(
        unknown["detail"].as_str().unwrap().contains("nope"),
        "names the field: {unknown}"
    );
    assert_problem(
        post(r#"{"amountCents": "12x"}"#).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_problem(
        post(r#"{"status": "STATUS_NOPE"}"#).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_problem(gw.get("/v1/orders?limit=abc").await, 400, "bad_request").await;
    assert_eq!(server.calls(), 0, "none of them reached the service");

    // Under the route's prefix, but no annotation maps it.
    assert_problem(gw.get("/v1/orders/1/x").await, 404, "route_not_found").await;
    let resp = gw
        .client
        .delete(gw.url("/v1/orders/1"))
        .send()
        .await
        .unwrap();
    assert!(is_problem(&resp), "{resp:?}");
    assert!(
        matches!(resp.status().as_u16(), 404 | 405),
        "DELETE has no binding: {}",
        resp.status()
    );
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_weirs_own_problem() {
    let gw = start(&grpc_config(
        &format!("http://{}", dead_addr()),
        "",
        &rest_route(),
    ))
    .await;
    // Like any route's: a refused connection is 502 `bad_gateway` (a target that is known
    // to be down, by health checks or an open breaker, is 503 `upstream_unavailable`).
    let body = assert_problem(gw.get("/v1/orders/42").await, 502, "bad_gateway").await;
    assert!(
        body.get("grpc_status").is_none(),
        "weir's own problem: {body}"
    );
}

/// The REST route `rest` on a `descriptor_set:` file holding `set`.
fn descriptor_route(dir: &TempDir, set: &[u8]) -> String {
    format!(
        "- name: rest\n  match: {{ prefix: /v1/orders }}\n  upstream: svc\n  grpc:\n    \
         descriptor_set: \"{}\"\n",
        descriptor_file(dir, set).display()
    )
}

#[tokio::test]
async fn an_upstream_that_is_not_grpc_is_a_bad_gateway() {
    // An HTTP server where the gRPC service should be.
    let backend = crate::common::Backend::start("plain").await;
    let gw = start(&grpc_config(&backend.url(), "", &rest_route())).await;

    // A 200 with a JSON body is not a gRPC answer.
    assert_problem(gw.get("/v1/orders/42").await, 502, "bad_gateway").await;
    // An HTTP error without grpc-status is weir's reading of it.
    let resp = gw
        .client
        .get(gw.url("/v1/orders/42"))
        .header("x-status", "503")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 503, "upstream_unavailable").await;
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let server = TestServer::start().await;
    let route = format!("{}  max_body_bytes: 1KiB\n", rest_route());
    let gw = start(&grpc_config(&server.url(), "", &route)).await;
    let big = json!({ "customer": "x".repeat(4096) });
    let resp = gw
        .client
        .post(gw.url("/v1/orders"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413, "payload_too_large").await;
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_descriptor_set_file_works_like_protos() {
    let server = TestServer::start().await;
    let dir = TempDir::new("grpc-descriptor");
    let route = descriptor_route(&dir, weir_test_grpc::DESCRIPTOR_SET);
    let gw = start(&grpc_config(&server.url(), "", &route)).await;

    let v = json_ok(gw.get("/v1/orders/42?view=full").await).await;
    assert_eq!(v["amountCents"], "9007199254740993");
    assert_eq!(v["createdAt"], "2026-01-02T03:04:05.500Z");
    assert_eq!(v["items"], json!(["a", "b", "full"]));
    let v = json_ok(gw.get("/v1/orders?limit=2").await).await;
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let resp = gw
        .client
        .put(gw.url("/v1/orders/9"))
        .json(&json!({ "customer": "erin" }))
        .send()
        .await
        .unwrap();
    let v = json_ok(resp).await;
    assert_eq!(
        (v["id"].as_str(), v["customer"].as_str()),
        (Some("9"), Some("erin"))
    );
    assert_problem(gw.get("/v1/orders/missing").await, 404, "grpc_not_found").await;
}

// ---------------------------------------------------------------------------------------
// Config problems

/// The problems of a config that must not load, one line each (`weir.yaml:L:C: key: msg`).
fn problems(text: &str) -> Vec<String> {
    match weir_config::load_str(
        "weir.yaml",
        text,
        &MapEnv::default(),
        &weir_config::Overrides::default(),
    ) {
        Ok(_) => panic!("expected problems, but the config loaded:\n{text}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

/// The only problem of `text`, which must be at `weir.yaml:<at>` (`LINE:COL`) and say `says`.
fn one_problem(text: &str, at: &str, says: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "one problem expected: {p:#?}");
    let problem = p.into_iter().next().unwrap();
    assert!(
        problem.starts_with(&format!("weir.yaml:{at}: ")),
        "at {at}: {problem}"
    );
    assert!(problem.contains(says), "should say {says:?}: {problem}");
    problem
}

#[test]
fn a_grpc_route_needs_a_grpc_upstream() {
    // Line numbers matter: keep the text as it is.
    let text = format!(
        "upstreams:
  web: {{ targets: [{{ url: 'http://grpc.invalid' }}] }}
routes:
  - name: rest
    match: {{ prefix: /v1/orders }}
    upstream: web
    grpc:
      protos: [weir/test/v1/orders.proto]
      import_paths: ['{PROTOS_DIR}']
"
    );
    let p = one_problem(&text, "8:7", "protocol: grpc");
    assert!(p.contains("routes[0].grpc"), "{p}");
}

#[test]
fn descriptor_set_and_protos_exclude_each_other() {
    let dir = TempDir::new("grpc-both");
    let file = descriptor_file(&dir, weir_test_grpc::DESCRIPTOR_SET);
    let text = format!(
        "upstreams:
  svc: {{ protocol: grpc, targets: [{{ url: 'http://grpc.invalid' }}] }}
routes:
  - name: rest
    match: {{ prefix: /v1/orders }}
    upstream: svc
    grpc:
      descriptor_set: '{}'
      protos: [weir/test/v1/orders.proto]
      import_paths: ['{PROTOS_DIR}']
",
        file.display()
    );
    one_problem(&text, "8:7", "not both");
}

#[test]
fn a_proto_syntax_error_names_the_file_line_and_column() {
    let dir = TempDir::new("grpc-bad-proto");
    dir.write(
        "bad.proto",
        "syntax = \"proto3\";\npackage bad.v1;\n\nmessage M {\n  string x = 1\n}\n",
    );
    let text = format!(
        "upstreams:
  svc: {{ protocol: grpc, targets: [{{ url: 'http://grpc.invalid' }}] }}
routes:
  - name: rest
    match: {{ prefix: /v1 }}
    upstream: svc
    grpc:
      protos: [bad.proto]
      import_paths: ['{}']
",
        dir.path().display()
    );
    // The missing `;` after `= 1` (line 5) shows at the `}` of line 6, column 1.
    let p = one_problem(&text, "8:15", "bad.proto:6:1: expected ';'");
    assert!(p.contains("routes[0].grpc.protos"), "{p}");

    // A missing proto file is an error at the same place.
    let missing = text.replace("bad.proto", "nowhere.proto");
    one_problem(&missing, "8:15", "nowhere.proto");
}

/// A `FileDescriptorSet` of one service with one method and no `google.api.http` option.
fn plain_descriptor_set() -> Vec<u8> {
    use prost::Message;
    use prost_types::{
        DescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto,
    };
    let file = FileDescriptorProto {
        name: Some("plain/v1/plain.proto".to_owned()),
        package: Some("plain.v1".to_owned()),
        message_type: vec![DescriptorProto {
            name: Some("Empty".to_owned()),
            ..DescriptorProto::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Plain".to_owned()),
            method: vec![MethodDescriptorProto {
                name: Some("Ping".to_owned()),
                input_type: Some(".plain.v1.Empty".to_owned()),
                output_type: Some(".plain.v1.Empty".to_owned()),
                ..MethodDescriptorProto::default()
            }],
            ..ServiceDescriptorProto::default()
        }],
        syntax: Some("proto3".to_owned()),
        ..FileDescriptorProto::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

#[test]
fn a_descriptor_set_without_http_annotations_is_refused() {
    let dir = TempDir::new("grpc-plain");
    let file = dir.path().join("plain.pb");
    std::fs::write(&file, plain_descriptor_set()).unwrap();
    let text = format!(
        "upstreams:
  svc: {{ protocol: grpc, targets: [{{ url: 'http://grpc.invalid' }}] }}
routes:
  - name: rest
    match: {{ prefix: /v1 }}
    upstream: svc
    grpc:
      descriptor_set: '{}'
",
        file.display()
    );
    let p = one_problem(&text, "8:23", "google.api.http");
    assert!(p.contains("routes[0].grpc.descriptor_set"), "{p}");

    // Not a descriptor set at all.
    std::fs::write(&file, b"\xff\xffnot protobuf").unwrap();
    one_problem(&text, "8:23", "not a usable FileDescriptorSet");

    // `grpc` with nothing to transcode and no gRPC-Web has no purpose.
    let empty = "upstreams:
  svc: { protocol: grpc, targets: [{ url: 'http://grpc.invalid' }] }
routes:
  - name: rest
    match: { prefix: /v1 }
    upstream: svc
    grpc: { web: false }
";
    one_problem(empty, "7:11", "web: true");
}

/// A unary call has one answer: an upstream that keeps sending messages (broken or hostile)
/// fails the call at its second message instead of holding the request forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_answered_with_endless_messages_fails_at_the_second() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    // Empty `Order` messages, one every 10 ms, never a status.
                    let frames = futures_util::stream::unfold((), |()| async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Some((
                            Ok::<_, std::convert::Infallible>(Frame::data(
                                bytes::Bytes::from_static(b"\0\0\0\0\0"),
                            )),
                            (),
                        ))
                    });
                    let mut resp = http::Response::new(StreamBody::new(frames));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let gw = start(&grpc_config(&format!("http://{addr}"), "", &rest_route())).await;
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), gw.get("/v1/orders/1"))
        .await
        .expect("answered, not held");
    let body = assert_problem(resp, 502, "bad_gateway").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("more than one message"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    gw.stop().await;
}
