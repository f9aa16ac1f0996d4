//! The access log: one JSON line per request, formatted and written on a dedicated thread.
//!
//! The request path only moves a record into a bounded channel (`try_send`, never blocking):
//! if the writer falls behind, records are dropped and counted rather than slowing traffic.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

/// Records buffered between the request path and the writer.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    pub request_id: http::HeaderValue,
    /// The W3C trace id, lowercase hex, when tracing is on.
    pub trace_id: Option<[u8; 32]>,
    pub client_ip: IpAddr,
    pub method: http::Method,
    /// The path as the client sent it, without the query (queries may carry credentials).
    pub path: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    /// The authenticated identity (consumer name or token subject).
    pub consumer: Option<Arc<str>>,
    /// The subject of the client's TLS certificate (mTLS listeners).
    pub tls_client: Option<Arc<str>>,
    pub status: u16,
    /// Tries after the first.
    pub retries: u32,
    /// `static` or `upstream` when the route's fallback answered.
    pub fallback: Option<&'static str>,
    /// `HIT`, `MISS`, `STALE` or `BYPASS` on a route with `cache`.
    pub cache: Option<&'static str>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub user_agent: Option<http::HeaderValue>,
}

/// Where lines go.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

/// The request path's handle to the writer thread.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Record>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the sink and starts the writer thread.
    pub fn start(sink: &Sink) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_loop(&rx, out))?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues a record; drops it (and counts the drop) when the writer is behind.
    pub fn log(&self, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped so far because the writer could not keep up.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(rx: &Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Drain what is queued, then flush once: one write per burst, not per line.
        while let Some(record) = next {
            line.clear();
            format_line(&mut line, &record);
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// Formats one record as a JSON object and a newline.
pub fn format_line(out: &mut String, r: &Record) {
    let ts = r
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.push_str("{\"time\":\"");
    rfc3339(out, ts);
    out.push_str("\",\"request_id\":");
    json_str(out, &String::from_utf8_lossy(r.request_id.as_bytes()));
    if let Some(id) = &r.trace_id {
        out.push_str(",\"trace_id\":\"");
        out.push_str(std::str::from_utf8(id).unwrap_or_default());
        out.push('"');
    }
    let _ = write!(out, ",\"client_ip\":\"{}\",\"method\":", r.client_ip);
    json_str(out, r.method.as_str());
    out.push_str(",\"path\":");
    json_str(out, &r.path);
    for (key, value) in [
        ("route", &r.route),
        ("upstream", &r.upstream),
        ("target", &r.target),
        ("consumer", &r.consumer),
        ("tls_client", &r.tls_client),
    ] {
        let _ = write!(out, ",\"{key}\":");
        match value {
            Some(v) => json_str(out, v),
            None => out.push_str("null"),
        }
    }
    let _ = write!(out, ",\"status\":{},\"retries\":{}", r.status, r.retries);
    match r.fallback {
        Some(kind) => {
            let _ = write!(out, ",\"fallback\":\"{kind}\"");
        }
        None => out.push_str(",\"fallback\":null"),
    }
    match r.cache {
        Some(result) => {
            let _ = write!(out, ",\"cache\":\"{result}\"");
        }
        None => out.push_str(",\"cache\":null"),
    }
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"bytes_in\":{},\"bytes_out\":{},\"user_agent\":",
        r.duration.as_secs_f64() * 1e3,
        r.bytes_in,
        r.bytes_out
    );
    match &r.user_agent {
        Some(ua) => json_str(out, &String::from_utf8_lossy(ua.as_bytes())),
        None => out.push_str("null"),
    }
    out.push_str("}\n");
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` from a Unix duration (civil-from-days, Howard Hinnant).
fn rfc3339(out: &mut String, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_json() {
        let r = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: http::HeaderValue::from_static("01ABC"),
            trace_id: Some(*b"4bf92f3577b34da6a3ce929d0e0e4736"),
            client_ip: "127.0.0.1".parse().unwrap(),
            method: http::Method::GET,
            path: "/a\"b\n".into(),
            route: Some("r".into()),
            upstream: None,
            consumer: None,
            tls_client: Some("CN=alice, O=Example".into()),
            target: None,
            status: 200,
            retries: 2,
            fallback: Some("static"),
            cache: Some("HIT"),
            duration: Duration::from_micros(1500),
            bytes_in: 0,
            bytes_out: 10,
            user_agent: Some(http::HeaderValue::from_static("curl/8")),
        };
        let mut s = String::new();
        format_line(&mut s, &r);
        assert!(
            s.starts_with("{\"time\":\"2023-11-14T22:13:20.123Z\""),
            "{s}"
        );
        assert!(s.contains("\"path\":\"/a\\\"b\\u000a\""), "{s}");
        assert!(s.contains("\"upstream\":null"));
        assert!(s.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""));
        assert!(s.contains("\"tls_client\":\"CN=alice, O=Example\""));
        assert!(s.contains("\"duration_ms\":1.500"));
        assert!(
            s.contains("\"status\":200,\"retries\":2,\"fallback\":\"static\",\"cache\":\"HIT\",")
        );
        assert!(s.ends_with("}\n"));
    }
}
