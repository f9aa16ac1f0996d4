//! The YAML document as a tree of located nodes.
//!
//! The file is parsed once into this tree, before anything is typed, so that every key and
//! every value keeps the place it came from: a line and column in the file, or the
//! environment variable or flag that set it. Interpolation and overrides edit the tree;
//! typing ([`crate::de`]) and validation read it and look locations up by key path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Where a key or value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A place in the config file (1-based).
    File { line: u32, col: u32 },
    /// A `WEIR_*` environment override, by variable name.
    Env(String),
    /// A command-line flag such as `--listen`.
    Flag(&'static str),
}

impl Origin {
    /// Sort key for "file order": file positions first, then environment variables and
    /// flags by name.
    pub(crate) fn order(&self) -> (u8, u32, u32, &str) {
        match self {
            Self::File { line, col } => (0, *line, *col, ""),
            Self::Env(name) => (1, 0, 0, name),
            Self::Flag(name) => (2, 0, 0, name),
        }
    }
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `routes[2].match.path`, printed the way problems show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    #[must_use]
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    #[must_use]
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        Self(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A value with its origin.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) origin: Origin,
    /// A number or boolean exactly as written, so that a string key given `1.10` or `007`
    /// gets that text, not `1.1` or `7`.
    pub(crate) written: Option<Box<str>>,
}

/// A map entry; the key keeps its own origin so unknown keys point at themselves.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_origin: Origin,
    pub(crate) value: Node,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order: the order of `upstreams` is their id order.
    Map(Vec<Entry>),
}

impl Kind {
    /// How a problem names what it found ("expected a list, found a string").
    pub(crate) const fn describe(&self) -> &'static str {
        match self {
            Self::Null => "an empty value",
            Self::Bool(_) => "a boolean",
            Self::Int(_) | Self::UInt(_) => "an integer",
            Self::Float(_) => "a number",
            Self::Str(_) => "a string",
            Self::Seq(_) => "a list",
            Self::Map(_) => "a map",
        }
    }
}

impl Node {
    pub(crate) const fn new(kind: Kind, origin: Origin) -> Self {
        Self {
            kind,
            origin,
            written: None,
        }
    }

    /// The text of a scalar, for string targets given a number or boolean
    /// (`X-Api-Version: 2` means the header value "2").
    pub(crate) fn scalar_text(&self) -> Option<Cow<'_, str>> {
        if let Some(text) = &self.written {
            return Some(Cow::Borrowed(text));
        }
        match &self.kind {
            Kind::Bool(b) => Some(Cow::Owned(b.to_string())),
            Kind::Int(n) => Some(Cow::Owned(n.to_string())),
            Kind::UInt(n) => Some(Cow::Owned(n.to_string())),
            Kind::Float(x) => Some(Cow::Owned(x.to_string())),
            Kind::Str(s) => Some(Cow::Borrowed(s)),
            Kind::Null | Kind::Seq(_) | Kind::Map(_) => None,
        }
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        match &self.kind {
            Kind::Map(e) => e,
            _ => &[],
        }
    }

    /// The value under `key` of a map node.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    fn child(&self, seg: &Seg) -> Option<&Node> {
        match (seg, &self.kind) {
            (Seg::Key(k), Kind::Map(_)) => self.get(k),
            (Seg::Index(i), Kind::Seq(items)) => items.get(*i),
            _ => None,
        }
    }

    /// The origin of the value at `path`, or of its deepest existing ancestor when the value
    /// was not written (a missing key is reported where its parent is).
    pub(crate) fn origin_of(&self, path: &KeyPath) -> &Origin {
        let mut node = self;
        for seg in &path.0 {
            match node.child(seg) {
                Some(next) => node = next,
                None => break,
            }
        }
        &node.origin
    }

    /// The origin of the key that ends `path` (falls back to the value's origin).
    pub(crate) fn key_origin_of(&self, path: &KeyPath) -> &Origin {
        let Some((Seg::Key(last), parent)) = path.0.split_last() else {
            return self.origin_of(path);
        };
        let mut node = self;
        for seg in parent {
            match node.child(seg) {
                Some(next) => node = next,
                None => return &node.origin,
            }
        }
        node.entries()
            .iter()
            .find(|e| &e.key == last)
            .map_or(&node.origin, |e| &e.key_origin)
    }
}

