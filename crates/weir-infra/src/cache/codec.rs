//! One Redis value per stored response: its times, status, headers and body together, so a
//! lookup is one `GET` and a value can never be half written.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "wC" VERSION                  3 bytes: magic and version
//! stored_at initial_age fresh_for stale_while_revalidate stale_if_error   5 × u64
//! status                        u16
//! header count                  u32
//!   name length u16, name, value length u32, value      per header, in order
//! body length                   u64, then exactly that many bytes, nothing after
//! ```
//!
//! Decoding trusts nothing: another version, a truncated value, a length past the end,
//! an invalid status or header, or trailing bytes are all [`Malformed`] (a miss to the
//! caller), never a panic and never an allocation sized by the value's own claims.

use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::{ResponseParts, StoredResponse, Times};

const MAGIC: &[u8; 2] = b"wC";
/// Bumped on any change of layout: a value written by another version is a miss, not garbage.
const VERSION: u8 = 1;
/// The fixed part before the headers: magic, version, five times, status, header count.
const FIXED: usize = 3 + 5 * 8 + 2 + 4;
/// The least a header can take (empty name and value), to bound a claimed header count.
const MIN_HEADER: usize = 2 + 4;

/// The value was not written by this version of the store (or was damaged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

/// The value for `r`.
pub(crate) fn encode(r: &ResponseParts<'_>) -> Vec<u8> {
    let headers: usize = r
        .headers
        .iter()
        .map(|(n, v)| MIN_HEADER + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(FIXED + headers + 8 + r.body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let t = r.times;
    for n in [
        t.stored_at,
        t.initial_age,
        t.fresh_for,
        t.stale_while_revalidate,
        t.stale_if_error,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(&r.status.as_u16().to_be_bytes());
    // A HeaderMap holds far fewer than 2^32 entries (its own limit is 32 768).
    out.extend_from_slice(
        &u32::try_from(r.headers.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for (name, value) in r.headers {
        let name = name.as_str().as_bytes();
        // Header names are short (hyper refuses long ones); values are bounded by the
        // header size limit, far below 4 GiB.
        out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&(r.body.len() as u64).to_be_bytes());
    out.extend_from_slice(r.body);
    out
}

/// The response in `value`; the body is a slice of `value`, not a copy.
pub(crate) fn decode(mut value: Bytes) -> Result<StoredResponse, Malformed> {
    if value.len() < FIXED || &value[..2] != MAGIC || value[2] != VERSION {
        return Err(Malformed);
    }
    value.advance(3);
    let times = Times {
        stored_at: value.get_u64(),
        initial_age: value.get_u64(),
        fresh_for: value.get_u64(),
        stale_while_revalidate: value.get_u64(),
        stale_if_error: value.get_u64(),
    };
    let status = StatusCode::from_u16(value.get_u16()).map_err(|_| Malformed)?;
    let count = value.get_u32() as usize;
    if count > value.len() / MIN_HEADER {
        return Err(Malformed);
    }
    let mut headers = HeaderMap::try_with_capacity(count).map_err(|_| Malformed)?;
    for _ in 0..count {
        let name = take(&mut value, 2)?;
        let name = HeaderName::from_bytes(&name).map_err(|_| Malformed)?;
        let v = take(&mut value, 4)?;
        let v = HeaderValue::from_maybe_shared(v).map_err(|_| Malformed)?;
        headers.try_append(name, v).map_err(|_| Malformed)?;
    }
    let body = take(&mut value, 8)?;
    if !value.is_empty() {
        return Err(Malformed);
    }
    Ok(StoredResponse {
        status,
        headers,
        body,
        times,
    })
}

/// A length prefix of `width` bytes (2, 4 or 8), then that many bytes.
fn take(value: &mut Bytes, width: usize) -> Result<Bytes, Malformed> {
    if value.len() < width {
        return Err(Malformed);
    }
    let len = value.get_uint(width);
    let len = usize::try_from(len).map_err(|_| Malformed)?;
    if len > value.len() {
        return Err(Malformed);
    }
    Ok(value.split_to(len))
}
