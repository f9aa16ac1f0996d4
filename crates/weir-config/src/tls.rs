//! Checking TLS settings: a listener's certificates, versions, client CAs and ACME, and an
//! upstream's trust and client certificate. Certificates and keys are parsed here, and each
//! key is matched to its certificate, so a mistake is reported at its key with line and
//! column instead of when a listener starts.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use weir_domain::auth::Secret;
use weir_domain::discovery::ClientIdentity;
use weir_domain::upstream::UpstreamTls;

use crate::checks::duration;
use crate::idp;
use crate::model::{AcmeConfig, ListenerTlsConfig, UpstreamTlsConfig};
use crate::node::KeyPath;
use crate::report::Report;
use crate::{AcmeSettings, ListenerTls, ServerCertificate, TlsVersion};

const MAX_PEM_FILE: u64 = 256 * 1024;

/// `listeners[].tls`.
pub(crate) fn listener(
    c: &ListenerTlsConfig,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<ListenerTls> {
    let before = r.issues.len();
    let min_version = match c.min_version.trim() {
        "1.2" => Some(TlsVersion::Tls12),
        "1.3" => Some(TlsVersion::Tls13),
        other => {
            r.at(
                &path.key("min_version"),
                format!("\"{other}\" is not one of \"1.2\", \"1.3\""),
            );
            None
        }
    };
    if c.certificates.is_empty() && c.acme.is_none() {
        r.at(
            path,
            "a TLS listener needs `certificates` (cert_file and key_file) or `acme`",
        );
    }
    if !c.certificates.is_empty() && c.acme.is_some() {
        r.at_key(&path.key("acme"), "give `certificates` or `acme`, not both");
    }
    let list = path.key("certificates");
    let certificates: Vec<Option<ServerCertificate>> = c
        .certificates
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            let at = list.index(i);
            key_pair(
                &cert.cert_file,
                &cert.key_file,
                &at,
                "cert_file",
                "key_file",
                dir,
                r,
            )
            .map(|(cert_pem, key_pem)| ServerCertificate { cert_pem, key_pem })
        })
        .collect();
    let client_ca_pem = c
        .client_ca_file
        .as_ref()
        .map(|f| idp::client_ca_bundle(f, &path.key("client_ca_file"), dir, r));
    let acme = c.acme.as_ref().map(|a| acme(a, &path.key("acme"), dir, r));
    if r.issues.len() != before {
        return None;
    }
    Some(ListenerTls {
        certificates: certificates.into_iter().collect::<Option<_>>()?,
        min_version: min_version?,
        // Past the check above, every part that was given was built.
        client_ca_pem: client_ca_pem.flatten(),
        acme: acme.flatten(),
    })
}

fn acme(c: &AcmeConfig, path: &KeyPath, dir: &Path, r: &mut Report<'_>) -> Option<AcmeSettings> {
    let before = r.issues.len();
    let directory = c.directory.trim();
    if !directory.starts_with("https://") {
        r.at(
            &path.key("directory"),
            format!(
                "\"{directory}\" is not an https:// URL (an ACME directory is served over HTTPS)"
            ),
        );
    }
    if c.domains.is_empty() {
        r.at(&path.key("domains"), "list at least one domain name");
    }
    for (i, d) in c.domains.iter().enumerate() {
        let d = d.trim();
        let ok = !d.is_empty()
            && d.parse::<std::net::IpAddr>().is_err()
            && ServerName::try_from(d).is_ok_and(|n| matches!(n, ServerName::DnsName(_)));
        if !ok {
            r.at(
                &path.key("domains").index(i),
                format!("\"{d}\" is not a DNS name an ACME certificate can cover"),
            );
        }
    }
    if let Some(e) = &c.email
        && !e.contains('@')
    {
        r.at(
            &path.key("email"),
            format!("\"{e}\" is not an email address"),
        );
    }
    if c.storage_dir.trim().is_empty() {
        r.at(&path.key("storage_dir"), "a directory path cannot be empty");
    }
    let ca_pem = c
        .ca_file
        .as_ref()
        .map(|f| idp::ca_bundle(f, &path.key("ca_file"), dir, r));
    let renew_before = duration(r, &path.key("renew_before"), &c.renew_before, true);
    if r.issues.len() != before {
        return None;
    }
    Some(AcmeSettings {
        directory: directory.to_owned(),
        email: c.email.as_ref().map(|e| e.trim().to_owned()),
        domains: c
            .domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .collect(),
        storage_dir: dir.join(c.storage_dir.trim()),
        ca_pem: ca_pem.flatten(),
        renew_before: renew_before?,
    })
}

