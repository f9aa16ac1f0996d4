//! Checking upstreams and building the domain's `Upstream`s, in file order (their ids).

use std::path::Path;
use std::sync::Arc;

use weir_domain::balance::LoadBalancing;
use weir_domain::discovery::{Discovery, DiscoveryState};
use weir_domain::retry::RetryBudget;
use weir_domain::upstream::{
    ActiveHealthCheck, HashKey, Protocol, Target, TargetAddr, Timeouts, Upstream,
};

use crate::checks::duration;
use crate::model::{ActiveCheckConfig, UpstreamConfig};
use crate::node::KeyPath;
use crate::ratelimit;
use crate::registries::Registries;
use crate::report::Report;
use crate::resilience;
use crate::settings::at_least_one;

/// The balancer indexes targets with 16 bits.
const MAX_TARGETS: usize = u16::MAX as usize;

/// One entry per upstream of the file, `None` where it has problems (all reported).
pub(crate) fn build(
    upstreams: &[(String, Option<UpstreamConfig>)],
    registries: &Registries,
    dir: &Path,
    r: &mut Report<'_>,
) -> Vec<Option<Upstream>> {
    let list = KeyPath::root().key("upstreams");
    upstreams
        .iter()
        .map(|(name, cfg)| {
            let path = list.key(name);
            if name.trim().is_empty() {
                r.at_key(&path, "an upstream needs a non-empty name");
                return None;
            }
            upstream(name, cfg.as_ref()?, registries, dir, &path, r)
        })
        .collect()
}

