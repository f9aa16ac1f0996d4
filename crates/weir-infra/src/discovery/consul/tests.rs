//! The watcher's loop against a scripted agent: what it asks, in which order, with which
//! index and token, and what it reports. The real Consul is in weir's integration tests.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use weir_domain::auth::Secret;
use weir_domain::discovery::{ConsulAgent, ConsulDiscovery};

use super::{Update, watch_consul};
use crate::auth::test_tls::TestCa;

/// One request as the agent saw it: path and query, and the token header.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    token: Option<String>,
}

/// What the agent answers the n-th request (0-based): status, `X-Consul-Index`, body.
type Script = dyn Fn(usize) -> (u16, u64, String) + Send + Sync;

struct FakeAgent {
    address: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    async fn start(
        tls: Option<TlsAcceptor>,
        script: impl Fn(usize) -> (u16, u64, String) + Send + Sync + 'static,
    ) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, script, tls) = (Arc::clone(&log), Arc::clone(&script), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let answer = answer(&log, &*script, &req);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let conn = http1::Builder::new();
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(s) => conn.serve_connection(TokioIo::new(s), service).await,
                            Err(_) => Ok(()),
                        },
                        None => conn.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
            }
        });
        Self {
            address: format!("{scheme}://{addr}"),
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(
    log: &Mutex<Vec<Seen>>,
    script: &Script,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let n = {
        let mut log = log.lock().unwrap();
        log.push(Seen {
            uri: req.uri().to_string(),
            token: req
                .headers()
                .get("x-consul-token")
                .map(|v| v.to_str().unwrap().to_owned()),
        });
        log.len() - 1
    };
    let (status, index, body) = script(n);
    Response::builder()
        .status(status)
        .header("x-consul-index", index.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn spec(address: &str, token: Option<&str>, ca_pem: Option<Vec<u8>>) -> ConsulDiscovery {
    ConsulDiscovery {
        service: "users".to_owned(),
        tag: Some("v2".to_owned()),
        datacenter: None,
        agent: Arc::new(ConsulAgent {
            address: address.to_owned(),
            token: token.map(|t| Secret::new(t.to_owned())),
            datacenter: Some("dc1".to_owned()),
            ca_pem,
            wait: Duration::from_secs(2),
        }),
    }
}

/// A health answer with one instance per port, on 127.0.0.1.
fn instances(ports: &[u16]) -> String {
    let entries: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                r#"{{"Node": {{"Address": "127.0.0.1"}},
                   "Service": {{"ID": "u{p}", "Address": "", "Port": {p}}}}}"#
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// Starts the watcher; its updates arrive on the returned channel.
fn watch(spec: ConsulDiscovery) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<Update>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = watch_consul(Arc::from("users"), spec, move |u| {
        let _ = tx.send(u);
    });
    (task, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an update within 5 s")
        .expect("the watcher runs")
}

fn ports(update: &Update) -> Vec<u16> {
    match update {
        Update::Endpoints(list) => list.iter().map(|e| e.addr.port).collect(),
        Update::Failed(why) => panic!("failed: {why}"),
    }
}

#[tokio::test]
async fn blocking_queries_follow_the_index_and_start_over_when_it_goes_back() {
    let agent = FakeAgent::start(None, |n| match n {
        0 => (200, 12, instances(&[9001, 9000])),
        1 => (200, 15, instances(&[9002])),
        // The agent's state was rebuilt: a lower index.
        2 => (200, 3, instances(&[9003])),
        // Consul's bug: an index of 0.
        3 => (200, 0, instances(&[9003])),
        _ => (200, 1, "[]".to_owned()),
    })
    .await;
    let (task, mut rx) = watch(spec(&agent.address, Some("s3cret"), None));
    assert_eq!(ports(&next(&mut rx).await), [9000, 9001]);
    assert_eq!(ports(&next(&mut rx).await), [9002]);
    assert_eq!(ports(&next(&mut rx).await), [9003]);
    assert_eq!(ports(&next(&mut rx).await), [9003]);
    assert_eq!(ports(&next(&mut rx).await), Vec::<u16>::new());
    assert_eq!(ports(&next(&mut rx).await), Vec::<u16>::new());
    task.abort();
    let seen = agent.seen();
    let q = "/v1/health/service/users?passing&tag=v2&dc=dc1";
    let uris: Vec<&str> = seen.iter().take(6).map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            q.to_owned(),
            format!("{q}&index=12&wait=2s"),
            format!("{q}&index=15&wait=2s"),
            // Backwards: a query that does not block, then blocking on the new index.
            q.to_owned(),
            // An index of 0 is taken as 1, so the query still blocks.
            format!("{q}&index=1&wait=2s"),
            format!("{q}&index=1&wait=2s"),
        ]
    );
    assert!(seen.iter().all(|s| s.token.as_deref() == Some("s3cret")));
}

