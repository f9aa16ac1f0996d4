//! `https://` identity providers over real TLS: a CA and server certificates made at test
//! time, JWKS and introspection endpoints served by in-process rustls servers, and the
//! failures (unknown CA, wrong host) that must fail closed and say why in the log.

use crate::test_logs::Logs;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use weir_domain::auth::{
    Algorithm, AuthFailure, IntrospectionSpec, JwtKey, JwtSpec, Secret, Verdict,
};

use super::claims::unix_now;
use super::introspect::Introspector;
use super::jwt::Tokens;
use super::test_server::{TestServer, serve_tls};
use super::test_tls::TestCa;

/// The names the test servers' certificates are usually for.
const LOCAL: &[&str] = &["127.0.0.1", "localhost"];

/// An Ed25519 signing key and its public JWK (`kid: k1`).
fn ed25519() -> (EncodingKey, serde_json::Value) {
    let pair = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig", "alg": "EdDSA",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    });
    (EncodingKey::from_ed_der(pkcs8.as_ref()), jwk)
}

fn mint(key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".to_owned());
    let claims = json!({ "sub": sub, "exp": unix_now() + 300 });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn jwks_tokens(url: String, ca: &TestCa) -> Tokens {
    let spec = JwtSpec {
        key: JwtKey::Jwks {
            url,
            refresh: Duration::from_secs(300),
            ca_pem: Some(ca.pem().into_bytes()),
        },
        algorithms: vec![Algorithm::EdDSA],
        issuer: None,
        audiences: vec![],
        roles_claim: None,
        leeway: Duration::ZERO,
        timeout: Duration::from_secs(2),
    };
    Tokens::new("corp", &spec, 1).unwrap()
}

/// A JWKS endpoint over TLS with `config`'s certificate.
async fn jwks_server(config: Arc<rustls::ServerConfig>, jwk: serde_json::Value) -> TestServer {
    let doc = json!({ "keys": [jwk] }).to_string();
    serve_tls(Duration::ZERO, config, move |_| (200, doc.clone())).await
}

fn introspector(url: String, ca: &TestCa) -> Introspector {
    let spec = IntrospectionSpec {
        url,
        ca_pem: Some(ca.pem().into_bytes()),
        client_id: "weir".to_owned(),
        client_secret: Secret::new("client-secret-9f2".to_owned()),
        cache_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(10),
        roles_claim: Some("scope".to_owned()),
        timeout: Duration::from_secs(2),
    };
    Introspector::new("idp", &spec, 1).unwrap()
}

fn name_of(v: Verdict) -> String {
    match v {
        Verdict::Accepted(p) => p.name.to_string(),
        Verdict::Rejected(f) => panic!("rejected: {f:?}"),
    }
}

#[tokio::test]
async fn an_https_jwks_checked_against_ca_file_verifies_tokens() {
    let ca = TestCa::new();
    let (key, jwk) = ed25519();
    let srv = jwks_server(ca.server_config(LOCAL), jwk).await;
    assert!(srv.url("/jwks").starts_with("https://127.0.0.1:"));
    let tokens = jwks_tokens(srv.url("/jwks"), &ca);
    assert_eq!(name_of(tokens.verify(&mint(&key, "alice")).await), "alice");
    assert_eq!(name_of(tokens.verify(&mint(&key, "bob")).await), "bob");
    assert_eq!(srv.hits(), 1, "one fetch serves both tokens");

    // By name too: the certificate is for localhost as well.
    let tokens = jwks_tokens(format!("https://localhost:{}/jwks", srv.addr.port()), &ca);
    assert_eq!(name_of(tokens.verify(&mint(&key, "carol")).await), "carol");
}

#[tokio::test]
async fn https_introspection_works_and_reuses_its_connection() {
    let ca = TestCa::new();
    let srv = serve_tls(Duration::ZERO, ca.server_config(LOCAL), |seen| {
        assert_eq!(seen.uri.path(), "/introspect");
        let body = std::str::from_utf8(&seen.body).unwrap();
        let sub = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("token=tok-"))
            .unwrap_or_default();
        (200, json!({ "active": true, "sub": sub }).to_string())
    })
    .await;
    let idp = introspector(srv.url("/introspect"), &ca);
    assert_eq!(name_of(idp.verify("tok-alice").await), "alice");
    assert_eq!(name_of(idp.verify("tok-bob").await), "bob");
    assert_eq!(srv.hits(), 2);
    assert_eq!(
        srv.connections(),
        1,
        "the second call reuses the TLS connection"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_closed_and_the_log_says_why() {
    let logs = Logs::capture();
    let ours = TestCa::new();
    let theirs = TestCa::new();
    let (key, jwk) = ed25519();
    let srv = jwks_server(theirs.server_config(LOCAL), jwk).await;
    let tokens = jwks_tokens(srv.url("/jwks"), &ours);
    let token = mint(&key, "alice");
    for _ in 0..2 {
        assert_eq!(
            tokens.verify(&token).await,
            Verdict::Rejected(AuthFailure::Unavailable)
        );
    }
    assert_eq!(
        srv.hits(),
        0,
        "nothing was asked over an untrusted connection"
    );

    let idp = introspector(srv.url("/introspect"), &ours);
    assert_eq!(
        idp.verify("tok-secret-1").await,
        Verdict::Rejected(AuthFailure::Unavailable)
    );
    let text = logs.text();
    assert_eq!(
        text.matches("invalid peer certificate: UnknownIssuer")
            .count(),
        2,
        "once per provider, not per request: {text}"
    );
    assert!(text.contains("provider=\"corp\""), "{text}");
    assert!(text.contains("provider=\"idp\""), "{text}");
    for secret in [token.as_str(), "tok-secret-1", "client-secret-9f2"] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_fails_closed() {
    let logs = Logs::capture();
    let ca = TestCa::new();
    let (key, jwk) = ed25519();
    let srv = jwks_server(ca.server_config(&["idp.other.test"]), jwk).await;
    let tokens = jwks_tokens(srv.url("/jwks"), &ca);
    assert_eq!(
        tokens.verify(&mint(&key, "alice")).await,
        Verdict::Rejected(AuthFailure::Unavailable)
    );
    assert_eq!(srv.hits(), 0);
    let text = logs.text();
    assert!(
        text.contains("invalid peer certificate: certificate not valid for name \"127.0.0.1\""),
        "the log names the certificate problem and the host: {text}"
    );
}
