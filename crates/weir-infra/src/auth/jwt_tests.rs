//! JWT verification against real keys: RSA, ECDSA P-256 and Ed25519 pairs generated with
//! aws-lc-rs, tokens minted with jsonwebtoken, JWKS served by an in-process HTTP server.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use weir_domain::auth::Secret;

use super::*;
use crate::auth::test_server::{TestServer, serve};

fn pem(tag: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
        lines.join("\n")
    )
}

struct Pair {
    signing: EncodingKey,
    public_pem: String,
    jwk: Value,
}

fn rsa() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&kp).unwrap();
        let public = kp.public_key();
        let spki = AsDer::<PublicKeyX509Der>::as_der(public).unwrap();
        Pair {
            signing: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .unwrap(),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
            jwk: json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            }),
        }
    })
}

fn ec() -> Pair {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let pkcs8 = kp.to_pkcs8v1().unwrap();
    let spki = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
    let point = kp.public_key().as_ref();
    Pair {
        signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }),
    }
}

fn ed() -> Pair {
    let kp = Ed25519KeyPair::generate().unwrap();
    let pkcs8 = kp.to_pkcs8v1().unwrap();
    let spki = AsDer::<PublicKeyX509Der>::as_der(kp.public_key()).unwrap();
    Pair {
        signing: EncodingKey::from_ed_der(pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
        }),
    }
}

fn spec(key: JwtKey, algorithms: &[Algorithm]) -> JwtSpec {
    JwtSpec {
        key,
        algorithms: algorithms.to_vec(),
        issuer: Some("https://id.example".to_owned()),
        audiences: vec!["weir".to_owned()],
        roles_claim: Some("roles".to_owned()),
        leeway: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
    }
}

fn public(pair: &Pair, family: KeyFamily) -> JwtKey {
    JwtKey::PublicKey {
        path: "test.pem".to_owned(),
        pem: pair.public_pem.as_bytes().to_vec(),
        family,
    }
}

fn secret(s: &str) -> JwtKey {
    JwtKey::Secret(Secret::new(s.to_owned()))
}

fn now() -> i64 {
    i64::try_from(claims::unix_now()).unwrap()
}

fn good_claims() -> Value {
    json!({
        "sub": "alice",
        "iss": "https://id.example",
        "aud": ["other", "weir"],
        "exp": now() + 600,
        "nbf": now() - 10,
        "roles": ["orders:read", "orders:write"],
    })
}

