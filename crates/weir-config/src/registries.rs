//! The top-level `etcd` and `consul` sections: how weir reaches the service registries that
//! `discovery.etcd` and `discovery.consul` read. Certificate and key files are read here, at
//! load, so a wrong path fails the load instead of every connection attempt.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weir_domain::auth::Secret;
use weir_domain::discovery::{ClientIdentity, ConsulAgent, EtcdCluster, EtcdCredentials};
use weir_domain::upstream::TargetAddr;

use crate::checks::duration;
use crate::idp;
use crate::model::{ConsulConfig, EtcdConfig, FileConfig};
use crate::node::KeyPath;
use crate::pem;
use crate::report::Report;

/// A client certificate chain is a few KiB; a key file smaller still.
const MAX_CERT_FILE: u64 = 256 * 1024;

/// Consul answers a blocking query after at most 10 minutes whatever `wait` says.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// What the registry sections built, for the upstreams that use them.
#[derive(Debug, Default)]
pub(crate) struct Registries {
    pub(crate) etcd: Section<EtcdCluster>,
    pub(crate) consul: Section<ConsulAgent>,
}

/// A top-level section as the discovery blocks see it.
#[derive(Debug, Default)]
pub(crate) enum Section<T> {
    /// Not in the file.
    #[default]
    Absent,
    /// In the file, with problems (reported already: a discovery block says nothing more).
    Broken,
    Ready(Arc<T>),
}

impl<T> Section<T> {
    fn from(built: Option<T>) -> Self {
        built.map_or(Self::Broken, |t| Self::Ready(Arc::new(t)))
    }
}

impl Registries {
    /// Bytes read from certificate and key files: part of the config's version, so that
    /// rotating a file is a new version.
    pub(crate) fn key_material(&self) -> String {
        let mut out = String::new();
        if let Section::Ready(e) = &self.etcd {
            if let Some(ca) = &e.ca_pem {
                out.push_str(&String::from_utf8_lossy(ca));
            }
            if let Some(id) = &e.identity {
                out.push_str(&String::from_utf8_lossy(&id.cert_pem));
                out.push_str(id.key_pem.expose());
            }
        }
        if let Section::Ready(c) = &self.consul
            && let Some(ca) = &c.ca_pem
        {
            out.push_str(&String::from_utf8_lossy(ca));
        }
        out
    }
}

/// Checks `etcd` and `consul`; relative file paths are taken from `dir`.
pub(crate) fn build(cfg: &FileConfig, dir: &Path, r: &mut Report<'_>) -> Registries {
    let root = KeyPath::root();
    Registries {
        etcd: match &cfg.etcd {
            None => Section::Absent,
            Some(c) => Section::from(etcd(c, &root.key("etcd"), dir, r)),
        },
        // Without the section, the local agent on its usual port: the defaults.
        consul: Section::from(consul(
            cfg.consul.as_ref().unwrap_or(&ConsulConfig::default()),
            &root.key("consul"),
            dir,
            r,
        )),
    }
}

fn etcd(c: &EtcdConfig, path: &KeyPath, dir: &Path, r: &mut Report<'_>) -> Option<EtcdCluster> {
    let mut endpoints = Some(Vec::with_capacity(c.endpoints.len()));
    if c.endpoints.is_empty() {
        r.at(
            path,
            "etcd needs `endpoints`: the client URLs of the cluster's members, such as \
             [http://10.0.0.5:2379]",
        );
        endpoints = None;
    }
    for (i, e) in c.endpoints.iter().enumerate() {
        match (
            r.check(&path.key("endpoints").index(i), server_url(e)),
            &mut endpoints,
        ) {
            (Some(url), Some(list)) => list.push(url),
            _ => endpoints = None,
        }
    }
    let https = match &endpoints {
        Some(list) if !list.is_empty() => {
            let https = list.iter().filter(|u| idp::is_https(u)).count();
            if https != 0 && https != list.len() {
                r.at(
                    &path.key("endpoints"),
                    "mix of http:// and https:// endpoints; a cluster is reached one way, so \
                     give them all the same scheme",
                );
                endpoints = None;
            }
            https != 0
        }
        // Unknown: the file checks below still run.
        _ => true,
    };
    let credentials = match (&c.username, &c.password) {
        (None, None) => Some(None),
        (Some(u), Some(p)) if !u.trim().is_empty() => Some(Some(EtcdCredentials {
            username: u.trim().to_owned(),
            password: Secret::new(p.clone()),
        })),
        (Some(_), Some(_)) => {
            r.at(&path.key("username"), "the username cannot be empty");
            None
        }
        (Some(_), None) => {
            r.at_key(&path.key("username"), "`username` needs `password` too");
            None
        }
        (None, Some(_)) => {
            r.at_key(&path.key("password"), "`password` needs `username` too");
            None
        }
    };
    let plain = |r: &mut Report<'_>, key: &str| {
        r.at_key(
            &path.key(key),
            format!("`{key}` applies only to https:// endpoints (plain http:// has no TLS)"),
        );
    };
    let ca_pem = match &c.ca_file {
        None => Some(None),
        Some(_) if !https => {
            plain(r, "ca_file");
            None
        }
        Some(file) => idp::ca_bundle(file, &path.key("ca_file"), dir, r).map(Some),
    };
    let identity = match (&c.cert_file, &c.key_file) {
        (None, None) => Some(None),
        (Some(_), Some(_)) if !https => {
            plain(r, "cert_file");
            None
        }
        (Some(cert), Some(key)) => {
            let cert = read_pem(
                cert,
                &path.key("cert_file"),
                dir,
                r,
                pem::client_certificates,
            );
            let key = read_pem(key, &path.key("key_file"), dir, r, pem::private_key);
            cert.zip(key).map(|(cert_pem, key)| {
                Some(ClientIdentity {
                    cert_pem,
                    key_pem: Secret::new(key),
                })
            })
        }
        (Some(_), None) => {
            r.at_key(&path.key("cert_file"), "`cert_file` needs `key_file` too");
            None
        }
        (None, Some(_)) => {
            r.at_key(&path.key("key_file"), "`key_file` needs `cert_file` too");
            None
        }
    };
    let timeout = duration(r, &path.key("timeout"), &c.timeout, true);
    Some(EtcdCluster {
        endpoints: endpoints?,
        credentials: credentials?,
        ca_pem: ca_pem?,
        identity: identity?,
        timeout: timeout?,
    })
}

