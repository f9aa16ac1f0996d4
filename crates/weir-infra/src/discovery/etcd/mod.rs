//! etcd discovery: every key under a prefix is one target, its value
//! `{"url": "http://host:port", "weight": N}` (without `weight`: 1).
//!
//! The watcher lists the prefix and reports the whole set, then watches the prefix from the
//! revision after the listing, so that no change between the two is lost. Each watch
//! response is applied to the keys and, when the set changed, the whole set is reported:
//! one report per response, so a transaction that moves several keys is one change.
//!
//! What ends a watch:
//! - etcd cancels it because its start revision was compacted (a compaction overtook the
//!   listing before the watch began, or the watcher fell that far behind). The events in
//!   between are gone, so the only way back is a new listing: at once, on the same client.
//!   The source did not fail, so nothing is reported until that listing.
//! - Anything else (no connection, authentication refused, the stream broke or ended, a
//!   cancel for another reason) is a failure: reported once, then after a backoff (250 ms at
//!   first, doubling per failure in a row up to 10 s, jittered) a new client connects, lists
//!   and watches again. Events missed meanwhile are covered by that listing, not replayed.
//!
//! A value that is not a target (not that JSON, a URL weir cannot use, a weight outside
//! 1 to 1 000 000) leaves its key out of the set: one bad key must not take the others
//! down. It is logged at warn once per value written, not again on every re-list.
//!
//! The connection: one client per upstream (a watch is one stream; separate clients keep one
//! upstream's trouble from stalling another's). `timeout` bounds connecting and every call
//! but the watch itself; HTTP/2 pings notice a peer that vanished without closing the
//! connection; and the watch requires a leader, so a member cut off from its cluster ends the
//! watch instead of holding it silently. `https://` endpoints trust `ca_file`, else the
//! system's trust store, and present the client certificate when one is configured.

mod keys;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchStream,
};
use tokio::task::JoinHandle;
use tracing::Instrument;
use weir_domain::discovery::{EtcdCluster, EtcdDiscovery};

use self::keys::{Keys, Rejected};
use super::Update;

/// The wait after a first failure; it doubles with each failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between tries: an etcd that comes back is followed within this.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// How often an idle connection is pinged. etcd refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`) by closing the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Lists `spec.prefix`, then watches it from the listed revision, forever, and calls `sink`
/// with the whole target list after the listing and after every watch response that changed
/// it. A failure is [`Update::Failed`], retried with backoff; a compacted revision is
/// listed again without one. Nothing is logged here but values that are not targets;
/// `upstream` names the task's tracing span.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the name is taken as the caller holds it; only the span borrows it"
)]
pub fn watch_etcd(
    upstream: Arc<str>,
    spec: EtcdDiscovery,
    sink: impl Fn(Update) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let span = tracing::debug_span!("etcd_discovery", upstream = %upstream);
    tokio::spawn(run(spec, sink).instrument(span))
}

/// Why following the prefix stopped.
#[derive(Debug)]
enum End {
    /// The watch's start revision was compacted: list again now.
    Compacted,
    /// The source failed; why, in words for the log.
    Failed(String),
}

async fn run(spec: EtcdDiscovery, sink: impl Fn(Update)) {
    let mut keys = Keys::default();
    // Kept across a compaction; dropped after a failure, so the next try starts with a new
    // connection and a new token (an etcd that restarted forgot the old one).
    let mut client: Option<Client> = None;
    let mut failures: u32 = 0;
    loop {
        let Err(end) = follow(&spec, &mut client, &mut keys, &sink, &mut failures).await;
        match end {
            End::Compacted => {}
            End::Failed(reason) => {
                client = None;
                failures = failures.saturating_add(1);
                sink(Update::Failed(reason));
                tokio::time::sleep(retry_delay(failures, crate::discovery::random())).await;
            }
        }
    }
}

