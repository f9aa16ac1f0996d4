//! Helpers for the rate-limit tests: weir on several worker runtimes in-process, a response
//! read once with its rate-limit headers parsed, and Prometheus samples matched by a subset
//! of their labels.

use std::collections::BTreeMap;
use std::thread::JoinHandle;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::watch;

use super::{Gateway, MapEnv, check_problem_body, client, load};

// ---------------------------------------------------------------------------------------
// weir on several workers

/// Extra worker runtimes (current-thread, one per thread, as the binary runs them); halted
/// and joined on drop, so drop them after [`Gateway::stop`].
pub struct Workers {
    halt: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.halt.send_replace(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts weir in this process on `workers` runtimes: the current one plus `workers - 1`
/// current-thread runtimes on their own threads, like `weir` with `workers: N` (each gets
/// its own `SO_REUSEPORT` socket, so connections are spread over the threads).
pub async fn start_on_workers(yaml: &str, workers: usize) -> (Gateway, Workers) {
    let (halt, halt_rx) = watch::channel(false);
    let mut handles = vec![tokio::runtime::Handle::current()];
    let mut threads = Vec::new();
    for index in 1..workers {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut halt_rx = halt_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-worker-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                tx.send(runtime.handle().clone()).expect("send handle");
                runtime.block_on(async move {
                    let _ = halt_rx.wait_for(|h| *h).await;
                });
            })
            .expect("spawn worker thread");
        handles.push(rx.recv().expect("worker handle"));
        threads.push(thread);
    }
    let workers = Workers { halt, threads };
    let loaded = load(yaml, &MapEnv::default());
    let running = weir::start::start_on(loaded, &handles, None)
        .await
        .expect("weir starts");
    let addr = running.addrs[0];
    let admin = running.admin_addr.expect("admin API address");
    let gw = Gateway {
        running: Some(running),
        addr,
        admin,
        client: client(),
    };
    (gw, workers)
}

// ---------------------------------------------------------------------------------------
// Responses

/// A response read to the end: status, headers and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("response body");
        Self {
            status,
            headers,
            body,
        }
    }

    /// The only value of header `name`, if present; panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values: Vec<_> = self.headers.get_all(name).iter().collect();
        assert!(
            values.len() <= 1,
            "{name} appears {} times: {:?}",
            values.len(),
            self.headers
        );
        values
            .first()
            .map(|v| v.to_str().expect("header value is text"))
    }

    /// Header `name` as a non-negative integer, if present; panics when it is not one.
    pub fn int(&self, name: &str) -> Option<u64> {
        self.header(name).map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not an integer of seconds/requests"))
        })
    }

    pub fn limit(&self) -> Option<u64> {
        self.int("ratelimit-limit")
    }

    pub fn remaining(&self) -> Option<u64> {
        self.int("ratelimit-remaining")
    }

    pub fn reset(&self) -> Option<u64> {
        self.int("ratelimit-reset")
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.int("retry-after")
    }

    /// True when none of the rate-limit headers is present.
    pub fn unlimited(&self) -> bool {
        ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
            .iter()
            .all(|h| self.headers.get(*h).is_none())
    }

    /// Asserts the three `RateLimit-*` headers: `RateLimit-Limit` is `limit`, the others are
    /// integers and `RateLimit-Reset` is positive. Returns `RateLimit-Remaining`.
    pub fn assert_limited(&self, limit: u64, what: &str) -> u64 {
        assert_eq!(
            self.limit(),
            Some(limit),
            "{what}: RateLimit-Limit ({} {:?})",
            self.status,
            self.headers
        );
        let remaining = self
            .remaining()
            .unwrap_or_else(|| panic!("{what}: no RateLimit-Remaining: {:?}", self.headers));
        let reset = self
            .reset()
            .unwrap_or_else(|| panic!("{what}: no RateLimit-Reset: {:?}", self.headers));
        assert!(reset > 0, "{what}: RateLimit-Reset {reset}");
        remaining
    }

    /// Asserts a proxied 200 from the echo backend.
    pub fn assert_admitted(&self, what: &str) {
        assert_eq!(
            self.status, 200,
            "{what}: expected admitted, got {}: {}",
            self.status, self.body
        );
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: not the echo ({e}): {}", self.body));
        assert!(v["backend"].is_string(), "{what}: not the echo: {v}");
    }

    /// Asserts a `rate_limited` problem (contract §5) whose detail is `detail` (ASCII case
    /// ignored, since a header key may be written in either case), with `Retry-After` a
    /// positive integer. Returns `Retry-After`.
    pub fn assert_rate_limited(&self, detail: &str, what: &str) -> u64 {
        assert_eq!(
            self.status, 429,
            "{what}: expected 429, got {}: {}",
            self.status, self.body
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{what}: Content-Type of a 429"
        );
        let body: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {}", self.body));
        check_problem_body(&body, 429, "rate_limited", self.header("x-request-id"));
        assert_eq!(body["title"], "Too Many Requests", "{what}: {body}");
        let got = body["detail"].as_str().unwrap_or_default();
        assert!(
            got.eq_ignore_ascii_case(detail),
            "{what}: detail {got:?}, expected {detail:?}"
        );
        let retry = self
            .retry_after()
            .unwrap_or_else(|| panic!("{what}: a 429 without Retry-After: {:?}", self.headers));
        assert!(retry > 0, "{what}: Retry-After {retry}");
        retry
    }
}

