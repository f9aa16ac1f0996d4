//! What the admin API shows of upstreams: `GET /upstreams` and the per-upstream and
//! per-target metric families. Both read the live atomics of the current snapshot.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use weir_app::clock;
use weir_domain::upstream::{Protocol, Target, Upstream};
use weir_infra::metrics::{FailureReason, family, label};

use crate::snapshot::Snapshot;

/// In rotation as far as health goes: passing active checks and not ejected.
fn healthy(up: &Upstream, t: &Target, now_ms: u64) -> bool {
    t.is_healthy() && !(up.passive.is_some() && t.outlier.is_ejected(now_ms))
}

/// `GET /upstreams`.
#[must_use]
pub fn json(snap: &Snapshot) -> Value {
    let now = clock::now_ms();
    let list: Vec<Value> = snap
        .gateway
        .upstreams
        .iter()
        .enumerate()
        .map(|(id, u)| {
            let members = snap.gateway.members(id);
            let live = &members.set.targets;
            let targets: Vec<Value> = live
                .iter()
                .map(|t| {
                    let recent = u.recent(t, now);
                    let ejected = u.passive.is_some() && t.outlier.is_ejected(now);
                    json!({
                        "url": t.url,
                        "weight": t.weight,
                        "healthy": t.is_healthy(),
                        "ejected": ejected,
                        "ejected_for_ms": if ejected { t.outlier.remaining_ms(now) } else { 0 },
                        "ejections": t.outlier.ejections(),
                        "circuit": t.breaker.state().name(),
                        "available": u.available(t, now),
                        "in_flight": t.in_flight(),
                        "window_requests": recent.requests,
                        "failure_ratio": recent.failure_ratio,
                    })
                })
                .collect();
            json!({
                "name": u.name,
                "load_balancing": u.load_balancing.name(),
                "discovery": {
                    "source": u.discovery.kind(),
                    "stale": u.discovery_state.is_stale(),
                    "updated_ms_ago": match u.discovery_state.updated_ms() {
                        0 => Value::Null,
                        at => json!(now.saturating_sub(at)),
                    },
                },
                "protocol": match u.protocol { Protocol::Http1 => "http1", Protocol::Http2 => "http2", Protocol::Grpc => "grpc" },
                "timeouts_ms": {
                    "connect": u.timeouts.connect.as_millis() as u64,
                    "request": u.timeouts.request.as_millis() as u64,
                },
                "active_health_check": u.health_check.is_some(),
                "passive": u.passive.as_ref().map(|p| json!({
                    "consecutive_failures": p.consecutive_failures,
                    "eject_for_ms": p.eject_for.as_millis() as u64,
                    "max_ejected_percent": p.max_ejected_percent,
                })),
                "circuit_breaker": u.circuit_breaker.as_ref().map(|p| json!({
                    "failure_ratio": p.failure_ratio,
                    "min_requests": p.min_requests,
                    "window_ms": p.window.as_millis() as u64,
                    "open_for_ms": p.open_for.as_millis() as u64,
                    "half_open_requests": p.half_open_requests,
                })),
                "retry": u.retry.as_ref().map(|p| json!({
                    "attempts": p.attempts,
                    "on": p.on.names(),
                    "idempotent_only": p.idempotent_only,
                    "per_try_timeout_ms": p.per_try_timeout.map(|d| d.as_millis() as u64),
                    "backoff": {
                        "initial_ms": p.backoff.initial.as_millis() as u64,
                        "max_ms": p.backoff.max.as_millis() as u64,
                        "multiplier": p.backoff.multiplier,
                        "jitter": if p.backoff.jitter { "full" } else { "none" },
                    },
                })),
                "retry_budget": u.retry.as_ref().map(|p| {
                    let t = u.budget.totals(now);
                    json!({
                        "ratio": p.budget.ratio,
                        "min_per_second": p.budget.min_per_second,
                        "window_requests": t.a,
                        "window_retries": t.b,
                        "retries": u.budget.retries(),
                        "exhausted": u.budget.exhausted(),
                    })
                }),
                "healthy_targets": live.iter().filter(|t| healthy(u, t, now)).count(),
                "available_targets": live.iter().filter(|t| u.available(t, now)).count(),
                "targets": targets,
            })
        })
        .collect();
    json!({ "upstreams": list })
}

