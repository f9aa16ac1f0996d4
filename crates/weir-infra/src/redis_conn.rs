//! The Redis connection shared by the rate limiter and the response cache's Redis store: one
//! lazily made multiplexed connection (or cluster connection) shared by every worker,
//! replaced when it breaks, with at most one connection attempt in flight and at most one
//! per [`RECONNECT_EVERY`] while Redis is down, so a dead server is not hammered. Messages
//! never carry a password from the URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

/// While Redis is down, how often a caller may try to connect again.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(100);

/// Where a Redis store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]` or `rediss://...` (TLS). One URL for a single
    /// server; with `cluster`, the seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Bound on one call, connecting included.
    pub timeout: Duration,
    /// PEM certificates trusted for `rediss://` instead of the system's trust store (only
    /// these roots, so a private CA's Redis is not also vouched for by public CAs).
    pub ca_pem: Option<Vec<u8>>,
}

/// The connection and its health; see the module docs.
pub(crate) struct RedisConn {
    target: Target,
    timeout: Duration,
    conn: ArcSwapOption<Conn>,
    /// Held while connecting, so at most one attempt is in flight.
    connecting: tokio::sync::Mutex<()>,
    /// When the last failed connection attempt started (ms since `born`, 0 for none).
    failed_at: AtomicU64,
    born: Instant,
    healthy: AtomicBool,
    /// Passwords from the URLs, as written and decoded, scrubbed from every message.
    secrets: Vec<String>,
}

enum Target {
    Single(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// One live connection; cloning it is cheap (a handle to the same multiplexed connection).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// No I/O: connects lazily on first use, from whichever runtime calls first. Errs on a
    /// malformed URL, on several URLs without `cluster`, on no URL at all, and on a CA with a
    /// URL that is not `rediss://`.
    pub(crate) fn new(settings: &RedisSettings) -> Result<Self, String> {
        let secrets: Vec<String> = settings.urls.iter().flat_map(|u| password_of(u)).collect();
        let scrub = |e: &RedisError| scrub(&e.to_string(), &secrets);
        // The cluster builder would quietly turn TLS on for a redis:// seed given roots.
        if settings.ca_pem.is_some() && !settings.urls.iter().all(|u| u.starts_with("rediss://")) {
            return Err("redis: a CA applies only to rediss:// urls".to_owned());
        }
        let target = match settings.urls.as_slice() {
            [] => return Err("redis: no url".to_owned()),
            [url] if !settings.cluster => Target::Single(Box::new(
                match &settings.ca_pem {
                    None => Client::open(url.as_str()),
                    Some(_) => Client::build_with_tls(url.as_str(), certificates(settings)),
                }
                .map_err(|e| format!("redis url: {}", scrub(&e)))?,
            )),
            _ if !settings.cluster => {
                return Err("redis: several urls need cluster: true".to_owned());
            }
            urls => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(2);
                if settings.ca_pem.is_some() {
                    builder = builder.certs(certificates(settings));
                }
                Target::Cluster(Box::new(
                    builder
                        .build()
                        .map_err(|e| format!("redis url: {}", scrub(&e)))?,
                ))
            }
        };
        Ok(Self {
            target,
            timeout: settings.timeout,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            failed_at: AtomicU64::new(0),
            born: Instant::now(),
            healthy: AtomicBool::new(true),
            secrets,
        })
    }

    pub(crate) const fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) const fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Whether the last call reached Redis (true before the first one).
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the last call's outcome; true when that changed the state, so the caller logs
    /// a state change once rather than every failing request.
    pub(crate) fn set_healthy(&self, ok: bool) -> bool {
        self.healthy.swap(ok, Ordering::Relaxed) != ok
    }

    /// The text with the URLs' passwords replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }

    /// A failed command's message; forgets the connection when the error says it is broken.
    pub(crate) fn failed(&self, conn: &Arc<Conn>, e: &RedisError) -> String {
        if e.is_unrecoverable_error() || e.is_io_error() || e.is_timeout() {
            self.drop_connection(conn);
        }
        format!("redis: {}", self.scrub(&e.to_string()))
    }

    /// Called when a call ran out of time: a connection that stops answering may be
    /// half-open, so the next call makes a fresh one.
    pub(crate) fn timed_out(&self) -> String {
        self.conn.store(None);
        format!("redis: no answer within {:?}", self.timeout)
    }

    /// Forgets a broken connection (unless another caller already replaced it).
    pub(crate) fn drop_connection(&self, broken: &Arc<Conn>) {
        let current = self.conn.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            self.conn.compare_and_swap(&*current, None);
        }
    }

    /// The shared connection, made if there is none: one attempt at a time, and while Redis
    /// is down at most one per `RECONNECT_EVERY`; callers in between fail at once.
    pub(crate) async fn connection(&self) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok(c);
        }
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        let now = millis(self.born.elapsed());
        if failed_at != 0 && now.saturating_sub(failed_at) < millis(RECONNECT_EVERY) {
            return Err("redis: unreachable (reconnecting)".to_owned());
        }
        let made = match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        };
        match made {
            Ok(c) => {
                let c = Arc::new(c);
                self.failed_at.store(0, Ordering::Relaxed);
                self.conn.store(Some(Arc::clone(&c)));
                Ok(c)
            }
            Err(e) => {
                self.failed_at.store(now.max(1), Ordering::Relaxed);
                Err(format!("redis: connect: {}", self.scrub(&e.to_string())))
            }
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The roots `rediss://` trusts when the settings name a CA: exactly those (the redis crate
/// then leaves the system store out), with no client certificate.
fn certificates(settings: &RedisSettings) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: settings.ca_pem.clone(),
    }
}

/// The password in `scheme://[user]:password@host...`, as written and percent-decoded.
fn password_of(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    if password.is_empty() {
        return Vec::new();
    }
    let decoded = percent_decode(password);
    if decoded == password {
        vec![password.to_owned()]
    } else {
        vec![password.to_owned(), decoded]
    }
}

fn percent_decode(s: &str) -> String {
    let lenient = weir_domain::percent::Decoding {
        lenient: true,
        ..Default::default()
    };
    let decoded = weir_domain::percent::decode(s.as_bytes(), lenient).unwrap_or_default();
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The text with every secret replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_scrubbed() {
        assert_eq!(
            password_of("redis://:s3cr%40t@h:6379/0"),
            ["s3cr%40t", "s3cr@t"]
        );
        assert_eq!(password_of("rediss://user:pw@h"), ["pw"]);
        assert!(password_of("redis://h:6379").is_empty());
        let s = password_of("redis://:hunter2@h");
        assert_eq!(scrub("auth hunter2 failed", &s), "auth *** failed");
    }
}
