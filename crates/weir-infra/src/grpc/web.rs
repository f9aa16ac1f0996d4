//! gRPC-Web: what a browser needs on top of gRPC. Browsers cannot read HTTP trailers, so
//! the trailers travel as a last frame in the body (flag `0x80`); and `grpc-web-text` bodies
//! are base64, for clients that can only handle text.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use bytes::Bytes;
use http::HeaderMap;

/// The flags byte of a trailer frame.
pub const TRAILER_FLAG: u8 = 0x80;

/// The trailers as gRPC-Web's final frame: `name: value\r\n` per field, names lower case
/// (the `http` crate keeps them so).
#[must_use]
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    super::framed(TRAILER_FLAG, &block)
}

/// Base64 for a streamed `grpc-web-text` response. Only whole 3-byte groups are encoded as
/// they come, so the concatenated output is one unbroken base64 text with padding only at
/// the very end.
#[derive(Debug, Default)]
pub struct TextEncoder {
    /// At most two bytes waiting for the rest of their group.
    rest: Vec<u8>,
}

impl TextEncoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The base64 of every whole group now available; the remainder waits.
    pub fn encode(&mut self, chunk: &[u8]) -> Bytes {
        self.rest.extend_from_slice(chunk);
        let whole = self.rest.len() / 3 * 3;
        if whole == 0 {
            return Bytes::new();
        }
        let out = STANDARD.encode(&self.rest[..whole]);
        self.rest.drain(..whole);
        Bytes::from(out)
    }

    /// The remainder, padded. Nothing when the input was a multiple of three bytes.
    pub fn finish(&mut self) -> Bytes {
        if self.rest.is_empty() {
            return Bytes::new();
        }
        let out = STANDARD.encode(&self.rest);
        self.rest.clear();
        Bytes::from(out)
    }
}

/// Decodes a `grpc-web-text` request body. Clients may encode each message on its own, so
/// the body can be several padded base64 texts one after another: each ends with the
/// 4-character group that holds its padding.
pub fn decode_text(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    let mut start = 0;
    while start < body.len() {
        let end = match body[start..].iter().position(|&b| b == b'=') {
            Some(i) => (start + (i / 4 + 1) * 4).min(body.len()),
            None => body.len(),
        };
        STANDARD_PAD_INDIFFERENT
            .decode_vec(&body[start..end], &mut out)
            .map_err(|e| format!("the grpc-web-text body is not base64: {e}"))?;
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::HeaderValue;

    use super::*;

    #[test]
    fn trailers_become_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("Grpc-Message", HeaderValue::from_static("all good"));
        let frame = trailer_frame(&trailers);
        let block = b"grpc-status: 0\r\ngrpc-message: all good\r\n";
        assert_eq!(frame[0], 0x80);
        assert_eq!(
            &frame[1..5],
            &u32::try_from(block.len()).unwrap().to_be_bytes()
        );
        assert_eq!(&frame[5..], block);
        assert_eq!(&trailer_frame(&HeaderMap::new())[..], &[0x80, 0, 0, 0, 0]);
    }

    #[test]
    fn streamed_text_equals_encoding_at_once() {
        let data: Vec<u8> = (0..=255).collect();
        for split in [1, 2, 3, 4, 5, 7, 100] {
            let mut encoder = TextEncoder::new();
            let mut text = Vec::new();
            for chunk in data.chunks(split) {
                text.extend_from_slice(&encoder.encode(chunk));
            }
            text.extend_from_slice(&encoder.finish());
            assert_eq!(text, STANDARD.encode(&data).into_bytes(), "split {split}");
            assert_eq!(decode_text(&text).unwrap(), data);
        }
    }

    #[test]
    fn text_encoder_holds_partial_groups() {
        let mut encoder = TextEncoder::new();
        assert!(encoder.encode(b"ab").is_empty());
        assert_eq!(&encoder.encode(b"cd")[..], b"YWJj");
        assert_eq!(&encoder.finish()[..], b"ZA==");
        assert!(encoder.finish().is_empty());
    }

    #[test]
    fn concatenated_padded_texts_decode() {
        let body = [
            STANDARD.encode(b"a"),
            STANDARD.encode(b"bc"),
            STANDARD.encode(b"def"),
        ]
        .concat();
        assert_eq!(body, "YQ==YmM=ZGVm");
        assert_eq!(decode_text(body.as_bytes()).unwrap(), b"abcdef");
        let frames = [
            STANDARD.encode(super::super::frame(b"hello")),
            STANDARD.encode(b"!"),
        ];
        assert_eq!(
            decode_text(frames.concat().as_bytes()).unwrap(),
            [&super::super::frame(b"hello")[..], b"!"].concat()
        );
        assert_eq!(decode_text(b"").unwrap(), b"");
        assert_eq!(decode_text(b"YQ").unwrap(), b"a");
    }

    #[test]
    fn bad_text_is_refused() {
        assert!(decode_text(b"not base64!").is_err());
        assert!(decode_text(b"YQ===").is_err());
    }
}
