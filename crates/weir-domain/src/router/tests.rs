use regex::Regex;

use super::*;
use crate::route::{
    HeaderCondition, PathTransform, RouteAction, RouteMatch, StaticResponse, UpstreamId,
};

struct Req<'a> {
    host: Option<&'a str>,
    method: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl RequestHead for Req<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn method_bit(&self) -> u16 {
        MethodSet::bit(self.method).unwrap_or(0)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
}

fn get(host: Option<&'static str>) -> Req<'static> {
    Req {
        host,
        method: "GET",
        headers: vec![],
    }
}

struct R {
    name: &'static str,
    host: Option<&'static str>,
    path: PathPattern,
    methods: &'static [&'static str],
    headers: Vec<(&'static str, &'static str)>,
    priority: i32,
}

fn r(name: &'static str, path: PathPattern) -> R {
    R {
        name,
        host: None,
        path,
        methods: &[],
        headers: vec![],
        priority: 0,
    }
}
fn exact(p: &str) -> PathPattern {
    PathPattern::from_path(p).unwrap()
}
fn tmpl(p: &str) -> PathPattern {
    PathPattern::from_path(p).unwrap()
}
fn prefix(p: &str) -> PathPattern {
    PathPattern::from_prefix(p).unwrap()
}
fn regex(p: &str) -> PathPattern {
    PathPattern::Regex(Regex::new(p).unwrap())
}

