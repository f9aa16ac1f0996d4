//! Rate limits: the policies a route or upstream declares, and GCRA, the arithmetic that
//! decides each request.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival
//! time (TAT) of the next request if traffic were perfectly paced. It is exact (a burst of
//! `burst` passes, then one request per `per / limit`), needs no timer or refill task, and a
//! key whose TAT is in the past holds no information at all, so its state can be dropped at
//! any time without changing a decision. Times are nanoseconds on whatever clock the store
//! uses (a process-local monotonic clock, or the Redis server's).

use std::time::Duration;

/// What a limit counts requests by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The authenticated identity; the client address on a request without one.
    Consumer,
    /// The client address (trusted proxies looked through).
    Ip,
    /// All requests of the route (or upstream) together.
    Route,
    /// The value of a request header (lower-case name); requests without it share one key.
    Header(String),
    /// All requests through every route with this policy, together.
    Global,
}

impl LimitKey {
    /// How the key is written in config and in problem details.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Consumer => "consumer".to_owned(),
            Self::Ip => "ip".to_owned(),
            Self::Route => "route".to_owned(),
            Self::Header(h) => format!("header:{h}"),
            Self::Global => "global".to_owned(),
        }
    }
}

/// Where a limit's state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitStore {
    /// In this process: exact for one weir, lock-free, bounded.
    Memory,
    /// In Redis, shared by every weir.
    Redis,
}

/// What to do when the store cannot decide (Redis down or slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
}

/// One `rate_limit` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub key: LimitKey,
    /// Requests per `per`, in the long run.
    pub limit: u32,
    pub per: Duration,
    /// Requests that may pass at once; default `limit`.
    pub burst: u32,
    pub store: LimitStore,
    pub on_error: OnError,
    /// Most keys the memory store tracks for this policy at once (a power of two).
    pub max_keys: usize,
}

impl RateLimitPolicy {
    /// The GCRA parameters of this policy.
    #[must_use]
    pub fn rate(&self) -> Rate {
        Rate::new(self.limit, self.per, self.burst)
    }
}

/// GCRA parameters: the emission interval and the burst tolerance, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// `per / limit`: the spacing of perfectly paced requests.
    pub interval: u64,
    /// `interval * burst`: how far ahead of now the TAT may run.
    pub tolerance: u64,
    pub limit: u32,
    pub burst: u32,
}

impl Rate {
    #[must_use]
    pub fn new(limit: u32, per: Duration, burst: u32) -> Self {
        let limit = limit.max(1);
        let burst = burst.max(1);
        let per = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(limit)).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            limit,
            burst,
        }
    }

    /// Decides one request arriving at `now` for a key whose stored TAT is `tat` (0 for a
    /// key never seen). On `allowed`, the caller stores `new_tat`; on a refusal nothing
    /// changes.
    #[must_use]
    pub fn decide(&self, tat: u64, now: u64) -> Decision {
        let base = tat.max(now);
        let new_tat = base.saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead > self.tolerance {
            // Refused: the request would fit once the TAT has drained to the tolerance.
            let ahead_now = base - now;
            return Decision {
                allowed: false,
                new_tat: tat,
                remaining: 0,
                reset_after: ahead_now,
                retry_after: ahead - self.tolerance,
            };
        }
        Decision {
            allowed: true,
            new_tat,
            remaining: u32::try_from((self.tolerance - ahead) / self.interval).unwrap_or(u32::MAX),
            reset_after: ahead,
            retry_after: 0,
        }
    }
}

/// One policy's answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The TAT to store when allowed.
    pub new_tat: u64,
    /// Requests that could still pass right now.
    pub remaining: u32,
    /// Nanoseconds until the full burst is available again (`RateLimit-Reset`).
    pub reset_after: u64,
    /// When refused: nanoseconds until one request would pass (`Retry-After`).
    pub retry_after: u64,
}

/// Whole seconds, rounded up, as the `RateLimit-Reset` and `Retry-After` headers want.
#[must_use]
pub const fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn run(rate: &Rate, tat: &mut u64, now: u64) -> bool {
        let d = rate.decide(*tat, now);
        if d.allowed {
            *tat = d.new_tat;
        }
        d.allowed
    }

    #[test]
    fn a_burst_admits_exactly_burst() {
        // limit 10 per minute, burst defaults to the limit: 30 at once admit exactly 10.
        let rate = Rate::new(10, Duration::from_secs(60), 10);
        let mut tat = 0;
        let now = 1_000 * SEC;
        let admitted = (0..30).filter(|_| run(&rate, &mut tat, now)).count();
        assert_eq!(admitted, 10);
        let refused = rate.decide(tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 6 * SEC, "one interval until the next");
        assert_eq!(ceil_secs(refused.reset_after), 60);
    }

    #[test]
    fn steady_traffic_at_twice_the_rate_admits_the_limit() {
        // limit 10 per second, burst 1, offered at 20/s for 100 s: 1,000 admitted (within 1%).
        let rate = Rate::new(10, Duration::from_secs(1), 1);
        let mut tat = 0;
        let start = 5 * SEC;
        let admitted = (0..2_000u64)
            .filter(|i| run(&rate, &mut tat, start + i * SEC / 20))
            .count();
        assert!((990..=1_010).contains(&admitted), "{admitted}");
    }

    #[test]
    fn remaining_counts_down_and_refills() {
        let rate = Rate::new(5, Duration::from_secs(5), 5);
        let mut tat = 0;
        let now = 100 * SEC;
        let d = rate.decide(tat, now);
        assert_eq!(d.remaining, 4);
        tat = d.new_tat;
        assert_eq!(rate.decide(tat, now).remaining, 3);
        // After the full window the key is as good as new.
        assert_eq!(rate.decide(tat, now + 5 * SEC).remaining, 4);
    }

    #[test]
    fn an_idle_key_is_the_same_as_a_new_key() {
        let rate = Rate::new(3, Duration::from_secs(3), 2);
        let now = 50 * SEC;
        assert_eq!(rate.decide(0, now), rate.decide(now - 1, now));
    }
}
