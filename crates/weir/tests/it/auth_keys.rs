//! API keys, Basic passwords, roles, identity headers, and the edge policies around them
//! (issue 3; contract §3 `auth`, `consumers`, route `auth`, `ip`, `cors`; §4; §5; §7):
//! what reaches the upstream, what never does, and what the client is told.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::common::idp::{
    CLIENT_SECRET, argon2id_hash, assert_problem_without, assert_unauthorized, auth_failures,
    basic, bcrypt_hash, hex, names_scheme, sha256_key, try_load, unused_addr, www_authenticate,
};
use crate::common::{Backend, Gateway, echo, echoed_header, raw_get, raw_request, start};

const ACME_KEY: &str = "plain-key-1-acme-0f3a9c";
const ACME_HASHED_KEY: &str = "hashed-key-2-acme-77e1b0";
const BOB_KEY: &str = "bob-key-3-5d2e81";
const EVE_KEY: &str = "eve-key-4-c4a1f9";
const ACME_PASSWORD: &str = "argon-pass-acme-93b2";
const BOB_PASSWORD: &str = "bcrypt-pass-bob-1c7e";
const HS_SECRET: &str = "hs256-secret-for-key-tests-0123456789";

/// Consumers `acme` (both roles; a plain and a sha256 key; argon2id password), `bob`
/// (`orders:read`; bcrypt password) and `eve` (no roles); providers `keys` (header and
/// query), `hdr` (default header only), `staff` (Basic, realm `staff`), `hs` (JWT HS256);
/// routes `orders` (`/orders`: keys or staff, `orders:read`), `write` (`/write`: both roles),
/// `header-only` (`/hdr`), `mixed` (`/mixed`: keys, staff or hs) and `open` (`/`).
fn keys_config(backend: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key, header: X-Api-Key, query: api_key }}
            hdr: {{ type: api_key }}
            staff: {{ type: basic, realm: staff }}
            hs: {{ type: jwt, secret: "{HS_SECRET}", algorithms: [HS256] }}
        consumers:
          - name: acme
            roles: [orders:read, orders:write]
            api_keys: ["{ACME_KEY}", "{hashed}"]
            basic: {{ username: acme, password_hash: "{argon}" }}
          - name: bob
            roles: [orders:read]
            api_keys: ["{BOB_KEY}"]
            basic: {{ username: bob, password_hash: "{bcrypt}" }}
          - name: eve
            roles: []
            api_keys: ["{EVE_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: orders
            match: {{ prefix: /orders }}
            upstream: be
            auth: {{ providers: [keys, staff], roles: [orders:read] }}
          - name: write
            match: {{ prefix: /write }}
            upstream: be
            auth: {{ providers: [keys, staff], roles: [orders:read, orders:write] }}
          - name: header-only
            match: {{ prefix: /hdr }}
            upstream: be
            auth: {{ providers: [hdr] }}
          - name: mixed
            match: {{ prefix: /mixed }}
            upstream: be
            auth: {{ providers: [keys, staff, hs] }}
          - name: open
            match: {{ prefix: / }}
            upstream: be
        "#,
        hashed = sha256_key(ACME_HASHED_KEY),
        argon = argon2id_hash(ACME_PASSWORD),
        bcrypt = bcrypt_hash(BOB_PASSWORD),
        url = backend.url()
    )
}

async fn with_key(gw: &Gateway, path: &str, key: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .expect("request through weir")
}

async fn with_basic(gw: &Gateway, path: &str, user: &str, password: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .header("authorization", basic(user, password))
        .send()
        .await
        .expect("request through weir")
}

