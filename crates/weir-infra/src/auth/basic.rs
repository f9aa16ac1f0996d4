//! `basic`: `user:pass` checked against the consumers' argon2id or bcrypt password hashes.
//!
//! A password hash is built to be slow (milliseconds of CPU), so it never runs on a worker
//! thread: it runs on tokio's blocking pool, and a semaphore bounds how many run at once,
//! so a flood of wrong passwords queues instead of taking every core and blocking thread.
//! A right password is remembered for a few minutes per worker, so a client sending the
//! same credentials on every request pays for the hash once.

use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use rustc_hash::FxHashMap;
use tokio::sync::Semaphore;
use weir_domain::auth::{AuthFailure, Consumer, Principal, Verdict};

use super::cache::{self, WorkerCache};

/// How long a verified `user:pass` is taken without hashing again. A changed password
/// arrives with a config reload, which starts a fresh cache.
const SUCCESS_TTL: Duration = Duration::from_secs(5 * 60);

/// Longest `Basic` credential (base64) looked at; no real user name and password come
/// near it, and it keeps an attacker from making each hash check read megabytes.
const MAX_CREDENTIAL: usize = 4096;

/// A parsed password hash, ready to check a password against.
enum PasswordCheck {
    Argon2(Box<PasswordHash>),
    Bcrypt(String),
}

impl PasswordCheck {
    /// The reason is about the format only: the hash itself never goes into a message.
    fn parse(hash: &str) -> Result<Self, &'static str> {
        if hash.starts_with("$argon2") {
            let parsed =
                PasswordHash::new(hash).map_err(|_| "password_hash is not a valid PHC string")?;
            argon2::Algorithm::new(parsed.algorithm.as_str())
                .map_err(|_| "password_hash names an unknown argon2 variant")?;
            argon2::Params::try_from(&parsed)
                .map_err(|_| "password_hash has invalid argon2 parameters")?;
            return Ok(Self::Argon2(Box::new(parsed)));
        }
        let bcrypt = ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p));
        if bcrypt && hash.len() == 60 && hash.is_ascii() {
            return Ok(Self::Bcrypt(hash.to_owned()));
        }
        Err(
            "password_hash is neither an argon2 PHC string ($argon2id$...) nor a bcrypt hash ($2b$...)",
        )
    }

    /// Slow by design: call it on the blocking pool.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(hash) => Argon2::default().verify_password(password, &**hash).is_ok(),
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }
}

struct User {
    consumer: usize,
    hash: Arc<PasswordCheck>,
}

/// The consumers' Basic credentials.
pub(crate) struct Passwords {
    by_name: FxHashMap<String, User>,
    /// Checked against when the user is unknown, so an unknown user takes as long as a
    /// wrong password and response times do not reveal which user names exist.
    decoy: Option<Arc<PasswordCheck>>,
    principals: Arc<[Principal]>,
    hashing: Arc<Semaphore>,
    /// Consumer index per verified credential; [`cache::CAPACITY`] entries per worker.
    verified: WorkerCache<usize>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("users", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// `principals[i]` is consumer `i`'s identity; `hashing` bounds concurrent hash checks.
    pub(crate) fn new(
        consumers: &[Consumer],
        principals: Arc<[Principal]>,
        hashing: Arc<Semaphore>,
        workers: usize,
    ) -> Result<Self, String> {
        let mut by_name: FxHashMap<String, User> = FxHashMap::default();
        let mut decoy = None;
        for (i, consumer) in consumers.iter().enumerate() {
            let Some(basic) = &consumer.basic else {
                continue;
            };
            let hash = PasswordCheck::parse(basic.password_hash.expose())
                .map_err(|e| format!("consumer {:?}: {e}", consumer.name))?;
            let hash = Arc::new(hash);
            decoy.get_or_insert_with(|| Arc::clone(&hash));
            if let Some(other) = by_name.get(&basic.username) {
                return Err(format!(
                    "consumers {:?} and {:?} have the same basic username {:?}",
                    consumers[other.consumer].name, consumer.name, basic.username
                ));
            }
            by_name.insert(basic.username.clone(), User { consumer: i, hash });
        }
        Ok(Self {
            by_name,
            decoy,
            principals,
            hashing,
            verified: WorkerCache::new(workers, cache::CAPACITY)?,
        })
    }

    /// `credential` is the base64 text after `Basic `.
    pub(crate) async fn verify(&self, credential: &str) -> Verdict {
        if credential.is_empty() {
            return Verdict::Rejected(AuthFailure::Missing);
        }
        if credential.len() > MAX_CREDENTIAL {
            return Verdict::Rejected(AuthFailure::Invalid);
        }
        let key = self.verified.key(credential.as_bytes());
        if let Some(i) = self.verified.get(&key) {
            return self.accept(i);
        }
        let Some((user, password)) = split(credential) else {
            return Verdict::Rejected(AuthFailure::Invalid);
        };
        let (hash, consumer) = match self.by_name.get(user.as_str()) {
            Some(u) => (Arc::clone(&u.hash), Some(u.consumer)),
            None => match &self.decoy {
                Some(d) => (Arc::clone(d), None),
                None => return Verdict::Rejected(AuthFailure::Invalid),
            },
        };
        match (self.check(hash, password).await, consumer) {
            (Some(true), Some(i)) => {
                self.verified.insert(key, i, SUCCESS_TTL);
                self.accept(i)
            }
            (Some(_), _) => Verdict::Rejected(AuthFailure::Invalid),
            // The check itself died (a panic in the hasher): undecided, so fail closed.
            (None, _) => Verdict::Rejected(AuthFailure::Unavailable),
        }
    }

    fn accept(&self, consumer: usize) -> Verdict {
        self.principals
            .get(consumer)
            .map_or(Verdict::Rejected(AuthFailure::Invalid), |p| {
                Verdict::Accepted(p.clone())
            })
    }

    /// Runs one hash check on the blocking pool, within the concurrency bound.
    async fn check(&self, hash: Arc<PasswordCheck>, password: String) -> Option<bool> {
        let permit = Arc::clone(&self.hashing).acquire_owned().await.ok()?;
        // The permit moves into the job: if the request goes away, the job still runs to
        // the end and the bound still counts it.
        let job = move || {
            let _permit = permit;
            hash.matches(password.as_bytes())
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn_blocking(job).await.ok(),
            Err(_) => Some(job()),
        }
    }
}

/// `base64(user:pass)` → (user, pass), split at the first `:`.
fn split(credential: &str) -> Option<(String, String)> {
    let decoded = STANDARD_PAD_INDIFFERENT.decode(credential).ok()?;
    let mut text = String::from_utf8(decoded).ok()?;
    let colon = text.find(':')?;
    let password = text[colon + 1..].to_owned();
    text.truncate(colon);
    Some((text, password))
}

#[cfg(test)]
mod tests {
    use argon2::{Params, PasswordHasher, Version};
    use weir_domain::auth::{BasicCredential, Secret};

