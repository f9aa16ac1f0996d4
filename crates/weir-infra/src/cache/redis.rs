//! The Redis store: one value per key (`weir:cache:` + the key), written with `SET ... PX`
//! so Redis forgets it when the entry's last stale window ends, read with one `GET`.
//!
//! Every call is bounded by the settings' timeout; a down, slow or failing Redis is
//! [`RedisDown`] at once (the request bypasses the cache), logged once per change of state.
//! The connection is `crate::redis_conn`'s: shared by every worker, remade by itself.
//!
//! Purging walks the keyspace with `SCAN MATCH weir:cache:*` (on a cluster, on every
//! primary in turn, since keys carry no hash tag and spread over all slots), asks the
//! caller about each key, and `UNLINK`s the chosen ones in batches.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisError, Value};

use super::codec;
use super::{RedisDown, ResponseParts, StoredResponse};
use crate::redis_conn::{Conn, RedisConn, RedisSettings};

/// Every key of the store starts with this.
pub const KEY_PREFIX: &str = "weir:cache:";

/// Largest value stored: a bigger one would hold the shared connection (and every other
/// request's lookup behind it) for too long. A put above it is skipped.
pub const MAX_VALUE: usize = 8 * 1024 * 1024;

/// Keys asked for per `SCAN` step, and unlinked per `UNLINK`.
const BATCH: usize = 500;

