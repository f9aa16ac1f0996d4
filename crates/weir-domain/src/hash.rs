//! A small, stable 64-bit hash. Consistent hashing must put a key on the same target in every
//! process and every release, so std's randomly keyed hasher will not do.

/// FNV-1a over the bytes, then a murmur3-style finalizer so nearby inputs spread over the ring.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_stable() {
        assert_eq!(super::stable_hash(b"abc"), super::stable_hash(b"abc"));
        assert_ne!(super::stable_hash(b"abc"), super::stable_hash(b"abd"));
    }
}
