//! The response cache's two stores: [`MemoryStore`] in this process, bounded in bytes, and
//! [`RedisStore`], shared by every weir using one Redis. [`CacheStores`] holds both, one per
//! process, and purges them together.
//!
//! This crate does not know the application layer, so it does not implement the pipeline's
//! `ResponseCache` port itself: the composition root does, in a few lines of glue, the way
//! it does for the rate limiter. For that the stores speak plain values: the memory store
//! keeps whatever cheap-to-clone value it is given (the pipeline's `Arc<Entry>`, so a hit
//! copies nothing), with its expiry and weight passed alongside; the Redis store encodes a
//! [`ResponseParts`] (borrowed) and gives back a [`StoredResponse`] (owned, the body a slice
//! of the value read). Keys are the cache key's text; which keys a purge removes is asked of
//! the caller, who knows how to read a key (`CacheKey::parse`).

mod codec;
mod memory;
mod redis;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

pub use self::memory::MemoryStore;
pub use self::redis::{KEY_PREFIX, MAX_VALUE, RedisStore};
pub use crate::redis_conn::RedisSettings;

/// An entry's times, all as the pipeline's `Entry` has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    /// When it was stored (Unix ms).
    pub stored_at: u64,
    /// Its age when it was stored, in seconds.
    pub initial_age: u64,
    /// How long after `stored_at` it is fresh (ms).
    pub fresh_for: u64,
    /// How long after freshness it may be served while being refreshed (ms).
    pub stale_while_revalidate: u64,
    /// How long after freshness it may be served when the upstream fails (ms).
    pub stale_if_error: u64,
}

/// A response to store in Redis, borrowed from the entry being stored.
#[derive(Clone, Copy, Debug)]
pub struct ResponseParts<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub times: Times,
}

/// A response read back from Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub times: Times,
}

/// Redis could not be asked (down, too slow, or failing): the caller bypasses the cache.
/// The reason was logged when Redis went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisDown;

/// What an admin purge removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// Every entry of the route with this name.
    Route(String),
    /// Every entry whose normalized path (without the query) starts with this.
    Prefix(String),
}

impl Purge {
    /// Whether an entry of `route` for `path` goes.
    #[must_use]
    pub fn matches(&self, route: &str, path: &str) -> bool {
        match self {
            Self::Route(name) => route == name,
            // At a segment boundary, as route prefixes match: `/b/1` is `/b/1` and what is
            // under it, not `/b/12`.
            Self::Prefix(prefix) => path.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/')
            }),
        }
    }
}

/// How many entries a purge removed, per store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purged {
    pub memory: u64,
    /// `None` without a Redis; `Err` with the reason when Redis could not be purged (some
    /// entries may have gone before it failed).
    pub redis: Option<Result<u64, String>>,
}

/// Both stores of one process. `V` is what the memory store keeps (the pipeline's
/// `Arc<Entry>`).
pub struct CacheStores<V> {
    memory: MemoryStore<V>,
    redis: Option<RedisStore>,
}

impl<V: Clone> std::fmt::Debug for CacheStores<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStores")
            .field("memory", &self.memory)
            .field("redis", &self.redis)
            .finish()
    }
}

impl<V: Clone> CacheStores<V> {
    /// A memory store of at most `memory_bytes`, and a Redis store when `redis` is given
    /// (the top-level `redis`, as for rate limits). No I/O; errs only on Redis settings the
    /// client refuses.
    pub fn new(memory_bytes: u64, redis: Option<&RedisSettings>) -> Result<Self, String> {
        Ok(Self {
            memory: MemoryStore::new(memory_bytes),
            redis: redis.map(RedisStore::new).transpose()?,
        })
    }

    /// The in-process store.
    #[must_use]
    pub const fn memory(&self) -> &MemoryStore<V> {
        &self.memory
    }

    /// The Redis store, when Redis is configured.
    #[must_use]
    pub const fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// Whether Redis answered the last call: `None` without a Redis.
    #[must_use]
    pub fn redis_healthy(&self) -> Option<bool> {
        self.redis.as_ref().map(RedisStore::is_healthy)
    }

    /// Removes from both stores every entry whose key (the cache key's text) `matches`.
    /// For a [`Purge`], the caller passes
    /// `|k| CacheKey::parse(k).is_some_and(|k| what.matches(k.route(), k.path()))`.
    pub async fn purge(&self, matches: impl Fn(&str) -> bool + Sync) -> Purged {
        let memory = self.memory.purge(&matches);
        let redis = match &self.redis {
            Some(r) => Some(r.purge(&matches).await),
            None => None,
        };
        Purged { memory, redis }
    }
}
