//! A route: what it matches, where it sends the request, and the policies between.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

/// Index of an upstream in the snapshot's upstream list, resolved at load so the request path
/// never looks an upstream up by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub usize);

/// The host condition of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Exact host name, lower case, without port.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (stored as `.example.com`).
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    #[must_use]
    pub fn parse(s: &str) -> Self {
        let lower = s.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(rest) => Self::Suffix(rest.to_owned()),
            None => Self::Exact(lower),
        }
    }

    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// The path condition of a route, from most to least specific kind.
#[derive(Clone, Debug)]
pub enum PathPattern {
    /// `path: /health` with no `{}`: equality.
    Exact(String),
    /// `path: /users/{id}` or `/files/{*rest}`: segments and named parameters.
    Template(Template),
    /// `prefix: /v2`: the path is `/v2` or starts with `/v2/`.
    Prefix(String),
    /// `regex: ^/v2/\d+$`.
    Regex(Regex),
}

impl PathPattern {
    /// `path:` values: exact unless they hold a `{parameter}`.
    pub fn from_path(path: &str) -> Result<Self, String> {
        if path.contains('{') || path.contains('}') {
            Template::parse(path).map(Self::Template)
        } else if !path.starts_with('/') {
            Err("a path must start with '/'".to_owned())
        } else {
            Ok(Self::Exact(path.to_owned()))
        }
    }

    /// `prefix:` values. A trailing slash is dropped: `/v2/` and `/v2` mean the same prefix.
    pub fn from_prefix(prefix: &str) -> Result<Self, String> {
        if !prefix.starts_with('/') {
            return Err("a prefix must start with '/'".to_owned());
        }
        let trimmed = prefix.trim_end_matches('/');
        Ok(Self::Prefix(if trimmed.is_empty() {
            "/".to_owned()
        } else {
            trimmed.to_owned()
        }))
    }

    /// True when a normalized path falls under this prefix. A `;` ends a segment's name as
    /// a `/` does (`/v2;jsessionid=1` is under `/v2`), as the route table reads it.
    #[must_use]
    pub fn prefix_matches(prefix: &str, path: &str) -> bool {
        prefix == "/"
            || path.strip_prefix(prefix).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('/') || rest.starts_with(';')
            })
    }

    /// A short kind name for explain output.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Exact(_) => "exact",
            Self::Template(_) => "template",
            Self::Prefix(_) => "prefix",
            Self::Regex(_) => "regex",
        }
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Template(t) => f.write_str(&t.source),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Regex(r) => write!(f, "~{}", r.as_str()),
        }
    }
}

/// A path template: literal segments, `{name}` (one segment) and a final `{*name}` (the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.starts_with('/') {
            return Err("a path must start with '/'".to_owned());
        }
        let parts: Vec<&str> = source[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let (name, catch_all) = match inner.strip_prefix('*') {
                    Some(n) => (n, true),
                    None => (inner, false),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "parameter {{{inner}}} must be a name of letters, digits and '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                if catch_all {
                    if i + 1 != parts.len() {
                        return Err(format!("catch-all {{*{name}}} must be the last segment"));
                    }
                    Segment::CatchAll(name.to_owned())
                } else {
                    Segment::Param(name.to_owned())
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "segment \"{part}\" mixes text and a parameter; a parameter must be a whole segment"
                ));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(seg);
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The names of its parameters, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) | Segment::CatchAll(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Number of parameters: fewer is more specific.
    #[must_use]
    pub fn param_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| !matches!(s, Segment::Literal(_)))
            .count()
    }

    /// The same template in matchit's syntax (which this one mirrors).
    #[must_use]
    pub fn to_matchit(&self) -> String {
        let mut out = String::with_capacity(self.source.len());
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => {
                    // matchit reserves braces; literals cannot hold them (rejected above).
                    out.push_str(l);
                }
                Segment::Param(n) => {
                    out.push('{');
                    out.push_str(n);
                    out.push('}');
                }
                Segment::CatchAll(n) => {
                    out.push_str("{*");
                    out.push_str(n);
                    out.push('}');
                }
            }
        }
        out
    }

    /// Matches a normalized path by segments, with the parameters' values. Used when the
    /// radix tree's single best answer was filtered out by method or headers and a less
    /// specific template must be tried.
    #[must_use]
    pub fn captures<'t, 'p>(&'t self, path: &'p str) -> Option<Vec<(&'t str, &'p str)>> {
        let mut rest = path.strip_prefix('/').unwrap_or(path);
        let mut params = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            if let Segment::CatchAll(name) = seg {
                if rest.is_empty() {
                    return None;
                }
                params.push((name.as_str(), rest));
                return Some(params);
            }
            let (head, tail) = match rest.find('/') {
                Some(at) => (&rest[..at], Some(&rest[at + 1..])),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if head == l => {}
                Segment::Param(name) if !head.is_empty() => params.push((name.as_str(), head)),
                _ => return None,
            }
            let last = i + 1 == self.segments.len();
            match tail {
                Some(t) if !last => rest = t,
                None if last => return Some(params),
                _ => return None,
            }
        }
        None
    }

    /// Whether a normalized path matches (see [`Template::captures`]).
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        self.captures(path).is_some()
    }
}

