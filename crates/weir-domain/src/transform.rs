//! Header and query changes a route makes on the way in and out, with values that may name
//! facts of the request (`${consumer.name}`, `${request.id}`, `${request.ip}`,
//! `${path.NAME}`, `${header.NAME}`, `${tls.client_subject}`).
//!
//! A value is parsed once, at load, into literal pieces and variables; a request only copies
//! the pieces and looks the variables up. A value that renders to something a header cannot
//! hold (a CR or LF from a client's header, say) is dropped by the caller, never sent: a
//! template cannot split a response or smuggle a header.

use std::fmt::Write as _;
use std::net::IpAddr;

/// A fact of the request a template can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// The authenticated consumer's name (empty when none).
    ConsumerName,
    /// The request id (`X-Request-Id`).
    RequestId,
    /// The client's address (trusted proxies looked through).
    RequestIp,
    /// A template parameter of the route's path (`/users/{id}` → `${path.id}`).
    Path(String),
    /// A request header, lower case (its values joined with `, `; empty when absent).
    Header(String),
    /// The subject of the client's TLS certificate (empty without one).
    TlsClientSubject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A value with variables, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Where a template's variables come from, for one request.
pub trait Facts {
    fn consumer(&self) -> Option<&str>;
    fn request_id(&self) -> &[u8];
    fn client_ip(&self) -> IpAddr;
    fn path_param(&self, name: &str) -> Option<&str>;
    /// The request header's values, joined with `, `, appended to `out`.
    fn header(&self, lower_name: &str, out: &mut Vec<u8>);
    /// The subject of the client's certificate, on an mTLS connection.
    fn client_subject(&self) -> Option<&str>;
}

impl Template {
    /// Parses `text`: `${...}` is a variable, `$$` a literal `$`; any other `$` is itself.
    ///
    /// # Errors
    /// An unclosed `${`, or a variable weir does not know, in words for a config problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                let end = inner
                    .find('}')
                    .ok_or_else(|| format!("\"{text}\" has a `${{` without its `}}`"))?;
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var(var(&inner[..end])?));
                rest = &inner[end + 1..];
            } else {
                literal.push('$');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Self { pieces })
    }

    /// The value when it has no variables (it can be built once).
    #[must_use]
    pub fn literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The template parameters of the path it names (for checking them against the route).
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(Var::Path(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether it names the request's path parameters or headers (which a response
    /// transform, applied after the request is gone, cannot see).
    #[must_use]
    pub fn reads_request(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(Var::Path(_) | Var::Header(_))))
    }

    /// Appends the value for `facts` to `out`.
    pub fn render(&self, facts: &impl Facts, out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Var(Var::ConsumerName) => {
                    out.extend_from_slice(facts.consumer().unwrap_or("").as_bytes());
                }
                Piece::Var(Var::RequestId) => out.extend_from_slice(facts.request_id()),
                Piece::Var(Var::RequestIp) => {
                    let mut s = String::new();
                    let _ = write!(s, "{}", facts.client_ip());
                    out.extend_from_slice(s.as_bytes());
                }
                Piece::Var(Var::Path(name)) => {
                    out.extend_from_slice(facts.path_param(name).unwrap_or("").as_bytes());
                }
                Piece::Var(Var::Header(name)) => facts.header(name, out),
                Piece::Var(Var::TlsClientSubject) => {
                    out.extend_from_slice(facts.client_subject().unwrap_or("").as_bytes());
                }
            }
        }
    }
}

