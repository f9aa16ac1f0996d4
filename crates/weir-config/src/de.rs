//! Typing the node tree: a serde `Deserializer` over [`Node`].
//!
//! Deserializing from our own tree (rather than from YAML text or `serde_json::Value`) means
//! every error is born knowing where it is: a type error carries the location of the value
//! that had the wrong type, an unknown key the location of the key. Two choices make the
//! file friendlier without hiding mistakes:
//!
//! - A scalar is typed by its target field: a string target takes `2` as "2", a number or
//!   boolean target takes a string that parses. That is what makes `WEIR_WORKERS=2` a number
//!   and `WEIR_ADMIN__TOKEN=12345` a string, though the environment only holds text.
//! - Unknown keys of a struct are all reported (not only the first) and then skipped, so the
//!   rest of the struct is still typed and checked.
//!
//! Messages never echo a string value: it could be a secret.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

use crate::node::{Entry, KeyPath, Kind, Node, Origin};
use crate::report::Issue;

/// A typing error, located at the innermost value that caused it.
#[derive(Debug)]
pub(crate) struct DeError {
    message: String,
    at: Option<(Origin, KeyPath)>,
}

impl DeError {
    fn at(message: String, node: &Node, path: &KeyPath) -> Self {
        Self {
            message,
            at: Some((node.origin.clone(), path.clone())),
        }
    }

    /// Locates an error raised by a visitor (which knows no location) at `node`.
    fn or_at(mut self, node: &Node, path: &KeyPath) -> Self {
        if self.at.is_none() {
            self.at = Some((node.origin.clone(), path.clone()));
        }
        self
    }

    pub(crate) fn into_issue(self, fallback: &Node, path: &KeyPath) -> Issue {
        let (origin, path) = self
            .at
            .unwrap_or_else(|| (fallback.origin.clone(), path.clone()));
        Issue {
            origin,
            path,
            message: self.message,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            at: None,
        }
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("expected {exp}, found {}", describe(&unexp)))
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!("expected {exp}, found {}", describe(&unexp)))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format_args!(
            "\"{variant}\" is not one of {}",
            expected.join(", ")
        ))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(unknown_key(field, expected))
    }
    fn missing_field(field: &'static str) -> Self {
        Self::custom(format_args!("missing required key \"{field}\""))
    }
}

/// What a value was, without its content.
fn describe(unexp: &de::Unexpected<'_>) -> String {
    match unexp {
        de::Unexpected::Bool(b) => format!("{b}"),
        de::Unexpected::Unsigned(n) => format!("{n}"),
        de::Unexpected::Signed(n) => format!("{n}"),
        de::Unexpected::Float(x) => format!("{x}"),
        de::Unexpected::Str(_) | de::Unexpected::Char(_) => "a string".to_owned(),
        de::Unexpected::Seq => "a list".to_owned(),
        de::Unexpected::Map => "a map".to_owned(),
        de::Unexpected::Unit | de::Unexpected::Option => "an empty value".to_owned(),
        other => other.to_string(),
    }
}

pub(crate) fn unknown_key(key: &str, expected: &[&str]) -> String {
    format!(
        "unknown key \"{key}\" (expected one of {})",
        expected.join(", ")
    )
}

/// Deserializes `node` (found at `path`) into `T`. Non-fatal problems (unknown keys) go to
/// `issues`; a fatal one is returned, and `T` is then unavailable.
pub(crate) fn from_node<T: de::DeserializeOwned>(
    node: &Node,
    path: &KeyPath,
    issues: &RefCell<Vec<Issue>>,
) -> Result<T, Issue> {
    T::deserialize(NodeDe { node, path, issues }).map_err(|e| e.into_issue(node, path))
}

struct NodeDe<'a> {
    node: &'a Node,
    path: &'a KeyPath,
    issues: &'a RefCell<Vec<Issue>>,
}

impl NodeDe<'_> {
    fn mismatch(&self, expected: &str) -> DeError {
        DeError::at(
            format!("expected {expected}, found {}", self.node.kind.describe()),
            self.node,
            self.path,
        )
    }

    /// An integer target: integers, and strings holding one.
    fn integer(&self, expected: &str) -> Result<i128, DeError> {
        match &self.node.kind {
            Kind::Int(n) => Ok(i128::from(*n)),
            Kind::UInt(n) => Ok(i128::from(*n)),
            Kind::Str(s) => s.trim().parse().map_err(|_| self.mismatch(expected)),
            _ => Err(self.mismatch(expected)),
        }
    }

    fn ranged(&self, min: i128, max: i128) -> Result<i128, DeError> {
        let expected = if min == 0 {
            "a whole number (0 or more)".to_owned()
        } else {
            "a whole number".to_owned()
        };
        let n = self.integer(&expected)?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(DeError::at(
                format!("{n} is out of range ({min} to {max})"),
                self.node,
                self.path,
            ))
        }
    }
}

