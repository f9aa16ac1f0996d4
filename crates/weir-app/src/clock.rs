//! The process-wide monotonic clock the request path reads: rate limits in nanoseconds,
//! circuit breakers, ejections and retry budgets in milliseconds. One origin for all, so
//! the numbers compare.

use std::sync::OnceLock;
use std::time::Instant;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the origin, never 0 (0 means "never seen" to the rate limiter).
#[must_use]
pub fn now_nanos() -> u64 {
    u64::try_from(origin().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Milliseconds since the origin, never 0 (0 means "never" to its callers).
#[must_use]
pub fn now_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}
