//! Properties of the path normalizer and the route table, over generated paths and route
//! sets, through the crate's public API only. What each property relies on is what the code
//! documents: `path.rs` (unreserved escapes decoded, reserved ones kept, `//` collapsed, dot
//! segments removed, `%00` and malformed escapes rejected; the normalized form is both
//! routed and forwarded) and `router.rs` with contract §3 (precedence: priority, then the
//! path kind, exact, template with fewer parameters, longer prefix, regex, then host, then
//! header conditions, then file order).
//!
//! Failures found here or by the fuzz targets (fuzz/) for this crate are kept as named
//! regression tests next to the property they break; known bugs are `#[ignore]`d with
//! their cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use proptest::prelude::*;
use regex::Regex;
use weir_domain::path::{PathError, normalize};
use weir_domain::route::{
    Access, HeaderCondition, HostPattern, MethodSet, PathPattern, PathTransform, Route,
    RouteAction, RouteMatch, StaticResponse,
};
use weir_domain::router::{Lookup, RequestHead, RouteTable};

// ---------------------------------------------------------------------------------------
// Helpers

#[derive(Debug)]
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
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == lower_name)
            .map(|(_, v)| v.as_bytes())
    }
}

fn get() -> Req<'static> {
    Req {
        host: None,
        method: "GET",
        headers: Vec::new(),
    }
}

/// A route as the config would describe it.
#[derive(Clone, Debug)]
struct Spec {
    path: Pat,
    host: Option<&'static str>,
    methods: Vec<&'static str>,
    header: Option<&'static str>,
    priority: i32,
}

#[derive(Clone, Debug)]
enum Pat {
    /// `path:` (exact, or a template when it holds `{}`).
    Path(String),
    Prefix(String),
    Regex(&'static str),
}

fn spec(path: Pat) -> Spec {
    Spec {
        path,
        host: None,
        methods: Vec::new(),
        header: None,
        priority: 0,
    }
}

fn route(index: usize, s: &Spec) -> Route {
    let path = match &s.path {
        Pat::Path(p) => PathPattern::from_path(p).unwrap(),
        Pat::Prefix(p) => PathPattern::from_prefix(p).unwrap(),
        Pat::Regex(r) => PathPattern::Regex(Regex::new(r).unwrap()),
    };
    Route {
        name: format!("r{index}"),
        index,
        matcher: RouteMatch {
            host: s.host.map(HostPattern::parse),
            path,
            methods: MethodSet::from_names(s.methods.iter().copied()).unwrap(),
            headers: s
                .header
                .map(|v| HeaderCondition {
                    name: "x-v".to_owned(),
                    value: v.to_owned(),
                })
                .into_iter()
                .collect(),
        },
        action: RouteAction::Respond(StaticResponse {
            status: 200,
            headers: Vec::new(),
            body: "".into(),
        }),
        priority: s.priority,
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
    }
}

fn build(specs: &[Spec]) -> Option<RouteTable> {
    RouteTable::build(specs.iter().enumerate().map(|(i, s)| route(i, s)).collect()).ok()
}

fn table(specs: &[Spec]) -> RouteTable {
    build(specs).expect("the routes do not conflict")
}

/// The name of the route a request goes to, `405` or `404`.
fn answer(t: &RouteTable, req: &Req<'_>, path: &str) -> String {
    match t.lookup(req, path) {
        Lookup::Found(f) => f.route.name.clone(),
        Lookup::MethodNotAllowed(_) => "405".to_owned(),
        Lookup::NotFound => "404".to_owned(),
    }
}

fn norm(p: &str) -> String {
    normalize(p).map(Cow::into_owned).unwrap()
}

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The default 256 cases, and no `.proptest-regressions` file: a failure found here
/// becomes a named regression test at the end of this file instead.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Strategies

/// Path pieces that meet the normalizer's rules often: separators, dot segments plain and
/// encoded, escapes of every byte in both cases, broken escapes, encoded separators and NUL,
/// overlong UTF-8 forms of `/` and `.`, and text with non-ASCII characters.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5C".to_owned()),
        Just("%00".to_owned()),
        Just("%c0%af".to_owned()),
        Just("%e0%80%af".to_owned()),
        Just("%C0%AE".to_owned()),
        Just("%".to_owned()),
        Just("%4".to_owned()),
        any::<u8>().prop_map(|b| format!("%{b:02x}")),
        any::<u8>().prop_map(|b| format!("%{b:02X}")),
        "[a-zA-Z0-9._~!$&'()*+,;=:@-]{1,4}",
        "[a-z\u{e9}\u{fc}\u{4e2d}]{1,3}",
    ]
}

