//! A test identity provider for the auth suites, and what they share.
//!
//! - [`SigningKey`]: real RSA (RS*/PS*), ECDSA P-256, Ed25519 and HMAC keys generated per test
//!   with aws-lc-rs, signing tokens with jsonwebtoken, with their public JWK and (for RSA) the
//!   public key as a PEM `PUBLIC KEY`.
//! - Token helpers: standard claims, hand-built tokens (`alg: none`, any header), tampering.
//! - [`Idp`]: an HTTP server on `127.0.0.1:0` serving `GET /jwks` (a key set that can be
//!   swapped mid-test, fetches counted) and `POST /introspect` (RFC 7662, client credentials
//!   checked, answers counted; can fail with 500, hang, or go away entirely); or the same
//!   over TLS ([`Idp::start_tls`]) with a certificate from a [`TestCa`] made at test time.
//! - Gateway helpers: starting weir from a config that may be refused, problem and
//!   `WWW-Authenticate` checks, metric values, password hashes and key digests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Gateway, MapEnv, client, config};

/// The `iss` of tokens minted by [`claims`], for a provider's `issuer`.
pub const ISSUER: &str = "https://id.test/";
/// The `aud` of tokens minted by [`claims`], for a provider's `audiences`.
pub const AUDIENCE: &str = "weir";
/// The introspection client's id, as the [`Idp`] expects it.
pub const CLIENT_ID: &str = "weir";
/// The introspection client's secret, as the [`Idp`] expects it.
pub const CLIENT_SECRET: &str = "s3cret-introspection-client-7f1c";

// ---------------------------------------------------------------------------------------
// Encodings

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

pub fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// A PEM block with 64-character lines, ending with a newline.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Lower-case hex.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>`, a consumer's API key as the config may hold it.
pub fn sha256_key(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    format!("sha256:{}", hex(d.as_ref()))
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
}

/// An argon2id PHC string at the lowest cost, so tests stay fast.
pub fn argon2id_hash(password: &str) -> String {
    use argon2::PasswordHasher as _;
    let params = argon2::Params::new(argon2::Params::MIN_M_COST.max(8), 1, 1, None).unwrap();
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).unwrap();
    hasher
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("argon2id hash")
        .to_string()
}

/// A bcrypt (`$2b$`) string at the lowest cost, so tests stay fast.
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt hash")
}

// ---------------------------------------------------------------------------------------
// Keys and tokens

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A unique suffix for names within this process.
pub fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:x}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Claims of a valid token for `sub`: [`ISSUER`], [`AUDIENCE`], issued now, valid 5 minutes.
pub fn claims(sub: &str) -> Value {
    let t = now();
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": t, "nbf": t, "exp": t + 300 })
}

/// [`claims`] with a `roles` claim.
pub fn claims_with_roles(sub: &str, roles: &Value) -> Value {
    let mut c = claims(sub);
    c["roles"] = roles.clone();
    c
}

/// A signing key with its public half, named by `kid`.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK (`kid`, `alg`, `use: sig`); for HMAC keys, the secret as an `oct` JWK.
    jwk: Jwk,
    /// The public key as PEM `PUBLIC KEY` (SPKI), for RSA keys.
    pub public_pem: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn finish(
        kid: &str,
        alg: Algorithm,
        encoding: EncodingKey,
        public_pem: Option<String>,
    ) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("JWK of a key");
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// A fresh RSA 2048 key for `alg` (RS256/384/512, PS256/384/512).
    pub fn rsa(kid: &str, alg: Algorithm) -> Self {
        let kp =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let pkcs8: Pkcs8V1Der<'static> = kp.as_der().expect("PKCS#8 of an RSA key");
        // jsonwebtoken's `from_rsa_der` wants PKCS#1; its PEM reader unwraps PKCS#8.
        let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
            .expect("RSA encoding key");
        let spki: PublicKeyX509Der<'static> = kp.public_key().as_der().expect("SPKI");
        Self::finish(kid, alg, encoding, Some(pem("PUBLIC KEY", spki.as_ref())))
    }

    /// A fresh ECDSA P-256 key (ES256).
    pub fn ec_p256(kid: &str) -> Self {
        let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .expect("EC key");
        let pkcs8 = kp.to_pkcs8v1().expect("PKCS#8 of an EC key");
        Self::finish(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            None,
        )
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> Self {
        let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().expect("Ed25519 key");
        let pkcs8 = kp.to_pkcs8v1().expect("PKCS#8 of an Ed25519 key");
        Self::finish(
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            None,
        )
    }

    /// An HMAC key (HS256/384/512) with this secret.
    pub fn hmac(kid: &str, alg: Algorithm, secret: &[u8]) -> Self {
        Self::finish(kid, alg, EncodingKey::from_secret(secret), None)
    }

    /// A token over `claims` with header `{alg, typ: JWT, kid}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A token over `claims` with this header (its `alg` must fit the key).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign a token")
    }

    /// A token over `claims` that names `kid` instead of this key's.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        self.sign_with(&header, claims)
    }

    pub fn jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    /// The key that verifies this key's tokens, from its public JWK.
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_jwk(&self.jwk).expect("decoding key from JWK")
    }
}

