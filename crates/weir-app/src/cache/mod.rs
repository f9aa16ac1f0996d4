//! Response caching on routes with `cache`: the key a request is stored under, the entry
//! kept for it, the port the stores implement, the HTTP rules that decide what may be
//! stored ([`policy`]) and the coalescing of concurrent misses ([`flights`]).
//!
//! Times in an entry are wall-clock milliseconds since the Unix epoch, not the process
//! clock: a Redis store shares entries between processes (and machines), and the `Age` a
//! client is told must mean the same everywhere.

pub mod flights;
pub mod key;
pub mod policy;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use weir_domain::cache::CacheStore;

pub use key::CacheKey;

/// One stored response.
#[derive(Clone, Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// The response headers as stored: hop-by-hop headers, `Age` and weir's own out.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored (Unix ms).
    pub stored_at: u64,
    /// Its age when it was stored (the upstream's `Age`), in seconds.
    pub initial_age: u64,
    /// How long after `stored_at` it is fresh (ms).
    pub fresh_for: u64,
    /// How long after freshness it may be served while being refreshed (ms).
    pub stale_while_revalidate: u64,
    /// How long after freshness it may be served when the upstream fails (ms).
    pub stale_if_error: u64,
}

impl Entry {
    /// The `Age` to send at `now` (Unix ms), in seconds.
    #[must_use]
    pub const fn age(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.stored_at) / 1000
    }

    /// How far past its freshness it is at `now` (ms); `None` while fresh.
    #[must_use]
    pub const fn stale_by(&self, now: u64) -> Option<u64> {
        let fresh_until = self.stored_at.saturating_add(self.fresh_for);
        if now < fresh_until {
            None
        } else {
            Some(now - fresh_until)
        }
    }

    /// When a store may forget it (Unix ms): past freshness and both stale windows.
    #[must_use]
    pub fn expires_at(&self) -> u64 {
        self.stored_at
            .saturating_add(self.fresh_for)
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }

    /// Roughly what it costs to keep in memory (bytes), for the memory store's bound.
    #[must_use]
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers + 128) as u64
    }
}

/// The store could not be asked (Redis down or too slow): the request goes to the upstream
/// as if the route had no cache (`X-Cache: BYPASS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreDown;

/// The port the stores implement (memory and Redis, in the infrastructure layer).
pub trait ResponseCache: Send + Sync + 'static {
    /// The entry stored under `key` in `store`, expired ones included (the caller decides
    /// what a stale entry is still good for); `None` when there is none.
    fn get<'a>(
        &'a self,
        store: CacheStore,
        key: &'a CacheKey,
    ) -> impl Future<Output = Result<Option<Arc<Entry>>, StoreDown>> + Send + 'a;

    /// Stores `entry` under `key`, replacing what was there, until [`Entry::expires_at`].
    fn put<'a>(
        &'a self,
        store: CacheStore,
        key: &'a CacheKey,
        entry: Arc<Entry>,
    ) -> impl Future<Output = Result<(), StoreDown>> + Send + 'a;
}

impl<T: ResponseCache> ResponseCache for Arc<T> {
    fn get<'a>(
        &'a self,
        store: CacheStore,
        key: &'a CacheKey,
    ) -> impl Future<Output = Result<Option<Arc<Entry>>, StoreDown>> + Send + 'a {
        (**self).get(store, key)
    }

    fn put<'a>(
        &'a self,
        store: CacheStore,
        key: &'a CacheKey,
        entry: Arc<Entry>,
    ) -> impl Future<Output = Result<(), StoreDown>> + Send + 'a {
        (**self).put(store, key, entry)
    }
}

/// The wall clock in Unix milliseconds.
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `d` in whole milliseconds (saturating).
#[must_use]
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"hello"),
            stored_at: 10_000,
            initial_age: 3,
            fresh_for: 5_000,
            stale_while_revalidate: 1_000,
            stale_if_error: 60_000,
        }
    }

    #[test]
    fn age_and_staleness() {
        let e = entry();
        assert_eq!(e.age(10_000), 3);
        assert_eq!(e.age(12_999), 5);
        assert_eq!(e.stale_by(14_999), None);
        assert_eq!(e.stale_by(15_000), Some(0));
        assert_eq!(e.stale_by(16_500), Some(1_500));
        assert_eq!(e.expires_at(), 75_000);
        assert!(e.weight() > 5);
    }
}