fn mint(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &Value,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn tokens(spec: &JwtSpec) -> Tokens {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    Tokens::new("test", spec, 1).unwrap()
}

fn accepted(v: Verdict) -> Principal {
    match v {
        Verdict::Accepted(p) => p,
        Verdict::Rejected(f) => panic!("rejected: {f:?}"),
    }
}

fn rejected(f: AuthFailure) -> Verdict {
    Verdict::Rejected(f)
}

#[tokio::test]
async fn every_key_type_verifies_its_algorithms() {
    use jsonwebtoken::Algorithm as J;
    let hmac = tokens(&spec(
        secret("a-long-shared-secret-of-32-bytes!"),
        &[Algorithm::HS256],
    ));
    let t = mint(
        J::HS256,
        None,
        &good_claims(),
        &EncodingKey::from_secret(b"a-long-shared-secret-of-32-bytes!"),
    );
    let p = accepted(hmac.verify(&t).await);
    assert_eq!(&*p.name, "alice");
    assert_eq!(&*p.roles_header, "orders:read,orders:write");

    let rsa_tokens = tokens(&spec(
        public(rsa(), KeyFamily::Rsa),
        &[Algorithm::RS256, Algorithm::PS256],
    ));
    for alg in [J::RS256, J::PS256] {
        let t = mint(alg, None, &good_claims(), &rsa().signing);
        accepted(rsa_tokens.verify(&t).await);
    }

    let ec = ec();
    let ec_tokens = tokens(&spec(public(&ec, KeyFamily::Ec), &[Algorithm::ES256]));
    accepted(
        ec_tokens
            .verify(&mint(J::ES256, None, &good_claims(), &ec.signing))
            .await,
    );

    let ed = ed();
    let ed_tokens = tokens(&spec(public(&ed, KeyFamily::Ed), &[Algorithm::EdDSA]));
    accepted(
        ed_tokens
            .verify(&mint(J::EdDSA, None, &good_claims(), &ed.signing))
            .await,
    );

    // Another key of the same type does not verify.
    let other = ed_key_token();
    assert_eq!(
        ed_tokens.verify(&other).await,
        rejected(AuthFailure::Invalid)
    );
}

fn ed_key_token() -> String {
    mint(
        jsonwebtoken::Algorithm::EdDSA,
        None,
        &good_claims(),
        &ed().signing,
    )
}

#[tokio::test]
async fn alg_none_and_unlisted_algorithms_are_refused() {
    let t = tokens(&spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::RS256]));
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(good_claims().to_string());
    assert_eq!(
        t.verify(&format!("{head}.{body}.")).await,
        rejected(AuthFailure::Algorithm)
    );
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS1"}"#);
    assert_eq!(
        t.verify(&format!("{head}.{body}.sig")).await,
        rejected(AuthFailure::Algorithm)
    );
    // PS256 is RSA too, but this provider accepts only RS256.
    let ps = mint(
        jsonwebtoken::Algorithm::PS256,
        None,
        &good_claims(),
        &rsa().signing,
    );
    assert_eq!(t.verify(&ps).await, rejected(AuthFailure::Algorithm));
    // Garbage headers are malformed, not an algorithm problem.
    assert_eq!(
        t.verify("bm90IGpzb24.e30.sig").await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(t.verify("one-part").await, rejected(AuthFailure::Invalid));
    assert_eq!(t.verify("").await, rejected(AuthFailure::Missing));
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_rsa_public_key_is_refused() {
    // The confusion attack: sign HS256 with the public key's PEM text as the HMAC secret.
    let forged = mint(
        jsonwebtoken::Algorithm::HS256,
        None,
        &good_claims(),
        &EncodingKey::from_secret(rsa().public_pem.as_bytes()),
    );
    let only_rs = tokens(&spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::RS256]));
    assert_eq!(
        only_rs.verify(&forged).await,
        rejected(AuthFailure::Algorithm)
    );
    // Even when HS256 is (wrongly) listed too, the key's type decides.
    let both = tokens(&spec(
        public(rsa(), KeyFamily::Rsa),
        &[Algorithm::RS256, Algorithm::HS256],
    ));
    assert_eq!(both.verify(&forged).await, rejected(AuthFailure::Algorithm));
}

