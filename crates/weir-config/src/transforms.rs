//! Checking a route's header and query transforms and building the domain's
//! [`Transforms`]: names valid, values parsed as templates once, `${path.NAME}` only for
//! parameters of the route's own path template.

use weir_domain::route::{PathPattern, RouteMatch};
use weir_domain::transform::{
    BodyTransform, HeaderOps, JsonEdits, QueryOps, Template, Transforms, parse_pointer,
};

use crate::checks::{header_name, header_value};
use crate::model::{BodyTransformConfig, HeaderOpsConfig, QueryOpsConfig, TransformConfig};
use crate::node::KeyPath;
use crate::report::Report;

/// Headers weir itself manages on the way in: a transform that set them would desync the
/// message (`Content-Length`, `Transfer-Encoding`), route it elsewhere (`Host`) or fight the
/// connection handling.
const REQUEST_MANAGED: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

/// The same on the way out.
const RESPONSE_MANAGED: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

/// `routes[i].transform` (at `path`) beyond the path; `matcher` is the route's match, for
/// `${path.NAME}`. `None` when it has problems (reported).
pub(crate) fn build(
    t: &TransformConfig,
    matcher: Option<&RouteMatch>,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Transforms> {
    let before = r.issues.len();
    let params: Vec<&str> = match matcher.map(|m| &m.path) {
        Some(PathPattern::Template(t)) => t.param_names().collect(),
        _ => Vec::new(),
    };
    let mut out = Transforms::default();
    if let Some(req) = &t.request {
        let at = path.key("request");
        if let Some(h) = &req.headers {
            out.request_headers =
                headers(h, &REQUEST_MANAGED, Some(&params), &at.key("headers"), r);
        }
        if let Some(q) = &req.query {
            out.query = query(q, &params, &at.key("query"), r);
        }
        if let Some(b) = &req.body {
            out.request_body = body(b, &at.key("body"), r);
        }
    }
    if let Some(resp) = &t.response {
        let at = path.key("response");
        if let Some(h) = &resp.headers {
            out.response_headers = headers(h, &RESPONSE_MANAGED, None, &at.key("headers"), r);
        }
        if let Some(b) = &resp.body {
            out.response_body = body(b, &at.key("body"), r);
        }
    }
    (r.issues.len() == before).then_some(out)
}

/// `params`: the route's path parameters, or `None` for a response (whose values cannot
/// read the request).
fn headers(
    c: &HeaderOpsConfig,
    managed: &[&str],
    params: Option<&[&str]>,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    for (i, name) in c.remove.iter().enumerate() {
        if let Some(n) = checked_name(name, managed, &path.key("remove").index(i), r) {
            ops.remove.push(n);
        }
    }
    for (key, list, into) in [("set", &c.set, &mut ops.set), ("add", &c.add, &mut ops.add)] {
        for (name, value) in &list.0 {
            let at = path.key(key).key(name);
            let n = checked_name(name, managed, &at, r);
            let v = template(value, params, &at, r);
            if let (Some(n), Some(v)) = (n, v) {
                into.push((n, v));
            }
        }
    }
    ops
}

fn query(c: &QueryOpsConfig, params: &[&str], path: &KeyPath, r: &mut Report<'_>) -> QueryOps {
    let mut ops = QueryOps::default();
    for (i, name) in c.remove.iter().enumerate() {
        match param_name(name) {
            Ok(n) => ops.remove.push(n),
            Err(e) => r.at(&path.key("remove").index(i), e),
        }
    }
    for (name, value) in &c.set.0 {
        let at = path.key("set").key(name);
        let n = r.check(&at, param_name(name));
        let v = template(value, Some(params), &at, r);
        if let (Some(n), Some(v)) = (n, v) {
            ops.set.push((n, v));
        }
    }
    ops
}

fn checked_name(name: &str, managed: &[&str], at: &KeyPath, r: &mut Report<'_>) -> Option<String> {
    let name = name.trim();
    r.check(at, header_name(name))?;
    let lower = name.to_ascii_lowercase();
    if managed.contains(&lower.as_str()) {
        r.at(
            at,
            format!("`{name}` is managed by weir (it frames or routes the message); a transform cannot change it"),
        );
        return None;
    }
    Some(lower)
}

/// A query parameter name: not empty, and nothing that would split the query.
fn param_name(name: &str) -> Result<String, String> {
    let n = name.trim();
    if n.is_empty() {
        return Err("a query parameter needs a name".to_owned());
    }
    if let Some(c) = n
        .chars()
        .find(|c| matches!(c, '&' | '=' | '#' | '?') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{c:?} cannot be in a query parameter name"));
    }
    Ok(n.to_owned())
}

fn template(
    value: &str,
    params: Option<&[&str]>,
    at: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Template> {
    let t = r.check(at, Template::parse(value))?;
    if let Some(literal) = t.literal() {
        r.check(at, header_value(literal))?;
    }
    let Some(params) = params else {
        if t.reads_request() {
            r.at(
                at,
                "a response header can use ${consumer.name}, ${request.id} and ${request.ip}; \
                 the request's path parameters and headers are not kept for the response",
            );
            return None;
        }
        return Some(t);
    };
    for p in t.path_params() {
        if !params.contains(&p) {
            let known = if params.is_empty() {
                "the route's path has no parameters (use `path: /users/{id}`)".to_owned()
            } else {
                format!("the route's path parameters are {}", params.join(", "))
            };
            r.at(
                at,
                format!("`${{path.{p}}}` is not a parameter of the route's path; {known}"),
            );
            return None;
        }
    }
    Some(t)
}

/// `body: { json: { set, remove, rename }, strict }`.
fn body(c: &BodyTransformConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<BodyTransform> {
    let Some(json) = &c.json else {
        r.at(
            path,
            "a body transform names its edits under `json` (set, remove, rename)",
        );
        return None;
    };
    let at = path.key("json");
    let mut edits = JsonEdits::default();
    for (i, p) in json.remove.iter().enumerate() {
        if let Some(p) = r.check(&at.key("remove").index(i), parse_pointer(p.trim())) {
            edits.remove.push(p);
        }
    }
    for (from, to) in &json.rename.0 {
        let k = at.key("rename").key(from);
        let from = r.check(&k, parse_pointer(from.trim()));
        let to = r.check(&k, parse_pointer(to.trim()));
        if let (Some(from), Some(to)) = (from, to) {
            if to.starts_with(&from) {
                r.at(&k, "a value cannot be renamed to a place inside itself");
            } else {
                edits.rename.push((from, to));
            }
        }
    }
    for (place, value) in &json.set.0 {
        if let Some(p) = r.check(&at.key("set").key(place), parse_pointer(place.trim())) {
            edits.set.push((p, value.to_string()));
        }
    }
    if edits.remove.is_empty() && edits.rename.is_empty() && edits.set.is_empty() {
        r.at(
            &at,
            "a JSON body transform needs at least one of set, remove, rename",
        );
        return None;
    }
    Some(BodyTransform {
        json: edits,
        strict: c.strict,
    })
}
