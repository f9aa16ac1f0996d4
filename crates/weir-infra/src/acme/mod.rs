//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or pebble in tests) for weir's TLS
//! listeners, so an operator names the domains instead of managing certificate files.
//!
//! One [`Acme`] manages one certificate (all its `domains` as SANs). It serves what is stored
//! at once (a restart must not wait on the CA, nor spend its rate limit), obtains a
//! certificate when none is stored or the stored one does not cover the domains, and renews
//! it `renew_before` its expiry. The listeners read the certificate lock-free with
//! [`Acme::current`] and answer challenges from the shared [`Challenges`]: HTTP-01 on the
//! plain listener, TLS-ALPN-01 (RFC 8737) on the TLS one, in the operator's order of
//! preference. Failures (directory unreachable, order refused, challenge failed) are logged
//! with the CA's reason and retried with a doubling delay; they never take down what is
//! already served.

mod challenges;
mod order;
mod store;
#[cfg(test)]
mod test_pebble;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use rustls_pki_types::DnsName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::challenges::Challenges;
use self::order::Issuer;
use self::store::{Issued, Store};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737): a TLS listener offers it, and answers a
/// ClientHello that asks for it with [`Challenges::tls_alpn01`].
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What one managed certificate is and where it comes from.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// ACME directory URL (`https://...`).
    pub directory: String,
    /// Contact for the account (`mailto:` is added when missing).
    pub email: Option<String>,
    /// SANs of the one certificate; the first is its name.
    pub domains: Vec<String>,
    /// Account key, certificate and its key are stored here (created if missing, files 0600).
    pub storage_dir: PathBuf,
    /// Trust for the directory's own HTTPS (pebble's CA); `None` = the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Renew when the certificate expires within this.
    pub renew_before: Duration,
    /// How often the expiry is checked.
    pub check_every: Duration,
    /// First delay after a failure; it doubles per failure up to an hour.
    pub retry_initial: Duration,
}

impl AcmeSettings {
    /// Renew 30 days before expiry (a third of a 90-day certificate's life).
    pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Check twice a day.
    pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
    /// First retry a second after a failure.
    pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);

    /// Settings with the defaults above, no contact, and the system's roots.
    pub fn new(directory: String, domains: Vec<String>, storage_dir: PathBuf) -> Self {
        Self {
            directory,
            email: None,
            domains,
            storage_dir,
            ca_pem: None,
            renew_before: Self::DEFAULT_RENEW_BEFORE,
            check_every: Self::DEFAULT_CHECK_EVERY,
            retry_initial: Self::DEFAULT_RETRY_INITIAL,
        }
    }
}

/// A challenge type the manager may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// HTTP-01: needs a plain HTTP listener on port 80 of each domain answering
    /// [`Challenges::http01`].
    Http01,
    /// TLS-ALPN-01: needs a TLS listener on port 443 of each domain that offers
    /// [`ACME_TLS_ALPN`] and answers with [`Challenges::tls_alpn01`].
    TlsAlpn01,
}

impl ChallengeKind {
    fn challenge_type(self) -> instant_acme::ChallengeType {
        match self {
            Self::Http01 => instant_acme::ChallengeType::Http01,
            Self::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
        }
    }
}

/// Longest wait between two failed attempts.
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// Bound on one whole issuance, so a CA that stops answering mid-order is retried rather
/// than waited on forever.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);