#[tokio::test]
async fn claims_are_checked() {
    use jsonwebtoken::Algorithm as J;
    let t = tokens(&spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::RS256]));
    let key = &rsa().signing;
    let with = |k: &str, v: Value| {
        let mut c = good_claims();
        c[k] = v;
        mint(J::RS256, None, &c, key)
    };
    let without = |k: &str| {
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove(k);
        mint(J::RS256, None, &c, key)
    };
    assert_eq!(
        t.verify(&with("exp", json!(now() - 60))).await,
        rejected(AuthFailure::Expired)
    );
    // Within the leeway (5 s) an expired token still passes.
    accepted(t.verify(&with("exp", json!(now() - 2))).await);
    assert_eq!(
        t.verify(&with("nbf", json!(now() + 60))).await,
        rejected(AuthFailure::NotYetValid)
    );
    assert_eq!(
        t.verify(&with("iss", json!("https://evil"))).await,
        rejected(AuthFailure::Issuer)
    );
    assert_eq!(
        t.verify(&without("iss")).await,
        rejected(AuthFailure::Issuer)
    );
    assert_eq!(
        t.verify(&with("aud", json!("elsewhere"))).await,
        rejected(AuthFailure::Audience)
    );
    assert_eq!(
        t.verify(&without("aud")).await,
        rejected(AuthFailure::Audience)
    );
    assert_eq!(
        t.verify(&without("exp")).await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(
        t.verify(&without("sub")).await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(
        t.verify(&with("sub", json!("a\nb"))).await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(
        t.verify(&with("roles", json!(["a,b"]))).await,
        rejected(AuthFailure::Invalid)
    );
    let p = accepted(t.verify(&with("roles", json!("x y"))).await);
    assert_eq!(&*p.roles_header, "x,y");
    let p = accepted(t.verify(&without("roles")).await);
    assert!(p.roles.is_empty());
}

#[tokio::test]
async fn tampered_and_oversized_tokens_are_invalid() {
    let t = tokens(&spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::RS256]));
    let good = mint(
        jsonwebtoken::Algorithm::RS256,
        None,
        &good_claims(),
        &rsa().signing,
    );
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = good_claims();
    evil["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(evil.to_string()),
        parts[2]
    );
    assert_eq!(t.verify(&tampered).await, rejected(AuthFailure::Invalid));
    let mut padded = good_claims();
    padded["pad"] = json!("x".repeat(MAX_TOKEN));
    let big = mint(
        jsonwebtoken::Algorithm::RS256,
        None,
        &padded,
        &rsa().signing,
    );
    assert!(big.len() > MAX_TOKEN);
    assert_eq!(t.verify(&big).await, rejected(AuthFailure::Invalid));
    let crit = {
        let mut h = Header::new(jsonwebtoken::Algorithm::RS256);
        h.crit = Some(vec!["exp-ext".to_owned()]);
        jsonwebtoken::encode(&h, &good_claims(), &rsa().signing).unwrap()
    };
    assert_eq!(t.verify(&crit).await, rejected(AuthFailure::Invalid));
}

#[tokio::test]
async fn verified_tokens_are_answered_from_the_cache() {
    let t = tokens(&spec(secret("s"), &[Algorithm::HS256]));
    let good = mint(
        jsonwebtoken::Algorithm::HS256,
        None,
        &good_claims(),
        &EncodingKey::from_secret(b"s"),
    );
    accepted(t.verify(&good).await);
    assert_eq!(t.verified.len(), 1);
    accepted(t.verify(&good).await);
    assert_eq!(t.verified.len(), 1);
    // A hit is answered without verifying: prove it with an entry no signature backs.
    let remember = |token: &str, exp: i64, nbf: Option<i64>| {
        let v = Verified {
            principal: Principal::new("cached", &[]),
            exp: u64::try_from(exp).unwrap(),
            nbf: nbf.map(|n| u64::try_from(n).unwrap()),
            generation: 0,
        };
        t.verified
            .insert(t.verified.key(token.as_bytes()), v, Duration::from_secs(60));
    };
    remember("not-a-token", now() + 60, None);
    assert_eq!(&*accepted(t.verify("not-a-token").await).name, "cached");
    // The time claims are checked again on a hit.
    remember("expired", now() - 60, None);
    assert_eq!(t.verify("expired").await, rejected(AuthFailure::Expired));
    remember("early", now() + 600, Some(now() + 60));
    assert_eq!(t.verify("early").await, rejected(AuthFailure::NotYetValid));
    // Failures are not cached.
    let before = t.verified.len();
    assert_eq!(t.verify("a.b.c").await, rejected(AuthFailure::Invalid));
    assert_eq!(t.verified.len(), before);
}

#[test]
fn bad_keys_fail_at_load_naming_the_file() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let bad = JwtKey::PublicKey {
        path: "keys/bad.pem".to_owned(),
        pem: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
        family: KeyFamily::Rsa,
    };
    let err = Tokens::new("corp", &spec(bad, &[Algorithm::RS256]), 1).unwrap_err();
    assert!(err.contains("keys/bad.pem"), "{err}");
    // An EC key declared as RSA does not load either.
    let ec = ec();
    let err = Tokens::new(
        "corp",
        &spec(public(&ec, KeyFamily::Rsa), &[Algorithm::RS256]),
        1,
    )
    .unwrap_err();
    assert!(err.contains("test.pem"), "{err}");
    // No listed algorithm fits the key.
    let err = Tokens::new(
        "corp",
        &spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::HS256]),
        1,
    )
    .unwrap_err();
    assert!(err.contains("none of the algorithms"), "{err}");
    let err = Tokens::new("corp", &spec(secret("s"), &[]), 1).unwrap_err();
    assert!(err.contains("no algorithms"), "{err}");
}

