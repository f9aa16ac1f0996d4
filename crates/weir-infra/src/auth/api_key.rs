//! `api_key`: a key looked up among the consumers' keys by its SHA-256 digest.
//!
//! Only digests are kept (a `sha256:` key in the config never had a plain form here at
//! all), and the lookup is a hash-map probe on the digest, so the time it takes says
//! nothing about how much of a key was right. The final comparison is constant-time anyway.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use subtle::ConstantTimeEq;
use weir_domain::auth::{ApiKey, AuthFailure, Consumer, Principal, Verdict};

use super::cache::sha256;

/// Every consumer's keys, by digest.
pub(crate) struct ApiKeys {
    by_digest: FxHashMap<[u8; 32], usize>,
    principals: Arc<[Principal]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_digest.len())
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// `principals[i]` is consumer `i`'s identity. Two consumers with the same key are an
    /// error: the key could not say who is calling.
    pub(crate) fn new(
        consumers: &[Consumer],
        principals: Arc<[Principal]>,
    ) -> Result<Self, String> {
        let mut by_digest: FxHashMap<[u8; 32], usize> = FxHashMap::default();
        for (i, consumer) in consumers.iter().enumerate() {
            for key in &consumer.api_keys {
                let digest = match key {
                    ApiKey::Plain(secret) => sha256(secret.expose().as_bytes()),
                    ApiKey::Sha256(d) => *d,
                };
                if let Some(&other) = by_digest.get(&digest)
                    && other != i
                {
                    return Err(format!(
                        "consumers {:?} and {:?} have the same API key",
                        consumers[other].name, consumer.name
                    ));
                }
                by_digest.insert(digest, i);
            }
        }
        Ok(Self {
            by_digest,
            principals,
        })
    }

    pub(crate) fn verify(&self, credential: &str) -> Verdict {
        if credential.is_empty() {
            return Verdict::Rejected(AuthFailure::Missing);
        }
        let digest = sha256(credential.as_bytes());
        match self.by_digest.get_key_value(&digest) {
            Some((stored, &i)) if bool::from(stored.ct_eq(&digest)) => self
                .principals
                .get(i)
                .map_or(Verdict::Rejected(AuthFailure::Invalid), |p| {
                    Verdict::Accepted(p.clone())
                }),
            _ => Verdict::Rejected(AuthFailure::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_domain::auth::Secret;

    use super::*;

    fn consumer(name: &str, keys: Vec<ApiKey>) -> Consumer {
        Consumer {
            name: name.to_owned(),
            roles: vec!["reader".to_owned()],
            api_keys: keys,
            basic: None,
        }
    }

    fn principals(consumers: &[Consumer]) -> Arc<[Principal]> {
        consumers
            .iter()
            .map(|c| {
                let roles: Vec<&str> = c.roles.iter().map(String::as_str).collect();
                Principal::new(&c.name, &roles)
            })
            .collect()
    }

    #[test]
    fn plain_and_digest_keys_identify_their_consumer() {
        let consumers = vec![
            consumer(
                "acme",
                vec![ApiKey::Plain(Secret::new("k-acme".to_owned()))],
            ),
            consumer("globex", vec![ApiKey::Sha256(sha256(b"k-globex"))]),
        ];
        let keys = ApiKeys::new(&consumers, principals(&consumers)).unwrap();
        match keys.verify("k-acme") {
            Verdict::Accepted(p) => {
                assert_eq!(&*p.name, "acme");
                assert_eq!(&*p.roles_header, "reader");
            }
            v => panic!("{v:?}"),
        }
        match keys.verify("k-globex") {
            Verdict::Accepted(p) => assert_eq!(&*p.name, "globex"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            keys.verify("k-nobody"),
            Verdict::Rejected(AuthFailure::Invalid)
        );
        assert_eq!(keys.verify(""), Verdict::Rejected(AuthFailure::Missing));
    }

    #[test]
    fn a_key_shared_by_two_consumers_is_refused() {
        let consumers = vec![
            consumer("acme", vec![ApiKey::Plain(Secret::new("k-dup".to_owned()))]),
            consumer("globex", vec![ApiKey::Sha256(sha256(b"k-dup"))]),
        ];
        let err = ApiKeys::new(&consumers, principals(&consumers)).unwrap_err();
        assert!(err.contains("\"acme\" and \"globex\""), "{err}");
        assert!(
            !err.contains("k-dup"),
            "the key must not be in the message: {err}"
        );
        // The same key listed twice by one consumer is harmless.
        let consumers = vec![consumer(
            "acme",
            vec![
                ApiKey::Plain(Secret::new("same".to_owned())),
                ApiKey::Sha256(sha256(b"same")),
            ],
        )];
        assert!(ApiKeys::new(&consumers, principals(&consumers)).is_ok());
    }
}