/// A request path: `/` and pieces.
fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..10).prop_map(|p| format!("/{}", p.concat()))
}

/// A path that normalizes: segments of text without `%`.
fn plain_path() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9._~-]{1,6}", 0..5).prop_map(|s| format!("/{}", s.join("/")))
}

/// Segments from a small alphabet, so generated routes and paths overlap.
fn segs() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "v1"]), 0..4)
}

fn join(segs: &[&str]) -> String {
    format!("/{}", segs.join("/"))
}

/// Any kind of route on paths from [`segs`].
fn any_spec() -> impl Strategy<Value = Spec> {
    let pat = prop_oneof![
        segs().prop_map(|s| Pat::Path(join(&s))),
        segs().prop_map(|s| Pat::Prefix(join(&s))),
        (
            segs(),
            prop::collection::vec(any::<bool>(), 4),
            any::<bool>()
        )
            .prop_map(|(s, params, catch_all)| {
                // Some segments made parameters, maybe a final catch-all.
                let mut t: Vec<String> = s
                    .iter()
                    .zip(&params)
                    .enumerate()
                    .map(|(i, (lit, p))| {
                        if *p {
                            format!("{{p{i}}}")
                        } else {
                            (*lit).to_owned()
                        }
                    })
                    .collect();
                if catch_all || !t.iter().any(|x| x.starts_with('{')) {
                    t.push("{*rest}".to_owned());
                }
                Pat::Path(format!("/{}", t.join("/")))
            }),
        prop::sample::select(vec!["^/a", "^/a/[^/]+$", "b$", "^/(a|b)/c"]).prop_map(Pat::Regex),
    ];
    (
        pat,
        prop::option::of(prop::sample::select(vec![
            "api.example.com",
            "*.example.com",
        ])),
        prop::sample::subsequence(vec!["GET", "POST", "PUT"], 0..=2),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
        -1..=1i32,
    )
        .prop_map(|(path, host, methods, header, priority)| Spec {
            path,
            host,
            methods,
            header,
            priority,
        })
}

fn any_req() -> impl Strategy<Value = (Req<'static>, String)> {
    (
        prop::option::of(prop::sample::select(vec![
            "api.example.com",
            "www.example.com",
            "example.com",
        ])),
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
        segs(),
    )
        .prop_map(|(host, method, header, segs)| {
            (
                Req {
                    host,
                    method,
                    headers: header.map(|v| ("x-v", v)).into_iter().collect(),
                },
                join(&segs),
            )
        })
}

// ---------------------------------------------------------------------------------------
// The path normalizer

