//! `${VAR}` and `${VAR:-default}` in string values.
//!
//! Only string values are expanded, never keys, and only names that are environment variable
//! names (`[A-Za-z_][A-Za-z0-9_]*`): `${consumer.name}`, `${path.id}` and `${header.X-Id}` are
//! transform templates for later, and pass through untouched. `$${` writes a literal `${`.
//! As in the shell, `:-` uses the default when the variable is unset or empty.

use crate::Env;
use crate::node::{KeyPath, Kind, Node};
use crate::report::Issue;

/// Expands every string value under `node` in place. An unset variable without a default is
/// reported at the value that names it (and expands to nothing).
pub(crate) fn interpolate(node: &mut Node, env: &dyn Env, path: &KeyPath, issues: &mut Vec<Issue>) {
    match &mut node.kind {
        Kind::Str(s) => {
            let (expanded, missing) = expand(s, env);
            for name in missing {
                issues.push(Issue {
                    origin: node.origin.clone(),
                    path: path.clone(),
                    message: format!(
                        "environment variable {name} is not set (write ${{{name}:-}} to default to empty)"
                    ),
                });
            }
            if let Some(expanded) = expanded {
                node.kind = Kind::Str(expanded);
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, env, &path.index(i), issues);
            }
        }
        Kind::Map(entries) => {
            for entry in entries {
                let child = path.key(&entry.key);
                interpolate(&mut entry.value, env, &child, issues);
            }
        }
        Kind::Null | Kind::Bool(_) | Kind::Int(_) | Kind::UInt(_) | Kind::Float(_) => {}
    }
}

/// The expanded text (`None` when nothing changed) and the names of unset variables.
fn expand(s: &str, env: &dyn Env) -> (Option<String>, Vec<String>) {
    if !s.contains('$') {
        return (None, Vec::new());
    }
    let mut out = String::with_capacity(s.len());
    let mut missing = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            // No closing brace: not a reference; keep the text as written.
            out.push_str(tail);
            rest = "";
            break;
        };
        let inner = &body[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if is_env_name(name) {
            match (env.var(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => missing.push(name.to_owned()),
            }
        } else {
            out.push_str(&tail[..end + 3]);
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    let changed = out != s;
    (changed.then_some(out), missing)
}

pub(crate) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Map(HashMap<&'static str, &'static str>);

    impl Env for Map {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
        fn vars(&self) -> Vec<(String, String)> {
            Vec::new()
        }
    }

    fn env() -> Map {
        Map(HashMap::from([
            ("HOST", "10.0.0.1"),
            ("EMPTY", ""),
            ("PORT", "9000"),
        ]))
    }

    fn run(s: &str) -> (String, Vec<String>) {
        let (out, missing) = expand(s, &env());
        (out.unwrap_or_else(|| s.to_owned()), missing)
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(run("http://${HOST}:${PORT}").0, "http://10.0.0.1:9000");
        assert_eq!(run("${NOPE:-fallback}").0, "fallback");
        assert_eq!(run("${EMPTY:-fallback}").0, "fallback");
        assert_eq!(run("${EMPTY}").0, "");
        assert_eq!(run("${NOPE:-}").0, "");
        assert_eq!(run("a${NOPE}b"), ("ab".to_owned(), vec!["NOPE".to_owned()]));
    }

    #[test]
    fn leaves_templates_and_escapes_alone() {
        assert_eq!(run("${consumer.name}").0, "${consumer.name}");
        assert_eq!(run("${header.X-Id}/${HOST}").0, "${header.X-Id}/10.0.0.1");
        assert_eq!(run("$${HOST}").0, "${HOST}");
        assert_eq!(run("cost: $5 ${").0, "cost: $5 ${");
        assert_eq!(run("$").0, "$");
        assert_eq!(run("${}").0, "${}");
        assert_eq!(run("héllo ${HOST} wörld").0, "héllo 10.0.0.1 wörld");
    }

    #[test]
    fn names() {
        assert!(is_env_name("WEIR_ADMIN_TOKEN"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("path.id"));
        assert!(!is_env_name(""));
    }
}
