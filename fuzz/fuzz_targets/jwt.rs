//! JWT verification (`weir_infra::auth::Authenticators`, `jwt` providers) against fixed keys:
//! an HMAC secret (HS256/HS384) and an Ed25519 public key (EdDSA, with `iss` and `aud`).
//!
//! Tokens are arbitrary text, or built from fuzzed headers and claims and then signed
//! correctly, with the wrong key, with the Ed25519 public key's PEM as an HMAC secret (the
//! algorithm-confusion attack), or not at all, and optionally tampered with. Whatever the
//! token, verification must not panic, and an accepted token must be one the provider's key
//! really signed, with an accepted `alg`, an `exp` that has not passed, the `iss`/`aud` the
//! provider requires, and a name and roles that can travel in headers.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use weir_domain::auth::{
    Algorithm, AuthSettings, JwtKey, JwtSpec, KeyFamily, Provider, ProviderId, ProviderKind,
    Secret, Verdict,
};
use weir_infra::auth::Authenticators;

const SECRET: &str = "fuzzing-secret-of-at-least-32-bytes!!";
const WRONG_SECRET: &str = "another-secret-of-at-least-32-bytes!!";
const ISSUER: &str = "https://id.example.com/";
const AUDIENCE: &str = "weir";
const LEEWAY: u64 = 60;

struct Fixture {
    auth: Authenticators,
    ed: Ed25519KeyPair,
    ed_pem: String,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ed = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("a 32-byte seed");
        // SubjectPublicKeyInfo for Ed25519: the fixed prefix, then the 32-byte key.
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(ed.public_key().as_ref());
        let ed_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        );
        let jwt = |key, algorithms, issuer: Option<&str>, audiences: &[&str]| {
            ProviderKind::Jwt(JwtSpec {
                key,
                algorithms,
                issuer: issuer.map(str::to_owned),
                audiences: audiences.iter().map(|s| (*s).to_owned()).collect(),
                roles_claim: Some("roles".to_owned()),
                leeway: Duration::from_secs(LEEWAY),
                timeout: Duration::from_secs(1),
            })
        };
        let settings = AuthSettings {
            providers: vec![
                Provider {
                    name: "hmac".to_owned(),
                    kind: jwt(
                        JwtKey::Secret(Secret::new(SECRET.to_owned())),
                        vec![Algorithm::HS256, Algorithm::HS384],
                        None,
                        &[],
                    ),
                },
                Provider {
                    name: "ed".to_owned(),
                    kind: jwt(
                        JwtKey::PublicKey {
                            path: "ed.pem".to_owned(),
                            pem: ed_pem.clone().into_bytes(),
                            family: KeyFamily::Ed,
                        },
                        vec![Algorithm::EdDSA],
                        Some(ISSUER),
                        &[AUDIENCE],
                    ),
                },
            ],
            consumers: Vec::new(),
        };
        Fixture {
            auth: Authenticators::new(&settings, 1).expect("the fixture's providers build"),
            ed,
            ed_pem,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
        }
    })
}

const ALGS: [&str; 10] = [
    "HS256", "HS384", "HS512", "EdDSA", "RS256", "ES256", "none", "None", "hs256", "PS256",
];

