//! Per-worker caches of verified credentials, so a credential seen again costs one SHA-256
//! and a map lookup instead of a password hash, a signature check or an HTTP call.
//!
//! Each worker thread has its own map behind its own mutex: a worker only touches its own
//! map, so the lock is never contended. Keys are SHA-256(salt ‖ credential) with a random
//! salt per cache: the credential itself is never stored, and since nobody outside knows
//! the salt, nobody can choose credentials whose keys pile up in one bucket of the map.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use rustc_hash::FxHashMap;

use crate::client::worker_index;

/// Entries per worker in every auth cache. At 10 000 entries a map holds well under 2 MiB
/// per worker; a gateway that sees more distinct live credentials than that per worker
/// simply verifies some of them again.
pub(crate) const CAPACITY: usize = 10_000;

/// Longest an entry lives, whatever its credential claims, so a far-future `exp` cannot
/// overflow an `Instant`.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// `n` random bytes from the system generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut out = [0; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| "the system random generator failed".to_owned())?;
    Ok(out)
}

struct Entry<V> {
    value: V,
    expires: Instant,
}

type Shard<V> = Mutex<FxHashMap<[u8; 32], Entry<V>>>;

/// A bounded expiring map per worker thread: at most `capacity` entries per worker. When a
/// worker's map is full, expired entries are dropped, and if it is still full it is cleared
/// (a cache, not a store: clearing costs only re-verification).
pub(crate) struct WorkerCache<V> {
    salt: [u8; 16],
    capacity: usize,
    shards: Box<[Shard<V>]>,
}

impl<V> std::fmt::Debug for WorkerCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCache")
            .field("workers", &self.shards.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<V: Clone> WorkerCache<V> {
    pub(crate) fn new(workers: usize, capacity: usize) -> Result<Self, String> {
        Ok(Self {
            salt: random()?,
            capacity,
            shards: (0..workers.max(1))
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
        })
    }

    /// The cache key of `credential`.
    pub(crate) fn key(&self, credential: &[u8]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.salt);
        ctx.update(credential);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The live value under `key` on this worker.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<V> {
        let mut map = self.shard();
        let entry = map.get(key)?;
        if entry.expires > Instant::now() {
            return Some(entry.value.clone());
        }
        map.remove(key);
        None
    }

    /// Stores `value` under `key` on this worker for `ttl` (at most a day).
    pub(crate) fn insert(&self, key: [u8; 32], value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let expires = now + ttl.min(MAX_TTL);
        let mut map = self.shard();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, Entry { value, expires });
    }

    fn shard(&self) -> MutexGuard<'_, FxHashMap<[u8; 32], Entry<V>>> {
        // Nothing panics while holding this lock in a way that would leave the map broken.
        self.shards[worker_index() % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shard().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_salted_per_cache() {
        let a = WorkerCache::<u8>::new(1, 4).unwrap();
        let b = WorkerCache::<u8>::new(1, 4).unwrap();
        assert_eq!(a.key(b"token"), a.key(b"token"));
        assert_ne!(a.key(b"token"), b.key(b"token"));
        assert_ne!(a.key(b"token"), sha256(b"token"));
    }

    #[test]
    fn expired_entries_are_misses_and_a_full_map_makes_room() {
        let c = WorkerCache::new(1, 3).unwrap();
        c.insert(c.key(b"a"), 1, Duration::from_secs(60));
        assert_eq!(c.get(&c.key(b"a")), Some(1));
        c.insert(c.key(b"gone"), 2, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.get(&c.key(b"gone")), None);
        c.insert(c.key(b"x"), 5, Duration::from_nanos(1));
        c.insert(c.key(b"b"), 3, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
        // Full: the expired entry goes, the live ones stay.
        c.insert(c.key(b"d"), 6, Duration::from_secs(60));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&c.key(b"a")), Some(1));
        // Full of live entries: cleared.
        c.insert(c.key(b"e"), 7, Duration::from_secs(60));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&c.key(b"e")), Some(7));
    }

    #[test]
    fn zero_ttl_is_not_stored_and_huge_ttl_does_not_overflow() {
        let c = WorkerCache::new(1, 3).unwrap();
        c.insert(c.key(b"a"), 1, Duration::ZERO);
        assert_eq!(c.len(), 0);
        c.insert(c.key(b"b"), 2, Duration::MAX);
        assert_eq!(c.get(&c.key(b"b")), Some(2));
    }
}