fn all_values(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_contains(list: &str, item: &str) -> bool {
    list.split(',').any(|t| t.trim().eq_ignore_ascii_case(item))
}

#[test]
fn idp_self_check_hashes_and_digests_are_what_the_config_expects() {
    let argon = argon2id_hash("pw");
    assert!(argon.starts_with("$argon2id$v=19$"), "{argon}");
    let bcrypt = bcrypt_hash("pw");
    assert!(bcrypt.starts_with("$2b$04$"), "{bcrypt}");
    assert!(bcrypt::verify("pw", &bcrypt).unwrap());
    assert!(!bcrypt::verify("pW", &bcrypt).unwrap());
    // SHA-256 of "abc" (FIPS 180-2 test vector).
    assert_eq!(
        sha256_key("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(hex(&[0, 15, 255]), "000fff");
    assert_eq!(basic("acme", "pw"), "Basic YWNtZTpwdw==");
    assert!(names_scheme(r#"Basic realm="staff", ApiKey"#, "apikey"));
    assert!(!names_scheme(r#"Basic realm="bearer""#, "Bearer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_from_header_or_query_plain_or_hashed_pass_and_are_never_forwarded() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;

    // Header, plain key.
    let v = echo(with_key(&gw, "/orders/1?page=2", ACME_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write"),
        "{v}"
    );
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key was forwarded: {v}"
    );
    assert_eq!(v["path"], "/orders/1?page=2");

    // Header, key stored as sha256.
    let v = echo(with_key(&gw, "/orders/1", ACME_HASHED_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"), "{v}");
    assert!(v["headers"].get("x-api-key").is_none(), "{v}");

    // Query parameter: removed, the other parameters kept in order.
    for (query, rest) in [
        (format!("api_key={ACME_HASHED_KEY}&page=2"), vec!["page=2"]),
        (
            format!("page=2&api_key={ACME_KEY}&sort=asc"),
            vec!["page=2", "sort=asc"],
        ),
        (format!("sort=asc&api_key={BOB_KEY}"), vec!["sort=asc"]),
    ] {
        let resp = gw
            .client
            .get(gw.url(&format!("/orders/9?{query}")))
            .send()
            .await
            .unwrap();
        let v = echo(resp).await;
        let path = v["path"].as_str().unwrap();
        assert!(
            !path.contains("api_key"),
            "the query key was forwarded: {path}"
        );
        assert!(
            !path.contains(ACME_KEY) && !path.contains(ACME_HASHED_KEY) && !path.contains(BOB_KEY),
            "{path}"
        );
        assert_eq!(path, format!("/orders/9?{}", rest.join("&")), "{query}");
        assert!(echoed_header(&v, "x-consumer").is_some(), "{v}");
    }
    // Only the query key: no dangling `?`.
    let v = echo(
        gw.client
            .get(gw.url(&format!("/orders/3?api_key={BOB_KEY}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"));
    let path = v["path"].as_str().unwrap();
    assert!(path == "/orders/3" || path == "/orders/3?", "{path}");

    // The default provider reads `X-Api-Key` only.
    let v = echo(with_key(&gw, "/hdr/x", EVE_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("eve"), "{v}");
    assert!(v["headers"].get("x-api-key").is_none(), "{v}");
    let before = backend.hits();
    let resp = gw
        .client
        .get(gw.url(&format!("/hdr/x?api_key={EVE_KEY}")))
        .send()
        .await
        .unwrap();
    assert_unauthorized(
        resp,
        &["ApiKey"],
        &[EVE_KEY],
        "query key on a header-only provider",
    )
    .await;
    assert_eq!(backend.hits(), before);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_401_problems_naming_every_scheme() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;
    let digest = sha256_key(ACME_HASHED_KEY);
    let bare_digest = digest.trim_start_matches("sha256:").to_owned();
    let wrong = [
        "not-a-key-at-all",
        &ACME_KEY[..ACME_KEY.len() - 1],
        &format!("{ACME_KEY}x"),
        &ACME_KEY.to_uppercase(),
        // The stored digest is not a key.
        &digest,
        &bare_digest,
        "",
    ];
    for key in wrong {
        let challenges = assert_unauthorized(
            with_key(&gw, "/orders/1", key).await,
            &["ApiKey", "Basic"],
            &[key]
                .into_iter()
                .filter(|k| k.len() > 3)
                .collect::<Vec<_>>(),
            &format!("X-Api-Key: {key:?}"),
        )
        .await;
        assert!(
            challenges.contains(r#"Basic realm="staff""#),
            "{challenges}"
        );
    }
    let resp = gw
        .client
        .get(gw.url("/orders/1?api_key=wrong-query-key"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(
        resp,
        &["ApiKey", "Basic"],
        &["wrong-query-key"],
        "wrong query key",
    )
    .await;
    let resp = gw.client.get(gw.url("/orders/1")).send().await.unwrap();
    assert_unauthorized(resp, &["ApiKey", "Basic"], &[], "nothing").await;
    // A route accepting three providers names the three schemes.
    let resp = gw.client.get(gw.url("/mixed/1")).send().await.unwrap();
    let challenges = assert_unauthorized(resp, &["ApiKey", "Basic", "Bearer"], &[], "mixed").await;
    assert!(
        challenges.contains(r#"Basic realm="staff""#),
        "{challenges}"
    );
    let resp = gw
        .client
        .get(gw.url("/mixed/1"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl")
        .send()
        .await
        .unwrap();
    assert_unauthorized(
        resp,
        &["ApiKey", "Basic", "Bearer"],
        &["eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"],
        "bad token on mixed",
    )
    .await;
    // Any one of the providers is enough.
    let v = echo(with_key(&gw, "/mixed/1", BOB_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"));
    assert_eq!(backend.hits(), 1, "only the good key reached the backend");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_passwords_with_argon2id_and_bcrypt_hashes() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;

    let v = echo(with_basic(&gw, "/orders/1", "acme", ACME_PASSWORD).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write")
    );
    assert!(
        v["headers"].get("authorization").is_none(),
        "the Basic credential was forwarded: {v}"
    );
    let v = echo(with_basic(&gw, "/orders/1", "bob", BOB_PASSWORD).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"), "{v}");
    assert_eq!(echoed_header(&v, "x-consumer-roles"), Some("orders:read"));
    assert!(v["headers"].get("authorization").is_none(), "{v}");

    // A hot client: the same credentials again and again keep working.
    for i in 0..20 {
        let (user, pw) = if i % 2 == 0 {
            ("acme", ACME_PASSWORD)
        } else {
            ("bob", BOB_PASSWORD)
        };
        let v = echo(with_basic(&gw, "/orders/1", user, pw).await).await;
        assert_eq!(echoed_header(&v, "x-consumer"), Some(user));
    }
    let hits = backend.hits();
    assert_eq!(hits, 22);

    // Wrong passwords, also right after the right one was accepted (and cached).
    let wrong = [
        ("acme", "wrong"),
        ("acme", &ACME_PASSWORD[..ACME_PASSWORD.len() - 1]),
        ("acme", BOB_PASSWORD),
        ("bob", ACME_PASSWORD),
        ("bob", &BOB_PASSWORD.to_uppercase()),
        ("nobody", ACME_PASSWORD),
        ("ACME", ACME_PASSWORD),
        ("acme", ""),
    ];
    for (user, pw) in wrong {
        let challenges = assert_unauthorized(
            with_basic(&gw, "/orders/1", user, pw).await,
            &["Basic"],
            &[pw, &basic(user, pw)[6..]]
                .into_iter()
                .filter(|s| s.len() > 3)
                .collect::<Vec<_>>(),
            &format!("{user}:{pw}"),
        )
        .await;
        assert!(
            challenges.contains(r#"Basic realm="staff""#),
            "{challenges}"
        );
    }
    // Malformed Basic credentials.
    for value in ["Basic", "Basic !!!not-base64!!!", "Basic YWNtZQ==", "basic"] {
        let resp = gw
            .client
            .get(gw.url("/orders/1"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_unauthorized(resp, &["Basic"], &[], value).await;
    }
    assert_eq!(backend.hits(), hits, "a wrong password reached the backend");
    // Still fine afterwards.
    echo(with_basic(&gw, "/orders/1", "acme", ACME_PASSWORD).await).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_held_by_consumers_decide_between_403_and_200() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;
    // bob holds orders:read only; eve holds nothing.
    let forbidden = [
        (
            with_key(&gw, "/write/1", BOB_KEY).await,
            "bob's key on /write",
        ),
        (
            with_basic(&gw, "/write/1", "bob", BOB_PASSWORD).await,
            "bob's password on /write",
        ),
        (
            with_key(&gw, "/orders/1", EVE_KEY).await,
            "eve's key on /orders",
        ),
        (
            with_key(&gw, "/write/1", EVE_KEY).await,
            "eve's key on /write",
        ),
    ];
    for (resp, what) in forbidden {
        assert_problem_without(
            resp,
            403,
            "forbidden",
            &[BOB_KEY, EVE_KEY, BOB_PASSWORD],
            what,
        )
        .await;
    }
    assert_eq!(backend.hits(), 0, "a 403 reaches nothing");
    let v = echo(with_key(&gw, "/write/1", ACME_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"));
    let v = echo(with_key(&gw, "/orders/1", BOB_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"));
    // No roles required: eve is let in.
    let v = echo(with_key(&gw, "/hdr/1", EVE_KEY).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("eve"));
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "write", "forbidden"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "orders", "forbidden"),
        1.0,
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_consumer_headers_are_removed_on_every_route() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;
    let forge = |req: reqwest::RequestBuilder| {
        req.header("x-consumer", "mallory")
            .header("x-consumer-roles", "admin")
            .header("x-consumer-anything", "x")
            .header("X-CONSUMER-ID", "0")
    };
    // A route without auth.
    let v = echo(
        forge(gw.client.get(gw.url("/public")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let headers = v["headers"].as_object().unwrap();
    let leaked: Vec<&String> = headers
        .keys()
        .filter(|k| k.to_ascii_lowercase().starts_with("x-consumer"))
        .collect();
    assert!(
        leaked.is_empty(),
        "client X-Consumer* headers reached the open route: {v}"
    );

    // Authenticated routes: only weir's own.
    let req = forge(
        gw.client
            .get(gw.url("/orders/1"))
            .header("x-api-key", BOB_KEY),
    );
    let v = echo(req.send().await.unwrap()).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read"),
        "{v}"
    );
    let others: Vec<&String> = v["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-consumer") && *k != "x-consumer" && *k != "x-consumer-roles")
        .collect();
    assert!(others.is_empty(), "{v}");

    // `Connection` naming X-Consumer cannot make weir drop the identity it adds.
    let resp = raw_request(
        gw.addr,
        &format!(
            "GET /orders/1 HTTP/1.1\r\nHost: test.local\r\nX-Api-Key: {ACME_KEY}\r\n\
             X-Consumer: mallory\r\nConnection: close, X-Consumer, X-Consumer-Roles\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write"),
        "{v}"
    );
    // Same on the open route: nothing claims an identity.
    let resp = raw_request(
        gw.addr,
        "GET /public HTTP/1.1\r\nHost: test.local\r\nX-Consumer: mallory\r\n\
         X-Consumer-Roles: admin\r\nConnection: close, X-Consumer\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert!(v["headers"].get("x-consumer").is_none(), "{v}");
    assert!(v["headers"].get("x-consumer-roles").is_none(), "{v}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_route_and_reason_without_secrets() {
    let backend = Backend::start("b").await;
    let gw = start(&keys_config(&backend)).await;
    for _ in 0..2 {
        gw.get("/orders/1").await;
    }
    for key in ["wrong-1", "wrong-2", ACME_HASHED_KEY.trim_end_matches('0')] {
        with_key(&gw, "/orders/1", key).await;
    }
    with_basic(&gw, "/orders/1", "acme", "nope").await;
    with_key(&gw, "/write/1", BOB_KEY).await;
    with_key(&gw, "/orders/1", ACME_KEY).await;
    gw.get("/anything").await;
    let metrics = gw.metrics().await;
    for (route, reason, n) in [
        ("orders", "missing", 2.0),
        ("orders", "invalid", 4.0),
        ("write", "forbidden", 1.0),
        ("orders", "forbidden", 0.0),
        ("open", "missing", 0.0),
    ] {
        assert_eq!(
            auth_failures(&metrics, route, reason),
            n,
            "{route}/{reason}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(r#"weir_auth_failures_total{route="orders",reason="missing"} 2"#),
        "{metrics}"
    );
    for secret in [
        ACME_KEY,
        BOB_KEY,
        EVE_KEY,
        ACME_PASSWORD,
        "wrong-1",
        HS_SECRET,
    ] {
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_config_or_problems() {
    let backend = Backend::start("b").await;
    let idp_url = format!("http://{}/introspect", unused_addr().await);
    let yaml = keys_config(&backend).replace(
            "            hs: {",
            &format!(
            "            idp: {{ type: oauth2, introspection_url: \"{idp_url}\", client_id: weir, client_secret: \"{CLIENT_SECRET}\" }}\n            hs: {{"
        ),
    );
    let gw = start(&yaml).await;
    let resp = gw.client.get(gw.admin_url("/config")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for secret in [ACME_KEY, BOB_KEY, EVE_KEY, HS_SECRET, CLIENT_SECRET] {
        assert!(!text.contains(secret), "GET /config shows {secret}: {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let config = if v["config"].is_object() {
        &v["config"]
    } else {
        &v
    };
    assert_eq!(
        config["auth"]["providers"]["hs"]["secret"], "***",
        "{config}"
    );
    assert_eq!(
        config["auth"]["providers"]["idp"]["client_secret"], "***",
        "{config}"
    );
    let keys = config["consumers"][0]["api_keys"]
        .as_array()
        .expect("api_keys");
    assert!(keys.iter().all(|k| k == "***"), "{config}");
    // A refused config does not repeat the secret in its problems.
    let bad = keys_config(&backend).replace(
        &format!("secret: \"{HS_SECRET}\", algorithms: [HS256]"),
        &format!("secret: \"{HS_SECRET}\", algorithms: [RS256]"),
    );
    if let Err(problems) = try_load(&bad) {
        assert!(!problems.contains(HS_SECRET), "{problems}");
    }
    let short = keys_config(&backend).replace(HS_SECRET, "short-secret-9f8e");
    if let Err(problems) = try_load(&short) {
        assert!(!problems.contains("short-secret-9f8e"), "{problems}");
    }
    gw.stop().await;
}

/// A protected `/admin` prefix (any `acme` key) next to an open catch-all `/`.
fn admin_config(backend: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key }}
        consumers:
          - name: acme
            roles: []
            api_keys: ["{ACME_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{}" }}]
        routes:
          - name: admin
            match: {{ prefix: /admin }}
            upstream: be
            auth: {{ providers: [keys] }}
          - name: open
            match: {{ prefix: / }}
            upstream: be
        "#,
        backend.url()
    )
}

/// A protected `/admin` prefix next to an open `/`: no spelling of the path reaches the
/// backend without credentials. Raw bytes, since a client library would normalize them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_cannot_reach_a_protected_prefix_without_credentials() {
    let backend = Backend::start("b").await;
    let gw = start(&admin_config(&backend)).await;
    let tricks = [
        "/admin",
        "/admin/",
        "/admin/x",
        "/admin/../admin",
        "/admin/../admin/x",
        "//admin",
        "///admin/x",
        "/%61dmin",
        "/%61%64%6D%69%6E/x",
        "/admin/./",
        "/./admin",
        "/x/../admin",
        "/x/%2e%2e/admin",
        "/x/%2E%2E/admin/y",
        "/%2e%2e/admin",
        "/admin/x/../../admin",
        "/admin?api_key=x",
    ];
    for path in tricks {
        let resp = raw_get(gw.addr, path).await;
        assert!(
            matches!(resp.status, 400 | 401 | 404),
            "GET {path} without credentials: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(
            backend.hits(),
            0,
            "GET {path} reached the backend without credentials"
        );
    }
    // With the key, the same spellings are routed to the protected route (weir adds the
    // identity there), normalized.
    for (path, forwarded) in [
        ("/admin/../admin", "/admin"),
        ("//admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/admin/./", "/admin/"),
    ] {
        let resp = raw_request(
            gw.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: test.local\r\nX-Api-Key: {ACME_KEY}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(
            resp.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        let v = resp.json();
        assert_eq!(v["path"], forwarded, "GET {path}");
        assert_eq!(
            echoed_header(&v, "x-consumer"),
            Some("acme"),
            "GET {path}: {v}"
        );
    }
    gw.stop().await;
}

/// Paths are case-sensitive (RFC 3986), as in nginx and Envoy: `/ADMIN` is another resource
/// than `/admin`, so it falls to the open catch-all, and it is forwarded exactly as `/ADMIN`,
/// never folded into the protected path. An upstream that matches paths case-insensitively
/// is protected by a case-insensitive regex route with a priority (docs/configuration.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_case_sensitive_and_a_case_insensitive_guard_is_possible() {
    let backend = Backend::start("b").await;
    let gw = start(&admin_config(&backend)).await;
    for (path, forwarded) in [
        ("/ADMIN", "/ADMIN"),
        ("/Admin/x", "/Admin/x"),
        ("/%41dmin", "/Admin"),
    ] {
        let resp = raw_get(gw.addr, path).await;
        assert_eq!(resp.status, 200, "GET {path}");
        assert_eq!(
            resp.json()["path"],
            forwarded,
            "GET {path} must keep its case"
        );
    }
    gw.stop().await;

    let guarded = admin_config(&backend).replace(
        "          - name: open\n",
        "          - name: admin-any-case\n            match: { regex: \"(?i)^/admin(/|$)\" }\n            priority: 1\n            upstream: be\n            auth: { providers: [keys] }\n          - name: open\n",
    );
    assert!(guarded.contains("admin-any-case"), "{guarded}");
    let gw = start(&guarded).await;
    let before = backend.hits();
    for path in ["/ADMIN", "/Admin/x", "/%41dmin", "/aDmIn/"] {
        let resp = raw_get(gw.addr, path).await;
        assert_eq!(resp.status, 401, "GET {path} without credentials");
    }
    assert_eq!(
        backend.hits(),
        before,
        "a guarded spelling reached the backend"
    );
    gw.stop().await;
}

fn ip_config(backend: &Backend, trusted: &str) -> String {
    format!(
        r#"
        {trusted}
        auth:
          providers:
            keys: {{ type: api_key }}
        consumers:
          - name: acme
            roles: []
            api_keys: ["{ACME_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: denied
            match: {{ prefix: /denied }}
            upstream: be
            ip: {{ deny: [127.0.0.1/32] }}
          - name: ten
            match: {{ prefix: /ten }}
            upstream: be
            ip: {{ allow: [10.0.0.0/8] }}
          - name: guarded
            match: {{ prefix: /guarded }}
            upstream: be
            ip: {{ deny: [127.0.0.0/8] }}
            auth: {{ providers: [keys] }}
          - name: local
            match: {{ prefix: /local }}
            upstream: be
            ip: {{ allow: [127.0.0.0/8, "::1/128"], deny: [127.0.0.2/32] }}
        "#,
        url = backend.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_and_deny_lists_by_cidr() {
    let backend = Backend::start("b").await;
    let gw = start(&ip_config(&backend, "")).await;
    let forwarded = |path: &str, xff: &str| {
        gw.client
            .get(gw.url(path))
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_problem_without(gw.get("/denied/1").await, 403, "forbidden", &[], "denied").await;
    assert_problem_without(
        gw.get("/ten/1").await,
        403,
        "forbidden",
        &[],
        "not in allow",
    )
    .await;
    // Without trusted proxies, a client's X-Forwarded-For changes nothing.
    let resp = forwarded("/ten/1", "10.1.2.3").await.unwrap();
    assert_problem_without(resp, 403, "forbidden", &[], "forged XFF").await;
    // The ip policy runs before auth: a denied client is 403 with or without credentials.
    assert_problem_without(gw.get("/guarded/1").await, 403, "forbidden", &[], "guarded").await;
    assert_problem_without(
        with_key(&gw, "/guarded/1", ACME_KEY).await,
        403,
        "forbidden",
        &[ACME_KEY],
        "guarded with a key",
    )
    .await;
    assert_eq!(backend.hits(), 0);
    echo(gw.get("/local/1").await).await;
    assert_eq!(backend.hits(), 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "denied", "ip_denied"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "ten", "ip_denied"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "guarded", "ip_denied"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "local", "ip_denied"),
        0.0,
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_policy_uses_the_right_most_untrusted_forwarded_entry() {
    let backend = Backend::start("b").await;
    let gw = start(&ip_config(&backend, "trusted_proxies: [127.0.0.1/32]")).await;
    let forwarded = |path: &str, xff: &str| {
        gw.client
            .get(gw.url(path))
            .header("x-forwarded-for", xff)
            .send()
    };
    echo(forwarded("/ten/1", "10.1.2.3").await.unwrap()).await;
    echo(forwarded("/ten/1", "192.0.2.7, 10.1.2.3").await.unwrap()).await;
    // 127.0.0.1 is a trusted proxy itself: skipped.
    echo(forwarded("/ten/1", "10.9.9.9, 127.0.0.1").await.unwrap()).await;
    assert_eq!(backend.hits(), 3);
    for xff in ["10.1.2.3, 192.0.2.7", "192.0.2.7"] {
        let resp = forwarded("/ten/1", xff).await.unwrap();
        assert_problem_without(resp, 403, "forbidden", &[], xff).await;
    }
    // No X-Forwarded-For: the client is the proxy, 127.0.0.1.
    assert_problem_without(gw.get("/ten/1").await, 403, "forbidden", &[], "no XFF").await;
    // Behind the trusted proxy, a client from elsewhere is not the denied 127.0.0.1.
    echo(forwarded("/denied/1", "10.1.2.3").await.unwrap()).await;
    let resp = forwarded("/denied/1", "10.1.2.3, 127.0.0.1").await.unwrap();
    echo(resp).await;
    assert_eq!(backend.hits(), 5);
    gw.stop().await;
}

fn cors_config(backend: &Backend) -> String {
    format!(
        r#"
        auth:
          providers:
            keys: {{ type: api_key }}
        consumers:
          - name: acme
            roles: [orders:read]
            api_keys: ["{ACME_KEY}"]
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: orders
            match: {{ prefix: /orders }}
            upstream: be
            auth: {{ providers: [keys], roles: [orders:read] }}
            cors: {{ origins: ["https://app.example.com"], methods: [GET, PUT], headers: [Authorization, X-Api-Key], expose_headers: [X-Request-Id], credentials: true, max_age: 10m }}
        "#,
        url = backend.url()
    )
}

const ORIGIN: &str = "https://app.example.com";

fn preflight(
    gw: &Gateway,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/orders/1"))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(h) = headers {
        req = req.header("access-control-request-headers", h);
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_by_weir_without_credentials() {
    let backend = Backend::start("b").await;
    let gw = start(&cors_config(&backend)).await;
    for headers in [
        Some("authorization"),
        Some("X-Api-Key, Authorization"),
        None,
    ] {
        let resp = preflight(&gw, ORIGIN, "PUT", headers).send().await.unwrap();
        assert_eq!(resp.status(), 204, "preflight with {headers:?}");
        let h = resp.headers();
        assert_eq!(all_values(h, "access-control-allow-origin"), ORIGIN);
        let methods = all_values(h, "access-control-allow-methods");
        assert!(list_contains(&methods, "PUT"), "{methods}");
        if headers.is_some() {
            let allowed = all_values(h, "access-control-allow-headers");
            assert!(list_contains(&allowed, "authorization"), "{allowed}");
        }
        assert_eq!(all_values(h, "access-control-max-age"), "600");
        assert_eq!(all_values(h, "access-control-allow-credentials"), "true");
        let vary = all_values(h, "vary");
        assert!(list_contains(&vary, "origin"), "Vary: {vary}");
        assert!(h.get("www-authenticate").is_none());
    }
    // Not allowed: another origin.
    for origin in [
        "https://evil.example.com",
        "https://app.example.com.evil.test",
        "null",
    ] {
        let resp = preflight(&gw, origin, "PUT", Some("authorization"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "preflight from {origin}");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }
    assert_eq!(backend.hits(), 0, "preflights never reach the backend");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_are_on_actual_responses_including_401() {
    let backend = Backend::start("b").await;
    let gw = start(&cors_config(&backend)).await;
    let get = |origin: &str, key: Option<&str>| {
        let mut req = gw.client.get(gw.url("/orders/1")).header("origin", origin);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };
    let check_allowed = |h: &reqwest::header::HeaderMap, what: &str| {
        assert_eq!(
            all_values(h, "access-control-allow-origin"),
            ORIGIN,
            "{what}"
        );
        let expose = all_values(h, "access-control-expose-headers");
        assert!(list_contains(&expose, "x-request-id"), "{what}: {expose}");
        assert_eq!(
            all_values(h, "access-control-allow-credentials"),
            "true",
            "{what}"
        );
        let vary = all_values(h, "vary");
        assert!(list_contains(&vary, "origin"), "{what}: Vary: {vary}");
    };
    let resp = get(ORIGIN, Some(ACME_KEY)).await.unwrap();
    check_allowed(resp.headers(), "200");
    let v = echo(resp).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("acme"));

    let resp = get(ORIGIN, None).await.unwrap();
    check_allowed(resp.headers(), "401");
    assert!(!www_authenticate(resp.headers()).is_empty());
    assert_unauthorized(resp, &["ApiKey"], &[], "CORS request without a key").await;

    // Another origin: no CORS grant, whatever the status.
    for key in [Some(ACME_KEY), None] {
        let resp = get("https://evil.example.com", key).await.unwrap();
        assert!(
            resp.headers().get("access-control-allow-origin").is_none(),
            "a disallowed origin was granted: {:?}",
            resp.headers()
        );
        assert!(
            resp.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
    }
    gw.stop().await;
}
