//! A real Consul agent for the Consul discovery tests: `consul agent -dev` (a one-node
//! server, state in memory) on free ports of 127.0.0.1, its DNS and gRPC off, killed on
//! drop. Tests register service instances with TTL checks through the agent's HTTP API,
//! flip the checks, stop the agent and start it again on the same ports (empty: -dev keeps
//! nothing). Optionally with ACLs on, default deny, and a master token; or with an HTTPS
//! port besides the HTTP one, its certificate for 127.0.0.1 from a [`TestCa`].
//!
//! The binary: `WEIR_CONSUL`, else `consul` on `PATH`, else what `scripts/fetch-consul`
//! puts at `target/tools/consul-1.8.7/consul`. When there is none, [`Consul::start_or_skip`]
//! fails the test under `CI=true` and otherwise skips it loudly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::TempDir;
use super::idp::TestCa;

/// How long a starting agent may take to elect itself leader.
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// A `consul agent -dev` child process.
pub struct Consul {
    binary: PathBuf,
    ports: Ports,
    /// The master token when ACLs are on (default deny).
    acl_token: Option<String>,
    /// The HTTPS port, with `cert.pem` and `key.pem` in `dir`.
    https: Option<u16>,
    /// Holds the agent's log; removed on drop.
    dir: TempDir,
    child: Option<Child>,
    http: reqwest::Client,
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    http: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Consul {
    /// The `consul` binary: `WEIR_CONSUL`, else on `PATH`, else the one
    /// `scripts/fetch-consul` fetches.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("WEIR_CONSUL") {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("consul"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/tools/consul-1.8.7/consul");
            p.is_file().then_some(p)
        })
    }

    /// Starts an agent, or, when there is no `consul` binary, returns `None` after a loud
    /// message (`let Some(consul) = Consul::start_or_skip().await else { return };`). Under
    /// `CI=true` a missing binary panics instead.
    pub async fn start_or_skip() -> Option<Self> {
        Self::start_inner(None, None).await
    }

    /// As [`Consul::start_or_skip`], also serving HTTPS ([`Consul::https_address`]) with a
    /// certificate for 127.0.0.1 signed by `ca`. The harness itself keeps to HTTP.
    pub async fn start_tls_or_skip(ca: &TestCa) -> Option<Self> {
        Self::start_inner(None, Some(ca)).await
    }

    /// As [`Consul::start_or_skip`], with ACLs on: default deny, `token` the master token
    /// (which this harness uses for its own calls).
    pub async fn start_acl_or_skip(token: &str) -> Option<Self> {
        Self::start_inner(Some(token.to_owned()), None).await
    }

    async fn start_inner(acl_token: Option<String>, ca: Option<&TestCa>) -> Option<Self> {
        let binary = installed_or_skip()?;
        let mut last_error = String::new();
        // A port taken between choosing and binding it: try again with others.
        for _ in 0..3 {
            let mut consul = Self {
                binary: binary.clone(),
                ports: Ports {
                    http: super::free_port(),
                    serf_lan: super::free_port(),
                    serf_wan: super::free_port(),
                    server: super::free_port(),
                },
                acl_token: acl_token.clone(),
                https: ca.map(|_| super::free_port()),
                dir: TempDir::new("consul"),
                child: None,
                http: super::client(),
            };
            if let Some(ca) = ca {
                let (cert, key) = ca.server_pems(&["127.0.0.1"]);
                consul.dir.write("cert.pem", &cert);
                consul.dir.write("key.pem", &key);
            }
            match consul.spawn_and_wait().await {
                Ok(()) => return Some(consul),
                Err(e) => last_error = e,
            }
        }
        panic!("consul did not start: {last_error}");
    }

    /// `http://127.0.0.1:<port>`, what `consul.address` names.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// `https://127.0.0.1:<port>` of an agent started with [`Consul::start_tls_or_skip`].
    pub fn https_address(&self) -> String {
        let port = self.https.expect("started with start_tls_or_skip");
        format!("https://127.0.0.1:{port}")
    }

    /// Kills the agent (SIGKILL) and waits for it to exit; its port then refuses
    /// connections.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the agent again on the same ports and waits for a leader. It knows no
    /// services: a -dev agent keeps nothing.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("consul did not restart on port {}: {e}", self.ports.http);
        }
    }

    /// Registers instance `id` of `service` at `addr` with `tags` and a passing TTL check
    /// (see [`Consul::fail`]); weight 1.
    pub async fn register(&self, id: &str, service: &str, tags: &[&str], addr: SocketAddr) {
        self.register_weighted(id, service, tags, addr, 1).await;
    }

    /// As [`Consul::register`], with `Weights.Passing`.
    pub async fn register_weighted(
        &self,
        id: &str,
        service: &str,
        tags: &[&str],
        addr: SocketAddr,
        weight: u32,
    ) {
        let body = json!({
            "ID": id,
            "Name": service,
            "Tags": tags,
            "Address": addr.ip().to_string(),
            "Port": addr.port(),
            "Weights": { "Passing": weight, "Warning": 1 },
            "Check": {
                "CheckID": check_id(id),
                "Name": format!("{id} alive"),
                "TTL": "10m",
                "Status": "passing",
            },
        });
        self.put("/v1/agent/service/register", Some(body)).await;
    }

    pub async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), None)
            .await;
    }

    /// Turns instance `id`'s check critical: it is no longer passing.
    pub async fn fail(&self, id: &str) {
        self.put(&format!("/v1/agent/check/fail/{}", check_id(id)), None)
            .await;
    }

    /// Turns instance `id`'s check passing again.
    pub async fn pass(&self, id: &str) {
        self.put(&format!("/v1/agent/check/pass/{}", check_id(id)), None)
            .await;
    }

    /// What the agent wrote to its log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn put(&self, path: &str, body: Option<serde_json::Value>) {
        let mut req = self.http.put(format!("{}{path}", self.address()));
        if let Some(token) = &self.acl_token {
            req = req.header("x-consul-token", token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "PUT {path}: {status}: {text}");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let p = self.ports;
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-http-port", &p.http.to_string()])
        .args(["-serf-lan-port", &p.serf_lan.to_string()])
        .args(["-serf-wan-port", &p.serf_wan.to_string()])
        .args(["-server-port", &p.server.to_string()])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args(["-log-level", "warn"]);
        if let Some(token) = &self.acl_token {
            // 1.8's names: `master` for the bootstrap token; the agent's own calls (its
            // anti-entropy sync of registrations) need a token too under default deny.
            cmd.args([
                "-hcl",
                &format!(
                    r#"acl {{ enabled = true, default_policy = "deny", tokens {{ master = "{token}", agent = "{token}" }} }}"#
                ),
            ]);
        }
        if let Some(port) = self.https {
            let path = |f: &str| self.dir.path().join(f).display().to_string();
            cmd.args([
                "-hcl",
                &format!(
                    r#"ports {{ https = {port} }}, cert_file = "{}", key_file = "{}""#,
                    path("cert.pem"),
                    path("key.pem")
                ),
            ]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "consul on port {} exited with {status}; its log:\n{}",
                    p.http,
                    self.log()
                ));
            }
            if self.has_leader().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "consul on port {} had no leader within {READY_DEADLINE:?}; its log:\n{}",
                    p.http,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/v1/status/leader` names a leader (it answers `""` while there is none).
    async fn has_leader(&self) -> bool {
        let url = format!("{}/v1/status/leader", self.address());
        let Ok(resp) = self
            .http
            .get(url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
        else {
            return false;
        };
        resp.status().is_success()
            && resp
                .json::<String>()
                .await
                .is_ok_and(|leader| !leader.is_empty())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn check_id(id: &str) -> String {
    format!("check-{id}")
}

/// The binary, or `None` after saying loudly that the test is skipped (a panic under
/// `CI=true`, where a missing component is a failure).
fn installed_or_skip() -> Option<PathBuf> {
    if let Some(p) = Consul::binary() {
        return Some(p);
    }
    let msg = "no consul binary (looked at WEIR_CONSUL, on PATH and in \
               target/tools/consul-1.8.7/); the Consul discovery tests need it: \
               run scripts/fetch-consul";
    super::missing_component(msg);
    None
}
