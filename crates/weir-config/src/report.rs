//! Collecting problems: every check records what it found and carries on, so one run of
//! `weir validate` lists everything that is wrong.

use crate::Problem;
use crate::node::{KeyPath, Node, Origin};

/// A problem before it is given the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issue {
    pub(crate) origin: Origin,
    pub(crate) path: KeyPath,
    pub(crate) message: String,
}

impl Issue {
    pub(crate) fn into_problem(self, file: &str) -> Problem {
        let (file, line, col) = match self.origin {
            Origin::File { line, col } => (file.to_owned(), line, col),
            Origin::Env(var) => (format!("env:{var}"), 0, 0),
            Origin::Flag(flag) => (format!("flag:{flag}"), 0, 0),
        };
        Problem {
            file,
            line,
            col,
            path: printable(&self.path.to_string()),
            message: printable(&self.message),
        }
    }
}

/// A problem is one line, and never drives a terminal: control characters a key or value
/// may hold (a multi-line key, an escape sequence) are shown escaped.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The problems found so far, located through the node tree.
pub(crate) struct Report<'n> {
    root: &'n Node,
    pub(crate) issues: Vec<Issue>,
}

impl<'n> Report<'n> {
    pub(crate) const fn new(root: &'n Node, issues: Vec<Issue>) -> Self {
        Self { root, issues }
    }

    /// A problem with the value at `path` (or, when it was not written, its parent).
    pub(crate) fn at(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue {
            origin: self.root.origin_of(path).clone(),
            path: path.clone(),
            message: message.into(),
        });
    }

    /// A problem with the key that ends `path` itself (a key that must not be there).
    pub(crate) fn at_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.issues.push(Issue {
            origin: self.root.key_origin_of(path).clone(),
            path: path.clone(),
            message: message.into(),
        });
    }

    /// Records the outcome of a parse, returning the value when it worked.
    pub(crate) fn check<T>(&mut self, path: &KeyPath, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.at(path, message);
                None
            }
        }
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

/// The candidate closest to `name`, when it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance by characters, counting a swap of two neighbours as one edit (optimal string
/// alignment): "crop" is one edit from "corp".
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back, one back, current.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 0..a.len() {
        cur[0] = i + 1;
        for j in 0..b.len() {
            let cost = usize::from(a[i] != b[j]);
            let mut d = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_near_names() {
        let names = ["users", "orders", "billing"];
        assert_eq!(closest("user", names.into_iter()), Some("users"));
        assert_eq!(closest("ordres", names.into_iter()), Some("orders"));
        assert_eq!(closest("payments", names.into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("crop", "corp"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(closest("crop", ["corp", "keys"].into_iter()), Some("corp"));
    }

    #[test]
    fn problems_are_one_printable_line() {
        assert_eq!(printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("plain"), "plain");
    }
}
