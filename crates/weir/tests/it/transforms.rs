//! Header and query transforms (docs/configuration.md, "Header and query transforms";
//! `routes[].transform.request.headers`, `.request.query`, `.response.headers`), through the
//! real gateway: what the upstream received and what the client got, the template
//! variables, why a template cannot split a message, weir's own errors left alone, and the
//! rules a cacheable request follows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::cache::{Origin, assert_cache, fetch, get, origin_n, origin_saw};
use crate::common::{
    Backend, RawResponse, assert_problem, dead_addr, echo, echoed_header, h2c_client, raw_request,
    read_response, start,
};

const ACME_KEY: &str = "transform-key-acme-5b1c7e";

/// One upstream `be` on `url` and one catch-all route `r` with `transform: <transform>` (YAML
/// lines, indented under the route).
fn one_route(url: &str, matcher: &str, transform: &str) -> String {
    format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n  - name: r\n    match: {matcher}\n    upstream: be\n    \
         transform:\n{transform}"
    )
}

/// Every value of request header `name` the echo backend saw, in order (empty: none).
fn echoed_all(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// Every value of response header `name`, in order.
fn all_values(headers: &reqwest::header::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The response's `X-Request-Id`, which every answer carries.
fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("X-Request-Id on the response")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn request_headers_are_removed_then_set_then_added_replacing_and_appending() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      request:\n        headers:\n          \
         remove: [Cookie, X-Both, X-Forwarded-For]\n          \
         set: { X-Env: prod, X-Both: set, X-Fresh: new }\n          \
         add: { X-Multi: gateway, X-Both: added }\n",
    ))
    .await;

    let resp = gw
        .client
        .get(gw.url("/a?x=1"))
        .header("cookie", "session=secret")
        .header("x-env", "client")
        .header("x-multi", "client")
        .header("x-both", "client")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = echo(resp).await;
    assert_eq!(
        echoed_all(&v, "cookie"),
        Vec::<String>::new(),
        "removed: {v}"
    );
    assert_eq!(
        echoed_all(&v, "x-env"),
        ["prod"],
        "set replaces the client's value: {v}"
    );
    assert_eq!(
        echoed_all(&v, "x-fresh"),
        ["new"],
        "set adds a header the client did not send: {v}"
    );
    assert_eq!(
        echoed_all(&v, "x-multi"),
        ["client", "gateway"],
        "add appends after the client's value: {v}"
    );
    // remove, then set, then add: the client's X-Both is gone, `set` writes it, `add` follows.
    assert_eq!(echoed_all(&v, "x-both"), ["set", "added"], "{v}");
    // weir's own headers are set before the transform, so a route can remove them.
    assert_eq!(
        echoed_all(&v, "x-forwarded-for"),
        Vec::<String>::new(),
        "{v}"
    );
    assert_eq!(echoed_header(&v, "x-other"), Some("kept"), "{v}");
    assert_eq!(v["path"], "/a?x=1", "the query is not touched: {v}");

    // The same over HTTP/2 (h2c): the transform does not depend on the client's protocol.
    let v = echo(
        h2c_client()
            .get(gw.url("/a"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-env", "client")
            .header("x-both", "client")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echoed_all(&v, "cookie"), Vec::<String>::new(), "{v}");
    assert_eq!(echoed_all(&v, "x-env"), ["prod"], "{v}");
    assert_eq!(echoed_all(&v, "x-both"), ["set", "added"], "{v}");

    // Without any of the client's headers: set and add still write theirs.
    let v = echo(gw.get("/b").await).await;
    assert_eq!(echoed_all(&v, "x-env"), ["prod"], "{v}");
    assert_eq!(echoed_all(&v, "x-multi"), ["gateway"], "{v}");
    assert_eq!(echoed_all(&v, "x-both"), ["set", "added"], "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn template_variables_render_the_consumer_request_id_ip_path_and_headers() {
    let backend = Backend::start("b").await;
    let gw = start(&format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key }}
        consumers:
          - name: acme
            api_keys: ["{ACME_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: items
            match: {{ path: "/items/{{id}}" }}
            upstream: be
            auth: {{ providers: [keys] }}
            transform:
              request:
                headers:
                  set:
                    X-Tenant-Name: "${{consumer.name}}"
                    X-Trace: "req-${{request.id}}"
                    X-Client-Ip: "${{request.ip}}"
                    X-Item: "item-${{path.id}}"
                    X-Copied: "${{header.X-Tenant}}"
                    X-Price: "$$5 or $ 6"
                    X-Literal: "$$${{request.id}}"
                    X-Escaped-Once: "$${{request.id}}"
              response:
                headers:
                  set: {{ X-Served-For: "${{consumer.name}}@${{request.ip}}" }}
          - name: open
            match: {{ path: "/open/{{id}}" }}
            upstream: be
            transform:
              request:
                headers:
                  set: {{ X-Tenant-Name: "${{consumer.name}}", X-Item: "${{path.id}}" }}
        "#,
        url = backend.url()
    ))
    .await;

    let resp = gw
        .client
        .get(gw.url("/items/42"))
        .header("x-api-key", ACME_KEY)
        .header("x-tenant", "t-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(resp.headers());
    assert_eq!(
        all_values(resp.headers(), "x-served-for"),
        ["acme@127.0.0.1"],
        "response templates: consumer and client address"
    );
    let v = echo(resp).await;
    assert_eq!(echoed_header(&v, "x-tenant-name"), Some("acme"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-trace"),
        Some(format!("req-{id}").as_str()),
        "${{request.id}} is the X-Request-Id the client got back: {v}"
    );
    assert_eq!(echoed_header(&v, "x-request-id"), Some(id.as_str()), "{v}");
    assert_eq!(echoed_header(&v, "x-client-ip"), Some("127.0.0.1"), "{v}");
    assert_eq!(echoed_header(&v, "x-item"), Some("item-42"), "{v}");
    assert_eq!(echoed_header(&v, "x-copied"), Some("t-1"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-tenant"),
        Some("t-1"),
        "the source is kept: {v}"
    );
    // `$$` is a literal `$`; a `$` before anything else is itself.
    assert_eq!(echoed_header(&v, "x-price"), Some("$5 or $ 6"), "{v}");
    // Two layers read `$`, in turn: when the file is read, `$${` becomes `${` (and `$$`
    // before anything else stays); then the transform reads `$$` as `$`. So the file's
    // `$$${request.id}` is the text `${request.id}`, while `$${request.id}` (escaped for
    // the environment step only) is the variable again.
    assert_eq!(echoed_header(&v, "x-literal"), Some("${request.id}"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-escaped-once"),
        Some(id.as_str()),
        "{v}"
    );
    // The API key itself never reaches the upstream.
    assert_eq!(echoed_header(&v, "x-api-key"), None, "{v}");

    // A client-chosen, well-formed request id is the one the template renders.
    let resp = gw
        .client
        .get(gw.url("/items/7"))
        .header("x-api-key", ACME_KEY)
        .header("x-request-id", "client-chosen-id-123")
        .header("x-tenant", "a")
        .header("x-tenant", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(request_id(resp.headers()), "client-chosen-id-123");
    let v = echo(resp).await;
    assert_eq!(
        echoed_header(&v, "x-trace"),
        Some("req-client-chosen-id-123"),
        "{v}"
    );
    assert_eq!(
        echoed_header(&v, "x-copied"),
        Some("a, b"),
        "a repeated header's values joined with `, `: {v}"
    );

    // The header named by `${header.X-Tenant}` absent: an empty value, still sent.
    let v = echo(
        gw.client
            .get(gw.url("/items/8"))
            .header("x-api-key", ACME_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echoed_header(&v, "x-copied"), Some(""), "{v}");
    assert_eq!(echoed_header(&v, "x-item"), Some("item-8"), "{v}");

    // No consumer on a route without auth: `${consumer.name}` is empty.
    let v = echo(gw.get("/open/abc").await).await;
    assert_eq!(echoed_header(&v, "x-tenant-name"), Some(""), "{v}");
    assert_eq!(echoed_header(&v, "x-item"), Some("abc"), "{v}");
    gw.stop().await;
}

/// Sends `request` as raw bytes on a new connection and reads one response (`None`: the
/// connection closed without one).
async fn raw_bytes(addr: std::net::SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf).await
}

/// A template can never split a message. The only request-controlled inputs of a template
/// are `${path.NAME}` and `${header.NAME}` (a response template cannot name either: the
/// config refuses it), so this tries both with CR/LF and other bytes a header line cannot
/// hold:
///
/// - a path parameter is a segment of the normalized path, where only unreserved bytes are
///   ever decoded: `%0D%0A` stays those six characters, plain text in the header;
/// - a header value comes from a request head hyper parsed: a bare CR, an obs-fold
///   continuation, a DEL or a NUL in a value are refused at the edge (400, nothing
///   forwarded); a bare LF ends the line, so what follows is the client's own next header
///   (forwarded like any header it sends) and the copied value stops before it; obs-text
///   and HTAB are legal in a value and are copied as they are.
///
/// What it shows: no forwarded value ever holds CR or LF, the template's header appears
/// once with the value of its own line, and the client never gets an extra header line.
/// What it cannot show: weir's last line of defence (a rendered value that is not a valid
/// header value is dropped, never sent) is unreachable from outside, because every input
/// above is already a valid header value by the time a template reads it.
#[tokio::test]
async fn no_template_input_can_add_a_header_line_upstream_or_to_the_client() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        r#"{ path: "/items/{id}" }"#,
        "      request:\n        headers:\n          \
         set: { X-Item: \"${path.id}\", X-Copied: \"${header.X-Tenant}\" }\n",
    ))
    .await;

    // An encoded CR LF in the path parameter stays encoded.
    let v = echo(gw.get("/items/a%0D%0AEvil:%20x").await).await;
    assert_eq!(echoed_header(&v, "x-item"), Some("a%0D%0AEvil:%20x"), "{v}");
    assert_eq!(echoed_header(&v, "evil"), None, "{v}");

    // A value with only allowed bytes (SP, HTAB inside, obs-text) is copied as it is.
    let before = backend.hits();
    let resp = raw_bytes(
        gw.addr,
        b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\tb caf\xc3\xa9\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("a response");
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(echoed_header(&v, "x-copied"), Some("a\tb café"), "{v}");
    assert_eq!(backend.hits(), before + 1);

    // Each attempt, and what the edge does with it: `None` refused with 400 and nothing
    // forwarded, `Some(v)` forwarded with `v` copied into X-Copied.
    let attempts: [(&str, &[u8], Option<&str>); 5] = [
        (
            "bare CR in a value",
            b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\rEvil: x\r\nConnection: close\r\n\r\n",
            None,
        ),
        (
            "obs-fold continuation line",
            b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\n Evil: x\r\nConnection: close\r\n\r\n",
            None,
        ),
        (
            "DEL in a value",
            b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\x7fEvil: x\r\nConnection: close\r\n\r\n",
            None,
        ),
        (
            "NUL in a value",
            b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\x00Evil: x\r\nConnection: close\r\n\r\n",
            None,
        ),
        (
            // Parsers disagree on a bare LF (some end the line there, some do not): the
            // framing guard refuses it (see smuggling.rs).
            "bare LF ending a line",
            b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Tenant: a\nEvil: x\r\nConnection: close\r\n\r\n",
            None,
        ),
    ];
    for (what, request, expected) in attempts {
        let before = backend.hits();
        let resp = raw_bytes(gw.addr, request)
            .await
            .unwrap_or_else(|| panic!("{what}: closed without an answer"));
        assert!(
            resp.headers.iter().all(|(n, _)| n != "evil"),
            "{what}: an extra header line reached the client: {resp:?}"
        );
        let Some(expected) = expected else {
            assert_eq!(resp.status, 400, "{what}: {resp:?}");
            assert_eq!(backend.hits(), before, "{what}: refused, yet forwarded");
            continue;
        };
        assert_eq!(resp.status, 200, "{what}: {resp:?}");
        let v = resp.json();
        assert_eq!(echoed_header(&v, "x-copied"), Some(expected), "{what}: {v}");
        let headers = v["headers"].as_object().unwrap();
        assert!(
            headers
                .values()
                .flat_map(|vs| vs.as_array().unwrap())
                .all(|v| !v.as_str().unwrap().contains(['\r', '\n'])),
            "{what}: CR or LF in a forwarded value: {v}"
        );
        // No header the template made: X-Copied once, X-Item once.
        assert_eq!(echoed_header(&v, "x-item"), Some("1"), "{what}: {v}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn query_parameters_are_removed_and_set_encoded_the_others_kept_in_order() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      request:\n        query:\n          \
         set: { source: gateway, note: \"a b&c=d\", who: \"${header.X-Who}\" }\n          \
         remove: [debug]\n",
    ))
    .await;

    let v = echo(
        gw.client
            .get(gw.url("/q?a=1&debug=true&source=client&b=2&debug=2&c"))
            .header("x-who", "ann & bob")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        v["path"], "/q?a=1&b=2&c&source=gateway&note=a%20b%26c%3Dd&who=ann%20%26%20bob",
        "{v}"
    );

    // No query at all: the set parameters make one; an absent header renders empty.
    let v = echo(gw.get("/q").await).await;
    assert_eq!(
        v["path"], "/q?source=gateway&note=a%20b%26c%3Dd&who=",
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn query_remove_alone_can_leave_no_query() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      request:\n        query: { remove: [debug, trace] }\n",
    ))
    .await;
    let v = echo(gw.get("/q?debug=1&trace").await).await;
    assert_eq!(v["path"], "/q", "{v}");
    let v = echo(gw.get("/q?z=9&debug=1&a=1").await).await;
    assert_eq!(v["path"], "/q?z=9&a=1", "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn response_headers_are_set_removed_and_added_with_the_request_id() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      response:\n        headers:\n          \
         remove: [Server, X-Backend]\n          \
         set: { Cache-Control: no-store, X-Req: \"id=${request.id}\", X-Ip: \"${request.ip}\" }\n          \
         add: { X-Multi: gateway }\n",
    ))
    .await;

    let resp = gw
        .client
        .get(gw.url("/r"))
        .header("x-respond-header", "Server: upstream/1.0")
        .header("x-respond-header", "Cache-Control: public, max-age=60")
        .header("x-respond-header", "X-Multi: upstream")
        .header("x-respond-header", "X-Kept: yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(all_values(&h, "cache-control"), ["no-store"], "{h:?}");
    assert_eq!(all_values(&h, "server"), Vec::<String>::new(), "{h:?}");
    assert_eq!(all_values(&h, "x-backend"), Vec::<String>::new(), "{h:?}");
    assert_eq!(all_values(&h, "x-multi"), ["upstream", "gateway"], "{h:?}");
    assert_eq!(all_values(&h, "x-kept"), ["yes"], "{h:?}");
    assert_eq!(
        all_values(&h, "x-req"),
        [format!("id={}", request_id(&h))],
        "{h:?}"
    );
    assert_eq!(all_values(&h, "x-ip"), ["127.0.0.1"], "{h:?}");
    // The body is the upstream's, untouched.
    let v = echo(resp).await;
    assert_eq!(v["path"], "/r", "{v}");

    // Each response renders its own request id.
    let other = gw.get("/r").await;
    let h2 = other.headers();
    assert_eq!(all_values(h2, "x-req"), [format!("id={}", request_id(h2))]);
    assert_ne!(request_id(h2), request_id(&h));
    gw.stop().await;
}

#[tokio::test]
async fn weirs_own_errors_are_not_transformed() {
    let backend = Backend::start("b").await;
    let response = "    transform:\n      response:\n        headers:\n          \
                    set: { X-T: applied }\n          remove: [Content-Type]\n";
    let gw = start(&format!(
        "auth:\n  providers:\n    keys: {{ type: api_key, header: X-Api-Key }}\n\
         consumers:\n  - name: acme\n    api_keys: [\"{ACME_KEY}\"]\n\
         upstreams:\n  be:\n    targets: [{{ url: \"{up}\" }}]\n  \
         down:\n    targets: [{{ url: \"http://{dead}\" }}]\n\
         routes:\n\
         \x20 - name: ok\n    match: {{ prefix: /ok }}\n    upstream: be\n{response}\
         \x20 - name: down\n    match: {{ prefix: /down }}\n    upstream: down\n{response}\
         \x20 - name: locked\n    match: {{ prefix: /locked }}\n    upstream: be\n    \
         auth: {{ providers: [keys] }}\n{response}",
        up = backend.url(),
        dead = dead_addr(),
    ))
    .await;

    // The upstream's answer is transformed.
    let ok = gw.get("/ok").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(all_values(ok.headers(), "x-t"), ["applied"]);
    assert_eq!(
        all_values(ok.headers(), "content-type"),
        Vec::<String>::new()
    );

    // No route: 404, untouched.
    let resp = gw.get("/elsewhere").await;
    assert_eq!(all_values(resp.headers(), "x-t"), Vec::<String>::new());
    assert_problem(resp, 404, "route_not_found").await;

    // The route matched, but its upstream refuses: weir's own error, untouched.
    let resp = gw.get("/down").await;
    let status = resp.status().as_u16();
    assert!(status == 502 || status == 503, "upstream down: {status}");
    assert_eq!(all_values(resp.headers(), "x-t"), Vec::<String>::new());
    assert_eq!(
        all_values(resp.headers(), "content-type"),
        ["application/problem+json"]
    );

    // The route matched, but the client is not authenticated: untouched.
    let resp = gw.get("/locked").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(all_values(resp.headers(), "x-t"), Vec::<String>::new());
    assert_eq!(
        all_values(resp.headers(), "content-type"),
        ["application/problem+json"]
    );
    // ... and authenticated, it is the upstream's answer, transformed.
    let resp = gw
        .client
        .get(gw.url("/locked"))
        .header("x-api-key", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(all_values(resp.headers(), "x-t"), ["applied"]);

    // An answer the upstream gave, even an error status, is the upstream's: transformed.
    let resp = gw
        .client
        .get(gw.url("/ok"))
        .header("x-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(all_values(resp.headers(), "x-t"), ["applied"]);
    gw.stop().await;
}

/// Two routes on one origin, both caching with a request transform copying `X-Client`:
/// `/plain` without `vary`, `/vary` with `vary: [X-Client]`.
fn cache_config(origin: &Origin) -> String {
    let transform = "    transform:\n      request:\n        headers:\n          \
                     set: { X-From: \"${header.X-Client}\" }\n";
    format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n\
         \x20 - name: plain\n    match: {{ prefix: /plain }}\n    upstream: be\n    \
         cache: {{ ttl: 60s }}\n{transform}\
         \x20 - name: vary\n    match: {{ prefix: /vary }}\n    upstream: be\n    \
         cache: {{ ttl: 60s, vary: [X-Client] }}\n{transform}",
        url = origin.url()
    )
}

fn origin_echo(a: &crate::common::limits::Answer) -> Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not an echo ({e}): {}", a.body))
}

#[tokio::test]
async fn on_a_cacheable_request_a_template_reads_only_the_vary_headers() {
    let origin = Origin::start().await;
    let gw = start(&cache_config(&origin)).await;

    // Not in the key: the stored answer must not depend on it, so the template reads "".
    let a = get(&gw, "/plain/1", &[("x-client", "c1")]).await;
    assert_cache(&a, "MISS", "first /plain");
    let v = origin_echo(&a);
    assert_eq!(origin_saw(&v, "x-from"), Some(""), "{v}");
    assert_eq!(origin_saw(&v, "x-client"), None, "{v}");
    // Another client's value changes nothing: the same stored answer.
    let b = get(&gw, "/plain/1", &[("x-client", "c2")]).await;
    assert_cache(&b, "HIT", "second /plain");
    assert_eq!(origin_n(&b), origin_n(&a));

    // A request that cannot be stored (POST) is not restricted: the value is copied.
    let p = fetch(&gw, "POST", "/plain/1", &[("x-client", "c3")]).await;
    assert_eq!(p.status, 200, "{}", p.body);
    let v = origin_echo(&p);
    assert_eq!(origin_saw(&v, "x-from"), Some("c3"), "{v}");

    // In the key (`vary`): read, and each value is its own entry.
    let c1 = get(&gw, "/vary/1", &[("x-client", "c1")]).await;
    assert_cache(&c1, "MISS", "/vary as c1");
    let v = origin_echo(&c1);
    assert_eq!(origin_saw(&v, "x-from"), Some("c1"), "{v}");
    let c2 = get(&gw, "/vary/1", &[("x-client", "c2")]).await;
    assert_cache(&c2, "MISS", "/vary as c2");
    let v = origin_echo(&c2);
    assert_eq!(origin_saw(&v, "x-from"), Some("c2"), "{v}");
    let again = get(&gw, "/vary/1", &[("x-client", "c1")]).await;
    assert_cache(&again, "HIT", "/vary as c1 again");
    assert_eq!(origin_n(&again), origin_n(&c1));
    gw.stop().await;
}

#[tokio::test]
async fn answers_from_the_cache_are_transformed_once_each_with_their_own_request_id() {
    let origin = Origin::start().await;
    let gw = start(&format!(
        "upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: be\n    \
         cache: {{ ttl: 60s }}\n    transform:\n      response:\n        headers:\n          \
         set: {{ Cache-Control: no-store, X-Req: \"${{request.id}}\" }}\n          \
         add: {{ X-Added: gw }}\n          remove: [X-Upstream]\n",
        url = origin.url()
    ))
    .await;

    let miss = get(&gw, "/c", &[("x-respond-header", "X-Upstream: 1")]).await;
    assert_cache(&miss, "MISS", "first");
    let hit = get(&gw, "/c", &[]).await;
    // The stored answer is the upstream's: the transform's `no-store` on the way out does
    // not keep it from being stored.
    assert_cache(&hit, "HIT", "second");
    assert_eq!(origin.hits(), 1);
    for (what, a) in [("MISS", &miss), ("HIT", &hit)] {
        assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
        assert_eq!(a.header("x-added"), Some("gw"), "{what}: added once");
        assert_eq!(a.header("x-upstream"), None, "{what}");
        assert_eq!(
            a.header("x-req"),
            a.header("x-request-id"),
            "{what}: its own request id"
        );
    }
    assert_ne!(miss.header("x-req"), hit.header("x-req"));
    gw.stop().await;
}

#[tokio::test]
async fn raw_request_sees_transformed_headers_on_the_wire() {
    // The same through a byte-level client: one `Cache-Control` line, no `Server` line.
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      response:\n        headers: { set: { Cache-Control: no-store }, remove: [Server] }\n",
    ))
    .await;
    let resp = raw_request(
        gw.addr,
        "GET /w HTTP/1.1\r\nHost: t\r\nX-Respond-Header: Server: up\r\n\
         X-Respond-Header: Cache-Control: max-age=9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let lines = |n: &str| resp.headers.iter().filter(|(k, _)| k == n).count();
    assert_eq!(lines("cache-control"), 1, "{resp:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(lines("server"), 0, "{resp:?}");
    gw.stop().await;
}

/// A route with api_key auth whose request transform copies, into headers (`X-H-*`) and into
/// query parameters, the credential header, weir's identity header, `X-Forwarded-For` and
/// a header the client names in `Connection`.
fn identity_config(backend: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key }}
        consumers:
          - name: acme
            api_keys: ["{ACME_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: r
            match: {{ prefix: / }}
            upstream: be
            auth: {{ providers: [keys] }}
            transform:
              request:
                headers:
                  set:
                    X-H-Key: "${{header.X-Api-Key}}"
                    X-H-Consumer: "${{header.X-Consumer}}"
                    X-H-Xff: "${{header.X-Forwarded-For}}"
                    X-H-Hop: "${{header.X-Hop}}"
                query:
                  set:
                    key: "${{header.X-Api-Key}}"
                    consumer: "${{header.X-Consumer}}"
                    xff: "${{header.X-Forwarded-For}}"
                    hop: "${{header.X-Hop}}"
                    source: gw
        "#,
        url = backend.url()
    )
}

