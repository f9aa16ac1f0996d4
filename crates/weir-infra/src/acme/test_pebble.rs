//! A throwaway pebble (Let's Encrypt's test ACME CA, Debian's `pebble`) for the ACME tests,
//! and the two challenge servers it validates against, answering from [`Challenges`] the way
//! weir's listeners do.
//!
//! Each test starts its own pebble on free ports with its own HTTPS certificate (from a test
//! CA: the package ships none) and killed on drop. Pebble validates by connecting to the
//! domain (`localhost`) at its configured `httpPort` / `tlsPort`: the challenge servers are
//! bound first and pebble is told their ports. Without `pebble` installed the tests skip
//! loudly, or fail when `CI=true`.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{ACME_TLS_ALPN, Challenges};
use crate::auth::test_tls::TestCa;

/// A running pebble and the challenge servers it validates against.
pub(super) struct Pebble {
    /// The ACME directory URL.
    pub(super) directory: String,
    /// Trust for pebble's own HTTPS (the directory and the management API).
    pub(super) ca_pem: Vec<u8>,
    /// Where the challenge servers answer from.
    pub(super) challenges: Arc<Challenges>,
    /// Requests the HTTP-01 server answered with a key authorization.
    pub(super) http01_answers: Arc<AtomicUsize>,
    /// acme-tls/1 handshakes the TLS-ALPN-01 server completed.
    pub(super) tls_alpn01_answers: Arc<AtomicUsize>,
    management: u16,
    child: Child,
    dir: PathBuf,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Pebble {
    /// A running pebble, or `None` (after a loud message) when it is not installed.
    /// `validity_secs` sets the lifetime of the certificates it issues.
    pub(super) async fn start(validity_secs: Option<u64>) -> Option<Self> {
        let Some(binary) = find("pebble") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "pebble is not installed (CI=true): apt-get install pebble"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: pebble is not installed; this ACME test did not run !!!!!!!!\n"
            );
            return None;
        };
        let challenges = Arc::new(Challenges::default());
        let http_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http-01");
        let tls_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls-alpn-01");
        let http_port = http_listener.local_addr().expect("addr").port();
        let tls_port = tls_listener.local_addr().expect("addr").port();
        let http01_answers = Arc::new(AtomicUsize::new(0));
        let tls_alpn01_answers = Arc::new(AtomicUsize::new(0));
        let servers = vec![
            tokio::spawn(serve_http01(
                http_listener,
                Arc::clone(&challenges),
                Arc::clone(&http01_answers),
            )),
            tokio::spawn(serve_tls_alpn01(
                tls_listener,
                Arc::clone(&challenges),
                Arc::clone(&tls_alpn01_answers),
            )),
        ];

        let dir = temp_dir("pebble");
        let ca = TestCa::new();
        let (cert, key) = ca.server_pems(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), cert).expect("write pebble cert");
        std::fs::write(dir.join("key.pem"), key).expect("write pebble key");
        let listen = free_port();
        let management = free_port();
        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = validity_secs {
            config["certificateValidityPeriod"] = secs.into();
        }
        let config_path = dir.join("pebble-config.json");
        std::fs::write(
            &config_path,
            serde_json::json!({ "pebble": config }).to_string(),
        )
        .expect("write pebble config");
        let log = std::fs::File::create(dir.join("pebble.log")).expect("pebble log");
        let child = Command::new(binary)
            .arg("-config")
            .arg(&config_path)
            .current_dir(&dir)
            // Full speed (no random validation sleeps), no deliberately rejected nonces, and
            // every order validated afresh (no reuse of an earlier authorization).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("pebble log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pebble");
        let mut pebble = Self {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_pem: ca.pem().into_bytes(),
            challenges,
            http01_answers,
            tls_alpn01_answers,
            management,
            child,
            dir,
            servers,
        };
        pebble.wait_ready().await;
        Some(pebble)
    }

    /// Waits until the directory answers.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = self.get(&self.directory.clone()).await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pebble exited ({status}); see {}", self.log().display());
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not answer; see {}",
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The root pebble made at launch, PEM, from its management API.
    pub(super) async fn root_pem(&self) -> Vec<u8> {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let (status, body) = self.get(&url).await.expect("GET /roots/0");
        assert_eq!(status, 200, "GET /roots/0");
        body.to_vec()
    }

    async fn get(&self, url: &str) -> Result<(u16, Bytes), String> {
        let client =
            crate::auth::tls::clients("127.0.0.1", Some(&self.ca_pem), Duration::from_secs(2), 1)?
                .into_vec()
                .pop()
                .ok_or("no client")?;
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    pub(super) fn log(&self) -> PathBuf {
        self.dir.join("pebble.log")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("pebble's log is kept at {}", self.log().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh directory under the system's temp dir; the caller removes it.
pub(super) fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weir-acme-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `name` on `PATH`, or in /usr/bin (where Debian puts it) when `PATH` is minimal.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A port the OS just handed out and took back: free, as far as anyone can know.
fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// HTTP-01: `GET /.well-known/acme-challenge/{token}` answered from [`Challenges::http01`].
async fn serve_http01(
    listener: TcpListener,
    challenges: Arc<Challenges>,
    answers: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let challenges = Arc::clone(&challenges);
        let answers = Arc::clone(&answers);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = req
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| challenges.http01(token));
                let resp = match answer {
                    Some(body) => {
                        answers.fetch_add(1, Ordering::SeqCst);
                        Response::new(Full::new(Bytes::from(body)))
                    }
                    None => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    }
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The certificate resolver a TLS listener needs for TLS-ALPN-01: a ClientHello offering
/// acme-tls/1 gets the pending challenge certificate for its SNI name, if any.
#[derive(Debug)]
struct AlpnResolver(Arc<Challenges>);

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            return None;
        }
        self.0.tls_alpn01(hello.server_name()?)
    }
}

/// TLS-ALPN-01: completes acme-tls/1 handshakes with the challenge certificate, then closes.
async fn serve_tls_alpn01(
    listener: TcpListener,
    challenges: Arc<Challenges>,
    answers: Arc<AtomicUsize>,
) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlpnResolver(challenges)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let answers = Arc::clone(&answers);
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(stream).await
                && tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN)
            {
                answers.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}
