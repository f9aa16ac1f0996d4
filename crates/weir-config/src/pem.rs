//! Reading a JWT provider's `public_key_file`: find the PEM block, and tell what kind of key it
//! holds from the algorithm identifier inside, so an algorithm that does not fit the key is
//! refused at load rather than by every request. Also an identity provider's `ca_file`: the
//! `CERTIFICATE` blocks of a bundle.
//!
//! This is sniffing, not verification: the verifier parses the key (the TLS client the
//! certificates) for real. It needs only base64 (the `base64` crate) and the first few DER headers.

use weir_domain::auth::KeyFamily;

/// The named curve of an EC key, which decides between ES256 and ES384.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

impl Curve {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }
}

/// A public key found in a PEM file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PublicKey {
    /// The one PEM block, `-----BEGIN ...` to `-----END ...-----`, with a final newline.
    pub(crate) pem: Vec<u8>,
    pub(crate) family: KeyFamily,
    /// For EC keys.
    pub(crate) curve: Option<Curve>,
}

// Object identifiers, as their DER content bytes.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const ED448: &[u8] = &[0x2b, 0x65, 0x71];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// One `-----BEGIN LABEL-----` ... `-----END LABEL-----` block.
struct Block<'a> {
    label: &'a str,
    /// The base64 lines.
    body: Vec<&'a str>,
}

/// Finds and sniffs the public key in a PEM file's bytes. Errors are complete sentences fit for
/// a config problem, and never quote the file's content.
pub(crate) fn public_key(bytes: &[u8]) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "this is not a PEM file (a DER key must be converted to PEM)".to_owned())?;
    let blocks = blocks(text)?;
    if blocks.iter().any(|b| b.label.contains("PRIVATE KEY")) {
        return Err("this is a private key; give the public key".to_owned());
    }
    let Some(block) = blocks
        .iter()
        .find(|b| b.label == "PUBLIC KEY" || b.label == "RSA PUBLIC KEY")
    else {
        return Err(match blocks.first() {
            None => "this is not a PEM file: no -----BEGIN PUBLIC KEY----- block".to_owned(),
            Some(b) if b.label == "CERTIFICATE" => "this is a certificate; give its public key \
                 (openssl x509 -pubkey -noout -in CERT)"
                .to_owned(),
            Some(b) => format!(
                "found a PEM {} block; expected PUBLIC KEY or RSA PUBLIC KEY",
                b.label
            ),
        });
    };
    let der = base64(&block.body.concat())
        .ok_or_else(|| format!("the {} block is not valid base64", block.label))?;
    let (family, curve) = if block.label == "RSA PUBLIC KEY" {
        // PKCS#1 `RSAPublicKey`: a SEQUENCE of modulus and exponent.
        match tlv(&der) {
            Some((0x30, _, _)) => (KeyFamily::Rsa, None),
            _ => return Err("the RSA PUBLIC KEY block is not a DER RSA key".to_owned()),
        }
    } else {
        spki(&der)?
    };
    let mut pem = format!("-----BEGIN {}-----\n", block.label);
    for line in &block.body {
        pem.push_str(line);
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {}-----\n", block.label));
    Ok(PublicKey {
        pem: pem.into_bytes(),
        family,
        curve,
    })
}

/// The `CERTIFICATE` blocks of a CA bundle, each re-written as a clean PEM block (other
/// text, such as the comments of a system bundle, is left out). At least one is required.
pub(crate) fn certificates(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let blocks = blocks(pem_text(bytes)?)?;
    if blocks.iter().any(|b| b.label.contains("PRIVATE KEY")) {
        // Whoever holds the CA's private key can impersonate the identity provider.
        return Err(
            "this file holds a private key; a ca_file holds only the CA's certificates".to_owned(),
        );
    }
    certificate_blocks(&blocks).ok_or_else(|| {
        "no -----BEGIN CERTIFICATE----- block; a ca_file holds the PEM certificates of the CAs \
         that sign the server's certificate"
            .to_owned()
    })?
}