/// A JWKS document of these keys' public JWKs.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    };
    serde_json::to_string(&set).expect("JWKS JSON")
}

/// `b64url(header).b64url(claims).b64url(signature)`, byte for byte as given.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(signature)
    )
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}` (plus `kid` when given), empty
/// signature.
pub fn alg_none_token(claims: &Value, kid: Option<&str>) -> String {
    let mut header = json!({ "alg": "none", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    raw_token(&header, claims, b"")
}

/// An HS256 token signed with `secret` (any bytes, e.g. an RSA public key's PEM).
pub fn hs256_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("HS256")
}

/// `token` with its payload changed by `change`, the original header and signature kept.
pub fn tamper(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token");
    let mut payload: Value = serde_json::from_slice(&b64url_decode(parts[1])).expect("payload");
    change(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        b64url(payload.to_string().as_bytes()),
        parts[2]
    )
}

/// The decoded header of a token.
pub fn token_header(token: &str) -> Value {
    let first = token.split('.').next().expect("header part");
    serde_json::from_slice(&b64url_decode(first)).expect("header JSON")
}

// ---------------------------------------------------------------------------------------
// The identity provider server

/// What `POST /introspect` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Introspection {
    /// Answers from the registered tokens (`{"active": false}` for any other).
    Answer,
    /// Answers `500 Internal Server Error`.
    Fail,
    /// Never answers (until the [`Idp`] goes away).
    Hang,
}

#[derive(Debug)]
struct IdpState {
    jwks: Mutex<String>,
    jwks_fetches: AtomicUsize,
    introspection: Mutex<Introspection>,
    /// Calls to `/introspect` with valid client credentials and a `token`.
    introspections: AtomicUsize,
    /// Calls to `/introspect` refused: wrong client credentials, method or body.
    refused: AtomicUsize,
    /// Every token introspected, in order.
    asked: Mutex<Vec<String>>,
    tokens: Mutex<HashMap<String, Value>>,
}

/// The test identity provider on `127.0.0.1:0`: `GET /jwks`, `POST /introspect`.
#[derive(Debug)]
pub struct Idp {
    pub addr: SocketAddr,
    /// `http`, or `https` when started with [`Idp::start_tls`].
    scheme: &'static str,
    state: Arc<IdpState>,
    gone: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.gone.send_replace(true);
        self.task.abort();
    }
}

impl Idp {
    /// Starts with an empty key set (`{"keys":[]}`) and no active token.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`Idp::start`] over TLS, presenting `tls`'s certificate (see [`TestCa`]); its URLs
    /// are `https://`. A client that refuses the certificate never reaches a handler.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(Some(TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind IdP");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            jwks: Mutex::new(r#"{"keys":[]}"#.to_owned()),
            jwks_fetches: AtomicUsize::new(0),
            introspection: Mutex::new(Introspection::Answer),
            introspections: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
        });
        let (gone, _) = watch::channel(false);
        let st = Arc::clone(&state);
        let gone_rx = gone.subscribe();
        let task = tokio::spawn(async move {
            let mut stop = gone_rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|g| *g) => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let st = Arc::clone(&st);
                let stop = gone_rx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                idp_connection(stream, st, stop).await;
                            }
                        }
                        None => idp_connection(stream, st, stop).await,
                    }
                });
            }
        });
        Self {
            addr,
            scheme,
            state,
            gone,
            task,
        }
    }

    /// Starts serving these keys at `/jwks`.
    pub async fn with_keys(keys: &[&SigningKey]) -> Self {
        let idp = Self::start().await;
        idp.set_keys(keys);
        idp
    }

    pub fn jwks_url(&self) -> String {
        format!("{}://{}/jwks", self.scheme, self.addr)
    }

    pub fn introspection_url(&self) -> String {
        format!("{}://{}/introspect", self.scheme, self.addr)
    }

    /// Replaces the key set served at `/jwks`.
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        self.set_jwks(jwks_json(keys));
    }

    /// Replaces the document served at `/jwks`.
    pub fn set_jwks(&self, document: String) {
        *self.state.jwks.lock().unwrap() = document;
    }

    /// `GET /jwks` requests so far.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// `POST /introspect` calls answered (or failed, or hung) so far, with valid client
    /// credentials.
    pub fn introspections(&self) -> usize {
        self.state.introspections.load(Ordering::SeqCst)
    }

    /// Introspection calls refused for wrong client credentials, method or body.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Every token introspected, in order.
    pub fn asked(&self) -> Vec<String> {
        self.state.asked.lock().unwrap().clone()
    }

    /// Registers the introspection answer for `token` (an object; `active` defaults to true).
    pub fn register(&self, token: &str, mut answer: Value) {
        if answer.get("active").is_none() {
            answer["active"] = json!(true);
        }
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer);
    }

    /// Registers `token` as active for `sub` with `scope`, expiring in 5 minutes.
    pub fn activate(&self, token: &str, sub: &str, scope: &str) {
        self.register(
            token,
            json!({ "active": true, "sub": sub, "scope": scope, "client_id": "app",
                    "token_type": "Bearer", "exp": now() + 300, "iat": now() }),
        );
    }

    /// From now on `token` is answered `{"active": false}`.
    pub fn deactivate(&self, token: &str) {
        self.state.tokens.lock().unwrap().remove(token);
    }

    pub fn set_introspection(&self, mode: Introspection) {
        *self.state.introspection.lock().unwrap() = mode;
    }

    /// Stops listening and closes every connection: the endpoint is gone.
    pub fn go_away(&self) {
        self.gone.send_replace(true);
    }
}

