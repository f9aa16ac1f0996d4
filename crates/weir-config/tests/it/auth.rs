//! Identity providers, consumers and route access (`auth`, `ip`, `cors`): what a valid file
//! builds, and every problem, with its exact location and wording.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{TestEnv, ok, problems};
use weir_config::{Overrides, load_file, load_str_in};
use weir_domain::auth::{
    Algorithm, ApiKey, JwtKey, JwtSpec, KeyFamily, Provider, ProviderId, ProviderKind,
};

const GOOD: &str = "\
auth:
  providers:
    keys: { type: api_key }
    query-keys: { type: api_key, query: api_key }
    both: { type: api_key, header: X-Key, query: key }
    staff: { type: basic }
    hs: { type: jwt, secret: '0123456789abcdef0123456789abcdef', issuer: 'https://id.example.com/',
          audiences: [a, b], roles_claim: roles }
    rsa: { type: jwt, public_key_file: tests/keys/rsa.pub.pem, algorithms: [RS256, PS512] }
    pkcs1: { type: jwt, public_key_file: tests/keys/rsa-pkcs1.pub.pem }
    p256: { type: jwt, public_key_file: tests/keys/ec-p256.pub.pem }
    p384: { type: jwt, public_key_file: tests/keys/ec-p384.pub.pem }
    ed: { type: jwt, public_key_file: tests/keys/ed25519.pub.pem, leeway: 0s }
    jwks: { type: jwt, jwks_url: 'http://10.0.0.5:8080/.well-known/jwks.json', algorithms: [ES256, RS256] }
    idp: { type: oauth2, introspection_url: 'http://idp.internal/introspect', client_id: weir,
           client_secret: s3cr3t-client, roles_claim: scope }
consumers:
  - name: acme
    roles: [orders:read, orders:write, orders:read]
    api_keys: [plain-key-1, 'sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08']
  - name: ops
    basic:
      username: ops
      password_hash: '$argon2id$v=19$m=19456,t=2,p=1$vQPxJBytClIYPNOReT0j9w$lNEJozeOIjtyLxz7uofpFddsk2fs0m1Tp2JprcJfa1E'
routes:
  - name: orders
    match: { prefix: /orders, methods: [GET, PUT] }
    respond: {}
    auth: { providers: [hs, keys], roles: [orders:read] }
    ip: { allow: [10.0.0.0/8, '::1'], deny: [10.0.0.7] }
    cors:
      origins: ['https://App.Example.com:443', 'http://localhost:3000']
      methods: [GET]
      headers: [Authorization, X-Api-Key]
      expose_headers: [X-Request-Id]
      credentials: true
      max_age: 10m
  - name: public
    match: { prefix: /public }
    respond: {}
    cors: { origins: ['*'], headers: ['*'] }
  - name: open
    match: { prefix: /open }
    respond: {}
";

fn provider<'a>(providers: &'a [Provider], name: &str) -> &'a ProviderKind {
    &providers.iter().find(|p| p.name == name).unwrap().kind
}

fn jwt<'a>(providers: &'a [Provider], name: &str) -> &'a JwtSpec {
    match provider(providers, name) {
        ProviderKind::Jwt(spec) => spec,
        other => panic!("{name} is not jwt: {other:?}"),
    }
}

