//! Retries: which failures are retried, how long to wait between tries, and the budget that
//! keeps retries from multiplying load on an upstream that is already failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::window::{BUCKETS, Totals, Window};

/// Request bodies up to this size are buffered so that a retry can send them again. Larger
/// ones, and bodies of unknown length, stream and are not retried.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// `retry` of an upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
    pub backoff: Backoff,
    pub on: RetryOn,
    /// Retry only methods that are idempotent by RFC 9110 (GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE).
    pub idempotent_only: bool,
    /// Bound of each try; every try is also bounded by what is left of the overall timeout.
    pub per_try_timeout: Option<Duration>,
    pub budget: BudgetPolicy,
}

/// Exponential backoff: before retry `n` (1-based) wait up to
/// `min(max, initial * multiplier^(n-1))`; with full jitter, a uniformly random part of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: bool,
}

impl Backoff {
    /// The wait before retry `retry` (1 for the first retry); `random` is a fresh random number.
    #[must_use]
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let ceiling = Duration::try_from_secs_f64(ceiling)
            .unwrap_or(self.max)
            .min(self.max);
        if self.jitter {
            // 53 random bits: a uniform fraction in [0, 1).
            ceiling.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
        } else {
            ceiling
        }
    }
}

/// Why a try failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: nothing reached the upstream.
    Connect,
    /// The connection broke before a response head arrived.
    Reset,
    /// No response head within the try's time.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

/// The conditions of `retry.on`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    connect: bool,
    reset: bool,
    timeout: bool,
    /// Bit `code - 500` for each listed 5xx status.
    statuses: u128,
}

impl RetryOn {
    /// Condition names as written in the config.
    pub const CONDITIONS: [&'static str; 3] = ["connect_failure", "reset", "timeout"];

    /// Adds one condition: a name of [`Self::CONDITIONS`] or a 5xx status code.
    pub fn add(&mut self, name: &str) -> Result<(), String> {
        match name {
            "connect_failure" => self.connect = true,
            "reset" => self.reset = true,
            "timeout" => self.timeout = true,
            code => match code.parse::<u16>() {
                Ok(c @ 500..=599) => self.statuses |= 1 << (c - 500),
                _ => {
                    return Err(format!(
                        "\"{code}\" is not one of connect_failure, reset, timeout or a 5xx status such as \"503\""
                    ));
                }
            },
        }
        Ok(())
    }

    #[must_use]
    pub const fn matches(&self, failure: Failure) -> bool {
        match failure {
            Failure::Connect => self.connect,
            Failure::Reset => self.reset,
            Failure::Timeout => self.timeout,
            Failure::Status(c @ 500..=599) => self.statuses & (1 << (c - 500)) != 0,
            Failure::Status(_) => false,
        }
    }

    /// The conditions, as written in the config.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = [self.connect, self.reset, self.timeout]
            .iter()
            .zip(Self::CONDITIONS)
            .filter(|(on, _)| **on)
            .map(|(_, n)| n.to_owned())
            .collect();
        out.extend(
            (0..100u16)
                .filter(|i| self.statuses & (1 << i) != 0)
                .map(|i| (500 + i).to_string()),
        );
        out
    }
}

