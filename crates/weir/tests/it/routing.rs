//! Routing through real sockets (contract §3 and §5): every match form, the precedence
//! order, 404/405 problems, `respond:` routes, path normalization and path transforms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{Backend, assert_problem, echo, raw_get, start};

/// The body of a `respond:` route, which these tests set to the route's name.
async fn answered_by(req: reqwest::RequestBuilder) -> String {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(
        status, 200,
        "expected a route to answer, got {status}: {body}"
    );
    body
}

async fn route_for(gw: &crate::common::Gateway, path: &str) -> String {
    answered_by(gw.client.get(gw.url(path))).await
}

fn respond(name: &str) -> String {
    format!("respond: {{ status: 200, body: {name} }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_forms_and_their_precedence() {
    // Listed least specific first, so file order cannot explain any of the outcomes.
    let yaml = format!(
        r#"
        routes:
          - name: regex
            match: {{ regex: "^/p/.*$" }}
            {regex}
          - name: regex-only
            match: {{ regex: "^/q[0-9]+$" }}
            {regex_only}
          - name: prefix-short
            match: {{ prefix: /p }}
            {prefix_short}
          - name: prefix-long
            match: {{ prefix: /p/long }}
            {prefix_long}
          - name: template-two
            match: {{ path: "/p/{{a}}/{{b}}" }}
            {template_two}
          - name: template-one
            match: {{ path: "/p/x/{{b}}" }}
            {template_one}
          - name: template
            match: {{ path: "/p/{{id}}" }}
            {template}
          - name: exact
            match: {{ path: /p/1 }}
            {exact}
          - name: catch-all
            match: {{ path: "/files/{{*rest}}" }}
            {catch_all}
        "#,
        regex = respond("regex"),
        regex_only = respond("regex-only"),
        prefix_short = respond("prefix-short"),
        prefix_long = respond("prefix-long"),
        template_two = respond("template-two"),
        template_one = respond("template-one"),
        template = respond("template"),
        exact = respond("exact"),
        catch_all = respond("catch-all"),
    );
    let gw = start(&yaml).await;
    let cases = [
        ("/p/1", "exact"),                 // exact beats template, prefix and regex
        ("/p/2", "template"),              // template beats prefix and regex
        ("/p/x/9", "template-one"),        // fewer template parameters first
        ("/p/y/9", "template-two"),        //
        ("/p/long/z", "template-two"),     // a template beats even a longer prefix
        ("/p/long/a/b/c", "prefix-long"),  // the longer prefix wins
        ("/p/long", "template"),           // `/p/{id}` is a template: it beats the prefix too
        ("/p/other/a/b", "prefix-short"),  // a prefix beats a regex
        ("/p", "prefix-short"),            // a prefix matches itself
        ("/q12", "regex-only"),            // regex
        ("/files/a/b/c.txt", "catch-all"), // catch-all template takes every segment
        ("/files/x", "catch-all"),         //
    ];
    for (path, want) in cases {
        assert_eq!(route_for(&gw, path).await, want, "GET {path}");
    }
    // Prefixes match at segment boundaries; a regex must match the whole pattern.
    for path in ["/pfoo", "/q12x", "/nothing"] {
        assert_problem(gw.get(path).await, 404, "route_not_found").await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_matching_exact_wildcard_and_none() {
    let yaml = format!(
        r#"
        routes:
          - name: no-host
            match: {{ prefix: /h }}
            {no_host}
          - name: host-wild
            match: {{ host: "*.example.com", prefix: /h }}
            {host_wild}
          - name: host-exact
            match: {{ host: api.example.com, prefix: /h }}
            {host_exact}
          - name: exact-path-no-host
            match: {{ path: /h/exact }}
            {exact_path}
          - name: only-host
            match: {{ host: only.example.org, prefix: /only }}
            {only_host}
        "#,
        no_host = respond("no-host"),
        host_wild = respond("host-wild"),
        host_exact = respond("host-exact"),
        exact_path = respond("exact-path-no-host"),
        only_host = respond("only-host"),
    );
    let gw = start(&yaml).await;
    let cases = [
        ("api.example.com", "/h/a", "host-exact"),
        ("API.Example.COM:8080", "/h/a", "host-exact"), // case and port do not matter
        ("x.example.com", "/h/a", "host-wild"),
        ("a.b.example.com", "/h/a", "host-wild"),
        ("example.com", "/h/a", "no-host"), // the wildcard needs a label before the suffix
        ("other.org", "/h/a", "no-host"),
        // The path's class ranks before the host: exact path without host beats a host prefix.
        ("api.example.com", "/h/exact", "exact-path-no-host"),
        ("only.example.org", "/only/x", "only-host"),
    ];
    for (host, path, want) in cases {
        let got = answered_by(gw.client.get(gw.url(path)).header("host", host)).await;
        assert_eq!(got, want, "GET {path} with Host: {host}");
    }
    let resp = gw
        .client
        .get(gw.url("/only/x"))
        .header("host", "else.example.org")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "route_not_found").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_conditions_and_methods() {
    let yaml = format!(
        r#"
        routes:
          - name: v-default
            match: {{ prefix: /v }}
            {v_default}
          - name: v2
            match: {{ prefix: /v, headers: {{ X-Api-Version: "2" }} }}
            {v2}
          - name: v2-beta
            match: {{ prefix: /v, headers: {{ X-Api-Version: "2", X-Beta: "yes" }} }}
            {v2_beta}
          - name: m-get
            match: {{ path: /m, methods: [GET] }}
            {m_get}
          - name: m-put
            match: {{ path: /m, methods: [PUT] }}
            {m_put}
        "#,
        v_default = respond("v-default"),
        v2 = respond("v2"),
        v2_beta = respond("v2-beta"),
        m_get = respond("m-get"),
        m_put = respond("m-put"),
    );
    let gw = start(&yaml).await;
    let url = gw.url("/v/things");
    let c = &gw.client;
    assert_eq!(answered_by(c.get(&url)).await, "v-default");
    assert_eq!(
        answered_by(c.get(&url).header("X-Api-Version", "2")).await,
        "v2"
    );
    assert_eq!(
        answered_by(
            c.get(&url)
                .header("x-api-version", "2")
                .header("X-Beta", "yes")
        )
        .await,
        "v2-beta"
    );
    assert_eq!(
        answered_by(c.get(&url).header("X-Api-Version", "3")).await,
        "v-default"
    );
    assert_eq!(
        answered_by(c.get(&url).header("X-Beta", "yes")).await,
        "v-default"
    );

    assert_eq!(answered_by(c.get(gw.url("/m"))).await, "m-get");
    assert_eq!(answered_by(c.put(gw.url("/m"))).await, "m-put");
    let resp = c.delete(gw.url("/m")).send().await.unwrap();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("405 carries Allow");
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "PUT"], "Allow: {allow}");
    assert_problem(resp, 405, "method_not_allowed").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_overrides_and_file_order_breaks_ties() {
    let yaml = format!(
        r#"
        routes:
          - name: exact
            match: {{ path: /o/a }}
            {exact}
          - name: regex-priority
            match: {{ regex: "^/o/a$" }}
            priority: 5
            {regex_priority}
          - name: host-route
            match: {{ host: api.example.com, prefix: /k }}
            {host_route}
          - name: plain-priority
            match: {{ prefix: /k }}
            priority: 1
            {plain_priority}
          - name: f-first
            match: {{ regex: "^/f/" }}
            {f_first}
          - name: f-second
            match: {{ regex: "^/f/x" }}
            {f_second}
          - name: g-first
            match: {{ regex: "^/g/x" }}
            {g_first}
          - name: g-second
            match: {{ regex: "^/g/" }}
            {g_second}
        "#,
        exact = respond("exact"),
        regex_priority = respond("regex-priority"),
        host_route = respond("host-route"),
        plain_priority = respond("plain-priority"),
        f_first = respond("f-first"),
        f_second = respond("f-second"),
        g_first = respond("g-first"),
        g_second = respond("g-second"),
    );
    let gw = start(&yaml).await;
    assert_eq!(
        route_for(&gw, "/o/a").await,
        "regex-priority",
        "priority beats an exact path"
    );
    let got = answered_by(
        gw.client
            .get(gw.url("/k/1"))
            .header("host", "api.example.com"),
    )
    .await;
    assert_eq!(got, "plain-priority", "priority beats a host match");
    assert_eq!(
        route_for(&gw, "/f/x").await,
        "f-first",
        "tied regexes: first in the file"
    );
    assert_eq!(
        route_for(&gw, "/g/x").await,
        "g-first",
        "tied regexes: first in the file"
    );
    assert_eq!(route_for(&gw, "/g/y").await, "g-second");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_method_not_allowed_are_problems() {
    let gw = start(
        r#"
        routes:
          - name: only-get
            match: { path: /only-get, methods: [GET, HEAD] }
            respond: { status: 200, body: ok }
        "#,
    )
    .await;
    let resp = gw.get("/nope").await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = assert_problem(resp, 404, "route_not_found").await;
    assert_eq!(body["request_id"], id);
    assert_eq!(body["title"], "Not Found");

    let resp = gw
        .client
        .post(gw.url("/only-get"))
        .body("x")
        .send()
        .await
        .unwrap();
    let allow = resp
        .headers()
        .get("allow")
        .expect("Allow on 405")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        allow.contains("GET") && allow.contains("HEAD"),
        "Allow: {allow}"
    );
    let body = assert_problem(resp, 405, "method_not_allowed").await;
    assert_eq!(body["title"], "Method Not Allowed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_routes_answer_with_status_headers_and_body() {
    let gw = start(
        r#"
        routes:
          - name: teapot
            match: { path: /teapot }
            respond:
              status: 418
              headers: { X-Teapot: "short and stout", Content-Type: text/plain }
              body: "I'm a teapot"
          - name: empty
            match: { path: /empty }
            respond: { status: 204 }
        "#,
    )
    .await;
    let resp = gw.get("/teapot").await;
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-teapot"], "short and stout");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-request-id"].len(), 26);
    assert_eq!(resp.text().await.unwrap(), "I'm a teapot");
    let resp = gw.get("/empty").await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.text().await.unwrap(), "");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_forwarded_normalized_with_query_kept() {
    let backend = Backend::start("n").await;
    let gw = start(&format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
        routes:
          - name: n
            match: {{ prefix: /n }}
            upstream: be
          - name: secret
            match: {{ prefix: /secret }}
            respond: {{ status: 403, body: secret }}
          - name: names
            match: {{ prefix: /names }}
            upstream: be
            allow_ambiguous_paths: true
        "#,
        backend.url()
    ))
    .await;
    // A route that allows them routes and forwards encoded slashes as written.
    for (sent, forwarded) in [
        ("/names/a%2fb", "/names/a%2Fb"),
        ("/names/a%5Cb", "/names/a%5Cb"),
        ("/names/x/..;/y", "/names/x/..;/y"),
    ] {
        let resp = raw_get(gw.addr, sent).await;
        assert_eq!(resp.status, 200, "GET {sent}");
        assert_eq!(resp.json()["path"], forwarded, "GET {sent}");
    }
    // Raw bytes: a polished client would normalize these itself.
    let cases = [
        ("/n/./b", "/n/b"),
        ("//n//b", "/n/b"),
        ("/x/%2e%2e/n/b", "/n/b"),
        ("/x/%2E%2E/n/b", "/n/b"),
        ("/%6e/b", "/n/b"),
        ("/n/a/../b?x=1&y=%20z", "/n/b?x=1&y=%20z"),
        ("/n/b?q=/./../&r", "/n/b?q=/./../&r"),
    ];
    for (sent, forwarded) in cases {
        let resp = raw_get(gw.addr, sent).await;
        assert_eq!(
            resp.status,
            200,
            "GET {sent}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        let v = resp.json();
        assert_eq!(v["path"], forwarded, "GET {sent} is forwarded normalized");
    }
    // An encoded slash is refused: an origin that decodes it would see another path.
    let resp = raw_get(gw.addr, "/n/a%2fb").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["code"], "bad_request");
    // Normalization decides the route: a climb out of /n does not reach /n's upstream.
    let before = backend.hits();
    let resp = raw_get(gw.addr, "/n/%2e%2e/secret/x").await;
    assert_eq!(resp.status, 403, "/n/../secret/x is routed as /secret/x");
    let resp = raw_get(gw.addr, "/n/../../etc/passwd").await;
    assert_eq!(resp.status, 404);
    assert_eq!(backend.hits(), before);
    // A malformed encoding is a bad request, never forwarded.
    let resp = raw_get(gw.addr, "/n/%zz").await;
    assert_eq!(resp.status, 400);
    crate::common::check_problem_body(
        &resp.json(),
        400,
        "bad_request",
        resp.header("x-request-id"),
    );
    assert_eq!(backend.hits(), before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_path_transforms_are_forwarded() {
    let backend = Backend::start("t").await;
    let gw = start(&format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: strip
            match: {{ prefix: /api }}
            upstream: be
            transform: {{ request: {{ path: {{ strip_prefix: /api }} }} }}
          - name: add
            match: {{ prefix: /add }}
            upstream: be
            transform: {{ request: {{ path: {{ add_prefix: /internal }} }} }}
          - name: rewrite
            match: {{ prefix: /orders }}
            upstream: be
            transform: {{ request: {{ path: {{ rewrite: {{ regex: "^/orders/(\\d+)$", to: "/o/$1" }} }} }} }}
          - name: all-three
            match: {{ prefix: /v2 }}
            upstream: be
            transform:
              request:
                path:
                  strip_prefix: /v2
                  add_prefix: /internal
                  rewrite: {{ regex: "^/orders/(\\d+)$", to: "/o/$1" }}
        "#,
        url = backend.url()
    ))
    .await;
    let cases = [
        ("/api/users/7?x=1", "/users/7?x=1"),
        ("/api", "/"),
        ("/add/x", "/internal/add/x"),
        ("/orders/42", "/o/42"),
        ("/orders/abc", "/orders/abc"),
        ("/v2/orders/5?q=1", "/internal/o/5?q=1"),
        ("/v2/other", "/internal/other"),
    ];
    for (sent, forwarded) in cases {
        let v = echo(gw.get(sent).await).await;
        assert_eq!(v["path"], forwarded, "GET {sent}");
    }
    gw.stop().await;
}
