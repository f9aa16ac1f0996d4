//! Service discovery: watchers that find an upstream's targets while weir runs.
//!
//! A watcher resolves its source now and then again and again, forever, and hands every
//! result to a sink as a whole list of endpoints, or as a failure. It keeps no state the
//! caller needs: the caller compares lists (a watcher reports unchanged ones too), keeps the
//! last good list when a failure comes (last-known-good), marks the upstream stale, and logs
//! once per change of state. So a watcher never logs its own retries.

mod consul;
mod dns;
mod etcd;

pub use consul::watch_consul;
pub use dns::watch_dns;
pub use etcd::watch_etcd;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use weir_domain::discovery::Endpoint;

/// One result of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The source answered: these are the targets, sorted by URL, each once. Empty when the
    /// source answered that there are none (DNS: NXDOMAIN, or no records).
    Endpoints(Vec<Endpoint>),
    /// The source could not answer (DNS: SERVFAIL, REFUSED, a timeout, an I/O error); why,
    /// in words for the log.
    Failed(String),
}

/// A source's endpoints as [`Update::Endpoints`] carries them: sorted by URL, each URL once.
/// An instance listed twice (two SRV records, two keys, two registrations) is one target with
/// the share of both, at most [`Endpoint::MAX_WEIGHT`].
pub(crate) fn merged(mut list: Vec<Endpoint>) -> Vec<Endpoint> {
    list.sort_by(|a, b| a.url.cmp(&b.url));
    let mut out: Vec<Endpoint> = Vec::with_capacity(list.len());
    for e in list {
        match out.last_mut() {
            Some(last) if last.url == e.url => {
                last.weight = last
                    .weight
                    .saturating_add(e.weight)
                    .min(Endpoint::MAX_WEIGHT);
            }
            _ => out.push(e),
        }
    }
    out
}

/// The wait before the next try after `failures` failures in a row (at least 1): `first`,
/// doubled for each failure after the first, at most `max`, then scaled by a random share
/// between `floor` and 1 (`floor` 0 is full jitter), so that many weirs do not retry in step.
pub(crate) fn backoff(
    failures: u32,
    first: Duration,
    max: Duration,
    floor: f64,
    random: u64,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = first.saturating_mul(1 << doublings).min(max);
    // 53 random bits: a uniform fraction in [0, 1).
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(floor + (1.0 - floor) * fraction)
}

/// A random number for jitter, from the standard library's randomly keyed hasher.
pub(crate) fn random() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_within_its_jitter() {
        let s = Duration::from_secs;
        let top = backoff(1, s(1), s(10), 0.5, u64::MAX);
        assert!(top <= s(1) && top > s(1).mul_f64(0.99), "{top:?}");
        assert_eq!(backoff(1, s(1), s(10), 0.5, 0), s(1) / 2);
        assert_eq!(backoff(3, s(1), s(10), 0.0, 0), s(0));
        assert_eq!(backoff(3, s(1), s(10), 1.0, 0), s(4));
        assert_eq!(backoff(60, s(1), s(10), 1.0, 12_345), s(10));
        assert_eq!(backoff(0, s(1), s(10), 1.0, 0), s(1));
    }
}