fn var(name: &str) -> Result<Var, String> {
    let n = name.trim();
    match n {
        "consumer.name" => return Ok(Var::ConsumerName),
        "request.id" => return Ok(Var::RequestId),
        "request.ip" => return Ok(Var::RequestIp),
        "tls.client_subject" => return Ok(Var::TlsClientSubject),
        _ => {}
    }
    if let Some(p) = n.strip_prefix("path.").filter(|p| !p.is_empty()) {
        return Ok(Var::Path(p.to_owned()));
    }
    if let Some(h) = n.strip_prefix("header.").filter(|h| !h.is_empty()) {
        if let Some(c) = h
            .bytes()
            .find(|c| !(c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c)))
        {
            return Err(format!(
                "`${{{n}}}`: {:?} cannot be in a header name",
                char::from(c)
            ));
        }
        return Ok(Var::Header(h.to_ascii_lowercase()));
    }
    Err(format!(
        "unknown variable `${{{n}}}` (known: consumer.name, request.id, request.ip, path.NAME, \
         header.NAME, tls.client_subject)"
    ))
}

/// Header changes, applied in this order: `remove`, then `set` (replacing), then `add`
/// (appending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Lower-case names.
    pub remove: Vec<String>,
    /// Lower-case names and their values.
    pub set: Vec<(String, Template)>,
    pub add: Vec<(String, Template)>,
}

impl HeaderOps {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Query changes: `remove` names, then `set` (replacing every parameter of the name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryOps {
    pub remove: Vec<String>,
    pub set: Vec<(String, Template)>,
}

impl QueryOps {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// `query` (without `?`; `None`: none) changed: removed and set names out, then each set
    /// name with its value (percent-encoded where a query cannot hold a byte). `None` when
    /// the result is empty.
    #[must_use]
    pub fn apply(&self, query: Option<&str>, facts: &impl Facts) -> Option<String> {
        let mut out = String::new();
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let name = param.split_once('=').map_or(param, |(n, _)| n);
            // Compared decoded, as the upstream will read them: `de%62ug` is `debug`.
            if self.remove.iter().any(|r| decoded_eq(name, r))
                || self.set.iter().any(|(s, _)| decoded_eq(name, s))
            {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(param);
        }
        let mut value = Vec::new();
        for (name, template) in &self.set {
            value.clear();
            template.render(facts, &mut value);
            if !out.is_empty() {
                out.push('&');
            }
            encode(name.as_bytes(), &mut out);
            out.push('=');
            encode(&value, &mut out);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Whether the query parameter name `raw` means `name` once percent-decoded (`+` is a space,
/// as in form encoding). No allocation.
fn decoded_eq(raw: &str, name: &str) -> bool {
    let mut want = name.bytes();
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        let got = match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(|c| char::from(c).to_digit(16));
                let lo = bytes.next().and_then(|c| char::from(c).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => u8::try_from(h * 16 + l).unwrap_or(0),
                    // Not an escape: the upstream would not read it as `name` either.
                    _ => return false,
                }
            }
            other => other,
        };
        if want.next() != Some(got) {
            return false;
        }
    }
    want.next().is_none()
}

/// Percent-encodes what a query value cannot carry as is.
fn encode(bytes: &[u8], out: &mut String) {
    crate::percent::encode(
        bytes,
        |b| b.is_ascii_alphanumeric() || b"-._~!$'()*,;:@/?".contains(&b),
        out,
    );
}

/// A JSON Pointer (RFC 6901) as its unescaped reference tokens: `/a~1b/0` is `["a/b", "0"]`.
pub type Pointer = Vec<String>;

/// Parses a JSON Pointer. The whole document (`""`) is not a place a transform can edit.
///
/// # Errors
/// Not starting with `/`, or a `~` not followed by `0` or `1`, in words for a config problem.
pub fn parse_pointer(text: &str) -> Result<Pointer, String> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "\"{text}\" is not a JSON Pointer (it starts with `/`, as in /meta/source)"
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "\"{text}\": `~` in a JSON Pointer is `~0` (a ~) or `~1` (a /)"
                            ));
                        }
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// JSON body edits, applied in this order: `remove`, then `rename` (the value moves, the
/// places on the way created as objects), then `set` (replacing, the places on the way
/// created as objects). A pointer that names nothing is left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonEdits {
    pub remove: Vec<Pointer>,
    pub rename: Vec<(Pointer, Pointer)>,
    /// Each place and its value as JSON text (checked at load).
    pub set: Vec<(Pointer, String)>,
}

