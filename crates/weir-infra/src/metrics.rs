//! Metrics: lock-free atomics, resolved at config load, rendered in Prometheus text format.
//!
//! The contract labels requests by status and method, which are only known per request.
//! Rather than a keyed lookup per request (hashing label strings), each route and target owns
//! a small open-addressed table of atomic counters keyed by `(method, status)`: a request
//! costs a few atomic loads and one `fetch_add`, and never allocates. Histograms are fixed
//! buckets of atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use weir_domain::auth::AuthFailure;

/// Bucket bounds in seconds, for request and upstream durations.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

const SLOTS: usize = 64;

/// Counts per `u32` key (never 0), lock-free, for at most 64 distinct keys; more go to
/// `overflow` (rendered as `other`) so the memory is fixed.
#[derive(Debug)]
pub struct KeyedCounter {
    keys: [AtomicU32; SLOTS],
    counts: [AtomicU64; SLOTS],
    overflow: AtomicU64,
}

impl Default for KeyedCounter {
    fn default() -> Self {
        Self {
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
        }
    }
}

impl KeyedCounter {
    pub fn increment(&self, key: u32) {
        debug_assert_ne!(key, 0);
        let start = (key.wrapping_mul(0x9e37_79b1) >> 26) as usize;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let k = self.keys[slot].load(Ordering::Acquire);
            if k == key {
                self.counts[slot].fetch_add(1, Ordering::Relaxed);
                return;
            }
            if k == 0 {
                match self.keys[slot].compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        self.counts[slot].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(other) if other == key => {
                        self.counts[slot].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
        self.overflow.fetch_add(1, Ordering::Relaxed);
    }

    /// `(key, count)` pairs, sorted by key, and the overflow count.
    #[must_use]
    pub fn snapshot(&self) -> (Vec<(u32, u64)>, u64) {
        let mut out: Vec<(u32, u64)> = (0..SLOTS)
            .filter_map(|i| {
                let k = self.keys[i].load(Ordering::Acquire);
                (k != 0).then(|| (k, self.counts[i].load(Ordering::Relaxed)))
            })
            .collect();
        out.sort_unstable();
        (out, self.overflow.load(Ordering::Relaxed))
    }
}

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 14],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKET_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(BUCKET_MICROS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the histogram's bucket, sum and count lines.
    pub fn render_into(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Method index (1-based, 0 for others) and status packed into a counter key.
#[must_use]
pub fn method_status_key(method_index: u8, status: u16) -> u32 {
    (u32::from(method_index) + 1) << 16 | u32::from(status)
}

/// Names for method indexes as produced by `method_index`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// Index into [`METHODS`].
#[must_use]
pub fn method_index(method: &http::Method) -> u8 {
    METHODS[..9]
        .iter()
        .position(|m| *m == method.as_str())
        .map_or(9, |i| i as u8)
}

/// Per-route metrics.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub requests: KeyedCounter,
    pub duration: Histogram,
    /// `weir_auth_failures_total`, by `AuthFailure::index`.
    pub auth_failures: [AtomicU64; AuthFailure::ALL.len()],
    /// `weir_rate_limited_total`.
    pub rate_limited: AtomicU64,
    /// `weir_rate_limit_overflow_total`: decisions made in a policy's shared overflow bucket.
    pub rate_overflow: AtomicU64,
    /// `weir_rate_limit_store_errors_total`: decisions the shared store could not make.
    pub rate_store_errors: AtomicU64,
    /// `weir_fallbacks_total`, by kind (static, upstream).
    pub fallbacks: [AtomicU64; 2],
    /// `weir_cache_requests_total`, by result (hit, miss, stale, bypass).
    pub cache: [AtomicU64; 4],
}

/// Per-target metrics.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    /// Keyed by status only; every try that got a response head.
    pub responses: KeyedCounter,
    /// Tries without a response head, by [`FailureReason`].
    pub failures: [AtomicU64; FailureReason::ALL.len()],
}

/// Why a try got no response head (`weir_upstream_failures_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    Connect = 0,
    Reset = 1,
    Timeout = 2,
}

impl FailureReason {
    pub const ALL: [Self; 3] = [Self::Connect, Self::Reset, Self::Timeout];

    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
        }
    }
}