proptest! {
    #![proptest_config(config())]

    #[test]
    fn normalization_is_idempotent(path in raw_path()) {
        if let Ok(once) = normalize(&path) {
            let twice = normalize(&once).map(Cow::into_owned);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "from {:?}", path);
        }
    }

    #[test]
    fn normalized_paths_have_no_dot_or_empty_segments(path in raw_path()) {
        if let Ok(out) = normalize(&path) {
            prop_assert!(out.starts_with('/'));
            prop_assert!(!out.contains("//"), "{:?} -> {:?}", path, out);
            for seg in out[1..].split('/') {
                prop_assert!(seg != "." && seg != "..", "{:?} -> {:?}", path, out);
            }
            // Escapes left are upper-case and stand for bytes that must stay escaped.
            let b = out.as_bytes();
            for (i, _) in out.match_indices('%') {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                prop_assert_eq!(hex, hex.to_ascii_uppercase());
                let v = u8::from_str_radix(hex, 16).unwrap();
                prop_assert!(v != 0 && !unreserved(v), "{:?} -> {:?}", path, out);
            }
        }
    }

    #[test]
    fn encoded_unreserved_characters_route_like_their_plain_form(
        path in plain_path(),
        encode in prop::collection::vec(any::<(bool, bool)>(), 32),
    ) {
        // Escape some of the characters (upper- or lower-case hex), never a separator.
        let mut escaped = String::new();
        for (i, c) in path.chars().enumerate() {
            let (on, upper) = encode[i % encode.len()];
            if on && c != '/' {
                let b = u8::try_from(c).unwrap();
                escaped.push_str(&if upper { format!("%{b:02X}") } else { format!("%{b:02x}") });
            } else {
                escaped.push(c);
            }
        }
        prop_assert_eq!(norm(&escaped), norm(&path), "{:?}", escaped);
        let t = table(&[
            spec(Pat::Path(norm(&path))),
            spec(Pat::Prefix("/".to_owned())),
        ]);
        prop_assert_eq!(answer(&t, &get(), &norm(&escaped)), "r0");
    }

    #[test]
    fn encoded_separators_and_nul_never_become_separators(
        segs in prop::collection::vec("[a-z]{1,3}", 1..4),
        sep in prop::sample::select(vec![
            "%2f", "%2F", "%5c", "%5C", "%c0%af", "%C0%AF", "%e0%80%af", "%c1%9c", "%c0%2f",
        ]),
    ) {
        let path = format!("/{}", segs.join(sep));
        let out = norm(&path);
        // One segment: the encoded separator stays data, upper-cased.
        prop_assert_eq!(out.matches('/').count(), 1, "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains('\\'));
        prop_assert_eq!(out, format!("/{}", segs.join(&sep.to_ascii_uppercase())));
        // And it cannot climb: `..` after it removes the whole segment, nothing above it.
        let climbed = norm(&format!("/keep{path}/.."));
        prop_assert_eq!(climbed, "/keep/");
        let nul = format!("/{}", segs.join("%00"));
        if segs.len() > 1 {
            prop_assert_eq!(normalize(&nul), Err(PathError::EncodedNul));
        }
    }

    #[test]
    fn a_normal_path_is_returned_as_given(path in plain_path()) {
        // `plain_path` may produce dot segments (`.`, `..`); only those are rewritten.
        let has_dot_segment = path[1..].split('/').any(|s| s == "." || s == "..");
        prop_assume!(!has_dot_segment);
        prop_assert!(matches!(normalize(&path), Ok(Cow::Borrowed(p)) if p == path));
    }
}

/// Non-ASCII characters are plain bytes of the path (HTTP/1.1 clients send UTF-8 raw and
/// the `http` crate accepts it); normalizing must keep them whichever rule applies.
#[test]
fn non_ascii_characters_survive_normalization() {
    assert_eq!(norm("/caf\u{e9}/x"), "/caf\u{e9}/x");
    assert_eq!(norm("/caf\u{e9}/./x"), "/caf\u{e9}/x");
    assert_eq!(norm("/caf\u{e9}//x"), "/caf\u{e9}/x");
    assert_eq!(norm("/\u{4e2d}%41"), "/\u{4e2d}A");
}

