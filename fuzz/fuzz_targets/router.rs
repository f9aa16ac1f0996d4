//! The route table: a handful of fuzzed routes (exact, template, prefix, regex; methods,
//! hosts, a header condition, priority) and fuzzed requests. No panic, and every answer is
//! checked against a brute-force reading of the contract (router.rs, contract §3): each
//! route's own conditions ([`RouteMatch::mismatch`], what `weir explain` uses) decide which
//! routes apply, and the precedence rules pick among them.
#![no_main]

use std::cmp::Reverse;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weir_domain::path::normalize;
use weir_domain::route::{
    Access, HeaderCondition, HostPattern, MethodSet, PathPattern, PathTransform, Route,
    RouteAction, RouteMatch, Segment, StaticResponse,
};
use weir_domain::router::{Lookup, RequestHead, RouteTable};

const LITERALS: [&str; 6] = ["a", "b", "c", "v1", "a.b", ""];
const HOSTS: [&str; 6] = [
    "api.example.com",
    "www.example.com",
    "example.com",
    "x.api.example.com",
    "*.example.com",
    "*.api.example.com",
];
const REGEXES: [&str; 6] = ["^/a", "^/a/[^/]+$", "b$", "^/(a|b)/c", ".", "^/$"];
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FETCH",
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seg {
    Lit(u8),
    Param,
    CatchAll,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    /// `path:` (exact, or a template when a segment is a parameter).
    Path,
    Prefix,
    Regex(u8),
}

#[derive(Arbitrary, Debug)]
struct RouteDef {
    kind: Kind,
    segs: Vec<Seg>,
    trailing_slash: bool,
    methods: u16,
    host: Option<u8>,
    header: Option<bool>,
    priority: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct RequestDef {
    host: Option<u8>,
    method: u8,
    header: Option<bool>,
    segs: Vec<u8>,
    trailing_slash: bool,
}

#[derive(Arbitrary, Debug)]
struct Fuzzed {
    routes: Vec<RouteDef>,
    requests: Vec<RequestDef>,
}

/// A route as the config describes it.
struct RouteSpec {
    kind: &'static str,
    pattern: String,
    host: Option<String>,
    methods: Vec<String>,
    header: Option<String>,
    priority: i32,
}

struct Req {
    host: Option<String>,
    method: String,
    header: Option<String>,
    /// As the client sent it; normalized before the lookup.
    path: String,
}

impl RequestHead for Req {
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn method_bit(&self) -> u16 {
        MethodSet::bit(&self.method).unwrap_or(0)
    }
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        (lower_name == "x-v").then_some(self.header.as_deref()?.as_bytes())
    }
}

fn pick<T: Copy>(items: &[T], i: u8) -> T {
    items[usize::from(i) % items.len()]
}

fn from_fuzzed(f: &Fuzzed) -> (Vec<RouteSpec>, Vec<Req>) {
    let routes = f
        .routes
        .iter()
        .take(8)
        .map(|def| {
            let mut text = String::new();
            for (i, s) in def.segs.iter().take(5).enumerate() {
                text.push('/');
                match s {
                    Seg::Lit(l) => text.push_str(pick(&LITERALS, *l)),
                    Seg::Param => text.push_str(&format!("{{p{i}}}")),
                    Seg::CatchAll => text.push_str(&format!("{{*r{i}}}")),
                }
            }
            if def.trailing_slash || text.is_empty() {
                text.push('/');
            }
            let (kind, pattern) = match def.kind {
                Kind::Path => ("path", text),
                Kind::Prefix => ("prefix", text),
                Kind::Regex(r) => ("regex", pick(&REGEXES, r).to_owned()),
            };
            RouteSpec {
                kind,
                pattern,
                host: def.host.map(|h| pick(&HOSTS, h).to_owned()),
                methods: MethodSet::NAMES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| def.methods & (1 << i) != 0)
                    .map(|(_, n)| (*n).to_owned())
                    .collect(),
                header: def.header.map(|v| if v { "1" } else { "2" }.to_owned()),
                priority: match def.priority {
                    None => 0,
                    Some(true) => 1,
                    Some(false) => -1,
                },
            }
        })
        .collect();
    let requests = f
        .requests
        .iter()
        .take(8)
        .map(|def| {
            let mut path = String::new();
            for s in def.segs.iter().take(6) {
                path.push('/');
                path.push_str(pick(&LITERALS, *s));
            }
            if def.trailing_slash || path.is_empty() {
                path.push('/');
            }
            Req {
                host: def.host.map(|h| pick(&HOSTS[..4], h).to_owned()),
                method: pick(&METHODS, def.method).to_owned(),
                header: def.header.map(|v| if v { "1" } else { "2" }.to_owned()),
                path,
            }
        })
        .collect();
    (routes, requests)
}

