//! OAuth2 token introspection (issue 3; RFC 7662; contract §3 `auth`, §5 `auth_unavailable`):
//! a test endpoint that checks weir's client credentials, answers active or inactive, fails,
//! hangs or goes away; answers cached; weir failing closed when it cannot ask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use crate::common::idp::{
    CLIENT_ID, CLIENT_SECRET, Idp, Introspection, assert_problem_without, assert_unauthorized,
    auth_failures, basic, now, unique,
};
use crate::common::{Backend, DEADLINE, Gateway, echo, echoed_header, eventually, start};

/// Provider `idp` asking `idp`'s endpoint (roles from `scope`, `timeout` as given); routes
/// `orders` (`/orders`, role `orders:read`), `write` (`/write`, both roles), `open` (`/`).
fn oauth_config(backend: &Backend, idp: &Idp, timeout: &str) -> String {
    format!(
        r#"
        auth:
          providers:
            idp: {{ type: oauth2, introspection_url: "{url}", client_id: {CLIENT_ID}, client_secret: "{CLIENT_SECRET}", cache_ttl: 60s, negative_ttl: 10s, roles_claim: scope, timeout: {timeout} }}
        upstreams:
          be:
            targets: [{{ url: "{be}" }}]
        routes:
          - name: orders
            match: {{ prefix: /orders }}
            upstream: be
            auth: {{ providers: [idp], roles: [orders:read] }}
          - name: write
            match: {{ prefix: /write }}
            upstream: be
            auth: {{ providers: [idp], roles: [orders:read, orders:write] }}
          - name: open
            match: {{ prefix: / }}
            upstream: be
        "#,
        url = idp.introspection_url(),
        be = backend.url()
    )
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request through weir")
}

fn token(tag: &str) -> String {
    format!("opaque-{tag}-{}", unique())
}