#[test]
fn providers_are_built_in_file_order_with_defaults() {
    let loaded = ok(GOOD);
    let p = &loaded.auth.providers;
    let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "keys",
            "query-keys",
            "both",
            "staff",
            "hs",
            "rsa",
            "pkcs1",
            "p256",
            "p384",
            "ed",
            "jwks",
            "idp"
        ]
    );

    let ProviderKind::ApiKey(keys) = provider(p, "keys") else {
        panic!("api_key")
    };
    assert_eq!(keys.header.as_deref(), Some("x-api-key"));
    assert_eq!(keys.query, None);
    let ProviderKind::ApiKey(q) = provider(p, "query-keys") else {
        panic!("api_key")
    };
    assert_eq!(
        (q.header.as_deref(), q.query.as_deref()),
        (None, Some("api_key"))
    );
    let ProviderKind::ApiKey(both) = provider(p, "both") else {
        panic!("api_key")
    };
    assert_eq!(
        (both.header.as_deref(), both.query.as_deref()),
        (Some("x-key"), Some("key"))
    );
    let ProviderKind::Basic(staff) = provider(p, "staff") else {
        panic!("basic")
    };
    assert_eq!(staff.realm, "weir");

    let hs = jwt(p, "hs");
    let JwtKey::Secret(secret) = &hs.key else {
        panic!("a secret")
    };
    assert_eq!(secret.expose(), "0123456789abcdef0123456789abcdef");
    assert_eq!(hs.algorithms, [Algorithm::HS256]);
    assert_eq!(hs.issuer.as_deref(), Some("https://id.example.com/"));
    assert_eq!(hs.audiences, ["a", "b"]);
    assert_eq!(hs.roles_claim.as_deref(), Some("roles"));
    assert_eq!(hs.leeway, Duration::from_secs(60));
    assert_eq!(hs.timeout, Duration::from_secs(5));

    let families = [
        (
            "rsa",
            KeyFamily::Rsa,
            vec![Algorithm::RS256, Algorithm::PS512],
        ),
        ("pkcs1", KeyFamily::Rsa, vec![Algorithm::RS256]),
        ("p256", KeyFamily::Ec, vec![Algorithm::ES256]),
        ("p384", KeyFamily::Ec, vec![Algorithm::ES384]),
        ("ed", KeyFamily::Ed, vec![Algorithm::EdDSA]),
    ];
    for (name, family, algorithms) in families {
        let spec = jwt(p, name);
        let JwtKey::PublicKey {
            path,
            pem,
            family: f,
        } = &spec.key
        else {
            panic!("{name}: a public key")
        };
        assert_eq!(*f, family, "{name}");
        assert_eq!(spec.algorithms, algorithms, "{name}");
        assert!(path.ends_with(".pub.pem"), "{path}");
        let pem = String::from_utf8(pem.clone()).unwrap();
        assert!(
            pem.starts_with("-----BEGIN ") && pem.ends_with("-----\n"),
            "{pem}"
        );
        assert_eq!(pem, std::fs::read_to_string(path).unwrap(), "{name}");
    }
    assert_eq!(jwt(p, "ed").leeway, Duration::ZERO);

    let jwks = jwt(p, "jwks");
    let JwtKey::Jwks {
        url,
        refresh,
        ca_pem,
    } = &jwks.key
    else {
        panic!("a JWKS")
    };
    assert_eq!(url, "http://10.0.0.5:8080/.well-known/jwks.json");
    assert_eq!(*refresh, Duration::from_secs(300));
    assert_eq!(*ca_pem, None);
    assert_eq!(jwks.algorithms, [Algorithm::ES256, Algorithm::RS256]);

    let ProviderKind::OAuth2(idp) = provider(p, "idp") else {
        panic!("oauth2")
    };
    assert_eq!(idp.url, "http://idp.internal/introspect");
    assert_eq!(idp.ca_pem, None);
    assert_eq!(idp.client_id, "weir");
    assert_eq!(idp.client_secret.expose(), "s3cr3t-client");
    assert_eq!(idp.cache_ttl, Duration::from_secs(60));
    assert_eq!(idp.negative_ttl, Duration::from_secs(10));
    assert_eq!(idp.roles_claim.as_deref(), Some("scope"));
    assert_eq!(idp.timeout, Duration::from_secs(5));
}

#[test]
fn consumers_are_built() {
    let loaded = ok(GOOD);
    let c = &loaded.auth.consumers;
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].name, "acme");
    assert_eq!(c[0].roles, ["orders:read", "orders:write"]); // repeats dropped
    let [ApiKey::Plain(plain), ApiKey::Sha256(digest)] = c[0].api_keys.as_slice() else {
        panic!("{:?}", c[0].api_keys)
    };
    assert_eq!(plain.expose(), "plain-key-1");
    assert_eq!(digest[..4], [0x9f, 0x86, 0xd0, 0x81]);
    assert_eq!(digest[31], 0x08);
    assert!(c[0].basic.is_none());
    let basic = c[1].basic.as_ref().unwrap();
    assert_eq!(basic.username, "ops");
    assert!(basic.password_hash.expose().starts_with("$argon2id$v=19$"));
    assert!(c[1].roles.is_empty() && c[1].api_keys.is_empty());
}