/// A client certificate and the chain after it (`cert_file`), as clean PEM blocks.
pub(crate) fn client_certificates(bytes: &[u8]) -> Result<Vec<u8>, String> {
    certificate_blocks(&blocks(pem_text(bytes)?)?).ok_or_else(|| {
        "no -----BEGIN CERTIFICATE----- block; a cert_file holds the PEM client certificate, \
         then any intermediate certificates"
            .to_owned()
    })?
}

/// The private key of a client certificate (`key_file`): its one PKCS#8, PKCS#1 (RSA) or
/// SEC1 (EC) block, as a clean PEM block.
pub(crate) fn private_key(bytes: &[u8]) -> Result<String, String> {
    let blocks = blocks(pem_text(bytes)?)?;
    let Some(key) = blocks.iter().find(|b| b.label.contains("PRIVATE KEY")) else {
        return Err(
            "no -----BEGIN PRIVATE KEY----- block (PKCS#8, or RSA/EC PRIVATE KEY)".to_owned(),
        );
    };
    if key.label.contains("ENCRYPTED") {
        return Err(
            "the private key is encrypted; give it decrypted (openssl pkcs8 -nocrypt)".to_owned(),
        );
    }
    if base64(&key.body.concat()).is_none() {
        return Err("the private key is not valid base64".to_owned());
    }
    let label = key.label;
    let body = key.body.join("\n");
    Ok(format!(
        "-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"
    ))
}

fn pem_text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes)
        .map_err(|_| "this is not a PEM file (DER must be converted to PEM)".to_owned())
}

/// The `CERTIFICATE` blocks, re-written; `None` when there are none, `Some(Err)` when one is
/// not a DER certificate.
fn certificate_blocks(blocks: &[Block<'_>]) -> Option<Result<Vec<u8>, String>> {
    let mut pem = String::new();
    for (i, block) in blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .enumerate()
    {
        let Some(der) = base64(&block.body.concat()) else {
            return Some(Err(format!("certificate {} is not valid base64", i + 1)));
        };
        if !matches!(tlv(&der), Some((0x30, _, _))) {
            return Some(Err(format!(
                "certificate {} is not a DER certificate",
                i + 1
            )));
        }
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in &block.body {
            pem.push_str(line);
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    (!pem.is_empty()).then(|| Ok(pem.into_bytes()))
}

fn blocks(text: &str) -> Result<Vec<Block<'_>>, String> {
    let mut out = Vec::new();
    let mut open: Option<Block<'_>> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if let Some(b) = &open {
                return Err(format!("the PEM {} block has no END line", b.label));
            }
            open = Some(Block {
                label,
                body: Vec::new(),
            });
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            match open.take() {
                Some(b) if b.label == label => out.push(b),
                Some(b) => {
                    return Err(format!("the PEM {} block ends with END {label}", b.label));
                }
                None => return Err(format!("END {label} without its BEGIN line")),
            }
        } else if let Some(b) = &mut open {
            // Encapsulated headers (`Proc-Type: ...`) only appear in encrypted private keys,
            // which are refused by label anyway.
            if !line.is_empty() && !line.contains(':') {
                b.body.push(line);
            }
        }
    }
    if let Some(b) = open {
        // An unterminated private key is still a private key.
        if !b.label.contains("PRIVATE KEY") {
            return Err(format!("the PEM {} block has no END line", b.label));
        }
        out.push(b);
    }
    Ok(out)
}

/// `SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE { OID, parameters }, BIT STRING }`.
fn spki(der: &[u8]) -> Result<(KeyFamily, Option<Curve>), String> {
    let malformed = || "the PUBLIC KEY block is not a DER SubjectPublicKeyInfo".to_owned();
    let (0x30, info, _) = tlv(der).ok_or_else(malformed)? else {
        return Err(malformed());
    };
    let (0x30, algorithm, _) = tlv(info).ok_or_else(malformed)? else {
        return Err(malformed());
    };
    let (0x06, oid, params) = tlv(algorithm).ok_or_else(malformed)? else {
        return Err(malformed());
    };
    match oid {
        RSA_ENCRYPTION => Ok((KeyFamily::Rsa, None)),
        ED25519 => Ok((KeyFamily::Ed, None)),
        EC_PUBLIC_KEY => match tlv(params) {
            Some((0x06, P256, _)) => Ok((KeyFamily::Ec, Some(Curve::P256))),
            Some((0x06, P384, _)) => Ok((KeyFamily::Ec, Some(Curve::P384))),
            _ => Err("EC keys must be on curve P-256 (ES256) or P-384 (ES384)".to_owned()),
        },
        RSASSA_PSS => Err(
            "RSASSA-PSS-only keys are not supported; give the key as a plain RSA key \
             (PS256, PS384 and PS512 use it too)"
                .to_owned(),
        ),
        ED448 => Err("Ed448 keys are not supported; EdDSA means Ed25519 here".to_owned()),
        _ => Err("the key is not an RSA, EC (P-256, P-384) or Ed25519 key".to_owned()),
    }
}