/// Sanity of the test endpoint itself, independent of weir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_self_check_introspection_checks_the_client_answers_and_counts() {
    let idp = Idp::start().await;
    let alice = token("alice");
    idp.activate(&alice, "alice", "orders:read orders:write");
    let client = crate::common::client();
    let ask = |auth: String, body: String| {
        client
            .post(idp.introspection_url())
            .header("authorization", auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let good_auth = basic(CLIENT_ID, CLIENT_SECRET);
    let resp = ask(
        good_auth.clone(),
        format!("token={alice}&token_type_hint=access_token"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["sub"], "alice");
    assert_eq!(v["scope"], "orders:read orders:write");
    assert!(v["exp"].as_u64().unwrap() > now());
    let v: serde_json::Value = ask(good_auth.clone(), "token=nope".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"active": false}));
    assert_eq!(idp.introspections(), 2);
    assert_eq!(idp.asked(), vec![alice.clone(), "nope".to_owned()]);
    let resp = ask(basic(CLIENT_ID, "wrong"), format!("token={alice}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(idp.refused(), 1);
    assert_eq!(idp.introspections(), 2);

    idp.set_introspection(Introspection::Fail);
    let resp = ask(good_auth.clone(), format!("token={alice}"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    idp.set_introspection(Introspection::Hang);
    let hung = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        ask(good_auth.clone(), format!("token={alice}")),
    )
    .await;
    assert!(hung.is_err(), "a hanging endpoint does not answer");
    idp.go_away();
    eventually("the endpoint to be gone", DEADLINE, || async {
        crate::common::client()
            .post(idp.introspection_url())
            .body("token=x")
            .send()
            .await
            .is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_token_is_accepted_with_roles_from_its_scope_and_cached() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let alice = token("alice");
    idp.activate(&alice, "alice", "orders:read orders:write");

    let resp = gw
        .client
        .get(gw.url("/orders/1?x=1"))
        .bearer_auth(&alice)
        .header("x-consumer", "mallory")
        .header("x-consumer-roles", "admin")
        .send()
        .await
        .unwrap();
    let v = echo(resp).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("alice"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write"),
        "{v}"
    );
    assert_eq!(v["path"], "/orders/1?x=1");
    assert_eq!(idp.introspections(), 1);
    assert_eq!(
        idp.refused(),
        0,
        "weir authenticates with Basic client_id:client_secret and a form `token`"
    );
    assert_eq!(idp.asked(), vec![alice.clone()]);

    // Within cache_ttl the endpoint is not asked again.
    for _ in 0..3 {
        let v = echo(bearer(&gw, "/orders/2", &alice).await).await;
        assert_eq!(echoed_header(&v, "x-consumer"), Some("alice"));
    }
    let v = echo(bearer(&gw, "/write/2", &alice).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("alice"));
    assert_eq!(
        idp.introspections(),
        1,
        "a cached answer was asked for again"
    );

    // The client secret and the token are nowhere to be seen.
    let config = gw
        .client
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !config.contains(CLIENT_SECRET),
        "GET /config shows client_secret: {config}"
    );
    assert!(config.contains("***"), "{config}");
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains(CLIENT_SECRET) && !metrics.contains(&alice),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_token_is_401_and_its_answer_is_cached_briefly() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let revoked = token("revoked");
    for _ in 0..3 {
        assert_unauthorized(
            bearer(&gw, "/orders/1", &revoked).await,
            &["Bearer"],
            &[&revoked, CLIENT_SECRET],
            "inactive token",
        )
        .await;
    }
    assert_eq!(
        idp.introspections(),
        1,
        "an inactive answer is reused within negative_ttl"
    );
    // No token: nothing to ask.
    let resp = gw.client.get(gw.url("/orders/1")).send().await.unwrap();
    assert_unauthorized(resp, &["Bearer"], &[], "no token").await;
    assert_eq!(idp.introspections(), 1);
    assert_eq!(backend.hits(), 0);
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "inactive"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "orders", "missing"),
        1.0,
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_without_a_required_role_is_403() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let reader = token("reader");
    idp.activate(&reader, "rita", "orders:read profile");
    assert_problem_without(
        bearer(&gw, "/write/1", &reader).await,
        403,
        "forbidden",
        &[&reader],
        "scope lacks orders:write",
    )
    .await;
    assert_eq!(backend.hits(), 0);
    let v = echo(bearer(&gw, "/orders/1", &reader).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("rita"));
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,profile")
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "write", "forbidden"),
        1.0,
        "{metrics}"
    );
    gw.stop().await;
}

/// An active answer is never reused past the token's own `exp`, even within `cache_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_answer_is_not_reused_past_the_tokens_exp() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let short = token("short");
    idp.register(
        &short,
        json!({ "active": true, "sub": "sam", "scope": "orders:read", "exp": now() + 3 }),
    );
    echo(bearer(&gw, "/orders/1", &short).await).await;
    assert_eq!(idp.introspections(), 1);
    // The endpoint now says what it would say after expiry.
    idp.deactivate(&short);
    eventually(
        "the expired token to be refused well before cache_ttl (60 s)",
        DEADLINE,
        || async { bearer(&gw, "/orders/1", &short).await.status() == 401 },
    )
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_fails_closed_with_503() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let t = token("t");
    idp.activate(&t, "tess", "orders:read");
    idp.set_introspection(Introspection::Fail);
    for _ in 0..2 {
        assert_problem_without(
            bearer(&gw, "/orders/1", &t).await,
            503,
            "auth_unavailable",
            &[&t, CLIENT_SECRET],
            "introspection answers 500",
        )
        .await;
    }
    assert_eq!(
        backend.hits(),
        0,
        "fail closed: nothing reaches the backend"
    );
    assert!(idp.introspections() >= 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "unavailable"),
        2.0,
        "{metrics}"
    );

    // Once the endpoint answers again, so does weir.
    idp.set_introspection(Introspection::Answer);
    let fresh = token("fresh");
    idp.activate(&fresh, "fred", "orders:read");
    let v = echo(bearer(&gw, "/orders/1", &fresh).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("fred"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_times_out_and_fails_closed() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "300ms")).await;
    let t = token("t");
    idp.activate(&t, "tess", "orders:read");
    idp.set_introspection(Introspection::Hang);
    let resp = gw
        .client
        .get(gw.url("/orders/1"))
        .bearer_auth(&t)
        .timeout(DEADLINE)
        .send()
        .await
        .expect("weir answers before the client gives up");
    assert_problem_without(resp, 503, "auth_unavailable", &[&t], "introspection hangs").await;
    assert_eq!(backend.hits(), 0);
    gw.stop().await;
}

/// The endpoint goes away (its server dropped, pooled connections closed): tokens weir has not
/// seen get 503; an answer still cached keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_endpoint_fails_closed() {
    let idp = Idp::start().await;
    let backend = Backend::start("b").await;
    let gw = start(&oauth_config(&backend, &idp, "2s")).await;
    let known = token("known");
    let unseen = token("unseen");
    idp.activate(&known, "kim", "orders:read");
    idp.activate(&unseen, "uma", "orders:read");
    echo(bearer(&gw, "/orders/1", &known).await).await;
    idp.go_away();
    for _ in 0..2 {
        assert_problem_without(
            bearer(&gw, "/orders/1", &unseen).await,
            503,
            "auth_unavailable",
            &[&unseen],
            "introspection endpoint gone",
        )
        .await;
    }
    assert_eq!(
        backend.hits(),
        1,
        "only the first request reached the backend"
    );
    let v = echo(bearer(&gw, "/orders/1", &known).await).await;
    assert_eq!(
        echoed_header(&v, "x-consumer"),
        Some("kim"),
        "a cached answer still holds"
    );
    gw.stop().await;
}
