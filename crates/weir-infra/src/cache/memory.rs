//! The in-process store: a quick_cache `Cache` (sharded, CLOCK-Pro eviction) bounded by the
//! total weight of its entries, where an entry weighs what the caller says it costs plus its
//! key. A lookup is one shard read lock inside quick_cache and a clone of the value (an
//! `Arc`'s count for the pipeline's entries); nothing of our own is locked or allocated.

use std::cell::Cell;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Average weight assumed when sizing quick_cache's tables: a small JSON answer with its
/// headers. Only an estimate; quick_cache bounds by weight, not count.
const TYPICAL_ENTRY: u64 = 4 * 1024;

/// Responses kept in this process, bounded in bytes. `V` is what the caller stores (the
/// pipeline's `Arc<Entry>`): it must be cheap to clone.
pub struct MemoryStore<V> {
    cache: Cache<Box<str>, Slot<V>, ByWeight>,
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    /// Unix ms after which the entry is of no use and is dropped on sight.
    expires_at: u64,
    weight: u64,
}

#[derive(Clone, Copy)]
struct ByWeight;

impl<V> Weighter<Box<str>, Slot<V>> for ByWeight {
    fn weight(&self, key: &Box<str>, slot: &Slot<V>) -> u64 {
        // Never 0: quick_cache never evicts an entry of weight 0.
        slot.weight.saturating_add(key.len() as u64).max(1)
    }
}

impl<V: Clone> std::fmt::Debug for MemoryStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("capacity", &self.cache.capacity())
            .finish()
    }
}

impl<V: Clone> MemoryStore<V> {
    /// A store holding at most `max_bytes` of entries (by their stated weight). An entry
    /// larger than about one shard's share of that is not kept at all.
    #[must_use]
    pub fn new(max_bytes: u64) -> Self {
        let items = usize::try_from(max_bytes / TYPICAL_ENTRY)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 20);
        Self {
            cache: Cache::with_weighter(items, max_bytes, ByWeight),
        }
    }

    /// The value stored under `key`, unless it expired by `now` (Unix ms): an expired one is
    /// removed and reported absent.
    pub fn get(&self, key: &str, now: u64) -> Option<V> {
        let slot = self.cache.get(key)?;
        if now < slot.expires_at {
            return Some(slot.value);
        }
        // Only if it is still the expired one: a fresh put may have raced this lookup.
        self.cache.remove_if(key, |s| now >= s.expires_at);
        None
    }

    /// Stores `value` under `key` until `expires_at` (Unix ms), weighing `weight` bytes,
    /// replacing what was there. Storing may evict others to stay within the bound.
    pub fn put(&self, key: &str, value: V, expires_at: u64, weight: u64) {
        self.cache.insert(
            key.into(),
            Slot {
                value,
                expires_at,
                weight,
            },
        );
    }

    /// Removes every entry whose key `matches`; how many went.
    pub fn purge(&self, matches: impl Fn(&str) -> bool) -> u64 {
        let removed = Cell::new(0u64);
        self.cache.retain(|key, _| {
            let purge = matches(key);
            if purge {
                removed.set(removed.get() + 1);
            }
            !purge
        });
        removed.get()
    }

    /// How many entries it holds now.
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.cache.len() as u64
    }

    /// The total weight (bytes) of the entries it holds now.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// The bound on [`Self::bytes`].
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}
