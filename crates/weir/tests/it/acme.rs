//! ACME end to end through the real gateway, against a real CA (pebble): weir's TLS listener
//! gets its certificate by TLS-ALPN-01 (answered in its own handshake) or by HTTP-01
//! (answered on its plain listener), serves it by SNI with a chain to pebble's root, stores
//! it, serves it again at once after a restart with the CA gone, keeps its manager across a
//! reload that leaves `acme` alone, and renews a due certificate when a reload changes it.
//! Two tests are ignored, each for a bug it shows (see their `ignore` reasons).
//!
//! Wiring: weir starts first, on port 0, with `acme.directory` naming the port pebble will
//! listen on (its manager retries an unreachable directory after 1 s, then 2 s, ...); pebble
//! then starts validating against the ports weir bound, on `localhost`. The challenge type
//! that must not be used is pointed at a dead port, so success proves which one was.
//!
//! Not covered here: renewal on weir's own schedule. The manager sleeps `check_every` after
//! each certificate, fixed at 12 h (`weir_infra::acme::AcmeSettings::DEFAULT_CHECK_EVERY`)
//! and not settable from the config, so a renewal cannot be waited for; the manager's own
//! tests (weir-infra `acme::tests`) cover it with a short `check_every`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::common::pebble::{Pebble, PebbleSetup};
use crate::common::tls::{ClientTls, get_h1, served_leaf};
use crate::common::{TempDir, config, dead_addr, start};

/// The domain pebble validates (it resolves it to this machine).
const DOMAIN: &str = "localhost";

/// Longest wait for a certificate from pebble (a few seconds when all is well).
const ISSUANCE: Duration = Duration::from_secs(40);

/// weir's config: a TLS listener `tls` with ACME for [`DOMAIN`] from `directory` (trusting
/// `ca_file` for its HTTPS, storing in `storage`), after a plain listener `plain` when asked,
/// all on 127.0.0.1:0; every request answered `200 <body>` by weir itself.
fn gateway_yaml(
    directory: &str,
    ca_file: &Path,
    storage: &Path,
    plain: bool,
    renew_before: &str,
    body: &str,
) -> String {
    let plain = if plain {
        "  - { name: plain, address: '127.0.0.1:0' }\n"
    } else {
        ""
    };
    format!(
        "listeners:
{plain}  - name: tls
    address: '127.0.0.1:0'
    tls:
      acme:
        directory: '{directory}'
        email: ops@example.com
        domains: [{DOMAIN}]
        storage_dir: '{storage}'
        ca_file: '{ca}'
        renew_before: {renew_before}
routes:
  - name: all
    match: {{ prefix: / }}
    respond: {{ status: 200, body: '{body}' }}
",
        storage = storage.display(),
        ca = ca_file.display(),
    )
}

/// A test's files: pebble's HTTPS CA for `acme.ca_file`, and the storage directory (not
/// made yet: weir makes it).
struct Files {
    dir: TempDir,
    ca_file: PathBuf,
    storage: PathBuf,
}

impl Files {
    fn new(tag: &str, pebble: &PebbleSetup) -> Self {
        let dir = TempDir::new(tag);
        let ca_file = dir.write("pebble-https-ca.pem", &pebble.https_ca_pem);
        let storage = dir.path().join("acme");
        Self {
            dir,
            ca_file,
            storage,
        }
    }

    fn yaml(&self, directory: &str, plain: bool, renew_before: &str, body: &str) -> String {
        gateway_yaml(
            directory,
            &self.ca_file,
            &self.storage,
            plain,
            renew_before,
            body,
        )
    }

    /// The leaf of the stored chain, and the number of certificates in it.
    fn stored_leaf(&self) -> (CertificateDer<'static>, usize) {
        let pem = std::fs::read(self.storage.join("cert.pem")).expect("cert.pem is stored");
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .expect("cert.pem parses");
        (chain[0].clone(), chain.len())
    }

    /// The account key, certificate and key are there, owner-only in an owner-only directory.
    fn check_storage(&self) {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&self.storage), 0o700, "storage_dir is owner-only");
        for file in ["account.key", "cert.pem", "key.pem"] {
            let path = self.storage.join(file);
            assert!(path.is_file(), "{} is stored", path.display());
            assert_eq!(mode(&path), 0o600, "{file} is owner-only");
        }
        let key = std::fs::read_to_string(self.storage.join("key.pem")).unwrap();
        assert!(key.contains("PRIVATE KEY"), "key.pem holds a key");
    }
}

async fn tls_addr(gw: &weir::Running) -> SocketAddr {
    gw.addr_of("tls").await.expect("listener tls")
}

