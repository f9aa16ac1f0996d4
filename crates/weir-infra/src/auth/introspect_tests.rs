//! Token introspection against an in-process endpoint.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;
use weir_domain::auth::Secret;

use super::*;
use crate::auth::test_server::{TestServer, serve};

fn spec(url: String) -> IntrospectionSpec {
    IntrospectionSpec {
        url,
        ca_pem: None,
        client_id: "weir gw".to_owned(),
        client_secret: Secret::new("p@ss:word".to_owned()),
        cache_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(10),
        roles_claim: Some("scope".to_owned()),
        timeout: Duration::from_secs(2),
    }
}

fn now() -> u64 {
    claims::unix_now()
}

/// An endpoint answering from a table of token → JSON answer; unknown tokens are inactive.
async fn endpoint(delay: Duration, answers: Vec<(&'static str, Value)>) -> TestServer {
    serve(delay, move |seen| {
        assert_eq!(seen.method, http::Method::POST);
        assert_eq!(seen.uri.path(), "/introspect");
        let body = std::str::from_utf8(&seen.body).unwrap();
        let token = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or_default();
        let answer = answers
            .iter()
            .find(|(t, _)| *t == token)
            .map_or_else(|| json!({"active": false}), |(_, a)| a.clone());
        (200, answer.to_string())
    })
    .await
}

fn introspector(spec: &IntrospectionSpec) -> Introspector {
    Introspector::new("idp", spec, 1).unwrap()
}

#[tokio::test]
async fn the_request_follows_rfc_7662() {
    let seen = Arc::new(Mutex::new(None));
    let s = Arc::clone(&seen);
    let srv = serve(Duration::ZERO, move |req| {
        *s.lock().unwrap() = Some((
            req.headers.clone(),
            String::from_utf8(req.body.to_vec()).unwrap(),
        ));
        (200, json!({"active": true, "sub": "alice"}).to_string())
    })
    .await;
    let i = introspector(&spec(srv.url("/introspect?realm=a")));
    accepted(i.verify("tok/en+=&?").await);
    let (headers, body) = seen.lock().unwrap().take().unwrap();
    assert_eq!(
        body,
        "token=tok%2Fen%2B%3D%26%3F&token_type_hint=access_token"
    );
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(headers["accept"], "application/json");
    assert_eq!(headers["host"], srv.addr.to_string().as_str());
    let expected = format!("Basic {}", STANDARD.encode("weir%20gw:p%40ss%3Aword"));
    assert_eq!(headers["authorization"], expected.as_str());
    assert!(
        !format!("{i:?}").contains("Basic"),
        "credentials must not print"
    );
}

fn accepted(v: Verdict) -> Principal {
    match v {
        Verdict::Accepted(p) => p,
        Verdict::Rejected(f) => panic!("rejected: {f:?}"),
    }
}

#[tokio::test]
async fn answers_become_verdicts_and_are_cached() {
    let srv = endpoint(
        Duration::ZERO,
        vec![
            ("alice", json!({"active": true, "sub": "alice", "scope": "orders:read orders:write", "exp": now() + 600})),
            ("svc", json!({"active": true, "client_id": "billing"})),
            ("old", json!({"active": true, "sub": "x", "exp": now() - 5})),
            ("anon", json!({"active": true, "scope": "a"})),
            ("evil", json!({"active": true, "sub": "x", "scope": ["a,b"]})),
        ],
    )
    .await;
    let i = introspector(&spec(srv.url("/introspect")));
    let p = accepted(i.verify("alice").await);
    assert_eq!(&*p.name, "alice");
    assert_eq!(&*p.roles_header, "orders:read,orders:write");
    assert_eq!(&*accepted(i.verify("svc").await).name, "billing");
    assert_eq!(
        i.verify("old").await,
        Verdict::Rejected(AuthFailure::Expired)
    );
    assert_eq!(
        i.verify("revoked").await,
        Verdict::Rejected(AuthFailure::Inactive)
    );
    assert_eq!(
        i.verify("anon").await,
        Verdict::Rejected(AuthFailure::Invalid)
    );
    assert_eq!(
        i.verify("evil").await,
        Verdict::Rejected(AuthFailure::Invalid)
    );
    assert_eq!(i.verify("").await, Verdict::Rejected(AuthFailure::Missing));
    assert_eq!(srv.hits(), 6);
    // Active, inactive and expired answers are reused; malformed identities are not.
    accepted(i.verify("alice").await);
    accepted(i.verify("svc").await);
    assert_eq!(
        i.verify("revoked").await,
        Verdict::Rejected(AuthFailure::Inactive)
    );
    assert_eq!(
        i.verify("old").await,
        Verdict::Rejected(AuthFailure::Expired)
    );
    assert_eq!(srv.hits(), 6);
    assert_eq!(
        i.verify("anon").await,
        Verdict::Rejected(AuthFailure::Invalid)
    );
    assert_eq!(srv.hits(), 7);
    let big = "x".repeat(MAX_TOKEN + 1);
    assert_eq!(
        i.verify(&big).await,
        Verdict::Rejected(AuthFailure::Invalid)
    );
    assert_eq!(srv.hits(), 7);
}

#[test]
fn an_active_answer_lives_until_exp_or_cache_ttl() {
    let i = Introspector::new("idp", &spec("http://127.0.0.1:1/".to_owned()), 1).unwrap();
    let claims = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let (_, ttl) = i
        .judge(
            &claims(json!({"active": true, "sub": "a", "exp": 1030})),
            1000,
        )
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(30));
    let (_, ttl) = i
        .judge(
            &claims(json!({"active": true, "sub": "a", "exp": 9000})),
            1000,
        )
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(60));
    let (_, ttl) = i
        .judge(&claims(json!({"active": true, "sub": "a"})), 1000)
        .unwrap();
    assert_eq!(ttl, Duration::from_secs(60));
    let (_, ttl) = i.judge(&claims(json!({"active": false})), 1000).unwrap();
    assert_eq!(ttl, Duration::from_secs(10));
}

