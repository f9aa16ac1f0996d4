//! TLS through the real gateway, with certificates made by the tests: listeners (SNI among
//! RSA, ECDSA and Ed25519 certificates, versions, ALPN, client certificates, plain HTTP on
//! the TLS port) and upstreams (a private CA, a wrong one, mTLS, HTTP/2 by ALPN).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::common::idp::TestCa;
use crate::common::tls::{ClientTls, KeyType, Leaf, TlsOrigin, get_h1, get_h2, served_leaf};
use crate::common::{Backend, Gateway, TempDir, assert_problem, start};

/// A TLS listener `tls` (at `gw.addr`) with these certificates, in order, and `extra` keys
/// under `tls:`; route `/` answers 200 "ok", `/echo` goes to `backend`.
async fn gateway(dir: &TempDir, certs: &[&Leaf], extra: &str, backend: &Backend) -> Gateway {
    let mut list = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let cert = dir.write(&format!("c{i}.pem"), &c.cert_pem);
        let key = dir.write(&format!("k{i}.pem"), &c.key_pem);
        list.push(format!(
            "{{ cert_file: '{}', key_file: '{}' }}",
            cert.display(),
            key.display()
        ));
    }
    let list = list.join(", ");
    start(&format!(
        r#"
        listeners:
          - name: tls
            address: 127.0.0.1:0
            tls:
              certificates: [{list}]
              {extra}
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: echo
            match: {{ prefix: /echo }}
            upstream: be
            transform:
              request: {{ headers: {{ set: {{ X-Client-Cert: "${{tls.client_subject}}" }} }} }}
          - name: ok
            match: {{ prefix: / }}
            respond: {{ status: 200, body: ok }}
        "#,
        url = backend.url()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_first_is_the_default() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"], KeyType::EcdsaP256, false);
    let b = ca.leaf(&["*.b.test"], KeyType::Ed25519, false);
    let c = ca.leaf(&["c.test"], KeyType::Rsa2048, false);
    let dir = TempDir::new("tls-sni");
    let backend = Backend::start("b").await;
    let gw = gateway(&dir, &[&a, &b, &c], "", &backend).await;
    let pem = ca.pem();
    for (sni, want) in [("a.test", &a), ("x.b.test", &b), ("c.test", &c)] {
        let mut tls = ClientTls::new(&pem, sni).connect(gw.addr).await.unwrap();
        assert_eq!(served_leaf(&tls), want.der(), "SNI {sni}");
        let (status, body) = get_h1(&mut tls, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "SNI {sni}");
    }
    // An unknown name gets the first certificate (and so fails to verify for that name).
    let err = ClientTls::new(&pem, "unknown.test")
        .connect(gw.addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only valid for DnsName(\"a.test\")"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_refused_when_the_minimum_is_1_3() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let backend = Backend::start("b").await;
    let pem = ca.pem();

    let dir = TempDir::new("tls-13");
    let gw = gateway(&dir, &[&leaf], "min_version: \"1.3\"", &backend).await;
    let old = ClientTls {
        tls12_only: true,
        ..ClientTls::new(&pem, "api.test")
    };
    assert!(old.connect(gw.addr).await.is_err(), "TLS 1.2 refused");
    let tls = ClientTls::new(&pem, "api.test")
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let dir = TempDir::new("tls-12");
    let gw = gateway(&dir, &[&leaf], "", &backend).await;
    let mut tls = old.connect(gw.addr).await.expect("TLS 1.2 by default");
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_and_http_1_1() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let backend = Backend::start("b").await;
    let dir = TempDir::new("tls-alpn");
    let gw = gateway(&dir, &[&leaf], "", &backend).await;
    let pem = ca.pem();
    let h2 = ClientTls {
        alpn: &["h2", "http/1.1"],
        ..ClientTls::new(&pem, "api.test")
    };
    let tls = h2.connect(gw.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(get_h2(tls, "/").await, 200);
    let tls = ClientTls::new(&pem, "api.test")
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_their_subject_reaches_the_route() {
    let ca = TestCa::new();
    let clients = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let alice = clients.leaf(&["alice"], KeyType::EcdsaP256, true);
    let stranger = TestCa::new().leaf(&["mallory"], KeyType::EcdsaP256, true);
    let backend = Backend::start("b").await;
    let dir = TempDir::new("tls-mtls");
    let client_ca = dir.write("clients.pem", &clients.pem());
    let gw = gateway(
        &dir,
        &[&leaf],
        &format!("client_ca_file: '{}'", client_ca.display()),
        &backend,
    )
    .await;
    let pem = ca.pem();

    // Without a certificate (TLS 1.3 reports the refusal on the first read).
    let refused = async {
        let mut tls = ClientTls::new(&pem, "api.test").connect(gw.addr).await?;
        get_h1(&mut tls, "/echo").await
    };
    assert!(refused.await.is_err(), "no client certificate: no answer");
    let refused = async {
        let mut tls = ClientTls {
            identity: Some(&stranger),
            ..ClientTls::new(&pem, "api.test")
        }
        .connect(gw.addr)
        .await?;
        get_h1(&mut tls, "/echo").await
    };
    assert!(
        refused.await.is_err(),
        "a certificate of another CA: no answer"
    );

    let mut tls = ClientTls {
        identity: Some(&alice),
        ..ClientTls::new(&pem, "api.test")
    }
    .connect(gw.addr)
    .await
    .unwrap();
    let (status, body) = get_h1(&mut tls, "/echo").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    let subject = echo["headers"]["x-client-cert"][0].as_str().unwrap();
    assert!(subject.contains("CN=alice"), "{subject}");
    assert!(subject.contains("O=weir tests"), "{subject}");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_told_so() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let backend = Backend::start("b").await;
    let dir = TempDir::new("tls-plain");
    let gw = gateway(&dir, &[&leaf], "", &backend).await;
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        gw.client.get(format!("http://{}/", gw.addr)).send(),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    let body = assert_problem(resp, 400, "bad_request").await;
    assert!(
        body["detail"].as_str().unwrap().contains("speaks TLS"),
        "{body}"
    );
}

/// weir in front of an HTTPS origin, with `tls` under the upstream.
async fn upstream_gateway(origin: &TlsOrigin, protocol: &str, tls: &str) -> Gateway {
    start(&format!(
        r#"
        upstreams:
          secure:
            protocol: {protocol}
            targets: [{{ url: "{url}" }}]
            tls: {tls}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: secure
        "#,
        url = origin.url()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_ca_file() {
    let ca = TestCa::new();
    let origin =
        TlsOrigin::start(&ca.leaf(&["origin.test"], KeyType::EcdsaP256, false), None).await;
    let dir = TempDir::new("up-tls");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let gw = upstream_gateway(
        &origin,
        "http1",
        &format!(
            "{{ ca_file: '{}', server_name: origin.test }}",
            ca_file.display()
        ),
    )
    .await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");

    // Another CA: the handshake fails, and the client gets a 502.
    let wrong = dir.write("wrong.pem", &TestCa::new().pem());
    let gw = upstream_gateway(
        &origin,
        "http1",
        &format!(
            "{{ ca_file: '{}', server_name: origin.test }}",
            wrong.display()
        ),
    )
    .await;
    assert_problem(gw.get("/x").await, 502, "bad_gateway").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_and_http2_over_alpn() {
    let ca = TestCa::new();
    let clients = TestCa::new();
    let origin = TlsOrigin::start(
        &ca.leaf(&["origin.test"], KeyType::EcdsaP256, false),
        Some(&clients.pem()),
    )
    .await;
    let weir_cert = clients.leaf(&["weir"], KeyType::Ed25519, true);
    let dir = TempDir::new("up-mtls");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let cert = dir.write("weir.pem", &weir_cert.cert_pem);
    let key = dir.write("weir.key", &weir_cert.key_pem);
    let with_identity = format!(
        "{{ ca_file: '{}', server_name: origin.test, client_cert_file: '{}', client_key_file: '{}' }}",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    for (protocol, version) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let gw = upstream_gateway(&origin, protocol, &with_identity).await;
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), 200, "{protocol}");
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["version"], version, "{protocol}");
        assert_eq!(seen["client_cert"], true);
    }
    // Without weir's certificate the origin refuses it.
    let gw = upstream_gateway(
        &origin,
        "http1",
        &format!(
            "{{ ca_file: '{}', server_name: origin.test }}",
            ca_file.display()
        ),
    )
    .await;
    assert_problem(gw.get("/x").await, 502, "bad_gateway").await;
}
