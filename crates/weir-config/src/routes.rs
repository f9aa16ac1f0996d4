//! Checking routes and building the domain's route table.

use std::sync::Arc;

use weir_domain::route::{
    HeaderCondition, HostPattern, MethodSet, PathPattern, PathTransform, Rewrite, Route,
    RouteAction, RouteMatch, StaticResponse, UpstreamId,
};
use weir_domain::router::RouteTable;

use crate::access;
use crate::checks::{duration, header_name, header_value, regex, size};
use crate::model::{MatchConfig, OrderedMap, RespondConfig, RouteConfig, TransformConfig};
use crate::node::KeyPath;
use crate::ratelimit;
use crate::report::{Report, closest};
use crate::resilience;

/// Checks every route, then builds the table. The table is built from the routes that are
/// fine even when others are not, so conflicts between them are reported in the same run.
/// What routes may refer to.
pub(crate) struct Known<'a> {
    /// Upstream names, in file order.
    pub(crate) upstreams: &'a [&'a str],
    /// Each upstream's protocol (same order; `None` when it had problems).
    pub(crate) protocols: &'a [Option<weir_domain::upstream::Protocol>],
    pub(crate) providers: &'a [&'a str],
    /// The config file's directory, for relative file names.
    pub(crate) dir: &'a std::path::Path,
}

pub(crate) fn build(
    routes: &[Option<RouteConfig>],
    known: &Known<'_>,
    r: &mut Report<'_>,
) -> Option<RouteTable> {
    let list = KeyPath::root().key("routes");
    let mut built = Vec::with_capacity(routes.len());
    let mut positions = Vec::with_capacity(routes.len());
    let mut names: Vec<(&str, usize)> = Vec::new();
    let mut complete = true;
    for (i, route) in routes.iter().enumerate() {
        let Some(cfg) = route else {
            complete = false;
            continue;
        };
        let path = list.index(i);
        let mut ok = true;
        if cfg.name.trim().is_empty() {
            r.at(&path.key("name"), "a route needs a name");
            ok = false;
        } else if let Some((_, j)) = names.iter().find(|(n, _)| *n == cfg.name) {
            r.at(
                &path.key("name"),
                format!("duplicate route name \"{}\" (also routes[{j}])", cfg.name),
            );
            ok = false;
        } else {
            names.push((&cfg.name, i));
        }
        match route_of(cfg, i, &path, known, r) {
            Some(route) if ok => {
                built.push(route);
                positions.push(i);
            }
            _ => complete = false,
        }
    }
    match RouteTable::build(built) {
        Ok(table) => complete.then_some(table),
        Err(conflicts) => {
            for c in conflicts {
                let i = positions.get(c.route).copied().unwrap_or(c.route);
                let message = renumber(&c.message, &positions);
                r.at(&list.index(i).key("match"), message);
            }
            None
        }
    }
}

