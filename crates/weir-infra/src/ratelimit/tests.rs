//! The Redis store against a real `redis-server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use weir_domain::ratelimit::Rate;

use super::redis::{parse, prepare};
use super::script;
use super::test_redis::TestRedis;
use super::{RedisAnswer, RedisCheck, RedisLimiter, RedisSettings};
use crate::auth::test_tls::TestCa;

const SEC: u64 = 1_000_000_000;

fn limiter(r: &TestRedis, timeout: Duration) -> RedisLimiter {
    RedisLimiter::new(&RedisSettings {
        urls: vec![r.url()],
        cluster: false,
        timeout,
        ca_pem: None,
    })
    .expect("limiter")
}

async fn raw(r: &TestRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(r.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn check(key: &[u8], rate: Rate) -> RedisCheck<'_> {
    RedisCheck {
        key,
        interval_ns: rate.interval,
        tolerance_ns: rate.tolerance,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_admits_exactly_the_burst() {
    let Some(r) = TestRedis::start() else { return };
    let lim = Arc::new(limiter(&r, Duration::from_secs(2)));
    let rate = Rate::new(10, Duration::from_secs(60), 10);
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let lim = Arc::clone(&lim);
            tokio::spawn(async move { lim.decide(&[check(b"weir:rl:{t:burst}", rate)]).await })
        })
        .collect();
    let mut admitted = 0;
    let mut remaining = Vec::new();
    for t in tasks {
        match t.await.expect("task").expect("decide") {
            RedisAnswer::Admitted(v) => {
                admitted += 1;
                remaining.push(v[0].0);
            }
            RedisAnswer::Refused {
                retry_after_ns,
                index,
                ..
            } => {
                assert_eq!(index, 0);
                assert!(retry_after_ns > 0 && retry_after_ns <= 6 * SEC);
            }
        }
    }
    assert_eq!(admitted, 10);
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<u32>>(),
        "each admission saw its own state"
    );
    assert!(lim.is_healthy());
}