#[derive(Arbitrary, Debug)]
enum When {
    Absent,
    /// Seconds from now.
    Offset(i32),
    Raw(i64),
    Float(f64),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Roles {
    Absent,
    List(Vec<String>),
    Spaced(String),
    Number(i64),
}

#[derive(Arbitrary, Debug)]
struct Claims {
    sub: Option<String>,
    sub_number: bool,
    exp: When,
    nbf: When,
    iss: Option<Option<String>>,
    aud: Option<Vec<String>>,
    aud_single: bool,
    roles: Roles,
}

#[derive(Arbitrary, Debug)]
struct Header {
    alg: u8,
    alg_text: Option<String>,
    kid: Option<String>,
    crit: bool,
    typ: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Signing {
    /// With the key of the provider the token is sent to, by the header's `alg`.
    Correct,
    WrongSecret,
    /// The Ed25519 public key's PEM as an HMAC secret.
    PublicKeyAsSecret,
    Ed25519,
    Empty,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    FlipByte(u16),
    Truncate(u16),
    Append(String),
    Pad,
}

#[derive(Arbitrary, Debug)]
enum Token {
    Raw(String),
    Built {
        header: Header,
        /// Replaces the header JSON when set.
        raw_header: Option<String>,
        claims: Box<Claims>,
        /// Replaces the claims JSON when set.
        raw_claims: Option<String>,
        signing: Signing,
        tamper: Option<Tamper>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    ed_provider: bool,
    token: Token,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn when(w: &When) -> Option<Value> {
    match w {
        When::Absent => None,
        When::Offset(s) => Some(json!(now().saturating_add(i64::from(*s)))),
        When::Raw(n) => Some(json!(n)),
        When::Float(f) => Some(json!(f)),
        When::Text(t) => Some(json!(t)),
    }
}

fn hmac_alg(alg: &str) -> Option<hmac::Algorithm> {
    match alg {
        "HS256" => Some(hmac::HMAC_SHA256),
        "HS384" => Some(hmac::HMAC_SHA384),
        "HS512" => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

fn build(
    f: &Fixture,
    ed_provider: bool,
    header: &Header,
    raw_header: Option<&String>,
    claims: &Claims,
    raw_claims: Option<&String>,
    signing: &Signing,
) -> String {
    let alg = header
        .alg_text
        .clone()
        .unwrap_or_else(|| ALGS[usize::from(header.alg) % ALGS.len()].to_owned());
    let head = match raw_header {
        Some(raw) => raw.clone(),
        None => {
            let mut h = Map::new();
            h.insert("alg".into(), json!(alg));
            if let Some(kid) = &header.kid {
                h.insert("kid".into(), json!(kid));
            }
            if header.crit {
                h.insert("crit".into(), json!(["exp"]));
            }
            if let Some(typ) = &header.typ {
                h.insert("typ".into(), json!(typ));
            }
            Value::Object(h).to_string()
        }
    };
    let body = match raw_claims {
        Some(raw) => raw.clone(),
        None => {
            let mut c = Map::new();
            if claims.sub_number {
                c.insert("sub".into(), json!(42));
            } else if let Some(sub) = &claims.sub {
                c.insert("sub".into(), json!(sub));
            }
            if let Some(v) = when(&claims.exp) {
                c.insert("exp".into(), v);
            }
            if let Some(v) = when(&claims.nbf) {
                c.insert("nbf".into(), v);
            }
            match &claims.iss {
                None => {}
                Some(None) => {
                    c.insert("iss".into(), json!(ISSUER));
                }
                Some(Some(other)) => {
                    c.insert("iss".into(), json!(other));
                }
            }
            if let Some(aud) = &claims.aud {
                let mut aud = aud.clone();
                if aud.is_empty() {
                    aud.push(AUDIENCE.to_owned());
                }
                c.insert(
                    "aud".into(),
                    if claims.aud_single {
                        json!(aud[0])
                    } else {
                        json!(aud)
                    },
                );
            }
            match &claims.roles {
                Roles::Absent => {}
                Roles::List(r) => {
                    c.insert("roles".into(), json!(r));
                }
                Roles::Spaced(s) => {
                    c.insert("roles".into(), json!(s));
                }
                Roles::Number(n) => {
                    c.insert("roles".into(), json!(n));
                }
            }
            Value::Object(c).to_string()
        }
    };
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head.as_bytes()),
        URL_SAFE_NO_PAD.encode(body.as_bytes())
    );
    let mac = |secret: &[u8]| {
        let a = hmac_alg(&alg).unwrap_or(hmac::HMAC_SHA256);
        hmac::sign(&hmac::Key::new(a, secret), signed.as_bytes())
            .as_ref()
            .to_vec()
    };
    let sig = match signing {
        Signing::Correct if ed_provider => f.ed.sign(signed.as_bytes()).as_ref().to_vec(),
        Signing::Correct => mac(SECRET.as_bytes()),
        Signing::WrongSecret => mac(WRONG_SECRET.as_bytes()),
        Signing::PublicKeyAsSecret => mac(f.ed_pem.as_bytes()),
        Signing::Ed25519 => f.ed.sign(signed.as_bytes()).as_ref().to_vec(),
        Signing::Empty => Vec::new(),
        Signing::Raw(b) => b.clone(),
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn tamper(token: &mut String, t: &Tamper) {
    match t {
        Tamper::FlipByte(at) => {
            let mut bytes = std::mem::take(token).into_bytes();
            if !bytes.is_empty() {
                let i = usize::from(*at) % bytes.len();
                // Within base64url's alphabet, so it stays a token-shaped string.
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            }
            *token = String::from_utf8(bytes).unwrap_or_default();
        }
        Tamper::Truncate(n) => {
            let keep = token.len().saturating_sub(usize::from(*n) % 8);
            token.truncate(keep);
        }
        Tamper::Append(s) => token.push_str(s),
        Tamper::Pad => token.push_str("=="),
    }
}

/// Checks what the verifier accepted: a signature by the provider's own key over the first
/// two parts, and the claims the provider requires.
fn check_accepted(f: &Fixture, ed_provider: bool, token: &str, name: &str, roles: &[&str]) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted a token without three parts: {token:?}"
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap_or_else(|e| panic!("accepted a signature that is not base64url ({e}): {token:?}"));
    let head: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_else(|e| {
            panic!("accepted a header that is not base64url ({e}): {token:?}")
        }))
        .unwrap_or_else(|e| panic!("accepted a header that is not JSON ({e}): {token:?}"));
    let alg = head["alg"].as_str().unwrap_or_default();
    if ed_provider {
        assert_eq!(alg, "EdDSA", "{token:?}");
        signature::UnparsedPublicKey::new(&signature::ED25519, f.ed.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .unwrap_or_else(|_| panic!("accepted a token the Ed25519 key did not sign: {token:?}"));
    } else {
        assert!(
            alg == "HS256" || alg == "HS384",
            "accepted alg {alg:?}: {token:?}"
        );
        let a = hmac_alg(alg).unwrap_or(hmac::HMAC_SHA256);
        hmac::verify(
            &hmac::Key::new(a, SECRET.as_bytes()),
            signed.as_bytes(),
            &sig,
        )
        .unwrap_or_else(|_| panic!("accepted a token the secret did not sign: {token:?}"));
    }
    let claims: Map<String, Value> = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap_or_else(|e| panic!("accepted claims that are not base64url ({e}): {token:?}")),
    )
    .unwrap_or_else(|e| panic!("accepted claims that are not a JSON object ({e}): {token:?}"));
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("accepted a token without a numeric exp: {token:?}"));
    assert!(
        exp + LEEWAY as f64 >= now() as f64,
        "accepted an expired token (exp {exp}): {token:?}"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(
            nbf - LEEWAY as f64 <= now() as f64,
            "accepted before nbf: {token:?}"
        );
    }
    if ed_provider {
        assert_eq!(claims.get("iss"), Some(&json!(ISSUER)), "{token:?}");
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(a)) => a.iter().any(|v| v == AUDIENCE),
            _ => false,
        };
        assert!(aud_ok, "accepted without audience {AUDIENCE}: {token:?}");
    }
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(name),
        "{token:?}"
    );
    assert!(
        !name.is_empty() && !name.chars().any(char::is_control),
        "name {name:?}"
    );
    for r in roles {
        assert!(
            !r.is_empty() && !r.contains(',') && !r.chars().any(char::is_control),
            "role {r:?}"
        );
    }
}

