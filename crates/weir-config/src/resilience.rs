//! Checking the resilience keys and building their domain policies: an upstream's
//! `health_check.passive`, `circuit_breaker` and `retry`, and a route's `fallback`.

use std::time::Duration;

use weir_domain::breaker::{BreakerPolicy, MAX_PROBES};
use weir_domain::outlier::PassivePolicy;
use weir_domain::retry::{Backoff, BudgetPolicy, RetryOn, RetryPolicy};
use weir_domain::route::Fallback;

use crate::checks::{duration, header_value};
use crate::model::{
    BackoffConfig, BudgetConfig, CircuitBreakerConfig, OrderedMap, PassiveCheckConfig, RetryConfig,
    RouteConfig,
};
use crate::node::KeyPath;
use crate::report::Report;
use crate::routes::{static_response, upstream_id};
use crate::settings::at_least_one;

/// The most tries `retry.attempts` may ask for, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// The shortest breaker window: it slides in tenths, counted in whole milliseconds.
const MIN_WINDOW: Duration = Duration::from_millis(100);

/// `health_check.passive`.
pub(crate) fn passive(
    c: &PassiveCheckConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<PassivePolicy> {
    let failures = at_least_one(
        r,
        &path.key("consecutive_failures"),
        u64::from(c.consecutive_failures),
    );
    let eject_for = duration(r, &path.key("eject_for"), &c.eject_for, true);
    let percent = match u8::try_from(c.max_ejected_percent) {
        Ok(p) if p <= 100 => Some(p),
        _ => {
            r.at(
                &path.key("max_ejected_percent"),
                format!("{} is not between 0 and 100", c.max_ejected_percent),
            );
            None
        }
    };
    failures?;
    Some(PassivePolicy {
        consecutive_failures: c.consecutive_failures,
        eject_for: eject_for?,
        max_ejected_percent: percent?,
    })
}

/// `circuit_breaker`.
pub(crate) fn breaker(
    c: &CircuitBreakerConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<BreakerPolicy> {
    let ratio = c.failure_ratio;
    let failure_ratio = if ratio > 0.0 && ratio <= 1.0 {
        Some(ratio)
    } else {
        r.at(
            &path.key("failure_ratio"),
            format!("{ratio} is not a share of the tries: more than 0 and at most 1, such as 0.5"),
        );
        None
    };
    let min_requests = at_least_one(r, &path.key("min_requests"), u64::from(c.min_requests));
    let window = match duration(r, &path.key("window"), &c.window, false) {
        Some(w) if w < MIN_WINDOW => {
            r.at(
                &path.key("window"),
                "must be at least 100ms: the window slides in tenths, each a whole number of \
                 milliseconds",
            );
            None
        }
        w => w,
    };
    let open_for = duration(r, &path.key("open_for"), &c.open_for, true);
    let probes = c.half_open_requests;
    let half_open_requests = if (1..=MAX_PROBES).contains(&probes) {
        Some(probes)
    } else {
        r.at(
            &path.key("half_open_requests"),
            format!("{probes} is not between 1 and {MAX_PROBES}"),
        );
        None
    };
    min_requests?;
    Some(BreakerPolicy {
        failure_ratio: failure_ratio?,
        min_requests: c.min_requests,
        window: window?,
        open_for: open_for?,
        half_open_requests: half_open_requests?,
    })
}

/// `retry`.
pub(crate) fn retry(c: &RetryConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<RetryPolicy> {
    let attempts = if (1..=MAX_ATTEMPTS).contains(&c.attempts) {
        Some(c.attempts)
    } else {
        r.at(
            &path.key("attempts"),
            format!(
                "{} is not between 1 and {MAX_ATTEMPTS} (tries in all, the first included)",
                c.attempts
            ),
        );
        None
    };
    let backoff = backoff(&c.backoff, &path.key("backoff"), r);
    let on = retry_on(&c.on, &path.key("on"), r);
    let per_try_timeout = match &c.per_try_timeout {
        Some(d) => duration(r, &path.key("per_try_timeout"), d, true).map(Some),
        None => Some(None),
    };
    let budget = budget(&c.budget, &path.key("budget"), r);
    Some(RetryPolicy {
        attempts: attempts?,
        backoff: backoff?,
        on: on?,
        idempotent_only: c.idempotent_only,
        per_try_timeout: per_try_timeout?,
        budget: budget?,
    })
}

fn backoff(c: &BackoffConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<Backoff> {
    let initial = duration(r, &path.key("initial"), &c.initial, false);
    let max = duration(r, &path.key("max"), &c.max, false);
    let order = match (initial, max) {
        (Some(i), Some(m)) if i > m => {
            r.at(
                &path.key("initial"),
                format!(
                    "{} is longer than max ({}); the first wait cannot exceed the longest",
                    c.initial.text(),
                    c.max.text()
                ),
            );
            None
        }
        _ => Some(()),
    };
    let m = c.multiplier;
    let multiplier = if m >= 1.0 && m.is_finite() {
        Some(m)
    } else {
        r.at(
            &path.key("multiplier"),
            format!("{m} is less than 1: each wait is at least the one before"),
        );
        None
    };
    let jitter = match c.jitter.trim() {
        "full" => Some(true),
        "none" => Some(false),
        other => {
            r.at(
                &path.key("jitter"),
                format!("\"{other}\" is not one of full, none"),
            );
            None
        }
    };
    order?;
    Some(Backoff {
        initial: initial?,
        max: max?,
        multiplier: multiplier?,
        jitter: jitter?,
    })
}

/// `retry.on`: each entry at its own line and column.
fn retry_on(list: &[String], path: &KeyPath, r: &mut Report<'_>) -> Option<RetryOn> {
    if list.is_empty() {
        r.at(
            path,
            "list at least one failure to retry (connect_failure, reset, timeout or a 5xx status \
             such as \"503\"), or remove `retry`",
        );
        return None;
    }
    let mut on = RetryOn::default();
    let mut seen: Vec<(&str, usize)> = Vec::with_capacity(list.len());
    let mut ok = true;
    for (j, name) in list.iter().enumerate() {
        let at = path.index(j);
        let name = name.trim();
        if let Some((_, k)) = seen.iter().find(|(n, _)| *n == name) {
            r.at(&at, format!("\"{name}\" is listed twice (also on[{k}])"));
            ok = false;
            continue;
        }
        seen.push((name, j));
        ok &= r.check(&at, on.add(name)).is_some();
    }
    ok.then_some(on)
}

fn budget(c: &BudgetConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<BudgetPolicy> {
    let ratio = c.ratio;
    if ratio > 0.0 && ratio.is_finite() {
        Some(BudgetPolicy {
            ratio,
            min_per_second: c.min_per_second,
        })
    } else {
        r.at(
            &path.key("ratio"),
            format!("{ratio} is not a share of the requests: more than 0, such as 0.2"),
        );
        None
    }
}

/// A route's `fallback`: `Some(None)` when it has none, `None` when it is wrong (reported).
pub(crate) fn fallback(
    cfg: &RouteConfig,
    path: &KeyPath,
    upstream_names: &[&str],
    r: &mut Report<'_>,
) -> Option<Option<Fallback>> {
    let Some(f) = &cfg.fallback else {
        return Some(None);
    };
    let at = path.key("fallback");
    if cfg.respond.is_some() {
        r.at_key(&at, "a respond route never fails over; remove `fallback`");
        return None;
    }
    let response_keys = f.response_keys();
    if let Some(name) = &f.upstream {
        if !response_keys.is_empty() {
            r.at(
                &at,
                format!(
                    "a fallback is either `upstream` or a response, not both (found upstream and {})",
                    response_keys.join(", ")
                ),
            );
            return None;
        }
        let at = at.key("upstream");
        let id = upstream_id(name, upstream_names, &at, r)?;
        if cfg.upstream.as_deref() == Some(name.as_str()) {
            r.at(
                &at,
                format!(
                    "\"{name}\" is the route's own upstream; a fallback upstream must be another one"
                ),
            );
            return None;
        }
        return Some(Some(Fallback::Upstream(id)));
    }
    let empty = OrderedMap::default();
    let headers = f.headers.as_ref().unwrap_or(&empty);
    let mut ok = true;
    if let Some(ct) = &f.content_type {
        let ct_at = at.key("content_type");
        if ct.trim().is_empty() {
            r.at(&ct_at, "a content type cannot be empty");
            ok = false;
        } else {
            ok &= r.check(&ct_at, header_value(ct)).is_some();
        }
        if let Some((name, _)) = headers
            .0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            r.at(
                &at.key("headers").key(name),
                "Content-Type is already set by content_type; set it in one place",
            );
            ok = false;
        }
    }
    let status = f.status.unwrap_or(200);
    let body = f.body.as_deref().unwrap_or_default();
    let mut response = static_response(status, headers, body, &at, r)?;
    if !ok {
        return None;
    }
    if let Some(ct) = &f.content_type {
        response
            .headers
            .insert(0, ("Content-Type".to_owned(), ct.trim().to_owned()));
    }
    Some(Some(Fallback::Respond(response)))
}