/// HTTP methods as a bit set, so the method check is one AND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const NAMES: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];

    /// Empty set: the route accepts every method.
    pub const ANY: Self = Self(0);

    /// Bit for a method name, or `None` for a method weir does not route on.
    #[must_use]
    pub fn bit(method: &str) -> Option<u16> {
        Self::NAMES
            .iter()
            .position(|m| *m == method)
            .map(|i| 1 << i)
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut bits = 0;
        for name in names {
            bits |= Self::bit(name).ok_or_else(|| {
                format!(
                    "unknown method \"{name}\" (one of {})",
                    Self::NAMES.join(", ")
                )
            })?;
        }
        Ok(Self(bits))
    }

    #[must_use]
    pub const fn is_any(self) -> bool {
        self.0 == 0
    }

    /// `bit` is the request's method bit; 0 for an extension method (matches only ANY).
    #[must_use]
    pub const fn contains(self, bit: u16) -> bool {
        self.0 == 0 || self.0 & bit != 0
    }

    /// True when some method is accepted by both sets.
    #[must_use]
    pub const fn intersects(self, other: Self) -> bool {
        self.0 == 0 || other.0 == 0 || self.0 & other.0 != 0
    }

    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// A header condition: the request must carry `name` with exactly `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderCondition {
    /// Lower case.
    pub name: String,
    pub value: String,
}

/// Everything a route matches on.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub host: Option<HostPattern>,
    pub path: PathPattern,
    pub methods: MethodSet,
    pub headers: Vec<HeaderCondition>,
}

impl RouteMatch {
    /// Why this route does not match a request, or `None` when it does. For `weir explain`;
    /// the route table answers the same question faster on the request path.
    #[must_use]
    pub fn mismatch(&self, req: &impl crate::router::RequestHead, path: &str) -> Option<String> {
        if let Some(h) = &self.host {
            match req.host() {
                Some(rh) if h.matches(rh) => {}
                Some(rh) => return Some(format!("host {rh} is not {h}")),
                None => return Some(format!("the request names no host (route wants {h})")),
            }
        }
        let path_ok = match &self.path {
            PathPattern::Exact(p) => p == path,
            PathPattern::Template(t) => t.matches(path),
            PathPattern::Prefix(p) => PathPattern::prefix_matches(p, path),
            PathPattern::Regex(r) => r.is_match(path),
        };
        if !path_ok {
            return Some(format!(
                "path {path} does not match {} {}",
                self.path.kind(),
                self.path
            ));
        }
        for c in &self.headers {
            if req.header(&c.name) != Some(c.value.as_bytes()) {
                return Some(format!("header {} is not \"{}\"", c.name, c.value));
            }
        }
        if !self.methods.contains(req.method_bit()) {
            return Some(format!(
                "method is not one of {}",
                self.methods.names().collect::<Vec<_>>().join(", ")
            ));
        }
        None
    }
}

/// A fixed response from `respond:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Arc<str>,
}

/// Where a matched request goes.
#[derive(Clone, Debug)]
pub enum RouteAction {
    Upstream(UpstreamId),
    Respond(StaticResponse),
}

/// `fallback`: what a route answers when its upstream cannot (no available target, the
/// circuit open, a connection failure or a timeout).
#[derive(Clone, Debug)]
pub enum Fallback {
    /// A static response.
    Respond(StaticResponse),
    /// One try on another upstream.
    Upstream(UpstreamId),
}

/// Path rewriting before forwarding: strip a prefix, rewrite by regex, then add a prefix.
#[derive(Clone, Debug, Default)]
pub struct PathTransform {
    pub strip_prefix: Option<String>,
    pub rewrite: Option<Rewrite>,
    pub add_prefix: Option<String>,
}