/// One HTTPS exchange with weir at `addr`, SNI [`DOMAIN`], trusting only `root`: the leaf
/// served and `GET /`'s status and body; `Err` when the handshake fails (no certificate
/// yet, or one that does not chain to `root` for the domain).
async fn https_get(
    addr: SocketAddr,
    root: &str,
) -> std::io::Result<(CertificateDer<'static>, u16, String)> {
    let mut tls = ClientTls::new(root, DOMAIN).connect(addr).await?;
    let leaf = served_leaf(&tls);
    let (status, body) = get_h1(&mut tls, "/").await?;
    Ok((leaf, status, body))
}

/// Waits until weir at `addr` serves, for [`DOMAIN`], a certificate that chains to pebble's
/// `root` (the client trusts nothing else and checks the name) and other than `not`; then
/// an HTTPS request through it must answer `200 body`. Returns the leaf.
async fn wait_for_certificate(
    addr: SocketAddr,
    root: &str,
    not: Option<&CertificateDer<'static>>,
    body: &str,
    pebble: &Pebble,
) -> CertificateDer<'static> {
    let deadline = Instant::now() + ISSUANCE;
    loop {
        let last = match https_get(addr, root).await {
            Ok((leaf, status, got)) if Some(&leaf) != not => {
                assert_eq!((status, got.as_str()), (200, body), "HTTPS through weir");
                return leaf;
            }
            Ok(_) => "the previous certificate is still served".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "no certificate from pebble within {ISSUANCE:?} (last: {last}); pebble's log:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Only a TLS listener: the CA validates with TLS-ALPN-01 in weir's own handshake (HTTP-01
/// is pointed at a dead port). The certificate is then served for the domain, chains to
/// pebble's root, carries the intermediate, answers HTTPS, and is what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_obtains_the_certificate_the_tls_listener_serves() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-alpn", &setup);
    let gw = start(&files.yaml(&setup.directory, false, "30d", "alpn")).await;
    let addr = tls_addr(gw.running()).await;
    let pebble = setup.start(dead_addr().port(), addr.port(), None).await;
    let root = pebble.root_pem().await;

    let leaf = wait_for_certificate(addr, &root, None, "alpn", &pebble).await;

    files.check_storage();
    let (stored, chain_len) = files.stored_leaf();
    assert_eq!(stored, leaf, "the served certificate is the stored one");
    assert!(chain_len >= 2, "the chain carries pebble's intermediate");
    // A client that trusts another CA refuses it: only pebble's root vouches for it.
    let other_ca = crate::common::idp::TestCa::new();
    assert!(
        ClientTls::new(&other_ca.pem(), DOMAIN)
            .connect(addr)
            .await
            .is_err(),
        "only pebble's root vouches for it"
    );
    assert!(gw.stop().await);
}

/// A plain listener and a TLS one: the CA validates with HTTP-01 on the plain listener
/// (TLS-ALPN-01 is pointed at a dead port, so nothing else can succeed), and the TLS
/// listener serves the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_plain_listener_obtains_the_tls_listeners_certificate() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-http", &setup);
    let gw = start(&files.yaml(&setup.directory, true, "30d", "http")).await;
    let plain = gw.running().addr_of("plain").await.unwrap();
    let addr = tls_addr(gw.running()).await;
    let pebble = setup.start(plain.port(), dead_addr().port(), None).await;
    let root = pebble.root_pem().await;

    let leaf = wait_for_certificate(addr, &root, None, "http", &pebble).await;

    files.check_storage();
    assert_eq!(files.stored_leaf().0, leaf);
    // Pebble fetched the key authorization from weir's plain listener.
    let log = pebble.log();
    let fetched = format!("localhost:{}/.well-known/acme-challenge/", plain.port());
    assert!(
        log.contains(&fetched),
        "pebble's log names no HTTP-01 fetch from {fetched}:\n{log}"
    );
    // Once validated, nothing is pending: the path is routed like any other.
    let resp = gw
        .client
        .get(format!(
            "http://{plain}/.well-known/acme-challenge/whatever"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "http");
    assert!(gw.stop().await);
}

/// A restart serves the stored certificate from its first handshake, with the CA gone
/// (directory at a dead address) and without touching what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_stored_certificate_at_once_without_the_ca() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-restart", &setup);
    let gw = start(&files.yaml(&setup.directory, false, "30d", "before")).await;
    let addr = tls_addr(gw.running()).await;
    let pebble = setup.start(dead_addr().port(), addr.port(), None).await;
    let root = pebble.root_pem().await;
    let leaf = wait_for_certificate(addr, &root, None, "before", &pebble).await;
    assert!(gw.stop().await);
    drop(pebble);
    let stored_before = std::fs::read(files.storage.join("cert.pem")).unwrap();

    let gone = format!("https://{}/dir", dead_addr());
    let gw = start(&files.yaml(&gone, false, "30d", "after")).await;
    let addr = tls_addr(gw.running()).await;
    // The very first handshake: no waiting.
    let (served, status, body) = https_get(addr, &root)
        .await
        .expect("the restarted gateway serves the stored certificate at once");
    assert_eq!(served, leaf, "the same certificate as before the restart");
    assert_eq!((status, body.as_str()), (200, "after"));
    assert_eq!(
        std::fs::read(files.storage.join("cert.pem")).unwrap(),
        stored_before,
        "the stored certificate is left as it was"
    );
    assert!(gw.stop().await);
}