#[tokio::test]
async fn a_refusal_takes_nothing() {
    let Some(r) = TestRedis::start() else { return };
    let lim = limiter(&r, Duration::from_secs(2));
    let wide = Rate::new(10, Duration::from_secs(60), 10);
    let narrow = Rate::new(1, Duration::from_secs(60), 1);
    let (a, b) = (b"weir:rl:{t:a}".as_slice(), b"weir:rl:{t:b}".as_slice());
    assert!(matches!(
        lim.decide(&[check(b, narrow)]).await,
        Ok(RedisAnswer::Admitted(_))
    ));
    let mut c = raw(&r).await;
    let before: Option<String> = c.get(b).await.expect("get");
    match lim.decide(&[check(a, wide), check(b, narrow)]).await {
        Ok(RedisAnswer::Refused {
            index,
            retry_after_ns,
            reset_after_ns,
        }) => {
            assert_eq!(index, 1);
            assert!(retry_after_ns > 59 * SEC && retry_after_ns <= 60 * SEC);
            assert_eq!(
                retry_after_ns, reset_after_ns,
                "burst 1: one request away from full"
            );
        }
        other => panic!("{other:?}"),
    }
    let a_now: Option<String> = c.get(a).await.expect("get");
    let b_now: Option<String> = c.get(b).await.expect("get");
    assert_eq!(a_now, None, "the admitting check wrote nothing");
    assert_eq!(b_now, before);
    // Both admit: both written, remaining and reset in order.
    match lim
        .decide(&[check(a, wide), check(b"weir:rl:{t:c}", narrow)])
        .await
    {
        Ok(RedisAnswer::Admitted(v)) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[0], (9, 6 * SEC));
            assert_eq!(v[1], (0, 60 * SEC));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn keys_expire_once_their_tat_passes() {
    let Some(r) = TestRedis::start() else { return };
    let lim = limiter(&r, Duration::from_secs(2));
    let key = b"weir:rl:{t:ttl}";
    let rate = Rate::new(5, Duration::from_secs(10), 5);
    for _ in 0..3 {
        lim.decide(&[check(key, rate)]).await.expect("decide");
    }
    let mut c = raw(&r).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("pttl");
    // Three intervals of 2 s ahead: 6 s (+ the margin).
    assert!((5_900..=6_002).contains(&pttl), "{pttl}");
    // A short one really goes away.
    let short = b"weir:rl:{t:short}";
    lim.decide(&[check(short, Rate::new(10, Duration::from_millis(500), 1))])
        .await
        .expect("decide");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let exists: bool = c.exists(short).await.expect("exists");
    assert!(!exists);
}

#[tokio::test]
async fn down_fails_fast_and_back_recovers_without_restart() {
    let Some(mut r) = TestRedis::start() else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let lim = limiter(&r, timeout);
    let rate = Rate::new(1000, Duration::from_secs(1), 1000);
    let key = b"weir:rl:{t:down}";
    assert!(lim.decide(&[check(key, rate)]).await.is_ok());
    r.kill();
    for _ in 0..5 {
        let start = Instant::now();
        let res = lim.decide(&[check(key, rate)]).await;
        assert!(res.is_err(), "{res:?}");
        assert!(start.elapsed() < timeout + Duration::from_secs(1));
        assert!(!res.unwrap_err().0.is_empty());
    }
    assert!(!lim.is_healthy());
    r.restart();
    let back = Instant::now();
    loop {
        if lim.decide(&[check(key, rate)]).await.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    assert!(lim.is_healthy());
}

#[tokio::test]
async fn never_started_fails_then_connects_when_redis_appears() {
    let Some(mut r) = TestRedis::start() else {
        return;
    };
    r.kill();
    let lim = limiter(&r, Duration::from_millis(300));
    let rate = Rate::new(10, Duration::from_secs(1), 10);
    assert!(lim.decide(&[check(b"k", rate)]).await.is_err());
    r.restart();
    tokio::time::sleep(super::RECONNECT_EVERY).await;
    assert!(lim.decide(&[check(b"k", rate)]).await.is_ok());
}

#[tokio::test]
async fn tls_urls_attempt_a_handshake_without_panicking() {
    // A plain server behind rediss://: the rustls (aws-lc-rs) handshake fails cleanly.
    let Some(r) = TestRedis::start() else { return };
    let lim = RedisLimiter::new(&RedisSettings {
        urls: vec![format!("rediss://:pw@127.0.0.1:{}", r.port)],
        cluster: false,
        timeout: Duration::from_millis(500),
        ca_pem: None,
    })
    .expect("limiter");
    let err = lim
        .decide(&[check(b"k", Rate::new(1, Duration::from_secs(1), 1))])
        .await
        .expect_err("not a TLS server");
    assert!(!err.0.contains("pw@"), "{err}");
}

#[tokio::test]
async fn tls_with_the_ca_decides_and_with_another_ca_fails_cleanly() {
    // A real TLS-only redis-server: the configured CA is trusted, and only it.
    let ca = TestCa::new();
    let Some(r) = TestRedis::start_tls(&ca) else {
        return;
    };
    let with_ca = |pem: String| {
        RedisLimiter::new(&RedisSettings {
            urls: vec![r.tls_url()],
            cluster: false,
            timeout: Duration::from_secs(2),
            ca_pem: Some(pem.into_bytes()),
        })
        .expect("limiter")
    };
    let rate = Rate::new(1, Duration::from_secs(60), 2);
    let lim = with_ca(ca.pem());
    for _ in 0..2 {
        assert!(matches!(
            lim.decide(&[check(b"tls", rate)]).await,
            Ok(RedisAnswer::Admitted(_))
        ));
    }
    assert!(matches!(
        lim.decide(&[check(b"tls", rate)]).await,
        Ok(RedisAnswer::Refused { .. })
    ));
    let stranger = with_ca(TestCa::new().pem());
    let err = stranger
        .decide(&[check(b"tls", rate)])
        .await
        .expect_err("a certificate from another CA");
    // Refused at the handshake (UnknownIssuer), not timed out.
    assert!(err.0.contains("certificate"), "{err}");
    assert!(!stranger.is_healthy());
}

#[test]
fn a_ca_with_a_plain_url_is_refused() {
    let s = |url: &str| RedisSettings {
        urls: vec![url.to_owned()],
        cluster: false,
        timeout: Duration::from_millis(100),
        ca_pem: Some(TestCa::new().pem().into_bytes()),
    };
    assert!(RedisLimiter::new(&s("redis://127.0.0.1:1")).is_err());
    assert!(RedisLimiter::new(&s("rediss://127.0.0.1:1")).is_ok());
}

/// The decide script with `now` given as ARGV (seconds, nanoseconds) after the checks'.
fn fixed_clock_script() -> redis::Script {
    let text = script::DECIDE.replace(
        script::CLOCK_LINE,
        "local now_s, now_ns = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])",
    );
    assert_ne!(text, script::DECIDE, "the clock line moved");
    redis::Script::new(&text)
}

#[tokio::test]
async fn the_script_is_rate_decide() {
    let Some(r) = TestRedis::start() else { return };
    let mut c = raw(&r).await;
    let script = fixed_clock_script();
    let rates = [
        Rate::new(10, Duration::from_secs(60), 10),
        Rate::new(3, Duration::from_secs(1), 1),
        Rate::new(7, Duration::from_secs(1), 5),
        Rate::new(1000, Duration::from_secs(1), 1000),
        Rate::new(1, Duration::from_secs(86_400), 30),
        Rate::new(1_000_000_000, Duration::from_secs(1), 1),
    ];
    let base = 1_787_000_000 * SEC + 123_456_789;
    let nows = [base, base + 1, base + 999_999_999, 4_102_444_800 * SEC + 1];
    let key = b"weir:rl:{t:table}";
    let mut cases = 0;
    for rate in rates {
        for now in nows {
            let offsets: Vec<i128> = vec![
                i128::MIN, // never seen
                -(i128::from(SEC)) * 1_000_000,
                -1,
                0,
                1,
                i128::from(rate.interval) - 1,
                i128::from(rate.tolerance) - i128::from(rate.interval),
                i128::from(rate.tolerance) - i128::from(rate.interval) + 1,
                i128::from(rate.tolerance) - 1,
                i128::from(rate.tolerance),
                i128::from(rate.tolerance) + 7,
            ];
            for off in offsets {
                let tat = if off == i128::MIN {
                    0
                } else {
                    u64::try_from(i128::from(now) + off).expect("tat")
                };
                if tat == 0 {
                    let _: () = c.del(key).await.expect("del");
                } else {
                    let _: () = c.set(key, tat.to_string()).await.expect("set");
                }
                let want = rate.decide(tat, now);
                let mut inv = prepare(&script, &[check(key, rate)]);
                inv.arg(now / SEC).arg(now % SEC);
                let values: Vec<i64> = inv.invoke_async(&mut c).await.expect("script");
                let got = parse(&values, 1).expect("reply");
                let stored: Option<String> = c.get(key).await.expect("get");
                let stored: u64 = stored.map_or(0, |s| s.parse().expect("tat"));
                let ctx = format!("rate {rate:?} tat {tat} now {now}");
                if want.allowed {
                    assert_eq!(
                        got,
                        RedisAnswer::Admitted(vec![(want.remaining, want.reset_after)]),
                        "{ctx}"
                    );
                    assert_eq!(stored, want.new_tat, "{ctx}");
                } else {
                    assert_eq!(
                        got,
                        RedisAnswer::Refused {
                            index: 0,
                            retry_after_ns: want.retry_after,
                            reset_after_ns: want.reset_after
                        },
                        "{ctx}"
                    );
                    assert_eq!(stored, tat, "{ctx}");
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 6 * 4 * 11);
}

#[tokio::test]
async fn give_back_returns_one_interval() {
    let Some(r) = TestRedis::start() else { return };
    let mut c = raw(&r).await;
    let lim = limiter(&r, Duration::from_secs(2));
    let rate = Rate::new(10, Duration::from_secs(60), 10);
    let key = b"weir:rl:{t:give}";
    for _ in 0..2 {
        lim.decide(&[check(key, rate)]).await.expect("decide");
    }
    let give = redis::Script::new(script::GIVE_BACK);
    let _: i64 = give
        .key(key)
        .arg(rate.interval)
        .invoke_async(&mut c)
        .await
        .expect("give back");
    match lim.decide(&[check(key, rate)]).await.expect("decide") {
        RedisAnswer::Admitted(v) => assert_eq!(v[0].0, 8, "one of two given back"),
        other @ RedisAnswer::Refused { .. } => panic!("{other:?}"),
    }
    for _ in 0..2 {
        let _: i64 = give
            .key(key)
            .arg(rate.interval)
            .invoke_async(&mut c)
            .await
            .expect("give back");
    }
    let exists: bool = c.exists(key).await.expect("exists");
    assert!(!exists, "nothing left: the key is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_decides_per_slot_and_gives_back_on_refusal() {
    use super::test_redis::TestCluster;
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let lim = RedisLimiter::new(&RedisSettings {
        urls: cluster.urls(),
        cluster: true,
        timeout: Duration::from_secs(2),
        ca_pem: None,
    })
    .expect("limiter");
    let wide = Rate::new(10, Duration::from_secs(60), 10);
    let narrow = Rate::new(1, Duration::from_secs(60), 1);
    // Different hash tags: (almost surely) different slots and nodes.
    let (a, b, c) = (
        b"weir:rl:{p1:a}".as_slice(),
        b"weir:rl:{p2:b}".as_slice(),
        b"weir:rl:{p3:c}".as_slice(),
    );
    // One slot: both keys share a tag.
    match lim
        .decide(&[
            check(b"weir:rl:{same}x", wide),
            check(b"weir:rl:{same}y", wide),
        ])
        .await
        .expect("decide")
    {
        RedisAnswer::Admitted(v) => assert_eq!(v, vec![(9, 6 * SEC), (9, 6 * SEC)]),
        other @ RedisAnswer::Refused { .. } => panic!("{other:?}"),
    }
    // Cross-slot, all admit.
    match lim
        .decide(&[check(a, wide), check(b, narrow), check(c, wide)])
        .await
        .expect("decide")
    {
        RedisAnswer::Admitted(v) => {
            assert_eq!(v, vec![(9, 6 * SEC), (0, 60 * SEC), (9, 6 * SEC)]);
        }
        other @ RedisAnswer::Refused { .. } => panic!("{other:?}"),
    }
    // Cross-slot, b refuses: a and c are given back.
    match lim
        .decide(&[check(a, wide), check(b, narrow), check(c, wide)])
        .await
        .expect("decide")
    {
        RedisAnswer::Refused { index, .. } => assert_eq!(index, 1),
        other @ RedisAnswer::Admitted(_) => panic!("{other:?}"),
    }
    match lim
        .decide(&[check(a, wide), check(c, wide)])
        .await
        .expect("decide")
    {
        RedisAnswer::Admitted(v) => {
            // Two taken (the refused decision's given back); a little time has passed.
            for (remaining, reset) in v {
                assert_eq!(remaining, 8);
                assert!(reset > 11 * SEC && reset <= 12 * SEC, "{reset}");
            }
        }
        other @ RedisAnswer::Refused { .. } => panic!("{other:?}"),
    }
    // Exactness on one key across the cluster.
    let mut admitted = 0;
    for _ in 0..30 {
        if matches!(
            lim.decide(&[check(b"weir:rl:{p4:burst}", wide)]).await,
            Ok(RedisAnswer::Admitted(_))
        ) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}