// ---- JWKS ----

/// Which document the JWKS server serves: 0 = key "k1", 1 = key "k2", 2 = HTTP 500.
struct JwksServer {
    server: TestServer,
    state: Arc<AtomicU8>,
}

async fn jwks_server() -> JwksServer {
    let mut k1 = rsa().jwk.clone();
    k1["kid"] = json!("k1");
    k1["use"] = json!("sig");
    let mut k2 = rsa().jwk.clone();
    k2["kid"] = json!("k2");
    let docs = [
        json!({"keys": [k1]}).to_string(),
        json!({"keys": [k2]}).to_string(),
    ];
    let state = Arc::new(AtomicU8::new(0));
    let s = Arc::clone(&state);
    let server = serve(Duration::from_millis(20), move |seen| {
        assert_eq!(seen.uri.path(), "/jwks");
        match s.load(Ordering::SeqCst) {
            n @ (0 | 1) => (200, docs[usize::from(n)].clone()),
            _ => (500, "{}".to_owned()),
        }
    })
    .await;
    JwksServer { server, state }
}

fn jwks_spec(url: String, refresh: Duration) -> JwtSpec {
    spec(
        JwtKey::Jwks {
            url,
            refresh,
            ca_pem: None,
        },
        &[Algorithm::RS256, Algorithm::ES256],
    )
}

fn rs256(kid: Option<&str>) -> String {
    mint(
        jsonwebtoken::Algorithm::RS256,
        kid,
        &good_claims(),
        &rsa().signing,
    )
}

#[tokio::test]
async fn jwks_keys_are_fetched_once_and_selected_by_kid() {
    let srv = jwks_server().await;
    let t = tokens(&jwks_spec(
        srv.server.url("/jwks"),
        Duration::from_secs(300),
    ));
    assert_eq!(srv.server.hits(), 0, "no I/O before first use");
    accepted(t.verify(&rs256(Some("k1"))).await);
    assert_eq!(srv.server.hits(), 1);
    // A lone key also serves a token without kid.
    accepted(t.verify(&rs256(None)).await);
    assert_eq!(srv.server.hits(), 1);
    // An ES256 token naming the RSA key: wrong type, never verified.
    let ec = ec();
    let es = mint(
        jsonwebtoken::Algorithm::ES256,
        Some("k1"),
        &good_claims(),
        &ec.signing,
    );
    assert_eq!(t.verify(&es).await, rejected(AuthFailure::Algorithm));
    // An unknown kid fetches again only if the last fetch started 10 s ago or more.
    assert_eq!(
        t.verify(&rs256(Some("nope"))).await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(srv.server.hits(), 1);
    jwks_of(&t).age_last_fetch(Duration::from_secs(11));
    assert_eq!(
        t.verify(&rs256(Some("nope"))).await,
        rejected(AuthFailure::Invalid)
    );
    assert_eq!(srv.server.hits(), 2);
    // Within 10 s further unknown kids fetch nothing, however many arrive at once.
    let storm: Vec<String> = (0..20)
        .map(|i| rs256(Some(&format!("random-{i}"))))
        .collect();
    let t = Arc::new(t);
    let tasks: Vec<_> = storm
        .into_iter()
        .map(|tok| {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.verify(&tok).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), rejected(AuthFailure::Invalid));
    }
    assert_eq!(srv.server.hits(), 2);
}