/// Connects when there is no client, lists, reports, then applies the watch until it ends.
async fn follow(
    spec: &EtcdDiscovery,
    slot: &mut Option<Client>,
    keys: &mut Keys,
    sink: &impl Fn(Update),
    failures: &mut u32,
) -> Result<Infallible, End> {
    let timeout = spec.cluster.timeout;
    let client = match slot {
        Some(client) => client,
        None => slot.insert(connect(&spec.cluster).await?),
    };
    let prefix = spec.prefix.as_str();
    let listing = within(
        timeout,
        "listing the prefix",
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = listing
        .header()
        .map(etcd_client::ResponseHeader::revision)
        .filter(|r| *r > 0)
        .ok_or_else(|| End::Failed("the listing came without a revision".to_owned()))?;
    warn_rejected(
        keys.replace(
            listing
                .kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
        ),
    );
    let mut reported = keys.endpoints();
    sink(Update::Endpoints(reported.clone()));

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision.saturating_add(1));
    let mut stream: WatchStream = within(
        timeout,
        "starting the watch",
        client.watch(prefix, Some(options)),
    )
    .await?;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(End::Failed("etcd ended the watch stream".to_owned())),
            Err(e) => return Err(End::Failed(format!("the watch broke: {}", describe(&e)))),
        };
        if response.compact_revision() > 0 {
            return Err(End::Compacted);
        }
        if response.canceled() {
            let reason = match response.cancel_reason() {
                "" => "no reason given",
                r => r,
            };
            return Err(End::Failed(format!("etcd canceled the watch: {reason}")));
        }
        // Reset once the watch runs, not at the listing: a watch refused every time (no
        // permission on the prefix) is then tried ever more slowly, not 4 times a second.
        *failures = 0;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // A deleted key comes with version 0 (etcd resets it on deletion). Reading that
            // rather than `Event::event_type` avoids the panic it has for unknown types.
            if kv.version() == 0 {
                keys.delete(kv.key());
            } else {
                warn_rejected(keys.put(kv.key(), kv.value(), kv.mod_revision()));
            }
        }
        let now = keys.endpoints();
        if now != reported {
            sink(Update::Endpoints(now.clone()));
            reported = now;
        }
    }
}

fn warn_rejected(rejected: impl IntoIterator<Item = Rejected>) {
    for r in rejected {
        tracing::warn!(key = %r.key, reason = %r.reason, "etcd key is not a target; left out");
    }
}

/// A client for the cluster; with credentials, this authenticates (and so fails on a wrong
/// password); without, it connects on the first call.
async fn connect(cluster: &EtcdCluster) -> Result<Client, End> {
    let options = connect_options(cluster).map_err(End::Failed)?;
    within(
        cluster.timeout,
        "connecting",
        Client::connect(&cluster.endpoints, Some(options)),
    )
    .await
}

fn connect_options(cluster: &EtcdCluster) -> Result<ConnectOptions, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cluster.timeout)
        .with_timeout(cluster.timeout)
        .with_keep_alive(KEEP_ALIVE, cluster.timeout)
        .with_require_leader(true)
        // A token expires (5 minutes by default): calls after that authenticate again.
        .with_auto_token_refresh(true);
    if let Some(c) = &cluster.credentials {
        options = options.with_user(c.username.as_str(), c.password.expose());
    }
    if cluster.endpoints.iter().any(|e| e.starts_with("https://")) {
        options = options.with_tls(tls_options(cluster)?);
    }
    Ok(options)
}

fn tls_options(cluster: &EtcdCluster) -> Result<TlsOptions, String> {
    let tls = match &cluster.ca_pem {
        Some(pem) => TlsOptions::new().ca_certificate(Certificate::from_pem(pem)),
        // etcd-client's own `tls-native-roots` would bring a second copy of the loader;
        // the one weir already has gives the same store.
        None => TlsOptions::new().trust_anchors(system_roots()?),
    };
    Ok(match &cluster.identity {
        Some(id) => tls.identity(Identity::from_pem(&id.cert_pem, id.key_pem.expose())),
        None => tls,
    })
}

