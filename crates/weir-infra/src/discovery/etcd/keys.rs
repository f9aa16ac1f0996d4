//! The keys under the prefix and the targets they name: what a listing replaces and each
//! watch event changes, kept apart from the connection so it can be tested without etcd.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use weir_domain::discovery::Endpoint;

/// A key's value as it is written into etcd. Other fields are allowed (and ignored), so that
/// whoever registers an instance may keep metadata of its own next to it.
#[derive(Deserialize)]
struct Value {
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

const fn one() -> u32 {
    1
}

/// The target a key's value names, or why it names none (in words for a log line).
pub(super) fn parse(value: &[u8]) -> Result<Endpoint, String> {
    let v: Value = serde_json::from_slice(value)
        .map_err(|e| format!("the value is not {{\"url\": \"...\", \"weight\": N}}: {e}"))?;
    Endpoint::from_url(&v.url, v.weight)
}

/// A key whose value is not a target, to be logged once.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rejected {
    pub(super) key: String,
    pub(super) reason: String,
}

/// The current keys under the prefix.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// Keys whose value is a target.
    targets: BTreeMap<Vec<u8>, Endpoint>,
    /// Keys whose value is not, with the revision of that value. Kept across listings so
    /// that a bad value is reported once, not again on every re-list.
    rejected: HashMap<Vec<u8>, i64>,
}