/// `transform.request.body` or `transform.response.body`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyTransform {
    pub json: JsonEdits,
    /// A request body that is not JSON (or is malformed) is refused with 400 instead of being
    /// passed on untouched.
    pub strict: bool,
}

/// `transform.request` beyond the path, and `transform.response`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transforms {
    pub request_headers: HeaderOps,
    pub query: QueryOps,
    pub request_body: Option<BodyTransform>,
    pub response_headers: HeaderOps,
    pub response_body: Option<BodyTransform>,
}

impl Transforms {
    /// Whether the header and query changes are empty (bodies are edited by an adapter).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty() && self.query.is_empty() && self.response_headers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct F;

    impl Facts for F {
        fn consumer(&self) -> Option<&str> {
            Some("acme")
        }
        fn request_id(&self) -> &[u8] {
            b"01ID"
        }
        fn client_ip(&self) -> IpAddr {
            IpAddr::from([10, 0, 0, 7])
        }
        fn path_param(&self, name: &str) -> Option<&str> {
            (name == "id").then_some("42")
        }
        fn header(&self, lower_name: &str, out: &mut Vec<u8>) {
            if lower_name == "x-tenant" {
                out.extend_from_slice(b"t1");
            }
        }
        fn client_subject(&self) -> Option<&str> {
            Some("CN=alice, O=Example")
        }
    }

    fn render(t: &str) -> String {
        let mut out = Vec::new();
        Template::parse(t).unwrap().render(&F, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn templates() {
        assert_eq!(
            render("${consumer.name}/${request.id}/${request.ip}/${path.id}/${header.X-Tenant}"),
            "acme/01ID/10.0.0.7/42/t1"
        );
        assert_eq!(render("a $$ b $x ${path.nope}"), "a $ b $x ");
        assert_eq!(render("<${tls.client_subject}>"), "<CN=alice, O=Example>");
        assert_eq!(Template::parse("plain").unwrap().literal(), Some("plain"));
        assert_eq!(Template::parse("${request.id}").unwrap().literal(), None);
        assert!(
            Template::parse("${consumer")
                .unwrap_err()
                .contains("without its")
        );
        assert!(
            Template::parse("${user.name}")
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(
            Template::parse("${header.a b}")
                .unwrap_err()
                .contains("header name")
        );
        let t = Template::parse("${path.id}-${path.rest}").unwrap();
        assert_eq!(t.path_params().collect::<Vec<_>>(), ["id", "rest"]);
    }

    #[test]
    fn query_changes() {
        let q = QueryOps {
            remove: vec!["debug".to_owned()],
            set: vec![
                ("source".to_owned(), Template::parse("gateway").unwrap()),
                (
                    "who".to_owned(),
                    Template::parse("${consumer.name} & co").unwrap(),
                ),
            ],
        };
        assert_eq!(
            q.apply(Some("a=1&debug=1&source=x&b"), &F).as_deref(),
            Some("a=1&b&source=gateway&who=acme%20%26%20co")
        );
        assert_eq!(
            QueryOps {
                remove: vec!["a".to_owned()],
                set: vec![]
            }
            .apply(Some("a=1"), &F),
            None
        );
        // Encoded names are the names they decode to.
        assert_eq!(
            q.apply(Some("de%62ug=1&sour%63e=evil&keep=1&de%6=2"), &F)
                .as_deref(),
            Some("keep=1&de%6=2&source=gateway&who=acme%20%26%20co")
        );
        assert!(decoded_eq("a+b", "a b"));
    }

    #[test]
    fn pointers() {
        assert_eq!(parse_pointer("/a~1b/0/~0x").unwrap(), ["a/b", "0", "~x"]);
        assert_eq!(parse_pointer("/").unwrap(), [""]);
        assert!(parse_pointer("a/b").unwrap_err().contains("starts with"));
        assert!(parse_pointer("").is_err());
        assert!(parse_pointer("/a~2").unwrap_err().contains("~0"));
        assert!(!decoded_eq("ab", "abc"));
    }
}
