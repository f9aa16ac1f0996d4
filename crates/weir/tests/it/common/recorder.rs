//! An origin that keeps every byte it receives, exactly as it arrived: the evidence for what
//! weir forwarded and what it did not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Recorder {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let bytes = serve(stream).await;
                    sink.lock().expect("recorder lock").push(bytes);
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What each connection received, in the order connections ended.
    pub fn connections(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("recorder lock").clone()
    }

    /// Everything received, on all connections, as text (lossy).
    pub fn text(&self) -> String {
        self.connections()
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, then a `Content-Length` or chunked body), answers `200 ok` and
/// closes; returns every byte read, including any that came after the request.
async fn serve(mut stream: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&got, b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(&mut stream, &mut got, &mut buf).await {
            return got;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &got[head_end..];
        let complete = match (chunked, length) {
            (true, _) => find(body, b"0\r\n\r\n").is_some(),
            (false, Some(n)) => body.len() >= n,
            (false, None) => true,
        };
        if complete || !read_more(&mut stream, &mut got, &mut buf).await {
            break;
        }
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        .await;
    // Whatever else arrives before the peer closes is evidence too.
    while tokio::time::timeout(
        Duration::from_millis(200),
        read_more(&mut stream, &mut got, &mut buf),
    )
    .await
    .unwrap_or(false)
    {}
    got
}

async fn read_more(stream: &mut TcpStream, got: &mut Vec<u8>, buf: &mut [u8; 8192]) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), stream.read(buf)).await {
        Ok(Ok(n)) if n > 0 => {
            got.extend_from_slice(&buf[..n]);
            true
        }
        _ => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
