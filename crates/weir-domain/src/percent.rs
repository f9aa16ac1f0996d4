//! Percent-encoding (RFC 3986 §2.1), one implementation for every place weir reads or
//! writes it: query values and form bodies, path template values, `grpc-message`, Redis
//! URLs, Consul names. Callers differ only in which bytes stay as they are and in how a
//! malformed escape is taken, so those are the parameters.

/// RFC 3986's unreserved characters: safe anywhere in a URI.
#[must_use]
pub const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `bytes` to `out`, every byte `keep` refuses written as `%XX` (upper-case hex).
pub fn encode(bytes: &[u8], keep: impl Fn(u8) -> bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// How [`decode`] reads its input.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decoding {
    /// `+` is a space (`application/x-www-form-urlencoded`).
    pub plus_is_space: bool,
    /// A `%` without two hex digits stays as written instead of failing.
    pub lenient: bool,
    /// `%2F` stays as written (a `/` that was data, inside a path value).
    pub keep_slash: bool,
}

/// A `%` not followed by two hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// The bytes `raw` stands for.
///
/// # Errors
/// A malformed escape, unless `how.lenient`.
pub fn decode(raw: &[u8], how: Decoding) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' if how.plus_is_space => out.push(b' '),
            b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => {
                    let b = h << 4 | l;
                    if how.keep_slash && b == b'/' {
                        out.extend_from_slice(&raw[i..i + 3]);
                    } else {
                        out.push(b);
                    }
                    i += 2;
                }
                _ if how.lenient => out.push(b'%'),
                _ => return Err(Malformed),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_is_not_kept() {
        let mut out = String::new();
        encode("a b/ü%".as_bytes(), unreserved, &mut out);
        assert_eq!(out, "a%20b%2F%C3%BC%25");
    }

    #[test]
    fn decodes_by_the_callers_rules() {
        let strict = Decoding::default();
        assert_eq!(decode(b"a%20b+c", strict).unwrap(), b"a b+c");
        assert_eq!(decode(b"%zz", strict), Err(Malformed));
        assert_eq!(decode(b"%4", strict), Err(Malformed));
        let form = Decoding {
            plus_is_space: true,
            ..strict
        };
        assert_eq!(decode(b"a+b%2b", form).unwrap(), b"a b+");
        let lenient = Decoding {
            lenient: true,
            ..strict
        };
        assert_eq!(decode(b"50% %4 %41", lenient).unwrap(), b"50% %4 A");
        let path = Decoding {
            keep_slash: true,
            ..strict
        };
        assert_eq!(decode(b"a%2Fb%2fc%20", path).unwrap(), b"a%2Fb%2fc ");
    }
}