// ---------------------------------------------------------------------------------------
// The route table

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_query_does_not_change_the_route(
        prefix in prop::collection::vec("[a-z]{1,3}", 1..3),
        rest in prop::collection::vec("[a-z0-9_-][a-z0-9._-]{0,3}", 0..3),
        query in "[a-zA-Z0-9=&%/.?#-]{0,16}",
    ) {
        // The router sees the path without its query (an origin-form target is cut at its
        // first `?`). Whatever the query holds (`/../`, `%2f`, another `?`), the request
        // routes as its path does.
        let prefix = format!("/{}", prefix.join("/"));
        let t = table(&[spec(Pat::Prefix(prefix.clone())), spec(Pat::Regex("."))]);
        let path = format!("{prefix}/{}", rest.join("/"));
        let target = format!("{path}?{query}");
        let (routed, _) = target.split_once('?').unwrap();
        prop_assert_eq!(answer(&t, &get(), &norm(routed)), "r0");
        prop_assert_eq!(answer(&t, &get(), &norm(routed)), answer(&t, &get(), &norm(&path)));
        // An encoded `?` is not a query: it stays inside its segment and the prefix holds.
        let encoded = norm(&format!("{path}%3F{}", query.replace(['%', '?', '#'], "")));
        prop_assert_eq!(answer(&t, &get(), &encoded), "r0", "{}", encoded);
    }

    #[test]
    fn exact_routes_match_only_their_own_path(
        exact in segs(),
        path in raw_path(),
    ) {
        let exact = join(&exact);
        let t = table(&[spec(Pat::Path(exact.clone())), spec(Pat::Prefix("/".to_owned()))]);
        if let Ok(p) = normalize(&path) {
            let want = if *p == exact { "r0" } else { "r1" };
            prop_assert_eq!(answer(&t, &get(), &p), want, "{:?} -> {:?}", path, p);
        }
    }

    #[test]
    fn longest_prefix_wins(
        prefixes in prop::collection::btree_set(segs(), 1..5),
        path in segs(),
    ) {
        let prefixes: Vec<String> = prefixes.iter().map(|s| join(s)).collect();
        let specs: Vec<Spec> = prefixes.iter().map(|p| spec(Pat::Prefix(p.clone()))).collect();
        let path = join(&path);
        let t = table(&specs);
        // Segment-boundary matching, as documented: `/v2` matches `/v2` and `/v2/x`.
        let under = |p: &str| p == "/" || path == p || path.starts_with(&format!("{p}/"));
        let best = prefixes
            .iter()
            .enumerate()
            .filter(|(_, p)| under(p))
            .max_by_key(|(_, p)| p.len())
            .map_or("404".to_owned(), |(i, _)| format!("r{i}"));
        prop_assert_eq!(answer(&t, &get(), &path), best, "{} among {:?}", path, prefixes);
    }

    #[test]
    fn a_prefix_with_a_trailing_slash_is_the_same_prefix(prefix in segs(), path in segs()) {
        // `/v2/` and `/v2` mean the same prefix, matched at segment boundaries only.
        let plain = table(&[spec(Pat::Prefix(join(&prefix)))]);
        let slashed = table(&[spec(Pat::Prefix(format!("{}/", join(&prefix))))]);
        let path = join(&path);
        prop_assert_eq!(answer(&plain, &get(), &path), answer(&slashed, &get(), &path));
        prop_assume!(!prefix.is_empty());
        let longer = format!("{}x", join(&prefix));
        prop_assert_eq!(answer(&plain, &get(), &longer), "404", "{} is not under {:?}", longer, prefix);
    }

    #[test]
    fn a_wildcard_host_matches_subdomains_only(
        label in "[a-z0-9][a-z0-9-]{0,9}",
        deeper in prop::option::of("[a-z]{1,5}"),
    ) {
        // `*.example.com`: any name ending in `.example.com`, not `example.com` itself (nor
        // a name that only ends in the same letters).
        let mut wild = spec(Pat::Prefix("/".to_owned()));
        wild.host = Some("*.example.com");
        let t = table(&[wild, spec(Pat::Prefix("/".to_owned()))]);
        let host = match &deeper {
            Some(d) => format!("{d}.{label}.example.com"),
            None => format!("{label}.example.com"),
        };
        let at = |h: &str| answer(&t, &Req { host: Some(h), ..get() }, "/x");
        prop_assert_eq!(at(&host), "r0", "{}", host);
        prop_assert_eq!(at("example.com"), "r1");
        prop_assert_eq!(at(&format!("{label}example.com")), "r1");
    }

    #[test]
    fn a_route_that_cannot_match_changes_nothing(
        specs in prop::collection::vec(any_spec(), 0..6),
        (req, path) in any_req(),
        extra in any_spec(),
        at in 0..7usize,
    ) {
        let Some(before) = build(&specs) else { return Ok(()) };
        // The extra route, made unable to match this request: a header value the request
        // never sends. Inserted anywhere (file order moves the later routes down one).
        let mut extra = extra;
        extra.header = Some("never");
        let at = at.min(specs.len());
        let mut with = specs;
        with.insert(at, extra);
        let Some(after) = build(&with) else { return Ok(()) };
        let rename = |name: String| match name.strip_prefix('r').and_then(|n| n.parse::<usize>().ok()) {
            Some(i) if i > at => format!("r{}", i - 1),
            Some(i) if i == at => "the extra route".to_owned(),
            _ => name,
        };
        prop_assert_eq!(
            rename(answer(&after, &req, &path)),
            answer(&before, &req, &path),
            "{} {} with {:?}", req.method, path, with
        );
    }

    #[test]
    fn a_match_satisfies_its_own_conditions(
        specs in prop::collection::vec(any_spec(), 1..7),
        (req, path) in any_req(),
    ) {
        let Some(t) = build(&specs) else { return Ok(()) };
        match t.lookup(&req, &path) {
            Lookup::Found(f) => {
                prop_assert_eq!(f.route.matcher.mismatch(&req, &path), None);
            }
            Lookup::MethodNotAllowed(allow) => {
                // Some route matches all but the method, none matches all, and `Allow`
                // names exactly the methods of the near misses.
                let any_method = |r: &Route| RouteMatch { methods: MethodSet::ANY, ..r.matcher.clone() };
                let near: Vec<&Route> = t
                    .routes()
                    .iter()
                    .filter(|r| any_method(r).mismatch(&req, &path).is_none())
                    .collect();
                prop_assert!(!near.is_empty());
                prop_assert!(t.routes().iter().all(|r| r.matcher.mismatch(&req, &path).is_some()));
                let union = near.iter().fold(MethodSet::ANY, |m, r| m.union(r.matcher.methods));
                prop_assert_eq!(allow, union);
            }
            Lookup::NotFound => {
                for r in t.routes() {
                    prop_assert!(r.matcher.mismatch(&req, &path).is_some(), "{} matches {}", r.name, path);
                }
            }
        }
    }

    #[test]
    fn the_most_specific_applicable_route_wins(
        specs in prop::collection::vec(any_spec(), 1..7),
        (req, path) in any_req(),
    ) {
        let Some(t) = build(&specs) else { return Ok(()) };
        let best = t
            .routes()
            .iter()
            .filter(|r| r.matcher.mismatch(&req, &path).is_none())
            .max_by_key(|r| rank(r))
            .map(|r| r.name.clone());
        if let Lookup::Found(f) = t.lookup(&req, &path) {
            prop_assert_eq!(Some(f.route.name.clone()), best, "{} {} among {:?}", req.method, path, specs);
        } else {
            prop_assert_eq!(best, None);
        }
    }
}

