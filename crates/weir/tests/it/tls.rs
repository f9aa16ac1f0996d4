//! TLS through the real gateway, beyond `tls_edge`: how SNI falls back, key formats and
//! chains, `http2: false`, the client certificate's subject (in the access log, outside
//! ASCII, with line breaks), `X-Forwarded-Proto`, slow handshakes and plain HTTP on the
//! wire; toward upstreams, why TLS failed (in the log), targets by IP or discovered, health
//! probes; certificates and CAs replaced on disk taking effect with a reload; and
//! `examples/tls.yaml` served with its example certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::idp::TestCa;
use crate::common::reload::Live;
use crate::common::tls::{ClientTls, H1, KeyType, Leaf, Logs, TlsOrigin, get_h1, served_leaf};
use crate::common::{
    Backend, DEADLINE, Gateway, TempDir, assert_problem, closed_within, config, dedent,
    echoed_header, eventually, missing_component, raw_get, raw_request, start,
};

/// `{ cert_file, key_file }` entries for `certs`, written to `dir` in order.
fn certificates(dir: &TempDir, certs: &[&Leaf]) -> String {
    let list: Vec<String> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (cert, key) = c.write(dir, &format!("leaf{i}"));
            format!(
                "{{ cert_file: '{}', key_file: '{}' }}",
                cert.display(),
                key.display()
            )
        })
        .collect();
    format!("[{}]", list.join(", "))
}

/// YAML pieces, each indented as it likes, as one file.
fn yaml(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| dedent(p))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A gateway whose first listener is TLS with `certs`, and `extra` keys under the listener
/// (`http2: false`); `/echo` goes to `backend` with the client certificate's subject as
/// `X-Client`, anything else answers 200 "ok".
async fn tls_gateway(dir: &TempDir, certs: &[&Leaf], extra: &str, backend: &Backend) -> Gateway {
    start(&yaml(&[
        &format!(
            r"
            listeners:
              - name: tls
                address: 127.0.0.1:0
                tls: {{ certificates: {certs} }}
                {extra}
            ",
            certs = certificates(dir, certs),
        ),
        &routes(&backend.url()),
    ]))
    .await
}

/// The upstream `be` at `url` and the routes of [`tls_gateway`].
fn routes(url: &str) -> String {
    format!(
        r#"
        upstreams:
          be:
            targets: [{{ url: "{url}" }}]
        routes:
          - name: echo
            match: {{ prefix: /echo }}
            upstream: be
            transform:
              request: {{ headers: {{ set: {{ X-Client: "${{tls.client_subject}}" }} }} }}
          - name: ok
            match: {{ prefix: / }}
            respond: {{ status: 200, body: ok }}
        "#
    )
}

