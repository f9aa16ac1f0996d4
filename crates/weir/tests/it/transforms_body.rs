//! JSON body transforms and path-rewrite templates (docs/configuration.md, "JSON body
//! transforms"; `routes[].transform.request.body`, `.response.body`,
//! `.request.path.rewrite.to` with `${path.NAME}`), through the real gateway: what the
//! upstream received and what the client got, byte for byte and with the lengths that
//! frame them; the bodies that are passed on unedited or refused; the route's limit both
//! ways; answers from the cache; the log lines; and every config problem at its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
use tokio::task::JoinHandle;

use crate::common::cache::{Origin, assert_cache, fetch, get, origin_n};
use crate::common::limits::Answer;
use crate::common::{
    Backend, DEADLINE, Fnv, Gateway, MapEnv, Mode, TempDir, assert_problem, config, echo,
    eventually, h2c_client, spawn_weir, start, weir_command,
};

// ---------------------------------------------------------------------------------------
// Config and helpers

/// One upstream `be` on `url`, then `routes` (YAML list items, indented by two).
fn gateway_config(url: &str, routes: &str) -> String {
    format!("upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\nroutes:\n{routes}")
}

/// A route to `be`: `extra` are lines of route keys (each indented by four), `transform`
/// the lines under `transform:` (each indented by six).
fn route(name: &str, matcher: &str, extra: &str, transform: &str) -> String {
    format!(
        "  - name: {name}\n    match: {matcher}\n    upstream: be\n{extra}    transform:\n{transform}"
    )
}

/// `transform.request.body` as one flow line.
fn request_body(body: &str) -> String {
    format!("      request:\n        body: {body}\n")
}

/// `transform.response.body` as one flow line.
fn response_body(body: &str) -> String {
    format!("      response:\n        body: {body}\n")
}

/// A JSON object of exactly `len` bytes: `{"pad":"aaa..."}`, with `head` fields (each
/// `"k":v,` text) first.
fn json_of_len(head: &str, len: usize) -> String {
    let fixed = format!("{{{head}\"pad\":\"\"}}").len();
    assert!(len >= fixed, "{len} is too short for {head}");
    format!("{{{head}\"pad\":\"{}\"}}", "a".repeat(len - fixed))
}

/// The only value of a response header, if present.
fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    let all: Vec<_> = headers.get_all(name).iter().collect();
    assert!(all.len() <= 1, "{name} appears {} times", all.len());
    all.first().map(|v| v.to_str().unwrap())
}

/// Status, headers and the whole body of a response.
async fn read(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Bytes) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("the whole body");
    (status, headers, body)
}

