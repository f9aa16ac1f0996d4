//! A second opinion on HTTP/1.1 request framing, for what the HTTP library accepts but an
//! edge must refuse.
//!
//! hyper reads ambiguous messages the way RFC 9112 tells a recipient to (Transfer-Encoding
//! wins over Content-Length, duplicate equal lengths merge, a bare LF ends a line) and then
//! hides the ambiguity: the dropped `Content-Length` never reaches the service. Each is a
//! request-smuggling pattern (some other parser on the path reads the message differently),
//! so weir refuses them outright. This guard watches the bytes of a connection as they are
//! read, finds each request head, and remembers the first one that is ambiguous; the service
//! answers that request (and the connection ends there) with 400.
//!
//! It follows message boundaries only: a head's lines, a body of `Content-Length` bytes, or
//! chunks. Everything else about validity is hyper's job; where the two disagree, hyper
//! either refused the message (and closed) or the guard refuses it, never neither.

use memchr::memchr;

/// How much of a line is kept across reads: enough for the names and values it reads.
const KEEP: usize = 40;

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// A line ended in LF without CR.
    BareLf,
    /// More than one `Content-Length` field.
    DuplicateLength,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndEncoding,
    /// A `Content-Length` that is not a plain decimal number.
    BadLength,
    /// A chunk-size line that is not hex digits, optional extensions and CRLF.
    BadChunk,
    /// `Transfer-Encoding` other than one field saying exactly `chunked`.
    BadEncoding,
}

impl Ambiguity {
    pub fn describe(self) -> &'static str {
        match self {
            Self::BareLf => "a line of the request ends in a bare LF",
            Self::DuplicateLength => "the request has more than one Content-Length",
            Self::LengthAndEncoding => "the request has both Content-Length and Transfer-Encoding",
            Self::BadLength => "the request's Content-Length is not a decimal number",
            Self::BadChunk => "the request has a malformed chunk size line",
            Self::BadEncoding => "the request's Transfer-Encoding is not exactly `chunked`",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading head lines; `first` until the request line is complete.
    Head {
        first: bool,
    },
    /// Skipping this many body bytes.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its two bytes have been read.
    ChunkEnd(u8),
    Trailers,
    /// Not HTTP/1 (the HTTP/2 preface), past an upgrade, or past a refusal: not watched.
    Off,
}

/// The guard of one connection. Feed it every byte read, in order.
#[derive(Debug, Clone)]
pub struct Framing {
    state: State,
    /// Request heads completed so far.
    heads: u32,
    /// The first refused head's index and why.
    refused: Option<(u32, Ambiguity)>,
    /// The line being read: its first [`KEEP`] bytes, its length and its last byte.
    line: [u8; KEEP],
    line_len: usize,
    last: u8,
    /// The head being read.
    lengths: u8,
    length: Option<u64>,
    encoded: bool,
    upgrade: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Self {
            state: State::Head { first: true },
            heads: 0,
            refused: None,
            line: [0; KEEP],
            line_len: 0,
            last: 0,
            lengths: 0,
            length: None,
            encoded: false,
            upgrade: false,
        }
    }
}

impl Framing {
    /// The index (from 0) of the first refused request and why, if one was.
    pub fn refused(&self) -> Option<(u32, Ambiguity)> {
        self.refused
    }

