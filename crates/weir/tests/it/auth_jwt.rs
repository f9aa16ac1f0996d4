//! JWT authentication (issue 3; contract §3 `auth`, §4, §5, §7): tokens minted with real
//! RSA, ECDSA, Ed25519 and HMAC keys, a JWKS served by a test identity provider that rotates
//! its keys, and attack tokens, none of which may reach the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::future::join_all;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Value, json};

use crate::common::idp::{
    AUDIENCE, ISSUER, Idp, SigningKey, alg_none_token, assert_problem_without, assert_unauthorized,
    auth_failures, claims, claims_with_roles, hs256_token, now, raw_token, tamper, token_header,
    try_start, unique, unused_addr,
};
use crate::common::{
    Backend, DEADLINE, Gateway, TempDir, echo, echoed_header, eventually, raw_request, start,
};

/// A provider `corp` reading keys from `jwks_url` (RS256, PS256, ES256, EdDSA; issuer
/// [`ISSUER`], audience [`AUDIENCE`], roles in `roles`, leeway 5s) plus `extra` provider
/// keys; routes `orders` (`/orders`, role `orders:read`), `write` (`/write`, both roles) and
/// `open` (`/`, no auth).
fn jwks_config(backend: &Backend, jwks_url: &str, extra: &str) -> String {
    format!(
        r#"
        auth:
          providers:
            corp: {{ type: jwt, jwks_url: "{jwks_url}", algorithms: [RS256, PS256, ES256, EdDSA], issuer: "{ISSUER}", audiences: [{AUDIENCE}], roles_claim: roles, leeway: 5s, timeout: 2s{extra} }}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: orders
            match: {{ prefix: /orders }}
            upstream: be
            auth: {{ providers: [corp], roles: [orders:read] }}
          - name: write
            match: {{ prefix: /write }}
            upstream: be
            auth: {{ providers: [corp], roles: [orders:read, orders:write] }}
          - name: open
            match: {{ prefix: / }}
            upstream: be
        "#,
        url = backend.url()
    )
}

/// The usual four keys of a JWKS: RS256, PS256, ES256 and EdDSA.
fn four_keys() -> Vec<SigningKey> {
    let tag = unique();
    vec![
        SigningKey::rsa(&format!("rsa-{tag}"), Algorithm::RS256),
        SigningKey::rsa(&format!("ps-{tag}"), Algorithm::PS256),
        SigningKey::ec_p256(&format!("ec-{tag}")),
        SigningKey::ed25519(&format!("ed-{tag}")),
    ]
}

fn refs(keys: &[SigningKey]) -> Vec<&SigningKey> {
    keys.iter().collect()
}

fn both_roles() -> Value {
    json!(["orders:read", "orders:write"])
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request through weir")
}

