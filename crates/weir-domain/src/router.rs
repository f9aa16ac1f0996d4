//! The route table: compiled once per config, looked up once per request, never locked.
//!
//! Precedence (contract §3): a higher `priority` overrides everything; then the most specific
//! path wins (exact > template with fewer parameters > longer prefix > regex); then a host
//! match beats no host (exact host > longer wildcard); then more header conditions win; what
//! is still tied goes by order in the file.
//!
//! Routes are grouped in buckets by host (one per exact host, one per wildcard, one for routes
//! without a host). Each bucket keeps a hash map for exact paths, a radix tree (matchit) for
//! templates, a hash map for prefixes probed at each segment boundary, and a `RegexSet`.
//! A lookup visits at most the request host's exact bucket, the wildcards that match it, and
//! the host-less bucket, and keeps the best-ranked candidate.

use std::cmp::Reverse;
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use regex::RegexSet;

use crate::route::{HostPattern, MethodSet, PathPattern, Route};

/// What the router needs to know of a request, so the domain does not depend on an HTTP crate.
pub trait RequestHead {
    /// Lower-case host without port; `None` when the request named none.
    fn host(&self) -> Option<&str>;
    /// The method's bit from [`MethodSet::bit`], 0 for extension methods.
    fn method_bit(&self) -> u16;
    /// The first value of a header, by lower-case name.
    fn header(&self, lower_name: &str) -> Option<&[u8]>;
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup<'t, 'p> {
    Found(Found<'t, 'p>),
    /// Some route matches everything but the method: answer 405 with these in `Allow`.
    MethodNotAllowed(MethodSet),
    NotFound,
}

/// A matched route and the template parameters it captured.
#[derive(Debug)]
pub struct Found<'t, 'p> {
    pub route: &'t Route,
    pub params: Vec<(&'t str, &'p str)>,
}

/// Why two routes cannot both exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    /// Index of the later route (the one reported).
    pub route: usize,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: i32,
    /// 3 exact, 2 template, 1 prefix, 0 regex.
    class: u8,
    /// Templates: fewer parameters ranks higher; prefixes: longer ranks higher.
    specificity: u32,
    /// 2 exact host, 1 wildcard, 0 none; then the wildcard's length.
    host: (u8, usize),
    headers: usize,
    order: Reverse<usize>,
}

#[derive(Default, Debug)]
struct Bucket {
    exact: FxHashMap<String, Vec<usize>>,
    templates: matchit::Router<Vec<usize>>,
    template_routes: Vec<usize>,
    /// For a template route, the other templates of the bucket that can match a path it
    /// matches: the radix tree answers with one shape (static segments first), but the
    /// contract ranks by fewer parameters, then file order, so these must be asked too.
    /// Empty for most tables, so most lookups never look here.
    rivals: FxHashMap<usize, Vec<usize>>,
    prefixes: FxHashMap<String, Vec<usize>>,
    regex_set: Option<RegexSet>,
    regex_routes: Vec<usize>,
}

/// The compiled, immutable route table.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_host: FxHashMap<String, Bucket>,
    wildcards: Vec<(String, Bucket)>,
    any_host: Bucket,
}

impl RouteTable {
    /// Builds the table, or reports every pair of routes that conflict.
    pub fn build(routes: Vec<Route>) -> Result<Self, Vec<RouteConflict>> {
        let mut conflicts = Vec::new();
        check_duplicates(&routes, &mut conflicts);
        let mut by_host: FxHashMap<String, Bucket> = FxHashMap::default();
        let mut wildcards: Vec<(String, Bucket)> = Vec::new();
        let mut any_host = Bucket::default();
        for (i, route) in routes.iter().enumerate() {
            let bucket = match &route.matcher.host {
                None => &mut any_host,
                Some(HostPattern::Exact(h)) => by_host.entry(h.clone()).or_default(),
                Some(HostPattern::Suffix(s)) => {
                    if let Some(pos) = wildcards.iter().position(|(w, _)| w == s) {
                        &mut wildcards[pos].1
                    } else {
                        wildcards.push((s.clone(), Bucket::default()));
                        let last = wildcards.len() - 1;
                        &mut wildcards[last].1
                    }
                }
            };
            match &route.matcher.path {
                PathPattern::Exact(p) => bucket.exact.entry(p.clone()).or_default().push(i),
                PathPattern::Prefix(p) => bucket.prefixes.entry(p.clone()).or_default().push(i),
                PathPattern::Template(t) => {
                    let key = t.to_matchit();
                    match bucket.templates.at_mut(&key) {
                        Ok(m) if same_shape(&routes, m.value[0], i) => m.value.push(i),
                        _ => {
                            if let Err(e) = bucket.templates.insert(key, vec![i]) {
                                conflicts.push(RouteConflict {
                                    route: i,
                                    message: format!(
                                        "path template {} conflicts with another route's template: {e}",
                                        t.source
                                    ),
                                });
                            }
                        }
                    }
                    bucket.template_routes.push(i);
                }
                PathPattern::Regex(_) => bucket.regex_routes.push(i),
            }
        }
        let buckets = by_host
            .values_mut()
            .chain(wildcards.iter_mut().map(|(_, b)| b));
        for bucket in buckets.chain(std::iter::once(&mut any_host)) {
            compile_regexes(bucket, &routes, &mut conflicts);
            find_rivals(bucket, &routes);
        }
        if !conflicts.is_empty() {
            conflicts.sort_by_key(|c| c.route);
            return Err(conflicts);
        }
        // Longest wildcard first, so the first match is the most specific.
        wildcards.sort_by_key(|(s, _)| Reverse(s.len()));
        Ok(Self {
            routes,
            by_host,
            wildcards,
            any_host,
        })
    }