    use super::*;

    fn consumer(name: &str, username: &str, hash: &str) -> Consumer {
        Consumer {
            name: name.to_owned(),
            roles: vec!["staff".to_owned()],
            api_keys: vec![],
            basic: Some(BasicCredential {
                username: username.to_owned(),
                password_hash: Secret::new(hash.to_owned()),
            }),
        }
    }

    fn argon2id(password: &str) -> String {
        let params = Params::new(256, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn passwords(consumers: &[Consumer], permits: usize) -> Passwords {
        let principals: Arc<[Principal]> = consumers
            .iter()
            .map(|c| Principal::new(&c.name, &["staff"]))
            .collect();
        Passwords::new(consumers, principals, Arc::new(Semaphore::new(permits)), 1).unwrap()
    }

    fn basic(user_pass: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    }

    #[tokio::test]
    async fn argon2id_and_bcrypt_hashes_verify() {
        let consumers = vec![
            consumer("acme", "acme", &argon2id("s3cret:with:colons")),
            consumer("globex", "globex", &bcrypt::hash("hunter2", 4).unwrap()),
        ];
        let p = passwords(&consumers, 2);
        match p.verify(&basic("acme:s3cret:with:colons")).await {
            Verdict::Accepted(who) => assert_eq!(&*who.name, "acme"),
            v => panic!("{v:?}"),
        }
        match p.verify(&basic("globex:hunter2")).await {
            Verdict::Accepted(who) => assert_eq!(&*who.name, "globex"),
            v => panic!("{v:?}"),
        }
        let invalid = Verdict::Rejected(AuthFailure::Invalid);
        assert_eq!(p.verify(&basic("acme:wrong")).await, invalid);
        assert_eq!(p.verify(&basic("globex:hunter3")).await, invalid);
        assert_eq!(p.verify(&basic("nobody:hunter2")).await, invalid);
        assert_eq!(p.verify(&basic("no-colon")).await, invalid);
        assert_eq!(p.verify("%%%not base64").await, invalid);
        assert_eq!(
            p.verify(&base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x']))
                .await,
            invalid
        );
        assert_eq!(p.verify("").await, Verdict::Rejected(AuthFailure::Missing));
        // Failures are not cached: only the two successes are.
        assert_eq!(p.verified.len(), 2);
    }

    #[tokio::test]
    async fn a_verified_credential_is_served_from_the_cache() {
        let consumers = vec![consumer("acme", "acme", &argon2id("pw"))];
        let p = passwords(&consumers, 1);
        let cred = basic("acme:pw");
        assert!(matches!(p.verify(&cred).await, Verdict::Accepted(_)));
        // With no hashing permits left, only a cache hit can still answer.
        p.hashing.close();
        match p.verify(&cred).await {
            Verdict::Accepted(who) => assert_eq!(&*who.roles_header, "staff"),
            v => panic!("{v:?}"),
        }
        assert_eq!(
            p.verify(&basic("acme:other")).await,
            Verdict::Rejected(AuthFailure::Unavailable)
        );
    }

    #[test]
    fn bad_hashes_and_duplicate_users_fail_at_load_without_leaking() {
        let principals: Arc<[Principal]> = Arc::from(vec![]);
        let sem = Arc::new(Semaphore::new(1));
        for hash in ["plaintext", "$argon2id$v=19$garbage", "$2b$04$short"] {
            let err = Passwords::new(
                &[consumer("acme", "acme", hash)],
                Arc::clone(&principals),
                Arc::clone(&sem),
                1,
            )
            .unwrap_err();
            assert!(err.starts_with("consumer \"acme\""), "{err}");
            assert!(!err.contains(hash), "{err}");
        }
        let h = bcrypt::hash("x", 4).unwrap();
        let err = Passwords::new(
            &[consumer("a", "same", &h), consumer("b", "same", &h)],
            principals,
            sem,
            1,
        )
        .unwrap_err();
        assert!(err.contains("same basic username"), "{err}");
    }

    #[test]
    fn credentials_split_at_the_first_colon() {
        assert_eq!(
            split(&basic("u:p:q")),
            Some(("u".to_owned(), "p:q".to_owned()))
        );
        assert_eq!(split(&basic(":")), Some((String::new(), String::new())));
        assert_eq!(split("dTpw"), Some(("u".to_owned(), "p".to_owned())));
    }
}