/// The system's trust anchors (on Linux: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// distribution's bundle); certificates that do not parse are skipped.
fn system_roots() -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err("no trusted root certificates in the system's trust store; \
                    install ca-certificates, or set etcd.ca_file"
            .to_owned());
    }
    Ok(roots.roots)
}

/// Awaits `call` for at most `limit`. The client's own timeouts apply per connection, inside
/// its balancer; a call waiting there for any endpoint to become ready is bounded by this.
async fn within<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, End> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(End::Failed(format!("{what}: {}", describe(&e)))),
        Err(_) => Err(End::Failed(format!(
            "{what}: no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// An error with its sources: a gRPC status or transport error says "transport error";
/// the reason (connection refused, a certificate refused) is further down its chain.
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut out, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => {
            (format!("{:?}: {}", s.code(), s.message()), s.source())
        }
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        other => (other.to_string(), None),
    };
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// When to try again after `failures` failures in a row (1 for the first): about
/// [`FIRST_RETRY`], doubling, at most [`MAX_RETRY`]; each wait is 50% to 100% of that, by
/// `random`, so that the watchers of many weirs do not come back in step.
fn retry_delay(failures: u32, random: u64) -> Duration {
    super::backoff(failures, FIRST_RETRY, MAX_RETRY, 0.5, random)
}

#[cfg(test)]
mod tests {
    use weir_domain::auth::Secret;
    use weir_domain::discovery::{ClientIdentity, EtcdCredentials};

    use super::*;

    fn cluster(endpoint: &str) -> EtcdCluster {
        EtcdCluster {
            endpoints: vec![endpoint.to_owned()],
            credentials: None,
            ca_pem: None,
            identity: None,
            timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn retries_back_off_from_a_quarter_second_to_ten_with_jitter() {
        let (low, high) = (0, u64::MAX);
        assert_eq!(retry_delay(1, low), Duration::from_millis(125));
        assert!(retry_delay(1, high) <= FIRST_RETRY);
        assert!(retry_delay(1, high) > Duration::from_millis(249));
        assert_eq!(retry_delay(2, low), Duration::from_millis(250));
        assert_eq!(retry_delay(3, low), Duration::from_millis(500));
        assert_eq!(retry_delay(7, low), Duration::from_secs(5));
        assert!(retry_delay(u32::MAX, high) <= MAX_RETRY);
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| retry_delay(3, crate::discovery::random()))
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn options_for_plain_and_tls_clusters() {
        assert!(connect_options(&cluster("http://127.0.0.1:2379")).is_ok());
        let mut tls = cluster("https://127.0.0.1:2379");
        tls.credentials = Some(EtcdCredentials {
            username: "root".to_owned(),
            password: Secret::new("secret".to_owned()),
        });
        tls.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        tls.identity = Some(ClientIdentity {
            cert_pem: Vec::new(),
            key_pem: Secret::new(String::new()),
        });
        // PEM is read when connecting; building the options never fails for it.
        assert!(connect_options(&tls).is_ok());
    }

    /// Nothing listens: the failure is reported (once per try) and retried, never a panic,
    /// and the reason says what failed.
    #[tokio::test]
    async fn an_unreachable_cluster_is_a_reported_failure() {
        let addr = crate::test_net::dead_addr();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let spec = EtcdDiscovery {
            prefix: "/weir/".to_owned(),
            cluster: Arc::new(cluster(&format!("http://{addr}"))),
        };
        let task = watch_etcd(Arc::from("users"), spec, move |u| {
            let _ = tx.send(u);
        });
        for _ in 0..2 {
            let update = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            let Update::Failed(reason) = update else {
                panic!("{update:?}")
            };
            assert!(reason.starts_with("listing the prefix: "), "{reason}");
        }
        task.abort();
    }
}
