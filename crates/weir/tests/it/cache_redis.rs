//! Response caching with `store: redis` (docs/configuration.md, "Response caching"), on a
//! real `redis-server`: gateways sharing one Redis share entries and purges; when Redis is
//! down requests bypass the cache and still succeed, and caching resumes when it is back,
//! without a restart.
//!
//! Each test starts its own `redis-server` on a free port (`crate::common::redis`) and weir
//! gateways in this process with the same config: each has its own memory store and its own
//! flights, so they model several weir processes sharing one Redis. Without `redis-server`
//! the tests are skipped loudly, or fail under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::cache::{Origin, assert_cache, gauge, get, origin_n, purge, x_cache};
use crate::common::redis::RedisServer;
use crate::common::{DEADLINE, Gateway, check_problem_body, eventually, start};

/// `redis` on `redis` with `timeout`, one upstream on `origin`, a route `shared`
/// (`/shared`, `store: redis`) and a route `local` (`/local`, `store: memory`).
fn redis_config(redis: &RedisServer, timeout: &str, origin: &Origin) -> String {
    format!(
        "redis: {{ url: \"{redis}\", timeout: {timeout} }}\n\
         upstreams:\n  be:\n    targets: [{{ url: \"{url}\" }}]\n\
         routes:\n\
         \x20 - name: shared\n\
         \x20   match: {{ prefix: /shared }}\n\
         \x20   upstream: be\n\
         \x20   cache: {{ ttl: 30s, store: redis, stale_while_revalidate: 10s }}\n\
         \x20 - name: local\n\
         \x20   match: {{ prefix: /local }}\n\
         \x20   upstream: be\n\
         \x20   cache: {{ ttl: 30s }}\n",
        redis = redis.url(),
        url = origin.url()
    )
}

/// Runs `f` (which blocks: starting or killing `redis-server`) without stalling the
/// runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn cache_keys(redis: &RedisServer) -> Vec<String> {
    redis.keys("weir:cache:*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_redis_share_entries_and_purges() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    let yaml = redis_config(&redis, "1s", &origin);
    let one = start(&yaml).await;
    let two = start(&yaml).await;

    let first = get(&one, "/shared/a", &[]).await;
    assert_cache(&first, "MISS", "through the first gateway");
    let keys = blocking(|| cache_keys(&redis));
    assert_eq!(keys.len(), 1, "one Redis value: {keys:?}");
    // It lives as long as its freshness and its last stale window: 30s + 10s.
    let pttl = blocking(|| redis.int(&["PTTL", &keys[0]]));
    assert!((30_000..=40_000).contains(&pttl), "PTTL {pttl}");

    let other = get(&two, "/shared/a", &[]).await;
    assert_cache(&other, "HIT", "through the second gateway");
    assert_eq!(other.body, first.body, "the first gateway's entry");
    assert!(other.header("age").is_some());
    assert_eq!(origin.hits_for("/shared/a"), 1, "the origin was asked once");

    // The memory store is each gateway's own.
    assert_cache(
        &get(&one, "/local/a", &[]).await,
        "MISS",
        "local, first gateway",
    );
    assert_cache(
        &get(&two, "/local/a", &[]).await,
        "MISS",
        "local, second gateway",
    );
    assert_cache(
        &get(&two, "/local/a", &[]).await,
        "HIT",
        "local, second again",
    );
    assert_eq!(origin.hits_for("/local/a"), 2);

    // A purge through one gateway is seen by both.
    assert_cache(
        &get(&two, "/shared/b", &[]).await,
        "MISS",
        "b through the second",
    );
    assert_cache(
        &get(&one, "/shared/b", &[]).await,
        "HIT",
        "b through the first",
    );
    let (status, v, _) = purge(&one, r#"{"route": "shared"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 2})));
    assert!(blocking(|| cache_keys(&redis)).is_empty());
    let a = get(&two, "/shared/a", &[]).await;
    assert_cache(&a, "MISS", "a through the second, after the purge");
    assert_ne!(a.body, first.body);
    assert_cache(
        &get(&one, "/shared/b", &[]).await,
        "MISS",
        "b through the first, after",
    );
    assert_eq!(
        (origin.hits_for("/shared/a"), origin.hits_for("/shared/b")),
        (2, 2)
    );
    // And what one stores again, the other hits again.
    assert_cache(
        &get(&one, "/shared/a", &[]).await,
        "HIT",
        "a through the first, re-stored",
    );

    // A prefix purge counts both stores: Redis (/shared) and this gateway's memory (/local).
    let (status, v, _) = purge(&two, r#"{"prefix": "/"}"#).await;
    assert_eq!((status, v), (200, serde_json::json!({"purged": 3})));
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_bypasses_the_cache_and_it_resumes_when_redis_is_back() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    let gw = start(&redis_config(&redis, "100ms", &origin)).await;

    assert_cache(&get(&gw, "/shared/x", &[]).await, "MISS", "Redis up");
    assert_cache(&get(&gw, "/shared/x", &[]).await, "HIT", "Redis up, again");
    assert_eq!(gauge(&gw.metrics().await, "weir_cache_redis_up"), 1.0);

    blocking(|| redis.stop());
    for i in 1..=3 {
        let a = get(&gw, "/shared/x", &[]).await;
        assert_cache(&a, "BYPASS", &format!("Redis down, request {i}"));
        assert_eq!(origin_n(&a), 1 + i, "answered by the origin");
    }
    assert_eq!(origin.hits(), 4);
    assert_eq!(gauge(&gw.metrics().await, "weir_cache_redis_up"), 0.0);
    // The memory store is unaffected.
    assert_cache(&get(&gw, "/local/x", &[]).await, "MISS", "memory route");
    assert_cache(
        &get(&gw, "/local/x", &[]).await,
        "HIT",
        "memory route again",
    );
    // A purge says what it could not do.
    let (status, v, ct) = purge(&gw, r#"{"prefix": "/"}"#).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    check_problem_body(&v, 503, "cache_store_unavailable", None);
    assert_eq!(v["purged"], 1, "the memory entry went: {v}");

    blocking(|| redis.restart());
    let gw_ref = &gw;
    eventually("caching through Redis again", DEADLINE, || async move {
        let a = get(gw_ref, "/shared/x", &[]).await;
        assert_eq!(a.status, 200);
        x_cache(&a) == "HIT"
    })
    .await;
    assert_eq!(gauge(&gw.metrics().await, "weir_cache_redis_up"), 1.0);
    assert_eq!(blocking(|| cache_keys(&redis)).len(), 1);
    let hits = origin.hits();
    assert_cache(&get(&gw, "/shared/x", &[]).await, "HIT", "after recovery");
    assert_eq!(origin.hits(), hits);
    gw.stop().await;
}

/// A frozen Redis (it accepts connections but never answers): requests bypass the cache
/// after `redis.timeout` instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_at_most_its_timeout() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    let origin = Origin::start().await;
    let gw: Gateway = start(&redis_config(&redis, "100ms", &origin)).await;
    assert_cache(&get(&gw, "/shared/y", &[]).await, "MISS", "Redis up");

    blocking(|| redis.pause());
    let t = std::time::Instant::now();
    let a = get(&gw, "/shared/y", &[]).await;
    let took = t.elapsed();
    blocking(|| redis.resume());
    assert_cache(&a, "BYPASS", "Redis frozen");
    assert_eq!(origin_n(&a), 2);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    gw.stop().await;
}
