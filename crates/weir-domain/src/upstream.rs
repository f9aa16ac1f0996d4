//! Upstreams and their targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::balance::Balancer;
use crate::health::HealthCounters;

/// How a target is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c) to plain targets.
    Http2,
}

/// `http://host:port` split once at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetAddr {
    /// `http` (https targets come with upstream TLS).
    pub scheme: &'static str,
    /// `host:port` exactly as it goes on the wire.
    pub authority: String,
    pub host: String,
    pub port: u16,
}

impl TargetAddr {
    /// Parses `http://host[:port]` (no path). Returns a message fit for a config error.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            ("http", r)
        } else if url.starts_with("https://") {
            return Err("https:// targets need upstream TLS, which is not supported yet".into());
        } else {
            return Err(format!("\"{url}\" is not an http:// URL"));
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
                None if after.is_empty() => 80,
                None => return Err(format!("\"{url}\" has a bad port")),
            };
            (format!("[{h}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("\"{url}\" has a bad port"))?,
                ),
                None => (rest.to_owned(), 80),
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

/// A named group of targets and how to spread requests over them.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Arc<Target>>,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    pub protocol: Protocol,
    pub timeouts: Timeouts,
    pub health_check: Option<ActiveHealthCheck>,
    /// `rate_limit`: applies to every route to this upstream, after the route's own.
    pub rate_limits: Vec<crate::ratelimit::RateLimitPolicy>,
}

impl Upstream {
    /// Chooses a healthy target. `hash` is the request's key hash for `consistent_hash`,
    /// `random` a fresh random number. `None` when no target is healthy.
    #[must_use]
    pub fn pick(&self, hash: Option<u64>, random: u64) -> Option<&Arc<Target>> {
        self.balancer
            .pick(&self.targets, hash, random)
            .map(|i| &self.targets[i])
    }

    #[must_use]
    pub fn healthy_count(&self) -> usize {
        self.targets.iter().filter(|t| t.is_healthy()).count()
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
        assert!(
            TargetAddr::parse("https://x")
                .unwrap_err()
                .contains("not supported yet")
        );
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
