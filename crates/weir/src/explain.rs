//! `weir explain`: which route a request would take and why, without sending anything.

use std::fmt::Write as _;

use weir_app::{Connector, Gateway};
use weir_config::Loaded;
use weir_domain::auth::{Provider, ProviderKind};
use weir_domain::discovery::{ConsulDiscovery, Discovery, DnsDiscovery, DnsQuery};
use weir_domain::path;
use weir_domain::retry::RetryPolicy;
use weir_domain::route::{Fallback, MethodSet, Route, RouteAction};
use weir_domain::router::{Lookup, RequestHead, RouteTable};
use weir_domain::upstream::Upstream;

/// The policies a route runs, in order, as `GET /routes` and `explain` print them.
#[must_use]
pub fn pipeline_steps<F: Connector, A, S, C>(
    gw: &Gateway<F, A, S, C>,
    route: &Route,
) -> Vec<String> {
    steps(&gw.upstreams, &gw.providers, gw.max_body_bytes, route)
}

fn steps(
    upstreams: &[Upstream],
    providers: &[Provider],
    default_max_body: u64,
    route: &Route,
) -> Vec<String> {
    let mut out = vec!["normalize_path".to_owned(), "route".to_owned()];
    let access = &route.access;
    if let Some(ip) = &access.ip {
        out.push(format!(
            "ip allow {} deny {}",
            ip.allow.len(),
            ip.deny.len()
        ));
    }
    if let Some(cors) = &access.cors {
        let origins = if cors.any_origin {
            "*".to_owned()
        } else {
            cors.origins.join(" ")
        };
        out.push(format!("cors {origins}"));
    }
    if let Some(auth) = &access.auth {
        let names: Vec<String> = auth
            .providers
            .iter()
            .filter_map(|id| providers.get(id.0))
            .map(|p| format!("{} ({})", p.name, kind_name(&p.kind)))
            .collect();
        out.push(format!("auth any of {}", names.join(", ")));
        if !auth.roles.is_empty() {
            out.push(format!("roles all of {}", auth.roles.join(", ")));
        }
    }
    let upstream_limits = match &route.action {
        RouteAction::Upstream(id) => upstreams.get(id.0).map_or(&[][..], |u| &u.rate_limits[..]),
        RouteAction::Respond(_) => &[],
    };
    for (owner, p) in route
        .rate_limits
        .iter()
        .map(|p| ("route", p))
        .chain(upstream_limits.iter().map(|p| ("upstream", p)))
    {
        out.push(format!(
            "rate_limit ({owner}) {} per {:?} by {}, burst {}",
            p.limit,
            p.per,
            p.key.describe(),
            p.burst
        ));
    }
    out.push(format!(
        "body_limit {} bytes",
        route.max_body_bytes.unwrap_or(default_max_body)
    ));
    if let Some(c) = &route.cache {
        out.push(format!(
            "cache in {} (GET/HEAD; key: host, path, sorted query{}{}), ttl {}ms when the upstream gives none, \
             stale {}ms while revalidating and {}ms on errors, bodies up to {} bytes",
            c.store.name(),
            if c.vary.is_empty() {
                String::new()
            } else {
                format!(", {}", c.vary.join(", "))
            },
            if c.per_consumer { ", consumer" } else { "" },
            c.ttl.as_millis(),
            c.stale_while_revalidate.as_millis(),
            c.stale_if_error.as_millis(),
            c.max_body
        ));
    }
    match &route.action {
        RouteAction::Respond(s) => out.push(format!("respond {}", s.status)),
        RouteAction::Upstream(id) => {
            let u = &upstreams[id.0];
            let t = &route.path_transform;
            if let Some(p) = &t.strip_prefix {
                out.push(format!("path.strip_prefix {p}"));
            }
            if let Some(rw) = &t.rewrite {
                out.push(format!("path.rewrite {} -> {}", rw.regex.as_str(), rw.to));
            }
            if let Some(p) = &t.add_prefix {
                out.push(format!("path.add_prefix {p}"));
            }
            out.push("forwarded_headers".to_owned());
            let tf = &route.transforms;
            for (what, ops) in [
                ("request", &tf.request_headers),
                ("response", &tf.response_headers),
            ] {
                if !ops.is_empty() {
                    let names = |list: &[(String, weir_domain::transform::Template)]| {
                        list.iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    out.push(format!(
                        "{what}.headers remove [{}] set [{}] add [{}]",
                        ops.remove.join(" "),
                        names(&ops.set),
                        names(&ops.add)
                    ));
                }
            }
            if !tf.query.is_empty() {
                out.push(format!(
                    "query remove [{}] set [{}]",
                    tf.query.remove.join(" "),
                    tf.query
                        .set
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            for (what, body) in [
                ("request", &tf.request_body),
                ("response", &tf.response_body),
            ] {
                if let Some(b) = body {
                    out.push(format!(
                        "{what}.body.json remove {} rename {} set {}{}",
                        b.json.remove.len(),
                        b.json.rename.len(),
                        b.json.set.len(),
                        if b.strict { " (strict)" } else { "" }
                    ));
                }
            }
            if let Some(g) = &route.grpc {
                if g.web {
                    out.push("grpc-web -> grpc (binary and text)".to_owned());
                }
                if !g.rules.is_empty() {
                    out.push(format!("grpc transcoding from {}", g.source));
                    for rule in &g.rules {
                        let streaming = if rule.server_streaming {
                            " (server stream: JSON array or NDJSON)"
                        } else {
                            ""
                        };
                        out.push(format!(
                            "  {} {} -> {}{streaming}",
                            rule.http_method,
                            rule.template.as_str(),
                            rule.grpc_path
                        ));
                    }
                }
            }
            let mut skipped = vec!["unhealthy"];
            if u.passive.is_some() {
                skipped.push("ejected");
            }
            if u.circuit_breaker.is_some() {
                skipped.push("circuit-open");
            }
            let over = match &u.discovery {
                Discovery::Static => format!("{} targets", u.static_targets.len()),
                Discovery::Dns(_) => "the targets DNS reports".to_owned(),
                Discovery::Etcd(_) => "the targets etcd lists".to_owned(),
                Discovery::Consul(_) => "the instances Consul reports passing".to_owned(),
            };
            out.push(format!(
                "load_balance {} over {over}, skipping {}",
                u.load_balancing.name(),
                skipped.join(", ")
            ));
            let timeout = route.timeout.unwrap_or(u.timeouts.request);
            out.push(format!(
                "forward to upstream \"{}\" (timeout {}ms)",
                u.name,
                timeout.as_millis()
            ));
            if let Some(p) = &u.passive {
                out.push(format!(
                    "passive_health eject after {} consecutive failures for {}ms (growing), at most {}% of targets",
                    p.consecutive_failures,
                    p.eject_for.as_millis(),
                    p.max_ejected_percent
                ));
            }
            if let Some(p) = &u.circuit_breaker {
                out.push(format!(
                    "circuit_breaker per target: open at {}% failures of >= {} requests in {}ms, for {}ms, then {} probes",
                    p.failure_ratio * 100.0,
                    p.min_requests,
                    p.window.as_millis(),
                    p.open_for.as_millis(),
                    p.half_open_requests
                ));
            }
            out.push(match &u.retry {
                Some(p) => retry_plan(p),
                None => "retry none (one try)".to_owned(),
            });
        }
    }
    out.push(match &route.fallback {
        None => "fallback none".to_owned(),
        Some(Fallback::Respond(s)) => format!(
            "fallback respond {} when the upstream is unavailable, failing or timed out",
            s.status
        ),
        Some(Fallback::Upstream(id)) => format!(
            "fallback upstream \"{}\" (one try) when the upstream is unavailable, failing or timed out",
            upstreams.get(id.0).map_or("?", |u| u.name.as_str())
        ),
    });
    out
}

fn describe_dns(d: &DnsDiscovery) -> String {
    let what = match &d.query {
        DnsQuery::Address { name, port } => format!("A/AAAA {name} port {port}"),
        DnsQuery::Srv { name } => format!("SRV {name}"),
    };
    let server = d
        .server
        .map_or_else(|| "the system resolver".to_owned(), |s| s.to_string());
    format!(
        "{what}, every {}s or the TTL, via {server}",
        d.refresh.as_secs()
    )
}

fn describe_consul(c: &ConsulDiscovery) -> String {
    let mut what = format!("passing instances of {:?}", c.service);
    if let Some(tag) = &c.tag {
        let _ = write!(what, " tagged {tag:?}");
    }
    if let Some(dc) = c.datacenter.as_ref().or(c.agent.datacenter.as_ref()) {
        let _ = write!(what, " in datacenter {dc:?}");
    }
    let _ = write!(what, ", watched on {}", c.agent.address);
    what
}

fn retry_plan(p: &RetryPolicy) -> String {
    let per_try = p
        .per_try_timeout
        .map_or_else(String::new, |t| format!(", {}ms per try", t.as_millis()));
    format!(
        "retry up to {} attempts on {} ({}), backoff {}..{}ms x{}{}{}, body replayed up to {} bytes, budget {}% of requests + {}/s",
        p.attempts,
        p.on.names().join(" "),
        if p.idempotent_only {
            "idempotent methods only"
        } else {
            "any method"
        },
        p.backoff.initial.as_millis(),
        p.backoff.max.as_millis(),
        p.backoff.multiplier,
        if p.backoff.jitter { " full jitter" } else { "" },
        per_try,
        weir_domain::retry::MAX_REPLAY_BODY,
        p.budget.ratio * 100.0,
        p.budget.min_per_second
    )
}

fn kind_name(kind: &ProviderKind) -> &'static str {
    match kind {
        ProviderKind::ApiKey(_) => "api_key",
        ProviderKind::Basic(_) => "basic",
        ProviderKind::Jwt(_) => "jwt",
        ProviderKind::OAuth2(_) => "oauth2",
    }
}

struct Head {
    host: Option<String>,
    method_bit: u16,
    headers: Vec<(String, String)>,
}

impl RequestHead for Head {
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn method_bit(&self) -> u16 {
        self.method_bit
    }
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_bytes())
    }
}

/// Renders the explanation, or an error message for a malformed request description.
pub fn explain(
    loaded: &Loaded,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<String, String> {
    let method = method.to_ascii_uppercase();
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("cannot parse URL {url:?}: {e}"))?;
    let mut parsed = Vec::new();
    for h in headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} is not 'Name: value'"))?;
        parsed.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let host = parsed
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.clone())
        .or_else(|| uri.host().map(str::to_owned))
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h.clone(), |(a, _)| a.to_owned())
                .to_ascii_lowercase()
        });
    let head = Head {
        host,
        method_bit: MethodSet::bit(&method).unwrap_or(0),
        headers: parsed,
    };
    let raw_path = uri.path();
    let mut out = String::new();
    let _ = writeln!(out, "request: {method} {url}");
    let normalized = match path::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "answer: 400 bad_request ({e})");
            return Ok(out);
        }
    };
    if normalized != raw_path {
        let _ = writeln!(out, "normalized path: {normalized}");
    }
    let table: &RouteTable = &loaded.routes;
    match table.lookup(&head, &normalized) {
        Lookup::Found(found) => {
            let r = found.route;
            let _ = writeln!(out, "route: \"{}\" (routes[{}])", r.name, r.index);
            let mut why = format!("{} {}", r.matcher.path.kind(), r.matcher.path);
            if !found.params.is_empty() {
                let ps: Vec<String> = found
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = write!(why, " with {}", ps.join(", "));
            }
            if let Some(h) = &r.matcher.host {
                let _ = write!(why, "; host {h}");
            }
            if !r.matcher.headers.is_empty() {
                let _ = write!(why, "; {} header condition(s)", r.matcher.headers.len());
            }
            let _ = write!(why, "; priority {}", r.priority);
            let _ = writeln!(out, "  why: {why}");
            write_candidates(&mut out, table, &head, &normalized);
            if let RouteAction::Upstream(id) = &r.action {
                let u = &loaded.upstreams[id.0];
                let _ = writeln!(
                    out,
                    "upstream: \"{}\" ({})",
                    u.name,
                    u.load_balancing.name()
                );
                match &u.discovery {
                    Discovery::Static => {}
                    Discovery::Dns(d) => {
                        let _ = writeln!(out, "  targets from DNS: {}", describe_dns(d));
                    }
                    Discovery::Etcd(e) => {
                        let _ = writeln!(
                            out,
                            "  targets from etcd: the keys under {:?}, watched on {}",
                            e.prefix,
                            e.cluster.endpoints.join(", ")
                        );
                    }
                    Discovery::Consul(c) => {
                        let _ = writeln!(out, "  targets from Consul: {}", describe_consul(c));
                    }
                }
                for t in &u.static_targets {
                    let _ = writeln!(out, "  target {} weight {}", t.url, t.weight);
                }
                let _ = writeln!(
                    out,
                    "  (target health is known only to a running gateway: see GET /upstreams)"
                );
            }
            let _ = writeln!(out, "pipeline:");
            let plan = steps(
                &loaded.upstreams,
                &loaded.auth.providers,
                loaded.settings.limits.max_body_bytes,
                r,
            );
            for (i, s) in plan.iter().enumerate() {
                let _ = writeln!(out, "  {}. {s}", i + 1);
            }
        }
        Lookup::MethodNotAllowed(allow) => {
            let _ = writeln!(
                out,
                "answer: 405 method_not_allowed (Allow: {})",
                allow.names().collect::<Vec<_>>().join(", ")
            );
            write_candidates(&mut out, table, &head, &normalized);
        }
        Lookup::NotFound => {
            let _ = writeln!(out, "answer: 404 route_not_found: no route matches");
            write_candidates(&mut out, table, &head, &normalized);
        }
    }
    Ok(out)
}

fn write_candidates(out: &mut String, table: &RouteTable, head: &Head, path: &str) {
    let _ = writeln!(out, "routes, in match order:");
    for r in table.routes_in_match_order() {
        match r.matcher.mismatch(head, path) {
            None => {
                let _ = writeln!(
                    out,
                    "  + {:<24} {} {}  matches",
                    r.name,
                    r.matcher.path.kind(),
                    r.matcher.path
                );
            }
            Some(why) => {
                let _ = writeln!(
                    out,
                    "  - {:<24} {} {}  no: {why}",
                    r.name,
                    r.matcher.path.kind(),
                    r.matcher.path
                );
            }
        }
    }
}
