//! Typing the file one section, one list item and one upstream at a time.
//!
//! A type error stops serde at the struct it is in. Typing each top-level section, each
//! listener, each upstream and each route separately means one bad route still lets every
//! other route be typed and checked, so a run reports all of them.

use std::cell::RefCell;

use serde::de::DeserializeOwned;

use crate::de::{from_node, unknown_key};
use crate::model::{AuthConfig, FileConfig, ListenerConfig, TOP_LEVEL};
use crate::node::{KeyPath, Kind, Node};
use crate::report::Issue;

/// Types the whole tree. Whatever did not type is left at its default (or `None` for list
/// items and upstreams) and has been reported in `issues`.
pub(crate) fn read(root: &Node, issues: &RefCell<Vec<Issue>>) -> FileConfig {
    let mut cfg = FileConfig::default();
    let root_path = KeyPath::root();
    let entries = match &root.kind {
        Kind::Map(entries) => entries.as_slice(),
        Kind::Null => &[],
        other => {
            push(
                issues,
                Issue {
                    origin: root.origin.clone(),
                    path: root_path,
                    message: format!(
                        "a config file is a map of sections (listeners, upstreams, routes, ...), found {}",
                        other.describe()
                    ),
                },
            );
            cfg.listeners = vec![Some(ListenerConfig::public("0.0.0.0:8080"))];
            return cfg;
        }
    };
    let mut listeners = None;
    for entry in entries {
        let path = root_path.key(&entry.key);
        let node = &entry.value;
        let key = entry.key.as_str();
        match key {
            "listeners" => listeners = Some(list(node, &path, issues)),
            "limits" => set(&mut cfg.limits, node, &path, issues),
            "watch" => set(&mut cfg.watch, node, &path, issues),
            "trusted_proxies" => set(&mut cfg.trusted_proxies, node, &path, issues),
            "admin" => set(&mut cfg.admin, node, &path, issues),
            "observability" => set(&mut cfg.observability, node, &path, issues),
            "workers" => set(&mut cfg.workers, node, &path, issues),
            "shutdown_grace" => set(&mut cfg.shutdown_grace, node, &path, issues),
            "upstreams" => cfg.upstreams = named(node, &path, "upstreams", issues),
            "auth" => cfg.auth = auth(node, &path, issues),
            "redis" => {
                let mut redis = crate::model::RedisConfig::default();
                set(&mut redis, node, &path, issues);
                cfg.redis = Some(redis);
            }
            "etcd" => {
                let mut etcd = crate::model::EtcdConfig::default();
                set(&mut etcd, node, &path, issues);
                cfg.etcd = Some(etcd);
            }
            "consul" => {
                let mut consul = crate::model::ConsulConfig::default();
                set(&mut consul, node, &path, issues);
                cfg.consul = Some(consul);
            }
            "consumers" => cfg.consumers = list(node, &path, issues),
            "routes" => cfg.routes = list(node, &path, issues),
            _ => push(
                issues,
                Issue {
                    origin: entry.key_origin.clone(),
                    path,
                    message: unknown_key(key, TOP_LEVEL),
                },
            ),
        }
    }
    // No `listeners` key (or an empty one): the documented default listener.
    cfg.listeners = match listeners {
        Some(l) if !l.is_empty() => l,
        _ => vec![Some(ListenerConfig::public("0.0.0.0:8080"))],
    };
    cfg
}

fn push(issues: &RefCell<Vec<Issue>>, issue: Issue) {
    issues.borrow_mut().push(issue);
}

/// Types one value, keeping the default when it does not type.
fn set<T: DeserializeOwned>(
    slot: &mut T,
    node: &Node,
    path: &KeyPath,
    issues: &RefCell<Vec<Issue>>,
) {
    match from_node(node, path, issues) {
        Ok(v) => *slot = v,
        Err(issue) => push(issues, issue),
    }
}

/// Types each item of a list on its own, keeping positions.
fn list<T: DeserializeOwned>(
    node: &Node,
    path: &KeyPath,
    issues: &RefCell<Vec<Issue>>,
) -> Vec<Option<T>> {
    match &node.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                from_node(item, &path.index(i), issues)
                    .map_err(|issue| push(issues, issue))
                    .ok()
            })
            .collect(),
        Kind::Null => Vec::new(),
        other => {
            push(
                issues,
                Issue {
                    origin: node.origin.clone(),
                    path: path.clone(),
                    message: format!("expected a list, found {}", other.describe()),
                },
            );
            Vec::new()
        }
    }
}

/// The `auth` section: its one key, `providers`, is a map of named providers typed one by one.
fn auth(node: &Node, path: &KeyPath, issues: &RefCell<Vec<Issue>>) -> AuthConfig {
    const KEYS: &[&str] = &["providers"];
    let mut out = AuthConfig::default();
    match &node.kind {
        Kind::Map(entries) => {
            for e in entries {
                let at = path.key(&e.key);
                if e.key == "providers" {
                    out.providers = named(&e.value, &at, "providers", issues);
                } else {
                    push(
                        issues,
                        Issue {
                            origin: e.key_origin.clone(),
                            path: at,
                            message: unknown_key(&e.key, KEYS),
                        },
                    );
                }
            }
        }
        Kind::Null => {}
        other => push(
            issues,
            Issue {
                origin: node.origin.clone(),
                path: path.clone(),
                message: format!("expected a map, found {}", other.describe()),
            },
        ),
    }
    out
}

/// Types each value of a map of named items on its own, keeping names and order.
fn named<T: DeserializeOwned>(
    node: &Node,
    path: &KeyPath,
    what: &str,
    issues: &RefCell<Vec<Issue>>,
) -> Vec<(String, Option<T>)> {
    match &node.kind {
        Kind::Map(entries) => entries
            .iter()
            .map(|e| {
                let item = from_node(&e.value, &path.key(&e.key), issues)
                    .map_err(|issue| push(issues, issue))
                    .ok();
                (e.key.clone(), item)
            })
            .collect(),
        Kind::Null => Vec::new(),
        other => {
            push(
                issues,
                Issue {
                    origin: node.origin.clone(),
                    path: path.clone(),
                    message: format!(
                        "expected a map of {what} by name, found {}",
                        other.describe()
                    ),
                },
            );
            Vec::new()
        }
    }
}
