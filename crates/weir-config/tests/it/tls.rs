//! TLS settings: certificates and keys are read and matched at load, and every mistake is
//! reported at its key with line and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use crate::common::{ok, problems};

/// A directory of its own for one test's files.
fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weir-config-tls-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for `name` and its key, written as `<stem>.crt` / `.key`.
fn pair(dir: &std::path::Path, stem: &str, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let c = dir.join(format!("{stem}.crt"));
    let k = dir.join(format!("{stem}.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn a_listener_with_good_certificates_loads_and_the_key_stays_secret() {
    let d = dir("good");
    let (a_crt, a_key) = pair(&d, "a", "a.test");
    let (b_crt, b_key) = pair(&d, "b", "b.test");
    let loaded = ok(&format!(
        "listeners:
  - name: tls
    address: 127.0.0.1:8443
    tls:
      certificates:
        - {{ cert_file: '{a_crt}', key_file: '{a_key}' }}
        - {{ cert_file: '{b_crt}', key_file: '{b_key}' }}
      min_version: '1.3'
      client_ca_file: '{a_crt}'
"
    ));
    let tls = loaded.settings.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.min_version, weir_config::TlsVersion::Tls13);
    assert!(tls.client_ca_pem.is_some());
    let shown = format!("{tls:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

#[test]
fn listener_tls_problems_are_reported_at_their_keys() {
    let d = dir("bad");
    let (a_crt, _) = pair(&d, "a", "a.test");
    let (_, other_key) = pair(&d, "other", "other.test");
    let missing = d.join("missing.crt").display().to_string();
    let p = problems(&format!(
        "listeners:
  - name: mismatched
    address: 127.0.0.1:8443
    tls:
      certificates: [{{ cert_file: '{a_crt}', key_file: '{other_key}' }}]
      min_version: '1.1'
  - name: missing
    address: 127.0.0.1:8444
    tls:
      certificates: [{{ cert_file: '{missing}', key_file: '{other_key}' }}]
  - name: neither
    address: 127.0.0.1:8445
    tls: {{}}
  - name: both
    address: 127.0.0.1:8446
    tls:
      certificates: [{{ cert_file: '{a_crt}', key_file: '{other_key}' }}]
      acme: {{ directory: 'http://acme.test/dir', domains: ['10.0.0.1', ''], storage_dir: '' }}
"
    ));
    let at = |prefix: &str, needle: &str| {
        assert!(
            p.iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle)),
            "no {prefix} ... {needle} in {p:#?}"
        );
    };
    at(
        "weir.yaml:5:",
        "listeners[0].tls.certificates[0].key_file: this key is not the certificate's",
    );
    at(
        "weir.yaml:6:20: listeners[0].tls.min_version",
        "\"1.1\" is not one of \"1.2\", \"1.3\"",
    );
    at(
        "weir.yaml:10:",
        "listeners[1].tls.certificates[0].cert_file: cannot read",
    );
    at(
        "weir.yaml:13:",
        "listeners[2].tls: a TLS listener needs `certificates`",
    );
    at(
        "weir.yaml:18:",
        "listeners[3].tls.acme: give `certificates` or `acme`, not both",
    );
    at(
        "weir.yaml:18:",
        "acme.directory: \"http://acme.test/dir\" is not an https:// URL",
    );
    at(
        "weir.yaml:18:",
        "acme.domains[0]: \"10.0.0.1\" is not a DNS name",
    );
    at(
        "weir.yaml:18:",
        "acme.storage_dir: a directory path cannot be empty",
    );
    assert!(
        p.iter().all(|l| !l.contains("PRIVATE KEY")),
        "no key material in messages: {p:#?}"
    );
}

#[test]
fn upstream_tls_problems_are_reported_at_their_keys() {
    let d = dir("up");
    let (crt, key) = pair(&d, "c", "client.test");
    let p = problems(&format!(
        "upstreams:
  plain-with-tls:
    targets: [{{ url: 'http://10.0.0.1:80' }}]
    tls: {{}}
  mixed:
    targets: [{{ url: 'https://10.0.0.1' }}, {{ url: 'http://10.0.0.2' }}]
  half-identity:
    targets: [{{ url: 'https://10.0.0.3' }}]
    tls: {{ client_cert_file: '{crt}', server_name: 'bad name!' }}
  fine:
    targets: [{{ url: 'https://10.0.0.4' }}]
    tls: {{ client_cert_file: '{crt}', client_key_file: '{key}', server_name: api.test }}
"
    ));
    let at = |prefix: &str, needle: &str| {
        assert!(
            p.iter()
                .any(|l| l.starts_with(prefix) && l.contains(needle)),
            "no {prefix} ... {needle} in {p:#?}"
        );
    };
    at(
        "weir.yaml:3:",
        "upstreams.plain-with-tls.targets[0].url: this upstream speaks TLS (`tls` is set), so its targets are https://",
    );
    at(
        "weir.yaml:6:",
        "upstreams.mixed.targets[1].url: an upstream's targets are all https:// or all http://",
    );
    at(
        "weir.yaml:9:",
        "upstreams.half-identity.tls.client_cert_file: `client_cert_file` needs `client_key_file` too",
    );
    at(
        "weir.yaml:9:",
        "upstreams.half-identity.tls.server_name: \"bad name!\" is not a DNS name",
    );
    assert!(p.iter().all(|l| !l.contains("upstreams.fine")), "{p:#?}");
}