/// Responses kept in Redis, shared by every weir using it; see the module docs.
pub struct RedisStore {
    redis: RedisConn,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.redis.is_cluster())
            .field("timeout", &self.redis.timeout())
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// No I/O: connects on first use. Errs on settings the client refuses (see
    /// `RedisLimiter::new`, which takes the same ones).
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        Ok(Self {
            redis: RedisConn::new(settings)?,
        })
    }

    /// Whether the last call reached Redis (true before the first one).
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.redis.is_healthy()
    }

    /// The response stored under `key`; `None` when there is none or the value is not one
    /// this version wrote.
    pub async fn get(&self, key: &str) -> Result<Option<StoredResponse>, RedisDown> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(redis_key(key));
        let value: Option<Vec<u8>> = self
            .bounded(self.query(&cmd))
            .await
            .map_err(|_| RedisDown)?;
        Ok(value.and_then(|v| {
            codec::decode(Bytes::from(v))
                .inspect_err(|_| tracing::debug!("cache redis: unreadable value, a miss"))
                .ok()
        }))
    }

    /// Stores `response` under `key` until `expires_at` (Unix ms; `now` is the caller's
    /// clock), replacing what was there. A value over [`MAX_VALUE`] is not stored (`Ok`).
    pub async fn put(
        &self,
        key: &str,
        response: &ResponseParts<'_>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), RedisDown> {
        if response.body.len() > MAX_VALUE {
            return Ok(());
        }
        let value = codec::encode(response);
        if value.len() > MAX_VALUE {
            return Ok(());
        }
        // Never 0: `PX 0` is an error, and an entry already expired still lives a moment.
        let ttl = expires_at.saturating_sub(now).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key)).arg(value).arg("PX").arg(ttl);
        self.bounded(self.query::<()>(&cmd))
            .await
            .map_err(|_| RedisDown)
    }

    /// Removes every entry whose key (without the prefix) `matches`; how many went, or
    /// why it could not finish (some may have gone by then).
    pub async fn purge(&self, matches: impl Fn(&str) -> bool + Sync) -> Result<u64, String> {
        let conn = self.bounded(self.redis.connection()).await?;
        let nodes = match &*conn {
            Conn::Single(_) => vec![None],
            Conn::Cluster(_) => self.primaries(&conn).await?.into_iter().map(Some).collect(),
        };
        let mut purged = 0;
        for node in nodes {
            purged += self.purge_node(&conn, node.as_ref(), &matches).await?;
        }
        Ok(purged)
    }

    /// `purge` on one server (a cluster's primary at `node`).
    async fn purge_node(
        &self,
        conn: &Arc<Conn>,
        node: Option<&(String, u16)>,
        matches: &(impl Fn(&str) -> bool + Sync),
    ) -> Result<u64, String> {
        let pattern = format!("{KEY_PREFIX}*");
        let mut cursor = 0u64;
        let mut purged = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH);
            let (next, keys): (u64, Vec<Vec<u8>>) =
                self.bounded(self.query_on(conn, &scan, node)).await?;
            let chosen: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| {
                    std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| k.strip_prefix(KEY_PREFIX))
                        .is_some_and(matches)
                })
                .collect();
            for batch in chosen.chunks(BATCH) {
                purged += self.bounded(self.unlink(conn, batch)).await?;
            }
            if next == 0 {
                return Ok(purged);
            }
            cursor = next;
        }
    }

    /// `UNLINK`s `keys`: one command on a single server; on a cluster one per key, sent
    /// together, since the keys lie in different slots.
    async fn unlink(&self, conn: &Arc<Conn>, keys: &[Vec<u8>]) -> Result<u64, String> {
        match &**conn {
            Conn::Single(_) => {
                let mut cmd = redis::cmd("UNLINK");
                cmd.arg(keys);
                self.query_on(conn, &cmd, None).await
            }
            Conn::Cluster(_) => {
                let each = keys.iter().map(|k| async move {
                    let mut cmd = redis::cmd("UNLINK");
                    cmd.arg(k);
                    self.query_on::<u64>(conn, &cmd, None).await
                });
                Ok(try_join_all(each).await?.into_iter().sum())
            }
        }
    }

    /// The cluster's primaries as (host, port), from `CLUSTER NODES`.
    async fn primaries(&self, conn: &Arc<Conn>) -> Result<Vec<(String, u16)>, String> {
        let text: String = self
            .bounded(self.query_on(conn, redis::cmd("CLUSTER").arg("NODES"), None))
            .await?;
        let nodes = primaries_of(&text);
        if nodes.is_empty() {
            return Err("redis: CLUSTER NODES lists no primary".to_owned());
        }
        Ok(nodes)
    }

    /// `cmd` on the shared connection, routed by its key on a cluster.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, String> {
        let conn = self.redis.connection().await?;
        self.query_on(&conn, cmd, None).await
    }

    /// `cmd` on `conn`; on a cluster, to the primary at `node` when given.
    async fn query_on<T: FromRedisValue>(
        &self,
        conn: &Arc<Conn>,
        cmd: &Cmd,
        node: Option<&(String, u16)>,
    ) -> Result<T, String> {
        let result = match ((**conn).clone(), node) {
            (Conn::Single(mut c), _) => cmd.query_async(&mut c).await,
            (Conn::Cluster(mut c), Some((host, port))) => c
                .route_command(
                    cmd.clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    }),
                )
                .await
                .and_then(parse),
            (Conn::Cluster(mut c), None) => cmd.query_async(&mut c).await,
        };
        result.map_err(|e| self.redis.failed(conn, &e))
    }

    /// Runs one call within the timeout, and notes (and logs, on a change) its outcome.
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        let result = match tokio::time::timeout(self.redis.timeout(), call).await {
            Ok(r) => r,
            Err(_) => Err(self.redis.timed_out()),
        };
        if self.redis.set_healthy(result.is_ok()) {
            match &result {
                Ok(_) => tracing::info!("cache redis reachable again"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cache redis unreachable; routes with store: redis bypass the cache"
                ),
            }
        }
        result
    }
}

/// A routed command's reply as `T`.
fn parse<T: FromRedisValue>(v: Value) -> Result<T, RedisError> {
    Ok(redis::from_redis_value(v.extract_error()?)?)
}

/// The store's Redis key for a cache key.
fn redis_key(key: &str) -> String {
    let mut k = String::with_capacity(KEY_PREFIX.len() + key.len());
    k.push_str(KEY_PREFIX);
    k.push_str(key);
    k
}

/// The primaries in `CLUSTER NODES` output that are up and have an address. A line is
/// `<id> <ip:port@cport[,hostname]> <flags> ...`.
pub(crate) fn primaries_of(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let is = |f: &str| flags.split(',').any(|x| x == f);
            if !is("master") || is("fail") || is("noaddr") || is("handshake") {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}