/// The text form (after a first line `text`), one route or request a line:
/// `route path|prefix|regex PATTERN [host=H] [methods=GET,PUT] [x-v=V] [priority=N]` and
/// `req METHOD PATH [host=H] [x-v=V]`.
fn from_text(text: &str) -> (Vec<RouteSpec>, Vec<Req>) {
    let mut routes = Vec::new();
    let mut requests = Vec::new();
    for line in text.lines().take(16) {
        let mut words = line.split(' ');
        let (Some(what), Some(a), Some(b)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let mut host = None;
        let mut methods = Vec::new();
        let mut header = None;
        let mut priority = 0;
        for w in words {
            match w.split_once('=') {
                Some(("host", h)) => host = Some(h.to_owned()),
                Some(("methods", m)) => methods = m.split(',').map(str::to_owned).collect(),
                Some(("x-v", v)) => header = Some(v.to_owned()),
                Some(("priority", p)) => priority = p.parse().unwrap_or(0),
                _ => {}
            }
        }
        match (what, a) {
            ("route", "path" | "prefix" | "regex") => routes.push(RouteSpec {
                kind: match a {
                    "path" => "path",
                    "prefix" => "prefix",
                    _ => "regex",
                },
                pattern: b.to_owned(),
                host,
                methods,
                header,
                priority,
            }),
            ("req", _) => requests.push(Req {
                host,
                method: a.to_owned(),
                header,
                path: b.to_owned(),
            }),
            _ => {}
        }
    }
    (routes, requests)
}

fn route(index: usize, spec: &RouteSpec) -> Option<Route> {
    let path = match spec.kind {
        // A pattern that does not parse is refused by the config: not a route.
        "path" => PathPattern::from_path(&spec.pattern).ok()?,
        "prefix" => PathPattern::from_prefix(&spec.pattern).ok()?,
        _ => PathPattern::Regex(regex::Regex::new(&spec.pattern).ok()?),
    };
    let methods = MethodSet::from_names(spec.methods.iter().map(String::as_str)).ok()?;
    Some(Route {
        name: format!("r{index}"),
        index,
        matcher: RouteMatch {
            host: spec.host.as_deref().map(HostPattern::parse),
            path,
            methods,
            headers: spec
                .header
                .iter()
                .map(|v| HeaderCondition {
                    name: "x-v".to_owned(),
                    value: v.clone(),
                })
                .collect(),
        },
        action: RouteAction::Respond(StaticResponse {
            status: 200,
            headers: Vec::new(),
            body: "".into(),
        }),
        priority: spec.priority,
        timeout: None,
        max_body_bytes: None,
        allow_ambiguous_paths: false,
        path_transform: PathTransform::default(),
        transforms: Default::default(),
        access: Access::default(),
        rate_limits: Vec::new(),
        fallback: None,
        cache: None,
        grpc: None,
    })
}

/// Contract §3, as documented: priority, then path kind (exact > template > prefix >
/// regex) and specificity (fewer template parameters, longer prefix), then host (exact >
/// longer wildcard > none), then more header conditions, then file order.
fn rank(
    r: &Route,
) -> (
    i32,
    u8,
    Reverse<usize>,
    usize,
    u8,
    usize,
    usize,
    Reverse<usize>,
) {
    let (class, params, prefix_len) = match &r.matcher.path {
        PathPattern::Exact(_) => (3, 0, 0),
        PathPattern::Template(t) => (2, t.param_count(), 0),
        PathPattern::Prefix(p) => (1, 0, p.len()),
        PathPattern::Regex(_) => (0, 0, 0),
    };
    let (host, wildcard_len) = match &r.matcher.host {
        None => (0, 0),
        Some(HostPattern::Suffix(s)) => (1, s.len()),
        Some(HostPattern::Exact(_)) => (2, 0),
    };
    (
        r.priority,
        class,
        Reverse(params),
        prefix_len,
        host,
        wildcard_len,
        r.matcher.headers.len(),
        Reverse(r.index),
    )
}

/// Whether `r` matches the request on everything but the method.
fn matches_but_method(r: &Route, req: &Req, path: &str) -> bool {
    let any = Req {
        host: req.host.clone(),
        method: "FETCH".to_owned(),
        header: req.header.clone(),
        path: String::new(),
    };
    let unrestricted = RouteMatch {
        methods: MethodSet::ANY,
        ..r.matcher.clone()
    };
    unrestricted.mismatch(&any, path).is_none()
}

fn check_params(route: &Route, params: &[(&str, &str)], path: &str) {
    let PathPattern::Template(t) = &route.matcher.path else {
        assert!(params.is_empty(), "{} captured {params:?}", route.name);
        return;
    };
    let names: Vec<&str> = t.param_names().collect();
    let got: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        got, names,
        "template {} on {path}: params {params:?}",
        t.source
    );
    // Each value is what its segment holds: a parameter one non-empty segment, a catch-all
    // the non-empty rest.
    let mut rest = &path[1..];
    let mut values = params.iter().map(|(_, v)| *v);
    for seg in &t.segments {
        let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
        match seg {
            Segment::Literal(l) => assert_eq!(head, l),
            Segment::Param(_) => {
                assert_eq!(values.next(), Some(head), "{} on {path}", t.source);
                assert!(!head.is_empty());
            }
            Segment::CatchAll(_) => {
                assert_eq!(values.next(), Some(rest), "{} on {path}", t.source);
                assert!(!rest.is_empty());
            }
        }
        rest = tail;
    }
}

