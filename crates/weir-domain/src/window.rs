//! Two counts over a rolling time window, lock-free: what the circuit breaker (successes and
//! failures of a target) and the retry budget (requests and retries of an upstream) decide by.
//!
//! The window is [`BUCKETS`] equal slots. Each bucket is one `AtomicU64` holding its slot
//! number and both counts, so recording is a single compare-and-swap that also clears a
//! bucket left over from an older slot: no reset timer, no lock, no torn reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per window: the window slides in steps of a tenth.
pub const BUCKETS: usize = 10;

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const SLOT_BITS: u32 = 64 - 2 * COUNT_BITS;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// Counts `a` and `b` (each saturating at about a million per bucket) over the last
/// [`BUCKETS`] slots.
#[derive(Debug, Default)]
pub struct Window {
    buckets: [AtomicU64; BUCKETS],
}

/// The window's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub a: u64,
    pub b: u64,
}

impl Window {
    /// Adds `a` and `b` at `now_ms`, in slots of `slot_ms` (the window length / [`BUCKETS`]).
    pub fn add(&self, now_ms: u64, slot_ms: u64, a: u64, b: u64) {
        let slot = slot_of(now_ms, slot_ms);
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let mut cur = bucket.load(Ordering::Relaxed);
        loop {
            let (s, ca, cb) = unpack(cur);
            let (ca, cb) = if s == slot { (ca, cb) } else { (0, 0) };
            let next = pack(slot, (ca + a).min(COUNT_MAX), (cb + b).min(COUNT_MAX));
            match bucket.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Sums the buckets that belong to the window ending at `now_ms`.
    #[must_use]
    pub fn totals(&self, now_ms: u64, slot_ms: u64) -> Totals {
        let slot = slot_of(now_ms, slot_ms);
        let mut t = Totals::default();
        for bucket in &self.buckets {
            let (s, a, b) = unpack(bucket.load(Ordering::Relaxed));
            // Slot numbers wrap; a bucket counts when its slot is one of the last BUCKETS.
            if slot.wrapping_sub(s) & SLOT_MASK < BUCKETS as u64 {
                t.a += a;
                t.b += b;
            }
        }
        t
    }

    /// Forgets everything (a closing circuit starts a fresh window).
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(pack(SLOT_MASK, 0, 0), Ordering::Relaxed);
        }
    }
}

fn slot_of(now_ms: u64, slot_ms: u64) -> u64 {
    (now_ms / slot_ms.max(1)) & SLOT_MASK
}

const fn pack(slot: u64, a: u64, b: u64) -> u64 {
    (slot << (2 * COUNT_BITS)) | (a << COUNT_BITS) | b
}

const fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v >> (2 * COUNT_BITS),
        (v >> COUNT_BITS) & COUNT_MAX,
        v & COUNT_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::default();
        // 1 s window in 100 ms slots.
        w.add(5, 100, 1, 0);
        w.add(150, 100, 0, 2);
        assert_eq!(w.totals(150, 100), Totals { a: 1, b: 2 });
        // At 1,050 ms the slot of 5 ms (slot 0) has left; slot 1 (150 ms) is still in.
        assert_eq!(w.totals(1_050, 100), Totals { a: 0, b: 2 });
        assert_eq!(w.totals(1_150, 100), Totals::default());
        // A bucket reused by a later slot starts from zero.
        w.add(1_010, 100, 3, 0);
        assert_eq!(w.totals(1_010, 100), Totals { a: 3, b: 2 });
    }

    #[test]
    fn counts_saturate_instead_of_spilling() {
        let w = Window::default();
        w.add(0, 100, COUNT_MAX, 0);
        w.add(0, 100, 5, 1);
        assert_eq!(w.totals(0, 100), Totals { a: COUNT_MAX, b: 1 });
    }

    #[test]
    fn clear_forgets() {
        let w = Window::default();
        w.add(0, 100, 4, 4);
        w.clear();
        assert_eq!(w.totals(0, 100), Totals::default());
    }
}
