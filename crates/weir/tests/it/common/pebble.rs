//! A throwaway pebble (Let's Encrypt's test ACME CA, Debian's `pebble`) pointed at weir's own
//! listeners: its HTTP-01 validations go to `localhost:<http_port>`, its TLS-ALPN-01 ones to
//! `localhost:<tls_port>`. Each test runs its own, on ports of its own, with its own HTTPS
//! certificate from a test CA (the package ships none), killed on drop (its directory is
//! kept when the test fails, for its log). Without `pebble` the tests skip loudly, or fail
//! when `CI=true` ([`super::missing_component`]).
//!
//! Two ways to wire it to weir: [`Pebble::start`] when weir's ports are known first, or
//! [`Pebble::setup`] (ports and HTTPS CA chosen, so weir's `acme` section can be written and
//! weir started on port 0) then [`PebbleSetup::start`] with the ports weir bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::idp::{TestCa, unique};
use super::tls::{ClientTls, get_h1};
use super::{free_port, missing_component};

/// The pebble binary: on `PATH`, or where Debian puts it.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("pebble"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A pebble not started yet: its ports and the CA of its HTTPS are chosen, so weir can be
/// configured (and started) before it.
pub struct PebbleSetup {
    /// The ACME directory URL it will serve.
    pub directory: String,
    /// The CA of pebble's own HTTPS, for `acme.ca_file`.
    pub https_ca_pem: String,
    binary: PathBuf,
    ca: TestCa,
    listen: u16,
    management: u16,
}

/// A running pebble.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA of pebble's own HTTPS, for `acme.ca_file`.
    pub https_ca_pem: String,
    listen: u16,
    management: u16,
    child: Child,
    pub dir: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("pebble's files are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Pebble {
    /// The ports it will listen on (directory, management API), chosen before weir's config
    /// is written.
    pub fn ports() -> (u16, u16) {
        (free_port(), free_port())
    }

    /// Ports and an HTTPS CA for a pebble to start later, or `None` (after a loud message;
    /// a failure under `CI=true`) when pebble is not installed.
    pub fn setup() -> Option<PebbleSetup> {
        PebbleSetup::new(Self::ports())
    }

    /// Starts pebble on `ports` validating against `http_port` / `tls_port` and waits until
    /// its directory answers; `None` when it is not installed.
    pub async fn start(ports: (u16, u16), http_port: u16, tls_port: u16) -> Option<Self> {
        Some(
            PebbleSetup::new(ports)?
                .start(http_port, tls_port, None)
                .await,
        )
    }

    /// The root pebble signs with (made at its launch), PEM, from its management API.
    pub async fn root_pem(&self) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.management));
        self.get_until_ok(addr, "/roots/0", "its management API")
            .await
    }

    /// Its log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    pub fn listen_port(&self) -> u16 {
        self.listen
    }

    /// `GET path` on pebble's HTTPS at `addr` until it answers 200; its body.
    async fn get_until_ok(&self, addr: SocketAddr, path: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut tls) = ClientTls::new(&self.https_ca_pem, "127.0.0.1")
                .connect(addr)
                .await
                && let Ok((200, body)) = get_h1(&mut tls, path).await
            {
                return body;
            }
            assert!(!self.exited(), "pebble exited; its log:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "pebble's {what} does not answer; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited (a zombie not reaped yet: `try_wait` would need
    /// `&mut self`).
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }
}

impl PebbleSetup {
    fn new(ports: (u16, u16)) -> Option<Self> {
        let Some(binary) = binary() else {
            missing_component(
                "pebble is not installed (apt-get install pebble); this ACME test did not run",
            );
            return None;
        };
        let (listen, management) = ports;
        let ca = TestCa::new();
        Some(Self {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca_pem: ca.pem(),
            binary,
            ca,
            listen,
            management,
        })
    }

    /// Starts pebble validating against `localhost:<http_port>` (HTTP-01) and
    /// `localhost:<tls_port>` (TLS-ALPN-01); with `validity_secs`, the certificates it issues
    /// live that long. Waits until its directory answers.
    pub async fn start(self, http_port: u16, tls_port: u16, validity_secs: Option<u64>) -> Pebble {
        let dir = std::env::temp_dir().join(format!("weir-pebble-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self.ca.server_pems(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{}", self.listen),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
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
        std::fs::write(
            dir.join("config.json"),
            serde_json::json!({ "pebble": config }).to_string(),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new(&self.binary)
            .arg("-config")
            .arg(dir.join("config.json"))
            .current_dir(&dir)
            // Full speed (no random validation sleeps), no deliberately rejected nonces, and
            // every order validated afresh (no reuse of an earlier authorization).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pebble");
        let pebble = Pebble {
            directory: self.directory,
            https_ca_pem: self.https_ca_pem,
            listen: self.listen,
            management: self.management,
            child,
            dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], pebble.listen));
        pebble.get_until_ok(addr, "/dir", "directory").await;
        pebble
    }
}