/// Conflict messages name the other route as `routes[j]`, `j` counting only the routes that
/// were built; this puts back its position in the file.
fn renumber(message: &str, positions: &[usize]) -> String {
    const MARK: &str = "(routes[";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let (head, tail) = rest.split_at(at + MARK.len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        match tail[..digits].parse::<usize>() {
            Ok(j) => out.push_str(&positions.get(j).copied().unwrap_or(j).to_string()),
            Err(_) => out.push_str(&tail[..digits]),
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

fn route_of(
    cfg: &RouteConfig,
    index: usize,
    path: &KeyPath,
    known: &Known<'_>,
    r: &mut Report<'_>,
) -> Option<Route> {
    let before = r.issues.len();
    let (upstream_names, provider_names) = (known.upstreams, known.providers);
    let matcher = matcher(&cfg.matcher, &path.key("match"), r);
    let action = action(cfg, path, upstream_names, r);
    let timeout = match &cfg.timeout {
        Some(t) => duration(r, &path.key("timeout"), t, true).map(Some),
        None => Some(None),
    };
    let max_body_bytes = match &cfg.max_body_bytes {
        Some(s) => size(r, &path.key("max_body_bytes"), s).map(Some),
        None => Some(None),
    };
    let path_transform = match &cfg.transform {
        Some(t) => transform(t, matcher.as_ref(), &path.key("transform"), r),
        None => Some(PathTransform::default()),
    };
    let transforms = match &cfg.transform {
        Some(t) => crate::transforms::build(t, matcher.as_ref(), &path.key("transform"), r),
        None => Some(weir_domain::transform::Transforms::default()),
    };
    let access = access::build(cfg, path, provider_names, r);
    let rate_limits = ratelimit::build(&cfg.rate_limit, &path.key("rate_limit"), r);
    let fallback = resilience::fallback(cfg, path, upstream_names, r);
    let grpc = match &cfg.grpc {
        Some(g) => {
            let protocol = action
                .as_ref()
                .and_then(|a| match a {
                    RouteAction::Upstream(id) => known.protocols.get(id.0).copied(),
                    RouteAction::Respond(_) => None,
                })
                .flatten();
            if matches!(action, Some(RouteAction::Respond(_))) {
                r.at(
                    &path.key("grpc"),
                    "a respond route does not call a gRPC upstream",
                );
                None
            } else {
                crate::grpc_route::build(g, protocol, known.dir, &path.key("grpc"), r).map(Some)
            }
        }
        None => Some(None),
    };
    let cache = match &cfg.cache {
        Some(c) => crate::cache::build(c, cfg, &path.key("cache"), r).map(|c| Some(Arc::new(c))),
        None => Some(None),
    };
    if r.issues.len() != before {
        return None;
    }
    Some(Route {
        name: cfg.name.clone(),
        index,
        matcher: matcher?,
        action: action?,
        priority: cfg.priority,
        timeout: timeout?,
        max_body_bytes: max_body_bytes?,
        allow_ambiguous_paths: cfg.allow_ambiguous_paths,
        path_transform: path_transform?,
        transforms: transforms?,
        access: access?,
        rate_limits: rate_limits?,
        fallback: fallback?,
        cache: cache?,
        grpc: grpc?,
    })
}

fn matcher(m: &MatchConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<RouteMatch> {
    let before = r.issues.len();
    let host = m
        .host
        .as_ref()
        .and_then(|h| r.check(&path.key("host"), host(h)));
    let given = [
        ("path", &m.path),
        ("prefix", &m.prefix),
        ("regex", &m.regex),
    ];
    let given: Vec<_> = given.iter().filter(|(_, v)| v.is_some()).collect();
    let pattern = match given.as_slice() {
        [] => Some(PathPattern::Prefix("/".to_owned())),
        [("path", Some(p))] => r.check(&path.key("path"), PathPattern::from_path(p.trim())),
        [("prefix", Some(p))] => r.check(&path.key("prefix"), PathPattern::from_prefix(p.trim())),
        [(_, Some(p))] => r.check(&path.key("regex"), regex(p).map(PathPattern::Regex)),
        _ => {
            let keys: Vec<_> = given.iter().map(|(k, _)| *k).collect();
            r.at(
                path,
                format!(
                    "use only one of path, prefix and regex (found {})",
                    keys.join(", ")
                ),
            );
            None
        }
    };
    let methods = methods(&m.methods, &path.key("methods"), r);
    let mut headers = Vec::with_capacity(m.headers.0.len());
    for (name, value) in &m.headers.0 {
        let at = path.key("headers").key(name);
        if r.check(&at, header_name(name).and_then(|()| header_value(value)))
            .is_some()
        {
            headers.push(HeaderCondition {
                name: name.to_ascii_lowercase(),
                value: value.clone(),
            });
        }
    }
    if r.issues.len() != before {
        return None;
    }
    Some(RouteMatch {
        host,
        path: pattern?,
        methods: methods?,
        headers,
    })
}

/// Upper-case method names; `None` when one is wrong (reported at it).
pub(crate) fn methods(names: &[String], path: &KeyPath, r: &mut Report<'_>) -> Option<MethodSet> {
    let mut ok = Vec::with_capacity(names.len());
    let before = r.issues.len();
    for (j, name) in names.iter().enumerate() {
        let at = path.index(j);
        let upper = name.trim().to_ascii_uppercase();
        if MethodSet::bit(&upper).is_none() {
            r.at(
                &at,
                format!(
                    "unknown method \"{name}\" (one of {})",
                    MethodSet::NAMES.join(", ")
                ),
            );
        } else if upper != name.trim() {
            r.at(
                &at,
                format!("methods are written in upper case: \"{upper}\""),
            );
        } else {
            ok.push(upper);
        }
    }
    if r.issues.len() != before {
        return None;
    }
    MethodSet::from_names(ok.iter().map(String::as_str)).ok()
}

/// `api.example.com` or `*.example.com`: a name, without scheme, port or path.
fn host(text: &str) -> Result<HostPattern, String> {
    let t = text.trim();
    let name = t.strip_prefix("*.").unwrap_or(t);
    if t.is_empty() {
        return Err("a host cannot be empty".to_owned());
    }
    if t.contains('/') {
        return Err(format!(
            "\"{t}\" must be a host name only, without scheme or path"
        ));
    }
    if t.contains(':') && !t.starts_with('[') {
        return Err(format!("\"{t}\": a host is matched without its port"));
    }
    if name.is_empty() || name.contains('*') {
        return Err(format!("\"{t}\": a wildcard is written *.example.com"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._[]:".contains(c);
    if !name.chars().all(allowed) {
        return Err(format!("\"{t}\" is not a host name"));
    }
    Ok(HostPattern::parse(t))
}

fn action(
    cfg: &RouteConfig,
    path: &KeyPath,
    names: &[&str],
    r: &mut Report<'_>,
) -> Option<RouteAction> {
    match (&cfg.upstream, &cfg.respond) {
        (Some(_), Some(_)) => {
            r.at(path, "a route has either `upstream` or `respond`, not both");
            None
        }
        (None, None) => {
            r.at(
                path,
                "a route needs `upstream` (an upstream's name) or `respond` (a fixed response)",
            );
            None
        }
        (Some(name), None) => {
            upstream_id(name, names, &path.key("upstream"), r).map(RouteAction::Upstream)
        }
        (None, Some(respond)) => {
            let RespondConfig {
                status,
                headers,
                body,
            } = respond;
            static_response(*status, headers, body, &path.key("respond"), r)
                .map(RouteAction::Respond)
        }
    }
}

/// The id of the upstream called `name`, or an `unknown upstream` problem at `at` (with a
/// suggestion when a name is close).
pub(crate) fn upstream_id(
    name: &str,
    names: &[&str],
    at: &KeyPath,
    r: &mut Report<'_>,
) -> Option<UpstreamId> {
    if let Some(id) = names.iter().position(|n| *n == name) {
        return Some(UpstreamId(id));
    }
    let mut message = format!("unknown upstream \"{name}\"");
    if names.is_empty() {
        message.push_str(" (no upstreams are defined)");
    } else if let Some(near) = closest(name, names.iter().copied()) {
        message.push_str(&format!("; did you mean \"{near}\"?"));
    }
    r.at(at, message);
    None
}

/// A fixed response (`respond`, or a `fallback` response) whose keys are under `path`.
pub(crate) fn static_response(
    status: u16,
    headers: &OrderedMap<String>,
    body: &str,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<StaticResponse> {
    let mut ok = true;
    if !(100..=599).contains(&status) {
        r.at(
            &path.key("status"),
            format!("status {status} is not between 100 and 599"),
        );
        ok = false;
    }
    for (name, value) in &headers.0 {
        let at = path.key("headers").key(name);
        ok &= r
            .check(&at, header_name(name).and_then(|()| header_value(value)))
            .is_some();
    }
    ok.then(|| StaticResponse {
        status,
        headers: headers.0.clone(),
        body: Arc::from(body),
    })
}

fn transform(
    t: &TransformConfig,
    matcher: Option<&RouteMatch>,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<PathTransform> {
    let Some(request) = &t.request else {
        return Some(PathTransform::default());
    };
    let req = path.key("request");
    let Some(p) = &request.path else {
        return Some(PathTransform::default());
    };
    let at = req.key("path");
    let mut ok = true;
    let mut prefix = |key: &str, value: &Option<String>| -> Option<String> {
        let v = value.as_ref()?.trim();
        if v.starts_with('/') {
            Some(v.to_owned())
        } else {
            r.at(&at.key(key), format!("{key} must start with '/'"));
            ok = false;
            None
        }
    };
    let strip_prefix = prefix("strip_prefix", &p.strip_prefix);
    let add_prefix = prefix("add_prefix", &p.add_prefix);
    let rewrite = match &p.rewrite {
        Some(rw) => match r.check(&at.key("rewrite").key("regex"), regex(&rw.regex)) {
            Some(re) => {
                let rewrite = Rewrite::new(re, rw.to.clone());
                let params: Vec<&str> = match matcher.map(|m| &m.path) {
                    Some(PathPattern::Template(t)) => t.param_names().collect(),
                    _ => Vec::new(),
                };
                for p in rewrite.params() {
                    if !params.contains(&p) {
                        r.at(
                            &at.key("rewrite").key("to"),
                            format!("`${{path.{p}}}` is not a parameter of the route's path"),
                        );
                        ok = false;
                    }
                }
                Some(rewrite)
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    ok.then_some(PathTransform {
        strip_prefix,
        rewrite,
        add_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host("API.example.com"),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            host("*.example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert!(
            host("example.com:8080")
                .unwrap_err()
                .contains("without its port")
        );
        assert!(host("https://example.com").is_err());
        assert!(host("*example.com").is_err());
        assert!(host("a.*.com").is_err());
        assert!(host("*.").is_err());
        assert!(host("").is_err());
    }

    #[test]
    fn renumbers_route_references() {
        let msg = "matches exactly what route \"a\" (routes[1]) matches";
        assert_eq!(
            renumber(msg, &[0, 4]),
            "matches exactly what route \"a\" (routes[4]) matches"
        );
        assert_eq!(renumber("no reference", &[3]), "no reference");
    }
}