#[tokio::test]
async fn an_endpoint_that_cannot_answer_fails_closed_and_is_asked_again() {
    let unavailable = Verdict::Rejected(AuthFailure::Unavailable);
    for (status, body) in [
        (500, "{}"),
        (200, "not json"),
        (200, r#"{"sub":"a"}"#),
        (200, r#"{"active":"yes"}"#),
    ] {
        let srv = serve(Duration::ZERO, move |_| (status, body.to_owned())).await;
        let i = introspector(&spec(srv.url("/introspect")));
        assert_eq!(i.verify("t").await, unavailable, "{status} {body}");
        assert_eq!(i.verify("t").await, unavailable);
        assert_eq!(srv.hits(), 2, "failures are not cached");
    }
    let addr = crate::test_net::dead_addr();
    let i = introspector(&spec(format!("http://{addr}/introspect")));
    assert_eq!(i.verify("t").await, unavailable);

    let slow = serve(Duration::from_secs(5), |_| {
        (200, r#"{"active":true,"sub":"a"}"#.to_owned())
    })
    .await;
    let mut s = spec(slow.url("/introspect"));
    s.timeout = Duration::from_millis(100);
    let i = introspector(&s);
    let start = Instant::now();
    assert_eq!(i.verify("t").await, unavailable);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn concurrent_requests_for_one_token_share_one_call() {
    let srv = endpoint(
        Duration::from_millis(100),
        vec![("t", json!({"active": true, "sub": "alice"}))],
    )
    .await;
    let i = introspector(&spec(srv.url("/introspect")));
    let (a, b, c, d) = tokio::join!(
        i.verify("t"),
        i.verify("t"),
        i.verify("t"),
        i.verify("other")
    );
    for v in [a, b, c] {
        assert_eq!(&*accepted(v).name, "alice");
    }
    assert_eq!(d, Verdict::Rejected(AuthFailure::Inactive));
    assert_eq!(srv.hits(), 2);
    assert!(i.in_flight().is_empty());
}