/// Per-upstream metrics, shared by the upstream's forwarder (which counts every try) and
/// the admin API. Per-target counters live with each target's connections.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Time from sending a try to its response head.
    pub duration: Histogram,
}

/// Escapes a label value for the text format.
#[must_use]
pub fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes a metric family header.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders `weir_requests_total` and `weir_request_duration_seconds` for named routes.
pub fn render_routes<'a>(
    out: &mut String,
    routes: impl Iterator<Item = (&'a str, &'a RouteMetrics)> + Clone,
) {
    family(
        out,
        "weir_requests_total",
        "counter",
        "Requests answered, by route, method and status.",
    );
    for (name, m) in routes.clone() {
        let route = label(name);
        let (counts, overflow) = m.requests.snapshot();
        for (key, count) in counts {
            let method = METHODS
                .get(((key >> 16) as usize).saturating_sub(1))
                .copied()
                .unwrap_or("OTHER");
            let status = key & 0xffff;
            let _ = writeln!(
                out,
                "weir_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        if overflow > 0 {
            let _ = writeln!(
                out,
                "weir_requests_total{{route=\"{route}\",method=\"OTHER\",status=\"other\"}} {overflow}"
            );
        }
    }
    family(
        out,
        "weir_request_duration_seconds",
        "histogram",
        "Time from request head to the end of the response body.",
    );
    for (name, m) in routes.clone() {
        m.duration.render_into(
            out,
            "weir_request_duration_seconds",
            &format!("route=\"{}\"", label(name)),
        );
    }
    for (metric, help, read) in [
        (
            "weir_rate_limited_total",
            "Requests refused by a rate limit, by route.",
            (|m: &RouteMetrics| m.rate_limited.load(Ordering::Relaxed)) as fn(&RouteMetrics) -> u64,
        ),
        (
            "weir_rate_limit_overflow_total",
            "Rate-limit decisions for keys that found no free slot and shared the overflow bucket.",
            |m: &RouteMetrics| m.rate_overflow.load(Ordering::Relaxed),
        ),
        (
            "weir_rate_limit_store_errors_total",
            "Rate-limit decisions the shared store (Redis) could not make in time; on_error applied.",
            |m: &RouteMetrics| m.rate_store_errors.load(Ordering::Relaxed),
        ),
    ] {
        family(out, metric, "counter", help);
        for (name, m) in routes.clone() {
            let n = read(m);
            if n > 0 {
                let _ = writeln!(out, "{metric}{{route=\"{}\"}} {n}", label(name));
            }
        }
    }
    family(
        out,
        "weir_cache_requests_total",
        "counter",
        "Requests to routes with a cache, by route and result (hit, miss, stale, bypass).",
    );
    for (name, m) in routes.clone() {
        for (result, n) in ["hit", "miss", "stale", "bypass"].iter().zip(&m.cache) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_cache_requests_total{{route=\"{}\",result=\"{result}\"}} {n}",
                    label(name)
                );
            }
        }
    }
    family(
        out,
        "weir_fallbacks_total",
        "counter",
        "Responses served by a route's fallback, by route and kind (static, upstream).",
    );
    for (name, m) in routes.clone() {
        for (kind, n) in ["static", "upstream"].iter().zip(&m.fallbacks) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_fallbacks_total{{route=\"{}\",kind=\"{kind}\"}} {n}",
                    label(name)
                );
            }
        }
    }
    family(
        out,
        "weir_auth_failures_total",
        "counter",
        "Requests refused by a route's ip, auth or roles, by reason.",
    );
    for (name, m) in routes {
        for reason in AuthFailure::ALL {
            let n = m.auth_failures[reason.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_auth_failures_total{{route=\"{}\",reason=\"{}\"}} {n}",
                    label(name),
                    reason.label()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_counter_counts_and_overflows() {
        let c = KeyedCounter::default();
        for k in 1..=70u32 {
            c.increment(k);
            c.increment(k);
        }
        let (counts, overflow) = c.snapshot();
        assert_eq!(counts.len(), 64);
        assert!(counts.iter().all(|(_, n)| *n == 2));
        assert_eq!(overflow, 12);
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render_into(&mut out, "x", "route=\"r\"");
        assert!(out.contains("x_bucket{route=\"r\",le=\"0.001\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"r\",le=\"0.025\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"r\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"r\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{route=\"r\"} 3\n"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
