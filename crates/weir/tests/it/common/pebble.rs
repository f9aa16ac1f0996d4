//! A throwaway pebble (Let's Encrypt's test ACME CA, Debian's `pebble`) pointed at weir's own
//! listeners: its HTTP-01 validations go to `http_port`, its TLS-ALPN-01 ones to `tls_port`,
//! both on `localhost`. Killed on drop. Without `pebble` the tests skip loudly, or fail when
//! `CI=true`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::idp::TestCa;
use super::tls::{ClientTls, get_h1};

pub struct Pebble {
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
    }
}

impl Pebble {
    /// The ports it will listen on, chosen before weir's config is written.
    pub fn ports() -> (u16, u16) {
        (free_port(), free_port())
    }

    /// Starts pebble on `ports` validating against `http_port` / `tls_port`; `None` when
    /// it is not installed.
    pub async fn start(ports: (u16, u16), http_port: u16, tls_port: u16) -> Option<Self> {
        let binary = ["/usr/bin/pebble", "/usr/local/bin/pebble"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "pebble is not installed (CI=true): apt-get install pebble"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: pebble is not installed; this ACME test did not run !!!!!!!!\n"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("weir-pebble-{}", super::idp::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new();
        let (cert, key) = ca.server_pems(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let (listen, management) = ports;
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new(binary)
            .arg("-config")
            .arg(dir.join("config.json"))
            .current_dir(&dir)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start pebble");
        Some(Self {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca_pem: ca.pem(),
            listen,
            management,
            child,
            dir,
        })
    }

    /// The root pebble signs with, PEM, from its management API (waiting for pebble).
    pub async fn root_pem(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let addr = ([127, 0, 0, 1], self.management).into();
            if let Ok(mut tls) = ClientTls::new(&self.https_ca_pem, "127.0.0.1")
                .connect(addr)
                .await
                && let Ok((200, body)) = get_h1(&mut tls, "/roots/0").await
            {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "pebble's management API does not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    pub fn listen_port(&self) -> u16 {
        self.listen
    }
}