/// Sanity of the test IdP itself: what it mints verifies against what it serves, and its
/// attack tokens are what they claim to be. Independent of weir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_self_check_minted_tokens_verify_against_the_served_jwks() {
    let keys = four_keys();
    let idp = Idp::with_keys(&refs(&keys)).await;
    let client = crate::common::client();
    let fetch = || async {
        let text = client
            .get(idp.jwks_url())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<JwkSet>(&text).expect("a JWKS document")
    };
    let set = fetch().await;
    assert_eq!(set.keys.len(), 4);
    assert_eq!(idp.jwks_fetches(), 1);
    for key in &keys {
        let token = key.sign(&claims_with_roles("alice", &both_roles()));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, key.alg);
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .expect("kid in JWKS");
        assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        let dk = DecodingKey::from_jwk(jwk).unwrap();
        let data = jsonwebtoken::decode::<Value>(&token, &dk, &v)
            .unwrap_or_else(|e| panic!("{:?} token does not verify: {e}", key.alg));
        assert_eq!(data.claims["sub"], "alice");
        let forged = tamper(&token, |c| c["sub"] = json!("admin"));
        assert!(jsonwebtoken::decode::<Value>(&forged, &dk, &v).is_err());
        assert!(jsonwebtoken::decode::<Value>(&token, &key.decoding_key(), &v).is_ok());
    }
    // The RSA key's PEM verifies its tokens, and is a usable HMAC secret for the confusion.
    let rsa = &keys[0];
    let pem = rsa.public_pem.as_deref().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[AUDIENCE]);
    let dk = DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    assert!(jsonwebtoken::decode::<Value>(&rsa.sign(&claims("a")), &dk, &v).is_ok());
    let confused = hs256_token(pem.as_bytes(), Some(&rsa.kid), &claims("a"));
    let mut hv = Validation::new(Algorithm::HS256);
    hv.set_audience(&[AUDIENCE]);
    assert!(
        jsonwebtoken::decode::<Value>(&confused, &DecodingKey::from_secret(pem.as_bytes()), &hv)
            .is_ok()
    );
    // alg: none is really unsigned.
    let none = alg_none_token(&claims("a"), None);
    assert!(none.ends_with('.'));
    assert_eq!(token_header(&none)["alg"], "none");
    // Rotation changes what is served.
    idp.set_keys(&[&keys[1]]);
    let set = fetch().await;
    assert_eq!(set.keys.len(), 1);
    assert!(set.find(&keys[1].kid).is_some());
    assert!(set.find(&keys[0].kid).is_none());
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_every_algorithm_are_accepted_via_jwks_and_name_the_consumer() {
    let keys = four_keys();
    let idp = Idp::with_keys(&refs(&keys)).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(&backend, &idp.jwks_url(), "")).await;
    for key in &keys {
        let sub = format!("alice-{:?}", key.alg);
        let token = key.sign(&claims_with_roles(&sub, &both_roles()));
        let resp = gw
            .client
            .get(gw.url("/orders/7"))
            .bearer_auth(&token)
            // Forged identity headers never survive.
            .header("x-consumer", "mallory")
            .header("x-consumer-roles", "admin")
            .header("x-consumer-id", "0")
            .send()
            .await
            .unwrap();
        let v = echo(resp).await;
        assert_eq!(echoed_header(&v, "x-consumer"), Some(sub.as_str()), "{v}");
        assert_eq!(
            echoed_header(&v, "x-consumer-roles"),
            Some("orders:read,orders:write"),
            "{v}"
        );
        assert!(v["headers"].get("x-consumer-id").is_none(), "{v}");
        assert_eq!(v["path"], "/orders/7");
    }
    assert_eq!(backend.hits(), keys.len());

    // `Connection: X-Consumer` from the client cannot strip the identity weir adds.
    let token = keys[2].sign(&claims_with_roles("carol", &both_roles()));
    let resp = raw_request(
        gw.addr,
        &format!(
            "GET /orders/1 HTTP/1.1\r\nHost: test.local\r\nAuthorization: Bearer {token}\r\n\
             X-Consumer: mallory\r\nConnection: close, X-Consumer, X-Consumer-Roles\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    assert_eq!(echoed_header(&v, "x-consumer"), Some("carol"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write"),
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_public_key_file_providers_verify_their_tokens() {
    const HS_SECRET: &str = "hs256-secret-for-tests-0123456789abcdef";
    let rsa = SigningKey::rsa("file-key", Algorithm::RS256);
    let dir = TempDir::new("jwt-pem");
    let pem_path = dir.write("key.pem", rsa.public_pem.as_deref().unwrap());
    let backend = Backend::start("b").await;
    let gw = start(&format!(
        r#"
        auth:
          providers:
            hs: {{ type: jwt, secret: "{HS_SECRET}", algorithms: [HS256], roles_claim: roles }}
            pem: {{ type: jwt, public_key_file: "{pem}", algorithms: [RS256], roles_claim: roles }}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: hs
            match: {{ prefix: /hs }}
            upstream: be
            auth: {{ providers: [hs], roles: [orders:read] }}
          - name: pem
            match: {{ prefix: /pem }}
            upstream: be
            auth: {{ providers: [pem], roles: [orders:read] }}
        "#,
        pem = pem_path.display(),
        url = backend.url()
    ))
    .await;

    let hs = SigningKey::hmac("hs", Algorithm::HS256, HS_SECRET.as_bytes());
    let v = echo(
        bearer(
            &gw,
            "/hs/x",
            &hs.sign(&claims_with_roles("hank", &both_roles())),
        )
        .await,
    )
    .await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("hank"), "{v}");
    let v = echo(
        bearer(
            &gw,
            "/pem/x",
            &rsa.sign(&claims_with_roles("pam", &json!(["orders:read"]))),
        )
        .await,
    )
    .await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("pam"), "{v}");
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read"),
        "{v}"
    );
    assert_eq!(backend.hits(), 2);

    // The wrong secret, another RSA key, or each provider's token on the other's route.
    let other_hs = SigningKey::hmac(
        "hs",
        Algorithm::HS256,
        b"another-secret-that-is-32-bytes-long!!",
    );
    let other_rsa = SigningKey::rsa("file-key", Algorithm::RS256);
    let good = claims_with_roles("x", &both_roles());
    let cases = [
        ("/hs/x", other_hs.sign(&good), "HS256 with another secret"),
        ("/pem/x", other_rsa.sign(&good), "RS256 from another key"),
        ("/hs/x", rsa.sign(&good), "RS256 on the HS256 route"),
        ("/pem/x", hs.sign(&good), "HS256 on the RS256 route"),
    ];
    for (path, token, what) in &cases {
        assert_unauthorized(bearer(&gw, path, token).await, &["Bearer"], &[token], what).await;
    }
    assert_eq!(backend.hits(), 2, "no rejected token reached the backend");

    // The HMAC secret is never shown.
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
        !config.contains(HS_SECRET),
        "GET /config shows the JWT secret: {config}"
    );
    assert!(config.contains("***"), "{config}");
    assert!(!gw.metrics().await.contains(HS_SECRET));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_a_claim_array_or_a_space_separated_string() {
    let key = SigningKey::ec_p256(&format!("ec-{}", unique()));
    let idp = Idp::with_keys(&[&key]).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(&backend, &idp.jwks_url(), "")).await;

    let read_only = key.sign(&claims_with_roles("r", &json!(["orders:read"])));
    let both_array = key.sign(&claims_with_roles(
        "a",
        &json!(["orders:read", "orders:write", "x"]),
    ));
    let both_string = key.sign(&claims_with_roles("s", &json!("orders:read orders:write")));
    let no_roles = key.sign(&claims("n"));
    let similar = key.sign(&claims_with_roles(
        "p",
        &json!(["orders:read,orders:write"]),
    ));

    for (token, what) in [
        (&read_only, "only orders:read"),
        (&no_roles, "no roles claim"),
    ] {
        assert_problem_without(
            bearer(&gw, "/write/1", token).await,
            403,
            "forbidden",
            &[token],
            what,
        )
        .await;
    }
    // A single role whose name contains the header's separator grants neither role: refused
    // as lacking the roles (403) or as a token weir will not represent upstream (401).
    let resp = bearer(&gw, "/write/1", &similar).await;
    let status = resp.status().as_u16();
    assert!(
        matches!(status, 401 | 403),
        "a role named `orders:read,orders:write`: {status}"
    );
    assert_eq!(backend.hits(), 0, "a refused token reaches nothing");

    let v = echo(bearer(&gw, "/orders/1", &read_only).await).await;
    assert_eq!(echoed_header(&v, "x-consumer-roles"), Some("orders:read"));
    let v = echo(bearer(&gw, "/write/1", &both_array).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("a"));
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write,x")
    );
    let v = echo(bearer(&gw, "/write/1", &both_string).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("s"));
    assert_eq!(
        echoed_header(&v, "x-consumer-roles"),
        Some("orders:read,orders:write")
    );

    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "write", "forbidden"),
        2.0 + f64::from(status == 403),
        "{metrics}"
    );
    gw.stop().await;
}

