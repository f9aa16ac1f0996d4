//! `WEIR_*` environment overrides and command-line flags, applied to the node tree.
//!
//! Precedence, highest first: flags > environment > file > defaults. Overrides edit the tree
//! before it is typed, so an overridden value is typed and validated exactly like one written
//! in the file, and a problem with it is located at `env:WEIR_X` or `flag:--x`.
//!
//! `WEIR_ADMIN__LISTEN=127.0.0.1:9000` sets `admin.listen`: `__` separates levels, names are
//! lower-cased, a number picks a list item (`WEIR_LISTENERS__0__ADDRESS`; the next free index
//! appends one), and map keys match existing keys case-insensitively
//! (`WEIR_UPSTREAMS__USERS__...` finds `Users:`). A variable is an override only when its first
//! level names a top-level key; `WEIR_CONFIG`, `WEIR_ADMIN_TOKEN` and the like are left alone.
//! Values are text; the target field gives them their type.

use crate::model::TOP_LEVEL;
use crate::node::{Entry, KeyPath, Kind, Node, Origin};
use crate::report::Issue;
use crate::{Env, Overrides};

const PREFIX: &str = "WEIR_";

/// Applies every `WEIR_*` override found in `env`, in name order.
pub(crate) fn apply_env(root: &mut Node, env: &dyn Env, issues: &mut Vec<Issue>) {
    let mut vars: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let segs: Vec<String> = name[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if !segs
            .first()
            .is_some_and(|first| TOP_LEVEL.contains(&first.as_str()))
        {
            continue;
        }
        let origin = Origin::Env(name.clone());
        if segs.iter().any(String::is_empty) {
            issues.push(Issue {
                origin,
                path: KeyPath::root(),
                message: format!("{name} has an empty level: levels are separated by one `__`"),
            });
            continue;
        }
        if segs[0] == "listeners" && segs.len() > 2 {
            // The default listener is not in the file; overriding one of its keys means
            // overriding it, not starting a listener from nothing.
            ensure_a_listener(root, &origin);
        }
        let value = Node::new(Kind::Str(value), origin.clone());
        set(root, &segs, value, &origin, issues);
    }
}

/// Applies the flags of `weir run`.
pub(crate) fn apply_flags(root: &mut Node, flags: &Overrides, issues: &mut Vec<Issue>) {
    if let Some(listen) = &flags.listen {
        set_listen(root, listen, issues);
    }
    let text = |flag: &'static str, v: &str| Node::new(Kind::Str(v.to_owned()), Origin::Flag(flag));
    if let Some(v) = &flags.admin_listen {
        set_keys(
            root,
            &["admin", "listen"],
            text("--admin-listen", v),
            issues,
        );
    }
    if let Some(v) = &flags.log_level {
        let node = text("--log-level", v);
        set_keys(root, &["observability", "log", "level"], node, issues);
    }
    if let Some(v) = &flags.log_format {
        let node = text("--log-format", v);
        set_keys(root, &["observability", "log", "format"], node, issues);
    }
    if let Some(n) = flags.workers {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let node = Node::new(Kind::UInt(n), Origin::Flag("--workers"));
        set_keys(root, &["workers"], node, issues);
    }
}

fn set_keys(root: &mut Node, keys: &[&str], value: Node, issues: &mut Vec<Issue>) {
    let segs: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let origin = value.origin.clone();
    set(root, &segs, value, &origin, issues);
}

/// `--listen` replaces the first listener's address, or that of the default listener.
fn set_listen(root: &mut Node, listen: &str, issues: &mut Vec<Issue>) {
    let origin = Origin::Flag("--listen");
    ensure_a_listener(root, &origin);
    let address = Node::new(Kind::Str(listen.to_owned()), origin.clone());
    let segs = ["listeners".to_owned(), "0".to_owned(), "address".to_owned()];
    set(root, &segs, address, &origin, issues);
}

/// Writes the default listener (`public` on `0.0.0.0:8080`) into the tree when the file has
/// no listener, so that an override of the first listener changes the default one.
fn ensure_a_listener(root: &mut Node, origin: &Origin) {
    let missing = match root.get("listeners") {
        None => true,
        Some(l) => match &l.kind {
            Kind::Null => true,
            Kind::Seq(items) => items.is_empty(),
            _ => false, // not a list: the file's problem, reported when typed
        },
    };
    if !missing || !matches!(root.kind, Kind::Map(_) | Kind::Null) {
        return;
    }
    let text = |v: &str| Node::new(Kind::Str(v.to_owned()), origin.clone());
    let listener = Node::new(
        Kind::Map(vec![
            entry("name", text("public")),
            entry("address", text("0.0.0.0:8080")),
        ]),
        origin.clone(),
    );
    let list = Node::new(Kind::Seq(vec![listener]), origin.clone());
    let mut ignored = Vec::new();
    set(root, &["listeners".to_owned()], list, origin, &mut ignored);
}

fn entry(key: &str, value: Node) -> Entry {
    Entry {
        key: key.to_owned(),
        key_origin: value.origin.clone(),
        value,
    }
}

fn set(root: &mut Node, segs: &[String], value: Node, origin: &Origin, issues: &mut Vec<Issue>) {
    if let Err((path, message)) = set_at(root, segs, value, origin, KeyPath::root()) {
        issues.push(Issue {
            origin: origin.clone(),
            path,
            message,
        });
    }
}

