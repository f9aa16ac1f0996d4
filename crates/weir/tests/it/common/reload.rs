//! Reloading: a gateway started from a file (`weir::start::start_file`), so that it can read
//! the file again; saving the file as editors do (a new file renamed over the old one);
//! `POST /reload`; the reload counters; and raw keep-alive connections that notice, request
//! by request, whether their one TCP connection is still the same.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Gateway, RawResponse, TempDir, client, config, read_response};

/// A gateway started from a file in its own temporary directory.
pub struct Live {
    gw: Gateway,
    /// The configuration file.
    pub path: PathBuf,
    pub dir: TempDir,
}

impl Deref for Live {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

impl Live {
    /// Writes `config(yaml)` (the test defaults added) to `weir.yaml` in a new directory and
    /// starts weir from that file.
    pub async fn start(tag: &str, yaml: &str) -> Self {
        let dir = TempDir::new(tag);
        let path = dir.write("weir.yaml", &config(yaml));
        Self::start_at(dir, path).await
    }

    /// Starts weir from `path`, a file (or a link to one) the test prepared in `dir`.
    pub async fn start_at(dir: TempDir, path: PathBuf) -> Self {
        let running = crate::common::start_file(path.clone())
            .await
            .unwrap_or_else(|e| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                panic!("weir starts from the file: {e}\n--- file ---\n{text}")
            });
        let addr = running.addrs[0];
        let admin = running.admin_addr.expect("the admin API listens");
        Self {
            gw: Gateway {
                running: Some(running),
                addr,
                admin,
                client: client(),
            },
            path,
            dir,
        }
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gw
    }

    /// Saves `config(yaml)` over the file, as an editor does; returns the text written.
    pub fn save(&self, yaml: &str) -> String {
        let text = config(yaml);
        save_renamed(&self.path, &text);
        text
    }

    /// `POST /reload`: the status and the JSON body.
    pub async fn reload(&self) -> (u16, Value) {
        let resp = self
            .gw
            .client
            .post(self.gw.admin_url("/reload"))
            .send()
            .await
            .expect("POST /reload");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("reload body");
        let body = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("POST /reload answered {status} with no JSON ({e}): {text}")
        });
        (status, body)
    }

    /// `POST /reload`, which must succeed; the version it reports.
    pub async fn reload_ok(&self) -> String {
        let (status, body) = self.reload().await;
        assert_eq!(status, 200, "POST /reload: {body}");
        body["version"]
            .as_str()
            .unwrap_or_else(|| panic!("a version: {body}"))
            .to_owned()
    }

    /// Saves `yaml` and reloads it, which must succeed.
    pub async fn apply(&self, yaml: &str) -> String {
        self.save(yaml);
        self.reload_ok().await
    }

    /// `weir_config_reloads_total{result}`.
    pub async fn reloads(&self, result: &str) -> u64 {
        reloads_in(&self.gw.metrics().await, result)
    }

    /// The body of a GET through the first listener, which must answer 200.
    pub async fn body(&self, path: &str) -> String {
        let resp = self.gw.get(path).await;
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, 200, "GET {path}: {text}");
        text
    }

    /// Where listener `name` is bound now.
    pub async fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.gw.running().addr_of(name).await
    }

    /// The running version, from `GET /config`.
    pub async fn version(&self) -> String {
        let v = self.gw.admin_json("/config").await;
        v["version"]
            .as_str()
            .unwrap_or_else(|| panic!("/config has a version: {v}"))
            .to_owned()
    }

    pub async fn stop(self) -> bool {
        self.gw.stop().await
    }
}

/// Writes `text` to a new file next to `path` and renames it over `path`: what editors do,
/// and what the watcher must notice.
pub fn save_renamed(path: &Path, text: &str) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.saving"));
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the config");
}

/// `weir_config_reloads_total{result}` in Prometheus text (absent = 0).
pub fn reloads_in(metrics: &str, result: &str) -> u64 {
    let v = super::limits::metric_sum(metrics, "weir_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0);
    assert!(v >= 0.0 && v.fract() == 0.0, "a count: {v}");
    v as u64
}

/// Where `needle` first occurs in `text`: 1-based line and column (in characters), as the
/// config problems report them.
pub fn position(text: &str, needle: &str) -> (u64, u64) {
    for (i, line) in text.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            let col = line[..byte].chars().count() + 1;
            return ((i + 1) as u64, col as u64);
        }
    }
    panic!("{needle:?} is not in the file:\n{text}")
}

/// One HTTP/1.1 keep-alive connection. Every request goes over the same TCP connection; a
/// request that finds it closed is an error, never a silent reconnect.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Responses read on this connection.
    pub served: u64,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            buf: Vec::new(),
            served: 0,
        }
    }

    /// Sends `GET path` with `headers` (each `Name: value`) without waiting for the answer.
    pub async fn send(&mut self, path: &str, headers: &[&str]) -> Result<(), String> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: weir.test\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("writing GET {path}: {e}"))
    }

    /// Reads the next response.
    pub async fn read(&mut self) -> Result<RawResponse, String> {
        let resp = read_response(&mut self.stream, &mut self.buf)
            .await
            .ok_or_else(|| {
                format!(
                    "the connection closed after {} responses, before a complete response",
                    self.served
                )
            })?;
        self.served += 1;
        Ok(resp)
    }

    /// `GET path` and its response, on this connection.
    pub async fn get(&mut self, path: &str, headers: &[&str]) -> Result<RawResponse, String> {
        self.send(path, headers).await?;
        self.read().await
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// The body of a raw response as text.
pub fn text(resp: &RawResponse) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}
