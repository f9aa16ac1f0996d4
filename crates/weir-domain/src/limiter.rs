//! The in-process store of rate-limit state: one fixed table of atomics per policy.
//!
//! Each slot holds a key (a 64-bit keyed hash, never 0) and its GCRA TAT. A decision probes
//! a few neighbouring slots for the key; a slot whose TAT has passed holds no information
//! (see `ratelimit`), so any such slot may be taken by a new key at once. That is the whole
//! eviction policy: no timers, no sweeps, and memory fixed at load. When a new key finds no
//! free slot, it shares one overflow bucket with every other key that found none, so a flood
//! of distinct keys is limited together instead of growing the table or going unlimited.
//! Everything is lock-free: a load, and a compare-and-swap on the TAT.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ratelimit::{Decision, Rate};

/// Slots probed for a key before it goes to the overflow bucket.
const PROBES: usize = 8;

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    tat: AtomicU64,
}

/// Where an admitted request was recorded, so a later refusal can give it back.
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    slot: Option<usize>,
}

/// One policy's state: `capacity` slots of 16 bytes, plus the overflow bucket.
#[derive(Debug)]
pub struct LimitTable {
    slots: Box<[Slot]>,
    mask: usize,
    overflow: AtomicU64,
    hasher: std::hash::RandomState,
}

impl LimitTable {
    /// `capacity` is rounded up to a power of two (at least `PROBES`).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let n = capacity.max(PROBES).next_power_of_two();
        Self {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            overflow: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The table's key for some bytes: a hash keyed per table, so nobody can choose keys
    /// that crowd one neighbourhood of slots.
    #[must_use]
    pub fn key(&self, tag: u8, bytes: &[u8]) -> u64 {
        self.hasher.hash_one((tag, bytes)).max(1)
    }

    /// Decides one request for `key` at `now` (nanoseconds, > 0) and records it when
    /// allowed. The returned flag is true when the key went to the overflow bucket.
    pub fn acquire(&self, key: u64, rate: &Rate, now: u64) -> (Decision, Taken, bool) {
        let slot = self.find(key, now);
        let tat = slot.map_or(&self.overflow, |i| &self.slots[i].tat);
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let decision = rate.decide(current, now);
            if !decision.allowed {
                return (decision, Taken { slot }, slot.is_none());
            }
            match tat.compare_exchange_weak(
                current,
                decision.new_tat,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (decision, Taken { slot }, slot.is_none()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back an admitted request (another policy refused it), so a refused request
    /// consumes nothing.
    pub fn release(&self, taken: Taken, rate: &Rate) {
        let tat = taken.slot.map_or(&self.overflow, |i| &self.slots[i].tat);
        let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t.saturating_sub(rate.interval))
        });
    }

    /// The key's slot, claiming a free one for a new key; `None` means the overflow bucket.
    fn find(&self, key: u64, now: u64) -> Option<usize> {
        // Two rounds: a claim can lose a race with another thread taking the same slot.
        for _ in 0..2 {
            let start = usize::try_from(key).unwrap_or(usize::MAX) & self.mask;
            let mut free = None;
            for i in 0..PROBES {
                let at = (start + i) & self.mask;
                let slot = &self.slots[at];
                let k = slot.key.load(Ordering::Acquire);
                if k == key {
                    return Some(at);
                }
                if free.is_none() && (k == 0 || slot.tat.load(Ordering::Acquire) <= now) {
                    free = Some((at, k));
                }
            }
            let (at, old) = free?;
            // The slot's TAT is in the past (or 0), which is exactly a new key's state, so
            // taking it over needs no reset.
            if self.slots[at]
                .key
                .compare_exchange(old, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(at);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn keys_are_limited_separately() {
        let t = LimitTable::new(64);
        let rate = Rate::new(2, Duration::from_secs(60), 2);
        let (a, b) = (t.key(0, b"a"), t.key(0, b"b"));
        let now = 10 * SEC;
        assert!(t.acquire(a, &rate, now).0.allowed);
        assert!(t.acquire(a, &rate, now).0.allowed);
        assert!(!t.acquire(a, &rate, now).0.allowed);
        assert!(t.acquire(b, &rate, now).0.allowed);
    }

    #[test]
    fn a_refused_request_gives_back_what_others_took() {
        let t = LimitTable::new(16);
        let rate = Rate::new(5, Duration::from_secs(60), 5);
        let k = t.key(0, b"k");
        let (d, taken, _) = t.acquire(k, &rate, SEC);
        assert_eq!(d.remaining, 4);
        t.release(taken, &rate);
        assert_eq!(t.acquire(k, &rate, SEC).0.remaining, 4);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_in_the_table_and_is_limited_together() {
        let t = LimitTable::new(16);
        let rate = Rate::new(1, Duration::from_secs(60), 1);
        let now = SEC;
        let mut admitted = 0;
        let mut overflowed = 0;
        for i in 0..1_000_000u32 {
            let (d, _, over) = t.acquire(t.key(0, &i.to_le_bytes()), &rate, now);
            admitted += usize::from(d.allowed);
            overflowed += usize::from(over);
        }
        assert_eq!(t.capacity(), 16);
        assert!((16..=17).contains(&admitted), "{admitted}");
        assert!(overflowed >= 1_000_000 - 16);
    }

    #[test]
    fn idle_slots_are_taken_over() {
        let t = LimitTable::new(16);
        let rate = Rate::new(1, Duration::from_secs(1), 1);
        let full = (0..1_000u32)
            .filter(|i| !t.acquire(t.key(0, &i.to_le_bytes()), &rate, SEC).2)
            .count();
        assert_eq!(full, 16, "every slot taken");
        // Two seconds later every slot is idle again: new keys get slots, not the overflow.
        for i in 2_000..2_008u32 {
            let (d, _, over) = t.acquire(t.key(0, &i.to_le_bytes()), &rate, 3 * SEC);
            assert!(d.allowed && !over);
        }
    }
}