/// `rewrite: { regex, to }`: `to` may use the regex's captures (`$1`, `${name}`) and the
/// route's path parameters (`${path.NAME}`).
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub regex: Regex,
    /// `to` as written.
    pub to: String,
    /// `to` split at its `${path.NAME}` variables, or `None` when it has none.
    pieces: Option<Vec<RewritePiece>>,
}

#[derive(Clone, Debug)]
enum RewritePiece {
    /// Replacement text in the regex crate's syntax (captures expanded by it).
    Text(String),
    Param(String),
}

impl Rewrite {
    #[must_use]
    pub fn new(regex: Regex, to: String) -> Self {
        let mut pieces = Vec::new();
        let mut rest = to.as_str();
        // Capture names cannot hold a `.`, so `${path.x}` never means a capture.
        while let Some(at) = rest.find("${path.") {
            let after = &rest[at + 7..];
            let Some(end) = after.find('}') else { break };
            pieces.push(RewritePiece::Text(rest[..at].to_owned()));
            pieces.push(RewritePiece::Param(after[..end].to_owned()));
            rest = &after[end + 1..];
        }
        let pieces = (!pieces.is_empty()).then(|| {
            pieces.push(RewritePiece::Text(rest.to_owned()));
            pieces
        });
        Self { regex, to, pieces }
    }

    /// The path parameters `to` names.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().flatten().filter_map(|p| match p {
            RewritePiece::Param(name) => Some(name.as_str()),
            RewritePiece::Text(_) => None,
        })
    }

    /// The rewritten path, or `None` when the regex does not match.
    fn apply(&self, path: &str, params: &[(&str, String)]) -> Option<String> {
        let to = match &self.pieces {
            None => std::borrow::Cow::Borrowed(self.to.as_str()),
            Some(pieces) => {
                let mut to = String::new();
                for piece in pieces {
                    match piece {
                        RewritePiece::Text(t) => to.push_str(t),
                        RewritePiece::Param(name) => {
                            if let Some((_, v)) = params.iter().find(|(n, _)| n == name) {
                                // A `$` in a value is text, not a capture reference.
                                to.push_str(&v.replace('$', "$$"));
                            }
                        }
                    }
                }
                std::borrow::Cow::Owned(to)
            }
        };
        match self.regex.replace(path, to.as_ref()) {
            std::borrow::Cow::Owned(s) => Some(s),
            std::borrow::Cow::Borrowed(_) => None,
        }
    }
}

impl PathTransform {
    #[must_use]
    pub fn is_identity(&self) -> bool {
        self.strip_prefix.is_none() && self.rewrite.is_none() && self.add_prefix.is_none()
    }

    /// Whether the rewrite names the route's path parameters.
    #[must_use]
    pub fn reads_params(&self) -> bool {
        self.rewrite
            .as_ref()
            .is_some_and(|r| r.params().next().is_some())
    }

    /// Applies the transform to a normalized path. Stripping stops at a segment boundary, and
    /// the result always starts with `/`.
    #[must_use]
    pub fn apply(&self, path: &str) -> String {
        self.apply_with(path, &[])
    }

    /// [`Self::apply`] with the route's path parameters, for a rewrite that names them.
    #[must_use]
    pub fn apply_with(&self, path: &str, params: &[(&str, String)]) -> String {
        let mut out: String = path.to_owned();
        if let Some(prefix) = &self.strip_prefix
            && prefix != "/"
            && PathPattern::prefix_matches(prefix, &out)
        {
            let mut rest = &out[prefix.len()..];
            if rest.starts_with(';') {
                // The parameters belong to the stripped segment.
                rest = rest.find('/').map_or("", |at| &rest[at..]);
            }
            out = rest.to_owned();
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
        }
        if let Some(rewrite) = &self.rewrite {
            if let Some(rewritten) = rewrite.apply(&out, params) {
                out = rewritten;
            }
            if !out.starts_with('/') {
                out.insert(0, '/');
            }
        }
        if let Some(prefix) = &self.add_prefix {
            let trimmed = prefix.trim_end_matches('/');
            out = if out == "/" && !trimmed.is_empty() {
                trimmed.to_owned()
            } else {
                format!("{trimmed}{out}")
            };
        }
        out
    }
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Position in the file: the last tie-breaker.
    pub index: usize,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub priority: i32,
    pub timeout: Option<Duration>,
    pub max_body_bytes: Option<u64>,
    /// Paths with an encoded or backslash separator are routed instead of refused (see
    /// [`crate::path::is_ambiguous`]).
    pub allow_ambiguous_paths: bool,
    pub path_transform: PathTransform,
    /// Header and query changes on the way in, header changes on the way out.
    pub transforms: crate::transform::Transforms,
    /// Who may call the route (`auth`, `ip`, `cors`); `None` when open.
    pub access: Access,
    /// `rate_limit`: every policy must admit the request.
    pub rate_limits: Vec<crate::ratelimit::RateLimitPolicy>,
    pub fallback: Option<Fallback>,
    /// `cache`: responses kept and served again; `None` when off.
    /// Shared, so a request on its way to the upstream (or a background refresh) holds it
    /// without a copy.
    pub cache: Option<std::sync::Arc<crate::cache::CacheSpec>>,
    /// `grpc`: REST -> gRPC transcoding and gRPC-Web; `None` when off.
    pub grpc: Option<std::sync::Arc<crate::grpc::GrpcSpec>>,
}