/// The upstream and target metric families.
pub fn render_metrics(out: &mut String, snap: &Snapshot) {
    let now = clock::now_ms();
    let upstreams = &snap.gateway.upstreams;
    family(
        out,
        "weir_upstream_requests_total",
        "counter",
        "Tries that got a response head, by upstream, target and status.",
    );
    for (u, up) in upstreams.iter().enumerate() {
        let m = snap.gateway.members(u);
        for (target, conn) in m.set.targets.iter().zip(&m.conns) {
            let (counts, _) = conn.metrics.responses.snapshot();
            for (status, n) in counts {
                let _ = writeln!(
                    out,
                    "weir_upstream_requests_total{{upstream=\"{}\",target=\"{}\",status=\"{status}\"}} {n}",
                    label(&up.name),
                    label(&target.url)
                );
            }
        }
    }
    family(
        out,
        "weir_upstream_failures_total",
        "counter",
        "Tries that got no response head, by upstream, target and reason (connect, reset, timeout).",
    );
    for (u, up) in upstreams.iter().enumerate() {
        let m = snap.gateway.members(u);
        for (target, conn) in m.set.targets.iter().zip(&m.conns) {
            for reason in FailureReason::ALL {
                let n = conn.metrics.failures[reason as usize].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "weir_upstream_failures_total{{upstream=\"{}\",target=\"{}\",reason=\"{}\"}} {n}",
                        label(&up.name),
                        label(&target.url),
                        reason.label()
                    );
                }
            }
        }
    }
    family(
        out,
        "weir_upstream_duration_seconds",
        "histogram",
        "Time from sending a try to its response head.",
    );
    for (u, up) in upstreams.iter().enumerate() {
        snap.upstream_metrics[u].duration.render_into(
            out,
            "weir_upstream_duration_seconds",
            &format!("upstream=\"{}\"", label(&up.name)),
        );
    }
    per_target(
        out,
        snap,
        (
            "weir_upstream_target_healthy",
            "gauge",
            "1 when the target is in rotation: passing active checks and not ejected.",
        ),
        |up, t| u64::from(healthy(up, t, now)),
    );
    per_target(
        out,
        snap,
        (
            "weir_circuit_breaker_state",
            "gauge",
            "The target's circuit: 0 closed, 1 open, 2 half-open.",
        ),
        |_, t| t.breaker.state() as u64,
    );
    per_target(
        out,
        snap,
        (
            "weir_outlier_ejections_total",
            "counter",
            "Times passive health ejected the target.",
        ),
        |_, t| t.outlier.ejections(),
    );
    family(
        out,
        "weir_discovery_stale",
        "gauge",
        "1 while the upstream's discovery source fails and its last-known-good targets are used.",
    );
    for up in upstreams {
        let _ = writeln!(
            out,
            "weir_discovery_stale{{upstream=\"{}\"}} {}",
            label(&up.name),
            u8::from(up.discovery_state.is_stale())
        );
    }
    for (metric, help, read) in [
        (
            "weir_retries_total",
            "Retries sent (tries after the first), by upstream.",
            (|u: &Upstream| u.budget.retries()) as fn(&Upstream) -> u64,
        ),
        (
            "weir_retry_budget_exhausted_total",
            "Retries the upstream's retry budget refused.",
            |u: &Upstream| u.budget.exhausted(),
        ),
    ] {
        family(out, metric, "counter", help);
        for up in upstreams.iter().filter(|u| u.retry.is_some()) {
            let _ = writeln!(
                out,
                "{metric}{{upstream=\"{}\"}} {}",
                label(&up.name),
                read(up)
            );
        }
    }
}

fn per_target(
    out: &mut String,
    snap: &Snapshot,
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&Upstream, &Target) -> u64,
) {
    family(out, name, kind, help);
    for (u, up) in snap.gateway.upstreams.iter().enumerate() {
        for t in &snap.gateway.members(u).set.targets {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",target=\"{}\"}} {}",
                label(&up.name),
                label(&t.url),
                value(up, t)
            );
        }
    }
}
