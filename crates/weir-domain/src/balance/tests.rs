use std::collections::HashMap;

use super::*;
use crate::upstream::TargetAddr;

fn healthy(ts: &[Arc<Target>], i: usize) -> bool {
    ts[i].is_healthy()
}

fn targets(weights: &[u32]) -> Vec<Arc<Target>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let url = format!("http://10.0.0.{i}:80");
            Arc::new(Target::new(
                url.clone(),
                TargetAddr::parse(&url).unwrap(),
                w,
            ))
        })
        .collect()
}

fn counts(b: &Balancer, ts: &[Arc<Target>], n: u64) -> Vec<u64> {
    let mut c = vec![0; ts.len()];
    for k in 0..n {
        let r = mix(k.wrapping_add(12345));
        if let Some(i) = b.pick(ts, None, r, |i| healthy(ts, i)) {
            c[i] += 1;
        }
    }
    c
}

#[test]
fn round_robin_is_even_and_skips_unhealthy() {
    let ts = targets(&[1, 1, 1]);
    let b = Balancer::new(LoadBalancing::RoundRobin, &ts);
    assert_eq!(counts(&b, &ts, 300), vec![100, 100, 100]);
    ts[1].set_healthy(false);
    let c = counts(&b, &ts, 300);
    assert_eq!(c[1], 0);
    assert_eq!(c[0] + c[2], 300);
    ts[0].set_healthy(false);
    ts[2].set_healthy(false);
    assert_eq!(b.pick(&ts, None, 1, |i| healthy(&ts, i)), None);
}

#[test]
fn weighted_is_exact_and_smooth() {
    let ts = targets(&[3, 1]);
    let b = Balancer::new(LoadBalancing::Weighted, &ts);
    assert_eq!(counts(&b, &ts, 4000), vec![3000, 1000]);
    let ts = targets(&[5, 1, 1]);
    let b = Balancer::new(LoadBalancing::Weighted, &ts);
    let seq: Vec<_> = (0..7)
        .map(|_| b.pick(&ts, None, 0, |i| healthy(&ts, i)).unwrap())
        .collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn weighted_huge_weights_are_scaled() {
    let ts = targets(&[100_000, 1]);
    let b = Balancer::new(LoadBalancing::Weighted, &ts);
    let Balancer::Weighted { schedule, .. } = &b else {
        panic!()
    };
    assert!(schedule.len() <= 4097);
    assert!(schedule.contains(&1));
}

#[test]
fn least_connections_prefers_idle() {
    let ts = targets(&[1, 1, 1]);
    let b = Balancer::new(LoadBalancing::LeastConnections, &ts);
    let _busy0 = ts[0].start_request();
    let _busy2 = ts[2].start_request();
    for _ in 0..10 {
        assert_eq!(b.pick(&ts, None, 0, |i| healthy(&ts, i)), Some(1));
    }
}

#[test]
fn p2c_prefers_less_loaded_and_spreads() {
    let ts = targets(&[1, 1, 1, 1]);
    let b = Balancer::new(LoadBalancing::P2c, &ts);
    let c = counts(&b, &ts, 4000);
    assert!(c.iter().all(|&x| x > 800), "{c:?}");
    let guards: Vec<_> = (0..5).map(|_| ts[0].start_request()).collect();
    let c = counts(&b, &ts, 4000);
    assert_eq!(c[0], 0, "a loaded target loses every pair it is in: {c:?}");
    drop(guards);
}

#[test]
fn consistent_hash_is_sticky_and_moves_few_keys() {
    let ts = targets(&[1, 1, 1, 1]);
    let b = Balancer::new(LoadBalancing::ConsistentHash, &ts);
    let keys: Vec<u64> = (0..4000)
        .map(|k| hash_key(format!("user-{k}").as_bytes()))
        .collect();
    let before: Vec<_> = keys
        .iter()
        .map(|&h| b.pick(&ts, Some(h), 0, |i| healthy(&ts, i)).unwrap())
        .collect();
    let again: Vec<_> = keys
        .iter()
        .map(|&h| b.pick(&ts, Some(h), 99, |i| healthy(&ts, i)).unwrap())
        .collect();
    assert_eq!(before, again);
    let mut per: HashMap<usize, usize> = HashMap::new();
    for &i in &before {
        *per.entry(i).or_default() += 1;
    }
    assert!(per.values().all(|&c| (700..1300).contains(&c)), "{per:?}");
    // Remove target 3 from the config: only its keys move.
    let fewer: Vec<_> = ts[..3].to_vec();
    let b2 = Balancer::new(LoadBalancing::ConsistentHash, &fewer);
    let moved = keys
        .iter()
        .zip(&before)
        .filter(|(h, old)| {
            b2.pick(&fewer, Some(**h), 0, |i| healthy(&fewer, i))
                .unwrap()
                != **old
        })
        .count();
    assert_eq!(moved, per[&3]);
    // Marking it unhealthy moves the same keys and no others.
    ts[3].set_healthy(false);
    let moved_unhealthy = keys
        .iter()
        .zip(&before)
        .filter(|(h, old)| b.pick(&ts, Some(**h), 0, |i| healthy(&ts, i)).unwrap() != **old)
        .count();
    assert_eq!(moved_unhealthy, per[&3]);
}