fn upstream(
    name: &str,
    u: &UpstreamConfig,
    registries: &Registries,
    dir: &Path,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Upstream> {
    let before = r.issues.len();
    let discovery = match &u.discovery {
        Some(d) => {
            if !u.targets.is_empty() {
                r.at_key(
                    &path.key("discovery"),
                    "list `targets` or set `discovery`, not both",
                );
            }
            crate::discovery::build(d, registries, &path.key("discovery"), r)
        }
        None => Some(Discovery::Static),
    };
    let hc = path.key("health_check");

    let targets = targets(u, path, r);
    let tls = tls(u, targets.as_deref(), dir, path, r);
    let policy = r.check(
        &path.key("load_balancing"),
        LoadBalancing::parse(u.load_balancing.trim()),
    );
    let hash_key = match (policy, &u.hash_key) {
        (Some(LoadBalancing::ConsistentHash), Some(key)) => r
            .check(&path.key("hash_key"), HashKey::parse(key.trim()))
            .map(Some),
        // The client address is always there, so it is the default key.
        (Some(LoadBalancing::ConsistentHash), None) => Some(Some(HashKey::Ip)),
        (Some(_), Some(_)) => {
            r.at(
                &path.key("hash_key"),
                "hash_key is used only by load_balancing: consistent_hash",
            );
            None
        }
        (_, None) => Some(None),
        (None, Some(_)) => None,
    };
    let protocol = match u.protocol.trim() {
        "http1" => Some(Protocol::Http1),
        "http2" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        other => {
            r.at(
                &path.key("protocol"),
                format!("\"{other}\" is not one of http1, http2, grpc"),
            );
            None
        }
    };
    let t = path.key("timeouts");
    let connect = duration(r, &t.key("connect"), &u.timeouts.connect, true);
    let request = duration(r, &t.key("request"), &u.timeouts.request, true);
    let health_check = match &u.health_check.active {
        Some(active) => active_check(active, &hc.key("active"), r).map(Some),
        None => Some(None),
    };
    let rate_limits = ratelimit::build(&u.rate_limit, &path.key("rate_limit"), r);
    let passive = match &u.health_check.passive {
        Some(p) => resilience::passive(p, &hc.key("passive"), r).map(Some),
        None => Some(None),
    };
    let circuit_breaker = match &u.circuit_breaker {
        Some(c) => resilience::breaker(c, &path.key("circuit_breaker"), r).map(Some),
        None => Some(None),
    };
    let retry = match &u.retry {
        Some(c) => resilience::retry(c, &path.key("retry"), r).map(Some),
        None => Some(None),
    };
    if r.issues.len() != before {
        return None;
    }
    let targets = if u.discovery.is_some() {
        Vec::new()
    } else {
        targets?
    };
    Some(Upstream {
        name: name.to_owned(),
        load_balancing: policy?,
        static_targets: targets,
        discovery: discovery?,
        discovery_state: DiscoveryState::default(),
        hash_key: hash_key?,
        protocol: protocol?,
        timeouts: Timeouts {
            connect: connect?,
            request: request?,
        },
        health_check: health_check?,
        rate_limits: rate_limits?,
        passive: passive?,
        circuit_breaker: circuit_breaker?,
        retry: retry?,
        budget: RetryBudget::default(),
        tls: tls?,
    })
}

/// An upstream speaks TLS to all its targets or to none: with `tls` set, or with
/// `https://` targets (then all of them).
fn tls(
    u: &UpstreamConfig,
    targets: Option<&[Arc<Target>]>,
    dir: &Path,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Option<weir_domain::upstream::UpstreamTls>> {
    let targets = targets.unwrap_or_default();
    let https = targets.iter().filter(|t| t.addr.scheme == "https").count();
    let list = path.key("targets");
    if (u.tls.is_some() || https > 0)
        && let Some(i) = targets.iter().position(|t| t.addr.scheme != "https")
    {
        let why = if u.tls.is_some() {
            "this upstream speaks TLS (`tls` is set), so its targets are https://"
        } else {
            "an upstream's targets are all https:// or all http://"
        };
        r.at(&list.index(i).key("url"), why);
        return None;
    }
    match &u.tls {
        Some(c) => crate::tls::upstream(c, &path.key("tls"), dir, r).map(Some),
        None if https > 0 => Some(Some(weir_domain::upstream::UpstreamTls::default())),
        None => Some(None),
    }
}

fn targets(u: &UpstreamConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<Vec<Arc<Target>>> {
    let list = path.key("targets");
    if u.targets.is_empty() {
        // With `discovery` the missing targets are explained by that key's problem.
        if u.discovery.is_none() {
            r.at(
                &list,
                "an upstream needs at least one target, such as { url: http://10.0.0.1:9000 }",
            );
        }
        return None;
    }
    if u.targets.len() > MAX_TARGETS {
        r.at(
            &list,
            format!("an upstream can have at most {MAX_TARGETS} targets"),
        );
        return None;
    }
    let mut out = Some(Vec::with_capacity(u.targets.len()));
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, t) in u.targets.iter().enumerate() {
        let item = list.index(i);
        let url = t.url.trim();
        let addr = if has_user_info(url) {
            // Never echo a URL that may carry a password.
            r.at(
                &item.key("url"),
                "a target URL must not carry a user or password",
            );
            None
        } else {
            r.check(&item.key("url"), TargetAddr::parse(url))
        };
        let weight = at_least_one(r, &item.key("weight"), u64::from(t.weight));
        if let Some(a) = &addr {
            let key = a.to_string();
            if let Some((_, j)) = seen.iter().find(|(k, _)| *k == key) {
                r.at(
                    &item.key("url"),
                    format!("duplicate target {key} (also targets[{j}])"),
                );
                out = None;
            }
            seen.push((key, i));
        }
        match (addr, weight, &mut out) {
            (Some(addr), Some(_), Some(v)) => {
                v.push(Arc::new(Target::new(url.to_owned(), addr, t.weight)));
            }
            _ => out = None,
        }
    }
    out
}

fn has_user_info(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

fn active_check(
    a: &ActiveCheckConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<ActiveHealthCheck> {
    let probe = if a.path.starts_with('/') {
        Some(a.path.clone())
    } else {
        r.at(&path.key("path"), "a health check path must start with '/'");
        None
    };
    let interval = duration(r, &path.key("interval"), &a.interval, true);
    let timeout = duration(r, &path.key("timeout"), &a.timeout, true);
    let healthy = at_least_one(
        r,
        &path.key("healthy_threshold"),
        u64::from(a.healthy_threshold),
    );
    let unhealthy = at_least_one(
        r,
        &path.key("unhealthy_threshold"),
        u64::from(a.unhealthy_threshold),
    );
    healthy?;
    unhealthy?;
    Some(ActiveHealthCheck {
        path: probe?,
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: a.healthy_threshold,
        unhealthy_threshold: a.unhealthy_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_detected_in_the_authority_only() {
        assert!(has_user_info("http://u:p@host:80"));
        assert!(!has_user_info("http://host:80"));
        assert!(!has_user_info("http://host/a@b"));
    }
}
