//! REST → gRPC transcoding and the gRPC wire formats.
//!
//! A [`Transcoder`] is built once per route from its [`GrpcSpec`] (descriptors decoded, each
//! rule's messages and fields resolved), so a request only walks prepared descriptors: it
//! turns path bindings, query and JSON body into one length-prefixed request message, and a
//! [`ResponseDecoder`] turns the upstream's frames back into proto3 JSON, one message at a
//! time, whatever the chunking. [`web`] holds what gRPC-Web adds to the HTTP/2 protocol.
//!
//! [`GrpcSpec`]: weir_domain::grpc::GrpcSpec

mod error;
mod fields;
mod request;
mod response;
pub mod web;

use bytes::{BufMut, Bytes, BytesMut};

pub use error::TranscodeError;
pub use request::Transcoder;
pub use response::{MAX_MESSAGE, ResponseDecoder};

/// The size of a frame's header: a flags byte and a big-endian `u32` length.
pub const FRAME_HEADER: usize = 5;

/// One uncompressed gRPC message frame: `0x00`, the length (u32, big endian), the message.
#[must_use]
pub fn frame(message: &[u8]) -> Bytes {
    framed(0, message)
}

/// A frame with the given flags byte.
fn framed(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER + payload.len());
    out.put_u8(flags);
    // gRPC's length prefix is 32 bits; saturating keeps this total, and a 4 GiB message is
    // refused long before it reaches here by the body limits.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests;
