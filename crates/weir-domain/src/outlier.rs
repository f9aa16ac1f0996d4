//! Passive health (outlier ejection): a target whose real traffic fails
//! `consecutive_failures` times in a row leaves rotation for `eject_for`, longer each time it
//! is ejected again soon after coming back, and never so many at once that more than
//! `max_ejected_percent` of the upstream is out (one target may always go, as in Envoy:
//! otherwise a two-target upstream at 40% could never eject its broken half).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::upstream::Target;

/// `health_check.passive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassivePolicy {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    /// 0 to 100.
    pub max_ejected_percent: u8,
}

/// A repeat ejection lasts `eject_for` times the number of ejections in a row, up to this.
pub const MAX_MULTIPLIER: u32 = 10;

/// One target's ejection state.
#[derive(Debug, Default)]
pub struct Outlier {
    failures: AtomicU32,
    /// Ejected while `now < until_ms`.
    until_ms: AtomicU64,
    /// The current ejection's multiple of `eject_for`.
    multiplier: AtomicU32,
    ejections: AtomicU64,
}

impl Outlier {
    #[must_use]
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds of ejection left at `now_ms` (0 when not ejected).
    #[must_use]
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.until_ms.load(Ordering::Relaxed).saturating_sub(now_ms)
    }

    /// How many times the target was ejected since the config was loaded.
    #[must_use]
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// Records an outcome of `targets[index]`'s real traffic. Returns how long the target is
/// ejected for when this outcome ejected it.
pub fn record(
    targets: &[Arc<Target>],
    index: usize,
    policy: &PassivePolicy,
    ok: bool,
    now_ms: u64,
) -> Option<Duration> {
    let o = &targets[index].outlier;
    if ok {
        o.failures.store(0, Ordering::Relaxed);
        return None;
    }
    // Answers from requests sent before the ejection say nothing new.
    if o.is_ejected(now_ms) {
        return None;
    }
    let run = o.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    if run < policy.consecutive_failures.max(1) {
        return None;
    }
    // Counting starts over whether or not the target can go now.
    o.failures.store(0, Ordering::Relaxed);
    let out = targets
        .iter()
        .filter(|t| t.outlier.is_ejected(now_ms))
        .count();
    let pct = usize::from(policy.max_ejected_percent);
    let allowed = pct > 0 && (out == 0 || (out + 1) * 100 <= pct * targets.len());
    if !allowed {
        return None;
    }
    let eject_ms = u64::try_from(policy.eject_for.as_millis()).unwrap_or(u64::MAX);
    let prev_until = o.until_ms.load(Ordering::Relaxed);
    let prev = o.multiplier.load(Ordering::Relaxed);
    // Back for less time than its last ejection lasted: a flapping target stays out longer.
    let back_for = now_ms.saturating_sub(prev_until);
    let multiplier = if prev > 0 && back_for < eject_ms.saturating_mul(u64::from(prev)) {
        (prev + 1).min(MAX_MULTIPLIER)
    } else {
        1
    };
    let duration = eject_ms.saturating_mul(u64::from(multiplier));
    let until = now_ms.saturating_add(duration);
    // Two failing requests may cross the threshold together; one of them ejects.
    o.until_ms
        .compare_exchange(prev_until, until, Ordering::Relaxed, Ordering::Relaxed)
        .ok()?;
    o.multiplier.store(multiplier, Ordering::Relaxed);
    o.ejections.fetch_add(1, Ordering::Relaxed);
    Some(Duration::from_millis(duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::TargetAddr;

    fn targets(n: usize) -> Vec<Arc<Target>> {
        (0..n)
            .map(|i| {
                let url = format!("http://10.0.0.{i}:80");
                Arc::new(Target::new(
                    url.clone(),
                    TargetAddr::parse(&url).unwrap(),
                    1,
                ))
            })
            .collect()
    }

    fn policy(pct: u8) -> PassivePolicy {
        PassivePolicy {
            consecutive_failures: 3,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: pct,
        }
    }

    fn fail(ts: &[Arc<Target>], i: usize, p: &PassivePolicy, n: u32, now: u64) -> Option<Duration> {
        (0..n).fold(None, |last, _| record(ts, i, p, false, now).or(last))
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_run() {
        let (ts, p) = (targets(4), policy(50));
        assert_eq!(fail(&ts, 0, &p, 2, 0), None);
        assert_eq!(record(&ts, 0, &p, true, 0), None);
        assert_eq!(fail(&ts, 0, &p, 2, 0), None);
        assert_eq!(fail(&ts, 0, &p, 1, 0), Some(Duration::from_secs(30)));
        assert!(ts[0].outlier.is_ejected(29_999));
        assert!(!ts[0].outlier.is_ejected(30_000));
        assert_eq!(ts[0].outlier.ejections(), 1);
        // Failures of requests sent before the ejection are not counted again.
        assert_eq!(fail(&ts, 0, &p, 5, 10), None);
    }

    #[test]
    fn ejections_grow_for_a_flapping_target_and_reset_for_a_recovered_one() {
        let (ts, p) = (targets(2), policy(50));
        assert_eq!(fail(&ts, 0, &p, 3, 0), Some(Duration::from_secs(30)));
        // Back at 30 s, failing again at once: twice as long.
        assert_eq!(fail(&ts, 0, &p, 3, 30_000), Some(Duration::from_secs(60)));
        // Back at 90 s; failing again 10 s later: three times.
        assert_eq!(fail(&ts, 0, &p, 3, 100_000), Some(Duration::from_secs(90)));
        // Back at 190 s and healthy for longer than its last ejection: starts over.
        assert_eq!(
            fail(&ts, 0, &p, 3, 190_000 + 90_000),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn growth_is_capped() {
        let (ts, p) = (targets(2), policy(50));
        let mut now = 0;
        let mut last = Duration::ZERO;
        for _ in 0..15 {
            last = fail(&ts, 0, &p, 3, now).unwrap();
            now += u64::try_from(last.as_millis()).unwrap();
        }
        assert_eq!(last, Duration::from_secs(30) * MAX_MULTIPLIER);
    }

    #[test]
    fn never_more_than_the_percentage_beyond_one() {
        let (ts, p) = (targets(4), policy(50));
        assert!(fail(&ts, 0, &p, 3, 0).is_some());
        assert!(fail(&ts, 1, &p, 3, 0).is_some());
        // Two of four are out: a third would be 75%.
        assert_eq!(fail(&ts, 2, &p, 3, 0), None);
        assert!(!ts[2].outlier.is_ejected(0));
        // One target may always go, even when the percentage is below one target's share.
        let (two, low) = (targets(2), policy(10));
        assert!(fail(&two, 0, &low, 3, 0).is_some());
        assert_eq!(fail(&two, 1, &low, 3, 0), None);
        // 0% turns ejection off.
        let (one, off) = (targets(1), policy(0));
        assert_eq!(fail(&one, 0, &off, 3, 0), None);
    }
}
