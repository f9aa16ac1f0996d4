//! What the ACME manager keeps on disk, so that a restart serves at once and reuses its
//! account: `account.key` (the ACME account's key), `cert.pem` (the chain) and `key.pem`
//! (the certificate's key), each written whole to a temporary file and renamed over the old
//! one, owner-only (0600) in an owner-only (0700) directory.
//!
//! A certificate read back is checked before it is served: the chain parses, the key matches
//! the leaf (a crash between the two renames leaves a new key beside an old chain), and its
//! expiry and names are known so the manager can tell when to renew.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ACCOUNT_KEY: &str = "account.key";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// A certificate with its key, ready to serve, and what the manager decides renewal by.
pub(super) struct Issued {
    pub(super) key: Arc<CertifiedKey>,
    /// Seconds since the Unix epoch.
    pub(super) not_before: i64,
    /// Seconds since the Unix epoch.
    pub(super) not_after: i64,
    /// The leaf's DNS names, lowercased.
    pub(super) names: Vec<String>,
    /// The leaf's serial number, hex, for logs and tests.
    pub(super) serial: String,
    /// The chain and key as stored, so a new certificate is written exactly as it was parsed.
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after_text())
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// A PEM chain (leaf first) and the PEM PKCS#8 key the leaf was issued for.
    pub(super) fn from_pem(chain_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate chain does not parse: {e}"))?;
        let leaf = chain
            .first()
            .ok_or("certificate chain holds no CERTIFICATE")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("certificate does not parse: {e}"))?;
        let validity = parsed.validity();
        let names = match parsed.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(format!("certificate's subjectAltName does not parse: {e}")),
        };
        let not_before = validity.not_before.timestamp();
        let not_after = validity.not_after.timestamp();
        let serial = parsed.raw_serial_as_string();
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("certificate key does not parse: {e}"))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("certificate and key do not go together: {e}"))?;
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
            names,
            serial,
            chain_pem,
            key_pem,
        })
    }

    /// Whether every one of `domains` (lowercase) is among the certificate's names. Exact
    /// names only: HTTP-01 and TLS-ALPN-01 cannot prove a wildcard, so none is ever asked for.
    pub(super) fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.iter().any(|n| n == d))
    }

    /// Seconds left before `not_after` (negative once expired).
    pub(super) fn remaining(&self) -> i64 {
        self.not_after.saturating_sub(unix_now())
    }

    pub(super) fn not_after_text(&self) -> String {
        time_text(self.not_after)
    }
}

/// A Unix time as RFC 2822 text for logs, or the bare number if it is out of range.
fn time_text(secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The storage directory of one manager.
#[derive(Debug, Clone)]
pub(super) struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory (owner-only) if it is missing.
    pub(super) fn open(dir: PathBuf) -> Result<Self, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("ACME storage_dir {}: {e}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The stored certificate: `Ok(None)` when there is none yet, `Err` when what is there
    /// cannot be served (the caller logs it and obtains a new one).
    pub(super) fn load_certificate(&self) -> Result<Option<Issued>, String> {
        let (Some(chain), Some(key)) = (self.read(CERT)?, self.read(KEY)?) else {
            return Ok(None);
        };
        Issued::from_pem(chain, key)
            .map(Some)
            .map_err(|e| format!("stored certificate in {}: {e}", self.dir.display()))
    }

    /// Stores a new certificate: the key first, so that the chain on disk never names a key
    /// that is not there yet (a crash in between is caught by the key check on load).
    pub(super) fn save_certificate(&self, issued: &Issued) -> Result<(), String> {
        self.write(KEY, &issued.key_pem)?;
        self.write(CERT, &issued.chain_pem)
    }

    /// The account key (PKCS#8 DER), made and stored the first time.
    pub(super) fn account_key(&self) -> Result<PrivatePkcs8KeyDer<'static>, String> {
        if let Some(pem) = self.read(ACCOUNT_KEY)? {
            return PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
                format!(
                    "ACME account key {} does not parse: {e}",
                    self.dir.join(ACCOUNT_KEY).display()
                )
            });
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot make an ACME account key: {e}"))?;
        self.write(ACCOUNT_KEY, key.serialize_pem().as_bytes())?;
        Ok(PrivatePkcs8KeyDer::from(key.serialize_der()))
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Whole or not at all: a reader (or a restart) sees the old file or the new one.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        write_private(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                format!("cannot write {}: {e}", path.display())
            })
    }
}

/// Creates `path` 0600 (a leftover temporary file is replaced, whatever its mode) and syncs
/// it, so the rename that follows never exposes a short file after a crash.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
