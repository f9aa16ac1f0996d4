//! The stores with real components: quick_cache for memory, a real `redis-server` (the rate
//! limiter's harness) for Redis, and the codec against damaged values.

use crate::test_logs::Logs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::codec::{Malformed, decode, encode};
use super::redis::primaries_of;
use super::{
    CacheStores, KEY_PREFIX, MAX_VALUE, MemoryStore, Purge, RedisSettings, ResponseParts,
    StoredResponse, Times,
};
use crate::ratelimit::test_redis::{TestCluster, TestRedis};

/// A key shaped like the pipeline's `CacheKey` text: route, host, path and query, vary.
fn key(route: &str, path: &str) -> String {
    format!("{route}\u{1f}api.example\u{1f}{path}\u{1f}accept=json\u{1e}")
}

/// Reads a key the way the glue does with `CacheKey::parse` (route, then path without query).
fn matcher(what: &Purge) -> impl Fn(&str) -> bool + Sync + '_ {
    move |k: &str| {
        let mut parts = k.split('\u{1f}');
        let route = parts.next().unwrap_or("");
        let path = parts.nth(1).unwrap_or("").split('?').next().unwrap_or("");
        what.matches(route, path)
    }
}

fn response() -> StoredResponse {
    let mut headers = HeaderMap::new();
    headers.append("content-type", HeaderValue::from_static("application/json"));
    headers.append("set-thing", HeaderValue::from_static("a"));
    headers.append("set-thing", HeaderValue::from_static("b"));
    headers.append("x-empty", HeaderValue::from_static(""));
    StoredResponse {
        status: StatusCode::NON_AUTHORITATIVE_INFORMATION,
        headers,
        body: Bytes::from_static(b"\x00\xff{\"ok\":true}\r\n\x7f"),
        times: Times {
            stored_at: 1_700_000_000_123,
            initial_age: 7,
            fresh_for: 60_000,
            stale_while_revalidate: 5_000,
            stale_if_error: u64::MAX,
        },
    }
}

fn parts(r: &StoredResponse) -> ResponseParts<'_> {
    ResponseParts {
        status: r.status,
        headers: &r.headers,
        body: &r.body,
        times: r.times,
    }
}

// ---------------------------------------------------------------- memory

#[test]
fn memory_put_get_and_expiry() {
    let m: MemoryStore<Arc<String>> = MemoryStore::new(1 << 20);
    let v = Arc::new("hello".to_owned());
    m.put("a", Arc::clone(&v), 2_000, 300);
    let got = m.get("a", 1_999).expect("fresh");
    assert!(Arc::ptr_eq(&got, &v), "a hit is the stored Arc, not a copy");
    assert_eq!(m.get("b", 0), None);
    assert_eq!(m.entries(), 1);
    assert_eq!(m.bytes(), 301, "stated weight plus the key");
    // At expires_at it is gone, and removed, not just hidden.
    assert_eq!(m.get("a", 2_000), None);
    assert_eq!(m.entries(), 0);
    assert_eq!(m.bytes(), 0);
    // A put replaces.
    m.put("a", Arc::new("one".to_owned()), 10, 1);
    m.put("a", Arc::new("two".to_owned()), 10, 1);
    assert_eq!(m.get("a", 0).as_deref().map(String::as_str), Some("two"));
    assert_eq!(m.entries(), 1);
}

#[test]
fn memory_stays_within_its_byte_bound() {
    let cap = 256 * 1024;
    let m: MemoryStore<u32> = MemoryStore::new(cap);
    assert_eq!(m.capacity(), cap);
    for i in 0..2_000u32 {
        m.put(&format!("k{i}"), i, u64::MAX, 1_000);
        assert!(m.bytes() <= cap, "{} > {cap} after {i}", m.bytes());
    }
    // 2 000 × ~1 KB were offered; about 256 fit.
    assert!(m.entries() < 300, "{}", m.entries());
    assert!(m.entries() > 100, "{}", m.entries());
    assert!(m.bytes() > cap / 2, "the space is used: {}", m.bytes());
}