/// GET `path` on the gateway with extra request headers; the response read to the end.
pub async fn send(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.client.get(gw.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    Answer::read(req.send().await.expect("request through weir")).await
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Samples of metric `name` (exactly that name) in a Prometheus text exposition.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((l, v)) = inner.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let labels = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("sample value of {line:?}"));
        out.push((labels, value));
    }
    out
}

/// The sum of metric `name` over the samples carrying every label of `labels` (others may be
/// present too); `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        })
        .map(|(_, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// `weir_rate_limited_total` of `route` (0 when absent).
pub fn rate_limited_total(text: &str, route: &str) -> f64 {
    metric_sum(text, "weir_rate_limited_total", &[("route", route)]).unwrap_or(0.0)
}

/// Sends every request of `requests` (each a list of request headers) to `path` at once, from
/// five clients (three HTTP/1.1, two h2c), each on its own task, so they arrive over many
/// connections; the answers in the order of `requests`.
pub async fn concurrently(
    gw: &Gateway,
    path: &str,
    requests: Vec<Vec<(String, String)>>,
) -> Vec<Answer> {
    let clients: Vec<reqwest::Client> = (0..5)
        .map(|c| if c < 3 { client() } else { super::h2c_client() })
        .collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, headers)| {
            let mut req = clients[i % clients.len()].get(gw.url(path));
            for (n, v) in headers {
                req = req.header(n, v);
            }
            tokio::spawn(async move { Answer::read(req.send().await.expect("request")).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// 30 requests against a limit of 10: exactly 10 admitted, the backend saw only those, each
/// admitted answer saw its own `RateLimit-Remaining` (0 to 9), and 20 were refused, which
/// are returned for the caller's checks of the refusal itself.
pub fn assert_ten_of_thirty<'a>(
    answers: &'a [Answer],
    backend_hits: usize,
    context: &str,
) -> Vec<&'a Answer> {
    let admitted: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(
        (admitted.len(), refused.len()),
        (10, 20),
        "{context}; statuses: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(backend_hits, 10, "the backend saw only the admitted");
    let mut remaining: Vec<u64> = admitted
        .iter()
        .map(|a| {
            a.assert_admitted("burst");
            a.assert_limited(10, "admitted in the burst")
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<_>>(),
        "each admitted request saw its own RateLimit-Remaining ({context})"
    );
    refused
}
