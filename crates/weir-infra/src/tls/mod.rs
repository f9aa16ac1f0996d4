//! TLS with rustls on aws-lc-rs: listeners' server configs (SNI, client certificates) and
//! the client configs toward `https://` upstreams. Trust stores are built here once for
//! every TLS client weir has (identity providers, upstreams).

pub mod server;
pub mod upstream;

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The one crypto provider of every TLS config weir builds.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())))
}

/// The CAs of `ca_pem` when given, else the system's trust store.
pub(crate) fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, String> {
    match ca_pem {
        Some(pem) => bundle_roots(pem),
        None => system_roots(),
    }
}

/// Every certificate of a `ca_file` bundle, each of which must be usable as a trust anchor.
pub(crate) fn bundle_roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let n = i + 1;
        let cert = cert.map_err(|e| format!("ca_file: certificate {n} does not parse: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file: certificate {n} is not a usable CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca_file holds no CERTIFICATE".to_owned());
    }
    Ok(roots)
}

/// The system's trust store, through rustls-native-certs (on Linux: `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, else the distribution's bundle, /etc/ssl/certs on Debian). Read once per
/// process: it is a few hundred certificates to parse, and it does not change under a
/// running gateway.
pub(crate) fn system_roots() -> Result<RootCertStore, String> {
    static SYSTEM: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty()
                && let Some(e) = found.errors.first()
            {
                return Err(format!(
                    "no trusted root certificates in the system's trust store ({e}); \
                     install ca-certificates, or set ca_file"
                ));
            }
            usable_roots(found.certs)
        })
        .clone()
}

/// A store of `certs`; ones that do not parse are skipped (a system bundle may hold some
/// that webpki refuses), but at least one must be usable.
fn usable_roots(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err("no trusted root certificates in the system's trust store; \
             install ca-certificates, or set ca_file"
            .to_owned());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_usable_certificates_is_refused() {
        assert!(bundle_roots(b"").unwrap_err().contains("no CERTIFICATE"));
        let junk = b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        let err = bundle_roots(junk).unwrap_err();
        assert!(
            err.starts_with("ca_file: certificate 1 is not a usable CA"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_system_store_is_a_clear_error() {
        let err = usable_roots(Vec::new()).unwrap_err();
        assert!(err.contains("no trusted root certificates"), "{err}");
        assert!(err.contains("ca_file"), "{err}");
    }
}