/// The body the upstream got, by the echo backend's `x-echo-body` mode, after a 200.
async fn echoed_body(resp: reqwest::Response) -> Bytes {
    let (status, headers, body) = read(resp).await;
    assert_eq!(
        status,
        200,
        "expected a proxied 200: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        header(&headers, "content-length"),
        Some(body.len().to_string().as_str()),
        "the echo is framed by its length"
    );
    body
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts that the upstream got exactly `expected` (by the echo's length, hash and the
/// framing headers it saw): `Content-Length` of its length, no chunked encoding.
fn assert_upstream_got(v: &Value, expected: &[u8], what: &str) {
    assert_eq!(v["body_len"], expected.len(), "{what}: {v}");
    assert_eq!(v["body_fnv"], Fnv::hex(expected), "{what}: {v}");
    assert_eq!(
        v["headers"]["content-length"],
        json!([expected.len().to_string()]),
        "{what}: the length of the body that was sent: {v}"
    );
    assert!(
        v["headers"]["transfer-encoding"].is_null(),
        "{what}: a body with a length is not chunked: {v}"
    );
}

async fn post(gw: &Gateway, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Value {
    echo(
        gw.client
            .post(gw.url(path))
            .header("content-type", content_type)
            .body(body.into())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn post_echo_body(
    gw: &Gateway,
    path: &str,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Bytes {
    echoed_body(
        gw.client
            .post(gw.url(path))
            .header("content-type", content_type)
            .header("x-echo-body", "1")
            .body(body.into())
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn chunked(parts: &[&[u8]]) -> reqwest::Body {
    let frames: Vec<Result<Bytes, std::io::Error>> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(frames))
}

// ---------------------------------------------------------------------------------------
// An upstream that answers the body the request names

/// An HTTP upstream on `127.0.0.1:0` that answers what each request asks for:
///
/// - `x-reply`: the body (default `{}`);
/// - `x-reply-type`: its `Content-Type` (default `application/json`; `none`: no header);
/// - `x-reply-status`: the status (default 200);
/// - `x-reply-chunked`: the body in three frames and no length (chunked on HTTP/1.1);
/// - `x-reply-header: Name: value` (repeatable): a response header.
///
/// A HEAD gets the same head; hyper leaves the body out.
struct Replier {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ReplyBody = BoxBody<Bytes, Infallible>;

impl Replier {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind replier");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(Self::answer(&req)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn answer(req: &Request<Incoming>) -> Response<ReplyBody> {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let body = Bytes::from(h("x-reply").unwrap_or_else(|| "{}".to_owned()));
        let body: ReplyBody = if req.headers().contains_key("x-reply-chunked") {
            let third = body.len() / 3;
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(body.slice(..third))),
                Ok(Frame::data(body.slice(third..2 * third))),
                Ok(Frame::data(body.slice(2 * third..))),
            ];
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
        } else {
            http_body_util::Full::new(body).boxed()
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = h("x-reply-status")
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let content_type = h("x-reply-type").unwrap_or_else(|| "application/json".to_owned());
        if content_type != "none" {
            resp.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
        }
        for v in req.headers().get_all("x-reply-header") {
            let (n, v) = v.to_str().unwrap().split_once(':').unwrap();
            resp.headers_mut().append(
                http::HeaderName::from_bytes(n.trim().as_bytes()).unwrap(),
                v.trim().parse().unwrap(),
            );
        }
        resp
    }
}

/// `method` `path` on the gateway with extra request headers (the [`Replier`]'s controls).
async fn ask(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = gw.client.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        gw.url(path),
    );
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.send().await.expect("request through weir")
}

// ---------------------------------------------------------------------------------------
// Requests

/// The edits of the first tests: each shows its step and the order of the steps (`remove`,
/// then `rename`, then `set`).
const EDITS: &str = "{ json: { \
    remove: [/internal, /list/0, /absent/deep, /moved_here], \
    rename: { /old: /meta/renamed, /src: /moved_here, /old2: /over, /nothing: /x }, \
    set: { /meta/via: weir, /n: 5, /list/-: 9, /a~1b: true, /obj: { k: [1, null, s] }, /over: set } } }";

const INPUT: &str = r#"{"internal":{"secret":1},"old":"v","src":"new","moved_here":"old","old2":"o2","list":[1,2],"keep":"x","n":1}"#;

fn edited_input() -> Value {
    json!({
        "keep": "x",
        "list": [2, 9],
        "meta": {"renamed": "v", "via": "weir"},
        // Removed first, then the rename wrote it: the renamed value survives.
        "moved_here": "new",
        // Renamed, then set: `set` wins.
        "over": "set",
        "n": 5,
        "a/b": true,
        "obj": {"k": [1, null, "s"]},
    })
}

#[tokio::test]
async fn request_json_is_edited_and_sent_with_its_new_length() {
    let backend = Backend::start("b").await;
    let gw = start(&gateway_config(
        &backend.url(),
        &route(
            "edit",
            "{ prefix: / }",
            "    max_body_bytes: 1KiB\n",
            &request_body(EDITS),
        ),
    ))
    .await;

    // What the upstream got, whole.
    let edited = post_echo_body(&gw, "/e", "application/json", INPUT).await;
    assert_eq!(parse(&edited), edited_input());
    // A pointer that names nothing is left alone: no `absent`, no `x` made up.
    let v = parse(&edited);
    assert!(v.get("absent").is_none() && v.get("x").is_none(), "{v}");

    // The length the upstream was told is the new body's.
    let v = post(&gw, "/e", "application/json", INPUT).await;
    assert_upstream_got(&v, &edited, "Content-Length body");

    // A chunked request body is read whole and sent with its length.
    let v = echo(
        gw.client
            .post(gw.url("/e"))
            .header("content-type", "application/json")
            .body(chunked(&[&INPUT.as_bytes()[..10], &INPUT.as_bytes()[10..]]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_upstream_got(&v, &edited, "chunked body");

    // Any `+json` type, with parameters, in any case.
    for ct in [
        "application/vnd.api+json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        let v = post(&gw, "/e", ct, INPUT).await;
        assert_upstream_got(&v, &edited, ct);
    }

    // The same over HTTP/2.
    let v = echo(
        h2c_client()
            .post(gw.url("/e"))
            .header("content-type", "application/json")
            .body(INPUT)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_upstream_got(&v, &edited, "HTTP/2 client");

    // `set` creates the objects on its way, in an empty object too.
    let body = post_echo_body(&gw, "/e", "application/json", "{}").await;
    // No `list`: like any missing place it is created as an object, where `-` is a name
    // (it appends only in an array).
    assert_eq!(
        parse(&body),
        json!({"meta": {"via": "weir"}, "n": 5, "list": {"-": 9}, "a/b": true, "obj": {"k": [1, null, "s"]}, "over": "set"}),
    );

    // A document that is not an object: nothing names a place in it.
    let body = post_echo_body(&gw, "/e", "application/json", "[1, 2]").await;
    assert_eq!(parse(&body), json!([1, 2]));

    // No body at all: nothing to edit, forwarded as it is.
    let v = post(&gw, "/e", "application/json", "").await;
    assert_eq!(v["body_len"], 0, "{v}");
    assert_eq!(backend.hits(), 10);
    gw.stop().await;
}

#[tokio::test]
async fn an_edited_body_is_replayed_by_a_retry() {
    let failing = Backend::with_mode("failing", Mode::Status(503)).await;
    let ok = Backend::start("ok").await;
    let gw = start(&format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{a}\" }}, {{ url: \"{b}\" }}]\n    \
         retry: {{ attempts: 2, backoff: {{ initial: 0s }}, on: [\"503\"], idempotent_only: false }}\n\
         routes:\n{route}",
        a = failing.url(),
        b = ok.url(),
        route = route(
            "r",
            "{ prefix: / }",
            "",
            &request_body("{ json: { set: { /via: weir } } }")
        ),
    ))
    .await;
    let edited = serde_json::to_vec(&json!({"a": 1, "via": "weir"})).unwrap();
    // Round robin: among four requests, some try the failing target first and are retried.
    for i in 0..4 {
        let v = post(&gw, "/r", "application/json", r#"{"a":1}"#).await;
        assert_eq!(v["backend"], "ok", "request {i}: {v}");
        assert_upstream_got(&v, &edited, &format!("request {i}"));
    }
    assert!(failing.hits() >= 1, "no request was retried");
    assert_eq!(ok.hits(), 4);
    gw.stop().await;
}

/// Routes `/lax` and `/strict` (the same edit, `strict: true` on the second), 1 KiB limit.
fn lax_and_strict(url: &str) -> String {
    let edit = "json: { remove: [/internal], set: { /via: weir } }";
    gateway_config(
        url,
        &format!(
            "{}{}",
            route(
                "lax",
                "{ prefix: /lax }",
                "    max_body_bytes: 1KiB\n",
                &request_body(&format!("{{ {edit} }}")),
            ),
            route(
                "strict",
                "{ prefix: /strict }",
                "    max_body_bytes: 1KiB\n",
                &request_body(&format!("{{ {edit}, strict: true }}")),
            )
        ),
    )
}

#[tokio::test]
async fn malformed_request_json_is_forwarded_untouched_or_refused_when_strict() {
    let backend = Backend::start("b").await;
    let gw = start(&lax_and_strict(&backend.url())).await;
    let malformed = r#"{"internal": 1, "a": "#;

    // Not strict: the exact bytes, with their own length.
    let body = post_echo_body(&gw, "/lax", "application/json", malformed).await;
    assert_eq!(&body[..], malformed.as_bytes());
    let v = post(&gw, "/lax", "application/json", malformed).await;
    assert_upstream_got(&v, malformed.as_bytes(), "malformed, lax");
    // Valid JSON then trailing garbage is malformed too.
    let trailing = r#"{"internal":1} {"#;
    let body = post_echo_body(&gw, "/lax", "application/json", trailing).await;
    assert_eq!(&body[..], trailing.as_bytes());

    // Strict: 400, and nothing reaches the upstream.
    let before = backend.hits();
    for bad in [malformed, trailing, "not json at all"] {
        let resp = gw
            .client
            .post(gw.url("/strict"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_problem(resp, 400, "bad_request").await;
    }
    assert_eq!(backend.hits(), before, "a refused body was forwarded");

    // The strict route edits what is JSON ...
    let body = post_echo_body(
        &gw,
        "/strict",
        "application/json",
        r#"{"internal":1,"k":2}"#,
    )
    .await;
    assert_eq!(parse(&body), json!({"k": 2, "via": "weir"}));
    // ... and forwards an empty body as it is (no body is not a malformed one).
    let v = post(&gw, "/strict", "application/json", "").await;
    assert_eq!(v["body_len"], 0, "{v}");
    let v = echo(gw.get("/strict/get").await).await;
    assert_eq!(v["body_len"], 0, "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn non_json_and_compressed_request_bodies_are_untouched_or_refused_when_strict() {
    let backend = Backend::start("b").await;
    let gw = start(&lax_and_strict(&backend.url())).await;
    // JSON text, but not by its type: the type decides.
    let text = r#"{"internal":1,"k":2}"#;
    for ct in [
        "text/plain",
        "application/jsonx",
        "text/json",
        "application/x-www-form-urlencoded",
    ] {
        let body = post_echo_body(&gw, "/lax", ct, text).await;
        assert_eq!(&body[..], text.as_bytes(), "{ct}");
    }
    // No Content-Type at all.
    let body = echoed_body(
        gw.client
            .post(gw.url("/lax"))
            .header("x-echo-body", "1")
            .body(text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(&body[..], text.as_bytes(), "no Content-Type");

    // A compressed JSON body: arbitrary bytes (here not even UTF-8), never inflated.
    let gzipped: &[u8] =
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xfe\xff\x00{\"internal\":1}";
    for encoding in ["gzip", "br", "GZIP"] {
        let resp = gw
            .client
            .post(gw.url("/lax"))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .header("x-echo-body", "1")
            .body(gzipped.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(&echoed_body(resp).await[..], gzipped, "{encoding}");
    }
    // `identity` is no compression: edited.
    let resp = gw
        .client
        .post(gw.url("/lax"))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .header("x-echo-body", "1")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(
        parse(&echoed_body(resp).await),
        json!({"k": 2, "via": "weir"})
    );

    // Strict: each of them is refused, and nothing is forwarded.
    let before = backend.hits();
    let resp = gw
        .client
        .post(gw.url("/strict"))
        .header("content-type", "text/plain")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "bad_request").await;
    let resp = gw
        .client
        .post(gw.url("/strict"))
        .body(text)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "bad_request").await;
    let resp = gw
        .client
        .post(gw.url("/strict"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzipped.to_vec())
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "bad_request").await;
    assert_eq!(backend.hits(), before, "a refused body was forwarded");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_limit_is_refused_and_never_forwarded() {
    let backend = Backend::start("b").await;
    let gw = start(&lax_and_strict(&backend.url())).await;

    // Exactly the limit: edited and forwarded.
    let at_limit = json_of_len("\"internal\":1,", 1024);
    let body = post_echo_body(&gw, "/lax", "application/json", at_limit.as_str()).await;
    let v = parse(&body);
    assert!(
        v.get("internal").is_none() && v["via"] == "weir",
        "edited at the limit"
    );
    assert_eq!(backend.hits(), 1);

    for path in ["/lax", "/strict"] {
        // One byte over, announced by Content-Length.
        let over = json_of_len("\"internal\":1,", 1025);
        let resp = gw
            .client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .body(over.clone())
            .send()
            .await
            .unwrap();
        assert_problem(resp, 413, "payload_too_large").await;

        // Over, chunked: no length to refuse up front; read up to the limit, then refused.
        let resp = gw
            .client
            .post(gw.url(path))
            .header("content-type", "application/json")
            .body(chunked(&[&over.as_bytes()[..600], &over.as_bytes()[600..]]))
            .send()
            .await
            .expect("a 413 answer, not a failed exchange");
        assert_problem(resp, 413, "payload_too_large").await;
    }
    assert_eq!(backend.hits(), 1, "a refused body reached the upstream");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Responses

/// Routes `/lax` and `/strict` (with `strict: true`) editing responses, 1 KiB limit.
fn response_routes(url: &str) -> String {
    let edit = "json: { remove: [/password], set: { /via: weir } }";
    gateway_config(
        url,
        &format!(
            "{}{}",
            route(
                "lax",
                "{ prefix: /lax }",
                "    max_body_bytes: 1KiB\n",
                &response_body(&format!("{{ {edit} }}")),
            ),
            route(
                "strict",
                "{ prefix: /strict }",
                "    max_body_bytes: 1KiB\n",
                &response_body(&format!("{{ {edit}, strict: true }}")),
            )
        ),
    )
}

const SECRET: &str = r#"{"user":"a","password":"x"}"#;

#[tokio::test]
async fn response_json_is_edited_with_its_new_length_and_no_strong_etag() {
    let up = Replier::start().await;
    let gw = start(&response_routes(&up.url())).await;
    let expected = json!({"user": "a", "via": "weir"});

    for path in ["/lax", "/strict"] {
        // A strong validator named the upstream's bytes: dropped.
        let (status, h, body) = read(
            ask(
                &gw,
                "GET",
                path,
                &[("x-reply", SECRET), ("x-reply-header", "ETag: \"v1\"")],
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(parse(&body), expected, "{path}");
        assert_eq!(
            header(&h, "content-length"),
            Some(body.len().to_string().as_str()),
            "{path}"
        );
        assert_eq!(header(&h, "etag"), None, "{path}: a strong ETag is dropped");
        assert_eq!(
            header(&h, "content-type"),
            Some("application/json"),
            "{path}"
        );

        // A weak one still holds.
        let (_, h, body) = read(
            ask(
                &gw,
                "GET",
                path,
                &[("x-reply", SECRET), ("x-reply-header", "ETag: W/\"v1\"")],
            )
            .await,
        )
        .await;
        assert_eq!(parse(&body), expected, "{path}");
        assert_eq!(header(&h, "etag"), Some("W/\"v1\""), "{path}");
    }

    // A chunked JSON response is read whole and sent with its length.
    let (status, h, body) = read(
        ask(
            &gw,
            "GET",
            "/lax",
            &[("x-reply", SECRET), ("x-reply-chunked", "1")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body), expected);
    assert_eq!(
        header(&h, "content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(header(&h, "transfer-encoding"), None);

    // Any +json type, and an error status: still the upstream's answer, edited.
    let (status, h, body) = read(
        ask(
            &gw,
            "GET",
            "/lax",
            &[
                ("x-reply", SECRET),
                ("x-reply-type", "application/problem+json"),
                ("x-reply-status", "404"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(parse(&body), expected);
    assert_eq!(
        header(&h, "content-length"),
        Some(body.len().to_string().as_str())
    );

    // Not JSON by its type: untouched, its strong ETag kept.
    for path in ["/lax", "/strict"] {
        let (_, h, body) = read(
            ask(
                &gw,
                "GET",
                path,
                &[
                    ("x-reply", SECRET),
                    ("x-reply-type", "text/plain"),
                    ("x-reply-header", "ETag: \"v1\""),
                ],
            )
            .await,
        )
        .await;
        assert_eq!(&body[..], SECRET.as_bytes(), "{path}");
        assert_eq!(header(&h, "etag"), Some("\"v1\""), "{path}");
    }

    // Compressed: untouched, never inflated (reqwest here inflates nothing either).
    let (status, h, body) = read(
        ask(
            &gw,
            "GET",
            "/strict",
            &[
                ("x-reply", SECRET),
                ("x-reply-header", "Content-Encoding: gzip"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], SECRET.as_bytes());
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    gw.stop().await;
}

#[tokio::test]
async fn a_response_over_the_limit_passes_unedited_and_complete() {
    let up = Replier::start().await;
    let gw = start(&response_routes(&up.url())).await;

    // Exactly the limit: edited.
    let at_limit = json_of_len("\"password\":\"x\",", 1024);
    let (_, _, body) = read(ask(&gw, "GET", "/lax", &[("x-reply", &at_limit)]).await).await;
    let v = parse(&body);
    assert!(
        v.get("password").is_none() && v["via"] == "weir",
        "edited at the limit"
    );

    // Over it: as the upstream sent it, whole, with its length or chunked; strict or not
    // (it was not read, so it is not refused).
    let big = json_of_len("\"password\":\"x\",", 3000);
    for path in ["/lax", "/strict"] {
        for chunks in [false, true] {
            let mut headers = vec![
                ("x-reply", big.as_str()),
                ("x-reply-header", "ETag: \"big\""),
            ];
            if chunks {
                headers.push(("x-reply-chunked", "1"));
            }
            let (status, h, body) = read(ask(&gw, "GET", path, &headers).await).await;
            let what = format!("{path}, chunked: {chunks}");
            assert_eq!(status, 200, "{what}");
            assert_eq!(body.len(), big.len(), "{what}: complete");
            assert_eq!(&body[..], big.as_bytes(), "{what}: unedited");
            assert_eq!(
                header(&h, "etag"),
                Some("\"big\""),
                "{what}: its validator holds"
            );
            if !chunks {
                assert_eq!(header(&h, "content-length"), Some("3000"), "{what}");
            }
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn malformed_response_json_passes_unedited_or_is_a_502_when_strict() {
    let up = Replier::start().await;
    let gw = start(&response_routes(&up.url())).await;
    let malformed = r#"{"password":"x","#;

    for chunks in [false, true] {
        let mut headers = vec![("x-reply", malformed)];
        if chunks {
            headers.push(("x-reply-chunked", "1"));
        }
        let (status, h, body) = read(ask(&gw, "GET", "/lax", &headers).await).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], malformed.as_bytes(), "chunked: {chunks}");
        if !chunks {
            assert_eq!(
                header(&h, "content-length"),
                Some(malformed.len().to_string().as_str())
            );
        }
        let resp = ask(&gw, "GET", "/strict", &headers).await;
        let problem = assert_problem(resp, 502, "bad_gateway").await;
        assert!(
            !problem.to_string().contains("password"),
            "the upstream's body is not shown: {problem}"
        );
    }
    // An empty JSON response body is not JSON either.
    let resp = ask(&gw, "GET", "/strict", &[("x-reply", "")]).await;
    assert_problem(resp, 502, "bad_gateway").await;
    gw.stop().await;
}

/// Bodiless answers on a strict response route: a HEAD, a 304 and a 204 carry no body to
/// edit, so there is nothing malformed to refuse.
#[tokio::test]

async fn bodiless_answers_on_a_strict_response_route_are_not_refused() {
    let up = Replier::start().await;
    let gw = start(&response_routes(&up.url())).await;
    let mut wrong = Vec::new();
    for (method, status) in [("HEAD", "200"), ("GET", "304"), ("GET", "204")] {
        let resp = ask(
            &gw,
            method,
            "/strict",
            &[("x-reply", SECRET), ("x-reply-status", status)],
        )
        .await;
        if resp.status().as_str() != status {
            wrong.push(format!(
                "{method} answered {status} upstream: the client got {}",
                resp.status()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    gw.stop().await;
}

/// A HEAD announces what a GET would send (RFC 9110 §8.6, §9.3.2): not the upstream's
/// length nor its strong validator, once the GET's body is edited.
#[tokio::test]

async fn a_head_answer_does_not_announce_the_unedited_length_or_strong_etag() {
    let up = Replier::start().await;
    let gw = start(&response_routes(&up.url())).await;
    let headers = [("x-reply", SECRET), ("x-reply-header", "ETag: \"v1\"")];
    let (_, get_h, get_body) = read(ask(&gw, "GET", "/lax", &headers).await).await;
    assert_eq!(parse(&get_body), json!({"user": "a", "via": "weir"}));
    let head = ask(&gw, "HEAD", "/lax", &headers).await;
    assert_eq!(head.status(), 200);
    let head_h = head.headers().clone();
    let mut wrong = Vec::new();
    let length = header(&head_h, "content-length");
    if length.is_some() && length != header(&get_h, "content-length") {
        wrong.push(format!(
            "HEAD says {length:?} bytes, GET sends {}",
            get_body.len()
        ));
    }
    if let Some(etag) = header(&head_h, "etag") {
        wrong.push(format!("HEAD has the strong ETag {etag} that GET drops"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Cache

fn cached_route(origin: &Origin, strict: bool) -> String {
    gateway_config(
        &origin.url(),
        &route(
            "c",
            "{ prefix: / }",
            "    cache: { ttl: 60s }\n",
            &response_body(&format!(
                "{{ json: {{ remove: [/headers], set: {{ /edited: true }} }}, strict: {strict} }}"
            )),
        ),
    )
}

/// Asserts an origin echo was edited, and framed by its new length.
fn assert_edited_echo(a: &Answer, what: &str) -> Value {
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", a.body));
    assert!(v.get("headers").is_none(), "{what}: removed: {v}");
    assert_eq!(v["edited"], true, "{what}: {v}");
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str()),
        "{what}"
    );
    v
}

#[tokio::test]
async fn cached_answers_are_edited_on_every_answer() {
    let origin = Origin::start().await;
    let gw = start(&cached_route(&origin, false)).await;

    let miss = get(&gw, "/c", &[("x-respond-header", "ETag: \"e1\"")]).await;
    assert_cache(&miss, "MISS", "first");
    let hit = get(&gw, "/c", &[]).await;
    assert_cache(&hit, "HIT", "second");
    let third = get(&gw, "/c", &[]).await;
    assert_cache(&third, "HIT", "third");
    assert_eq!(origin.hits(), 1);
    for (what, a) in [("MISS", &miss), ("HIT", &hit), ("HIT again", &third)] {
        assert_edited_echo(a, what);
        assert_eq!(a.header("etag"), None, "{what}: a strong ETag is dropped");
    }
    // The same stored answer each time, edited once each (not edited twice: no stored edit).
    assert_eq!(origin_n(&hit), origin_n(&miss));
    assert_eq!(hit.body, miss.body);

    // A weak validator is kept, on the way in and out of the cache.
    let miss = get(&gw, "/w", &[("x-respond-header", "ETag: W/\"e2\"")]).await;
    assert_cache(&miss, "MISS", "weak first");
    let hit = get(&gw, "/w", &[]).await;
    assert_cache(&hit, "HIT", "weak second");
    for (what, a) in [("MISS", &miss), ("HIT", &hit)] {
        assert_edited_echo(a, what);
        assert_eq!(a.header("etag"), Some("W/\"e2\""), "{what}");
    }
    gw.stop().await;
}

/// A HEAD answered from a stored GET announces the length the GET is sent with.
#[tokio::test]

async fn a_head_from_the_cache_announces_the_edited_length() {
    let origin = Origin::start().await;
    let gw = start(&cached_route(&origin, false)).await;
    let miss = get(&gw, "/h", &[("x-respond-header", "ETag: \"e1\"")]).await;
    assert_cache(&miss, "MISS", "GET");
    assert_edited_echo(&miss, "GET");
    let head = fetch(&gw, "HEAD", "/h", &[]).await;
    assert_cache(&head, "HIT", "HEAD");
    assert_eq!(origin.hits(), 1);
    let mut wrong = Vec::new();
    if head.header("content-length") != miss.header("content-length") {
        wrong.push(format!(
            "HEAD says {:?} bytes, GET sends {:?}",
            head.header("content-length"),
            miss.header("content-length")
        ));
    }
    if let Some(etag) = head.header("etag") {
        wrong.push(format!("HEAD has the strong ETag {etag} that GET drops"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    gw.stop().await;
}

/// `strict: true` refuses a malformed JSON response from the cache as from the upstream.
#[tokio::test]

async fn a_malformed_cached_response_on_a_strict_route_is_a_502() {
    let origin = Origin::start().await;
    let gw = start(&cached_route(&origin, true)).await;
    // 10 bytes `a`, said to be JSON.
    let controls = [
        ("x-body-bytes", "10"),
        ("x-respond-header", "Content-Type: application/json"),
    ];
    let miss = fetch(&gw, "GET", "/m", &controls).await;
    let again = fetch(&gw, "GET", "/m", &controls).await;
    for (what, a) in [("first", &miss), ("second", &again)] {
        assert_eq!(
            a.status,
            502,
            "{what}: X-Cache {:?}, body {:?}",
            a.header("x-cache"),
            a.body
        );
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Path rewrite with `${path.NAME}`

#[tokio::test]
async fn rewrite_uses_path_parameters_and_captures() {
    let backend = Backend::start("b").await;
    let routes = format!(
        "{}{}",
        route(
            "users",
            "{ path: \"/{tenant}/users/{id}\" }",
            "",
            "      request:\n        path: { rewrite: { regex: '^/([^/]+)/users/(\\d+)$', \
             to: '/t/${path.tenant}/u/$2' } }\n",
        ),
        route(
            "named",
            "{ path: \"/n/{tenant}/{rest}\" }",
            "",
            "      request:\n        path:\n          strip_prefix: /n\n          \
             rewrite: { regex: '^/[^/]+/(?<tail>.*)$', to: '/${path.rest}-${path.tenant}/$tail' }\n          \
             add_prefix: /api\n",
        ),
    );
    let gw = start(&gateway_config(&backend.url(), &routes)).await;

    let v = echo(gw.get("/acme/users/42").await).await;
    assert_eq!(v["path"], "/t/acme/u/42", "{v}");
    let v = echo(gw.get("/acme/users/42?x=1&y").await).await;
    assert_eq!(v["path"], "/t/acme/u/42?x=1&y", "the query is kept: {v}");
    // A `$` in a parameter is text, not a capture reference.
    let v = echo(gw.get("/a$1b/users/7").await).await;
    assert_eq!(v["path"], "/t/a$1b/u/7", "{v}");
    // The regex does not match: the path goes on as it is.
    let v = echo(gw.get("/acme/users/abc").await).await;
    assert_eq!(v["path"], "/acme/users/abc", "{v}");

    // Parameters are the route's (read from the client's path), captures from the path
    // after `strip_prefix`; `add_prefix` comes last.
    let v = echo(gw.get("/n/acme/items").await).await;
    assert_eq!(v["path"], "/api/items-acme/items", "{v}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------
// Config problems

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

/// Line numbers matter here: keep the text as it is.
const BAD: &str = r"upstreams:
  be: { targets: [{ url: 'http://be.invalid' }] }
routes:
  - name: r
    match: { path: '/users/{id}' }
    upstream: be
    transform:
      request:
        path: { rewrite: { regex: '^/users/(\d+)$', to: '/t/${path.tenant}/u/$1' } }
        body: { json: { remove: [internal, /ok], set: { /a~2b: 1 }, rename: { /a: /a/b } } }
      response:
        body: {}
  - name: s
    match: { prefix: /s }
    upstream: be
    transform:
      request:
        path: { rewrite: { regex: '^/s', to: '/${path.id}' } }
        body: { json: {}, strict: true }
      response:
        body: { json: { remove: [/ok], rename: { /x: /x, b: /c } } }
";

#[test]
fn every_body_and_rewrite_problem_at_its_place() {
    let p = problems(BAD);
    for line in &p {
        assert!(line.starts_with("weir.yaml:"), "{line}");
    }
    let find = |key: &str| -> Vec<&String> {
        p.iter()
            .filter(|l| {
                l.split_once(": ")
                    .is_some_and(|(_, rest)| rest.starts_with(&format!("{key}: ")))
            })
            .collect()
    };
    let one = |key: &str, at: &str, says: &str| {
        let found = find(key);
        assert_eq!(
            found.len(),
            1,
            "one problem at {key}, got {found:?} among:\n{p:#?}"
        );
        let (place, _) = found[0].split_once(": ").unwrap();
        assert_eq!(place, format!("weir.yaml:{at}"), "{}", found[0]);
        assert!(
            found[0].contains(says),
            "{key} should say {says:?}: {}",
            found[0]
        );
    };
    one(
        "routes[0].transform.request.path.rewrite.to",
        "9:57",
        "`${path.tenant}` is not a parameter of the route's path",
    );
    one(
        "routes[0].transform.request.body.json.remove[0]",
        "10:34",
        "\"internal\" is not a JSON Pointer",
    );
    one(
        "routes[0].transform.request.body.json.set./a~2b",
        "10:64",
        "`~0` (a ~) or `~1` (a /)",
    );
    one(
        "routes[0].transform.request.body.json.rename./a",
        "10:83",
        "inside itself",
    );
    one("routes[0].transform.response.body", "12:15", "under `json`");
    one(
        "routes[1].transform.request.path.rewrite.to",
        "18:46",
        "`${path.id}` is not a parameter of the route's path",
    );
    one(
        "routes[1].transform.request.body.json",
        "19:23",
        "at least one of set, remove, rename",
    );
    one(
        "routes[1].transform.response.body.json.rename./x",
        "21:54",
        "inside itself",
    );
    one(
        "routes[1].transform.response.body.json.rename.b",
        "21:61",
        "\"b\" is not a JSON Pointer",
    );
    assert_eq!(p.len(), 9, "nothing else: {p:#?}");
}

#[test]
fn weir_validate_prints_a_body_problem_with_its_location() {
    let dir = TempDir::new("body-validate");
    dir.write(
        "weir.yaml",
        "upstreams:\n  be: { targets: [{ url: 'http://be.invalid' }] }\nroutes:\n  \
         - name: r\n    match: { prefix: / }\n    upstream: be\n    transform:\n      \
         request:\n        body: { json: { remove: [internal] } }\n",
    );
    let out = weir_command()
        .current_dir(dir.path())
        .args(["validate", "-c", "weir.yaml"])
        .output()
        .expect("run weir");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.lines().any(|l| l.starts_with(
            "weir.yaml:9:34: routes[0].transform.request.body.json.remove[0]: \"internal\" is not a JSON Pointer"
        )),
        "{all}"
    );
}

// ---------------------------------------------------------------------------------------
// Log lines

/// The JSON log lines of `stderr` whose `message` is `message`.
fn logged(stderr: &str, message: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_passed_on_unedited_are_logged() {
    let backend = Backend::start("b").await;
    let up = Replier::start().await;
    let dir = TempDir::new("body-log");
    let text = config(&format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{b}\" }}]\n  \
         replier:\n    targets: [{{ url: \"{r}\" }}]\nroutes:\n{req}{resp}",
        b = backend.url(),
        r = up.url(),
        req = route(
            "in",
            "{ prefix: /in }",
            "",
            &request_body("{ json: { set: { /via: weir } } }")
        ),
        resp = route(
            "out",
            "{ prefix: /out }",
            "",
            &response_body("{ json: { remove: [/password] } }")
        )
        .replace("upstream: be", "upstream: replier"),
    ));
    let path = dir.write("weir.yaml", &text);
    let w = spawn_weir(&["run", "-c", path.to_str().unwrap()], &[]);
    let client = crate::common::client();

    // Edited: nothing to say.
    let resp = client
        .post(w.url("/in"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(w.url("/out"))
        .header("x-reply", SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), r#"{"user":"a"}"#);

    // Passed on unedited: one line each, naming the route and why.
    let resp = client
        .post(w.url("/in"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(w.url("/out"))
        .header("x-reply", "{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "{oops");
    let w_ref = &w;
    eventually("both log lines", DEADLINE, || async move {
        let s = w_ref.stderr();
        !logged(&s, "request body passed on unedited").is_empty()
            && !logged(&s, "response body passed on unedited").is_empty()
    })
    .await;
    let stderr = w.stderr();
    for (message, route) in [
        ("request body passed on unedited", "in"),
        ("response body passed on unedited", "out"),
    ] {
        let lines = logged(&stderr, message);
        assert_eq!(
            lines.len(),
            1,
            "{message}: only the malformed body:\n{stderr}"
        );
        let line = &lines[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["route"], route, "{line}");
        assert!(
            line["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not valid JSON")),
            "{line}"
        );
    }
    assert_eq!(backend.hits(), 2);
    assert_eq!(up.hits(), 2);
}
