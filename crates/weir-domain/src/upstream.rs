//! Upstreams and their targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::balance::{Balancer, LoadBalancing};
use crate::breaker::{Breaker, BreakerPolicy, CircuitState, Pass};
use crate::discovery::{Discovery, DiscoveryState};
use crate::health::HealthCounters;
use crate::outlier::{self, Outlier, PassivePolicy};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::window::{BUCKETS, Totals, Window};

/// How a target is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c) to plain targets.
    Http2,
    /// gRPC: HTTP/2 as for `Http2`, with `TE: trailers` kept and weir's own errors answered
    /// in gRPC form.
    Grpc,
}

impl Protocol {
    /// Whether requests go over HTTP/2.
    #[must_use]
    pub const fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// `http://host:port` split once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetAddr {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `host:port` exactly as it goes on the wire.
    pub authority: String,
    pub host: String,
    pub port: u16,
}

impl TargetAddr {
    /// Parses `http://host[:port]` or `https://host[:port]` (no path). Returns a message fit
    /// for a config error.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
            ("http", r, 80)
        } else if let Some(r) = url.strip_prefix("https://") {
            ("https", r, 443)
        } else {
            return Err(format!("\"{url}\" is not an http:// or https:// URL"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "\"{url}\" must be scheme://host:port only, without path, query or user"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("\"{url}\" has an unclosed IPv6 literal"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("\"{url}\" has a bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("\"{url}\" has a bad port")),
            };
            (format!("[{h}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("\"{url}\" has a bad port"))?,
                ),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("\"{url}\" needs a host and a non-zero port"));
        }
        Ok(Self {
            scheme,
            authority: format!("{host}:{port}"),
            host,
            port,
        })
    }
}

impl std::fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// One backend instance. Its live state is atomics shared by every request and the checker.
#[derive(Debug)]
pub struct Target {
    pub addr: TargetAddr,
    /// The URL as configured, used as the metric label and in `/upstreams`.
    pub url: String,
    pub weight: u32,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    pub health: HealthCounters,
    /// Passive health: ejection by failures of real traffic.
    pub outlier: Outlier,
    pub breaker: Breaker,
    /// Successes (`a`) and failures (`b`) of recent tries, for the breaker and `/upstreams`.
    pub recent: Window,
}

impl Target {
    #[must_use]
    pub fn new(url: String, addr: TargetAddr, weight: u32) -> Self {
        Self {
            addr,
            url,
            weight: weight.max(1),
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            health: HealthCounters::default(),
            outlier: Outlier::default(),
            breaker: Breaker::default(),
            recent: Window::default(),
        }
    }

    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    #[must_use]
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Decrements the target's in-flight count when dropped (after the response body ends).
#[derive(Debug)]
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where `consistent_hash` reads its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    Ip,
    Path,
}

impl HashKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(h) = s.strip_prefix("header:") {
            if h.is_empty() {
                Err("header: needs a name".into())
            } else {
                Ok(Self::Header(h.to_ascii_lowercase()))
            }
        } else if let Some(c) = s.strip_prefix("cookie:") {
            if c.is_empty() {
                Err("cookie: needs a name".into())
            } else {
                Ok(Self::Cookie(c.to_owned()))
            }
        } else if s == "ip" {
            Ok(Self::Ip)
        } else if s == "path" {
            Ok(Self::Path)
        } else {
            Err(format!(
                "\"{s}\" is not one of header:NAME, cookie:NAME, ip, path"
            ))
        }
    }
}

/// Timeouts toward the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response head arrives (the route's `timeout` overrides it).
    pub request: Duration,
}

/// Active health checking: probe `path` every `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveHealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// A named group of targets and how to spread requests over them. The targets themselves
/// live in a [`TargetSet`] that the application swaps when discovery changes them.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    /// The config's `targets` (empty with `discovery`): the first target set.
    pub static_targets: Vec<Arc<Target>>,
    pub load_balancing: LoadBalancing,
    pub discovery: Discovery,
    /// What the discovery source last said (never stale for static targets).
    pub discovery_state: DiscoveryState,
    pub hash_key: Option<HashKey>,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    pub health_check: Option<ActiveHealthCheck>,
    /// `rate_limit`: applies to every route to this upstream, after the route's own.
    pub rate_limits: Vec<crate::ratelimit::RateLimitPolicy>,
    /// `health_check.passive`.
    pub passive: Option<PassivePolicy>,
    pub circuit_breaker: Option<BreakerPolicy>,
    pub retry: Option<RetryPolicy>,
    /// Spent by retries; unused without `retry`.
    pub budget: RetryBudget,
    /// TLS toward every target (static or discovered), when set.
    pub tls: Option<UpstreamTls>,
}

/// How weir speaks TLS to an upstream's targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM CA certificates trusted instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
    /// weir's own certificate, for targets that require one.
    pub identity: Option<crate::discovery::ClientIdentity>,
    /// Sent in SNI and checked in the certificate instead of each target's host.
    pub server_name: Option<String>,
}

/// The targets of an upstream at one moment, with the balancer's state built for them.
#[derive(Debug)]
pub struct TargetSet {
    pub targets: Vec<Arc<Target>>,
    pub balancer: Balancer,
}

