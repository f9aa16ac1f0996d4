//! The Redis store for distributed rate limits: GCRA in one atomic Lua script per decision,
//! on the Redis server's clock, so every gateway sharing a Redis agrees whatever its own clock
//! says.
//!
//! - **Arithmetic**: exactly `weir_domain::ratelimit::Rate::decide`. A TAT is stored as a
//!   decimal string of nanoseconds since the Unix epoch; `now` is Redis `TIME`, so its
//!   resolution is one microsecond. Lua numbers are doubles, so the script works on distances
//!   from now, which must stay below 2^52 ns (about 52 days): [`MAX_TOLERANCE_NS`].
//! - **Atomicity**: on a single server, one script decides every check of a request: all admit
//!   and every new TAT is written, or one refuses and nothing is written.
//! - **Expiry**: each TAT is written with `PX` = time until it passes (+ 2 ms), so idle keys
//!   leave Redis by themselves; a missing key and a past TAT decide the same.
//! - **Cluster**: the caller puts a hash tag (`weir:rl:{...}`) in each key. Checks in one slot
//!   run as one script. Checks spread over several slots run one script per slot,
//!   concurrently; if any slot refuses, the slots that admitted are given back one interval
//!   each by a second script. That give-back is **not atomic** with the decision: for a moment
//!   the other slots' budget is taken, and a request racing it may be refused where a single
//!   script would have admitted it.
//! - **Failures**: every decision is bounded by `timeout`; a down or slow Redis answers
//!   `Err(RedisFailure)` quickly, and the limiter reconnects by itself (at most one connection
//!   attempt in flight, one attempt per [`RECONNECT_EVERY`] while Redis is down).

mod redis;
mod script;
#[cfg(test)]
pub(crate) mod test_redis;
#[cfg(test)]
mod tests;

use std::fmt;

pub use self::redis::RedisLimiter;
pub use crate::redis_conn::{RECONNECT_EVERY, RedisSettings};

/// Largest `tolerance` (and interval) a check may have, in nanoseconds: 2^52, about 52 days.
/// The script's arithmetic is exact below it; [`RedisLimiter::decide`] refuses checks above.
pub const MAX_TOLERANCE_NS: u64 = 1 << 52;

/// One limit of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisCheck<'a> {
    /// The full Redis key, built by the caller, with a hash tag for cluster: `weir:rl:{...}`.
    pub key: &'a [u8],
    /// `Rate::interval`, nanoseconds.
    pub interval_ns: u64,
    /// `Rate::tolerance`, nanoseconds.
    pub tolerance_ns: u64,
}

/// The store's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisAnswer {
    /// Every check admitted: `(remaining, reset_after_ns)` per check, in the order given.
    Admitted(Vec<(u32, u64)>),
    /// Check `index` refused; nothing was taken.
    Refused {
        index: usize,
        retry_after_ns: u64,
        reset_after_ns: u64,
    },
}

/// Why the store could not decide (Redis down, slow, or answering nonsense). Its text never
/// contains a password from the URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisFailure(pub String);

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisFailure {}