fn consul(c: &ConsulConfig, path: &KeyPath, dir: &Path, r: &mut Report<'_>) -> Option<ConsulAgent> {
    let address = r.check(&path.key("address"), server_url(&c.address));
    let token = match &c.token {
        // `token: ${CONSUL_TOKEN:-}` with the variable unset means no token.
        Some(t) if !t.trim().is_empty() => {
            if t.trim().chars().any(|ch| ch.is_control()) {
                r.at(&path.key("token"), "the token has a control character");
                None
            } else {
                Some(Some(Secret::new(t.trim().to_owned())))
            }
        }
        _ => Some(None),
    };
    let datacenter = match &c.datacenter {
        None => Some(None),
        Some(dc) => r
            .check(&path.key("datacenter"), name_part("datacenter", dc))
            .map(Some),
    };
    let ca_pem = match (&c.ca_file, &address) {
        (None, _) => Some(None),
        (Some(_), Some(a)) if !idp::is_https(a) => {
            r.at_key(
                &path.key("ca_file"),
                "`ca_file` applies only to an https:// address (plain http:// has no TLS)",
            );
            None
        }
        (Some(file), _) => idp::ca_bundle(file, &path.key("ca_file"), dir, r).map(Some),
    };
    let wait = match duration(r, &path.key("wait"), &c.wait, false) {
        Some(w) if w < Duration::from_secs(1) || w > MAX_WAIT => {
            r.at(
                &path.key("wait"),
                format!("{} is out of range: 1s to 10m", c.wait.text()),
            );
            None
        }
        w => w,
    };
    Some(ConsulAgent {
        address: address?,
        token: token?,
        datacenter: datacenter?,
        ca_pem: ca_pem?,
        wait: wait?,
    })
}

/// `http://HOST[:PORT]` or `https://HOST[:PORT]` of a registry, without path, user or
/// password; written back without a trailing slash and with the scheme in lower case.
fn server_url(text: &str) -> Result<String, String> {
    let t = text.trim();
    let Some((scheme, rest)) = idp::split_scheme(t) else {
        return Err(format!(
            "\"{t}\" is not an http:// or https:// URL such as http://10.0.0.5:2379"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        // Never echo a URL that may carry a password.
        return Err("the URL must not carry a user or password".to_owned());
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "\"{t}\" must be scheme://host[:port] only, without a path"
        ));
    }
    TargetAddr::parse(&format!("http://{rest}"))?;
    Ok(format!("{scheme}{rest}"))
}

/// A Consul name (a service, a tag, a datacenter) that goes into a query string: not empty,
/// no whitespace or control characters. Consul itself decides the rest.
pub(crate) fn name_part(what: &str, text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the {what} cannot be empty"));
    }
    if let Some(c) = t.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the {what} \"{t}\" has {c:?}, which Consul names never have"
        ));
    }
    Ok(t.to_owned())
}

/// Reads a PEM file and checks it with `parse`; `None` when it has a problem (reported).
fn read_pem<T>(
    file: &str,
    at: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
    parse: fn(&[u8]) -> Result<T, String>,
) -> Option<T> {
    let hint = "a certificate chain or a key is a few KiB";
    let (bytes, _) = idp::read(file, at, dir, MAX_CERT_FILE, hint, r)?;
    r.check(at, parse(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            server_url(" HTTP://10.0.0.5:2379/ ").unwrap(),
            "http://10.0.0.5:2379"
        );
        assert_eq!(
            server_url("https://etcd.internal").unwrap(),
            "https://etcd.internal"
        );
        assert_eq!(
            server_url("http://[::1]:8500").unwrap(),
            "http://[::1]:8500"
        );
        for (bad, why) in [
            ("10.0.0.5:2379", "not an http:// or https:// URL"),
            ("http://u:p@h:1", "user or password"),
            ("http://h:1/v3", "without a path"),
            ("http://h:0", "non-zero port"),
            ("http://", "no host"),
        ] {
            let e = server_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn consul_names() {
        assert_eq!(name_part("tag", " v2 ").unwrap(), "v2");
        assert!(
            name_part("tag", " ")
                .unwrap_err()
                .contains("cannot be empty")
        );
        assert!(name_part("service", "a b").unwrap_err().contains("' '"));
    }
}