/// One DER element: tag, content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Standard base64 with padding (RFC 4648 §4), as PEM uses it.
fn base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGKkALGR29zN5OsVwJLfzOeJqKAg2v9B3pqtftVzKeak=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64("aGVsbG8h"), Some(b"hello!".to_vec()));
        assert_eq!(base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(base64(""), Some(Vec::new()));
        assert_eq!(base64("a"), None);
        assert_eq!(base64("a$b="), None);
    }

    #[test]
    fn sniffs_an_ed25519_key() {
        let key = public_key(ED.as_bytes()).unwrap();
        assert_eq!(key.family, KeyFamily::Ed);
        assert_eq!(key.curve, None);
        assert_eq!(key.pem, ED.as_bytes());
        // Text around the block, and CRLF line ends, are fine.
        let noisy = format!("a comment\r\n{}\r\n", ED.replace('\n', "\r\n"));
        assert_eq!(public_key(noisy.as_bytes()).unwrap().pem, ED.as_bytes());
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        let private =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            public_key(private.as_bytes()).unwrap_err(),
            "this is a private key; give the public key"
        );
        let both = format!("{ED}{private}");
        assert!(public_key(both.as_bytes()).unwrap_err().contains("private"));
        let ec_private = "-----BEGIN EC PRIVATE KEY-----\nxx\n";
        assert!(
            public_key(ec_private.as_bytes())
                .unwrap_err()
                .contains("private")
        );
        assert!(public_key(b"hello").unwrap_err().contains("not a PEM file"));
        assert!(public_key(&[0x30, 0x82, 0xff]).unwrap_err().contains("DER"));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            public_key(cert.as_bytes())
                .unwrap_err()
                .contains("certificate")
        );
        let junk = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(public_key(junk.as_bytes()).unwrap_err().contains("DER"));
        let open = "-----BEGIN PUBLIC KEY-----\nAAAA\n";
        assert!(public_key(open.as_bytes()).unwrap_err().contains("no END"));
    }

    #[test]
    fn certificate_bundles() {
        let cert = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        let bundle = format!("# a comment\r\n{cert}\n{}", cert.replace('\n', "\r\n"));
        assert_eq!(
            certificates(bundle.as_bytes()).unwrap(),
            cert.repeat(2).into_bytes()
        );
        assert!(
            certificates(ED.as_bytes())
                .unwrap_err()
                .contains("no -----BEGIN CERTIFICATE----- block")
        );
        assert!(certificates(b"").unwrap_err().contains("no -----BEGIN"));
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(
            certificates(format!("{cert}{key}").as_bytes())
                .unwrap_err()
                .contains("private key")
        );
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificates(format!("{cert}{junk}").as_bytes()).unwrap_err(),
            "certificate 2 is not a DER certificate"
        );
        let bad = "-----BEGIN CERTIFICATE-----\nA$==\n-----END CERTIFICATE-----\n";
        assert!(certificates(bad.as_bytes()).unwrap_err().contains("base64"));
        assert!(
            certificates(&[0xff, 0xfe])
                .unwrap_err()
                .contains("not a PEM")
        );
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            tlv(&[0x06, 0x01, 0xaa, 0xbb]),
            Some((0x06, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(
            tlv(&[0x04, 0x81, 0x02, 0x01, 0x02]),
            Some((0x04, &[1, 2][..], &[][..]))
        );
        assert_eq!(tlv(&[0x04, 0x05, 0x01]), None);
        assert_eq!(tlv(&[0x04, 0x80]), None);
    }
}