    /// Whether the guard stopped watching (HTTP/2, an upgrade, or a refusal).
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Reads the next bytes of the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) => {
                    let take = usize::try_from(n).map_or(bytes.len(), |n| n.min(bytes.len()));
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head { first: true }
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = usize::try_from(n).map_or(bytes.len(), |n| n.min(bytes.len()));
                    bytes = &bytes[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(0)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(seen) => {
                    let want = if seen == 0 { b'\r' } else { b'\n' };
                    if bytes[0] != want {
                        self.refuse_current(Ambiguity::BadChunk);
                        return;
                    }
                    bytes = &bytes[1..];
                    self.state = if seen == 0 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                }
                State::Head { .. } | State::ChunkSize | State::Trailers => {
                    let Some(end) = memchr(b'\n', bytes) else {
                        self.extend_line(bytes);
                        return;
                    };
                    if self.line_len == 0 {
                        // The whole line is in this read (the usual case): read it in place.
                        let line = &bytes[..end];
                        let last = line.last().copied().unwrap_or(0);
                        self.end_line(&line[..end.min(KEEP)], end, last);
                    } else {
                        self.extend_line(&bytes[..end]);
                        let kept = self.line;
                        let len = self.line_len;
                        self.end_line(&kept[..len.min(KEEP)], len, self.last);
                    }
                    bytes = &bytes[end + 1..];
                    self.line_len = 0;
                    self.last = 0;
                }
            }
        }
    }

    fn extend_line(&mut self, part: &[u8]) {
        if let Some(&b) = part.last() {
            let room = KEEP.saturating_sub(self.line_len).min(part.len());
            self.line[self.line_len.min(KEEP)..self.line_len.min(KEEP) + room]
                .copy_from_slice(&part[..room]);
            self.line_len += part.len();
            self.last = b;
        }
    }

    /// The line just ended with LF: `start` is its first bytes (up to [`KEEP`], CR
    /// included), `line_len` its length and `last` its last byte.
    fn end_line(&mut self, start: &[u8], line_len: usize, last: u8) {
        if last != b'\r' {
            match self.state {
                State::Head { .. } | State::Trailers => self.refuse_head(Ambiguity::BareLf),
                _ => self.refuse_current(Ambiguity::BadChunk),
            }
            return;
        }
        let len = line_len - 1;
        let kept = &start[..len.min(start.len())];
        match self.state {
            State::Head { first: true } => {
                // Empty lines before a request line are allowed (RFC 9112 §2.2).
                if len == 0 {
                    return;
                }
                if kept.starts_with(b"PRI * HTTP/2.0") {
                    self.state = State::Off;
                    return;
                }
                self.state = State::Head { first: false };
            }
            State::Head { first: false } => {
                if len == 0 {
                    self.end_head();
                } else {
                    self.header_line(kept, len);
                }
            }
            State::ChunkSize => match chunk_size(kept) {
                Some(0) => self.state = State::Trailers,
                Some(n) => self.state = State::ChunkData(n),
                None => self.refuse_current(Ambiguity::BadChunk),
            },
            State::Trailers if len == 0 => self.state = State::Head { first: true },
            _ => {}
        }
    }

    fn header_line(&mut self, kept: &[u8], len: usize) {
        // Most lines name none of the three fields: one byte tells.
        if !matches!(kept.first(), Some(b'c' | b'C' | b't' | b'T' | b'u' | b'U')) {
            return;
        }
        let Some(colon) = kept.iter().position(|&b| b == b':') else {
            return;
        };
        let name = &kept[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths = self.lengths.saturating_add(1);
            // A value longer than what is kept cannot be a sane length anyway.
            self.length = if len > KEEP {
                None
            } else {
                decimal(trim(&kept[colon + 1..]))
            };
            if self.length.is_none() {
                self.refuse_head(Ambiguity::BadLength);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the plain form: `chunked ` or `gzip, chunked` are read differently by
            // different parsers (and weir could not forward a gzip transfer coding anyway).
            let value = &kept[colon + 1..];
            let value = &value[value
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count()..];
            if self.encoded || len > KEEP || !value.eq_ignore_ascii_case(b"chunked") {
                self.refuse_head(Ambiguity::BadEncoding);
            }
            self.encoded = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }

    fn end_head(&mut self) {
        let index = self.heads;
        self.heads = self.heads.saturating_add(1);
        if self.refused.is_some() {
            self.state = State::Off;
            return;
        }
        if self.lengths > 1 {
            self.refused = Some((index, Ambiguity::DuplicateLength));
        } else if self.lengths == 1 && self.encoded {
            self.refused = Some((index, Ambiguity::LengthAndEncoding));
        }
        self.state = if self.refused.is_some() || self.upgrade {
            // After an upgrade the bytes are another protocol's.
            State::Off
        } else if self.encoded {
            State::ChunkSize
        } else {
            match self.length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head { first: true },
            }
        };
        self.lengths = 0;
        self.length = None;
        self.encoded = false;
        self.upgrade = false;
    }

    /// Refuses the head being read; its index is the next one.
    fn refuse_head(&mut self, why: Ambiguity) {
        if self.refused.is_none() {
            self.refused = Some((self.heads, why));
        }
        if why == Ambiguity::BareLf {
            // Where the head ends is itself in doubt.
            self.state = State::Off;
        }
    }

    /// Refuses the message whose body is being read (its head is the last one counted).
    fn refuse_current(&mut self, why: Ambiguity) {
        if self.refused.is_none() {
            self.refused = Some((self.heads.saturating_sub(1), why));
        }
        self.state = State::Off;
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// A chunk-size line without its CRLF: hex digits, then optional whitespace and extensions.
fn chunk_size(kept: &[u8]) -> Option<u64> {
    let digits = kept.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    // Whitespace, then extensions, as hyper reads them; an extension's text is not checked.
    let rest = trim(&kept[digits..]);
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    kept[..digits].iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests;