/// `upstreams.<name>.tls`.
pub(crate) fn upstream(
    c: &UpstreamTlsConfig,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<UpstreamTls> {
    let before = r.issues.len();
    let ca_pem = c
        .ca_file
        .as_ref()
        .map(|f| idp::ca_bundle(f, &path.key("ca_file"), dir, r));
    let identity = match (&c.client_cert_file, &c.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => key_pair(
            cert,
            key,
            path,
            "client_cert_file",
            "client_key_file",
            dir,
            r,
        )
        .map(|(cert_pem, key_pem)| ClientIdentity { cert_pem, key_pem }),
        (Some(_), None) => {
            r.at_key(
                &path.key("client_cert_file"),
                "`client_cert_file` needs `client_key_file` too",
            );
            None
        }
        (None, Some(_)) => {
            r.at_key(
                &path.key("client_key_file"),
                "`client_key_file` needs `client_cert_file` too",
            );
            None
        }
    };
    let server_name = c.server_name.as_ref().map(|n| n.trim().to_owned());
    if let Some(n) = &server_name
        && ServerName::try_from(n.as_str()).is_err()
    {
        r.at(
            &path.key("server_name"),
            format!("\"{n}\" is not a DNS name or an IP address"),
        );
    }
    if r.issues.len() != before {
        return None;
    }
    Some(UpstreamTls {
        ca_pem: ca_pem.flatten(),
        identity,
        server_name,
    })
}

/// Reads a certificate chain and its key, and checks that the key is supported and is the
/// certificate's: `(chain PEM, key PEM)`.
fn key_pair(
    cert_file: &str,
    key_file: &str,
    at: &KeyPath,
    cert_key: &str,
    key_key: &str,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<(Vec<u8>, Secret)> {
    let hint = "a certificate chain or a key is a few KiB";
    let cert_at = at.key(cert_key);
    let key_at = at.key(key_key);
    let chain = idp::read(cert_file, &cert_at, dir, MAX_PEM_FILE, hint, r)
        .and_then(|(bytes, _)| r.check(&cert_at, chain(&bytes)).map(|c| (bytes, c)));
    let key = idp::read(key_file, &key_at, dir, MAX_PEM_FILE, hint, r)
        .and_then(|(bytes, _)| r.check(&key_at, private_key(&bytes)).map(|k| (bytes, k)));
    let ((cert_pem, certs), (key_pem, key)) = (chain?, key?);
    r.check(&key_at, certified_key(certs, key))?;
    let key_pem = String::from_utf8(key_pem).ok()?;
    Some((cert_pem, Secret::new(key_pem)))
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificates do not parse: {e}"))?;
    if certs.is_empty() {
        return Err(
            "no -----BEGIN CERTIFICATE----- block; give the PEM certificate, then its \
             intermediates"
                .to_owned(),
        );
    }
    Ok(certs)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    if std::str::from_utf8(pem).is_ok_and(|t| t.contains("ENCRYPTED PRIVATE KEY")) {
        return Err(
            "the private key is encrypted; give it decrypted (openssl pkcs8 -nocrypt)".to_owned(),
        );
    }
    // The parser's own message could quote the file; say what is wrong without it.
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        "no usable private key: expected one PEM block of PRIVATE KEY (PKCS#8), RSA PRIVATE KEY \
         or EC PRIVATE KEY"
            .to_owned()
    })
}

/// The provider weir's TLS uses (aws-lc-rs), to check that a key is one it can sign with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "this key is not the certificate's (their public keys differ)".to_owned()
        }
        other => format!("the key cannot be used: {other}"),
    })
}