#[test]
fn route_access_is_built() {
    let loaded = ok(GOOD);
    let routes = loaded.routes.routes();
    let orders = routes.iter().find(|r| r.name == "orders").unwrap();
    let auth = orders.access.auth.as_ref().unwrap();
    assert_eq!(auth.providers, [ProviderId(4), ProviderId(0)]);
    assert_eq!(auth.roles, ["orders:read"]);

    let ip = orders.access.ip.as_ref().unwrap();
    assert_eq!((ip.allow.len(), ip.deny.len()), (2, 1));
    assert!(ip.permits("10.1.2.3".parse().unwrap()));
    assert!(ip.permits("::1".parse().unwrap()));
    assert!(!ip.permits("10.0.0.7".parse().unwrap()));
    assert!(!ip.permits("192.168.1.1".parse().unwrap()));

    let cors = orders.access.cors.as_ref().unwrap();
    assert_eq!(
        cors.origins,
        ["https://app.example.com", "http://localhost:3000"]
    );
    assert!(!cors.any_origin);
    assert!(cors.allows_origin(b"https://app.example.com"));
    assert!(!cors.allows_origin(b"https://evil.example.com"));
    assert_eq!(cors.methods.names().collect::<Vec<_>>(), ["GET"]);
    assert_eq!(cors.headers, ["authorization", "x-api-key"]);
    assert_eq!(cors.expose_headers, ["x-request-id"]);
    assert!(cors.credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));

    let public = routes.iter().find(|r| r.name == "public").unwrap();
    let cors = public.access.cors.as_ref().unwrap();
    assert!(cors.any_origin && cors.origins.is_empty());
    assert!(cors.allows_origin(b"https://anything.example"));
    assert!(cors.headers.is_empty()); // "*": any
    assert!(cors.methods.is_any() && !cors.credentials && cors.max_age.is_none());
    assert!(public.access.auth.is_none() && public.access.ip.is_none());

    let open = routes.iter().find(|r| r.name == "open").unwrap();
    assert!(open.access.auth.is_none() && open.access.cors.is_none() && open.access.ip.is_none());
}

#[test]
fn no_auth_section_means_no_providers() {
    let loaded = ok("routes:\n  - name: r\n    respond: {}\n");
    assert!(loaded.auth.providers.is_empty() && loaded.auth.consumers.is_empty());
    assert_eq!(
        loaded.effective["auth"],
        serde_json::json!({ "providers": {} })
    );
    assert_eq!(loaded.effective["consumers"], serde_json::json!([]));
}

#[test]
fn the_effective_config_hides_every_secret() {
    let loaded = ok(GOOD);
    let e = &loaded.effective;
    let text = e.to_string();
    for secret in [
        "0123456789abcdef",
        "s3cr3t-client",
        "plain-key-1",
        "9F86D081",
        "argon2id",
    ] {
        assert!(!text.contains(secret), "{secret} shows in {text}");
    }
    let providers = &e["auth"]["providers"];
    assert_eq!(providers["hs"]["secret"], "***");
    assert_eq!(providers["idp"]["client_secret"], "***");
    assert_eq!(
        e["consumers"][0]["api_keys"],
        serde_json::json!(["***", "***"])
    );
    assert_eq!(e["consumers"][1]["basic"]["password_hash"], "***");
    assert_eq!(e["consumers"][1]["basic"]["username"], "ops");
    // Only the keys of the provider's type, with defaults filled in.
    assert_eq!(
        providers["keys"],
        serde_json::json!({ "type": "api_key", "header": "X-Api-Key", "query": null })
    );
    assert_eq!(
        providers["staff"],
        serde_json::json!({ "type": "basic", "realm": "weir" })
    );
    assert_eq!(providers["hs"]["algorithms"], serde_json::json!(["HS256"]));
    assert_eq!(providers["ed"]["algorithms"], serde_json::json!(["EdDSA"]));
    assert_eq!(providers["ed"]["leeway"], "0s");
    assert_eq!(providers["hs"]["leeway"], "60s");
    assert!(providers["hs"].get("jwks_refresh").is_none());
    assert_eq!(providers["jwks"]["jwks_refresh"], "5m");
    assert_eq!(providers["idp"]["cache_ttl"], "60s");
    assert_eq!(providers["idp"]["negative_ttl"], "10s");
    assert!(providers["idp"].get("realm").is_none());
    assert_eq!(
        e["routes"][0]["auth"],
        serde_json::json!({ "providers": ["hs", "keys"], "roles": ["orders:read"] })
    );
    assert_eq!(e["routes"][0]["cors"]["credentials"], true);
    assert_eq!(e["routes"][2].get("cors"), None);

    // A change of a secret alone is a new version, with the same effective config.
    let other = ok(&GOOD.replace("s3cr3t-client", "s3cr3t-other"));
    assert_ne!(loaded.version, other.version);
    assert_eq!(loaded.effective, other.effective);
}