#[tokio::test]
async fn concurrent_first_uses_share_one_fetch() {
    let srv = jwks_server().await;
    let t = Arc::new(tokens(&jwks_spec(
        srv.server.url("/jwks"),
        Duration::from_secs(300),
    )));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.verify(&rs256(Some("k1"))).await })
        })
        .collect();
    for task in tasks {
        accepted(task.await.unwrap());
    }
    assert_eq!(srv.server.hits(), 1);
}

#[tokio::test]
async fn rotation_is_picked_up_in_the_background_and_failures_keep_the_last_keys() {
    let srv = jwks_server().await;
    let t = tokens(&jwks_spec(
        srv.server.url("/jwks"),
        Duration::from_millis(100),
    ));
    let old = rs256(Some("k1"));
    accepted(t.verify(&old).await);
    let generation = jwks_of(&t);
    let first = generation.generation();

    // The IdP fails: after a refresh attempt the old keys still serve.
    srv.state.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    accepted(t.verify(&old).await); // starts the background refresh
    wait_for(|| srv.server.hits() >= 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    accepted(t.verify(&rs256(Some("k1"))).await);
    assert_eq!(generation.generation(), first);

    // The IdP rotates to k2: a background refresh brings it and bumps the generation, so
    // the cached k1 token is verified again and refused.
    srv.state.store(1, Ordering::SeqCst);
    let start = Instant::now();
    while generation.generation() == first {
        assert!(start.elapsed() < Duration::from_secs(5), "no refresh");
        let _ = t.verify(&old).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    accepted(t.verify(&rs256(Some("k2"))).await);
    assert_eq!(t.verify(&old).await, rejected(AuthFailure::Invalid));
}

#[tokio::test]
async fn an_unreachable_jwks_fails_closed() {
    let srv = jwks_server().await;
    srv.state.store(2, Ordering::SeqCst);
    let t = tokens(&jwks_spec(
        srv.server.url("/jwks"),
        Duration::from_secs(300),
    ));
    assert_eq!(
        t.verify(&rs256(Some("k1"))).await,
        rejected(AuthFailure::Unavailable)
    );
    // Nothing listens here.
    let addr = crate::test_net::dead_addr();
    let t = tokens(&jwks_spec(
        format!("http://{addr}/jwks"),
        Duration::from_secs(300),
    ));
    assert_eq!(
        t.verify(&rs256(Some("k1"))).await,
        rejected(AuthFailure::Unavailable)
    );
    // A slow IdP: the timeout applies.
    let slow = serve(Duration::from_secs(5), |_| (200, "{}".to_owned())).await;
    let mut s = jwks_spec(slow.url("/jwks"), Duration::from_secs(300));
    s.timeout = Duration::from_millis(100);
    let t = tokens(&s);
    let start = Instant::now();
    assert_eq!(
        t.verify(&rs256(Some("k1"))).await,
        rejected(AuthFailure::Unavailable)
    );
    assert!(start.elapsed() < Duration::from_secs(2));
}

fn jwks_of(t: &Tokens) -> Arc<Jwks> {
    match &t.keys {
        Keys::Jwks(j) => Arc::clone(j),
        Keys::Static { .. } => unreachable!(),
    }
}

async fn wait_for(cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Not a test of behaviour: prints what a cached verify costs against an uncached RS256
/// one. Run with `cargo test -p weir-infra --release jwt_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "timing, not behaviour"]
async fn jwt_cost() {
    let t = tokens(&spec(public(rsa(), KeyFamily::Rsa), &[Algorithm::RS256]));
    let tokens: Vec<String> = (0..200)
        .map(|i| {
            let mut c = good_claims();
            c["jti"] = json!(i);
            mint(jsonwebtoken::Algorithm::RS256, None, &c, &rsa().signing)
        })
        .collect();
    let start = Instant::now();
    for tok in &tokens {
        accepted(t.verify(tok).await);
    }
    let uncached = start.elapsed() / 200;
    let start = Instant::now();
    for _ in 0..50 {
        for tok in &tokens {
            accepted(t.verify(tok).await);
        }
    }
    let cached = start.elapsed() / (200 * 50);
    println!("RS256 uncached: {uncached:?} per token; cached: {cached:?} per token");
}
