//! Where an upstream's targets come from: the config's static list, or a source watched at
//! run time (DNS, etcd, Consul). A source reports whole target lists; a failing source reports a failure,
//! and the last list it gave stays in use (last-known-good), marked stale.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::Secret;
use crate::upstream::TargetAddr;

/// `upstreams.<name>.discovery`, or the static `targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    Static,
    Dns(DnsDiscovery),
    Etcd(EtcdDiscovery),
    Consul(ConsulDiscovery),
}

impl Discovery {
    /// The source's name, as `/upstreams` shows it.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dns(_) => "dns",
            Self::Etcd(_) => "etcd",
            Self::Consul(_) => "consul",
        }
    }
}

/// What is asked of DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsQuery {
    /// A and AAAA records of `name`, each address with `port`.
    Address { name: String, port: u16 },
    /// SRV records of `name` (`_http._tcp.users.internal`): their targets' addresses, each
    /// with the record's port and weight (priority: only the lowest number is used).
    Srv { name: String },
}

/// `discovery.dns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsDiscovery {
    pub query: DnsQuery,
    /// Resolve again after this long, or when the answer's TTL ends if that is sooner.
    pub refresh: Duration,
    /// The name server to ask; the system's resolver configuration when `None`.
    pub server: Option<SocketAddr>,
}

/// `discovery.etcd`: every key under `prefix` is one target, its value
/// `{"url": "http://host:port", "weight": N}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdDiscovery {
    pub prefix: String,
    /// The top-level `etcd` section, shared by every upstream that uses it.
    pub cluster: Arc<EtcdCluster>,
}

/// The top-level `etcd` section: how to reach the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdCluster {
    /// `http://host:port` or `https://host:port`, at least one; all use the same scheme.
    pub endpoints: Vec<String>,
    /// etcd's own authentication (username and password), when the cluster has it on.
    pub credentials: Option<EtcdCredentials>,
    /// PEM certificates trusted for `https://` endpoints instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate for clusters that require one (mutual TLS).
    pub identity: Option<ClientIdentity>,
    /// Connecting to an endpoint, and each request that is not the watch, gives up after this.
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdCredentials {
    pub username: String,
    pub password: Secret,
}

/// A client certificate chain and its private key, PEM, read at load time.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

/// `discovery.consul`: the instances of `service` whose health checks all pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulDiscovery {
    pub service: String,
    /// Only instances with this tag.
    pub tag: Option<String>,
    /// This upstream's datacenter when not the agent's default (`consul.datacenter`).
    pub datacenter: Option<String>,
    /// The top-level `consul` section, shared by every upstream that uses it.
    pub agent: Arc<ConsulAgent>,
}

/// The top-level `consul` section: the agent weir asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulAgent {
    /// `http://host:port` or `https://host:port`.
    pub address: String,
    /// An ACL token, sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// The datacenter to ask about; the agent's own when `None`.
    pub datacenter: Option<String>,
    /// PEM certificates trusted for an `https://` address instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one blocking query may wait for a change (Consul's `wait`).
    pub wait: Duration,
}

/// One instance a source reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port`, the target's identity and its metric label.
    pub url: String,
    pub addr: TargetAddr,
    pub weight: u32,
}

impl Endpoint {
    /// The heaviest weight a source may give: a bound, so that one bad value cannot starve
    /// every other target of a smooth weighted round robin.
    pub const MAX_WEIGHT: u32 = 1_000_000;

    /// An endpoint for a URL a source reported (`http://host:port`), written back in one
    /// form (`http://host:port`, the port explicit) so that the same instance is the same
    /// target however the source spells it. Weight 1 to [`Self::MAX_WEIGHT`].
    ///
    /// # Errors
    /// Why the URL or weight is not usable, in words for a log line.
    pub fn from_url(url: &str, weight: u32) -> Result<Self, String> {
        if weight == 0 || weight > Self::MAX_WEIGHT {
            return Err(format!(
                "weight {weight} is out of range (1 to {})",
                Self::MAX_WEIGHT
            ));
        }
        let addr = TargetAddr::parse(url.trim())?;
        Ok(Self {
            url: addr.to_string(),
            addr,
            weight,
        })
    }

    /// An endpoint for an address and port (IPv6 in brackets).
    #[must_use]
    pub fn from_socket(addr: SocketAddr, weight: u32) -> Self {
        let url = format!("http://{addr}");
        Self {
            addr: TargetAddr {
                scheme: "http",
                authority: addr.to_string(),
                host: match addr {
                    SocketAddr::V4(a) => a.ip().to_string(),
                    SocketAddr::V6(a) => format!("[{}]", a.ip()),
                },
                port: addr.port(),
            },
            url,
            weight: weight.max(1),
        }
    }
}

/// What a source last said, shared by its watcher, the pipeline and the admin API.
#[derive(Debug, Default)]
pub struct DiscoveryState {
    /// The source failed since its last good answer: the targets are the last-known-good.
    stale: AtomicBool,
    /// When the last good answer arrived (ms on the process clock; 0: never).
    updated_ms: AtomicU64,
}

impl DiscoveryState {
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn updated_ms(&self) -> u64 {
        self.updated_ms.load(Ordering::Relaxed)
    }

    /// Records a good answer at `now_ms` (never 0); returns true when the source was stale
    /// (it recovered).
    pub fn fresh(&self, now_ms: u64) -> bool {
        self.updated_ms.store(now_ms, Ordering::Relaxed);
        self.stale.swap(false, Ordering::Relaxed)
    }

    /// Records a failure; returns true when the source was fresh (it just went stale).
    pub fn failed(&self) -> bool {
        !self.stale.swap(true, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_addresses() {
        let e = Endpoint::from_socket("10.0.0.1:9000".parse().unwrap(), 0);
        assert_eq!(e.url, "http://10.0.0.1:9000");
        assert_eq!(e.weight, 1);
        let v6 = Endpoint::from_socket("[::1]:81".parse().unwrap(), 3);
        assert_eq!(v6.url, "http://[::1]:81");
        assert_eq!(v6.addr, TargetAddr::parse("http://[::1]:81").unwrap());
    }

    #[test]
    fn endpoints_from_urls() {
        let e = Endpoint::from_url(" http://10.0.0.1:9000/ ", 3).unwrap();
        assert_eq!(e.url, "http://10.0.0.1:9000");
        assert_eq!(e.weight, 3);
        assert_eq!(
            Endpoint::from_url("http://users", 1).unwrap().url,
            "http://users:80"
        );
        assert!(Endpoint::from_url("http://a:1", 0).is_err());
        assert!(Endpoint::from_url("http://a:1", Endpoint::MAX_WEIGHT + 1).is_err());
        assert!(Endpoint::from_url("ftp://a:1", 1).is_err());
        assert!(Endpoint::from_url("http://a:1/x", 1).is_err());
    }

    #[test]
    fn state_reports_changes_once() {
        let s = DiscoveryState::default();
        assert!(!s.is_stale());
        assert!(s.failed());
        assert!(!s.failed());
        assert!(s.is_stale());
        assert!(s.fresh(5));
        assert!(!s.fresh(6));
        assert_eq!(s.updated_ms(), 6);
    }
}