#[tokio::test]
async fn failures_are_reported_without_the_token_and_the_next_answer_is_read_afresh() {
    let agent = FakeAgent::start(None, |n| match n {
        0 => (200, 7, instances(&[9000])),
        1 => (403, 0, "ACL not found".to_owned()),
        2 => (200, 9, "<html>not json</html>".to_owned()),
        _ => (200, 9, instances(&[9001])),
    })
    .await;
    let (task, mut rx) = watch(spec(&agent.address, Some("s3cret"), None));
    assert_eq!(ports(&next(&mut rx).await), [9000]);
    let Update::Failed(why) = next(&mut rx).await else {
        panic!("a 403 is a failure")
    };
    assert!(
        why.contains("403") && why.contains("ACL not found"),
        "{why}"
    );
    assert!(!why.contains("s3cret"), "{why}");
    let Update::Failed(why) = next(&mut rx).await else {
        panic!("bad JSON is a failure")
    };
    assert!(why.contains("not a list of health entries"), "{why}");
    assert_eq!(ports(&next(&mut rx).await), [9001]);
    task.abort();
    let seen = agent.seen();
    assert!(seen[1].uri.contains("index=7"), "{seen:?}");
    // After a failure, no index: a full fresh answer.
    assert!(!seen[2].uri.contains("index="), "{seen:?}");
    assert!(!seen[3].uri.contains("index="), "{seen:?}");
    assert!(seen.iter().all(|s| !s.uri.contains("s3cret")));
}

#[tokio::test]
async fn no_agent_is_a_failure_and_retries_back_off() {
    // A port that refuses connections.
    let closed = crate::test_net::dead_addr();
    let (task, mut rx) = watch(spec(&format!("http://{closed}"), None, None));
    let start = Instant::now();
    for _ in 0..4 {
        let Update::Failed(why) = next(&mut rx).await else {
            panic!("no agent is a failure")
        };
        assert!(why.contains("request failed"), "{why}");
    }
    // 0.1 s at least between tries, and the backoff grows: four tries take a while, but
    // not the 15 s cap.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    task.abort();

    for (address, expected) in [
        ("ftp://127.0.0.1:1", "not http:// or https://"),
        (
            "http://127.0.0.1:1/consul",
            "must be http(s)://host:port only",
        ),
        (
            "http://user@127.0.0.1:1",
            "must be http(s)://host:port only",
        ),
    ] {
        let (task, mut rx) = watch(spec(address, None, None));
        let Update::Failed(why) = next(&mut rx).await else {
            panic!("a bad address is a failure")
        };
        assert!(why.contains(expected), "{address}: {why}");
        task.abort();
    }
}

#[tokio::test]
async fn an_agent_that_answers_at_once_is_not_asked_more_than_ten_times_a_second() {
    let agent = FakeAgent::start(None, |_| (200, 5, instances(&[9000]))).await;
    let (task, mut rx) = watch(spec(&agent.address, None, None));
    let start = Instant::now();
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(ports(&next(&mut rx).await), [9000]);
        answers += 1;
    }
    task.abort();
    assert!((5..=12).contains(&answers), "{answers} answers in a second");
}

#[tokio::test]
async fn an_https_agent_is_trusted_through_ca_pem() {
    let ca = TestCa::new();
    let tls = TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
    let agent = FakeAgent::start(Some(tls), |_| (200, 5, instances(&[9000]))).await;
    assert!(agent.address.starts_with("https://"));
    let (task, mut rx) = watch(spec(&agent.address, None, Some(ca.pem().into_bytes())));
    assert_eq!(ports(&next(&mut rx).await), [9000]);
    task.abort();

    // Another CA's certificate is refused.
    let other = TestCa::new();
    let (task, mut rx) = watch(spec(&agent.address, None, Some(other.pem().into_bytes())));
    let Update::Failed(why) = next(&mut rx).await else {
        panic!("an untrusted certificate is a failure")
    };
    assert!(why.contains("certificate"), "{why}");
    task.abort();
}