/// Puts `value` at `segs` under `node`, creating maps and list items on the way.
fn set_at(
    node: &mut Node,
    segs: &[String],
    value: Node,
    origin: &Origin,
    path: KeyPath,
) -> Result<(), (KeyPath, String)> {
    let Some((first, rest)) = segs.split_first() else {
        *node = value;
        return Ok(());
    };
    let index = first.parse::<usize>().ok();
    if node.kind == Kind::Null {
        node.kind = if index.is_some() {
            Kind::Seq(Vec::new())
        } else {
            Kind::Map(Vec::new())
        };
    }
    let describe = node.kind.describe();
    match &mut node.kind {
        Kind::Map(entries) => {
            let pos = match entries
                .iter()
                .position(|e| e.key.eq_ignore_ascii_case(first))
            {
                Some(pos) => pos,
                None => {
                    entries.push(entry(first, Node::new(Kind::Null, origin.clone())));
                    entries.len() - 1
                }
            };
            let child = path.key(&entries[pos].key);
            set_at(&mut entries[pos].value, rest, value, origin, child)
        }
        Kind::Seq(items) => {
            let Some(i) = index else {
                return Err((
                    path,
                    format!("this is a list: pick an item by number, not \"{first}\""),
                ));
            };
            if i == items.len() {
                items.push(Node::new(Kind::Null, origin.clone()));
            }
            let len = items.len();
            match items.get_mut(i) {
                Some(item) => set_at(item, rest, value, origin, path.index(i)),
                None => Err((
                    path,
                    format!(
                        "index {i} is past the end of the list, which has {len} item{}; {len} appends one",
                        if len == 1 { "" } else { "s" }
                    ),
                )),
            }
        }
        _ => Err((path, format!("cannot set \"{first}\" inside {describe}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::parse;

    struct Vars(Vec<(&'static str, &'static str)>);

    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
        fn vars(&self) -> Vec<(String, String)> {
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }
    }

    fn value<'a>(root: &'a Node, path: &[&str]) -> Option<&'a Kind> {
        let mut node = root;
        for seg in path {
            node = match (&node.kind, seg.parse::<usize>()) {
                (Kind::Seq(items), Ok(i)) => items.get(i)?,
                _ => node.get(seg)?,
            };
        }
        Some(&node.kind)
    }

    #[test]
    fn env_overrides_set_nested_keys_and_list_items() {
        let mut root = parse("admin: { listen: 1.2.3.4:1 }\nlisteners:\n  - { name: a, address: x }\nupstreams:\n  Users: { targets: [] }\n").unwrap();
        let env = Vars(vec![
            ("WEIR_ADMIN__LISTEN", "127.0.0.1:9000"),
            ("WEIR_LISTENERS__0__ADDRESS", "0.0.0.0:1"),
            ("WEIR_LISTENERS__1__NAME", "b"),
            ("WEIR_OBSERVABILITY__ACCESS_LOG__ENABLED", "false"),
            ("WEIR_UPSTREAMS__USERS__LOAD_BALANCING", "p2c"),
            ("WEIR_CONFIG", "other.yaml"),
            ("WEIR_ADMIN_TOKEN", "t"),
        ]);
        let mut issues = Vec::new();
        apply_env(&mut root, &env, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        let s = |v: &str| Some(Kind::Str(v.to_owned()));
        assert_eq!(
            value(&root, &["admin", "listen"]).cloned(),
            s("127.0.0.1:9000")
        );
        assert_eq!(
            value(&root, &["listeners", "0", "address"]).cloned(),
            s("0.0.0.0:1")
        );
        assert_eq!(value(&root, &["listeners", "1", "name"]).cloned(), s("b"));
        let enabled = ["observability", "access_log", "enabled"];
        assert_eq!(value(&root, &enabled).cloned(), s("false"));
        let lb = ["upstreams", "Users", "load_balancing"];
        assert_eq!(value(&root, &lb).cloned(), s("p2c"));
        assert!(root.get("config").is_none());
        let listen = root.origin_of(&KeyPath::root().key("admin").key("listen"));
        assert_eq!(listen, &Origin::Env("WEIR_ADMIN__LISTEN".into()));
    }

    #[test]
    fn bad_env_paths_are_reported_at_the_variable() {
        let mut root = parse("listeners: [{ name: a, address: x }]\nworkers: 2\n").unwrap();
        let env = Vars(vec![
            ("WEIR_LISTENERS__5__ADDRESS", "x"),
            ("WEIR_WORKERS__X", "1"),
            ("WEIR_ADMIN____LISTEN", "x"),
        ]);
        let mut issues = Vec::new();
        apply_env(&mut root, &env, &mut issues);
        let got: Vec<_> = issues
            .iter()
            .map(|i| (i.path.to_string(), i.message.clone()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(issues[0].origin, Origin::Env("WEIR_ADMIN____LISTEN".into()));
        assert_eq!(got[1].0, "listeners");
        assert!(got[1].1.contains("index 5 is past the end"), "{}", got[1].1);
        assert_eq!(
            got[2],
            (
                "workers".to_owned(),
                "cannot set \"x\" inside an integer".to_owned()
            )
        );
    }

    #[test]
    fn flags_create_what_is_missing() {
        let mut root = parse("").unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:1".into()),
            admin_listen: Some("off".into()),
            log_level: Some("debug".into()),
            log_format: Some("text".into()),
            workers: Some(3),
        };
        let mut issues = Vec::new();
        apply_flags(&mut root, &flags, &mut issues);
        assert!(issues.is_empty());
        let s = |v: &str| Some(Kind::Str(v.to_owned()));
        assert_eq!(
            value(&root, &["listeners", "0", "name"]).cloned(),
            s("public")
        );
        assert_eq!(
            value(&root, &["listeners", "0", "address"]).cloned(),
            s("127.0.0.1:1")
        );
        assert_eq!(
            value(&root, &["observability", "log", "level"]).cloned(),
            s("debug")
        );
        assert_eq!(value(&root, &["workers"]).cloned(), Some(Kind::UInt(3)));
    }
}
