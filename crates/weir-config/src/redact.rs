//! Secrets: hidden in the effective config and scrubbed from problem messages.

use serde_json::Value;

use crate::node::{Kind, Node};

/// Keys whose values are secrets (contract §2, and consumers' `password_hash`), compared
/// case-insensitively.
const SECRET_KEYS: [&str; 6] = [
    "client_secret",
    "password",
    "password_hash",
    "key",
    "token",
    "secret",
];
/// A list of secrets: each entry is hidden.
const SECRET_LISTS: [&str; 1] = ["api_keys"];
/// Lists whose items' `key` is not a secret: a rate limit's `key` says what it counts by.
const POLICY_LISTS: [&str; 1] = ["rate_limit"];

const HIDDEN: &str = "***";

fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn is_secret_list(key: &str) -> bool {
    SECRET_LISTS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn is_policy_list(key: &str) -> bool {
    POLICY_LISTS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// Replaces every secret in `value` by `"***"`. Nulls and empty strings are kept: they show
/// that no secret is set, and reveal nothing.
pub(crate) fn redact(value: &mut Value) {
    redact_in(value, false);
}

/// `policy`: `value` is an item of a rate limit list, whose `key` is shown.
fn redact_in(value: &mut Value, policy: bool) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if policy && key == "key" {
                    continue;
                }
                if is_policy_list(key)
                    && let Value::Array(items) = v
                {
                    items.iter_mut().for_each(|i| redact_in(i, true));
                } else if is_secret_key(key) {
                    hide(v);
                } else if is_secret_list(key) {
                    match v {
                        Value::Array(items) => items.iter_mut().for_each(hide),
                        other => hide(other),
                    }
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

fn hide(v: &mut Value) {
    let empty = matches!(v, Value::Null) || v.as_str().is_some_and(str::is_empty);
    if !empty {
        *v = Value::String(HIDDEN.to_owned());
    }
}

/// Every secret value written in the tree (after interpolation), to scrub from messages.
pub(crate) fn secrets(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    collect(node, false, false, &mut out);
    // Longest first, so a secret that contains another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `policy`: `node` is an item of a rate limit list, whose `key` is not a secret.
fn collect(node: &Node, secret: bool, policy: bool, out: &mut Vec<String>) {
    match &node.kind {
        Kind::Map(entries) => {
            for e in entries {
                let policy_key = policy && e.key == "key";
                let child_secret =
                    secret || (is_secret_key(&e.key) && !policy_key) || is_secret_list(&e.key);
                if is_policy_list(&e.key)
                    && let Kind::Seq(items) = &e.value.kind
                {
                    items
                        .iter()
                        .for_each(|i| collect(i, child_secret, true, out));
                } else {
                    collect(&e.value, child_secret, false, out);
                }
            }
        }
        Kind::Seq(items) => items.iter().for_each(|i| collect(i, secret, false, out)),
        _ if secret => {
            // Very short values would scrub ordinary words out of messages; a secret that
            // short is not protecting anything anyway.
            if let Some(text) = node.scalar_text().filter(|t| t.len() >= 4) {
                out.push(text.into_owned());
            }
        }
        _ => {}
    }
}

/// Replaces each secret in `message` by `"***"`.
pub(crate) fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), HIDDEN);
        }
    }
    out
}

/// A stable 64-bit FNV-1a hash of `text`, as 16 hex digits: the config's version. Not a
/// cryptographic hash: it tells versions apart, it does not protect anything.
pub(crate) fn version(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::node::parse;

    #[test]
    fn hides_secret_keys_at_any_depth() {
        let mut v = json!({
            "admin": { "token": "abc", "listen": "x" },
            "idp": { "client_secret": "s", "Password": 5, "secret": "" },
            "consumers": [{ "api_keys": ["k1", "k2"], "key": null,
                            "basic": { "username": "u", "password_hash": "$2b$..." } }],
            "hash_key": "ip"
        });
        redact(&mut v);
        assert_eq!(
            v,
            json!({
                "admin": { "token": "***", "listen": "x" },
                "idp": { "client_secret": "***", "Password": "***", "secret": "" },
                "consumers": [{ "api_keys": ["***", "***"], "key": null,
                                "basic": { "username": "u", "password_hash": "***" } }],
                "hash_key": "ip"
            })
        );
    }

    #[test]
    fn a_rate_limit_key_is_not_a_secret() {
        let mut v = json!({
            "routes": [{ "rate_limit": [{ "key": "header:x-tenant", "limit": 1 }],
                         "x": { "key": "k" } }]
        });
        redact(&mut v);
        assert_eq!(
            v,
            json!({
                "routes": [{ "rate_limit": [{ "key": "header:x-tenant", "limit": 1 }],
                             "x": { "key": "***" } }]
            })
        );
        let root = parse(
            "routes: [{ rate_limit: [{ key: consumer }], x: { key: hunter22 } }]\n\
             admin: { token: [{ key: nested-secret }] }\n",
        )
        .unwrap();
        let s = secrets(&root);
        assert_eq!(
            scrub("consumers[0] hunter22 nested-secret", &s),
            "consumers[0] *** ***"
        );
    }

    #[test]
    fn scrubs_written_secrets() {
        let root =
            parse("admin: { token: hunter22, listen: x }\nauth: { api_keys: [abcdef] }\n").unwrap();
        let s = secrets(&root);
        assert_eq!(scrub("bad hunter22 and abcdef", &s), "bad *** and ***");
    }

    #[test]
    fn version_is_stable_hex() {
        assert_eq!(version(""), "cbf29ce484222325");
        assert_eq!(version("a").len(), 16);
        assert_ne!(version("a"), version("b"));
    }
}