/// `retry.budget`: over the last [`BUDGET_WINDOW`], retries may be at most `ratio` of the
/// requests, or `min_per_second` per second of the window when that is more, so an upstream
/// with little traffic can still be retried (and a burst after a quiet spell too).
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetPolicy {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl BudgetPolicy {
    /// Retries allowed over a window that saw `requests` first tries.
    #[must_use]
    pub fn allowed(&self, requests: u64) -> f64 {
        let floor = f64::from(self.min_per_second) * BUDGET_WINDOW.as_secs_f64();
        (self.ratio * requests as f64).max(floor)
    }
}

/// The window the budget is measured over.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_SLOT_MS: u64 = BUDGET_WINDOW.as_millis() as u64 / BUCKETS as u64;

/// One upstream's budget state: requests (`a`) and retries (`b`) over the window.
#[derive(Debug, Default)]
pub struct RetryBudget {
    window: Window,
    exhausted: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// Counts a request (its first try) toward what may be retried.
    pub fn record_request(&self, now_ms: u64) {
        self.window.add(now_ms, BUDGET_SLOT_MS, 1, 0);
    }

    /// Takes leave for one retry; `false` (and counted) when the budget is spent. Two
    /// requests may both take the last retry at once: the bound is exact up to the number
    /// of concurrent deciders, which is what a lock would cost to fix.
    pub fn try_retry(&self, now_ms: u64, policy: &BudgetPolicy) -> bool {
        let t = self.window.totals(now_ms, BUDGET_SLOT_MS);
        let granted = (t.b as f64) < policy.allowed(t.a);
        if granted {
            self.window.add(now_ms, BUDGET_SLOT_MS, 0, 1);
        } else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        granted
    }

    /// Counts a retry actually sent (`weir_retries_total`).
    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries sent since the config was loaded.
    #[must_use]
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries the budget refused since the config was loaded.
    #[must_use]
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Requests (`a`) and retries (`b`) over the window ending at `now_ms`.
    #[must_use]
    pub fn totals(&self, now_ms: u64) -> Totals {
        self.window.totals(now_ms, BUDGET_SLOT_MS)
    }
}

/// Methods RFC 9110 defines as idempotent: sending one twice means what sending it once does.
#[must_use]
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter: bool) -> Backoff {
        Backoff {
            initial: Duration::from_millis(25),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let b = backoff(false);
        let ms: Vec<u128> = (1..=8).map(|n| b.delay(n, 0).as_millis()).collect();
        assert_eq!(ms, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000, 0), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_spreads() {
        let b = backoff(true);
        assert_eq!(b.delay(3, 0), Duration::ZERO);
        assert!(b.delay(3, u64::MAX) <= Duration::from_millis(100));
        let half = b.delay(3, 1 << 63).as_millis();
        assert!((49..=50).contains(&half), "{half}");
    }

    #[test]
    fn conditions_parse_and_match() {
        let mut on = RetryOn::default();
        for n in ["connect_failure", "503", "599"] {
            on.add(n).unwrap();
        }
        assert!(on.matches(Failure::Connect));
        assert!(!on.matches(Failure::Reset));
        assert!(on.matches(Failure::Status(503)));
        assert!(on.matches(Failure::Status(599)));
        assert!(!on.matches(Failure::Status(502)));
        assert!(!on.matches(Failure::Status(200)));
        assert_eq!(on.names(), ["connect_failure", "503", "599"]);
        assert!(on.add("404").is_err());
        assert!(on.add("retriable").is_err());
    }

    #[test]
    fn budget_holds_retries_to_the_ratio_or_the_floor() {
        let (b, p) = (
            RetryBudget::default(),
            BudgetPolicy {
                ratio: 0.2,
                min_per_second: 1,
            },
        );
        // A storm: 1,000 requests within one second, each wanting two retries. The floor
        // (1/s over 10 s) allows 10; the ratio 20% of the requests seen so far.
        let mut granted = 0;
        for i in 0..1000 {
            b.record_request(i);
            granted += (0..2).filter(|_| b.try_retry(i, &p)).count();
        }
        assert_eq!(granted, 200);
        assert_eq!(b.exhausted(), 2000 - 200);
        assert_eq!(b.totals(999), Totals { a: 1000, b: 200 });
        // Quiet traffic: the floor alone.
        let quiet = RetryBudget::default();
        b.record_request(0);
        let burst = (0..20).filter(|_| quiet.try_retry(5, &p)).count();
        assert_eq!(burst, 10);
        // Once the window has passed, earlier requests and retries no longer count.
        assert_eq!(b.totals(11_000), Totals::default());
        assert!(b.try_retry(11_000, &p));
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent("GET") && is_idempotent("PUT") && is_idempotent("DELETE"));
        assert!(!is_idempotent("POST") && !is_idempotent("PATCH"));
    }
}
