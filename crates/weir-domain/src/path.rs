//! Request-path normalization. The path is normalized once, and the normalized form is both
//! what is routed and what is forwarded: a route and the upstream behind it can never
//! disagree about which resource was asked for.
//!
//! Rules, in order: percent-encodings of unreserved characters are decoded and all other
//! encodings get upper-case hex (RFC 3986 §6.2.2.1-2); runs of `/` collapse to one; dot
//! segments are removed (RFC 3986 §5.2.4). Reserved characters stay encoded (`%2F` is not a
//! separator). A malformed encoding or an encoded NUL is an error: such a path is rejected.

use std::borrow::Cow;

/// Why a path was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form: it must start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%00`: no upstream means a NUL byte in a path.
    EncodedNul,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the request path must start with '/'",
            Self::BadPercentEncoding => "the request path has a malformed percent-encoding",
            Self::EncodedNul => "the request path encodes a NUL byte",
        })
    }
}

/// Normalizes a request path (without its query). Borrows when the path is already normal,
/// which is the common case, so most requests pay one scan and no allocation.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when no rule would change the path.
fn is_normal(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                let next = bytes.get(i + 1).copied();
                let next2 = bytes.get(i + 2).copied();
                if next.is_none() || next == Some(b'/') {
                    return false;
                }
                if next == Some(b'.') && (next2.is_none() || next2 == Some(b'/')) {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Bytes, not chars: a raw UTF-8 sequence must pass through as its own bytes.
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadPercentEncoding);
        };
        let value = hi * 16 + lo;
        if value == 0 {
            return Err(PathError::EncodedNul);
        }
        if is_unreserved(value) {
            out.push(value);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        }
        i += 3;
    }
    // The input was UTF-8 and only ASCII was decoded, so this cannot fail.
    String::from_utf8(out).map_err(|_| PathError::BadPercentEncoding)
}

/// True when a normalized path holds a separator some servers see and others do not: an
/// encoded slash or backslash (`%2F`, `%5C`), a raw backslash, or a segment that is empty or
/// a dot segment once its parameters are dropped (`;x`, `..;x`, which servlet containers
/// read as an empty segment and `..`). weir routes such a path as
/// written, but an origin that decodes it would see another path than the one routed, so
/// routes refuse it unless they allow it.
#[must_use]
pub fn is_ambiguous(normalized: &str) -> bool {
    let bytes = normalized.as_bytes();
    if memchr::memchr3(b'%', b'\\', b';', bytes).is_none() {
        return false;
    }
    bytes.contains(&b'\\')
        || bytes.windows(3).any(|w| w == b"%2F" || w == b"%5C")
        || normalized
            .split('/')
            .any(|s| s.starts_with(';') || s.starts_with(".;") || s.starts_with("..;"))
}

/// Collapses `//` and resolves `.` and `..` segments; `..` never climbs above the root.
/// A trailing slash (or a trailing dot segment, which names a directory) is kept.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p)
            .map(Cow::into_owned)
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn raw_utf8_passes_through_normalization() {
        assert_eq!(n("/caf\u{e9}/./x"), "/caf\u{e9}/x");
        assert_eq!(n("/\u{1f600}//%41"), "/\u{1f600}/A");
    }

    #[test]
    fn ambiguous_separators_are_found() {
        for p in [
            "/a%2Fb",
            "/a%5Cb",
            "/a\\b",
            "/p/..;/admin",
            "/.;x/a",
            "/a/..;",
            "/;/admin",
        ] {
            assert!(is_ambiguous(&n(p)), "{p}");
        }
        for p in ["/a/b", "/a;b", "/a/b;c=d", "/%20", "/a/...;x", "/%2E%2E%3B"] {
            assert!(!is_ambiguous(&n(p)), "{p}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b.c/d"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/../b"), "/b");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("//a///b//"), "/a/b/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(n("/%61%62c"), "/abc");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/%2e%2e/secret"), "/secret");
        assert_eq!(n("/a/%2E%2E/b"), "/b");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/%zz"), "ERR BadPercentEncoding");
        assert_eq!(n("/%4"), "ERR BadPercentEncoding");
        assert_eq!(n("/a%00"), "ERR EncodedNul");
        assert_eq!(n("a"), "ERR NotAbsolute");
    }

    #[test]
    fn double_encoding_is_not_decoded_twice() {
        // %252e is "%2e" literally: it stays a literal, never becomes a dot segment.
        assert_eq!(n("/%252e%252e/x"), "/%252e%252e/x");
    }

    #[test]
    fn normalizing_is_idempotent() {
        for p in ["/a/../b//c/./%7e", "/x/%2F/..", "/%41/%2e/"] {
            let once = n(p);
            assert_eq!(n(&once), once, "{p}");
        }
    }
}