/// A running manager of one certificate. Aborts its task on drop.
pub struct Acme {
    current: Arc<ArcSwapOption<CertifiedKey>>,
    generation: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("has_certificate", &self.current.load().is_some())
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl Acme {
    /// Loads a stored certificate synchronously (so a restart serves at once), then spawns the
    /// task on the current tokio runtime. `kinds` says which challenge types may be used, in
    /// preference order (HTTP-01 needs a plain listener on port 80 of the domain, TLS-ALPN-01
    /// a TLS one on 443).
    ///
    /// Fails on settings that can never work (no domains, a name that is not a DNS name, a
    /// directory that is not `https://`, no challenge kind, an unusable `ca_pem` or
    /// `storage_dir`) or outside a tokio runtime; a stored certificate that cannot be read is
    /// logged and replaced, not an error. A stored certificate for other names (the domains
    /// changed) is served until its replacement arrives: it still fits the names they share.
    pub fn start(
        settings: AcmeSettings,
        kinds: Vec<ChallengeKind>,
        challenges: Arc<Challenges>,
    ) -> Result<Self, String> {
        let domains = domains(&settings.domains)?;
        check_directory(&settings.directory)?;
        let mut allowed = Vec::new();
        for kind in kinds {
            if !allowed.contains(&kind) {
                allowed.push(kind);
            }
        }
        if allowed.is_empty() {
            return Err("ACME needs at least one challenge kind".to_owned());
        }
        if settings.check_every.is_zero() {
            return Err("ACME check_every must be more than zero".to_owned());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "ACME must be started inside a tokio runtime".to_owned())?;
        let store = Store::open(settings.storage_dir)?;
        let http = order::http_client(settings.ca_pem.as_deref())?;

        let held = match store.load_certificate() {
            Ok(held) => held,
            Err(reason) => {
                tracing::warn!(
                    domains = ?domains,
                    %reason,
                    "ACME: stored certificate not usable; obtaining a new one"
                );
                None
            }
        };
        if let Some(c) = &held {
            tracing::info!(
                names = ?c.names,
                not_after = %c.not_after_text(),
                serial = %c.serial,
                "ACME: serving the stored certificate"
            );
        }
        let current = Arc::new(ArcSwapOption::new(
            held.as_ref().map(|c| Arc::clone(&c.key)),
        ));
        let (generation, _) = watch::channel(0);
        let issuer = Issuer {
            http,
            directory: settings.directory,
            contact: settings.email.map(|e| {
                if e.starts_with("mailto:") {
                    e
                } else {
                    format!("mailto:{e}")
                }
            }),
            domains,
            kinds: allowed,
            store,
            challenges,
        };
        let timing = Timing {
            renew_before: settings.renew_before,
            check_every: settings.check_every,
            retry_initial: settings.retry_initial.max(Duration::from_millis(1)),
        };
        let task = runtime.spawn(run(
            issuer,
            held,
            Arc::clone(&current),
            generation.clone(),
            timing,
        ));
        Ok(Self {
            current,
            generation,
            task,
        })
    }

    /// The current certificate, if any yet.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// A receiver whose `changed()` resolves when the certificate changes (the value counts
    /// the changes since start).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    renew_before: Duration,
    check_every: Duration,
    retry_initial: Duration,
}

/// The manager's task: wait until the certificate is due, obtain one, publish it; on failure
/// wait and try again.
async fn run(
    issuer: Issuer,
    mut held: Option<Issued>,
    current: Arc<ArcSwapOption<CertifiedKey>>,
    generation: watch::Sender<u64>,
    timing: Timing,
) {
    let mut retry = timing.retry_initial;
    let mut failures = 0usize;
    loop {
        let wait = held.as_ref().map_or(Duration::ZERO, |c| {
            due_in(c, &issuer.domains, timing.renew_before)
        });
        if !wait.is_zero() {
            // Never more than check_every at once: a suspended machine or a stepped clock
            // is noticed at the next check, not at a deadline computed before it.
            tokio::time::sleep(wait.min(timing.check_every)).await;
            continue;
        }
        let outcome = tokio::time::timeout(ISSUE_TIMEOUT, issuer.issue(failures))
            .await
            .unwrap_or_else(|_| Err(format!("no certificate within {ISSUE_TIMEOUT:?}")));
        match outcome {
            Ok(issued) => {
                if let Err(reason) = issuer.store.save_certificate(&issued) {
                    // Served all the same; a restart will have to obtain another.
                    tracing::warn!(
                        domains = ?issuer.domains,
                        %reason,
                        "ACME: cannot store the new certificate"
                    );
                }
                let lifetime = issued.not_after.saturating_sub(issued.not_before);
                tracing::info!(
                    names = ?issued.names,
                    not_after = %issued.not_after_text(),
                    serial = %issued.serial,
                    "ACME: certificate {}",
                    if held.is_some() { "renewed" } else { "obtained" }
                );
                if u64::try_from(lifetime).unwrap_or(0) <= timing.renew_before.as_secs() {
                    tracing::warn!(
                        lifetime_secs = lifetime,
                        renew_before_secs = timing.renew_before.as_secs(),
                        "ACME: the CA's certificates live no longer than renew_before; \
                         renewing at every check"
                    );
                }
                current.store(Some(Arc::clone(&issued.key)));
                generation.send_modify(|g| *g += 1);
                held = Some(issued);
                retry = timing.retry_initial;
                failures = 0;
                // However renew_before compares with the CA's lifetimes, at most one
                // certificate per check period.
                tokio::time::sleep(timing.check_every).await;
            }
            Err(reason) => {
                tracing::warn!(
                    domains = ?issuer.domains,
                    %reason,
                    retry_in = ?retry,
                    "ACME: could not obtain a certificate"
                );
                tokio::time::sleep(retry).await;
                retry = retry.saturating_mul(2).min(RETRY_MAX);
                failures = failures.wrapping_add(1);
            }
        }
    }
}

/// How long until `held` must be replaced: zero when it does not cover the domains or
/// expires within `renew_before`.
fn due_in(held: &Issued, domains: &[String], renew_before: Duration) -> Duration {
    if !held.covers(domains) {
        return Duration::ZERO;
    }
    let remaining = u64::try_from(held.remaining()).unwrap_or(0);
    Duration::from_secs(remaining.saturating_sub(renew_before.as_secs()))
}

/// The domains lowercased, each once, each a DNS name HTTP-01 or TLS-ALPN-01 can prove.
fn domains(given: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(given.len());
    for d in given {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if d.starts_with("*.") {
            return Err(format!(
                "ACME domain {d:?}: a wildcard needs DNS-01, which weir does not do"
            ));
        }
        if d.parse::<std::net::IpAddr>().is_ok() || DnsName::try_from(d.as_str()).is_err() {
            return Err(format!("ACME domain {d:?} is not a DNS name"));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    if out.is_empty() {
        return Err("ACME needs at least one domain".to_owned());
    }
    Ok(out)
}

fn check_directory(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("ACME directory {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(format!("ACME directory {url:?} must be an https:// URL"));
    }
    Ok(())
}