impl TargetSet {
    #[must_use]
    pub fn new(policy: LoadBalancing, targets: Vec<Arc<Target>>) -> Self {
        Self {
            balancer: Balancer::new(policy, &targets),
            targets,
        }
    }
}

/// Targets a request already tried, so a retry goes elsewhere when it can. Indexes past 63
/// are not remembered (they may be tried again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    #[must_use]
    pub const fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

/// What one outcome changed, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The target's circuit moved to this state.
    pub circuit: Option<CircuitState>,
    /// The target was ejected for this long.
    pub ejected: Option<Duration>,
}

/// A target's recent tries: how many, and the share that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Recent {
    pub requests: u64,
    pub failure_ratio: f64,
}

/// The recent-outcome window without a breaker: 10 s.
const DEFAULT_SLOT_MS: u64 = 10_000 / BUCKETS as u64;

impl Upstream {
    /// Whether a request may go to `target` now: healthy by active checks, not ejected, and
    /// its circuit not refusing.
    #[must_use]
    pub fn available(&self, target: &Target, now_ms: u64) -> bool {
        target.is_healthy()
            && !(self.passive.is_some() && target.outlier.is_ejected(now_ms))
            && self
                .circuit_breaker
                .as_ref()
                .is_none_or(|p| target.breaker.available(now_ms, p))
    }

    /// Chooses an available target. A first try asks the balancer; a retry takes a random
    /// available target not in `tried` (any available one when all were tried), so retries
    /// neither advance the balancer's rotation (which would send every next first try to a
    /// failing target) nor return to the target that just failed. `hash` is the request's
    /// key hash for `consistent_hash`, `random` a fresh random number. `None` when no target
    /// is available.
    #[must_use]
    pub fn pick(
        &self,
        set: &TargetSet,
        hash: Option<u64>,
        random: u64,
        now_ms: u64,
        tried: Tried,
    ) -> Option<usize> {
        let usable = |i: usize| self.available(&set.targets[i], now_ms);
        if tried == Tried::default() {
            return set.balancer.pick(&set.targets, hash, random, usable);
        }
        let n = set.targets.len();
        let start = usize::try_from(random % n.max(1) as u64).unwrap_or(0);
        let scan = |ok: &dyn Fn(usize) -> bool| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
        scan(&|i| !tried.contains(i) && usable(i)).or_else(|| scan(&usable))
    }

    /// Takes the target's circuit pass (always granted without a breaker).
    #[must_use]
    pub fn acquire(&self, target: &Target, now_ms: u64) -> Option<Pass> {
        match &self.circuit_breaker {
            Some(p) => target.breaker.acquire(now_ms, p),
            None => Some(Pass::Closed),
        }
    }

    /// Records the outcome of a try sent to `set.targets[index]` with `pass`.
    pub fn record(
        &self,
        set: &TargetSet,
        index: usize,
        pass: Pass,
        ok: bool,
        now_ms: u64,
    ) -> Changes {
        let target = &set.targets[index];
        target
            .recent
            .add(now_ms, self.recent_slot_ms(), u64::from(ok), u64::from(!ok));
        Changes {
            circuit: self
                .circuit_breaker
                .as_ref()
                .and_then(|p| target.breaker.record(now_ms, p, pass, ok, &target.recent)),
            ejected: self
                .passive
                .as_ref()
                .and_then(|p| outlier::record(&set.targets, index, p, ok, now_ms)),
        }
    }

    /// The target's tries over the recent window (the breaker's `window`, else 10 s).
    #[must_use]
    pub fn recent(&self, target: &Target, now_ms: u64) -> Recent {
        let Totals { a, b } = target.recent.totals(now_ms, self.recent_slot_ms());
        let requests = a + b;
        Recent {
            requests,
            failure_ratio: if requests == 0 {
                0.0
            } else {
                b as f64 / requests as f64
            },
        }
    }

    fn recent_slot_ms(&self) -> u64 {
        self.circuit_breaker
            .as_ref()
            .map_or(DEFAULT_SLOT_MS, BreakerPolicy::slot_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let a = TargetAddr::parse("http://10.0.0.1:9000").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.authority.as_str()),
            ("10.0.0.1", 9000, "10.0.0.1:9000")
        );
        assert_eq!(TargetAddr::parse("http://svc").unwrap().authority, "svc:80");
        assert_eq!(
            TargetAddr::parse("http://[::1]:81/").unwrap().authority,
            "[::1]:81"
        );
        assert!(TargetAddr::parse("ftp://x").is_err());
        assert!(TargetAddr::parse("http://x:y").is_err());
        assert!(TargetAddr::parse("http://x/path").is_err());
        let tls = TargetAddr::parse("https://api.example.com").unwrap();
        assert_eq!(
            (tls.scheme, tls.authority.as_str()),
            ("https", "api.example.com:443")
        );
        assert_eq!(tls.to_string(), "https://api.example.com:443");
    }

    #[test]
    fn hash_keys() {
        assert_eq!(
            HashKey::parse("header:X-User").unwrap(),
            HashKey::Header("x-user".into())
        );
        assert!(HashKey::parse("query:x").is_err());
    }
}