impl Keys {
    /// Starts over from a listing of `(key, value, mod_revision)`; returns the bad values
    /// not reported before.
    pub(super) fn replace<'a>(
        &mut self,
        listing: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
    ) -> Vec<Rejected> {
        let known = std::mem::take(&mut self.rejected);
        self.targets.clear();
        let mut out = Vec::new();
        for (key, value, revision) in listing {
            if let Some(&r) = known.get(key) {
                self.rejected.insert(key.to_vec(), r);
            }
            out.extend(self.put(key, value, revision));
        }
        out
    }

    /// A key was written; `Some` when its value is bad and this value was not reported yet.
    pub(super) fn put(&mut self, key: &[u8], value: &[u8], revision: i64) -> Option<Rejected> {
        match parse(value) {
            Ok(endpoint) => {
                self.rejected.remove(key);
                self.targets.insert(key.to_vec(), endpoint);
                None
            }
            Err(reason) => {
                self.targets.remove(key);
                let seen = self.rejected.insert(key.to_vec(), revision) == Some(revision);
                (!seen).then(|| Rejected {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason,
                })
            }
        }
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.targets.remove(key);
        self.rejected.remove(key);
    }

    /// The targets, sorted by URL, each once: two keys naming the same URL are one target
    /// with both weights (capped at the largest weight allowed), as an SRV answer would be.
    pub(super) fn endpoints(&self) -> Vec<Endpoint> {
        crate::discovery::merged(self.targets.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[Endpoint]) -> Vec<(&str, u32)> {
        list.iter().map(|e| (e.url.as_str(), e.weight)).collect()
    }

    #[test]
    fn values_name_a_url_and_an_optional_weight() {
        let e = parse(br#"{"url": "http://10.0.0.1:9000", "weight": 5}"#).unwrap();
        assert_eq!((e.url.as_str(), e.weight), ("http://10.0.0.1:9000", 5));
        let e = parse(br#"{"url": " http://users/ ", "zone": "a"}"#).unwrap();
        assert_eq!((e.url.as_str(), e.weight), ("http://users:80", 1));
        for bad in [
            &b"http://10.0.0.1:9000"[..],
            b"",
            b"{}",
            br#"{"url": 5}"#,
            br#"{"url": "ftp://a:1"}"#,
            br#"{"url": "http://a:1/path"}"#,
            br#"{"url": "http://a:1", "weight": 0}"#,
            br#"{"url": "http://a:1", "weight": -1}"#,
            br#"{"url": "http://a:1", "weight": 2.5}"#,
            br#"{"url": "http://a:1", "weight": 1000001}"#,
            br#"{"url": "http://a:1", "weight": null}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let why = parse(b"nope").unwrap_err();
        assert!(why.starts_with("the value is not {\"url\""), "{why}");
    }

    #[test]
    fn a_listing_then_puts_and_deletes() {
        let mut keys = Keys::default();
        let none = keys.replace([
            (&b"/u/b"[..], &br#"{"url": "http://10.0.0.2:80"}"#[..], 3),
            (b"/u/a", br#"{"url": "http://10.0.0.1:80", "weight": 2}"#, 4),
        ]);
        assert!(none.is_empty());
        assert_eq!(
            urls(&keys.endpoints()),
            [("http://10.0.0.1:80", 2), ("http://10.0.0.2:80", 1)]
        );

        assert_eq!(
            keys.put(b"/u/c", br#"{"url": "http://10.0.0.0:80"}"#, 5),
            None
        );
        keys.delete(b"/u/a");
        // A key that changes its URL moves its target.
        keys.put(b"/u/b", br#"{"url": "http://10.0.0.9:80"}"#, 6);
        assert_eq!(
            urls(&keys.endpoints()),
            [("http://10.0.0.0:80", 1), ("http://10.0.0.9:80", 1)]
        );
        keys.delete(b"/u/none");

        // A listing replaces everything.
        keys.replace([]);
        assert!(keys.endpoints().is_empty());
    }

    #[test]
    fn a_bad_value_leaves_its_key_out_and_is_reported_once() {
        let mut keys = Keys::default();
        keys.put(b"/u/a", br#"{"url": "http://10.0.0.1:80"}"#, 2);
        keys.put(b"/u/b", br#"{"url": "http://10.0.0.2:80"}"#, 3);

        // A target whose value turns bad is no longer a target; the others stay.
        let rejected = keys.put(b"/u/a", b"garbage", 4).unwrap();
        assert_eq!(rejected.key, "/u/a");
        assert_eq!(urls(&keys.endpoints()), [("http://10.0.0.2:80", 1)]);

        // Listed again with the same value: not reported again.
        let listing = [
            (&b"/u/a"[..], &b"garbage"[..], 4),
            (b"/u/b", br#"{"url": "http://10.0.0.2:80"}"#, 3),
            (b"/u/c", br#"{"url": "http://10.0.0.3:80", "weight": 0}"#, 5),
        ];
        let first = keys.replace(listing);
        assert_eq!(
            first.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["/u/c"]
        );
        assert!(keys.replace(listing).is_empty());
        assert_eq!(urls(&keys.endpoints()), [("http://10.0.0.2:80", 1)]);

        // A new bad value of the same key is news; a good one makes it a target again.
        assert!(keys.put(b"/u/c", b"{}", 6).is_some());
        assert!(
            keys.put(b"/u/c", br#"{"url": "http://10.0.0.3:80"}"#, 7)
                .is_none()
        );
        assert_eq!(keys.endpoints().len(), 2);

        // Deleted and written again with the value it had: reported again.
        keys.delete(b"/u/a");
        assert!(keys.put(b"/u/a", b"garbage", 4).is_some());
    }

    #[test]
    fn keys_naming_the_same_url_are_one_target_with_both_weights() {
        let mut keys = Keys::default();
        keys.put(b"/u/a", br#"{"url": "http://10.0.0.1:80", "weight": 3}"#, 2);
        keys.put(b"/u/b", br#"{"url": "http://10.0.0.1", "weight": 4}"#, 3);
        keys.put(
            b"/u/c",
            br#"{"url": "http://10.0.0.1:80", "weight": 1000000}"#,
            4,
        );
        assert_eq!(
            urls(&keys.endpoints()),
            [("http://10.0.0.1:80", Endpoint::MAX_WEIGHT)]
        );
        keys.delete(b"/u/c");
        assert_eq!(urls(&keys.endpoints()), [("http://10.0.0.1:80", 7)]);
    }
}
