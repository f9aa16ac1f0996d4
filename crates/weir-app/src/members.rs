//! An upstream's current targets and what reaching each takes, swapped as a whole when
//! discovery changes them. A request loads the set once and uses it for all its tries, so a
//! change never pulls a target out from under a request in flight.

use std::collections::HashMap;
use std::sync::Arc;

use http::uri::Authority;
use weir_domain::discovery::Endpoint;
use weir_domain::upstream::{Target, TargetSet, Upstream};

use crate::forward::Connector;

/// The balancer indexes targets with 16 bits.
const MAX_TARGETS: usize = u16::MAX as usize;

/// One upstream's targets at one moment, with per-target state at the same index.
#[derive(Debug)]
pub struct Members<C> {
    pub set: TargetSet,
    pub conns: Vec<C>,
    /// Each target's authority, parsed once.
    pub authorities: Vec<Authority>,
}

impl<C: Clone> Members<C> {
    /// The first set: the upstream's static targets.
    pub fn initial<F: Connector<Conn = C>>(
        upstream: &Upstream,
        connector: &F,
    ) -> Result<Self, String> {
        let mut conns = Vec::with_capacity(upstream.static_targets.len());
        let mut authorities = Vec::with_capacity(upstream.static_targets.len());
        for t in &upstream.static_targets {
            authorities.push(authority(t)?);
            conns.push(connector.conn(t));
        }
        Ok(Self {
            set: TargetSet::new(upstream.load_balancing, upstream.static_targets.clone()),
            conns,
            authorities,
        })
    }

    /// The set after a source reported `endpoints`: targets that stay keep their state
    /// (health, circuit, ejection, connections); new ones start fresh. `None` when nothing
    /// changed, so the balancer's rotation is not reset for nothing.
    pub fn update<F: Connector<Conn = C>>(
        &self,
        upstream: &Upstream,
        connector: &F,
        endpoints: &[Endpoint],
    ) -> Option<Self> {
        let unchanged = endpoints.len() == self.set.targets.len()
            && endpoints
                .iter()
                .zip(&self.set.targets)
                .all(|(e, t)| e.url == t.url && e.weight.max(1) == t.weight);
        if unchanged {
            return None;
        }
        let current: HashMap<&str, usize> = self
            .set
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.url.as_str(), i))
            .collect();
        let mut targets = Vec::with_capacity(endpoints.len());
        let mut conns = Vec::with_capacity(endpoints.len());
        let mut authorities = Vec::with_capacity(endpoints.len());
        for e in endpoints.iter().take(MAX_TARGETS) {
            match current.get(e.url.as_str()) {
                Some(&i) => {
                    let old = &self.set.targets[i];
                    // A new weight is a new target for the balancer; its connections stay.
                    let target = if old.weight == e.weight.max(1) {
                        Arc::clone(old)
                    } else {
                        Arc::new(Target::new(e.url.clone(), e.addr.clone(), e.weight))
                    };
                    targets.push(target);
                    conns.push(self.conns[i].clone());
                    authorities.push(self.authorities[i].clone());
                }
                None => {
                    let target = Arc::new(Target::new(e.url.clone(), e.addr.clone(), e.weight));
                    let Ok(a) = authority(&target) else {
                        tracing::warn!(upstream = %upstream.name, target_url = %e.url, "discovered target has no usable address; skipped");
                        continue;
                    };
                    conns.push(connector.conn(&target));
                    authorities.push(a);
                    targets.push(target);
                }
            }
        }
        Some(Self {
            set: TargetSet::new(upstream.load_balancing, targets),
            conns,
            authorities,
        })
    }
}

fn authority(t: &Target) -> Result<Authority, String> {
    Authority::try_from(t.addr.authority.as_str()).map_err(|e| format!("target {}: {e}", t.url))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use weir_domain::balance::LoadBalancing;
    use weir_domain::discovery::{Discovery, DiscoveryState};
    use weir_domain::retry::RetryBudget;
    use weir_domain::upstream::{Protocol, Timeouts};

    use super::*;

    /// Numbers its conns, so a test can tell a kept one from a new one.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Connector for Counting {
        type Conn = usize;
        fn conn(&self, _: &Target) -> usize {
            self.0.fetch_add(1, Ordering::Relaxed)
        }
    }

    fn upstream() -> Upstream {
        Upstream {
            name: "be".into(),
            static_targets: Vec::new(),
            load_balancing: LoadBalancing::RoundRobin,
            discovery: Discovery::Static,
            discovery_state: DiscoveryState::default(),
            hash_key: None,
            protocol: Protocol::Http1,
            timeouts: Timeouts {
                connect: std::time::Duration::from_secs(1),
                request: std::time::Duration::from_secs(1),
            },
            health_check: None,
            rate_limits: Vec::new(),
            passive: None,
            circuit_breaker: None,
            retry: None,
            budget: RetryBudget::default(),
            tls: None,
        }
    }

    fn endpoints(list: &[(&str, u32)]) -> Vec<Endpoint> {
        list.iter()
            .map(|(a, w)| Endpoint::from_socket(a.parse().unwrap(), *w))
            .collect()
    }

    #[test]
    fn targets_that_stay_keep_their_state_and_new_ones_start_fresh() {
        let (u, c) = (upstream(), Counting::default());
        let empty = Members::initial(&u, &c).unwrap();
        let one = empty
            .update(
                &u,
                &c,
                &endpoints(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]),
            )
            .unwrap();
        assert_eq!(one.conns, [0, 1]);
        one.set.targets[0].set_healthy(false);
        // Same answer: nothing to swap.
        assert!(
            one.update(
                &u,
                &c,
                &endpoints(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)])
            )
            .is_none()
        );
        let two = one
            .update(
                &u,
                &c,
                &endpoints(&[("10.0.0.1:80", 1), ("10.0.0.3:80", 1)]),
            )
            .unwrap();
        assert!(Arc::ptr_eq(&two.set.targets[0], &one.set.targets[0]));
        assert!(!two.set.targets[0].is_healthy(), "health is kept");
        assert_eq!(two.conns, [0, 2], "the kept target keeps its connections");
        assert_eq!(two.authorities[1].as_str(), "10.0.0.3:80");
        // A new weight is a new target for the balancer, on the same connections.
        let three = two
            .update(
                &u,
                &c,
                &endpoints(&[("10.0.0.1:80", 5), ("10.0.0.3:80", 1)]),
            )
            .unwrap();
        assert_eq!(three.set.targets[0].weight, 5);
        assert_eq!(three.conns, [0, 2]);
        // An empty answer empties the set.
        assert!(three.update(&u, &c, &[]).unwrap().set.targets.is_empty());
    }
}
