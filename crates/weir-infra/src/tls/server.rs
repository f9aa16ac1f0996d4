//! A listener's TLS: the certificate for each client's SNI (the first is the default), TLS
//! 1.2 and 1.3 or 1.3 only, ALPN `h2` and `http/1.1`, and client certificates when a CA is
//! given. Certificate names are read once, when the config is built, so choosing one per
//! handshake is a few string comparisons.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where a listener's certificates come from besides its files: an ACME manager's current
/// certificate, and the answers to its pending TLS-ALPN-01 challenges.
pub trait DynamicCerts: Send + Sync + std::fmt::Debug {
    /// The certificate to serve when no configured one matches (and there are none).
    fn current(&self) -> Option<Arc<CertifiedKey>>;
    /// The `acme-tls/1` certificate for `domain`, while its challenge is pending.
    fn challenge(&self, domain: &str) -> Option<Arc<CertifiedKey>>;
}

pub use crate::acme::ACME_TLS_ALPN;

/// What a TLS listener is built from.
#[derive(Debug, Default)]
pub struct ServerTls {
    /// PEM chains and keys, in SNI preference order.
    pub certificates: Vec<(Vec<u8>, String)>,
    pub tls13_only: bool,
    /// Require client certificates signed by these.
    pub client_ca_pem: Option<Vec<u8>>,
    /// Offer `h2` by ALPN.
    pub http2: bool,
    pub dynamic: Option<Arc<dyn DynamicCerts>>,
}

/// Builds a listener's rustls config.
pub fn server_config(s: &ServerTls) -> Result<Arc<ServerConfig>, String> {
    let provider = super::provider();
    let mut certs = Vec::with_capacity(s.certificates.len());
    for (i, (chain, key)) in s.certificates.iter().enumerate() {
        certs.push(
            Named::load(chain, key.as_bytes(), &provider)
                .map_err(|e| format!("certificate {}: {e}", i + 1))?,
        );
    }
    let versions: &[&SupportedProtocolVersion] = if s.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &s.client_ca_pem {
        Some(pem) => {
            let roots = Arc::new(super::bundle_roots(pem)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        certs,
        dynamic: s.dynamic.clone(),
    }));
    config.alpn_protocols = if s.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if s.dynamic.is_some() {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    // Resumption without a handshake's signature: tickets for TLS 1.3 and 1.2 (their keys
    // rotate every few hours), on top of rustls's default in-memory session cache.
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// A certificate and the names it serves (lower case; `*.` wildcards kept as written).
#[derive(Debug)]
struct Named {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

impl Named {
    fn load(
        chain_pem: &[u8],
        key_pem: &[u8],
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificates do not parse: {e}"))?;
        let Some(leaf) = chain.first() else {
            return Err("no certificate".to_owned());
        };
        let names = names(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| "the private key does not parse".to_owned())?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())?;
        Ok(Self {
            key: Arc::new(key),
            names,
        })
    }

    fn serves(&self, sni: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, sni))
    }
}

/// The DNS names of a certificate's subjectAltName, else its subject's common name.
fn names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty()
        && let Some(cn) = cert.subject().iter_common_name().next()
        && let Ok(cn) = cn.as_str()
    {
        names.push(cn.to_ascii_lowercase());
    }
    Ok(names)
}

/// `sni` (already lower case from rustls) against a certificate name: equal, or a `*.`
/// wildcard standing for exactly one leftmost label.
fn name_matches(name: &str, sni: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => name.eq_ignore_ascii_case(sni),
    }
}

#[derive(Debug)]
struct SniResolver {
    certs: Vec<Named>,
    dynamic: Option<Arc<dyn DynamicCerts>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if let Some(dynamic) = &self.dynamic {
            let validating = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
            if validating {
                return sni.and_then(|d| dynamic.challenge(d));
            }
        }
        if let Some(sni) = sni
            && let Some(named) = self.certs.iter().find(|c| c.serves(sni))
        {
            return Some(Arc::clone(&named.key));
        }
        match self.certs.first() {
            Some(first) => Some(Arc::clone(&first.key)),
            None => self.dynamic.as_ref().and_then(|d| d.current()),
        }
    }
}

/// The subject of a client's certificate, as `CN=alice, O=Example` (RFC 4514 order as in
/// the certificate).
#[must_use]
pub fn client_subject(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(rfc4514(cert.subject()))
}

/// The name as RFC 4514 writes it (attributes in certificate order, as x509-parser shows
/// them): values escaped, so a CN of `mallory, O=admins` cannot pass for two attributes to
/// an upstream that reads the subject. Control characters are escaped too, so the subject is
/// always a valid header value.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    use std::fmt::Write as _;
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for rdn in name.iter() {
        for (k, atv) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push_str(if k == 0 { ", " } else { " + " });
            }
            match x509_parser::objects::oid2abbrev(atv.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&atv.attr_type().to_id_string()),
            }
            out.push('=');
            match atv.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    // Not a string type: the DER value in hex, as RFC 4514 §2.4 says.
                    out.push('#');
                    for b in atv.as_slice() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    use std::fmt::Write as _;
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_values_are_escaped() {
        let mut out = String::new();
        escape_value("mallory, O=admins", &mut out);
        assert_eq!(out, "mallory\\, O=admins");
        let mut out = String::new();
        escape_value("#a+b;c<d>e\"f\\g ", &mut out);
        assert_eq!(out, "\\#a\\+b\\;c\\<d\\>e\\\"f\\\\g\\ ");
        let mut out = String::new();
        escape_value(" x\r\ny", &mut out);
        assert_eq!(out, "\\ x\\0D\\0Ay");
    }

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(name_matches("api.example.com", "api.example.com"));
        assert!(name_matches("API.example.com", "api.example.com"));
        assert!(name_matches("*.example.com", "api.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("api.example.com", "web.example.com"));
    }
}