macro_rules! unsigned {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let n = self.ranged(0, i128::from(<$ty>::MAX))?;
            let n = u64::try_from(n).map_err(|_| self.mismatch("a whole number"))?;
            visitor.visit_u64(n).map_err(|e: DeError| e.or_at(self.node, self.path))
        }
    )*};
}

macro_rules! signed {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let n = self.ranged(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX))?;
            let n = i64::try_from(n).map_err(|_| self.mismatch("a whole number"))?;
            visitor.visit_i64(n).map_err(|e: DeError| e.or_at(self.node, self.path))
        }
    )*};
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path);
        match &node.kind {
            Kind::Null => visitor.visit_unit(),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Int(n) => visitor.visit_i64(*n),
            Kind::UInt(n) => visitor.visit_u64(*n),
            Kind::Float(x) => visitor.visit_f64(*x),
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Seq(items) => visitor.visit_seq(Items::new(items, path, self.issues)),
            Kind::Map(entries) => visitor.visit_map(Entries::new(entries, path, self.issues)),
        }
        .map_err(|e: DeError| e.or_at(node, path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let b = match &self.node.kind {
            Kind::Bool(b) => *b,
            Kind::Str(s) if s.trim().eq_ignore_ascii_case("true") => true,
            Kind::Str(s) if s.trim().eq_ignore_ascii_case("false") => false,
            _ => return Err(self.mismatch("true or false")),
        };
        visitor
            .visit_bool(b)
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    unsigned!(deserialize_u8: u8, deserialize_u16: u16, deserialize_u32: u32, deserialize_u64: u64);
    signed!(deserialize_i8: i8, deserialize_i16: i16, deserialize_i32: i32, deserialize_i64: i64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let x = match &self.node.kind {
            Kind::Float(x) => *x,
            Kind::Int(n) => *n as f64,
            Kind::UInt(n) => *n as f64,
            Kind::Str(s) => s.trim().parse().map_err(|_| self.mismatch("a number"))?,
            _ => return Err(self.mismatch("a number")),
        };
        visitor
            .visit_f64(x)
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Some(text) = self.node.scalar_text() else {
            return Err(self.mismatch("a string"));
        };
        visitor
            .visit_str(&text)
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.kind == Kind::Null {
            visitor.visit_none()
        } else {
            let (node, path) = (self.node, self.path);
            visitor
                .visit_some(self)
                .map_err(|e: DeError| e.or_at(node, path))
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.kind == Kind::Null {
            visitor.visit_unit()
        } else {
            Err(self.mismatch("an empty value"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path);
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DeError| e.or_at(node, path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // An empty value (`methods:` with nothing after it) is an empty list.
        let items: &[Node] = match &self.node.kind {
            Kind::Seq(items) => items,
            Kind::Null => &[],
            _ => return Err(self.mismatch("a list")),
        };
        visitor
            .visit_seq(Items::new(items, self.path, self.issues))
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // An empty value (`admin:` with every child commented out) is an empty map.
        let entries: &[Entry] = match &self.node.kind {
            Kind::Map(entries) => entries,
            Kind::Null => &[],
            _ => return Err(self.mismatch("a map")),
        };
        visitor
            .visit_map(Entries::new(entries, self.path, self.issues))
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let entries: &[Entry] = match &self.node.kind {
            Kind::Map(entries) => entries,
            Kind::Null => &[],
            _ => return Err(self.mismatch("a map")),
        };
        // Report every unknown key at once, then type the known ones.
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            if fields.contains(&entry.key.as_str()) {
                known.push(entry);
            } else {
                self.issues.borrow_mut().push(Issue {
                    origin: entry.key_origin.clone(),
                    path: self.path.key(&entry.key),
                    message: unknown_key(&entry.key, fields),
                });
            }
        }
        visitor
            .visit_map(Entries {
                entries: known.into_iter(),
                value: None,
                path: self.path,
                issues: self.issues,
            })
            .map_err(|e: DeError| e.or_at(self.node, self.path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Str(s) => visitor
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: DeError| e.or_at(self.node, self.path)),
            _ => Err(self.mismatch("a name")),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(self.mismatch("bytes"))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct Items<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'a KeyPath,
    issues: &'a RefCell<Vec<Issue>>,
}

impl<'a> Items<'a> {
    fn new(items: &'a [Node], path: &'a KeyPath, issues: &'a RefCell<Vec<Issue>>) -> Self {
        Self {
            items: items.iter().enumerate(),
            path,
            issues,
        }
    }
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let path = self.path.index(i);
        seed.deserialize(NodeDe {
            node,
            path: &path,
            issues: self.issues,
        })
        .map(Some)
        .map_err(|e: DeError| e.or_at(node, &path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'a, I> {
    entries: I,
    value: Option<&'a Entry>,
    path: &'a KeyPath,
    issues: &'a RefCell<Vec<Issue>>,
}

impl<'a> Entries<'a, std::slice::Iter<'a, Entry>> {
    fn new(entries: &'a [Entry], path: &'a KeyPath, issues: &'a RefCell<Vec<Issue>>) -> Self {
        Self {
            entries: entries.iter(),
            value: None,
            path,
            issues,
        }
    }
}

impl<'de, 'a, I: Iterator<Item = &'a Entry>> MapAccess<'de> for Entries<'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key: de::value::StrDeserializer<'_, DeError> = entry.key.as_str().into_deserializer();
        seed.deserialize(key).map(Some).map_err(|mut e: DeError| {
            // A key that does not type is reported at the key, not at its value.
            if e.at.is_none() {
                e.at = Some((entry.key_origin.clone(), self.path.key(&entry.key)));
            }
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.value.take() else {
            return Err(de::Error::custom("a value was asked for before its key"));
        };
        let path = self.path.key(&entry.key);
        seed.deserialize(NodeDe {
            node: &entry.value,
            path: &path,
            issues: self.issues,
        })
        .map_err(|e: DeError| e.or_at(&entry.value, &path))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::node::parse;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        on: bool,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn run(yaml: &str) -> (Result<Sample, Issue>, Vec<Issue>) {
        let node = parse(yaml).unwrap();
        let issues = RefCell::new(Vec::new());
        let result = from_node::<Sample>(&node, &KeyPath::root(), &issues);
        (result, issues.into_inner())
    }

    #[test]
    fn scalars_are_typed_by_their_target() {
        let (r, issues) = run("name: 12345\ncount: '7'\non: 'true'\ntags: [1, x]\n");
        assert!(issues.is_empty());
        assert_eq!(
            r.unwrap(),
            Sample {
                name: "12345".into(),
                count: 7,
                on: true,
                tags: vec!["1".into(), "x".into()],
            }
        );
    }

    #[test]
    fn every_unknown_key_is_reported_at_the_key() {
        let (r, issues) = run("name: a\nnmae: b\nextra: 1\n");
        assert!(r.is_ok());
        let got: Vec<_> = issues
            .iter()
            .map(|i| (i.origin.clone(), i.path.to_string(), i.message.clone()))
            .collect();
        assert_eq!(
            got[0],
            (
                Origin::File { line: 2, col: 1 },
                "nmae".to_owned(),
                "unknown key \"nmae\" (expected one of name, count, on, tags)".to_owned()
            )
        );
        assert_eq!(got[1].1, "extra");
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let (r, _) = run("name: a\ncount: -1\n");
        let issue = r.unwrap_err();
        assert_eq!(issue.origin, Origin::File { line: 2, col: 8 });
        assert_eq!(issue.path.to_string(), "count");
        assert_eq!(issue.message, "-1 is out of range (0 to 4294967295)");

        let (r, _) = run("name: a\ntags: [x, [y]]\n");
        let issue = r.unwrap_err();
        assert_eq!(issue.path.to_string(), "tags[1]");
        assert_eq!(issue.message, "expected a string, found a list");

        let (r, _) = run("count: 1\n");
        let issue = r.unwrap_err();
        assert_eq!(issue.origin, Origin::File { line: 1, col: 1 });
        assert_eq!(issue.message, "missing required key \"name\"");

        let (r, _) = run("name: secret-value\non: secret-value\n");
        let issue = r.unwrap_err();
        assert_eq!(issue.message, "expected true or false, found a string");
    }
}
