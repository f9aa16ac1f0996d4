//! The answers to pending ACME challenges, shared between the manager that makes them and the
//! listeners that serve them: the plain HTTP listener answers HTTP-01 from it, the TLS
//! listener's certificate resolver answers TLS-ALPN-01 from it.
//!
//! Reads happen on connection paths, so they are lock-free (one `ArcSwap` load and a map
//! lookup); writes are rare (a few per issuance) and copy the small maps.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Answers to pending challenges, shared with the listeners.
#[derive(Default, Debug)]
pub struct Challenges {
    pending: ArcSwap<Pending>,
}

#[derive(Default, Clone)]
struct Pending {
    /// HTTP-01: token -> key authorization.
    http01: HashMap<String, String>,
    /// TLS-ALPN-01: domain (lowercase) -> the acme-tls/1 certificate.
    tls_alpn01: HashMap<String, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Pending {
    // Tokens and domains only: what is pending, not the answers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("http01", &self.http01.keys().collect::<Vec<_>>())
            .field("tls_alpn01", &self.tls_alpn01.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Challenges {
    /// Body to answer `GET /.well-known/acme-challenge/{token}` (HTTP-01 key authorization),
    /// if pending.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.pending.load().http01.get(token).cloned()
    }

    /// The acme-tls/1 certificate for `domain` (TLS-ALPN-01, RFC 8737), if pending.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        let pending = self.pending.load();
        if let Some(key) = pending.tls_alpn01.get(domain) {
            return Some(Arc::clone(key));
        }
        // SNI is case-insensitive; the common lowercase name costs no allocation.
        pending
            .tls_alpn01
            .get(&domain.to_ascii_lowercase())
            .map(Arc::clone)
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        let p = self.pending.load();
        p.http01.is_empty() && p.tls_alpn01.is_empty()
    }

    pub(super) fn add_http01(&self, token: &str, key_authorization: &str) {
        self.pending.rcu(|p| {
            let mut p = Pending::clone(p);
            p.http01
                .insert(token.to_owned(), key_authorization.to_owned());
            p
        });
    }

    pub(super) fn add_tls_alpn01(&self, domain: &str, cert: &Arc<CertifiedKey>) {
        self.pending.rcu(|p| {
            let mut p = Pending::clone(p);
            p.tls_alpn01
                .insert(domain.to_ascii_lowercase(), Arc::clone(cert));
            p
        });
    }

    fn remove(&self, entry: &Entry) {
        self.pending.rcu(|p| {
            let mut p = Pending::clone(p);
            match entry {
                Entry::Http01(token) => {
                    p.http01.remove(token);
                }
                Entry::TlsAlpn01(domain) => {
                    p.tls_alpn01.remove(domain);
                }
            }
            p
        });
    }
}

/// One answer this issuance published.
enum Entry {
    Http01(String),
    TlsAlpn01(String),
}

/// The answers one issuance published, withdrawn when it ends however it ends (success,
/// error, or the task aborted mid-order), so a stale answer is never served.
pub(super) struct Published {
    challenges: Arc<Challenges>,
    entries: Vec<Entry>,
}

impl Published {
    pub(super) fn new(challenges: Arc<Challenges>) -> Self {
        Self {
            challenges,
            entries: Vec::new(),
        }
    }

    pub(super) fn http01(&mut self, token: &str, key_authorization: &str) {
        self.challenges.add_http01(token, key_authorization);
        self.entries.push(Entry::Http01(token.to_owned()));
    }

    pub(super) fn tls_alpn01(&mut self, domain: &str, digest: &[u8]) -> Result<(), String> {
        let cert = acme_tls_certificate(domain, digest)?;
        self.challenges.add_tls_alpn01(domain, &cert);
        self.entries
            .push(Entry::TlsAlpn01(domain.to_ascii_lowercase()));
        Ok(())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for entry in &self.entries {
            self.challenges.remove(entry);
        }
    }
}

/// The self-signed acme-tls/1 certificate of RFC 8737: `domain` as its only name and the
/// critical acmeIdentifier extension holding the SHA-256 of the key authorization.
fn acme_tls_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("TLS-ALPN-01 certificate for {domain}: {e}");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(&e))?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| fail(&e))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| fail(&e))?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension it does not know; the key is the one just
    // signed with.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}