/// The names of the certificate a failed verification was shown, from rustls's error.
async fn refused_for(ca_pem: &str, sni: &str, gw: &Gateway) -> String {
    ClientTls::new(ca_pem, sni)
        .connect(gw.addr)
        .await
        .expect_err("the certificate does not cover the name")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_ignores_case_and_falls_back_to_the_first_certificate() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test", "127.0.0.1"], KeyType::EcdsaP256, false);
    let b = ca.leaf(&["*.b.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-sni-fallback");
    let backend = Backend::start("b").await;
    let gw = tls_gateway(&dir, &[&a, &b], "", &backend).await;
    let pem = ca.pem();

    let mut tls = ClientTls::new(&pem, "X.B.Test")
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(
        served_leaf(&tls),
        b.der(),
        "names match whatever their case"
    );
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);

    // A client connecting by IP address sends no SNI: the first certificate.
    let mut tls = ClientTls::new(&pem, "127.0.0.1")
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(served_leaf(&tls), a.der(), "no SNI: the first certificate");
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);

    // `*.b.test` stands for exactly one label: neither b.test nor y.x.b.test is its.
    for sni in ["b.test", "y.x.b.test"] {
        let err = refused_for(&pem, sni, &gw).await;
        assert!(err.contains("DnsName(\"a.test\")"), "{sni}: {err}");
        assert!(!err.contains("b.test\")"), "{sni}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_pkcs1_sec1_and_p384_are_served() {
    let ca = TestCa::new();
    let rsa = ca.leaf(&["rsa.test"], KeyType::Rsa2048, false);
    let p256 = ca.leaf(&["p256.test"], KeyType::EcdsaP256, false);
    let p384 = ca.leaf(&["p384.test"], KeyType::EcdsaP384, false);
    let p384_sec1 = ca.leaf(&["p384-sec1.test"], KeyType::EcdsaP384, false);
    // PKCS#1 and SEC1 come from openssl; rcgen writes PKCS#8 only.
    let converted: Option<Vec<Leaf>> = [&rsa, &p256, &p384_sec1]
        .iter()
        .map(|l| {
            let key = l.traditional_key()?;
            Some(Leaf {
                cert_pem: l.cert_pem.clone(),
                key_pem: key,
            })
        })
        .collect();
    let converted = match converted {
        Some(c) => c,
        None => {
            missing_component("openssl is not installed: PKCS#1 and SEC1 keys untested");
            Vec::new()
        }
    };
    let mut leaves = vec![(&p384, "p384.test")];
    if let [rsa, p256, p384_sec1] = converted.as_slice() {
        assert!(rsa.key_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(p256.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert!(
            p384_sec1
                .key_pem
                .starts_with("-----BEGIN EC PRIVATE KEY-----")
        );
        leaves.extend([
            (rsa, "rsa.test"),
            (p256, "p256.test"),
            (p384_sec1, "p384-sec1.test"),
        ]);
    }
    let dir = TempDir::new("tls-keys");
    let backend = Backend::start("b").await;
    let certs: Vec<&Leaf> = leaves.iter().map(|(l, _)| *l).collect();
    let gw = tls_gateway(&dir, &certs, "", &backend).await;
    let pem = ca.pem();
    for (leaf, sni) in &leaves {
        let mut tls = ClientTls::new(&pem, sni).connect(gw.addr).await.unwrap();
        assert_eq!(served_leaf(&tls), leaf.der(), "{sni}");
        assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200, "{sni}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http2_alpn_gives_http_1_1_to_clients_that_offer_h2() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-no-h2");
    let backend = Backend::start("b").await;
    let gw = tls_gateway(&dir, &[&leaf], "http2: false", &backend).await;
    let pem = ca.pem();

    let both = ClientTls {
        alpn: &["h2", "http/1.1"],
        ..ClientTls::new(&pem, "api.test")
    };
    let tls = both.connect(gw.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = H1::over(tls).await;
    assert_eq!(h1.get("/", &[]).await, (200, "ok".to_owned()));
    let (status, body) = h1.get("/echo", &[]).await;
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");

    // A client that speaks nothing but h2 finds no protocol in common.
    let h2_only = ClientTls {
        alpn: &["h2"],
        ..ClientTls::new(&pem, "api.test")
    };
    assert!(
        h2_only.connect(gw.addr).await.is_err(),
        "no common protocol"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_subject_is_in_the_access_log() {
    let ca = TestCa::new();
    let clients = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let alice = clients.leaf(&["alice"], KeyType::Ed25519, true);
    let dir = TempDir::new("tls-access-log");
    let client_ca = dir.write("clients.pem", &clients.pem());
    let log = dir.path().join("access.log");
    let backend = Backend::start("b").await;
    let gw = start(&yaml(&[
        &format!(
            r"
            listeners:
              - name: plain
                address: 127.0.0.1:0
              - name: mtls
                address: 127.0.0.1:0
                tls:
                  certificates: {certs}
                  client_ca_file: '{client_ca}'
            observability:
              access_log: {{ enabled: true, path: '{log}' }}
            ",
            certs = certificates(&dir, &[&leaf]),
            client_ca = client_ca.display(),
            log = log.display(),
        ),
        &routes(&backend.url()),
    ]))
    .await;
    let mtls = gw.running().addrs[1];

    let tls = ClientTls {
        identity: Some(&alice),
        alpn: &["h2", "http/1.1"],
        ..ClientTls::new(&ca.pem(), "api.test")
    }
    .connect(mtls)
    .await
    .unwrap();
    // Over HTTP/2 too: the subject is the connection's, shared by its streams.
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("https://api.test/echo/mtls")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: Value = serde_json::from_slice(&body).unwrap();
    let sent = echoed_header(&echo, "x-client").unwrap();
    assert!(sent.contains("CN=alice"), "{sent}");

    let line = crate::common::eventually_line(&log, "/echo/mtls").await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["tls_client"], sent, "{line}");

    // A plain listener's requests have none.
    assert_eq!(gw.get("/echo/plain").await.status(), 200);
    let line = crate::common::eventually_line(&log, "/echo/plain").await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["tls_client"], Value::Null, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_is_https_whatever_an_untrusted_client_says() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let backend = Backend::start("b").await;
    let pem = ca.pem();
    let echo_of = |gw_addr| {
        let pem = pem.clone();
        async move {
            let tls = ClientTls::new(&pem, "api.test")
                .connect(gw_addr)
                .await
                .unwrap();
            let (status, body) = H1::over(tls)
                .await
                .get("/echo", &[("x-forwarded-proto", "http")])
                .await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };

    let dir = TempDir::new("tls-xfp");
    let gw = tls_gateway(&dir, &[&leaf], "", &backend).await;
    let echo = echo_of(gw.addr).await;
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("https"));

    // From a trusted proxy the header is its word, kept as sent.
    let dir = TempDir::new("tls-xfp-trusted");
    let gw = start(&yaml(&[
        &format!(
            r"
            trusted_proxies: [127.0.0.1/32]
            listeners:
              - name: tls
                address: 127.0.0.1:0
                tls: {{ certificates: {certs} }}
            ",
            certs = certificates(&dir, &[&leaf]),
        ),
        &routes(&backend.url()),
    ]))
    .await;
    let echo = echo_of(gw.addr).await;
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_stalled_handshake_is_closed_after_the_header_read_timeout() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-slow");
    let gw = start(&format!(
        r#"
        limits: {{ header_read_timeout: 300ms }}
        listeners:
          - name: tls
            address: 127.0.0.1:0
            tls: {{ certificates: {certs} }}
        routes:
          - name: ok
            match: {{ prefix: / }}
            respond: {{ status: 200, body: ok }}
        "#,
        certs = certificates(&dir, &[&leaf]),
    ))
    .await;
    // Not a byte.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // A TLS record header promising a ClientHello that never comes.
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Well under the default of 10s: the listener's limit applies to handshakes.
    let within = Duration::from_secs(5);
    assert!(closed_within(&mut silent, within).await, "silent client");
    assert!(
        closed_within(&mut stalled, within).await,
        "stalled handshake"
    );

    // The listener still serves.
    let mut tls = ClientTls::new(&ca.pem(), "api.test")
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_a_400_problem_then_a_close() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-plain-raw");
    let backend = Backend::start("b").await;
    let gw = tls_gateway(&dir, &[&leaf], "", &backend).await;

    // Keep-alive is not asked to end: the answer ends the connection anyway.
    let resp = tokio::time::timeout(
        DEADLINE,
        raw_request(gw.addr, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n"),
    )
    .await
    .expect("an answer, not a hang");
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(resp.header("connection"), Some("close"));
    let body = resp.json();
    assert_eq!(body["code"], "bad_request");
    assert_eq!(body["status"], 400);
    assert_eq!(body["detail"], "this port speaks TLS: use https://");

    // The connection is closed after the answer.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut stream, DEADLINE).await);
}

// weir reads only the first 4 KiB of a plain request before it answers and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_plain_request_on_the_tls_port_still_gets_its_400() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-plain-large");
    let backend = Backend::start("b").await;
    let gw = tls_gateway(&dir, &[&leaf], "", &backend).await;
    let cookie = "c".repeat(16 * 1024);
    for _ in 0..3 {
        let resp = tokio::time::timeout(
            DEADLINE,
            raw_request(
                gw.addr,
                &format!("GET / HTTP/1.1\r\nHost: api.test\r\nCookie: {cookie}\r\n\r\n"),
            ),
        )
        .await
        .expect("an answer, not a hang");
        assert_eq!(resp.status, 400);
    }
}

/// weir in front of `origin` with the upstream section `upstream` (under `secure:`).
async fn upstream_gateway(upstream: &str) -> Gateway {
    start(&format!(
        r#"
        upstreams:
          secure: {upstream}
        routes:
          - name: all
            match: {{ prefix: / }}
            upstream: secure
        "#
    ))
    .await
}

/// `{ targets: [origin], ...fields }` as one YAML flow map.
fn upstream(origin: &TlsOrigin, fields: &str) -> String {
    format!("{{ targets: [{{ url: '{}' }}], {fields} }}", origin.url())
}

fn ca_file(dir: &TempDir, name: &str, ca: &TestCa) -> String {
    dir.write(name, &ca.pem()).display().to_string()
}

/// A 502 `bad_gateway` and the `connect to target failed` line naming `reason`.
async fn refused_with(gw: &Gateway, logs: &Logs, reason: &str) {
    assert_problem(gw.get("/x").await, 502, "bad_gateway").await;
    let line = logs.line_with(&["connect to target failed", reason]);
    assert!(
        line.is_some(),
        "no `connect to target failed` line with {reason}:\n{}",
        logs.text()
    );
}

// On one thread, so that every line weir logs is captured.
#[tokio::test(flavor = "current_thread")]
async fn an_unverifiable_upstream_is_a_502_and_the_log_says_why() {
    let logs = Logs::capture();
    let ca = TestCa::new();
    let origin =
        TlsOrigin::start(&ca.leaf(&["origin.test"], KeyType::EcdsaP256, false), None).await;
    let dir = TempDir::new("up-why");

    let wrong = ca_file(&dir, "wrong.pem", &TestCa::new());
    let gw = upstream_gateway(&upstream(
        &origin,
        &format!("tls: {{ ca_file: '{wrong}', server_name: origin.test }}"),
    ))
    .await;
    refused_with(&gw, &logs, "invalid peer certificate: UnknownIssuer").await;

    // The right CA, the wrong name.
    let right = ca_file(&dir, "right.pem", &ca);
    let gw = upstream_gateway(&upstream(
        &origin,
        &format!("tls: {{ ca_file: '{right}', server_name: other.test }}"),
    ))
    .await;
    refused_with(&gw, &logs, "certificate not valid for name").await;

    // An https:// target without `tls` is checked against the system's store, which does
    // not know a test CA.
    let logs = Logs::capture();
    let gw = upstream_gateway(&upstream(&origin, "protocol: http1")).await;
    refused_with(&gw, &logs, "UnknownIssuer").await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_http2_upstream_whose_target_does_not_offer_h2_is_a_502() {
    let logs = Logs::capture();
    let ca = TestCa::new();
    let origin = TlsOrigin::start_with(
        &ca.leaf(&["origin.test"], KeyType::EcdsaP256, false),
        None,
        &["http/1.1"],
    )
    .await;
    let dir = TempDir::new("up-no-h2");
    let right = ca_file(&dir, "ca.pem", &ca);
    let tls = format!("tls: {{ ca_file: '{right}', server_name: origin.test }}");
    let gw = upstream_gateway(&upstream(&origin, &format!("protocol: http2, {tls}"))).await;
    // rustls ends the handshake when the server picks no protocol the client offered;
    // weir's own check says so if a server answers without ALPN.
    assert_problem(gw.get("/x").await, 502, "bad_gateway").await;
    let line = logs.line_with(&["connect to target failed"]);
    assert!(line.is_some(), "{}", logs.text());

    // The same target as HTTP/1.1 is fine.
    let gw = upstream_gateway(&upstream(&origin, &format!("protocol: http1, {tls}"))).await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_target_is_verified_by_its_ip_without_server_name() {
    let ca = TestCa::new();
    let origin = TlsOrigin::start(&ca.leaf(&["127.0.0.1"], KeyType::EcdsaP256, false), None).await;
    let dir = TempDir::new("up-ip");
    let ca = ca_file(&dir, "ca.pem", &ca);
    let gw = upstream_gateway(&upstream(&origin, &format!("tls: {{ ca_file: '{ca}' }}"))).await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
}

/// Writes `leaf` as `server.crt` / `server.key` in `dir`.
fn install(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("server.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &leaf.key_pem).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_certificate_now_on_disk_to_new_connections() {
    let ca = TestCa::new();
    let pem = ca.pem();
    let old = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let new = ca.leaf(&["api.test"], KeyType::Ed25519, false);
    let dir = TempDir::new("tls-reload");
    install(dir.path(), &old);
    // Paths relative to the config file, as in a deployment.
    let path = dir.write(
        "weir.yaml",
        &config(
            r"
            listeners:
              - name: tls
                address: 127.0.0.1:0
                tls: { certificates: [{ cert_file: server.crt, key_file: server.key }] }
            routes:
              - name: ok
                match: { prefix: / }
                respond: { status: 200, body: ok }
            ",
        ),
    );
    let live = Live::start_at(dir, path).await;
    let connect = || async {
        ClientTls::new(&pem, "api.test")
            .connect(live.addr)
            .await
            .unwrap()
    };
    let tls = connect().await;
    assert_eq!(served_leaf(&tls), old.der());
    let mut before = H1::over(tls).await;
    assert_eq!(before.get("/", &[]).await.0, 200);

    install(live.dir.path(), &new);
    let v1 = live.version().await;
    let v2 = live.reload_ok().await;
    assert_ne!(v1, v2, "new certificate files are a new version");
    assert_eq!(served_leaf(&connect().await), new.der());
    // A connection made before keeps going.
    assert_eq!(before.get("/", &[]).await.0, 200);

    // A certificate whose key is not beside it: refused, and the running one stays.
    let other = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    std::fs::write(live.dir.path().join("server.crt"), &other.cert_pem).unwrap();
    let (status, body) = live.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("this key is not the certificate's"),
        "{body}"
    );
    assert_eq!(live.version().await, v2);
    let mut tls = connect().await;
    assert_eq!(served_leaf(&tls), new.der());
    assert_eq!(get_h1(&mut tls, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_trusts_the_upstream_ca_now_on_disk() {
    let ca = TestCa::new();
    let origin =
        TlsOrigin::start(&ca.leaf(&["origin.test"], KeyType::EcdsaP256, false), None).await;
    let dir = TempDir::new("up-reload");
    dir.write("ca.pem", &TestCa::new().pem());
    let path = dir.write(
        "weir.yaml",
        &config(&format!(
            r"
            upstreams:
              secure: {}
            routes:
              - name: all
                match: {{ prefix: / }}
                upstream: secure
            ",
            upstream(
                &origin,
                "tls: { ca_file: ca.pem, server_name: origin.test }"
            )
        )),
    );
    let live = Live::start_at(dir, path).await;
    assert_problem(live.get("/x").await, 502, "bad_gateway").await;
    live.dir.write("ca.pem", &ca.pem());
    live.reload_ok().await;
    assert_eq!(live.get("/x").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_through_an_intermediate_are_sent_and_accepted() {
    let root = TestCa::new();
    let servers = root.intermediate();
    let clients_root = TestCa::new();
    let clients = clients_root.intermediate();
    let leaf = servers.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let alice = clients.leaf(&["alice"], KeyType::EcdsaP256, true);
    let origin = TlsOrigin::start(
        &servers.leaf(&["origin.test"], KeyType::Ed25519, false),
        None,
    )
    .await;
    let dir = TempDir::new("tls-chains");
    let client_ca = dir.write("clients.pem", &clients_root.pem());
    let ca = ca_file(&dir, "ca.pem", &root);
    let gw = start(&yaml(&[&format!(
        r"
        listeners:
          - name: tls
            address: 127.0.0.1:0
            tls:
              certificates: {certs}
              client_ca_file: '{client_ca}'
        upstreams:
          be: {be}
        routes:
          - name: echo
            match: {{ prefix: / }}
            upstream: be
            transform:
              request: {{ headers: {{ set: {{ X-Client: '${{tls.client_subject}}' }} }} }}
        ",
        certs = certificates(&dir, &[&leaf]),
        client_ca = client_ca.display(),
        be = upstream(
            &origin,
            &format!("tls: {{ ca_file: '{ca}', server_name: origin.test }}")
        ),
    )]))
    .await;
    // Both sides trust only the roots: each sends its intermediate.
    let mut tls = ClientTls {
        identity: Some(&alice),
        ..ClientTls::new(&root.pem(), "api.test")
    }
    .connect(gw.addr)
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap().len(), 2);
    let (status, body) = get_h1(&mut tls, "/x").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let subject = seen["headers"]["x-client"].as_str().unwrap();
    assert!(subject.contains("CN=alice"), "{subject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_turn_a_plain_listener_into_a_tls_one_and_back() {
    let ca = TestCa::new();
    let pem = ca.pem();
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let dir = TempDir::new("tls-reload-plain");
    install(dir.path(), &leaf);
    let respond = r"
        routes:
          - name: ok
            match: { prefix: / }
            respond: { status: 200, body: ok }
        ";
    let plain = yaml(&[
        r"
        listeners:
          - name: main
            address: 127.0.0.1:0
        ",
        respond,
    ]);
    let tls = yaml(&[
        r"
        listeners:
          - name: main
            address: 127.0.0.1:0
            tls: { certificates: [{ cert_file: server.crt, key_file: server.key }] }
        ",
        respond,
    ]);
    let path = dir.write("weir.yaml", &config(&plain));
    let live = Live::start_at(dir, path).await;
    assert_eq!(live.body("/").await, "ok");

    // The socket stays; its new connections speak TLS.
    live.apply(&tls).await;
    assert_eq!(live.running().addrs[0], live.addr);
    // (The client's kept-alive plain connection would still be served: a new one is not.)
    let resp = raw_get(live.addr, "/").await;
    assert_eq!(resp.status, 400, "plain HTTP on what is now a TLS port");
    let mut conn = ClientTls::new(&pem, "api.test")
        .connect(live.addr)
        .await
        .unwrap();
    assert_eq!(
        get_h1(&mut conn, "/").await.unwrap(),
        (200, "ok".to_owned())
    );

    live.apply(&plain).await;
    assert_eq!(raw_get(live.addr, "/").await.status, 200);
    assert!(
        ClientTls::new(&pem, "api.test")
            .connect(live.addr)
            .await
            .is_err(),
        "no TLS any more"
    );
}

/// A gateway on an mTLS listener whose client CA is `clients`, logging to `log`, with the
/// routes of [`routes`].
async fn mtls_gateway(dir: &TempDir, ca: &TestCa, clients: &TestCa, backend: &Backend) -> Gateway {
    let leaf = ca.leaf(&["api.test"], KeyType::EcdsaP256, false);
    let client_ca = dir.write("clients.pem", &clients.pem());
    start(&yaml(&[
        &format!(
            r"
            listeners:
              - name: mtls
                address: 127.0.0.1:0
                tls:
                  certificates: {certs}
                  client_ca_file: '{client_ca}'
            observability:
              access_log: {{ enabled: true, path: '{log}' }}
            ",
            certs = certificates(dir, &[&leaf]),
            client_ca = client_ca.display(),
            log = dir.path().join("access.log").display(),
        ),
        &routes(&backend.url()),
    ]))
    .await
}

/// `GET path` with `identity` on `gw`: the status and the subject the upstream saw.
async fn subject_sent(gw: &Gateway, ca: &TestCa, identity: &Leaf, path: &str) -> (u16, String) {
    let mut tls = ClientTls {
        identity: Some(identity),
        ..ClientTls::new(&ca.pem(), "api.test")
    }
    .connect(gw.addr)
    .await
    .unwrap();
    let (status, body) = get_h1(&mut tls, path).await.unwrap();
    let sent = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|echo| echoed_header(&echo, "x-client").map(str::to_owned))
        .unwrap_or_default();
    (status, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_outside_ascii_reaches_the_upstream_and_the_log() {
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let dir = TempDir::new("tls-subject-utf8");
    let backend = Backend::start("b").await;
    let gw = mtls_gateway(&dir, &ca, &clients, &backend).await;
    let zoe = clients.leaf(&["Zoë"], KeyType::EcdsaP256, true);
    let (status, sent) = subject_sent(&gw, &ca, &zoe, "/echo").await;
    assert_eq!(status, 200);
    assert_eq!(sent, "CN=Zoë, O=weir tests");
    let line = crate::common::eventually_line(&dir.path().join("access.log"), "/echo").await;
    let entry: Value = serde_json::from_str(&line).expect("the line is JSON");
    assert_eq!(entry["tls_client"], "CN=Zoë, O=weir tests", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_with_line_breaks_injects_no_header() {
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let dir = TempDir::new("tls-subject-crlf");
    let backend = Backend::start("b").await;
    let gw = mtls_gateway(&dir, &ca, &clients, &backend).await;
    let eve = clients.leaf(&["eve\r\nX-Injected: 1"], KeyType::EcdsaP256, true);
    let mut tls = ClientTls {
        identity: Some(&eve),
        ..ClientTls::new(&ca.pem(), "api.test")
    }
    .connect(gw.addr)
    .await
    .unwrap();
    let (status, body) = get_h1(&mut tls, "/echo").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    // The line break is escaped (RFC 4514 hex pairs): one header, nothing injected.
    assert_eq!(echo["headers"]["x-injected"], Value::Null, "{echo}");
    assert_eq!(
        echo["headers"]["x-client"][0], "CN=eve\\0D\\0AX-Injected: 1, O=weir tests",
        "{echo}"
    );
    // The access log line stays one JSON line.
    let line = crate::common::eventually_line(&dir.path().join("access.log"), "/echo").await;
    let entry: Value = serde_json::from_str(&line).expect("the line is JSON");
    assert_eq!(
        entry["tls_client"], "CN=eve\\0D\\0AX-Injected: 1, O=weir tests",
        "{line}"
    );
}

/// RFC 4514: `,` `+` `"` `\\` `<` `>` `;` in a value are escaped, so that a CN cannot pass
/// for other attributes to an upstream that reads the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_value_with_a_comma_is_escaped() {
    let (ca, clients) = (TestCa::new(), TestCa::new());
    let dir = TempDir::new("tls-subject-comma");
    let backend = Backend::start("b").await;
    let gw = mtls_gateway(&dir, &ca, &clients, &backend).await;
    let mallory = clients.leaf(&["mallory, O=admins"], KeyType::EcdsaP256, true);
    let (status, sent) = subject_sent(&gw, &ca, &mallory, "/echo").await;
    assert_eq!(status, 200);
    assert_eq!(sent, "CN=mallory\\, O=admins, O=weir tests");
}

/// `examples/tls.yaml` served as it is, but on free ports: its certificate verifies, as its
/// comment's curl command says, against the file it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_serves_its_example_certificate() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut loaded = weir_config::load_file(
        &examples.join("tls.yaml"),
        &weir_config::MapEnv::default(),
        &weir_config::Overrides::default(),
    )
    .expect("examples/tls.yaml loads");
    for l in &mut loaded.settings.listeners {
        l.address = "127.0.0.1:0".parse().unwrap();
    }
    loaded.settings.admin.listen = None;
    loaded.settings.access_log.enabled = false;
    let running = weir::start(loaded).await.expect("weir starts");
    let public_tls = running.addrs[1];
    let partners = running.addrs[2];
    let trusted = std::fs::read_to_string(examples.join("certs/example-ca.crt")).unwrap();

    for sni in ["api.example.com", "localhost"] {
        let tls = ClientTls {
            alpn: &["h2", "http/1.1"],
            ..ClientTls::new(&trusted, sni)
        }
        .connect(public_tls)
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
    // The partners' listener wants a client certificate its CA signed, and TLS 1.3.
    let refused = async {
        let mut tls = ClientTls::new(&trusted, "api.example.com")
            .connect(partners)
            .await?;
        get_h1(&mut tls, "/").await
    };
    assert!(refused.await.is_err(), "no client certificate");
    let old = ClientTls {
        tls12_only: true,
        ..ClientTls::new(&trusted, "api.example.com")
    };
    assert!(old.connect(partners).await.is_err(), "TLS 1.2");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_targets_are_spoken_to_over_tls_too() {
    let ca = TestCa::new();
    let origin =
        TlsOrigin::start(&ca.leaf(&["origin.test"], KeyType::EcdsaP256, false), None).await;
    let dns = crate::common::dns::TestDns::start().await;
    dns.set_a("origin.test", &[std::net::Ipv4Addr::LOCALHOST], 1);
    let dir = TempDir::new("up-discovered");
    let ca = ca_file(&dir, "ca.pem", &ca);
    let gw = upstream_gateway(&format!(
        "{{ discovery: {{ dns: {{ name: origin.test, port: {port}, refresh: 1s, server: '{dns}' }} }},
           tls: {{ ca_file: '{ca}', server_name: origin.test }} }}",
        port = origin.addr.port(),
        dns = dns.addr(),
    ))
    .await;
    // The origin speaks nothing but TLS: a 200 is a TLS exchange.
    crate::common::eventually("the discovered target answers", DEADLINE, || async {
        gw.get("/x").await.status() == 200
    })
    .await;
    let seen: Value = gw.get("/x").await.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
}

/// Whether `/upstreams` on the admin API shows upstream `secure`'s only target healthy.
async fn target_healthy(gw: &Gateway) -> bool {
    let v = gw.admin_json("/upstreams").await;
    let up = v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "secure")
        .expect("upstream secure");
    up["targets"][0]["healthy"]
        .as_bool()
        .expect("healthy is a boolean")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_speak_the_upstream_tls() {
    let ca = TestCa::new();
    let origin =
        TlsOrigin::start(&ca.leaf(&["origin.test"], KeyType::EcdsaP256, false), None).await;
    let dir = TempDir::new("up-health");
    let checked = |ca_file: &str| {
        upstream(
            &origin,
            &format!(
                "tls: {{ ca_file: '{ca_file}', server_name: origin.test }},
                 health_check: {{ active: {{ path: /health, interval: 100ms, timeout: 1s,
                                             healthy_threshold: 1, unhealthy_threshold: 1 }} }}"
            ),
        )
    };
    let gw = upstream_gateway(&checked(&ca_file(&dir, "ca.pem", &ca))).await;
    eventually("probes over TLS", DEADLINE, || async {
        origin.probes.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(target_healthy(&gw).await);
    assert_eq!(gw.get("/x").await.status(), 200);

    // Probes that cannot verify the target fail: it leaves rotation.
    let gw = upstream_gateway(&checked(&ca_file(&dir, "wrong.pem", &TestCa::new()))).await;
    eventually("the target unhealthy", DEADLINE, || async {
        !target_healthy(&gw).await
    })
    .await;
    assert_problem(gw.get("/x").await, 503, "upstream_unavailable").await;
}