fuzz_target!(|data: &[u8]| {
    let (specs, requests) = match data.strip_prefix(b"text\n") {
        Some(text) => {
            let Ok(text) = std::str::from_utf8(text) else {
                return;
            };
            from_text(text)
        }
        None => {
            let Ok(f) = Fuzzed::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            from_fuzzed(&f)
        }
    };
    // Definitions that do not make a route are dropped; the index is the position among
    // those kept, as it would be in a file.
    let routes: Vec<Route> = specs
        .iter()
        .filter_map(|s| route(0, s))
        .enumerate()
        .map(|(i, mut r)| {
            r.index = i;
            r.name = format!("r{i}");
            r
        })
        .collect();
    let Ok(table) = RouteTable::build(routes.clone()) else {
        // Conflicts are reported at load; such a table never serves.
        return;
    };
    let _ = table.routes_in_match_order();
    for req in &requests {
        let Ok(path) = normalize(&req.path) else {
            continue;
        };
        let applicable: Vec<&Route> = routes
            .iter()
            .filter(|r| r.matcher.mismatch(req, &path).is_none())
            .collect();
        let best = applicable
            .iter()
            .max_by_key(|r| rank(r))
            .map(|r| r.name.as_str());
        match table.lookup(req, &path) {
            Lookup::Found(f) => {
                assert!(
                    f.route.matcher.mismatch(req, &path).is_none(),
                    "{} was chosen for {path} but does not match: {:?}",
                    f.route.name,
                    f.route.matcher.mismatch(req, &path)
                );
                check_params(f.route, &f.params, &path);
                assert!(
                    Some(f.route.name.as_str()) == best,
                    "precedence for {} {path}: got {}, want {best:?} (host {:?}, x-v {:?}) among {:?}",
                    req.method,
                    f.route.name,
                    req.host,
                    req.header,
                    applicable
                        .iter()
                        .map(|r| (&r.name, r.matcher.path.to_string()))
                        .collect::<Vec<_>>()
                );
            }
            Lookup::MethodNotAllowed(allow) => {
                assert!(best.is_none(), "405 but {best:?} matches {path}");
                let misses: Vec<&Route> = routes
                    .iter()
                    .filter(|r| matches_but_method(r, req, &path))
                    .collect();
                assert!(!misses.is_empty(), "405 for {path} without a route");
                let union = misses
                    .iter()
                    .fold(MethodSet::ANY, |m, r| m.union(r.matcher.methods));
                assert_eq!(allow, union, "Allow for {path}");
            }
            Lookup::NotFound => {
                assert!(best.is_none(), "404 but {best:?} matches {path}");
                assert!(
                    !routes.iter().any(|r| matches_but_method(r, req, &path)),
                    "404 for {path} where a route matches all but the method"
                );
            }
        }
    }
});
