//! A real etcd (v3 API) for the discovery tests: its own `etcd` process on free ports of
//! 127.0.0.1 (client and peer: etcd cannot bind port 0, so a port is picked by binding one
//! and letting it go), a temp data dir, killed on drop; stopped and restarted on the same
//! ports and data. Keys are written with `etcdctl` (weir's tests do not depend on an etcd
//! client crate), so a put returns when etcd acknowledged it. Optionally with auth (user
//! `root`) or with TLS from a CA made for the test, with client certificates required.
//!
//! [`StallProxy`] sits between weir and etcd and can hold back one client's second gRPC
//! call: the window between a listing and its watch, which a test widens to compact under it.
//!
//! When `etcd` is not installed, the `*_or_skip` constructors fail the test under `CI=true`
//! (a missing component is a failure there) and otherwise skip it loudly.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::TempDir;

/// How long a starting etcd may take to answer `endpoint health`.
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// The password of `root` once [`Etcd::enable_auth`] ran.
pub const ROOT_PASSWORD: &str = "weir-test-secret";

/// An `etcd` child process serving `127.0.0.1:<client_port>`.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    /// Data, log and certificates; removed on drop.
    dir: TempDir,
    child: Option<Child>,
    tls: bool,
    auth: bool,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/bin").join(name);
        p.is_file().then_some(p)
    })
}

/// Whether `etcd` and `etcdctl` are installed; when not, panics under `CI=true` and
/// otherwise says loudly that the test is skipped.
fn installed_or_skip() -> bool {
    if binary("etcd").is_some() && binary("etcdctl").is_some() {
        return true;
    }
    let msg = "etcd or etcdctl not installed (looked on PATH and in /usr/bin); the etcd \
               discovery tests need them: apt-get install etcd-server etcd-client";
    super::missing_component(msg)
}

impl Etcd {
    /// Starts a plain etcd, or returns `None` after a loud message when it is not installed
    /// (`let Some(etcd) = Etcd::start_or_skip() else { return };`).
    pub fn start_or_skip() -> Option<Self> {
        installed_or_skip().then(|| Self::start(false))
    }

    /// As [`Etcd::start_or_skip`], for an etcd that speaks only TLS with a certificate for
    /// 127.0.0.1 and requires a client certificate ([`Etcd::ca_file`],
    /// [`Etcd::client_cert_file`], [`Etcd::client_key_file`]).
    pub fn start_tls_or_skip() -> Option<Self> {
        installed_or_skip().then(|| Self::start(true))
    }

    fn start(tls: bool) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut etcd = Self {
                client_port: super::free_port(),
                peer_port: super::free_port(),
                dir: TempDir::new("etcd"),
                child: None,
                tls,
                auth: false,
            };
            if tls {
                write_certificates(etcd.dir.path());
            }
            match etcd.spawn_and_wait() {
                Ok(()) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start: {last_error}");
    }

