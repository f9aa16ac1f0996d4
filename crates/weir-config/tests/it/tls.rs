//! TLS settings: certificates and keys are read and matched at load, and every mistake is
//! reported at its key with line and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{ok, problems};

/// A directory of its own for one test's files, removed when dropped.
struct Dir(PathBuf);

impl std::ops::Deref for Dir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "weir-config-tls-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
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
    address: 127.0.0.1:0
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
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: '{a_crt}', key_file: '{other_key}' }}]
      min_version: '1.1'
  - name: missing
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: '{missing}', key_file: '{other_key}' }}]
  - name: neither
    address: 127.0.0.1:0
    tls: {{}}
  - name: both
    address: 127.0.0.1:0
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

/// Loads `yaml` as `weir.yaml` in `dir` (relative files are read there): its problems.
fn problems_in(dir: &std::path::Path, yaml: &str) -> Vec<String> {
    match weir_config::load_str_in(
        "weir.yaml",
        yaml,
        dir,
        &crate::common::TestEnv::default(),
        &weir_config::Overrides::default(),
    ) {
        Ok(_) => panic!("expected problems, but the config loaded:\n{yaml}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn listener_tls_problems_exactly() {
    let d = dir("exact");
    pair(&d, "a", "a.test");
    pair(&d, "other", "other.test");
    std::fs::write(
        d.join("enc.key"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQE=\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(d.join("junk.pem"), "not a certificate\n").unwrap();
    let p = problems_in(
        &d,
        "listeners:
  - name: l0
    address: 127.0.0.1:0
    tls:
      certificates:
        - { cert_file: a.crt, key_file: other.key }
        - { cert_file: missing.crt, key_file: enc.key }
        - { cert_file: junk.pem, key_file: junk.pem }
      min_version: '1.1'
  - name: l1
    address: 127.0.0.1:0
    tls: { min_version: '1.3' }
  - name: l2
    address: 127.0.0.1:0
    tls:
      certificates: [{ cert_file: a.crt, key_file: a.key }]
      acme: { directory: 'https://acme.test/dir', domains: [a.test], storage_dir: acme }
  - name: l3
    address: 127.0.0.1:0
    tls:
      acme: { directory: 'http://acme.test/dir', domains: [], storage_dir: acme, email: ops }
  - name: l4
    address: 127.0.0.1:0
    tls:
      acme: { directory: 'https://acme.test/dir', domains: ['10.0.0.1', '*.a.test', ''], storage_dir: '' }
",
    );
    let shown = |f: &str| d.join(f).display().to_string();
    let want = [
        "weir.yaml:6:41: listeners[0].tls.certificates[0].key_file: this key is not the certificate's (their public keys differ)".to_owned(),
        format!(
            "weir.yaml:7:24: listeners[0].tls.certificates[1].cert_file: cannot read \"{}\": No such file or directory (os error 2)",
            shown("missing.crt")
        ),
        "weir.yaml:7:47: listeners[0].tls.certificates[1].key_file: the private key is encrypted; give it decrypted (openssl pkcs8 -nocrypt)".to_owned(),
        "weir.yaml:8:24: listeners[0].tls.certificates[2].cert_file: no -----BEGIN CERTIFICATE----- block; give the PEM certificate, then its intermediates".to_owned(),
        "weir.yaml:8:44: listeners[0].tls.certificates[2].key_file: no usable private key: expected one PEM block of PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY".to_owned(),
        "weir.yaml:9:20: listeners[0].tls.min_version: \"1.1\" is not one of \"1.2\", \"1.3\"".to_owned(),
        "weir.yaml:12:10: listeners[1].tls: a TLS listener needs `certificates` (cert_file and key_file) or `acme`".to_owned(),
        "weir.yaml:17:7: listeners[2].tls.acme: give `certificates` or `acme`, not both".to_owned(),
        "weir.yaml:21:26: listeners[3].tls.acme.directory: \"http://acme.test/dir\" is not an https:// URL (an ACME directory is served over HTTPS)".to_owned(),
        "weir.yaml:21:59: listeners[3].tls.acme.domains: list at least one domain name".to_owned(),
        "weir.yaml:21:89: listeners[3].tls.acme.email: \"ops\" is not an email address".to_owned(),
        "weir.yaml:25:61: listeners[4].tls.acme.domains[0]: \"10.0.0.1\" is not a DNS name an ACME certificate can cover".to_owned(),
        "weir.yaml:25:73: listeners[4].tls.acme.domains[1]: \"*.a.test\" is not a DNS name an ACME certificate can cover".to_owned(),
        "weir.yaml:25:85: listeners[4].tls.acme.domains[2]: \"\" is not a DNS name an ACME certificate can cover".to_owned(),
        "weir.yaml:25:103: listeners[4].tls.acme.storage_dir: a directory path cannot be empty".to_owned(),
    ];
    assert_eq!(p, want);
}

#[test]
fn upstream_tls_problems_exactly() {
    let d = dir("up-exact");
    pair(&d, "c", "client.test");
    pair(&d, "other", "other.test");
    std::fs::write(d.join("junk.pem"), "not a certificate\n").unwrap();
    let p = problems_in(
        &d,
        "upstreams:
  u0:
    targets: [{ url: 'http://10.0.0.1:80' }, { url: 'http://10.0.0.2:80' }]
    tls: {}
  u1:
    targets: [{ url: 'https://10.0.0.1' }, { url: 'http://10.0.0.2' }]
  u2:
    targets: [{ url: 'https://10.0.0.3' }]
    tls: { client_cert_file: c.crt, server_name: 'bad name!', ca_file: junk.pem }
  u3:
    targets: [{ url: 'https://10.0.0.4' }]
    tls: { client_key_file: c.key }
  u4:
    targets: [{ url: 'https://10.0.0.5' }]
    tls: { client_cert_file: c.crt, client_key_file: other.key }
",
    );
    let want = [
        "weir.yaml:3:22: upstreams.u0.targets[0].url: this upstream speaks TLS (`tls` is set), so its targets are https://",
        "weir.yaml:6:51: upstreams.u1.targets[1].url: an upstream's targets are all https:// or all http://",
        "weir.yaml:9:12: upstreams.u2.tls.client_cert_file: `client_cert_file` needs `client_key_file` too",
        "weir.yaml:9:50: upstreams.u2.tls.server_name: \"bad name!\" is not a DNS name or an IP address",
        "weir.yaml:9:72: upstreams.u2.tls.ca_file: no -----BEGIN CERTIFICATE----- block; a ca_file holds the PEM certificates of the CAs that sign the server's certificate",
        "weir.yaml:12:12: upstreams.u3.tls.client_key_file: `client_key_file` needs `client_cert_file` too",
        "weir.yaml:15:54: upstreams.u4.tls.client_key_file: this key is not the certificate's (their public keys differ)",
    ];
    assert_eq!(p, want);
}

#[test]
fn a_client_ca_file_without_certificates_is_explained_as_a_client_ca() {
    let d = dir("client-ca");
    pair(&d, "a", "a.test");
    std::fs::write(d.join("junk.pem"), "not a certificate\n").unwrap();
    let p = problems_in(
        &d,
        "listeners:
  - name: l0
    address: 127.0.0.1:0
    tls:
      certificates: [{ cert_file: a.crt, key_file: a.key }]
      client_ca_file: junk.pem
",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with(
            "weir.yaml:6:23: listeners[0].tls.client_ca_file: no -----BEGIN CERTIFICATE----- block"
        ),
        "{p:#?}"
    );
    assert!(!p[0].contains("server's certificate"), "{p:#?}");
}

#[test]
fn the_tls_example_builds_what_its_comments_say() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tls.yaml");
    let loaded = weir_config::load_file(
        &path,
        &crate::common::TestEnv::default(),
        &weir_config::Overrides::default(),
    )
    .unwrap_or_else(|p| panic!("examples/tls.yaml does not load:\n{p}"));
    let listeners = &loaded.settings.listeners;
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["public", "public-tls", "partners"]);
    assert!(listeners[0].tls.is_none());
    let public = listeners[1].tls.as_ref().unwrap();
    assert!(listeners[1].http2);
    assert_eq!(public.certificates.len(), 1);
    assert_eq!(public.min_version, weir_config::TlsVersion::Tls12);
    assert!(public.client_ca_pem.is_none());
    let partners = listeners[2].tls.as_ref().unwrap();
    assert_eq!(partners.min_version, weir_config::TlsVersion::Tls13);
    assert!(partners.client_ca_pem.is_some());

    let internal = loaded
        .upstreams
        .iter()
        .find(|u| &*u.name == "internal")
        .unwrap();
    let tls = internal.tls.as_ref().unwrap();
    assert!(tls.ca_pem.is_some());
    assert_eq!(tls.server_name.as_deref(), Some("api.example.com"));
    let grpc = loaded
        .upstreams
        .iter()
        .find(|u| &*u.name == "grpc-secure")
        .unwrap();
    assert_eq!(grpc.tls.as_ref().unwrap(), &Default::default());
}
