//! TLS for the black-box tests: certificates of every key type from a test CA (rcgen),
//! directly or through an intermediate; a rustls client that reports what it negotiated,
//! with HTTP/1.1 (one request, or keep-alive with [`H1`]) and HTTP/2 on top; an HTTPS origin
//! that says what it saw (HTTP version, headers, the client certificate's presence); and
//! the log lines weir writes on the test's thread ([`Logs`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::TempDir;
use super::idp::{TestCa, unique};

/// The key types weir serves.
#[derive(Clone, Copy, Debug)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
}

/// A certificate and key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    /// Writes the certificate and key as `<stem>.crt` and `<stem>.key` in `dir`.
    pub fn write(&self, dir: &TempDir, stem: &str) -> (PathBuf, PathBuf) {
        (
            dir.write(&format!("{stem}.crt"), &self.cert_pem),
            dir.write(&format!("{stem}.key"), &self.key_pem),
        )
    }

    /// The same key in OpenSSL's traditional form (`RSA PRIVATE KEY`, PKCS#1, or `EC
    /// PRIVATE KEY`, SEC1) instead of PKCS#8; `None` without an `openssl` binary.
    pub fn traditional_key(&self) -> Option<String> {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new("openssl")
            .args(["pkey", "-traditional"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.key_pem.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl pkey -traditional: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).unwrap())
    }
}

impl TestCa {
    /// A certificate for `names` signed by this CA: a server's, or with `client` a client's
    /// whose subject is `CN=<names[0]>, O=weir tests`.
    pub fn leaf(&self, names: &[&str], key: KeyType, client: bool) -> Leaf {
        sign_leaf(self.issuer(), names, key, client)
    }

    /// An intermediate CA signed by this one: its leaves' `cert_pem` is the chain (the leaf,
    /// then the intermediate), as a `cert_file` holds it.
    pub fn intermediate(&self) -> Intermediate {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(
            DnType::CommonName,
            format!("weir test intermediate {}", unique()),
        );
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("intermediate key");
        let issuer = rcgen::CertifiedIssuer::signed_by(params, key, self.issuer())
            .expect("intermediate certificate");
        Intermediate { issuer }
    }
}

/// An intermediate CA (see [`TestCa::intermediate`]).
pub struct Intermediate {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Intermediate {
    /// [`TestCa::leaf`], signed by the intermediate; `cert_pem` holds the chain.
    pub fn leaf(&self, names: &[&str], key: KeyType, client: bool) -> Leaf {
        let mut leaf = sign_leaf(&self.issuer, names, key, client);
        leaf.cert_pem.push_str(&self.issuer.pem());
        leaf
    }
}

fn sign_leaf(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    names: &[&str],
    key: KeyType,
    client: bool,
) -> Leaf {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let sans: Vec<String> = if client {
        Vec::new()
    } else {
        names.iter().map(|n| (*n).to_owned()).collect()
    };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "weir tests");
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.use_authority_key_identifier_extension = true;
    let alg = match key {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    let key = KeyPair::generate_for(alg).expect("key generation");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// How a test client connects.
pub struct ClientTls<'a> {
    pub ca_pem: &'a str,
    pub sni: &'a str,
    pub alpn: &'a [&'a str],
    pub tls12_only: bool,
    pub identity: Option<&'a Leaf>,
}

impl<'a> ClientTls<'a> {
    pub fn new(ca_pem: &'a str, sni: &'a str) -> Self {
        Self {
            ca_pem,
            sni,
            alpn: &["http/1.1"],
            tls12_only: false,
            identity: None,
        }
    }

    /// The TLS handshake with weir at `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match self.identity {
            Some(id) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(self.sni.to_owned()).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }
}

/// The leaf certificate weir presented.
pub fn served_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// `GET path` over HTTP/1.1 on an open TLS stream: the status and body.
pub async fn get_h1(tls: &mut TlsStream<TcpStream>, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: weir.test\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    // A close without close_notify is fine here: the whole response was read.
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET path` over HTTP/2 on an open TLS stream: the status.
pub async fn get_h2(tls: TlsStream<TcpStream>, path: &str) -> u16 {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("https://weir.test{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    resp.status().as_u16()
}

/// An HTTPS origin answering every request with JSON: `version`, `headers`, and whether the
/// client presented a certificate.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    /// `GET /health` requests answered (health probes).
    pub probes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsOrigin {
    /// Serves `cert`, with ALPN `h2` and `http/1.1`; with `client_ca`, clients must present
    /// a certificate it signed.
    pub async fn start(cert: &Leaf, client_ca: Option<&str>) -> Self {
        Self::start_with(cert, client_ca, &["h2", "http/1.1"]).await
    }

    /// [`TlsOrigin::start`] offering only the protocols of `alpn` (in order).
    pub async fn start_with(cert: &Leaf, client_ca: Option<&str>, alpn: &[&str]) -> Self {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&probes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        if req.uri().path() == "/health" {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            let headers: serde_json::Map<String, serde_json::Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                                .collect();
                            let body = json!({
                                "version": format!("{:?}", req.version()),
                                "headers": headers,
                                "client_cert": client_cert,
                            });
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, probes, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// A fresh name, so tests running together never share one.
pub fn name(prefix: &str) -> String {
    format!("{prefix}-{}", unique())
}

/// One HTTP/1.1 keep-alive connection over an open TLS stream: every request goes over it.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1 {
    pub async fn over(tls: TlsStream<TcpStream>) -> Self {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over TLS");
        tokio::spawn(conn);
        Self { sender }
    }

    /// `GET path` with `headers`: the status and the body.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.sender.ready().await.expect("the connection is open");
        let mut req = Request::get(path).header("host", "weir.test");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self
            .sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .expect("a response");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// The log lines written on this thread while it lives: weir started by a test on a
/// current-thread runtime logs everything here.
pub struct Logs {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    pub fn capture() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(Arc::clone(&sink)))
            .finish();
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap()).into_owned()
    }

    /// The first line holding every one of `needles`.
    pub fn line_with(&self, needles: &[&str]) -> Option<String> {
        self.text()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
    }
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