/// Serves one accepted connection (plain or TLS) until it ends or the [`Idp`] goes away.
async fn idp_connection<S>(stream: S, st: Arc<IdpState>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A request that arrives after `go_away` returned, on a connection not yet closed, is
    // refused too: "gone" holds from the moment the test says so.
    let gone = stop.clone();
    let svc = service_fn(move |req| {
        let st = Arc::clone(&st);
        let gone = *gone.borrow();
        async move {
            if gone {
                return Ok::<_, Infallible>(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "gone",
                ));
            }
            Ok::<_, Infallible>(idp_answer(req, &st).await)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    // Going away closes every connection too, pooled ones included.
    tokio::select! {
        _ = conn => {}
        _ = stop.wait_for(|g| *g) => {}
    }
}

/// A certificate authority made for one test (rcgen on aws-lc-rs), signing server
/// certificates for [`Idp::start_tls`]; its [`TestCa::pem`] is what a `ca_file` holds.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own, so another test CA is a stranger, not a forger.
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weir test CA {}", unique()));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self { issuer }
    }

    /// The CA's certificate as PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA as an rcgen issuer, for certificates of other kinds (`common::tls`).
    pub fn issuer(&self) -> &rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        &self.issuer
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by this CA, and
    /// its key.
    fn server_cert(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "weir test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        (cert, key)
    }

    /// A server certificate for `names` and its key, both PEM, for a server in another
    /// process (`redis-server --tls-cert-file`).
    pub fn server_pems(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.server_cert(names);
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS server config with a certificate for `names` (DNS names or IP addresses)
    /// signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let (cert, key) = self.server_cert(names);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

type IdpBody = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<IdpBody> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    resp
}

async fn idp_answer(req: Request<Incoming>, st: &IdpState) -> Response<IdpBody> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/jwks") => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let doc = st.jwks.lock().unwrap().clone();
            reply(StatusCode::OK, "application/json", doc)
        }
        (_, "/introspect") => introspect(req, st).await,
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
    }
}