// `hmac TOKEN` or `ed TOKEN` (the seeds) sends TOKEN as it is to that provider; any other
// input is decoded into a built token.
fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    let given = text.and_then(|t| {
        t.strip_prefix("hmac ")
            .map(|tok| (false, tok))
            .or_else(|| t.strip_prefix("ed ").map(|tok| (true, tok)))
    });
    let input = match given {
        Some((ed_provider, token)) => Input {
            ed_provider,
            token: Token::Raw(token.trim_end_matches('\n').to_owned()),
        },
        None => {
            let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
                return;
            };
            input
        }
    };
    let f = fixture();
    let mut token = match &input.token {
        Token::Raw(s) => s.clone(),
        Token::Built {
            header,
            raw_header,
            claims,
            raw_claims,
            signing,
            ..
        } => build(
            f,
            input.ed_provider,
            header,
            raw_header.as_ref(),
            claims,
            raw_claims.as_ref(),
            signing,
        ),
    };
    if let Token::Built {
        tamper: Some(t), ..
    } = &input.token
    {
        tamper(&mut token, t);
    }
    let id = ProviderId(usize::from(input.ed_provider));
    let verdict = f.rt.block_on(f.auth.verify(id, &token));
    if std::env::var_os("WEIR_FUZZ_DEBUG").is_some() {
        eprintln!("{token:?} -> {verdict:?}");
    }
    if let Verdict::Accepted(p) = verdict {
        let roles: Vec<&str> = p.roles.iter().map(|r| &**r).collect();
        check_accepted(f, input.ed_provider, &token, &p.name, &roles);
        assert_eq!(&*p.roles_header, roles.join(","), "{token:?}");
    }
});
