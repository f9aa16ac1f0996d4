//! JSON body edits by JSON Pointer (`transform.*.body.json`): parsed once at load, applied
//! to a buffered body. A body that is not JSON is an error the caller decides about (pass it
//! on untouched, or refuse it when the route is strict).

use serde_json::Value;
use weir_domain::transform::{JsonEdits, Pointer};

/// A route's edits, with `set` values parsed.
#[derive(Debug, Clone)]
pub struct JsonEditor {
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, Value)>,
}

impl JsonEditor {
    /// # Errors
    /// A `set` value that is not JSON (the config checked it; this is a bug guard).
    pub fn new(edits: &JsonEdits) -> Result<Self, String> {
        let set = edits
            .set
            .iter()
            .map(|(p, text)| {
                serde_json::from_str(text)
                    .map(|v| (p.clone(), v))
                    .map_err(|e| format!("{text}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            remove: edits.remove.clone(),
            rename: edits.rename.clone(),
            set,
        })
    }

    /// The edited body: `remove`, `rename`, then `set`. A place that cannot exist in this
    /// document (inside a string, say) is left alone: the body's shape is the upstream's.
    ///
    /// # Errors
    /// The body is not JSON, in words safe to show the client.
    pub fn apply(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut doc: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
        for p in &self.remove {
            take(&mut doc, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(&mut doc, from) {
                put(&mut doc, to, v);
            }
        }
        for (p, v) in &self.set {
            put(&mut doc, p, v.clone());
        }
        serde_json::to_vec(&doc).map_err(|e| format!("the edited body could not be written: {e}"))
    }
}

/// Removes and returns the value at `p`.
fn take(doc: &mut Value, p: &[String]) -> Option<Value> {
    let (last, parent) = p.split_last()?;
    match walk(doc, parent)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = index(last)?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Sets the value at `p`, creating missing objects on the way. In an array, an index
/// replaces and `-` (or the length) appends.
fn put(doc: &mut Value, p: &[String], v: Value) {
    let Some((last, parent)) = p.split_last() else {
        return;
    };
    let mut at = doc;
    for token in parent {
        at = match at {
            Value::Object(m) => m
                .entry(token.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new())),
            Value::Array(a) => match index(token).and_then(|i| a.get_mut(i)) {
                Some(next) => next,
                None => return,
            },
            _ => return,
        };
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), v);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(v);
            } else if let Some(i) = index(last) {
                match i.cmp(&a.len()) {
                    std::cmp::Ordering::Less => a[i] = v,
                    std::cmp::Ordering::Equal => a.push(v),
                    std::cmp::Ordering::Greater => {}
                }
            }
        }
        _ => {}
    }
}

fn walk<'a>(mut at: &'a mut Value, p: &[String]) -> Option<&'a mut Value> {
    for token in p {
        at = match at {
            Value::Object(m) => m.get_mut(token)?,
            Value::Array(a) => a.get_mut(index(token)?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// An array index as RFC 6901 writes it: digits, no leading zero.
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| token.parse().ok())
        .flatten()
}

/// Whether a `Content-Type` names JSON: `application/json` or any `+json` type.
#[must_use]
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(slash) = essence.iter().position(|&b| b == b'/') else {
        return false;
    };
    let (kind, sub) = (&essence[..slash], &essence[slash + 1..]);
    kind.eq_ignore_ascii_case(b"application")
        && (sub.eq_ignore_ascii_case(b"json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weir_domain::transform::parse_pointer;

    fn editor(remove: &[&str], rename: &[(&str, &str)], set: &[(&str, &str)]) -> JsonEditor {
        let p = |s: &str| parse_pointer(s).unwrap();
        JsonEditor::new(&JsonEdits {
            remove: remove.iter().map(|s| p(s)).collect(),
            rename: rename.iter().map(|(a, b)| (p(a), p(b))).collect(),
            set: set.iter().map(|(a, v)| (p(a), (*v).to_owned())).collect(),
        })
        .unwrap()
    }

    fn run(e: &JsonEditor, body: &str) -> Value {
        serde_json::from_slice(&e.apply(body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn remove_rename_set_in_order() {
        let e = editor(
            &["/internal", "/list/0", "/missing/deep"],
            &[("/old", "/meta/new"), ("/nope", "/x")],
            &[
                ("/meta/via", "\"weir\""),
                ("/list/-", "9"),
                ("/n", "{\"a\":[1]}"),
            ],
        );
        let out = run(
            &e,
            r#"{"internal":1,"old":{"k":true},"list":[1,2],"keep":"x"}"#,
        );
        assert_eq!(
            out,
            serde_json::json!({
                "keep": "x",
                "list": [2, 9],
                "meta": {"new": {"k": true}, "via": "weir"},
                "n": {"a": [1]}
            })
        );
    }

    #[test]
    fn places_that_cannot_exist_are_left_alone() {
        let e = editor(
            &["/s/x"],
            &[],
            &[("/s/x", "1"), ("/arr/7", "1"), ("/arr/01", "1")],
        );
        let out = run(&e, r#"{"s":"text","arr":[0]}"#);
        assert_eq!(out, serde_json::json!({"s": "text", "arr": [0]}));
        // A document that is not an object: edits of names do nothing.
        assert_eq!(run(&e, "[1,2]"), serde_json::json!([1, 2]));
    }

    #[test]
    fn escaped_tokens_and_errors() {
        let e = editor(&["/a~1b"], &[], &[("/c~0d", "true")]);
        assert_eq!(
            run(&e, r#"{"a/b":1,"x":2}"#),
            serde_json::json!({"x": 2, "c~d": true})
        );
        assert!(
            e.apply(b"{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(e.apply(b"").is_err());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(is_json(b"application/problem+json"));
        assert!(!is_json(b"application/jsonx"));
        assert!(!is_json(b"text/json"));
        assert!(!is_json(b"application/+json"));
        assert!(!is_json(b""));
    }
}
