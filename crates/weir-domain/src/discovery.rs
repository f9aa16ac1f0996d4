//! Where an upstream's targets come from: the config's static list, or a source watched at
//! run time (DNS). A source reports whole target lists; a failing source reports a failure,
//! and the last list it gave stays in use (last-known-good), marked stale.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::upstream::TargetAddr;

/// `upstreams.<name>.discovery`, or the static `targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    Static,
    Dns(DnsDiscovery),
}

impl Discovery {
    /// The source's name, as `/upstreams` shows it.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dns(_) => "dns",
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

/// One instance a source reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://host:port`, the target's identity and its metric label.
    pub url: String,
    pub addr: TargetAddr,
    pub weight: u32,
}

impl Endpoint {
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
