//! A throwaway `redis-server` for tests: a free port, no persistence, killed on drop; plain,
//! or TLS only with a certificate from a test CA (Debian's redis-server is built with TLS).
//! Without `redis-server` installed the tests skip loudly, or fail when `CI=true`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::auth::test_tls::TestCa;

pub(crate) struct TestRedis {
    pub(crate) port: u16,
    child: Option<Child>,
    /// With TLS: the directory of `cert.pem`, `key.pem` and `ca.pem`, removed on drop.
    tls: Option<PathBuf>,
}

impl TestRedis {
    /// A running server, or `None` (after a loud message) when `redis-server` is missing.
    pub(crate) fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed (CI=true): apt-get install redis-server"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: redis-server is not installed; these Redis tests did not run !!!!!!!!\n"
            );
            return None;
        }
        let port = free_port();
        let mut r = Self {
            port,
            child: None,
            tls: None,
        };
        r.restart();
        Some(r)
    }

    /// A server that speaks only TLS, with a certificate for 127.0.0.1 signed by `ca`.
    pub(crate) fn start_tls(ca: &TestCa) -> Option<Self> {
        let mut r = Self::start()?;
        r.kill();
        let dir =
            std::env::temp_dir().join(format!("weir-redis-tls-{}-{}", std::process::id(), r.port));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let (cert, key) = ca.server_pems(&["127.0.0.1"]);
        std::fs::write(dir.join("cert.pem"), cert).expect("write cert");
        std::fs::write(dir.join("key.pem"), key).expect("write key");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        r.tls = Some(dir);
        r.restart();
        Some(r)
    }

    /// `rediss://127.0.0.1:PORT` for a TLS server.
    pub(crate) fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no shutdown handshake, like a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on its port and waits until it answers PING.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(dir) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem")),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // A TLS server cannot be PINGed in plain text; listening is enough for it.
            let ready = match self.tls {
                None => self.pings(),
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A three-primary Redis Cluster on free ports, made with `redis-cli --cluster create`.
pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<TestRedis>,
    dir: std::path::PathBuf,
}

impl TestCluster {
    pub(crate) fn start() -> Option<Self> {
        // Reuses the single-server check (and its skip message) for the binary.
        let probe = TestRedis::start()?;
        drop(probe);
        let dir = std::env::temp_dir().join(format!("weir-redis-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut nodes: Vec<TestRedis> = Vec::new();
        let mut taken: Vec<u16> = Vec::new();
        let mut attempts = 0;
        while nodes.len() < 3 {
            attempts += 1;
            assert!(attempts <= 10, "cluster node did not start in 10 attempts");
            // The bus port would default to `port + 10000`: a port nobody checked is free,
            // and past 65535 for high ephemeral ports. Pick a free one too. A port handed
            // out and taken back can be handed out again (to us, or to a test running
            // beside us), so ports are kept distinct and a node that exits is retried.
            let port = free_port_except(&taken);
            taken.push(port);
            let bus = free_port_except(&taken);
            taken.push(bus);
            let child = Command::new("redis-server")
                .current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let mut node = TestRedis {
                port,
                child: Some(child),
                tls: None,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut started = true;
            while !node.pings() {
                let exited = node
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited {
                    started = false;
                    break;
                }
                assert!(Instant::now() < deadline, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            if started {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Self { nodes, dir })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TestRedis::url).collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port the OS just handed out and took back: free, as far as anyone can know.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A free port that is none of `taken`.
fn free_port_except(taken: &[u16]) -> u16 {
    loop {
        let port = free_port();
        if !taken.contains(&port) {
            return port;
        }
    }
}