/// Every attack token is a 401 naming `Bearer`, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tokens_are_401_and_never_reach_the_backend() {
    let keys = four_keys();
    let idp = Idp::with_keys(&refs(&keys)).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(&backend, &idp.jwks_url(), "")).await;
    let rsa = &keys[0];
    let ec = &keys[2];
    let roles = both_roles();
    let good = claims_with_roles("alice", &roles);
    let t = now();

    // A working token first, so the key set is loaded.
    let v = echo(bearer(&gw, "/orders/1", &rsa.sign(&good)).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("alice"));
    let base_hits = backend.hits();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let stranger = SigningKey::rsa(&rsa.kid, Algorithm::RS256);
    let unknown = SigningKey::ec_p256(&format!("unknown-{}", unique()));
    let rs_token = rsa.sign(&good);
    let parts: Vec<&str> = rs_token.split('.').collect();
    let mut rs384 = Header::new(Algorithm::RS384);
    rs384.kid = Some(rsa.kid.clone());

    let cases: Vec<(String, &str)> = vec![
        (alg_none_token(&good, None), "alg none"),
        (
            alg_none_token(&good, Some(&rsa.kid)),
            "alg none naming a real kid",
        ),
        (
            raw_token(&json!({"alg": "None", "kid": rsa.kid}), &good, b""),
            "alg None",
        ),
        (
            raw_token(&json!({"alg": "NONE", "typ": "JWT"}), &good, b"x"),
            "alg NONE",
        ),
        (
            hs256_token(
                rsa.public_pem.as_deref().unwrap().as_bytes(),
                Some(&rsa.kid),
                &good,
            ),
            "HS256 signed with the RSA public key",
        ),
        (
            rsa.sign(&with(&|c| {
                c["exp"] = json!(t - 60);
                c["nbf"] = json!(t - 120);
                c["iat"] = json!(t - 120);
            })),
            "expired",
        ),
        (
            rsa.sign(&with(&|c| c["nbf"] = json!(t + 60))),
            "not yet valid",
        ),
        (
            rsa.sign(&with(&|c| c["iss"] = json!("https://evil.test/"))),
            "wrong issuer",
        ),
        (
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            })),
            "no issuer",
        ),
        (
            rsa.sign(&with(&|c| c["aud"] = json!("other"))),
            "wrong audience",
        ),
        (
            rsa.sign(&with(&|c| c["aud"] = json!(["other", "another"]))),
            "wrong audiences",
        ),
        (
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            "no audience",
        ),
        (unknown.sign(&good), "unknown kid"),
        (stranger.sign(&good), "a known kid signed by another key"),
        (
            ec.sign_as(&rsa.kid, &good),
            "an EC signature under an RSA kid",
        ),
        (rsa.sign_with(&rs384, &good), "RS384, not in algorithms"),
        (
            tamper(&rs_token, |c| c["sub"] = json!("admin")),
            "tampered subject",
        ),
        (
            tamper(
                &rsa.sign(&claims_with_roles("alice", &json!(["orders:read"]))),
                |c| {
                    c["roles"] = json!(["orders:read", "orders:write", "admin"]);
                },
            ),
            "tampered roles",
        ),
        (
            tamper(&rs_token, |c| c["exp"] = json!(t + 86_400 * 365)),
            "tampered expiry",
        ),
        (format!("{}.{}.", parts[0], parts[1]), "signature stripped"),
        (format!("{}.{}", parts[0], parts[1]), "two parts"),
        (format!("{rs_token}.x"), "four parts"),
        ("a.b.c".to_owned(), "garbage"),
        ("not-a-jwt".to_owned(), "not a JWT"),
    ];
    for (token, what) in &cases {
        assert_unauthorized(
            bearer(&gw, "/orders/1", token).await,
            &["Bearer"],
            &[token],
            what,
        )
        .await;
    }

    // Credentials absent, empty, or under another scheme.
    let no_auth = gw.client.get(gw.url("/orders/1")).send().await.unwrap();
    assert_unauthorized(no_auth, &["Bearer"], &[], "no Authorization").await;
    for value in [
        "Bearer",
        "Bearer ",
        "Token abc.def.ghi",
        "Basic YWxpY2U6cHc=",
    ] {
        let resp = gw
            .client
            .get(gw.url("/orders/1"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_unauthorized(resp, &["Bearer"], &[], &format!("Authorization: {value}")).await;
    }
    assert_eq!(
        backend.hits(),
        base_hits,
        "an attack token reached the backend"
    );
    gw.stop().await;
}

/// HS256 signed with the RSA public key's PEM as the HMAC secret, against providers whose key
/// is that RSA key: never accepted, whatever `algorithms` says (or the config is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let rsa = SigningKey::rsa(&format!("rsa-{}", unique()), Algorithm::RS256);
    let pem = rsa.public_pem.clone().unwrap();
    let dir = TempDir::new("jwt-confusion");
    let pem_path = dir.write("rsa.pem", &pem);
    let idp = Idp::with_keys(&[&rsa]).await;
    let backend = Backend::start("b").await;
    let good = claims_with_roles("alice", &both_roles());
    let forged_good = claims_with_roles("mallory", &both_roles());
    // The attacker may use the file's bytes exactly, or without the final newline.
    let attacks = [
        hs256_token(pem.as_bytes(), None, &forged_good),
        hs256_token(pem.trim_end().as_bytes(), None, &forged_good),
        hs256_token(pem.as_bytes(), Some(&rsa.kid), &forged_good),
    ];

    let yaml = |algorithms: &str| {
        format!(
            r#"
            auth:
              providers:
                pem: {{ type: jwt, public_key_file: "{path}", algorithms: [{algorithms}] }}
                jwks: {{ type: jwt, jwks_url: "{jwks}", algorithms: [{algorithms}] }}
            upstreams:
              be:
                targets: [{{ url: "{url}" }}]
            routes:
              - name: pem
                match: {{ prefix: /pem }}
                upstream: be
                auth: {{ providers: [pem] }}
              - name: jwks
                match: {{ prefix: /jwks }}
                upstream: be
                auth: {{ providers: [jwks] }}
            "#,
            path = pem_path.display(),
            jwks = idp.jwks_url(),
            url = backend.url()
        )
    };

    // algorithms: [RS256]: the provider must load; the attack gets 401.
    let gw = start(&yaml("RS256")).await;
    for path in ["/pem/1", "/jwks/1"] {
        echo(bearer(&gw, path, &rsa.sign(&good)).await).await;
        for token in &attacks {
            assert_unauthorized(bearer(&gw, path, token).await, &["Bearer"], &[token], path).await;
        }
    }
    assert_eq!(backend.hits(), 2);
    let metrics = gw.metrics().await;
    gw.stop().await;
    let refused =
        auth_failures(&metrics, "pem", "algorithm") + auth_failures(&metrics, "pem", "invalid");
    assert_eq!(
        refused, 3.0,
        "each attack is counted as algorithm or invalid: {metrics}"
    );

    // algorithms: [RS256, HS256] with an RSA key: refusing the config is right; if it loads,
    // the RSA key must still never serve as an HMAC secret.
    match try_start(&yaml("RS256, HS256")).await {
        Err(problems) => {
            assert!(
                problems.contains("HS256") || problems.to_lowercase().contains("algorithm"),
                "the refusal names the algorithm: {problems}"
            );
        }
        Ok(gw) => {
            for path in ["/pem/1", "/jwks/1"] {
                for token in &attacks {
                    assert_unauthorized(
                        bearer(&gw, path, token).await,
                        &["Bearer"],
                        &[token],
                        path,
                    )
                    .await;
                }
            }
            assert_eq!(backend.hits(), 2, "a confused token reached the backend");
            gw.stop().await;
        }
    }
    // Only a `public_key_file` provider, so the JWKS provider's choice cannot hide the answer.
    let pem_only = format!(
        r#"
        auth:
          providers:
            pem: {{ type: jwt, public_key_file: "{path}", algorithms: [RS256, HS256] }}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: pem
            match: {{ prefix: /pem }}
            upstream: be
            auth: {{ providers: [pem] }}
        "#,
        path = pem_path.display(),
        url = backend.url()
    );
    if let Ok(gw) = try_start(&pem_only).await {
        for token in &attacks {
            assert_unauthorized(
                bearer(&gw, "/pem/1", token).await,
                &["Bearer"],
                &[token],
                "pem",
            )
            .await;
        }
        gw.stop().await;
    }
    assert_eq!(backend.hits(), 2, "a confused token reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_accepts_small_clock_skew_only() {
    let key = SigningKey::ed25519(&format!("ed-{}", unique()));
    let idp = Idp::with_keys(&[&key]).await;
    let backend = Backend::start("b").await;
    // A wide leeway (30 s), so a slow machine cannot turn "within" into "beyond".
    let yaml = jwks_config(&backend, &idp.jwks_url(), "").replace("leeway: 5s", "leeway: 30s");
    let gw = start(&yaml).await;
    let t = now();
    let token = |f: &dyn Fn(&mut Value)| {
        let mut c = claims_with_roles("lee", &both_roles());
        f(&mut c);
        key.sign(&c)
    };
    // Within the leeway.
    let just_expired = token(&|c| {
        c["exp"] = json!(t - 10);
        c["iat"] = json!(t - 600);
        c["nbf"] = json!(t - 600);
    });
    let almost_valid = token(&|c| c["nbf"] = json!(t + 10));
    echo(bearer(&gw, "/orders/1", &just_expired).await).await;
    echo(bearer(&gw, "/orders/1", &almost_valid).await).await;
    // Beyond it.
    let expired = token(&|c| {
        c["exp"] = json!(t - 120);
        c["iat"] = json!(t - 600);
        c["nbf"] = json!(t - 600);
    });
    let early = token(&|c| c["nbf"] = json!(t + 120));
    assert_unauthorized(
        bearer(&gw, "/orders/1", &expired).await,
        &["Bearer"],
        &[&expired],
        "expired",
    )
    .await;
    assert_unauthorized(
        bearer(&gw, "/orders/1", &early).await,
        &["Bearer"],
        &[&early],
        "early",
    )
    .await;
    assert_eq!(backend.hits(), 2);
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "expired"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        auth_failures(&metrics, "orders", "not_yet_valid"),
        1.0,
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_route_and_reason() {
    let keys = four_keys();
    let idp = Idp::with_keys(&refs(&keys)).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(&backend, &idp.jwks_url(), "")).await;
    let rsa = &keys[0];
    let t = now();
    let mk = |f: &dyn Fn(&mut Value)| {
        let mut c = claims_with_roles("m", &both_roles());
        f(&mut c);
        rsa.sign(&c)
    };
    let expired = mk(&|c| {
        c["exp"] = json!(t - 100);
        c["iat"] = json!(t - 200);
        c["nbf"] = json!(t - 200);
    });
    let read_only = rsa.sign(&claims_with_roles("m", &json!(["orders:read"])));
    let good = mk(&|_| {});
    let sends: Vec<(&str, Option<String>)> = vec![
        ("/orders/1", None),
        ("/orders/2", None),
        ("/orders/1", Some(expired.clone())),
        ("/orders/1", Some(expired.clone())),
        ("/orders/1", Some(expired)),
        ("/orders/1", Some(mk(&|c| c["nbf"] = json!(t + 100)))),
        (
            "/orders/1",
            Some(mk(&|c| c["iss"] = json!("https://other.test/"))),
        ),
        ("/orders/1", Some(mk(&|c| c["aud"] = json!("other")))),
        (
            "/orders/1",
            Some(tamper(&good, |c| c["sub"] = json!("root"))),
        ),
        (
            "/orders/1",
            Some(
                SigningKey::rsa(&rsa.kid, Algorithm::RS256)
                    .sign(&claims_with_roles("m", &both_roles())),
            ),
        ),
        ("/write/1", Some(read_only)),
        ("/", None),
        ("/orders/ok", Some(good)),
    ];
    for (path, token) in &sends {
        let mut req = gw.client.get(gw.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap();
    }
    assert_eq!(
        backend.hits(),
        2,
        "only the open route and the good token got through"
    );
    let metrics = gw.metrics().await;
    let expect = [
        ("orders", "missing", 2.0),
        ("orders", "expired", 3.0),
        ("orders", "not_yet_valid", 1.0),
        ("orders", "issuer", 1.0),
        ("orders", "audience", 1.0),
        ("orders", "invalid", 2.0),
        ("write", "forbidden", 1.0),
        ("open", "missing", 0.0),
        ("write", "missing", 0.0),
    ];
    for (route, reason, n) in expect {
        assert_eq!(
            auth_failures(&metrics, route, reason),
            n,
            "weir_auth_failures_total{{route=\"{route}\",reason=\"{reason}\"}}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(r#"weir_auth_failures_total{route="orders",reason="expired"} 3"#),
        "{metrics}"
    );
    assert!(!metrics.contains("eyJ"), "a token leaked into /metrics");
    gw.stop().await;
}

/// A token of 7 KiB (a huge `kid` in its header) fits the header limit and is a 401; one past
/// the limit is a 431. Neither reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_tokens_are_401_within_the_header_limit_and_431_beyond() {
    let key = SigningKey::ec_p256(&format!("ec-{}", unique()));
    let idp = Idp::with_keys(&[&key]).await;
    let backend = Backend::start("b").await;
    let yaml = format!(
        "limits: {{ max_header_bytes: 16KiB }}\n{}",
        crate::common::dedent(&jwks_config(&backend, &idp.jwks_url(), ""))
    );
    let gw = start(&yaml).await;
    let good = claims_with_roles("h", &both_roles());
    let huge_kid = |n: usize| key.sign_as(&"k".repeat(n), &good);
    let seven_kib = huge_kid(5 * 1024);
    assert!(
        (7000..8 * 1024).contains(&seven_kib.len()),
        "{}",
        seven_kib.len()
    );
    assert_unauthorized(
        bearer(&gw, "/orders/1", &seven_kib).await,
        &["Bearer"],
        &[&seven_kib],
        "7 KiB",
    )
    .await;
    // Also a 7 KiB token of garbage.
    let garbage = format!(
        "{}.{}.{}",
        "A".repeat(3000),
        "B".repeat(3000),
        "C".repeat(1200)
    );
    assert_unauthorized(
        bearer(&gw, "/orders/1", &garbage).await,
        &["Bearer"],
        &[&garbage],
        "garbage",
    )
    .await;
    let too_big = huge_kid(15 * 1024);
    let resp = bearer(&gw, "/orders/1", &too_big).await;
    assert_problem_without(
        resp,
        431,
        "headers_too_large",
        &[&too_big],
        "past the limit",
    )
    .await;
    assert_eq!(backend.hits(), 0);
    gw.stop().await;
}

/// The JWKS rotates: the new key works without a restart once weir refreshes, the removed
/// one stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_without_restart() {
    let old = SigningKey::rsa(&format!("old-{}", unique()), Algorithm::RS256);
    let new = SigningKey::ec_p256(&format!("new-{}", unique()));
    let idp = Idp::with_keys(&[&old]).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(
        &backend,
        &idp.jwks_url(),
        ", jwks_refresh: 1s",
    ))
    .await;
    let old_token = old.sign(&claims_with_roles("old", &both_roles()));
    let new_token = new.sign(&claims_with_roles("new", &both_roles()));
    let v = echo(bearer(&gw, "/orders/1", &old_token).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("old"));

    idp.set_keys(&[&new]);
    eventually(
        "a token of the new key to be accepted",
        DEADLINE,
        || async {
            let resp = bearer(&gw, "/orders/1", &new_token).await;
            match resp.status().as_u16() {
                200 => true,
                401 => false,
                other => panic!("while rotating: {other}"),
            }
        },
    )
    .await;
    eventually(
        "a token of the removed key to be refused",
        DEADLINE,
        || async { bearer(&gw, "/orders/1", &old_token).await.status() == 401 },
    )
    .await;
    assert_unauthorized(
        bearer(&gw, "/orders/1", &old_token).await,
        &["Bearer"],
        &[&old_token],
        "old key",
    )
    .await;
    let v = echo(bearer(&gw, "/orders/2", &new_token).await).await;
    assert_eq!(echoed_header(&v, "x-consumer"), Some("new"));
    assert!(idp.jwks_fetches() >= 2);
    gw.stop().await;
}