/// Contract §3 as a sort key: priority; exact > template > prefix > regex; fewer template
/// parameters, longer prefix; exact host > longer wildcard > none; more header conditions;
/// earlier in the file.
fn rank(r: &Route) -> impl Ord + use<> {
    let (class, fewer_params, prefix_len) = match &r.matcher.path {
        PathPattern::Exact(_) => (3, 0, 0),
        PathPattern::Template(t) => (2, usize::MAX - t.param_count(), 0),
        PathPattern::Prefix(p) => (1, 0, p.len()),
        PathPattern::Regex(_) => (0, 0, 0),
    };
    let host = match &r.matcher.host {
        None => (0, 0),
        Some(HostPattern::Suffix(s)) => (1, s.len()),
        Some(HostPattern::Exact(_)) => (2, 0),
    };
    (
        r.priority,
        class,
        fewer_params,
        prefix_len,
        host,
        r.matcher.headers.len(),
        std::cmp::Reverse(r.index),
    )
}

// ---------------------------------------------------------------------------------------
// Template precedence, what a template match captures, and what an origin decodes

proptest! {
    #![proptest_config(config())]

    #[test]
    fn templates_rank_by_parameter_count_then_file_order(
        templates in prop::collection::vec(template(), 2..5),
        path in segs(),
    ) {
        let specs: Vec<Spec> = templates.into_iter().map(|t| spec(Pat::Path(t))).collect();
        let Some(t) = build(&specs) else { return Ok(()) };
        let path = join(&path);
        let best = t
            .routes()
            .iter()
            .filter(|r| r.matcher.mismatch(&get(), &path).is_none())
            .max_by_key(|r| rank(r))
            .map(|r| r.name.clone());
        let got = match t.lookup(&get(), &path) {
            Lookup::Found(f) => Some(f.route.name.clone()),
            _ => None,
        };
        prop_assert_eq!(got, best, "{} among {:?}", path, specs);
    }

    #[test]
    fn a_template_match_captures_every_parameter(
        templates in prop::collection::vec(
            (template(), prop::sample::subsequence(vec!["GET", "POST"], 0..=1)),
            2..5,
        ),
        path in segs(),
    ) {
        let specs: Vec<Spec> = templates
            .into_iter()
            .map(|(t, methods)| Spec { methods, ..spec(Pat::Path(t)) })
            .collect();
        let Some(t) = build(&specs) else { return Ok(()) };
        let path = join(&path);
        if let Lookup::Found(f) = t.lookup(&get(), &path)
            && let PathPattern::Template(tmpl) = &f.route.matcher.path
        {
            let names: Vec<&str> = f.params.iter().map(|(n, _)| *n).collect();
            prop_assert_eq!(names, tmpl.param_names().collect::<Vec<_>>(), "{} on {}", tmpl.source, path);
        }
    }

    #[test]
    fn a_path_that_is_not_ambiguous_decodes_to_the_segments_routed(path in raw_path()) {
        // What an origin that percent-decodes the forwarded path sees has the same
        // separators as what weir routed, unless the path is reported ambiguous (and then
        // refused by routes that do not allow it).
        let Ok(out) = normalize(&path) else { return Ok(()) };
        if !weir_domain::path::is_ambiguous(&out) {
            let decoded = weir_domain::percent::decode(out.as_bytes(), Default::default()).unwrap();
            let seps = |b: &[u8]| b.iter().filter(|c| matches!(c, b'/' | b'\\')).count();
            prop_assert_eq!(seps(&decoded), out.matches('/').count(), "{:?} -> {:?}", path, out);
            prop_assert!(!decoded.contains(&0));
        }
    }
}

