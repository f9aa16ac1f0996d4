//! Where an identity provider is asked (`jwks_url`, `introspection_url`) and which
//! certificates vouch for it (`ca_file`).
//!
//! The URL is only checked for shape here: nothing connects at load time, so an identity
//! provider that is down does not stop weir from starting. `ca_file` is read at load (like
//! `public_key_file`), so a missing or wrong bundle is a config problem, not a failure of
//! every request.

use std::path::Path;

use weir_domain::upstream::TargetAddr;

use crate::model::ProviderConfig;
use crate::node::KeyPath;
use crate::pem;
use crate::report::Report;

/// A JWKS URL of the right shape, for messages.
pub(crate) const JWKS_EXAMPLE: &str = "https://idp.example.com/.well-known/jwks.json";
/// An introspection URL of the right shape, for messages.
pub(crate) const INTROSPECTION_EXAMPLE: &str = "https://idp.example.com/oauth2/introspect";

/// A CA bundle larger than this is not one. Debian's whole system bundle is about 220 KiB,
/// and pointing `ca_file` at it must work; `/dev/zero` must not hang a reload.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// `http://` or `https://host[:port]/path` of an identity provider, with the scheme in lower
/// case. `example` shows a URL of the right shape.
pub(crate) fn url(text: &str, example: &str) -> Result<String, String> {
    let t = text.trim();
    let Some((scheme, rest)) = split_scheme(t) else {
        return Err(format!(
            "\"{t}\" is not an http:// or https:// URL such as {example}"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        // Never echo a URL that may carry a password.
        return Err("the URL must not carry a user or password".to_owned());
    }
    // Checks the host and port only; the scheme's default port is the client's business.
    TargetAddr::parse(&format!("http://{authority}"))?;
    if !tail.starts_with('/') {
        return Err(format!("\"{t}\" needs a path, such as {example}"));
    }
    if tail.contains('#') {
        return Err(format!("\"{t}\": a #fragment is never sent; remove it"));
    }
    Ok(format!("{scheme}{rest}"))
}

/// `http://` or `https://` (in lower case, whatever the case written) and the rest.
pub(crate) fn split_scheme(t: &str) -> Option<(&'static str, &str)> {
    ["https://", "http://"].into_iter().find_map(|scheme| {
        let head = t.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| (scheme, &t[scheme.len()..]))
    })
}

/// Whether a URL that [`url`] accepted is `https://`.
pub(crate) fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The provider's `ca_file`: `Some(None)` when not set, `Some(Some(pem))` with the bundle's
/// certificates, `None` when it has a problem (reported). `url` is the checked URL, `None`
/// when the URL itself has a problem (then only the file is checked).
pub(crate) fn ca_file(
    p: &ProviderConfig,
    url: Option<&str>,
    path: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<Option<Vec<u8>>> {
    let Some(file) = &p.ca_file else {
        return Some(None);
    };
    let at = path.key("ca_file");
    if url.is_some_and(|u| !is_https(u)) {
        r.at_key(
            &at,
            "`ca_file` applies only to an https:// URL (plain http:// has no certificate to check)",
        );
        return None;
    }
    ca_bundle(file, &at, dir, r).map(Some)
}

/// The certificates of a `ca_file` (an identity provider's or `redis.ca_file`), relative to
/// `dir`; `None` when it has a problem (reported at `at`).
pub(crate) fn ca_bundle(
    file: &str,
    at: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<Vec<u8>> {
    let hint = "a CA bundle, even a whole system trust store, is a few hundred KiB";
    let (bytes, _) = read(file, at, dir, MAX_CA_FILE, hint, r)?;
    r.check(at, pem::certificates(&bytes))
}

/// As [`ca_bundle`], for a listener's `client_ca_file`: its CAs sign clients' certificates,
/// and a message saying otherwise would send the reader looking for the wrong file.
pub(crate) fn client_ca_bundle(
    file: &str,
    at: &KeyPath,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<Vec<u8>> {
    let hint = "a CA bundle, even a whole system trust store, is a few hundred KiB";
    let (bytes, _) = read(file, at, dir, MAX_CA_FILE, hint, r)?;
    r.check(
        at,
        pem::certificates(&bytes).map_err(|e| {
            if e.starts_with("no -----BEGIN CERTIFICATE-----") {
                "no -----BEGIN CERTIFICATE----- block; a client_ca_file holds the PEM \
                 certificates of the CAs that sign the clients' certificates"
                    .to_owned()
            } else {
                e
            }
        }),
    )
}

/// Reads a small file named in the config, relative to `dir`: its bytes and the path as
/// shown in messages. `hint` says how large the file should be, for the message when it is
/// larger than `max`.
pub(crate) fn read(
    file: &str,
    at: &KeyPath,
    dir: &Path,
    max: u64,
    hint: &str,
    r: &mut Report<'_>,
) -> Option<(Vec<u8>, String)> {
    let written = file.trim();
    if written.is_empty() {
        r.at(at, "a file path cannot be empty");
        return None;
    }
    let full = dir.join(written);
    let shown = full.display().to_string();
    match read_small(&full, max) {
        Ok(Some(bytes)) => Some((bytes, shown)),
        Ok(None) => {
            r.at(
                at,
                format!("\"{shown}\" is larger than {} KiB; {hint}", max / 1024),
            );
            None
        }
        Err(e) => {
            r.at(at, format!("cannot read \"{shown}\": {e}"));
            None
        }
    }
}

/// The file's bytes, or `None` when it is larger than `max`.
fn read_small(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_provider_urls() {
        let ok = |u: &str| url(u, "http://x/y");
        assert_eq!(
            ok(" http://idp:8080/jwks ").unwrap(),
            "http://idp:8080/jwks"
        );
        assert_eq!(
            ok("http://[::1]:80/a?b=c").unwrap(),
            "http://[::1]:80/a?b=c"
        );
        assert_eq!(ok("https://idp/jwks").unwrap(), "https://idp/jwks");
        assert_eq!(
            ok("HTTPS://id.example.com:8443/jwks").unwrap(),
            "https://id.example.com:8443/jwks"
        );
        assert!(is_https(&ok("HTTPS://idp/jwks").unwrap()));
        assert!(!is_https(&ok("http://idp/jwks").unwrap()));
        assert!(ok("http://idp").unwrap_err().contains("needs a path"));
        assert!(ok("https://idp?x").unwrap_err().contains("needs a path"));
        assert!(
            ok("https://u:p@idp/x")
                .unwrap_err()
                .contains("user or password")
        );
        assert!(ok("http://idp:99999/x").unwrap_err().contains("bad port"));
        assert!(ok("https:///x").unwrap_err().contains("no host"));
        assert!(
            ok("ftp://idp/x")
                .unwrap_err()
                .contains("not an http:// or https:// URL")
        );
        assert!(ok("https").unwrap_err().contains("not an http://"));
        assert!(ok("http://idp/x#y").unwrap_err().contains("fragment"));
    }
}