/// A route's edge policies, in the order they run: IP lists, CORS, authentication.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub ip: Option<crate::auth::IpPolicy>,
    pub cors: Option<crate::auth::CorsPolicy>,
    pub auth: Option<crate::auth::RouteAuth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matching() {
        let t = Template::parse("/users/{id}/posts").unwrap();
        assert!(t.matches("/users/7/posts"));
        assert!(!t.matches("/users/7"));
        assert!(!t.matches("/users//posts"));
        assert!(!t.matches("/users/7/posts/x"));
        let c = Template::parse("/files/{*rest}").unwrap();
        assert!(c.matches("/files/a/b"));
        assert!(!c.matches("/files/"));
        assert_eq!(c.param_count(), 1);
        assert!(Template::parse("/a/{*x}/b").is_err());
        assert!(Template::parse("/a/x{y}").is_err());
        assert!(Template::parse("/a/{y}/{y}").is_err());
    }

    #[test]
    fn prefix_respects_segments() {
        assert!(PathPattern::prefix_matches("/v2", "/v2"));
        assert!(PathPattern::prefix_matches("/v2", "/v2/x"));
        assert!(!PathPattern::prefix_matches("/v2", "/v20"));
        assert!(PathPattern::prefix_matches("/", "/anything"));
        assert!(PathPattern::prefix_matches("/v2", "/v2;x=1"));
        assert!(PathPattern::prefix_matches("/v2", "/v2;x=1/y"));
        assert!(!PathPattern::prefix_matches("/v2", "/v2x;y"));
    }

    #[test]
    fn path_transform_order_is_strip_rewrite_add() {
        let t = PathTransform {
            strip_prefix: Some("/v2".into()),
            rewrite: Some(Rewrite::new(
                Regex::new(r"^/orders/(\d+)$").unwrap(),
                "/o/$1".into(),
            )),
            add_prefix: Some("/internal".into()),
        };
        assert_eq!(t.apply("/v2/orders/5"), "/internal/o/5");
        // A stripped segment takes its parameters with it.
        assert_eq!(t.apply("/v2;jsessionid=1/orders/5"), "/internal/o/5");
        assert_eq!(t.apply("/v2;x"), "/internal");
        let params = PathTransform {
            rewrite: Some(Rewrite::new(
                Regex::new(r"^/u/(?<rest>.*)$").unwrap(),
                "/t/${path.tenant}/${rest}/$$".into(),
            )),
            ..Default::default()
        };
        assert!(params.reads_params());
        assert_eq!(
            params
                .rewrite
                .as_ref()
                .unwrap()
                .params()
                .collect::<Vec<_>>(),
            ["tenant"]
        );
        assert_eq!(
            params.apply_with("/u/x/y", &[("tenant", "a$1".to_owned())]),
            "/t/a$1/x/y/$"
        );
        assert_eq!(
            params.apply_with("/other", &[("tenant", "a".to_owned())]),
            "/other"
        );
        assert_eq!(t.apply("/v2"), "/internal");
        let strip = PathTransform {
            strip_prefix: Some("/api".into()),
            ..Default::default()
        };
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/apix"), "/apix");
    }

    #[test]
    fn methods() {
        let m = MethodSet::from_names(["GET", "PUT"]).unwrap();
        assert!(m.contains(MethodSet::bit("GET").unwrap()));
        assert!(!m.contains(MethodSet::bit("POST").unwrap()));
        assert!(!m.contains(0));
        assert!(MethodSet::ANY.contains(0));
        assert_eq!(m.names().collect::<Vec<_>>(), ["GET", "PUT"]);
        assert!(MethodSet::from_names(["FETCH"]).is_err());
    }
}