/// Templates on the small alphabet, each segment maybe a parameter, maybe a catch-all.
fn template() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4),
        prop::collection::vec(any::<bool>(), 4),
        any::<bool>(),
    )
        .prop_map(|(s, params, catch_all)| {
            let mut t: Vec<String> = s
                .iter()
                .zip(&params)
                .enumerate()
                .map(|(i, (lit, p))| {
                    if *p {
                        format!("{{p{i}}}")
                    } else {
                        (*lit).to_owned()
                    }
                })
                .collect();
            if catch_all {
                *t.last_mut().unwrap() = "{*rest}".to_owned();
            } else if !t.iter().any(|x| x.starts_with('{')) {
                t[0] = "{p0}".to_owned();
            }
            format!("/{}", t.join("/"))
        })
}

fn found(t: &RouteTable, req: &Req<'_>, path: &str) -> (String, Vec<(String, String)>) {
    match t.lookup(req, path) {
        Lookup::Found(f) => (
            f.route.matcher.path.to_string(),
            f.params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        _ => panic!("no route for {path}"),
    }
}

#[test]
fn a_template_with_fewer_parameters_beats_one_with_more() {
    let t = table(&[
        spec(Pat::Path("/a/{x}/{y}".into())),
        spec(Pat::Path("/{p}/b/c".into())),
    ]);
    assert_eq!(found(&t, &get(), "/a/b/c").0, "/{p}/b/c");
}

#[test]
fn tied_templates_go_by_file_order() {
    let t = table(&[
        spec(Pat::Path("/a/{x}/c".into())),
        spec(Pat::Path("/a/b/{y}".into())),
    ]);
    assert_eq!(found(&t, &get(), "/a/b/c").0, "/a/{x}/c");
    let t = table(&[
        spec(Pat::Path("/{p}/b".into())),
        spec(Pat::Path("/a/{*r}".into())),
    ]);
    assert_eq!(found(&t, &get(), "/a/b").0, "/{p}/b");
}

#[test]
fn a_template_found_after_the_best_shape_is_filtered_keeps_its_parameters() {
    let mut post_only = spec(Pat::Path("/a/b/{y}".into()));
    post_only.methods = vec!["POST"];
    let t = table(&[post_only, spec(Pat::Path("/a/{x}/c".into()))]);
    assert_eq!(
        found(&t, &get(), "/a/b/c"),
        (
            "/a/{x}/c".to_owned(),
            vec![("x".to_owned(), "b".to_owned())]
        )
    );
}

#[test]
fn a_prefix_ended_by_a_semicolon_matches_in_explain_too() {
    let t = table(&[spec(Pat::Prefix("/users".into()))]);
    for path in ["/users;jsessionid=1", "/users;x/7/a"] {
        let Lookup::Found(f) = t.lookup(&get(), path) else {
            panic!("{path} is under /users")
        };
        assert_eq!(f.route.matcher.mismatch(&get(), path), None, "{path}");
    }
}
