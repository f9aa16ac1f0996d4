//! ACME through the real gateway against a real CA (pebble): a certificate obtained with
//! TLS-ALPN-01 on the TLS listener or HTTP-01 on the plain one, served by SNI, stored, and
//! served again at once by a restarted gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::pebble::Pebble;
use crate::common::tls::{ClientTls, get_h1};
use crate::common::{Gateway, TempDir, dead_addr, start};

/// weir with a TLS listener `tls` on `tls_port` using ACME for `localhost` (and, with
/// `http_port`, a plain listener `http` there first).
async fn gateway(
    dir: &TempDir,
    directory: &str,
    ca_pem: &str,
    http_port: Option<u16>,
    tls_port: u16,
) -> Gateway {
    let ca_file = dir.write("pebble-https-ca.pem", ca_pem);
    let storage = dir.path().join("acme");
    let http = http_port.map_or_else(String::new, |p| {
        format!("  - {{ name: http, address: '127.0.0.1:{p}' }}\n")
    });
    start(&format!(
        "listeners:
{http}  - name: tls
    address: '127.0.0.1:{tls_port}'
    tls:
      acme:
        directory: '{directory}'
        email: ops@example.com
        domains: [localhost]
        storage_dir: '{storage}'
        ca_file: '{ca}'
routes:
  - name: ok
    match: {{ prefix: / }}
    respond: {{ status: 200, body: ok }}
",
        storage = storage.display(),
        ca = ca_file.display()
    ))
    .await
}

async fn tls_addr(gw: &Gateway) -> std::net::SocketAddr {
    gw.running().addr_of("tls").await.unwrap()
}

/// Waits until weir serves a certificate for `localhost` that chains to `root`, then asks
/// for `/` over it.
async fn served_by_acme(gw: &Gateway, root: &str, pebble: &Pebble) {
    let addr = tls_addr(gw).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut tls) = ClientTls::new(root, "localhost").connect(addr).await {
            let (status, body) = get_h1(&mut tls, "/").await.unwrap();
            assert_eq!((status, body.as_str()), (200, "ok"));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from pebble; pebble's log:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stored(dir: &Path) -> bool {
    dir.join("acme").read_dir().is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("BEGIN CERTIFICATE"))
            })
        })
    })
}

/// A free port on 127.0.0.1, for a listener pebble must know before weir binds it.
fn free_local_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_the_tls_listener() {
    let tls_port = free_local_port();
    // HTTP-01 would go to a dead port: only TLS-ALPN-01 can succeed.
    let Some(pebble) = Pebble::start(Pebble::ports(), dead_addr().port(), tls_port).await else {
        return;
    };
    let dir = TempDir::new("acme-alpn");
    let gw = gateway(
        &dir,
        &pebble.directory,
        &pebble.https_ca_pem,
        None,
        tls_port,
    )
    .await;
    let root = pebble.root_pem().await;
    served_by_acme(&gw, &root, &pebble).await;
    assert!(stored(dir.path()), "the certificate is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_plain_listener_and_a_restart_serves_the_stored_certificate() {
    let ports = Pebble::ports();
    let http_port = free_local_port();
    // TLS-ALPN-01 would go to a dead port: only HTTP-01 can succeed.
    let Some(pebble) = Pebble::start(ports, http_port, dead_addr().port()).await else {
        return;
    };
    let dir = TempDir::new("acme-http");
    let gw = gateway(
        &dir,
        &pebble.directory,
        &pebble.https_ca_pem,
        Some(http_port),
        0,
    )
    .await;
    let root = pebble.root_pem().await;
    served_by_acme(&gw, &root, &pebble).await;
    assert!(stored(dir.path()));
    assert!(gw.stop().await);

    // A restart with the CA gone serves the stored certificate from the first handshake.
    let gone = format!("https://{}/dir", dead_addr());
    let gw = gateway(&dir, &gone, &pebble.https_ca_pem, None, 0).await;
    let addr = tls_addr(&gw).await;
    let mut tls = ClientTls::new(&root, "localhost")
        .connect(addr)
        .await
        .unwrap();
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);
}

/// The config of an ACME listener loads and starts without reaching any CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_leaves_the_listener_up_without_a_certificate() {
    let dir = TempDir::new("acme-dead");
    let ca = crate::common::idp::TestCa::new();
    let plain = free_local_port();
    let gw = gateway(
        &dir,
        &format!("https://{}/dir", dead_addr()),
        &ca.pem(),
        Some(plain),
        0,
    )
    .await;
    // Plain traffic is served; a TLS handshake finds no certificate yet.
    assert_eq!(gw.get("/").await.status(), 200);
    let addr = tls_addr(&gw).await;
    assert!(
        ClientTls::new(&ca.pem(), "localhost")
            .connect(addr)
            .await
            .is_err()
    );
}