    /// `http://127.0.0.1:<port>`, or `https://` with TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client-key.pem")
    }

    /// Puts `value` at `key`; returns once etcd acknowledged it.
    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]);
    }

    /// Puts a target's value (`{"url": ..., "weight": ...}`) at `key`.
    pub fn put_target(&self, key: &str, url: &str, weight: u32) {
        self.put(key, &format!(r#"{{"url": "{url}", "weight": {weight}}}"#));
    }

    pub fn delete(&self, key: &str) {
        self.ctl(&["del", key]);
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status JSON");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {out}"))
    }

    /// Compacts the history past every write made so far: a watch that starts at any
    /// revision up to the next one after them is then canceled as compacted. (etcd keeps
    /// the compaction revision itself watchable, so a marker key outside the tests' prefixes
    /// is written first to move past it.) Returns the compaction revision.
    pub fn compact(&self) -> i64 {
        self.put("/weir-test/compaction-marker", "x");
        let revision = self.revision();
        self.ctl(&["compact", &revision.to_string(), "--physical"]);
        revision
    }

    /// Turns etcd's authentication on with user `root` ([`ROOT_PASSWORD`]); every later
    /// command of this harness logs in as root.
    pub fn enable_auth(&mut self) {
        self.ctl(&["user", "add", &format!("root:{ROOT_PASSWORD}")]);
        self.ctl(&["user", "grant-role", "root", "root"]);
        self.ctl(&["auth", "enable"]);
        self.auth = true;
    }

    /// Kills etcd (SIGKILL: connections drop without a goodbye) and waits for it to exit.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts etcd again on the same ports with the same data; waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("etcd did not restart on port {}: {e}", self.client_port);
        }
    }

    /// What etcd wrote to its log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Runs `etcdctl` against this etcd; panics when it fails. Its standard output.
    fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}\n--- etcd log ---\n{}", self.log()))
    }

    fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(binary("etcdctl").expect("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        if self.tls {
            cmd.arg(format!("--cacert={}", self.ca_file().display()))
                .arg(format!("--cert={}", self.client_cert_file().display()))
                .arg(format!("--key={}", self.client_key_file().display()));
        }
        if self.auth {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let mut cmd = Command::new(binary("etcd").expect("etcd"));
        cmd.arg("--name=weir-test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weir-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if self.tls {
            let path = |f: &str| dir.join(f).display().to_string();
            cmd.arg(format!("--cert-file={}", path("server.pem")))
                .arg(format!("--key-file={}", path("server-key.pem")))
                .arg(format!("--trusted-ca-file={}", path("ca.pem")))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run etcd: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd on port {} exited with {status}; its log:\n{}",
                    self.client_port,
                    self.log()
                ));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                && self.try_ctl(&["endpoint", "health"]).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "etcd on port {} was not healthy within {READY_DEADLINE:?}; its log:\n{}",
                    self.client_port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`
/// (`ca.pem`, `server.pem`, `server-key.pem`, `client.pem`, `client-key.pem`).
fn write_certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "weir etcd test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: &[&str], usage: ExtendedKeyUsagePurpose, file: &str| {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).unwrap();
    };
    leaf(
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, "client");
    std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
}

// ---------------------------------------------------------------------------------------
// A proxy that can stall a client between two calls

/// A TCP proxy to an etcd that, while armed, holds back the second gRPC call of the next
/// connection (its HTTP/2 frames from the second new stream on) until released. Without
/// auth a fresh client's first call is the listing and its second the watch, so this freezes
/// a watcher right between the two: whatever the test writes and compacts meanwhile is what
/// the watch, once released, starts under.
pub struct StallProxy {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallProxy {
    pub async fn start(to: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let (armed2, held2) = (Arc::clone(&armed), Arc::clone(&held));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let stall = Stall {
                    armed: Arc::clone(&armed2),
                    held: Arc::clone(&held2),
                    released: released.clone(),
                };
                connections.spawn(pipe(client, server, stall));
            }
        });
        Self {
            addr,
            armed,
            held,
            release,
            task,
        }
    }

    /// `http://` to the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next connection's second call will be held.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Calls held so far.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Lets held calls (and all that follows them) through.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

struct Stall {
    armed: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    released: watch::Receiver<bool>,
}

/// Copies both ways; the client-to-server side is read frame by frame (RFC 9113 §4.1) so
/// that it can stop in front of the HEADERS frame that opens the second stream.
async fn pipe(client: tokio::net::TcpStream, server: tokio::net::TcpStream, mut stall: Stall) {
    const PREFACE: usize = 24;
    const HEADERS: u8 = 1;
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut preface_left = PREFACE;
    let mut streams: HashSet<u32> = HashSet::new();
    let mut watching = true;
    loop {
        let n = match client_rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        loop {
            if preface_left > 0 {
                let take = preface_left.min(buf.len() - pos);
                preface_left -= take;
                pos += take;
                if preface_left > 0 {
                    break;
                }
                continue;
            }
            if !watching || buf.len() - pos < 9 {
                break;
            }
            let h = &buf[pos..pos + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if buf.len() - pos < 9 + len {
                break;
            }
            if h[3] == HEADERS && streams.insert(stream) && streams.len() == 2 {
                watching = false;
                if stall.armed.swap(false, Ordering::SeqCst) {
                    if server_tx.write_all(&buf[..pos]).await.is_err() {
                        return;
                    }
                    buf.drain(..pos);
                    pos = 0;
                    stall.held.fetch_add(1, Ordering::SeqCst);
                    let _ = stall.released.wait_for(|r| *r).await;
                }
            }
            pos += 9 + len;
        }
        // Once past the second stream nothing is parsed: all bytes go through as they come.
        let upto = if watching { pos } else { buf.len() };
        if server_tx.write_all(&buf[..upto]).await.is_err() {
            break;
        }
        buf.drain(..upto);
    }
    let _ = server_tx.shutdown().await;
    let _ = down.await;
}