#[test]
fn memory_purge_by_route_and_by_prefix_counts() {
    let m: MemoryStore<u8> = MemoryStore::new(1 << 20);
    for (route, path) in [
        ("orders", "/v2/orders"),
        ("orders", "/v2/orders/1?x=1"),
        ("orders", "/v2/orders/2"),
        ("users", "/v2/users/1"),
        ("users", "/v2/users/2"),
        ("static", "/assets/app.js"),
    ] {
        m.put(&key(route, path), 0, u64::MAX, 100);
    }
    assert_eq!(m.entries(), 6);
    assert_eq!(m.purge(matcher(&Purge::Route("orders".into()))), 3);
    assert_eq!(m.purge(matcher(&Purge::Route("orders".into()))), 0);
    assert_eq!(m.purge(matcher(&Purge::Prefix("/v2/users/".into()))), 2);
    assert_eq!(m.entries(), 1);
    assert_eq!(m.get(&key("static", "/assets/app.js"), 0), Some(0));
}

#[tokio::test]
async fn stores_without_redis_purge_memory_only() {
    let s: CacheStores<u8> = CacheStores::new(1 << 20, None).expect("stores");
    assert_eq!(s.redis_healthy(), None);
    s.memory().put(&key("a", "/x"), 1, u64::MAX, 10);
    s.memory().put(&key("b", "/x"), 1, u64::MAX, 10);
    let p = s.purge(matcher(&Purge::Prefix("/".into()))).await;
    assert_eq!((p.memory, p.redis), (2, None));
}

// ---------------------------------------------------------------- codec

#[test]
fn codec_round_trips() {
    let r = response();
    let value = encode(&parts(&r));
    assert_eq!(decode(Bytes::from(value)), Ok(r.clone()));
    // Multiple values keep their order.
    let back = decode(Bytes::from(encode(&parts(&r)))).expect("decode");
    let things: Vec<_> = back.headers.get_all("set-thing").iter().collect();
    assert_eq!(things, ["a", "b"]);
    // Empty body, no headers.
    let empty = StoredResponse {
        status: StatusCode::NO_CONTENT,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        times: Times::default(),
    };
    assert_eq!(decode(Bytes::from(encode(&parts(&empty)))), Ok(empty));
    // A large binary body.
    let big = StoredResponse {
        body: (0..=255u8)
            .cycle()
            .take(100_000)
            .collect::<Vec<u8>>()
            .into(),
        ..r
    };
    assert_eq!(decode(Bytes::from(encode(&parts(&big)))), Ok(big));
}

#[test]
fn codec_refuses_damaged_values_without_panicking() {
    let good = encode(&parts(&response()));
    // Every truncation, including the empty value.
    for n in 0..good.len() {
        assert_eq!(
            decode(Bytes::copy_from_slice(&good[..n])),
            Err(Malformed),
            "{n}"
        );
    }
    let with = |at: usize, bytes: &[u8]| {
        let mut v = good.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        decode(Bytes::from(v))
    };
    assert_eq!(with(2, &[2]), Err(Malformed), "another version");
    assert_eq!(with(0, b"xx"), Err(Malformed), "another magic");
    assert_eq!(
        with(43, &1000u16.to_be_bytes()),
        Err(Malformed),
        "status 1000"
    );
    assert_eq!(
        with(45, &u32::MAX.to_be_bytes()),
        Err(Malformed),
        "header count"
    );
    // First header: name length at 49, "content-type" at 51, value length at 63.
    assert_eq!(
        with(49, &u16::MAX.to_be_bytes()),
        Err(Malformed),
        "name length"
    );
    assert_eq!(with(51, b" "), Err(Malformed), "invalid name");
    assert_eq!(
        with(63, &u32::MAX.to_be_bytes()),
        Err(Malformed),
        "value length"
    );
    let body_len = good.len() - response().body.len() - 8;
    assert_eq!(
        with(body_len, &u64::MAX.to_be_bytes()),
        Err(Malformed),
        "body length"
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        decode(Bytes::from(trailing)),
        Err(Malformed),
        "trailing byte"
    );
    // Random damage (a fixed xorshift, so a failure reproduces): never a panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut v = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % v.len() as u64) as usize;
            v[at] = next() as u8;
        }
        let cut = (next() % (v.len() as u64 + 1)) as usize;
        let _ = decode(Bytes::copy_from_slice(&v[..cut]));
        let _ = decode(Bytes::from(v));
    }
}