/// 200 tokens with random `kid`s after a good one: all 401, and at most one extra JWKS fetch
/// (refresh on an unknown kid is limited to once per 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_storm_is_not_a_jwks_fetch_storm() {
    let key = SigningKey::ec_p256(&format!("ec-{}", unique()));
    let attacker = SigningKey::ec_p256("attacker");
    let idp = Idp::with_keys(&[&key]).await;
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(
        &backend,
        &idp.jwks_url(),
        ", jwks_refresh: 5m",
    ))
    .await;
    echo(
        bearer(
            &gw,
            "/orders/1",
            &key.sign(&claims_with_roles("k", &both_roles())),
        )
        .await,
    )
    .await;
    assert_eq!(idp.jwks_fetches(), 1, "one fetch for the first token");

    let good = claims_with_roles("storm", &both_roles());
    let tokens: Vec<String> = (0..200)
        .map(|i| attacker.sign_as(&format!("kid-{i}-{}", unique()), &good))
        .collect();
    for batch in tokens.chunks(25) {
        let statuses = join_all(
            batch
                .iter()
                .map(|t| async { bearer(&gw, "/orders/1", t).await.status().as_u16() }),
        )
        .await;
        assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    }
    assert!(
        idp.jwks_fetches() <= 2,
        "{} JWKS fetches for 200 unknown kids",
        idp.jwks_fetches()
    );
    assert_eq!(backend.hits(), 1);
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "invalid"),
        200.0,
        "{metrics}"
    );
    gw.stop().await;
}

/// Nothing listens at `jwks_url`: weir starts, then fails closed with 503 `auth_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_fails_closed_with_503() {
    let key = SigningKey::rsa("k1", Algorithm::RS256);
    let dead = format!("http://{}/jwks", unused_addr().await);
    let backend = Backend::start("b").await;
    let gw = start(&jwks_config(&backend, &dead, "")).await;
    let token = key.sign(&claims_with_roles("u", &both_roles()));
    for _ in 0..3 {
        let resp = bearer(&gw, "/orders/1", &token).await;
        assert_problem_without(resp, 503, "auth_unavailable", &[&token], "JWKS down").await;
    }
    // A request without credentials needs no key: it is still a 401.
    let resp = gw.client.get(gw.url("/orders/1")).send().await.unwrap();
    assert_unauthorized(resp, &["Bearer"], &[], "no token while the JWKS is down").await;
    // The open route is unaffected.
    echo(gw.get("/elsewhere").await).await;
    assert_eq!(backend.hits(), 1, "only the open route reached the backend");
    let metrics = gw.metrics().await;
    assert_eq!(
        auth_failures(&metrics, "orders", "unavailable"),
        3.0,
        "{metrics}"
    );
    gw.stop().await;
}