    /// The routes in file order.
    #[must_use]
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes in match order: the order in which they would win a tie on everything but
    /// the path (for `GET /routes` and `weir explain`).
    #[must_use]
    pub fn routes_in_match_order(&self) -> Vec<&Route> {
        let mut all: Vec<&Route> = self.routes.iter().collect();
        all.sort_by_key(|r| Reverse(static_rank(r)));
        all
    }

    /// Finds the route for a request with a normalized path.
    pub fn lookup<'t, 'p>(&'t self, req: &impl RequestHead, path: &'p str) -> Lookup<'t, 'p> {
        let mut best: Option<(Rank, Found<'t, 'p>)> = None;
        let mut allowed = MethodSet::ANY;
        let mut method_miss = false;
        let host = req.host();
        if let Some(h) = host {
            if let Some(bucket) = self.by_host.get(h) {
                self.search(bucket, req, path, &mut best, &mut allowed, &mut method_miss);
            }
            for (suffix, bucket) in &self.wildcards {
                if h.len() > suffix.len() && h.ends_with(suffix.as_str()) {
                    self.search(bucket, req, path, &mut best, &mut allowed, &mut method_miss);
                }
            }
        }
        self.search(
            &self.any_host,
            req,
            path,
            &mut best,
            &mut allowed,
            &mut method_miss,
        );
        match best {
            Some((_, found)) => Lookup::Found(found),
            None if method_miss => Lookup::MethodNotAllowed(allowed),
            None => Lookup::NotFound,
        }
    }

    fn search<'t, 'p>(
        &'t self,
        bucket: &'t Bucket,
        req: &impl RequestHead,
        path: &'p str,
        best: &mut Option<(Rank, Found<'t, 'p>)>,
        allowed: &mut MethodSet,
        method_miss: &mut bool,
    ) {
        let mut offer = |i: usize, params: Vec<(&'t str, &'p str)>| {
            let route = &self.routes[i];
            if !headers_match(route, req) {
                return false;
            }
            if !route.matcher.methods.contains(req.method_bit()) {
                *allowed = allowed.union(route.matcher.methods);
                *method_miss = true;
                return false;
            }
            let rank = static_rank(route);
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                *best = Some((rank, Found { route, params }));
            }
            true
        };
        if let Some(ids) = bucket.exact.get(path) {
            for &i in ids {
                offer(i, Vec::new());
            }
        }
        if !bucket.template_routes.is_empty() {
            let mut hit = false;
            if let Ok(m) = bucket.templates.at(path) {
                for &i in m.value {
                    let params = m.params.iter().collect();
                    hit |= offer(i, params);
                }
                if let Some(rivals) = bucket.rivals.get(&m.value[0]) {
                    for &i in rivals {
                        if let PathPattern::Template(t) = &self.routes[i].matcher.path
                            && let Some(params) = t.captures(path)
                        {
                            hit |= offer(i, params);
                        }
                    }
                }
            }
            if !hit {
                // The radix tree gives one best shape; when its routes were filtered out by
                // method or headers, a less specific template may still apply.
                for &i in &bucket.template_routes {
                    if let PathPattern::Template(t) = &self.routes[i].matcher.path
                        && let Some(params) = t.captures(path)
                    {
                        offer(i, params);
                    }
                }
            }
        }
        if !bucket.prefixes.is_empty() {
            if let Some(ids) = bucket.prefixes.get(path) {
                for &i in ids {
                    offer(i, Vec::new());
                }
            }
            // A `;` ends a segment's name too (`/admin;jsessionid=1` is under `/admin`), as
            // servlet containers read it: an origin must not see a path of a protected
            // prefix that was routed elsewhere.
            for (at, _) in path.rmatch_indices(['/', ';']) {
                let key = if at == 0 { "/" } else { &path[..at] };
                if let Some(ids) = bucket.prefixes.get(key) {
                    for &i in ids {
                        offer(i, Vec::new());
                    }
                }
            }
        }
        if let Some(set) = &bucket.regex_set {
            for m in set.matches(path).iter() {
                offer(bucket.regex_routes[m], Vec::new());
            }
        }
    }
}

