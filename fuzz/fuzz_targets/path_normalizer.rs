//! `weir_domain::path::normalize`, the one normalization whose output is both routed and
//! forwarded. Its module documents the rules: unreserved escapes decoded, other escapes in
//! upper-case hex, `//` collapsed, dot segments removed, reserved characters (`%2F`) left
//! encoded so they never become separators, and a malformed escape or `%00` rejected.
//!
//! Checked here: no panic; the output equals a reference that decodes each raw segment on
//! its own (so decoding cannot change where segments begin and end); normalizing is
//! idempotent; the output has no empty or dot segments, only upper-case escapes of bytes
//! that must stay escaped, and no more separators or encoded separators than the input.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weir_domain::path::{PathError, normalize};

/// Pieces chosen to meet the rules' edges far more often than random bytes would.
#[derive(Arbitrary, Debug)]
enum Piece {
    Slash,
    Dot,
    DotDot,
    /// `%2e`, `%2E`, mixed with literal dots.
    EncodedDot(u8),
    /// `%2f` / `%2F` / `%5c` / `%5C`: separators as data.
    EncodedSeparator(u8),
    /// Overlong UTF-8 forms of `/` and `.` (`%c0%af`, `%e0%80%af`, `%c0%ae`).
    Overlong(u8),
    /// `%XX` of any byte, upper or lower case.
    Escape(u8, bool),
    /// A `%` with zero or one hex digit after it.
    Broken(u8),
    Text(String),
    Char(char),
}

fn render(pieces: &[Piece]) -> String {
    let mut s = String::from("/");
    for p in pieces {
        match p {
            Piece::Slash => s.push('/'),
            Piece::Dot => s.push('.'),
            Piece::DotDot => s.push_str(".."),
            Piece::EncodedDot(v) => s.push_str(["%2e", "%2E", ".%2e", "%2e."][usize::from(*v) % 4]),
            Piece::EncodedSeparator(v) => {
                s.push_str(["%2f", "%2F", "%5c", "%5C"][usize::from(*v) % 4]);
            }
            Piece::Overlong(v) => {
                s.push_str(["%c0%af", "%e0%80%af", "%c0%ae", "%C0%AE%C0%AE"][usize::from(*v) % 4]);
            }
            Piece::Escape(b, upper) => {
                if *upper {
                    s.push_str(&format!("%{b:02X}"));
                } else {
                    s.push_str(&format!("%{b:02x}"));
                }
            }
            Piece::Broken(v) => s.push_str(["%", "%4", "%g0", "%0"][usize::from(*v) % 4]),
            Piece::Text(t) => s.push_str(t),
            Piece::Char(c) => s.push(*c),
        }
    }
    s
}

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .map(|d| u8::try_from(d).unwrap_or(0))
}

/// The rules applied segment by segment, on bytes: each raw segment (between literal `/`)
/// is decoded on its own, then dot segments are resolved.
fn reference(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for raw in bytes[1..].split(|b| *b == b'/') {
        let mut seg = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] != b'%' {
                seg.push(raw[i]);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercentEncoding);
            };
            let v = h * 16 + l;
            if v == 0 {
                return Err(PathError::EncodedNul);
            }
            if unreserved(v) {
                seg.push(v);
            } else {
                seg.extend_from_slice(format!("%{v:02X}").as_bytes());
            }
            i += 3;
        }
        segments.push(seg);
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut trailing_slash = false;
    for seg in segments {
        trailing_slash = true;
        match seg.as_slice() {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            _ => {
                trailing_slash = false;
                kept.push(seg);
            }
        }
    }
    let mut out = Vec::new();
    for s in &kept {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    // Only whole bytes of the input were copied, so the bytes are the input's UTF-8.
    Ok(String::from_utf8(out).expect("segments keep the input's UTF-8"))
}

fn count(haystack: &str, needles: &[&str]) -> usize {
    needles.iter().map(|n| haystack.matches(n).count()).sum()
}

// An input that starts with `/` is the path itself (the seeds are such paths); any other is
// decoded into pieces.
fuzz_target!(|data: &[u8]| {
    let path = if data.first() == Some(&b'/') {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        s.to_owned()
    } else {
        let Ok(pieces) = Vec::<Piece>::arbitrary_take_rest(arbitrary::Unstructured::new(data))
        else {
            return;
        };
        render(&pieces)
    };
    let got = normalize(&path).map(|c| c.into_owned());
    assert_eq!(got, reference(&path), "path {path:?}");
    let Ok(out) = got else { return };

    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(!out.contains("//"), "{path:?} -> {out:?}");
    for seg in out[1..].split('/') {
        assert!(
            seg != "." && seg != "..",
            "dot segment in {out:?} (from {path:?})"
        );
    }
    // `%00` is refused; a raw NUL (which the `http` crate never lets into a path) is not
    // this function's concern, but decoding must not make one.
    assert!(
        out.matches('\0').count() <= path.matches('\0').count(),
        "{path:?} -> {out:?}"
    );
    let b = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let (h, l) = (b.get(i + 1).copied(), b.get(i + 2).copied());
        let upper =
            |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c));
        assert!(
            upper(h) && upper(l),
            "escape at {i} of {out:?} (from {path:?})"
        );
        let v = hex(h.unwrap_or(0)).unwrap_or(0) * 16 + hex(l.unwrap_or(0)).unwrap_or(0);
        assert!(v != 0 && !unreserved(v), "%{v:02X} left encoded in {out:?}");
    }
    // Decoding never adds a separator, literal or encoded.
    assert!(
        out.matches('/').count() <= path.matches('/').count().max(1),
        "{path:?} -> {out:?}"
    );
    assert!(
        out.matches('\\').count() <= path.matches('\\').count(),
        "{path:?} -> {out:?}"
    );
    assert!(
        count(&out, &["%2F", "%5C"]) <= count(&path, &["%2F", "%2f", "%5C", "%5c"]),
        "{path:?} -> {out:?}"
    );
    let again = normalize(&out).map(|c| c.into_owned());
    assert_eq!(
        again.as_deref(),
        Ok(out.as_str()),
        "not idempotent (from {path:?})"
    );
});
