//! Active health: a target leaves rotation after `unhealthy_threshold` consecutive failures and
//! returns after `healthy_threshold` consecutive successes. Probes and connection errors on
//! real traffic both report here; the counters are atomics so neither side locks.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::upstream::{ActiveHealthCheck, Target};

/// Consecutive outcome counters of one target.
#[derive(Debug, Default)]
pub struct HealthCounters {
    successes: AtomicU32,
    failures: AtomicU32,
}

/// A change of a target's health, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

/// Records one outcome and flips the target's health when a threshold is crossed.
pub fn record(target: &Target, policy: &ActiveHealthCheck, ok: bool) -> Option<Transition> {
    let c = &target.health;
    if ok {
        c.failures.store(0, Ordering::Relaxed);
        let n = c
            .successes
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if !target.is_healthy() && n >= policy.healthy_threshold {
            target.set_healthy(true);
            return Some(Transition::BecameHealthy);
        }
    } else {
        c.successes.store(0, Ordering::Relaxed);
        let n = c.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if target.is_healthy() && n >= policy.unhealthy_threshold {
            target.set_healthy(false);
            return Some(Transition::BecameUnhealthy);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upstream::TargetAddr;

    #[test]
    fn thresholds() {
        let policy = ActiveHealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let t = Target::new(
            "http://a:1".into(),
            TargetAddr::parse("http://a:1").unwrap(),
            1,
        );
        assert_eq!(record(&t, &policy, false), None);
        assert_eq!(record(&t, &policy, false), None);
        assert_eq!(record(&t, &policy, true), None); // a success resets the failure run
        assert_eq!(record(&t, &policy, false), None);
        assert_eq!(record(&t, &policy, false), None);
        assert_eq!(
            record(&t, &policy, false),
            Some(Transition::BecameUnhealthy)
        );
        assert!(!t.is_healthy());
        assert_eq!(record(&t, &policy, false), None);
        assert_eq!(record(&t, &policy, true), None);
        assert_eq!(record(&t, &policy, true), Some(Transition::BecameHealthy));
        assert!(t.is_healthy());
    }
}