fn compile_regexes(bucket: &mut Bucket, routes: &[Route], conflicts: &mut Vec<RouteConflict>) {
    if bucket.regex_routes.is_empty() {
        return;
    }
    let sources = bucket
        .regex_routes
        .iter()
        .filter_map(|&i| match &routes[i].matcher.path {
            PathPattern::Regex(r) => Some(r.as_str()),
            _ => None,
        });
    match RegexSet::new(sources) {
        Ok(set) => bucket.regex_set = Some(set),
        Err(e) => conflicts.push(RouteConflict {
            route: bucket.regex_routes[0],
            message: format!("regex routes cannot be compiled together: {e}"),
        }),
    }
}

fn headers_match(route: &Route, req: &impl RequestHead) -> bool {
    route
        .matcher
        .headers
        .iter()
        .all(|c| req.header(&c.name).is_some_and(|v| v == c.value.as_bytes()))
}

fn static_rank(route: &Route) -> Rank {
    let m = &route.matcher;
    let (class, specificity) = match &m.path {
        PathPattern::Exact(_) => (3, 0),
        PathPattern::Template(t) => (
            2,
            u32::MAX - u32::try_from(t.param_count()).unwrap_or(u32::MAX),
        ),
        PathPattern::Prefix(p) => (1, u32::try_from(p.len()).unwrap_or(u32::MAX)),
        PathPattern::Regex(_) => (0, 0),
    };
    let host = match &m.host {
        None => (0, 0),
        Some(HostPattern::Suffix(s)) => (1, s.len()),
        Some(HostPattern::Exact(_)) => (2, 0),
    };
    Rank {
        priority: route.priority,
        class,
        specificity,
        host,
        headers: m.headers.len(),
        order: Reverse(route.index),
    }
}

fn find_rivals(bucket: &mut Bucket, routes: &[Route]) {
    let template = |i: usize| match &routes[i].matcher.path {
        PathPattern::Template(t) => Some(t),
        _ => None,
    };
    for &i in &bucket.template_routes {
        let Some(a) = template(i) else { continue };
        let rivals: Vec<usize> = bucket
            .template_routes
            .iter()
            .copied()
            .filter(|&j| template(j).is_some_and(|b| a.segments != b.segments && may_overlap(a, b)))
            .collect();
        if !rivals.is_empty() {
            bucket.rivals.insert(i, rivals);
        }
    }
}

/// Whether some path could match both templates (erring towards yes).
fn may_overlap(a: &crate::route::Template, b: &crate::route::Template) -> bool {
    use crate::route::Segment;
    let catch_all =
        |t: &crate::route::Template| matches!(t.segments.last(), Some(Segment::CatchAll(_)));
    if !catch_all(a) && !catch_all(b) && a.segments.len() != b.segments.len() {
        return false;
    }
    a.segments.iter().zip(&b.segments).all(|pair| match pair {
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        _ => true,
    })
}

/// Two templates share a radix-tree entry only when they are the same template.
fn same_shape(routes: &[Route], a: usize, b: usize) -> bool {
    match (&routes[a].matcher.path, &routes[b].matcher.path) {
        (PathPattern::Template(x), PathPattern::Template(y)) => x.segments == y.segments,
        _ => false,
    }
}

/// A route that matches exactly what an earlier one matches, at the same priority, could never
/// be chosen: that is a configuration mistake, not a tie.
fn check_duplicates(routes: &[Route], conflicts: &mut Vec<RouteConflict>) {
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let m = &r.matcher;
        let mut headers: Vec<_> = m
            .headers
            .iter()
            .map(|h| format!("{}={}", h.name, h.value))
            .collect();
        headers.sort();
        let key = format!(
            "{}|{}|{}|{}|{}",
            m.host.as_ref().map(ToString::to_string).unwrap_or_default(),
            m.path.kind(),
            m.path,
            headers.join(","),
            r.priority
        );
        let earlier = seen.entry(key).or_default();
        for &j in earlier.iter() {
            let overlap = m.methods.intersects(routes[j].matcher.methods);
            if overlap {
                conflicts.push(RouteConflict {
                    route: i,
                    message: format!(
                        "matches exactly what route \"{}\" (routes[{j}]) matches; it could never be chosen (give one a different priority, method, host or header)",
                        routes[j].name
                    ),
                });
            }
        }
        earlier.push(i);
    }
}

#[cfg(test)]
mod tests;
