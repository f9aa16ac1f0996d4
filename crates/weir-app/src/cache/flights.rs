//! Coalescing concurrent misses: while one request (the leader) fetches a key from the
//! upstream, every other request for that key waits for its result instead of going to the
//! upstream too. N concurrent misses make one upstream request.
//!
//! A follower waits at most its own deadline; if the leader's response could not be stored
//! (too large, `no-store`, an error), each follower then goes to the upstream itself. The
//! table of flights is only touched on a miss, which costs an upstream round trip anyway;
//! hits never see it. It is sharded so that misses for different keys rarely meet.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{CacheKey, Entry};

const SHARDS: usize = 16;

/// What a finished flight left: the stored entry, or `None` when nothing was stored.
type Outcome = Option<Option<Arc<Entry>>>;

type Table = HashMap<String, watch::Sender<Outcome>>;

/// The flights in progress of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Flights {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: [Mutex<Table>; SHARDS],
    hasher: std::hash::RandomState,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: std::hash::RandomState::new(),
        }
    }
}

/// Joining a key's flight.
#[derive(Debug)]
pub enum Join {
    /// No flight for the key: this request fetches, and must [`Lead::finish`].
    Lead(Lead),
    /// Another request is fetching: wait for it.
    Follow(Follow),
}

/// The request that fetches a key for everyone. Dropping it without finishing (the request
/// failed or was cancelled) releases the followers with nothing.
#[derive(Debug)]
pub struct Lead {
    inner: Arc<Inner>,
    key: String,
    shard: usize,
    done: bool,
}

/// A request waiting for a leader.
#[derive(Debug)]
pub struct Follow {
    rx: watch::Receiver<Outcome>,
}

impl Flights {
    /// Joins `key`'s flight, or starts it.
    #[must_use]
    pub fn join(&self, key: &CacheKey) -> Join {
        let shard = self.inner.shard(key.as_str());
        let mut table = self.inner.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match table.entry(key.as_str().to_owned()) {
            Slot::Occupied(o) => Join::Follow(Follow {
                rx: o.get().subscribe(),
            }),
            Slot::Vacant(v) => {
                let key = v.key().clone();
                v.insert(watch::Sender::new(None));
                Join::Lead(Lead {
                    inner: Arc::clone(&self.inner),
                    key,
                    shard,
                    done: false,
                })
            }
        }
    }

    /// Flights in progress.
    #[cfg(test)]
    fn in_progress(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

impl Inner {
    fn shard(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn end(&self, key: &str, shard: usize, outcome: Option<Arc<Entry>>) {
        let sender = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let Some(tx) = sender {
            tx.send_replace(Some(outcome));
        }
    }
}

impl Lead {
    /// Ends the flight: `entry` is what was stored (`None`: nothing), given to every
    /// follower.
    pub fn finish(mut self, entry: Option<Arc<Entry>>) {
        self.done = true;
        self.inner.end(&self.key, self.shard, entry);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.done {
            self.inner.end(&self.key, self.shard, None);
        }
    }
}

impl Follow {
    /// The leader's entry, or `None` when it stored nothing, failed, or took longer than
    /// `limit`.
    pub async fn wait(mut self, limit: Duration) -> Option<Arc<Entry>> {
        match tokio::time::timeout(limit, self.rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().flatten(),
            // The sender is gone without a result (cannot happen: `end` sends first), or
            // the leader is too slow.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;

    fn key(path: &str) -> CacheKey {
        CacheKey::new("r", "h", path, None, &[], &HeaderMap::new(), None)
    }

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
            stored_at: 1,
            initial_age: 0,
            fresh_for: 1_000,
            stale_while_revalidate: 0,
            stale_if_error: 0,
        })
    }

    #[tokio::test]
    async fn one_leader_and_its_followers_get_its_entry() {
        let f = Flights::default();
        let Join::Lead(lead) = f.join(&key("/a")) else {
            panic!("first is the leader")
        };
        let followers: Vec<_> = (0..5)
            .map(|_| match f.join(&key("/a")) {
                Join::Follow(w) => tokio::spawn(w.wait(Duration::from_secs(5))),
                Join::Lead(_) => panic!("one leader only"),
            })
            .collect();
        assert!(matches!(f.join(&key("/b")), Join::Lead(_)), "another key");
        assert_eq!(f.in_progress(), 1, "/b's lead was dropped at once");
        lead.finish(Some(entry()));
        for w in followers {
            assert_eq!(w.await.unwrap().unwrap().body, "x");
        }
        assert_eq!(f.in_progress(), 0);
        assert!(
            matches!(f.join(&key("/a")), Join::Lead(_)),
            "a new flight after"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_with_nothing() {
        let f = Flights::default();
        let lead = f.join(&key("/a"));
        let Join::Follow(w) = f.join(&key("/a")) else {
            panic!("follower")
        };
        drop(lead);
        assert!(w.wait(Duration::from_secs(5)).await.is_none());
        let _lead = f.join(&key("/a"));
        let Join::Follow(w) = f.join(&key("/a")) else {
            panic!("follower")
        };
        assert!(
            w.wait(Duration::from_millis(10)).await.is_none(),
            "a slow leader"
        );
    }
}