/// Parses YAML text into the node tree. An empty document is an empty map.
pub(crate) fn parse(text: &str) -> Result<Node, (Origin, String)> {
    // YAML 1.2 booleans: `off` and `no` stay strings (`admin.listen: off`), only
    // `true` / `false` are booleans. Snippets are off: a problem is one line.
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options) {
        Ok(Some(raw)) => Ok(Node::from_raw(raw, text)),
        Ok(None) => Ok(Node::new(
            Kind::Map(Vec::new()),
            Origin::File { line: 1, col: 1 },
        )),
        Err(e) => {
            let origin = e
                .location()
                .map_or(Origin::File { line: 0, col: 0 }, |l| Origin::File {
                    line: clamp(l.line()),
                    col: clamp(l.column()),
                });
            let formatter = serde_saphyr::UserMessageFormatter;
            let message = serde_saphyr::MessageFormatter::format_message(&formatter, &e);
            Err((origin, format!("invalid YAML: {}", one_line(&message))))
        }
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Problems are printed one a line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn origin_of_span<T>(s: &Spanned<T>) -> Origin {
    Origin::File {
        line: clamp(s.referenced.line()),
        col: clamp(s.referenced.column()),
    }
}

/// What serde-saphyr hands us: an untyped YAML value whose every part is spanned.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

impl Node {
    fn from_raw(raw: Spanned<Raw>, text: &str) -> Self {
        let origin = origin_of_span(&raw);
        let span = raw.referenced.span();
        let written = match raw.value {
            Raw::Bool(_) | Raw::Int(_) | Raw::UInt(_) | Raw::Float(_) => {
                let start = span.byte_offset().and_then(|o| usize::try_from(o).ok());
                let len = span.byte_len().and_then(|l| usize::try_from(l).ok());
                start
                    .zip(len)
                    .and_then(|(s, l)| text.get(s..s.checked_add(l)?))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Box::from)
            }
            _ => None,
        };
        let kind = match raw.value {
            Raw::Null => Kind::Null,
            Raw::Bool(b) => Kind::Bool(b),
            Raw::Int(n) => Kind::Int(n),
            Raw::UInt(n) => Kind::UInt(n),
            Raw::Float(x) => Kind::Float(x),
            Raw::Str(s) => Kind::Str(s),
            Raw::Seq(items) => Kind::Seq(
                items
                    .into_iter()
                    .map(|item| Self::from_raw(item, text))
                    .collect(),
            ),
            Raw::Map(entries) => Kind::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| Entry {
                        key_origin: origin_of_span(&k),
                        key: k.value,
                        value: Self::from_raw(v, text),
                    })
                    .collect(),
            ),
        };
        Self {
            kind,
            origin,
            written,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, col: u32) -> Origin {
        Origin::File { line, col }
    }

    #[test]
    fn keeps_locations_of_keys_and_values() {
        let root = parse("a: 1\nb:\n  - x\n  - { c: true, d: 2.5 }\ne: off\n").unwrap();
        assert_eq!(root.origin_of(&KeyPath::root().key("a")), &at(1, 4));
        assert_eq!(root.key_origin_of(&KeyPath::root().key("b")), &at(2, 1));
        let c = KeyPath::root().key("b").index(1).key("c");
        assert_eq!(root.origin_of(&c), &at(4, 10));
        assert_eq!(root.key_origin_of(&c), &at(4, 7));
        let missing = KeyPath::root().key("b").index(1).key("zzz");
        assert_eq!(root.origin_of(&missing), &at(4, 5));
        assert_eq!(
            root.get("e").map(|n| &n.kind),
            Some(&Kind::Str("off".into()))
        );
        assert_eq!(c.to_string(), "b[1].c");
    }

    #[test]
    fn keeps_map_order_and_types() {
        let root = parse("z: 1\na: -2\nm: '3'\nn: ~\n").unwrap();
        let keys: Vec<_> = root.entries().iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m", "n"]);
        assert_eq!(root.get("z").map(|n| &n.kind), Some(&Kind::UInt(1)));
        assert_eq!(root.get("a").map(|n| &n.kind), Some(&Kind::Int(-2)));
        assert_eq!(root.get("m").map(|n| &n.kind), Some(&Kind::Str("3".into())));
        assert_eq!(root.get("n").map(|n| &n.kind), Some(&Kind::Null));
    }

    #[test]
    fn numbers_keep_their_written_text() {
        let root = parse("a: 1.10\nb: { c: 007 , d: true }\ne: [ 2.50 ]\n").unwrap();
        let text = |n: Option<&Node>| n.and_then(Node::scalar_text).map(|t| t.into_owned());
        assert_eq!(text(root.get("a")), Some("1.10".to_owned()));
        let b = root.get("b").unwrap();
        assert_eq!(text(b.get("c")), Some("007".to_owned()));
        assert_eq!(text(b.get("d")), Some("true".to_owned()));
        let Kind::Seq(items) = &root.get("e").unwrap().kind else {
            panic!("a list")
        };
        assert_eq!(text(items.first()), Some("2.50".to_owned()));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let (origin, message) = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(
            matches!(origin, Origin::File { line, .. } if line > 0),
            "{origin:?}"
        );
        assert!(!message.contains('\n'));
        let (origin, message) = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(origin, at(2, 1));
        assert!(message.contains("duplicate"), "{message}");
        assert_eq!(parse("").unwrap().kind, Kind::Map(Vec::new()));
    }
}
