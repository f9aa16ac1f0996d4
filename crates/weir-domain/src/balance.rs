//! The load-balancing choice. Every policy picks among usable targets only (the caller says
//! which: healthy, not ejected, circuit not open), with atomics and
//! precomputed tables, so a pick never locks and never allocates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hash::{mix, stable_hash};
use crate::upstream::Target;

/// Policy names as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    Weighted,
    LeastConnections,
    P2c,
    ConsistentHash,
}

impl LoadBalancing {
    pub const NAMES: [&'static str; 5] = [
        "round_robin",
        "weighted",
        "least_connections",
        "p2c",
        "consistent_hash",
    ];

    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "round_robin" => Self::RoundRobin,
            "weighted" => Self::Weighted,
            "least_connections" => Self::LeastConnections,
            "p2c" => Self::P2c,
            "consistent_hash" => Self::ConsistentHash,
            _ => return Err(format!("\"{s}\" is not one of {}", Self::NAMES.join(", "))),
        })
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Virtual nodes per unit of weight on the hash ring: enough that keys spread within a few
/// percent, few enough that a ring of 100 targets stays small.
const RING_POINTS_PER_WEIGHT: u32 = 160;
/// A smooth weighted schedule is at most this long; larger weight sums are scaled down.
const MAX_SCHEDULE: u32 = 4096;

/// A policy with its precomputed state.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin {
        next: AtomicUsize,
    },
    /// nginx's smooth weighted round robin, unrolled once into a schedule at load.
    Weighted {
        schedule: Vec<u16>,
        next: AtomicUsize,
    },
    LeastConnections {
        next: AtomicUsize,
    },
    P2c,
    /// A ketama-style ring of (point, target index), sorted by point.
    ConsistentHash {
        ring: Vec<(u64, u16)>,
    },
}

impl Balancer {
    /// Builds the policy's state for these targets (at most 65,535 of them).
    #[must_use]
    pub fn new(policy: LoadBalancing, targets: &[Arc<Target>]) -> Self {
        match policy {
            LoadBalancing::RoundRobin => Self::RoundRobin {
                next: AtomicUsize::new(0),
            },
            LoadBalancing::Weighted => Self::Weighted {
                schedule: smooth_schedule(targets),
                next: AtomicUsize::new(0),
            },
            LoadBalancing::LeastConnections => Self::LeastConnections {
                next: AtomicUsize::new(0),
            },
            LoadBalancing::P2c => Self::P2c,
            LoadBalancing::ConsistentHash => Self::ConsistentHash {
                ring: ring(targets),
            },
        }
    }

    #[must_use]
    pub const fn policy(&self) -> LoadBalancing {
        match self {
            Self::RoundRobin { .. } => LoadBalancing::RoundRobin,
            Self::Weighted { .. } => LoadBalancing::Weighted,
            Self::LeastConnections { .. } => LoadBalancing::LeastConnections,
            Self::P2c => LoadBalancing::P2c,
            Self::ConsistentHash { .. } => LoadBalancing::ConsistentHash,
        }
    }

    /// Index of the chosen target among those `usable` accepts, or `None` when it accepts
    /// none. `usable` is asked about a target only when the policy considers it.
    #[must_use]
    pub fn pick(
        &self,
        targets: &[Arc<Target>],
        hash: Option<u64>,
        random: u64,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = targets.len();
        if n == 0 {
            return None;
        }
        match self {
            Self::RoundRobin { next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                first_usable(n, start, &usable)
            }
            Self::Weighted { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let len = schedule.len();
                (0..len)
                    .map(|k| usize::from(schedule[(start + k) % len]))
                    .find(|&i| usable(i))
            }
            Self::LeastConnections { next } => {
                // Rotate the scan start so ties spread instead of piling on the first target.
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, u64)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    let load = load_per_weight(&targets[i]);
                    if best.is_none_or(|(_, b)| load < b) {
                        best = Some((i, load));
                    }
                }
                best.map(|(i, _)| i)
            }
            Self::P2c => {
                let a = to_index(random, n);
                let b = if n > 1 {
                    (a + 1 + to_index(mix(random), n - 1)) % n
                } else {
                    a
                };
                match (usable(a), usable(b)) {
                    (true, true) => Some(
                        if load_per_weight(&targets[b]) < load_per_weight(&targets[a]) {
                            b
                        } else {
                            a
                        },
                    ),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => first_usable(n, a, &usable),
                }
            }
            Self::ConsistentHash { ring } => {
                let point = hash.unwrap_or(random);
                let start = ring.partition_point(|(p, _)| *p < point);
                (0..ring.len())
                    .map(|k| usize::from(ring[(start + k) % ring.len()].1))
                    .find(|&i| usable(i))
            }
        }
    }
}

/// Hashes a consistent-hash key the same way in every process.
#[must_use]
pub fn hash_key(bytes: &[u8]) -> u64 {
    stable_hash(bytes)
}

fn first_usable(n: usize, start: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
}

fn load_per_weight(t: &Target) -> u64 {
    // Scaled so weight 3 with 3 in flight ties weight 1 with 1 in flight.
    (t.in_flight() as u64).saturating_mul(1 << 16) / u64::from(t.weight)
}

fn to_index(random: u64, n: usize) -> usize {
    // Lemire's multiply-shift: unbiased enough and no division.
    ((u128::from(random) * n as u128) >> 64) as usize
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Unrolls smooth weighted round robin into one period: weights 5,1,1 give a,a,b,a,c,a,a.
fn smooth_schedule(targets: &[Arc<Target>]) -> Vec<u16> {
    let g = targets.iter().fold(0, |g, t| gcd(g, t.weight));
    let mut weights: Vec<u32> = targets.iter().map(|t| t.weight / g.max(1)).collect();
    let total: u32 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut weights {
            *w = ((u64::from(*w) * u64::from(MAX_SCHEDULE) / u64::from(total)) as u32).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(&weights) {
            *c += i64::from(w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        schedule.push(u16::try_from(best).unwrap_or(u16::MAX));
    }
    schedule
}

fn ring(targets: &[Arc<Target>]) -> Vec<(u64, u16)> {
    let mut ring = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let Ok(idx) = u16::try_from(i) else { break };
        for v in 0..RING_POINTS_PER_WEIGHT * t.weight.min(100) {
            // Points derive from the target's URL, not its position, so removing one target
            // leaves every other target's points where they were.
            let mut key = t.url.clone().into_bytes();
            key.push(b'#');
            key.extend_from_slice(v.to_string().as_bytes());
            ring.push((stable_hash(&key), idx));
        }
    }
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests;
