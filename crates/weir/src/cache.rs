//! The glue between the pipeline's cache port and the stores: `Entry` values in the memory
//! store as they are, and in Redis through the stores' own encoding.

use std::sync::Arc;

use weir_app::cache::{CacheKey, Entry, ResponseCache, StoreDown, unix_ms};
use weir_domain::cache::CacheStore;
use weir_infra::cache::{CacheStores, Purge, Purged, ResponseParts, StoredResponse, Times};

/// The process's cache stores, shared by every configuration generation.
#[derive(Debug)]
pub struct Caches(pub CacheStores<Arc<Entry>>);

impl Caches {
    /// Removes what `what` names from both stores.
    pub async fn purge(&self, what: &Purge) -> Purged {
        self.0
            .purge(|k| CacheKey::parse(k).is_some_and(|k| what.matches(k.route(), k.path())))
            .await
    }
}

impl ResponseCache for Caches {
    async fn get(
        &self,
        store: CacheStore,
        key: &CacheKey,
    ) -> Result<Option<Arc<Entry>>, StoreDown> {
        match store {
            CacheStore::Memory => Ok(self.0.memory().get(key.as_str(), unix_ms())),
            CacheStore::Redis => {
                let redis = self.0.redis().ok_or(StoreDown)?;
                let found = redis.get(key.as_str()).await.map_err(|_| StoreDown)?;
                Ok(found.map(|s| Arc::new(entry(s))))
            }
        }
    }

    async fn put(
        &self,
        store: CacheStore,
        key: &CacheKey,
        entry: Arc<Entry>,
    ) -> Result<(), StoreDown> {
        let expires_at = entry.expires_at();
        match store {
            CacheStore::Memory => {
                let weight = entry.weight();
                self.0.memory().put(key.as_str(), entry, expires_at, weight);
                Ok(())
            }
            CacheStore::Redis => {
                let redis = self.0.redis().ok_or(StoreDown)?;
                let parts = ResponseParts {
                    status: entry.status,
                    headers: &entry.headers,
                    body: &entry.body,
                    times: times(&entry),
                };
                redis
                    .put(key.as_str(), &parts, expires_at, unix_ms())
                    .await
                    .map_err(|_| StoreDown)
            }
        }
    }
}

const fn times(e: &Entry) -> Times {
    Times {
        stored_at: e.stored_at,
        initial_age: e.initial_age,
        fresh_for: e.fresh_for,
        stale_while_revalidate: e.stale_while_revalidate,
        stale_if_error: e.stale_if_error,
    }
}

fn entry(s: StoredResponse) -> Entry {
    Entry {
        status: s.status,
        headers: s.headers,
        body: s.body,
        stored_at: s.times.stored_at,
        initial_age: s.times.initial_age,
        fresh_for: s.times.fresh_for,
        stale_while_revalidate: s.times.stale_while_revalidate,
        stale_if_error: s.times.stale_if_error,
    }
}