fn table(specs: Vec<R>) -> RouteTable {
    let routes = specs
        .into_iter()
        .enumerate()
        .map(|(index, s)| Route {
            name: s.name.to_owned(),
            index,
            matcher: RouteMatch {
                host: s.host.map(HostPattern::parse),
                path: s.path,
                methods: MethodSet::from_names(s.methods.iter().copied()).unwrap(),
                headers: s
                    .headers
                    .iter()
                    .map(|(n, v)| HeaderCondition {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            },
            action: if index % 2 == 0 {
                RouteAction::Upstream(UpstreamId(0))
            } else {
                RouteAction::Respond(StaticResponse {
                    status: 200,
                    headers: vec![],
                    body: "".into(),
                })
            },
            priority: s.priority,
            timeout: None,
            max_body_bytes: None,
            allow_ambiguous_paths: false,
            path_transform: PathTransform::default(),
            access: crate::route::Access::default(),
            rate_limits: Vec::new(),
            fallback: None,
            cache: None,
            grpc: None,
            transforms: Default::default(),
        })
        .collect();
    RouteTable::build(routes).unwrap()
}

fn name(t: &RouteTable, req: &Req<'_>, path: &str) -> String {
    match t.lookup(req, path) {
        Lookup::Found(f) => f.route.name.clone(),
        Lookup::MethodNotAllowed(m) => format!("405 {}", m.names().collect::<Vec<_>>().join(",")),
        Lookup::NotFound => "404".into(),
    }
}

#[test]
fn path_specificity_order() {
    let t = table(vec![
        r("regex", regex(r"^/users/\d+$")),
        r("prefix", prefix("/users")),
        r("long-prefix", prefix("/users/7")),
        r("template2", tmpl("/users/{id}/{x}")),
        r("template", tmpl("/users/{id}")),
        r("exact", exact("/users/me")),
    ]);
    let g = get(None);
    assert_eq!(name(&t, &g, "/users/me"), "exact");
    assert_eq!(name(&t, &g, "/users/42"), "template");
    assert_eq!(name(&t, &g, "/users/42/a"), "template2");
    assert_eq!(name(&t, &g, "/users/7/a/b"), "long-prefix");
    assert_eq!(name(&t, &g, "/users"), "prefix");
    assert_eq!(name(&t, &g, "/users/42/a/b"), "prefix");
    assert_eq!(name(&t, &g, "/usersx"), "404");
}

#[test]
fn path_parameters_end_a_prefix_segment() {
    let t = table(vec![r("admin", prefix("/admin")), r("open", prefix("/"))]);
    let g = get(None);
    assert_eq!(name(&t, &g, "/admin;jsessionid=1"), "admin");
    assert_eq!(name(&t, &g, "/admin;x=1/y"), "admin");
    assert_eq!(name(&t, &g, "/admin/a;b"), "admin");
    assert_eq!(name(&t, &g, "/adminx;y"), "open");
    assert_eq!(name(&t, &g, "/a;dmin"), "open");
}

#[test]
fn regex_is_last_but_still_matches() {
    let t = table(vec![
        r("catch", prefix("/api")),
        r("re", regex(r"^/v\d+/items$")),
    ]);
    assert_eq!(name(&t, &get(None), "/v3/items"), "re");
    assert_eq!(name(&t, &get(None), "/api/x"), "catch");
}

#[test]
fn host_beats_no_host_only_after_path_specificity() {
    let mut hosted = r("hosted-prefix", prefix("/a"));
    hosted.host = Some("api.example.com");
    let mut wild = r("wild-prefix", prefix("/a"));
    wild.host = Some("*.example.com");
    let t = table(vec![
        r("plain-prefix", prefix("/a")),
        wild,
        hosted,
        r("plain-exact", exact("/a/b")),
    ]);
    assert_eq!(
        name(&t, &get(Some("api.example.com")), "/a/x"),
        "hosted-prefix"
    );
    assert_eq!(
        name(&t, &get(Some("www.example.com")), "/a/x"),
        "wild-prefix"
    );
    assert_eq!(name(&t, &get(Some("example.com")), "/a/x"), "plain-prefix");
    assert_eq!(name(&t, &get(None), "/a/x"), "plain-prefix");
    // An exact path without a host still beats a host-matched prefix.
    assert_eq!(
        name(&t, &get(Some("api.example.com")), "/a/b"),
        "plain-exact"
    );
}

#[test]
fn more_headers_win_then_file_order() {
    let mut v2 = r("v2", prefix("/api"));
    v2.headers = vec![("x-api-version", "2")];
    let t = table(vec![r("first", prefix("/api")), v2]);
    let mut req = get(None);
    assert_eq!(name(&t, &req, "/api/x"), "first");
    req.headers = vec![("x-api-version", "2")];
    assert_eq!(name(&t, &req, "/api/x"), "v2");
    req.headers = vec![("x-api-version", "3")];
    assert_eq!(name(&t, &req, "/api/x"), "first");
}

#[test]
fn priority_overrides_specificity() {
    let mut low = r("boosted-regex", regex("^/"));
    low.priority = 10;
    let t = table(vec![r("exact", exact("/a")), low]);
    assert_eq!(name(&t, &get(None), "/a"), "boosted-regex");
}

#[test]
fn method_not_allowed_lists_allowed_methods() {
    let mut a = r("get", exact("/items"));
    a.methods = &["GET"];
    let mut b = r("put", tmpl("/items/{id}"));
    b.methods = &["PUT", "DELETE"];
    let t = table(vec![a, b]);
    let post = Req {
        host: None,
        method: "POST",
        headers: vec![],
    };
    assert_eq!(name(&t, &post, "/items"), "405 GET");
    assert_eq!(name(&t, &post, "/items/1"), "405 PUT,DELETE");
    assert_eq!(name(&t, &post, "/other"), "404");
}

#[test]
fn template_fallback_when_best_shape_is_filtered() {
    let mut specific = r("specific", tmpl("/a/b/{y}"));
    specific.methods = &["POST"];
    let t = table(vec![specific, r("general", tmpl("/a/{x}/c"))]);
    assert_eq!(name(&t, &get(None), "/a/b/c"), "general");
}

#[test]
fn template_params_are_captured() {
    let t = table(vec![r("t", tmpl("/orders/{id}/lines/{line}"))]);
    let Lookup::Found(f) = t.lookup(&get(None), "/orders/5/lines/2") else {
        panic!()
    };
    assert_eq!(f.params, vec![("id", "5"), ("line", "2")]);
}

#[test]
fn same_template_different_methods_coexist() {
    let mut a = r("get", tmpl("/u/{id}"));
    a.methods = &["GET"];
    let mut b = r("put", tmpl("/u/{id}"));
    b.methods = &["PUT"];
    let t = table(vec![a, b]);
    let put = Req {
        host: None,
        method: "PUT",
        headers: vec![],
    };
    assert_eq!(name(&t, &put, "/u/1"), "put");
    assert_eq!(name(&t, &get(None), "/u/1"), "get");
}

#[test]
fn conflicts_are_reported() {
    let build = |specs: Vec<R>| {
        let t = std::panic::catch_unwind(|| ());
        drop(t);
        let routes: Vec<Route> = specs
            .into_iter()
            .enumerate()
            .map(|(index, s)| Route {
                name: s.name.into(),
                index,
                matcher: RouteMatch {
                    host: None,
                    path: s.path,
                    methods: MethodSet::from_names(s.methods.iter().copied()).unwrap(),
                    headers: vec![],
                },
                action: RouteAction::Upstream(UpstreamId(0)),
                priority: 0,
                timeout: None,
                max_body_bytes: None,
                allow_ambiguous_paths: false,
                path_transform: PathTransform::default(),
                access: crate::route::Access::default(),
                rate_limits: Vec::new(),
                fallback: None,
                cache: None,
                grpc: None,
                transforms: Default::default(),
            })
            .collect();
        RouteTable::build(routes)
    };
    let e = build(vec![r("a", tmpl("/u/{id}")), r("b", tmpl("/u/{name}"))]).unwrap_err();
    assert_eq!(e[0].route, 1);
    let e = build(vec![r("a", exact("/x")), r("b", exact("/x"))]).unwrap_err();
    assert!(e[0].message.contains("\"a\""), "{e:?}");
    let mut g = r("g", exact("/x"));
    g.methods = &["GET"];
    let mut p = r("p", exact("/x"));
    p.methods = &["POST"];
    assert!(build(vec![g, p]).is_ok());
}
