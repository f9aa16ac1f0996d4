//! The circuit breaker of one target: closed → open when the failure ratio over the rolling
//! window reaches `failure_ratio` with at least `min_requests`; open for `open_for`; then
//! half-open, letting `half_open_requests` probes through. Every probe succeeding closes it,
//! any probe failing opens it again.
//!
//! The whole state is one `AtomicU64` (state, probes issued, probes succeeded, since when),
//! so a transition is one compare-and-swap and two requests can never both win it. Time is
//! milliseconds passed in by the caller, which makes the machine testable on a fake clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::window::{BUCKETS, Window};

/// `circuit_breaker` of an upstream, applied to each of its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    /// At most [`MAX_PROBES`].
    pub half_open_requests: u32,
}

/// The most probes a half-open circuit can let through at once.
pub const MAX_PROBES: u32 = (1 << COUNT_BITS) - 1;

impl BreakerPolicy {
    /// The rolling window's slot length.
    #[must_use]
    pub fn slot_ms(&self) -> u64 {
        (millis(self.window) / BUCKETS as u64).max(1)
    }
}

/// The states, numbered as the `weir_circuit_breaker_state` gauge reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Leave to send one request to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The circuit is closed (or the upstream has no breaker).
    Closed,
    /// A half-open probe; `since` names the half-open period it belongs to.
    Probe { since: u64 },
}

const COUNT_BITS: u32 = 10;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TIME_BITS: u32 = 64 - 2 - 2 * COUNT_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    state: CircuitState,
    issued: u64,
    succeeded: u64,
    /// When the current state began, in ms (truncated to `TIME_BITS`, about 139 years).
    since: u64,
}

impl Word {
    fn pack(self) -> u64 {
        ((self.state as u64) << (64 - 2))
            | (self.issued << (TIME_BITS + COUNT_BITS))
            | (self.succeeded << TIME_BITS)
            | (self.since & TIME_MASK)
    }

    fn unpack(v: u64) -> Self {
        let state = match v >> (64 - 2) {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        };
        Self {
            state,
            issued: (v >> (TIME_BITS + COUNT_BITS)) & COUNT_MASK,
            succeeded: (v >> TIME_BITS) & COUNT_MASK,
            since: v & TIME_MASK,
        }
    }

    const fn new(state: CircuitState, since: u64) -> Self {
        Self {
            state,
            issued: 0,
            succeeded: 0,
            since,
        }
    }
}

/// One target's breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    word: AtomicU64,
}

impl Breaker {
    #[must_use]
    pub fn state(&self) -> CircuitState {
        self.load().state
    }

    /// Whether a request could get a pass now, without taking one (for the balancer).
    #[must_use]
    pub fn available(&self, now_ms: u64, policy: &BreakerPolicy) -> bool {
        let w = self.load();
        match w.state {
            CircuitState::Closed => true,
            CircuitState::Open => open_expired(w, now_ms, policy),
            CircuitState::HalfOpen => w.issued < u64::from(policy.half_open_requests),
        }
    }

    /// Takes a pass: always while closed; a probe when half-open with probes left (an open
    /// circuit whose `open_for` has passed turns half-open here); `None` otherwise.
    pub fn acquire(&self, now_ms: u64, policy: &BreakerPolicy) -> Option<Pass> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = Word::unpack(cur);
            let next = match w.state {
                CircuitState::Closed => return Some(Pass::Closed),
                CircuitState::Open if open_expired(w, now_ms, policy) => Word {
                    issued: 1,
                    ..Word::new(CircuitState::HalfOpen, now_ms)
                },
                CircuitState::Open => return None,
                CircuitState::HalfOpen if w.issued < u64::from(policy.half_open_requests) => Word {
                    issued: w.issued + 1,
                    ..w
                },
                CircuitState::HalfOpen => return None,
            };
            match self.cas(cur, next) {
                Ok(()) => {
                    return Some(Pass::Probe {
                        since: next.since & TIME_MASK,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records the outcome of a request sent with `pass`. `window` holds the target's recent
    /// outcomes, this one included. Returns the new state when this outcome changed it.
    pub fn record(
        &self,
        now_ms: u64,
        policy: &BreakerPolicy,
        pass: Pass,
        ok: bool,
        window: &Window,
    ) -> Option<CircuitState> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = Word::unpack(cur);
            let next = match (w.state, pass) {
                (CircuitState::Closed, Pass::Closed) if !ok => {
                    let t = window.totals(now_ms, policy.slot_ms());
                    let total = t.a + t.b;
                    let tripped = total >= u64::from(policy.min_requests.max(1))
                        && t.b as f64 >= policy.failure_ratio * total as f64;
                    if !tripped {
                        return None;
                    }
                    Word::new(CircuitState::Open, now_ms)
                }
                (CircuitState::HalfOpen, Pass::Probe { since }) if since == w.since => {
                    if !ok {
                        Word::new(CircuitState::Open, now_ms)
                    } else if w.succeeded + 1 >= u64::from(policy.half_open_requests) {
                        Word::new(CircuitState::Closed, now_ms)
                    } else {
                        Word {
                            succeeded: w.succeeded + 1,
                            ..w
                        }
                    }
                }
                // Successes while closed change nothing; outcomes of requests sent before
                // the circuit last changed are stale.
                _ => return None,
            };
            match self.cas(cur, next) {
                Ok(()) if next.state != w.state => {
                    if next.state == CircuitState::Closed {
                        // A closed circuit judges the target afresh.
                        window.clear();
                    }
                    return Some(next.state);
                }
                Ok(()) => return None,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back a probe whose request ended without an outcome (the client went away), so
    /// a half-open circuit cannot be left waiting for answers that will never come.
    pub fn cancel(&self, pass: Pass) {
        let Pass::Probe { since } = pass else { return };
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = Word::unpack(cur);
            if w.state != CircuitState::HalfOpen || w.since != since || w.issued == 0 {
                return;
            }
            match self.cas(
                cur,
                Word {
                    issued: w.issued - 1,
                    ..w
                },
            ) {
                Ok(()) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    fn load(&self) -> Word {
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    fn cas(&self, cur: u64, next: Word) -> Result<(), u64> {
        self.word
            .compare_exchange(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
    }
}

fn open_expired(w: Word, now_ms: u64, policy: &BreakerPolicy) -> bool {
    (now_ms & TIME_MASK).wrapping_sub(w.since) & TIME_MASK >= millis(policy.open_for)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
