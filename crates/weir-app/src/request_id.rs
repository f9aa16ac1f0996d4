//! Request ids: kept when the client sent a well-formed one, generated otherwise.
//! Generated ids are ULIDs (time-ordered, 26 characters), so logs sort by time.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Accepts 1-128 characters of `[A-Za-z0-9._:-]`: enough for UUIDs, ULIDs and trace ids,
/// and nothing that could split a log line or smuggle a header.
#[must_use]
pub fn is_well_formed(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// A new ULID.
#[must_use]
pub fn generate() -> HeaderValue {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let random = (u128::from(next_random()) << 16) | u128::from(next_random() as u16);
    let value: u128 = (millis << 80) | (random & ((1 << 80) - 1));
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *slot = CROCKFORD[((value >> shift) & 0x1f) as usize];
    }
    // 26 Crockford characters are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// xorshift64*: fast, per thread, no lock. Not for secrets: used for ids and load balancing.
#[must_use]
pub fn next_random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 26);
        assert!(is_well_formed(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_hostile_ids() {
        assert!(!is_well_formed(&HeaderValue::from_static("a b")));
        assert!(!is_well_formed(&HeaderValue::from_static("")));
        assert!(!is_well_formed(
            &HeaderValue::from_bytes(&[b'x'; 129]).unwrap()
        ));
        assert!(is_well_formed(&HeaderValue::from_static(
            "3fa85f64-5717-4562-b3fc-2c963f66afa6"
        )));
    }
}