/// Decodes `application/x-www-form-urlencoded` text.
pub fn form_decode(text: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                    Some(Ok(b)) => {
                        out.push(b);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

async fn introspect(req: Request<Incoming>, st: &IdpState) -> Response<IdpBody> {
    let expected = basic(CLIENT_ID, CLIENT_SECRET);
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    let form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let post = req.method() == http::Method::POST;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let token = form_decode(&String::from_utf8_lossy(&body))
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    let Some(token) = token.filter(|_| authorized && form && post) else {
        st.refused.fetch_add(1, Ordering::SeqCst);
        return reply(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"error":"invalid_client"}"#,
        );
    };
    st.introspections.fetch_add(1, Ordering::SeqCst);
    st.asked.lock().unwrap().push(token.clone());
    let mode = st.introspection.lock().unwrap().clone();
    match mode {
        Introspection::Answer => {
            let answer = st
                .tokens
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({ "active": false }));
            reply(StatusCode::OK, "application/json", answer.to_string())
        }
        Introspection::Fail => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            r#"{"error":"server_error"}"#,
        ),
        Introspection::Hang => {
            // Held until the connection is dropped (by weir's timeout or `go_away`).
            tokio::time::sleep(Duration::from_secs(120)).await;
            reply(StatusCode::GATEWAY_TIMEOUT, "text/plain", "late")
        }
    }
}

/// An address nothing listens on (bound, then released).
pub async fn unused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------
// The gateway side

/// Loads a test config (after [`config`]); the problems as text when it is refused.
pub fn try_load(yaml: &str) -> Result<weir_config::Loaded, String> {
    let text = config(yaml);
    weir_config::load_str(
        "test.yaml",
        &text,
        &MapEnv::default(),
        &weir_config::Overrides::default(),
    )
    .map_err(|p| p.to_string())
}

/// Starts weir from a config that may be refused: `Err` with the problems when it is.
pub async fn try_start(yaml: &str) -> Result<Gateway, String> {
    let loaded = try_load(yaml)?;
    let running = weir::start(loaded).await.map_err(|e| e.to_string())?;
    let addr = running.addrs[0];
    let admin = running.admin_addr.expect("admin API address");
    Ok(Gateway {
        running: Some(running),
        addr,
        admin,
        client: client(),
    })
}

/// Every `WWW-Authenticate` value of a response, joined with `, `.
pub fn www_authenticate(headers: &http::HeaderMap) -> String {
    headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a `WWW-Authenticate` text names `scheme` (as a token, case-insensitively).
pub fn names_scheme(challenges: &str, scheme: &str) -> bool {
    challenges
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .any(|t| t.eq_ignore_ascii_case(scheme))
}

/// Asserts a `401 unauthorized` problem whose `WWW-Authenticate` names each of `schemes`
/// and whose body carries none of `secrets`. Returns the `WWW-Authenticate` text.
pub async fn assert_unauthorized(
    resp: reqwest::Response,
    schemes: &[&str],
    secrets: &[&str],
    what: &str,
) -> String {
    let challenges = www_authenticate(resp.headers());
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = resp.text().await.expect("body");
    assert_eq!(status, 401, "{what}: expected 401, got {status}: {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{what}: Content-Type of a 401"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: 401 body is not JSON ({e}): {text}"));
    super::check_problem_body(&body, 401, "unauthorized", request_id.as_deref());
    for scheme in schemes {
        assert!(
            names_scheme(&challenges, scheme),
            "{what}: WWW-Authenticate `{challenges}` does not name {scheme}"
        );
    }
    for secret in secrets {
        assert!(
            !secret.is_empty() && !text.contains(secret),
            "{what}: the 401 body repeats the credential: {text}"
        );
    }
    challenges
}

/// Asserts a problem with `status` and `code` whose body carries none of `secrets`.
pub async fn assert_problem_without(
    resp: reqwest::Response,
    status: u16,
    code: &str,
    secrets: &[&str],
    what: &str,
) -> Value {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = resp.text().await.expect("body");
    assert_eq!(
        got, status,
        "{what}: expected {status} {code}, got {got}: {text}"
    );
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{what}: Content-Type of a {status}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {text}"));
    super::check_problem_body(&body, status, code, request_id.as_deref());
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what}: the problem repeats a secret: {text}"
        );
    }
    body
}

/// The value of one sample in a Prometheus text exposition, labels in any order; 0 when
/// the series is absent (counters at zero may not be written).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    super::limits::samples(text, name)
        .into_iter()
        .find(|(found, _)| {
            found.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| found.get(*k).is_some_and(|x| x == v))
        })
        .map_or(0.0, |(_, v)| v)
}

/// `weir_auth_failures_total{route, reason}` from a metrics text.
pub fn auth_failures(text: &str, route: &str, reason: &str) -> f64 {
    metric_value(
        text,
        "weir_auth_failures_total",
        &[("route", route), ("reason", reason)],
    )
}