/// weir started from a file, so that it can be reloaded.
async fn start_file(dir: &TempDir, yaml: &str) -> (weir::Running, PathBuf) {
    let path = dir.write("weir.yaml", &config(yaml));
    let running = crate::common::start_file(path.clone())
        .await
        .expect("weir starts");
    (running, path)
}

/// Certificates that live 60 s, renewed 1 h before expiry: always due. A reload that leaves
/// `acme` alone keeps the manager, which waits for its next check (a new one would renew at
/// once); a reload that changes `acme` starts a new manager, which serves the stored
/// certificate and renews it straight away, served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_manager_and_a_changed_acme_section_renews_a_due_certificate() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-reload", &setup);
    let (running, path) = start_file(
        &files.dir,
        &files.yaml(&setup.directory, false, "1h", "one"),
    )
    .await;
    let addr = tls_addr(&running).await;
    let pebble = setup.start(dead_addr().port(), addr.port(), Some(60)).await;
    let root = pebble.root_pem().await;
    let first = wait_for_certificate(addr, &root, None, "one", &pebble).await;
    let stored = std::fs::read(files.storage.join("cert.pem")).unwrap();

    // Routes change, `acme` does not: the running manager is kept, and serves on.
    let rewrite = |yaml: String| {
        let tmp = path.with_extension("swp");
        std::fs::write(&tmp, config(&yaml)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    rewrite(files.yaml(&pebble.directory, false, "1h", "two"));
    running.control.reload().await.expect("reload");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (leaf, status, body) = https_get(addr, &root).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "two"),
            "the new routes answer"
        );
        assert_eq!(
            leaf, first,
            "the kept manager does not renew before its next check"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read(files.storage.join("cert.pem")).unwrap(),
        stored
    );

    // `renew_before` changes: a new manager, which finds the stored certificate due.
    rewrite(files.yaml(&pebble.directory, false, "2h", "three"));
    running.control.reload().await.expect("reload");
    let renewed = wait_for_certificate(addr, &root, Some(&first), "three", &pebble).await;
    assert_ne!(renewed, first);
    assert_eq!(files.stored_leaf().0, renewed, "the renewal is stored");
    assert!(running.shutdown().await);
}

/// Two TLS listeners with the same `acme` section (the same port on IPv4 and on IPv6, say):
/// one certificate, ordered once and served by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_with_the_same_acme_section_share_one_certificate() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-twice", &setup);
    let one = files.yaml(&setup.directory, false, "30d", "twice");
    // The TLS listener again, under another name.
    let (head, rest) = one.split_once("routes:").unwrap();
    let again = head
        .strip_prefix("listeners:\n")
        .unwrap()
        .replace("name: tls", "name: tls2");
    let gw = start(&format!("{head}{again}routes:{rest}")).await;
    let addr = tls_addr(gw.running()).await;
    let addr2 = gw.running().addr_of("tls2").await.unwrap();
    let pebble = setup.start(dead_addr().port(), addr.port(), None).await;
    let root = pebble.root_pem().await;

    let leaf = wait_for_certificate(addr, &root, None, "twice", &pebble).await;
    let leaf2 = wait_for_certificate(addr2, &root, None, "twice", &pebble).await;
    // Time for a second order, if there is one, to be issued.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let issued = pebble.log().matches("Issued certificate serial").count();
    assert_eq!(
        issued,
        1,
        "one order for one acme section; pebble's log:\n{}",
        pebble.log()
    );
    assert_eq!(leaf, leaf2, "both listeners serve the one certificate");
    assert_eq!(files.stored_leaf().0, leaf);
    assert!(gw.stop().await);
}

/// A plain listener the CA cannot reach (an internal one, not on port 80): HTTP-01 fails,
/// and TLS-ALPN-01 on the TLS listener, the second choice weir gives its manager, is tried
/// next and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_is_tried_when_http_01_fails() {
    let Some(setup) = Pebble::setup() else { return };
    let files = Files::new("acme-fallback", &setup);
    let gw = start(&files.yaml(&setup.directory, true, "30d", "fallback")).await;
    let addr = tls_addr(gw.running()).await;
    // HTTP-01 goes to a dead port; TLS-ALPN-01 to weir's TLS listener.
    let pebble = setup.start(dead_addr().port(), addr.port(), None).await;
    let root = pebble.root_pem().await;
    wait_for_certificate(addr, &root, None, "fallback", &pebble).await;
    assert!(gw.stop().await);
}
