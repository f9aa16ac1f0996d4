//! A route's response cache: what is stored, for how long, and where. The HTTP rules that
//! decide whether one response may be stored are applied by the pipeline; these are the
//! route's settings they work with.

use std::time::Duration;

/// Where a route's responses are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStore {
    /// In this process, bounded by `limits.max_cache_bytes`.
    Memory,
    /// In the top-level `redis`, shared by every weir that uses it.
    Redis,
}

impl CacheStore {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// `routes[].cache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    /// Freshness when the upstream gives none (no `max-age`, `s-maxage` or `Expires`).
    pub ttl: Duration,
    pub store: CacheStore,
    /// Request headers whose values are part of the key, lower case, sorted. A response whose
    /// `Vary` names a header not listed here is not stored.
    pub vary: Vec<String>,
    /// After freshness ends, a stored response is still served this long while one request
    /// refreshes it in the background.
    pub stale_while_revalidate: Duration,
    /// After freshness ends, a stored response is served this long when the upstream fails.
    pub stale_if_error: Duration,
    /// Responses with larger bodies stream through and are not stored.
    pub max_body: u64,
    /// Requests that carry credentials are cached too, keyed by the consumer.
    pub per_consumer: bool,
}

impl CacheSpec {
    /// How long past its freshness a stored response may still be kept: the longer of the
    /// two stale windows.
    #[must_use]
    pub fn keep_stale(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
}