/// A directory of its own under the system's temp directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

#[test]
fn key_files_are_relative_to_the_config_file() {
    let dir = temp_dir("relative");
    std::fs::create_dir_all(dir.join("k")).unwrap();
    std::fs::copy(keys().join("ed25519.pub.pem"), dir.join("k/jwt.pem")).unwrap();
    let yaml = "auth:\n  providers:\n    p: { type: jwt, public_key_file: k/jwt.pem }\n";
    let file = dir.join("weir.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = load_file(&file, &TestEnv::default(), &Overrides::default()).unwrap();
    let spec = jwt(&loaded.auth.providers, "p");
    let JwtKey::PublicKey { path, family, .. } = &spec.key else {
        panic!("a public key")
    };
    assert_eq!(Path::new(path), dir.join("k/jwt.pem"));
    assert_eq!(*family, KeyFamily::Ed);
    let same = load_str_in(
        "x.yaml",
        yaml,
        &dir,
        &TestEnv::default(),
        &Overrides::default(),
    );
    assert_eq!(same.unwrap().version, loaded.version);

    // Rotating the key is a new version, though the file's text did not change; the default
    // algorithms follow the new key.
    std::fs::copy(keys().join("rsa.pub.pem"), dir.join("k/jwt.pem")).unwrap();
    let rotated = load_file(&file, &TestEnv::default(), &Overrides::default()).unwrap();
    assert_ne!(rotated.version, loaded.version);
    assert_eq!(
        jwt(&rotated.auth.providers, "p").algorithms,
        [Algorithm::RS256]
    );
    assert_eq!(
        rotated.effective["auth"]["providers"]["p"]["algorithms"],
        serde_json::json!(["RS256"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// Problems. Each YAML below is valid but for the marked lines.

#[test]
fn provider_problems() {
    let yaml = "\
auth:
  providers:
    a: { type: jwtt }
    b: { type: basic, realm: 'say \"hi\"', secret: x }
    c: { type: jwt, secret: short }
    d: { type: jwt, secret: '0123456789abcdef0123456789abcdef', algorithms: [none, RS257, HS256, HS256, RS256] }
    e: { type: jwt }
    f: { type: jwt, secret: '0123456789abcdef0123456789abcdef', jwks_url: 'http://a/b', jwks_refresh: 1m }
    g: { type: jwt, jwks_url: 'https://id.example.com/jwks', timeout: 0s }
    h: { type: jwt, jwks_url: 'http://idp:8080', algorithms: [HS512, nothing] }
    i: { type: oauth2, introspection_url: 'https://id.example.com/introspect', client_secret: '' }
    j: { type: api_key, header: 'X Key', query: 'a&b', leeway: 1s }
    k: { type: oauth2, introspection_url: 'http://idp/i', client_id: weir, client_secret: x, cache_ttl: 5 }
    '': { type: basic }
    m: { realm: x }
";
    assert_eq!(
        problems(yaml),
        [
            r#"weir.yaml:3:16: auth.providers.a.type: "jwtt" is not one of api_key, basic, jwt, oauth2; did you mean "jwt"?"#,
            r#"weir.yaml:4:30: auth.providers.b.realm: a realm may hold only visible ASCII characters and spaces, without " or \"#,
            "weir.yaml:4:42: auth.providers.b.secret: `secret` applies to type jwt, not basic",
            "weir.yaml:5:29: auth.providers.c.secret: an HMAC secret needs at least 32 bytes",
            "weir.yaml:6:78: auth.providers.d.algorithms[0]: alg none is never accepted",
            r#"weir.yaml:6:84: auth.providers.d.algorithms[1]: unknown algorithm "RS257"; did you mean "RS256"?"#,
            "weir.yaml:6:98: auth.providers.d.algorithms[3]: HS256 is listed twice",
            "weir.yaml:6:105: auth.providers.d.algorithms[4]: RS256 needs an RSA key; a `secret` verifies HS256, HS384 and HS512 only",
            "weir.yaml:7:8: auth.providers.e: a jwt provider needs one of secret, public_key_file and jwks_url",
            "weir.yaml:8:8: auth.providers.f: use only one of secret, public_key_file and jwks_url (found secret, jwks_url)",
            "weir.yaml:9:71: auth.providers.g.timeout: must be longer than 0",
            r#"weir.yaml:10:31: auth.providers.h.jwks_url: "http://idp:8080" needs a path, such as https://idp.example.com/.well-known/jwks.json"#,
            "weir.yaml:10:63: auth.providers.h.algorithms[0]: HS512 needs an HMAC secret, which a JWKS never holds; use `secret` for HMAC tokens",
            r#"weir.yaml:10:70: auth.providers.h.algorithms[1]: unknown algorithm "nothing" (one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"#,
            r#"weir.yaml:11:8: auth.providers.i: missing required key "client_id""#,
            "weir.yaml:11:95: auth.providers.i.client_secret: client_secret cannot be empty",
            r#"weir.yaml:12:33: auth.providers.j.header: "X Key" is not a valid header name"#,
            r#"weir.yaml:12:49: auth.providers.j.query: "a&b" is not a query parameter name (letters, digits, -, ., _ and ~)"#,
            "weir.yaml:12:56: auth.providers.j.leeway: `leeway` applies to type jwt, not api_key",
            "weir.yaml:13:105: auth.providers.k.cache_ttl: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            "weir.yaml:14:5: auth.providers.: a provider needs a non-empty name",
            r#"weir.yaml:15:8: auth.providers.m: missing required key "type""#,
        ]
    );
}

/// `https://` identity providers: the system's trust store by default, or the certificates
/// of `ca_file` (relative to the config file, read at load, part of the version).
#[test]
fn https_identity_providers_and_ca_files() {
    let dir = temp_dir("https");
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::copy(keys().join("ca.pem"), dir.join("tls/ca.pem")).unwrap();
    let yaml = "\
auth:
  providers:
    corp: { type: jwt, jwks_url: 'https://id.example.com/.well-known/jwks.json' }
    pinned: { type: jwt, jwks_url: 'HTTPS://10.0.0.5:8443/jwks', ca_file: tls/ca.pem }
    idp: { type: oauth2, introspection_url: 'https://id.example.com:8443/introspect',
           client_id: weir, client_secret: s3cr3t, ca_file: tls/ca.pem }
";
    let file = dir.join("weir.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = load_file(&file, &TestEnv::default(), &Overrides::default()).unwrap();
    let p = &loaded.auth.providers;
    let ca = std::fs::read(keys().join("ca.pem")).unwrap();
    let JwtKey::Jwks { url, ca_pem, .. } = &jwt(p, "corp").key else {
        panic!("a JWKS")
    };
    assert_eq!(url, "https://id.example.com/.well-known/jwks.json");
    assert_eq!(*ca_pem, None, "the system's trust store");
    let JwtKey::Jwks { url, ca_pem, .. } = &jwt(p, "pinned").key else {
        panic!("a JWKS")
    };
    assert_eq!(url, "https://10.0.0.5:8443/jwks");
    assert_eq!(ca_pem.as_deref(), Some(&ca[..]));
    let ProviderKind::OAuth2(idp) = provider(p, "idp") else {
        panic!("oauth2")
    };
    assert_eq!(idp.url, "https://id.example.com:8443/introspect");
    assert_eq!(idp.ca_pem.as_deref(), Some(&ca[..]));
    let providers = &loaded.effective["auth"]["providers"];
    assert_eq!(providers["pinned"]["ca_file"], "tls/ca.pem");
    assert_eq!(providers["idp"]["ca_file"], "tls/ca.pem");
    assert_eq!(providers["corp"]["ca_file"], serde_json::Value::Null);

    // Another CA in the same file is a new version, though the config's text is the same.
    let other = format!(
        "{}{}",
        String::from_utf8(ca.clone()).unwrap(),
        String::from_utf8(ca).unwrap()
    );
    std::fs::write(dir.join("tls/ca.pem"), other).unwrap();
    let changed = load_file(&file, &TestEnv::default(), &Overrides::default()).unwrap();
    assert_ne!(changed.version, loaded.version);
    assert_eq!(changed.effective, loaded.effective);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ca_file_problems() {
    let dir = temp_dir("ca-problems");
    std::fs::copy(keys().join("ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::copy(keys().join("ed25519.pub.pem"), dir.join("key.pem")).unwrap();
    let yaml = "\
auth:
  providers:
    plain: { type: jwt, jwks_url: 'http://idp/jwks', ca_file: ca.pem }
    nocert: { type: jwt, jwks_url: 'https://idp/jwks', ca_file: key.pem }
    missing: { type: oauth2, introspection_url: 'https://idp/i', client_id: weir, client_secret: s, ca_file: nope.pem }
    plain2: { type: oauth2, introspection_url: 'http://idp/i', client_id: weir, client_secret: s, ca_file: ca.pem }
    static: { type: jwt, public_key_file: key.pem, ca_file: ca.pem }
    zero: { type: jwt, jwks_url: 'https://idp/jwks', ca_file: /dev/zero }
    keys: { type: api_key, ca_file: ca.pem }
";
    let p = match load_str_in(
        "weir.yaml",
        yaml,
        &dir,
        &TestEnv::default(),
        &Overrides::default(),
    ) {
        Ok(_) => panic!("loaded"),
        Err(p) => p.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let missing = dir.join("nope.pem").display().to_string();
    assert_eq!(
        p,
        [
            "weir.yaml:3:54: auth.providers.plain.ca_file: `ca_file` applies only to an https:// URL (plain http:// has no certificate to check)".to_owned(),
            "weir.yaml:4:65: auth.providers.nocert.ca_file: no -----BEGIN CERTIFICATE----- block; a ca_file holds the PEM certificates of the CAs that sign the server's certificate".to_owned(),
            format!("weir.yaml:5:110: auth.providers.missing.ca_file: cannot read \"{missing}\": No such file or directory (os error 2)"),
            "weir.yaml:6:99: auth.providers.plain2.ca_file: `ca_file` applies only to an https:// URL (plain http:// has no certificate to check)".to_owned(),
            "weir.yaml:7:52: auth.providers.static.ca_file: `ca_file` applies only with jwks_url".to_owned(),
            "weir.yaml:8:63: auth.providers.zero.ca_file: \"/dev/zero\" is larger than 1024 KiB; a CA bundle, even a whole system trust store, is a few hundred KiB".to_owned(),
            "weir.yaml:9:28: auth.providers.keys.ca_file: `ca_file` applies to types jwt and oauth2, not api_key".to_owned(),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_file_problems() {
    let dir = temp_dir("key-problems");
    std::fs::write(
        dir.join("private.pem"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::copy(keys().join("ec-p384.pub.pem"), dir.join("p384.pem")).unwrap();
    std::fs::copy(keys().join("ec-secp256k1.pub.pem"), dir.join("k1.pem")).unwrap();
    std::fs::copy(keys().join("ed25519.pub.pem"), dir.join("ed.pem")).unwrap();
    let yaml = "\
auth:
  providers:
    private: { type: jwt, public_key_file: private.pem }
    missing: { type: jwt, public_key_file: nope.pem }
    hs: { type: jwt, public_key_file: ed.pem, algorithms: [HS256] }
    curve: { type: jwt, public_key_file: p384.pem, algorithms: [ES384, ES256] }
    k1: { type: jwt, public_key_file: k1.pem }
    zero: { type: jwt, public_key_file: /dev/zero }
";
    let p = match load_str_in(
        "weir.yaml",
        yaml,
        &dir,
        &TestEnv::default(),
        &Overrides::default(),
    ) {
        Ok(_) => panic!("loaded"),
        Err(p) => p.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let missing = dir.join("nope.pem").display().to_string();
    assert_eq!(
        p,
        [
            "weir.yaml:3:44: auth.providers.private.public_key_file: this is a private key; give the public key".to_owned(),
            format!("weir.yaml:4:44: auth.providers.missing.public_key_file: cannot read \"{missing}\": No such file or directory (os error 2)"),
            "weir.yaml:5:60: auth.providers.hs.algorithms[0]: HS256 needs an HMAC secret, but public_key_file holds an Ed25519 key".to_owned(),
            "weir.yaml:6:72: auth.providers.curve.algorithms[1]: ES256 needs a P-256 key, but public_key_file holds a P-384 key".to_owned(),
            "weir.yaml:7:39: auth.providers.k1.public_key_file: EC keys must be on curve P-256 (ES256) or P-384 (ES384)".to_owned(),
            "weir.yaml:8:41: auth.providers.zero.public_key_file: \"/dev/zero\" is larger than 64 KiB; a PEM public key is a few hundred bytes".to_owned(),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn consumer_problems() {
    let yaml = "\
consumers:
  - name: acme
    roles: [orders:read, 'a b']
    api_keys: [key-one-1, 'sha256:abc', '']
    basic: { username: acme, password_hash: hunter2-plain }
  - name: acme
    api_keys: [key-one-1]
    basic: { username: acme, password_hash: '$argon2id$v=19$m=1$x' }
  - name: 'a,b'
    basic: { username: 'a:b', password_hash: '$2b$10$short' }
  - name: x
    basic: { username: x }
";
    assert_eq!(
        problems(yaml),
        [
            r#"weir.yaml:3:26: consumers[0].roles[1]: "a b" is not a role: use visible ASCII characters without commas or spaces (roles are sent comma-separated in X-Consumer-Roles)"#,
            "weir.yaml:4:27: consumers[0].api_keys[1]: a hashed key is sha256: and 64 hex digits (the key's SHA-256)",
            "weir.yaml:4:41: consumers[0].api_keys[2]: an API key cannot be empty",
            "weir.yaml:5:45: consumers[0].basic.password_hash: password_hash must be an argon2id hash ($argon2id$...) or a bcrypt hash ($2b$...)",
            r#"weir.yaml:6:11: consumers[1].name: duplicate consumer name "acme" (also consumers[0])"#,
            "weir.yaml:7:16: consumers[1].api_keys[0]: this API key is also consumers[0].api_keys[0]",
            r#"weir.yaml:8:24: consumers[1].basic.username: duplicate username "acme" (also consumers[0].basic)"#,
            "weir.yaml:8:45: consumers[1].basic.password_hash: the argon2id hash is malformed (expected $argon2id$v=19$m=...,t=...,p=...$salt$hash)",
            r#"weir.yaml:9:11: consumers[2].name: "a,b" cannot be a consumer name: it is sent in X-Consumer, so it may hold visible ASCII characters and inner spaces, but no commas"#,
            "weir.yaml:10:24: consumers[2].basic.username: a username cannot hold ':' (Basic credentials are username:password)",
            "weir.yaml:10:46: consumers[2].basic.password_hash: the bcrypt hash is malformed (expected 60 characters: $2b$, a cost from 04 to 31, $, then 53 more)",
            r#"weir.yaml:12:12: consumers[3].basic: missing required key "password_hash""#,
        ]
    );
}

#[test]
fn route_access_problems() {
    let yaml = "\
auth:
  providers:
    corp: { type: jwt, jwks_url: 'http://idp/jwks' }
    keys: { type: api_key }
routes:
  - name: a
    respond: {}
    auth: { providers: [crop, keys, keys, other], roles: ['x,y'] }
  - name: b
    respond: {}
    auth: { roles: [admin] }
    ip: { allow: [10.0.0.0/33], deny: [nope] }
  - name: c
    respond: {}
    ip: {}
    cors: { origins: ['*'], credentials: true, methods: [get], headers: ['*', X-A] }
  - name: d
    respond: {}
    cors: { origins: ['https://app.example.com/', app.example.com, '*'] }
  - name: e
    respond: {}
    cors: { origins: ['https://app.example.com/', 'http://x:0'], expose_headers: ['Bad Name'], max_age: 5 }
  - name: f
    respond: {}
    cors: {}
";
    assert_eq!(
        problems(yaml),
        [
            r#"weir.yaml:8:25: routes[0].auth.providers[0]: unknown provider "crop"; did you mean "corp"?"#,
            r#"weir.yaml:8:37: routes[0].auth.providers[2]: provider "keys" is listed twice"#,
            r#"weir.yaml:8:43: routes[0].auth.providers[3]: unknown provider "other""#,
            r#"weir.yaml:8:59: routes[0].auth.roles[0]: "x,y" is not a role: use visible ASCII characters without commas or spaces (roles are sent comma-separated in X-Consumer-Roles)"#,
            "weir.yaml:11:11: routes[1].auth.providers: list at least one provider of auth.providers",
            r#"weir.yaml:12:19: routes[1].ip.allow[0]: "10.0.0.0/33" has a bad prefix length (0..=32)"#,
            r#"weir.yaml:12:40: routes[1].ip.deny[0]: "nope" is not an IP address or CIDR range"#,
            "weir.yaml:15:9: routes[2].ip: list at least one network under allow or deny",
            "weir.yaml:16:42: routes[2].cors.credentials: a wildcard origin cannot be combined with credentials",
            r#"weir.yaml:16:58: routes[2].cors.methods[0]: methods are written in upper case: "GET""#,
            r#"weir.yaml:16:73: routes[2].cors.headers: "*" cannot be listed with other headers"#,
            r#"weir.yaml:19:22: routes[3].cors.origins: "*" allows every origin; it cannot be listed with other origins"#,
            r#"weir.yaml:22:23: routes[4].cors.origins[0]: "https://app.example.com/" is not an origin: an origin has no path, query or trailing slash"#,
            r#"weir.yaml:22:51: routes[4].cors.origins[1]: "http://x:0" has a bad port"#,
            r#"weir.yaml:22:83: routes[4].cors.expose_headers[0]: "Bad Name" is not a valid header name"#,
            "weir.yaml:22:105: routes[4].cors.max_age: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            r#"weir.yaml:25:11: routes[5].cors.origins: list at least one origin, such as https://app.example.com, or "*""#,
        ]
    );
}

#[test]
fn auth_section_shape_problems() {
    assert_eq!(
        problems("auth:\n  provider: {}\n"),
        [r#"weir.yaml:2:3: auth.provider: unknown key "provider" (expected one of providers)"#]
    );
    assert_eq!(
        problems("auth:\n  providers: [a]\n"),
        ["weir.yaml:2:14: auth.providers: expected a map of providers by name, found a list"]
    );
    assert_eq!(
        problems("auth: 1\nconsumers: {}\n"),
        [
            "weir.yaml:1:7: auth: expected a map, found an integer",
            "weir.yaml:2:12: consumers: expected a list, found a map",
        ]
    );
    // An unknown key of a provider lists them all; a route naming no provider says so.
    let p = problems(
        "auth:\n  providers:\n    k: { type: api_key, heder: X }\nroutes:\n  - name: r\n    respond: {}\n    auth: { providers: [k2] }\n",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with(r#"weir.yaml:3:25: auth.providers.k.heder: unknown key "heder" (expected one of type, header, query"#), "{}", p[0]);
    assert_eq!(
        p[1],
        r#"weir.yaml:7:25: routes[0].auth.providers[0]: unknown provider "k2"; did you mean "k"?"#
    );
    assert_eq!(
        problems("routes:\n  - name: r\n    respond: {}\n    auth: { providers: [k] }\n"),
        [
            r#"weir.yaml:4:25: routes[0].auth.providers[0]: unknown provider "k" (no providers are defined under auth.providers)"#
        ]
    );
}

#[test]
fn secrets_never_appear_in_problems() {
    let yaml = "\
auth:
  providers:
    a: { type: jwt, secret: short-secret-value, issuer: '' }
    b: { type: oauth2, introspection_url: 'http://u:pass-word-9@idp/i', client_id: c, client_secret: client-secret-value, timeout: client-secret-value }
consumers:
  - name: a
    api_keys: [api-key-value-1, 'api key value 2']
  - name: b
    api_keys: [api-key-value-1]
    basic: { username: u, password_hash: hash-value-secret }
admin: { listen: short-secret-value }
";
    let p = problems(yaml).join("\n");
    for secret in [
        "short-secret-value",
        "pass-word-9",
        "client-secret-value",
        "api-key-value-1",
        "api key value 2",
        "hash-value-secret",
    ] {
        assert!(!p.contains(secret), "{secret} in:\n{p}");
    }
    assert!(p.contains("admin.listen: \"***\""), "{p}");
    assert!(p.contains("b.timeout: \"***\" is not a duration"), "{p}");
}
