//! A real `redis-server` for the distributed rate-limit tests: its own process on a free port
//! of 127.0.0.1, no persistence, killed on drop. Tests can stop it, restart it on the same
//! port, freeze it (SIGSTOP: a Redis that accepts connections but never answers) and send it
//! raw commands. Or a Redis that speaks only TLS ([`RedisServer::start_tls_or_skip`]), with a
//! certificate for 127.0.0.1 from a [`TestCa`] (Debian's redis-server is built with TLS);
//! raw commands are plain text, so not for that one.
//!
//! When `redis-server` is not installed, [`RedisServer::start_or_skip`] fails the test under
//! `CI=true` (a missing component is a failure there) and otherwise skips it loudly.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;
use super::idp::TestCa;

/// How long a starting `redis-server` may take to answer `PING`.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` child process on `127.0.0.1:<port>`.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    /// Working directory and log file; removed on drop.
    dir: TempDir,
    child: Option<Child>,
    paused: bool,
    /// A one-node Redis Cluster (`cluster-enabled yes`, every slot on this node).
    cluster: bool,
    /// The cluster bus port (cluster mode only; by default it would be `port + 10000`,
    /// which may be taken or past 65535).
    bus_port: u16,
    /// TLS only (`--port 0 --tls-port <port>`), with `cert.pem`, `key.pem` and `ca.pem` in
    /// `dir`.
    tls: bool,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// The `redis-server` binary: on `PATH`, else `/usr/bin/redis-server`.
    pub fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("redis-server"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let p = PathBuf::from("/usr/bin/redis-server");
            p.is_file().then_some(p)
        })
    }

    /// Starts a Redis, or, when `redis-server` is not installed, returns `None` after a loud
    /// message (the caller returns early: `let Some(redis) = RedisServer::start_or_skip()
    /// else { return };`). Under `CI=true` a missing `redis-server` panics instead.
    pub fn start_or_skip() -> Option<Self> {
        installed_or_skip().then(Self::start)
    }

    /// As [`RedisServer::start_or_skip`], for a one-node Redis Cluster.
    pub fn start_cluster_or_skip() -> Option<Self> {
        installed_or_skip().then(Self::start_cluster)
    }

    /// As [`RedisServer::start_or_skip`], for a Redis that speaks only TLS with a certificate
    /// for 127.0.0.1 signed by `ca`; [`RedisServer::ca_file`] holds `ca`'s certificate.
    pub fn start_tls_or_skip(ca: &TestCa) -> Option<Self> {
        installed_or_skip().then(|| Self::start_mode_tls(false, Some(ca)))
    }

    /// Starts a Redis on a free port; panics when `redis-server` is missing or does not come
    /// up. A port taken between choosing and binding it is retried with another.
    pub fn start() -> Self {
        Self::start_mode(false)
    }

    /// Starts a one-node Redis Cluster: cluster mode, all 16384 slots assigned to the node,
    /// ready once `CLUSTER INFO` says `cluster_state:ok`. Clients given its URL as a seed
    /// discover that it serves every slot.
    pub fn start_cluster() -> Self {
        Self::start_mode(true)
    }

    fn start_mode(cluster: bool) -> Self {
        Self::start_mode_tls(cluster, None)
    }

    fn start_mode_tls(cluster: bool, ca: Option<&TestCa>) -> Self {
        let binary = Self::binary().expect("redis-server not installed");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = super::free_port();
            let mut server = Self {
                binary: binary.clone(),
                port,
                dir: TempDir::new("redis"),
                child: None,
                paused: false,
                cluster,
                bus_port: if cluster { super::free_port() } else { 0 },
                tls: ca.is_some(),
            };
            if let Some(ca) = ca {
                let (cert, key) = ca.server_pems(&["127.0.0.1"]);
                let dir = server.dir.path();
                std::fs::write(dir.join("cert.pem"), cert).expect("write cert.pem");
                std::fs::write(dir.join("key.pem"), key).expect("write key.pem");
                std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
            }
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/0`; for a cluster node, which has only database 0,
    /// `redis://127.0.0.1:<port>`; with TLS, `rediss://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://127.0.0.1:{}/0", self.port)
        } else if self.cluster {
            format!("redis://127.0.0.1:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    /// The CA certificate a TLS server's certificate is signed by (what `redis.ca_file`
    /// names).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Whether this is a (one-node) Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the server process is running (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, no goodbye to clients) and waits for it to exit. Its port
    /// then refuses connections.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port (empty: nothing is persisted) and waits until
    /// it answers `PING`. Stops it first if it is running.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel, but no
    /// command is answered until [`RedisServer::resume`]. Models a Redis slower than any
    /// timeout.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// Unfreezes a paused server (SIGCONT); it then answers what queued up meanwhile.
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    /// Sends one command (arguments as RESP bulk strings) and returns the reply in RESP,
    /// e.g. `+PONG\r\n` or `*2\r\n$3\r\nfoo\r\n...` (arrays and bulk strings read fully).
    pub fn command(&self, args: &[&str]) -> String {
        command(self.addr(), args, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("redis command {args:?}: {e}"))
    }

    /// The keys matching `pattern` (a `KEYS` pattern), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["KEYS", pattern]);
        let mut keys = bulk_strings(&reply);
        keys.sort();
        keys
    }

    /// The integer reply of a command (`TTL`, `PTTL`, `DBSIZE`, ...).
    pub fn int(&self, args: &[&str]) -> i64 {
        let reply = self.command(args);
        reply
            .strip_prefix(':')
            .and_then(|r| r.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: not an integer reply: {reply:?}"))
    }

    /// What the server wrote to its log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let listen = if self.tls {
            let path = |f: &str| dir.join(f).display().to_string();
            vec![
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                self.port.to_string(),
                "--tls-cert-file".to_owned(),
                path("cert.pem"),
                "--tls-key-file".to_owned(),
                path("key.pem"),
                "--tls-ca-cert-file".to_owned(),
                path("ca.pem"),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]
        } else {
            vec!["--port".to_owned(), self.port.to_string()]
        };
        let child = Command::new(&self.binary)
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(if self.cluster {
                vec![
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-port".to_owned(),
                    self.bus_port.to_string(),
                    "--cluster-config-file".to_owned(),
                    "nodes.conf".to_owned(),
                ]
            } else {
                Vec::new()
            })
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited with {status}; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            // A TLS-only server cannot be PINGed in plain text; listening is enough for it.
            let ready = if self.tls {
                TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)).is_ok()
            } else {
                ping(self.addr())
            };
            if ready {
                return if self.cluster {
                    self.assign_all_slots(deadline)
                } else {
                    Ok(())
                };
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {READY_DEADLINE:?}; \
                     its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Gives this node every slot (unless its `nodes.conf`, kept across restarts, already
    /// does) and waits for `cluster_state:ok`.
    fn assign_all_slots(&mut self, deadline: Instant) -> Result<(), String> {
        let timeout = Duration::from_secs(2);
        let info = |server: &Self| {
            command(server.addr(), &["CLUSTER", "INFO"], timeout).unwrap_or_default()
        };
        if !info(self).contains("cluster_slots_assigned:16384") {
            let reply = command(
                self.addr(),
                &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"],
                timeout,
            )?;
            if !reply.starts_with("+OK") {
                return Err(format!("CLUSTER ADDSLOTSRANGE 0 16383: {reply:?}"));
            }
        }
        while !info(self).contains("cluster_state:ok") {
            if Instant::now() >= deadline {
                let last = info(self);
                self.kill();
                return Err(format!(
                    "the one-node cluster on port {} is not ok: {last}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if self.paused {
            // A stopped process still dies of SIGKILL; resume anyway so nothing lingers.
            self.signal("CONT");
            self.paused = false;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}: {status}", child.id());
    }
}

/// Whether `redis-server` is installed; when it is not, panics under `CI=true` and otherwise
/// says loudly that the test is skipped.
fn installed_or_skip() -> bool {
    if RedisServer::binary().is_some() {
        return true;
    }
    let msg = "redis-server not installed (looked on PATH and at /usr/bin/redis-server); \
               the distributed rate-limit tests need it: apt-get install redis-server";
    super::missing_component(msg)
}

/// True when a raw `PING` on `addr` is answered `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    command(addr, &["PING"], Duration::from_millis(500)).is_ok_and(|r| r == "+PONG\r\n")
}

/// One command in RESP over a new connection; the whole reply, raw.
fn command(addr: SocketAddr, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    read_reply(&mut reader, &mut out)?;
    Ok(out)
}

/// Reads one RESP reply (recursively for arrays) into `out`.
fn read_reply(reader: &mut impl BufRead, out: &mut String) -> Result<(), String> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if n == 0 || !line.ends_with("\r\n") {
        return Err(format!("connection closed mid-reply: {line:?}"));
    }
    out.push_str(&line);
    let count = |l: &str| l[1..].trim_end().parse::<i64>().map_err(|e| e.to_string());
    match line.as_bytes()[0] {
        b'$' => {
            let len = count(&line)?;
            if len >= 0 {
                let mut data = vec![0; usize::try_from(len).unwrap_or(0) + 2];
                std::io::Read::read_exact(reader, &mut data).map_err(|e| e.to_string())?;
                out.push_str(&String::from_utf8_lossy(&data));
            }
        }
        b'*' => {
            for _ in 0..count(&line)?.max(0) {
                read_reply(reader, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The bulk strings of a RESP array reply, in order.
fn bulk_strings(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = reply.split("\r\n");
    while let Some(line) = lines.next() {
        if line.starts_with('$')
            && line != "$-1"
            && let Some(value) = lines.next()
        {
            out.push(value.to_owned());
        }
    }
    out
}
