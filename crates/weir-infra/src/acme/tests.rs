//! The ACME manager against a real pebble (issuance by HTTP-01 and by TLS-ALPN-01, restart
//! from storage, renewal, an unreachable directory), and its pieces alone (settings checks,
//! storage, the challenge answers).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use super::store::{Issued, Store};
use super::test_pebble::{Pebble, temp_dir};
use super::{Acme, AcmeSettings, ChallengeKind, Challenges};
use crate::test_logs::Logs;
use crate::test_net::dead_addr;

const DOMAIN: &str = "localhost";

/// A storage directory removed when the test ends.
struct Storage(std::path::PathBuf);

impl Storage {
    fn new() -> Self {
        // Not made yet: the manager makes it (owner-only).
        Self(temp_dir("storage").join("acme"))
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn settings(directory: &str, ca_pem: Option<Vec<u8>>, storage: &Storage) -> AcmeSettings {
    AcmeSettings {
        directory: directory.to_owned(),
        email: Some("ops@example.com".to_owned()),
        domains: vec![DOMAIN.to_owned()],
        storage_dir: storage.0.clone(),
        ca_pem,
        renew_before: Duration::from_secs(3600),
        check_every: Duration::from_millis(200),
        retry_initial: Duration::from_millis(50),
    }
}

/// Waits until the certificate has changed `n` times since start.
async fn wait_generation(rx: &mut watch::Receiver<u64>, n: u64, pebble: &Pebble) {
    let waited = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|g| *g >= n)).await;
    assert!(
        waited.is_ok(),
        "no certificate #{n} within 30 s; pebble's log: {}",
        pebble.log().display()
    );
}

fn leaf(key: &CertifiedKey) -> CertificateDer<'static> {
    key.end_entity_cert().unwrap().clone().into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The stored certificate: on disk, owner-only, for the domain, and chaining to the root
