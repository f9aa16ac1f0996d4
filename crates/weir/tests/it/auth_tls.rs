//! HTTPS identity providers: weir fetches a JWKS over real TLS (a CA and a certificate for
//! 127.0.0.1 made at test time), trusting the provider's `ca_file`. A provider whose
//! certificate that CA did not sign is unavailable: weir fails closed with 503
//! `auth_unavailable` and nothing reaches the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::common::idp::{
    AUDIENCE, ISSUER, Idp, SigningKey, TestCa, assert_problem_without, auth_failures,
    claims_with_roles, unique,
};
use crate::common::{Backend, Gateway, TempDir, echo, echoed_header, start};

/// A provider `corp` reading its keys from `jwks_url`, trusting `ca_file`; route `orders`
/// (`/orders`) needs it.
fn tls_config(backend: &Backend, jwks_url: &str, ca_file: &Path) -> String {
    format!(
        r#"
        auth:
          providers:
            corp: {{ type: jwt, jwks_url: "{jwks_url}", ca_file: "{ca}", issuer: "{ISSUER}", audiences: [{AUDIENCE}], roles_claim: roles, timeout: 2s }}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: orders
            match: {{ prefix: /orders }}
            upstream: be
            auth: {{ providers: [corp] }}
        "#,
        ca = ca_file.display(),
        url = backend.url()
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

/// The IdP's own CA in `ca_file`: the JWKS is fetched over TLS and a valid RS256 token
/// passes, naming its subject upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_over_https_is_trusted_through_ca_file() {
    let ca = TestCa::new();
    let key = SigningKey::rsa(&format!("rsa-{}", unique()), Algorithm::RS256);
    let idp = Idp::start_tls(ca.server_config(&["127.0.0.1", "localhost"])).await;
    idp.set_keys(&[&key]);
    assert!(idp.jwks_url().starts_with("https://127.0.0.1:"));
    let dir = TempDir::new("auth-tls");
    let ca_file = dir.write("idp-ca.pem", &ca.pem());
    let backend = Backend::start("b").await;
    let gw = start(&tls_config(&backend, &idp.jwks_url(), &ca_file)).await;

    let token = key.sign(&claims_with_roles("alice", &json!(["orders:read"])));
    let v = echo(bearer(&gw, "/orders/7", &token).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("alice"), "{v}");
    assert_eq!(echoed_header(&v, "x-consumer-roles"), Some("orders:read"));
    let again = key.sign(&claims_with_roles("bob", &json!([])));
    let v = echo(bearer(&gw, "/orders/8", &again).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("bob"), "{v}");
    assert_eq!(
        idp.jwks_fetches(),
        1,
        "one fetch over TLS serves both tokens"
    );
    assert_eq!(backend.hits(), 2);
    gw.stop().await;
}

/// `ca_file` holds another CA: the IdP's certificate does not verify, no JWKS is ever
/// fetched, and every request with a token is 503 `auth_unavailable` (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_whose_certificate_another_ca_signed_fails_closed_with_503() {
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let key = SigningKey::rsa(&format!("rsa-{}", unique()), Algorithm::RS256);
    let idp = Idp::start_tls(ca.server_config(&["127.0.0.1", "localhost"])).await;
    idp.set_keys(&[&key]);
    let dir = TempDir::new("auth-tls-stranger");
    let ca_file = dir.write("other-ca.pem", &stranger.pem());
    let backend = Backend::start("b").await;
    let gw = start(&tls_config(&backend, &idp.jwks_url(), &ca_file)).await;

    let token = key.sign(&claims_with_roles("alice", &json!(["orders:read"])));
    for _ in 0..3 {
        let resp = bearer(&gw, "/orders/7", &token).await;
        assert_problem_without(resp, 503, "auth_unavailable", &[&token], "untrusted IdP").await;
    }
    assert_eq!(backend.hits(), 0, "nothing reached the backend");
    assert_eq!(
        idp.jwks_fetches(),
        0,
        "no request over an untrusted connection"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "unavailable"),
        3.0,
        "{metrics}"
    );
    gw.stop().await;
}