/// A request as `acme` that also claims to be `mallory`, from 6.6.6.6, with a hop-by-hop
/// header; the upstream's echo.
async fn claiming_request(gw: &crate::common::Gateway, path: &str) -> Value {
    echo(
        gw.client
            .get(gw.url(path))
            .header("x-api-key", ACME_KEY)
            .header("x-consumer", "mallory")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-hop", "hop-secret")
            .header("connection", "x-hop")
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn header_templates_read_the_headers_weir_forwards_not_the_clients_claims() {
    let backend = Backend::start("b").await;
    let gw = start(&identity_config(&backend)).await;
    let v = claiming_request(&gw, "/p").await;
    // The credential is removed before the transform: a template cannot copy it upstream.
    assert_eq!(echoed_header(&v, "x-h-key"), Some(""), "{v}");
    assert_eq!(echoed_header(&v, "x-api-key"), None, "{v}");
    // weir's proven identity, not the client's claim.
    assert_eq!(echoed_header(&v, "x-h-consumer"), Some("acme"), "{v}");
    // weir's X-Forwarded-For (the peer is not a trusted proxy), not the client's.
    assert_eq!(echoed_header(&v, "x-h-xff"), Some("127.0.0.1"), "{v}");
    // A header the client named in `Connection` is hop-by-hop: gone before the transform.
    assert_eq!(echoed_header(&v, "x-h-hop"), Some(""), "{v}");
    assert_eq!(echoed_header(&v, "x-hop"), None, "{v}");
    gw.stop().await;
}

/// The value of every query parameter of `path_and_query` whose percent-decoded name is
/// `name`, decoded, in order.
fn decoded_params(path_and_query: &str, name: &str) -> Vec<String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = |h: &[u8]| {
                std::str::from_utf8(h)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            };
            match (b[i], b.get(i + 1..i + 3).and_then(hex)) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (b'+', _) => {
                    out.push(b' ');
                    i += 1;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .filter(|(n, _)| decode(n) == name)
        .map(|(_, v)| decode(v))
        .collect()
}

#[tokio::test]
async fn query_templates_read_the_same_headers_as_header_templates() {
    let backend = Backend::start("b").await;
    let gw = start(&identity_config(&backend)).await;
    let v = claiming_request(&gw, "/p").await;
    let path = v["path"].as_str().unwrap();
    // The same template renders the same in a header and in the query.
    assert_eq!(
        decoded_params(path, "key"),
        [""],
        "the API key was copied into the upstream's URL: {path}"
    );
    assert_eq!(
        decoded_params(path, "consumer"),
        ["acme"],
        "the client's claimed identity, not weir's: {path}"
    );
    assert_eq!(decoded_params(path, "xff"), ["127.0.0.1"], "{path}");
    assert_eq!(decoded_params(path, "hop"), [""], "{path}");
    gw.stop().await;
}

#[tokio::test]
async fn query_remove_and_set_match_percent_encoded_names() {
    let backend = Backend::start("b").await;
    let gw = start(&one_route(
        &backend.url(),
        "{ prefix: / }",
        "      request:\n        query: { set: { source: gw }, remove: [debug] }\n",
    ))
    .await;
    let v = echo(gw.get("/p?de%62ug=1&sour%63e=evil&keep=1").await).await;
    let path = v["path"].as_str().unwrap();
    // What the upstream decodes: no `debug`, and `source` only as the route set it.
    assert_eq!(
        decoded_params(path, "debug"),
        Vec::<String>::new(),
        "{path}"
    );
    assert_eq!(decoded_params(path, "source"), ["gw"], "{path}");
    assert_eq!(decoded_params(path, "keep"), ["1"], "{path}");
    gw.stop().await;
}