/// pebble made at launch (through the intermediate the chain carries).
async fn check_stored(storage: &Storage, pebble: &Pebble, serving: &CertifiedKey) -> Issued {
    for file in ["account.key", "cert.pem", "key.pem"] {
        assert_eq!(mode(&storage.0.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&storage.0), 0o700);
    let stored = Store::open(storage.0.clone())
        .unwrap()
        .load_certificate()
        .unwrap()
        .expect("a stored certificate");
    assert!(stored.covers(&[DOMAIN.to_owned()]), "{stored:?}");
    assert_eq!(leaf(&stored.key), leaf(serving), "serves what it stored");

    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(&pebble.root_pem().await) {
        roots.add(root.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let chain = &serving.cert;
    assert!(chain.len() >= 2, "leaf and intermediate");
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(DOMAIN).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the chain verifies against pebble's root");
    stored
}

/// A manager on `pebble` with `kinds`, storing in `storage`.
fn start_on(pebble: &Pebble, storage: &Storage, kinds: Vec<ChallengeKind>) -> Acme {
    Acme::start(
        settings(&pebble.directory, Some(pebble.ca_pem.clone()), storage),
        kinds,
        Arc::clone(&pebble.challenges),
    )
    .unwrap()
}

/// A manager whose directory refuses connections, storing in `storage`.
fn start_unreachable(storage: &Storage) -> Acme {
    let dead = format!("https://{}/dir", dead_addr());
    Acme::start(
        settings(&dead, None, storage),
        vec![ChallengeKind::Http01],
        Arc::new(Challenges::default()),
    )
    .unwrap()
}

/// Obtains one certificate with `kinds` and checks it; says how many answers the HTTP-01
/// and the TLS-ALPN-01 servers gave. `None` when pebble is missing (and skipped).
async fn issue_with(kinds: Vec<ChallengeKind>) -> Option<(usize, usize)> {
    let pebble = Pebble::start(None).await?;
    let storage = Storage::new();
    let acme = start_on(&pebble, &storage, kinds);
    assert!(acme.current().is_none(), "nothing stored yet");
    wait_generation(&mut acme.subscribe(), 1, &pebble).await;

    let serving = acme.current().expect("a certificate");
    check_stored(&storage, &pebble, &serving).await;
    assert!(
        pebble.challenges.is_empty(),
        "answers withdrawn after the order"
    );
    Some((
        pebble.http01_answers.load(Ordering::SeqCst),
        pebble.tls_alpn01_answers.load(Ordering::SeqCst),
    ))
}

#[tokio::test]
async fn http01_issues_stores_and_chains_to_pebbles_root() {
    if let Some((http01, tls_alpn01)) = issue_with(vec![ChallengeKind::Http01]).await {
        assert!(http01 > 0);
        assert_eq!(tls_alpn01, 0);
    }
}

#[tokio::test]
async fn tls_alpn01_issues_stores_and_chains_to_pebbles_root() {
    // Preferred over HTTP-01, which the CA offers too.
    let kinds = vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01];
    if let Some((http01, tls_alpn01)) = issue_with(kinds).await {
        assert!(tls_alpn01 > 0);
        assert_eq!(http01, 0);
    }
}

#[tokio::test]
async fn a_restart_serves_the_stored_certificate_without_the_ca() {
    let Some(pebble) = Pebble::start(None).await else {
        return;
    };
    let storage = Storage::new();
    let first = start_on(&pebble, &storage, vec![ChallengeKind::Http01]);
    let mut rx = first.subscribe();
    wait_generation(&mut rx, 1, &pebble).await;
    let issued = leaf(&first.current().unwrap());
    let account_key = std::fs::read(storage.0.join("account.key")).unwrap();
    drop(first);
    drop(pebble);

    let logs = Logs::capture();
    let second = start_unreachable(&storage);
    // At once: before the task has run at all.
    assert_eq!(leaf(&second.current().expect("served at once")), issued);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leaf(&second.current().unwrap()), issued);
    assert_eq!(*second.subscribe().borrow(), 0, "nothing changed");
    assert_eq!(
        logs.count("could not obtain"),
        0,
        "the CA was not asked: {}",
        logs.text()
    );
    assert_eq!(
        std::fs::read(storage.0.join("account.key")).unwrap(),
        account_key
    );
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_replaced() {
    // Pebble's certificates live 100 s here; renewing 1 h before expiry makes every
    // certificate due as soon as it is issued, so the second one follows one check later.
    let logs = Logs::capture();
    let Some(pebble) = Pebble::start(Some(100)).await else {
        return;
    };
    let storage = Storage::new();
    let acme = start_on(&pebble, &storage, vec![ChallengeKind::Http01]);
    let mut rx = acme.subscribe();
    wait_generation(&mut rx, 1, &pebble).await;
    let first = check_stored(&storage, &pebble, &acme.current().unwrap()).await;
    let lifetime = first.not_after - first.not_before;
    assert!(
        lifetime <= 200,
        "pebble honoured certificateValidityPeriod: {lifetime} s"
    );

    wait_generation(&mut rx, 2, &pebble).await;
    let second = check_stored(&storage, &pebble, &acme.current().unwrap()).await;
    assert_ne!(first.serial, second.serial, "a new certificate");
    assert_ne!(leaf(&first.key), leaf(&second.key));
    let text = logs.text();
    assert_eq!(logs.count("certificate obtained"), 1, "{text}");
    assert!(logs.count("certificate renewed") >= 1, "{text}");
    assert!(
        text.contains(&second.serial),
        "the serial is logged: {text}"
    );
}

#[tokio::test]
async fn an_unreachable_directory_is_retried_and_nothing_is_served() {
    let logs = Logs::capture();
    let storage = Storage::new();
    let acme = start_unreachable(&storage);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(acme.current().is_none());
    assert!(!acme.task.is_finished(), "still trying");
    let text = logs.text();
    assert!(logs.count("could not obtain a certificate") >= 2, "{text}");
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.to_lowercase().contains("refused"),
        "names the reason: {text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused() {
    let storage = Storage::new();
    let ok = || settings("https://acme.example/dir", None, &storage);
    let start = |s: AcmeSettings, kinds: Vec<ChallengeKind>| {
        Acme::start(s, kinds, Arc::new(Challenges::default())).map(drop)
    };
    let http = [ChallengeKind::Http01];

    let mut s = ok();
    s.domains.clear();
    assert!(
        start(s, http.to_vec())
            .unwrap_err()
            .contains("at least one domain")
    );
    let mut s = ok();
    s.domains = vec!["*.example.com".to_owned()];
    assert!(start(s, http.to_vec()).unwrap_err().contains("wildcard"));
    let mut s = ok();
    s.domains = vec!["127.0.0.1".to_owned()];
    assert!(
        start(s, http.to_vec())
            .unwrap_err()
            .contains("not a DNS name")
    );
    let mut s = ok();
    s.directory = "http://acme.example/dir".to_owned();
    assert!(start(s, http.to_vec()).unwrap_err().contains("https://"));
    assert!(
        start(ok(), Vec::new())
            .unwrap_err()
            .contains("challenge kind")
    );
    let mut s = ok();
    s.ca_pem = Some(b"not pem".to_vec());
    assert!(
        start(s, http.to_vec())
            .unwrap_err()
            .contains("ca_file holds no CERTIFICATE")
    );
    assert!(start(ok(), http.to_vec()).is_ok());
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let storage = Storage::new();
    let err = Acme::start(
        settings("https://acme.example/dir", None, &storage),
        vec![ChallengeKind::Http01],
        Arc::new(Challenges::default()),
    )
    .unwrap_err();
    assert!(err.contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn a_stored_certificate_with_the_wrong_key_is_not_served() {
    let storage = Storage::new();
    let store = Store::open(storage.0.clone()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![DOMAIN.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let good = Issued::from_pem(cert.pem().into_bytes(), key.serialize_pem().into_bytes()).unwrap();
    store.save_certificate(&good).unwrap();
    assert!(store.load_certificate().unwrap().is_some());

    std::fs::write(storage.0.join("key.pem"), other.serialize_pem()).unwrap();
    let err = store.load_certificate().err().unwrap();
    assert!(err.contains("do not go together"), "{err}");

    let logs = Logs::capture();
    let acme = start_unreachable(&storage);
    assert!(acme.current().is_none());
    assert!(
        logs.text().contains("stored certificate not usable"),
        "{}",
        logs.text()
    );
}

#[test]
fn challenge_answers_are_published_and_withdrawn() {
    let challenges = Arc::new(Challenges::default());
    let mut published = super::challenges::Published::new(Arc::clone(&challenges));
    published.http01("tok", "tok.thumb");
    published.tls_alpn01("Example.COM", &[7; 32]).unwrap();
    assert_eq!(challenges.http01("tok").as_deref(), Some("tok.thumb"));
    assert_eq!(challenges.http01("other"), None);
    let cert = challenges.tls_alpn01("example.com").expect("pending");
    assert!(
        challenges.tls_alpn01("EXAMPLE.com").is_some(),
        "SNI is case-insensitive"
    );
    assert!(challenges.tls_alpn01("other.example").is_none());

    // RFC 8737: the only name is the domain, and the critical acmeIdentifier extension holds
    // the digest as an OCTET STRING.
    let der = leaf(&cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ext = parsed
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .expect("acmeIdentifier");
    assert!(ext.critical);
    let mut want = vec![0x04, 32];
    want.extend_from_slice(&[7; 32]);
    assert_eq!(ext.value, want.as_slice());
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);

    drop(published);
    assert!(challenges.is_empty());
    assert_eq!(challenges.http01("tok"), None);
}