#[test]
fn cluster_nodes_output_gives_the_live_primaries() {
    let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30001@31001,node-a myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383
aaaa [::1]:30005@31005 master - 0 1 5 connected
";
    assert_eq!(
        primaries_of(text),
        [
            ("127.0.0.1".to_owned(), 30001),
            ("127.0.0.1".to_owned(), 30002),
            ("::1".to_owned(), 30005),
        ]
    );
}

// ---------------------------------------------------------------- redis

fn settings(urls: Vec<String>, cluster: bool, timeout: Duration) -> RedisSettings {
    RedisSettings {
        urls,
        cluster,
        timeout,
        ca_pem: None,
    }
}

fn stores(r: &TestRedis, timeout: Duration) -> CacheStores<u8> {
    CacheStores::new(1 << 20, Some(&settings(vec![r.url()], false, timeout))).expect("stores")
}

async fn raw(r: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(r.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn redis_entries_are_shared_between_instances_with_a_ttl() {
    let Some(r) = TestRedis::start() else { return };
    let (writer, reader) = (
        stores(&r, Duration::from_secs(2)),
        stores(&r, Duration::from_secs(2)),
    );
    let (w, rd) = (
        writer.redis().expect("redis"),
        reader.redis().expect("redis"),
    );
    let k = key("orders", "/v2/orders?id=1");
    assert_eq!(rd.get(&k).await, Ok(None));
    let resp = response();
    let now = resp.times.stored_at;
    w.put(&k, &parts(&resp), now + 30_000, now)
        .await
        .expect("put");
    assert_eq!(rd.get(&k).await, Ok(Some(resp.clone())));
    let mut c = raw(&r).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{KEY_PREFIX}{k}"))
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!((29_000..=30_000).contains(&pttl), "{pttl}");
    // Already expired: stored for a moment (PX 1), never an error.
    w.put(&k, &parts(&resp), now - 5, now).await.expect("put");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(rd.get(&k).await, Ok(None));
    // Too large: skipped, and what was there stays.
    w.put(&k, &parts(&resp), now + 30_000, now)
        .await
        .expect("put");
    let huge = StoredResponse {
        body: vec![7u8; MAX_VALUE + 1].into(),
        ..resp.clone()
    };
    assert_eq!(w.put(&k, &parts(&huge), now + 30_000, now).await, Ok(()));
    assert_eq!(rd.get(&k).await, Ok(Some(resp)));
    // A value of another kind under a cache key is a miss.
    let _: () = redis::cmd("SET")
        .arg(format!("{KEY_PREFIX}junk"))
        .arg("not a response")
        .query_async(&mut c)
        .await
        .expect("set");
    assert_eq!(rd.get("junk").await, Ok(None));
    assert_eq!(reader.redis_healthy(), Some(true));
}

#[tokio::test]
async fn redis_purge_is_seen_by_every_instance() {
    let Some(r) = TestRedis::start() else { return };
    let (a, b) = (
        stores(&r, Duration::from_secs(2)),
        stores(&r, Duration::from_secs(2)),
    );
    let resp = response();
    let now = resp.times.stored_at;
    let mut keys = Vec::new();
    // Enough to take several SCAN steps and UNLINK batches.
    for i in 0..1_200 {
        keys.push(key("orders", &format!("/v2/orders/{i}")));
    }
    keys.push(key("users", "/v2/users/1"));
    keys.push(key("users", "/v2/orders/of-users"));
    for k in &keys {
        a.redis()
            .expect("redis")
            .put(k, &parts(&resp), now + 60_000, now)
            .await
            .expect("put");
        a.memory().put(k, 0, u64::MAX, 10);
    }
    // A key outside the cache's prefix is never touched.
    let mut c = raw(&r).await;
    let _: () = redis::cmd("SET")
        .arg("other:orders")
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("set");

    let p = b.purge(matcher(&Purge::Route("orders".into()))).await;
    assert_eq!(p.memory, 0, "b's memory held none");
    assert_eq!(p.redis, Some(Ok(1_200)));
    let ra = a.redis().expect("redis");
    assert_eq!(ra.get(&keys[0]).await, Ok(None), "a sees b's purge");
    assert!(ra.get(&keys[1_200]).await.expect("get").is_some());

    let p = a.purge(matcher(&Purge::Prefix("/v2/orders".into()))).await;
    assert_eq!(
        p.memory, 1_201,
        "a's memory: the orders and /v2/orders/of-users"
    );
    assert_eq!(p.redis, Some(Ok(1)));
    assert!(
        b.redis()
            .expect("redis")
            .get(&keys[1_200])
            .await
            .expect("get")
            .is_some()
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg("other:orders")
        .query_async(&mut c)
        .await
        .expect("exists");
    assert!(exists);
}

#[tokio::test]
async fn redis_down_fails_fast_logs_once_and_recovers_by_itself() {
    let Some(mut r) = TestRedis::start() else {
        return;
    };
    let logs = Logs::capture();
    let timeout = Duration::from_millis(300);
    let s = stores(&r, timeout);
    let store = s.redis().expect("redis");
    let resp = response();
    let now = resp.times.stored_at;
    let k = key("orders", "/v2/orders");
    store
        .put(&k, &parts(&resp), now + 60_000, now)
        .await
        .expect("put");
    r.kill();
    for _ in 0..10 {
        let start = Instant::now();
        assert_eq!(store.get(&k).await, Err(super::RedisDown));
        assert_eq!(
            store.put(&k, &parts(&resp), now + 60_000, now).await,
            Err(super::RedisDown)
        );
        assert!(
            start.elapsed() < 2 * timeout + Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
    let p = s.purge(|_| true).await;
    assert!(
        matches!(&p.redis, Some(Err(e)) if e.starts_with("redis")),
        "{p:?}"
    );
    assert_eq!(s.redis_healthy(), Some(false));
    assert_eq!(logs.count("cache redis unreachable"), 1, "{}", logs.text());
    assert_eq!(logs.count("reachable again"), 0);

    r.restart();
    let back = Instant::now();
    while store.get(&k).await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(5), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    store
        .put(&k, &parts(&resp), now + 60_000, now)
        .await
        .expect("put");
    assert_eq!(store.get(&k).await, Ok(Some(resp)));
    assert_eq!(s.redis_healthy(), Some(true));
    assert_eq!(
        logs.count("cache redis reachable again"),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(logs.count("cache redis unreachable"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_stores_and_purges_on_every_primary() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let s: CacheStores<u8> = CacheStores::new(
        1 << 20,
        Some(&settings(cluster.urls(), true, Duration::from_secs(2))),
    )
    .expect("stores");
    let store = s.redis().expect("redis");
    let resp = response();
    let now = resp.times.stored_at;
    // No hash tags: 60 keys land on all three primaries.
    for i in 0..60 {
        let route = if i % 2 == 0 { "even" } else { "odd" };
        store
            .put(
                &key(route, &format!("/p/{i}")),
                &parts(&resp),
                now + 60_000,
                now,
            )
            .await
            .expect("put");
    }
    assert_eq!(store.get(&key("odd", "/p/1")).await, Ok(Some(resp.clone())));
    let p = s.purge(matcher(&Purge::Route("even".into()))).await;
    assert_eq!(p.redis, Some(Ok(30)));
    assert_eq!(store.get(&key("even", "/p/0")).await, Ok(None));
    assert!(
        store
            .get(&key("odd", "/p/59"))
            .await
            .expect("get")
            .is_some()
    );
}

#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let s: CacheStores<Arc<u8>> = CacheStores::new(1024, None).expect("stores");
    send(&s.purge(|_| true));
    if let Some(r) = s.redis() {
        send(&r.get("k"));
    }
}

#[test]
fn prefixes_match_at_segment_boundaries() {
    let p = Purge::Prefix("/b/1".into());
    assert!(p.matches("r", "/b/1"));
    assert!(p.matches("r", "/b/1/x"));
    assert!(!p.matches("r", "/b/12"));
    assert!(Purge::Prefix("/b/".into()).matches("r", "/b/12"));
    assert!(Purge::Prefix("/".into()).matches("r", "/anything"));
    assert!(Purge::Route("r".into()).matches("r", "/x"));
    assert!(!Purge::Route("r".into()).matches("rr", "/x"));
}
