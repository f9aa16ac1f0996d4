//! W3C Trace Context: the `traceparent` and `tracestate` headers and the sampling decision.
//!
//! The gateway joins the trace a client started (or starts one), tells the upstream which
//! span it is in, and decides once per trace whether spans are recorded. These are rules of
//! the wire format (<https://www.w3.org/TR/trace-context/>), not of any library, so they live
//! here as pure functions: parsing and encoding work on bytes in fixed arrays, with no
//! allocation on the request path, and the exporter in `weir-infra` only ever sees valid ids.

/// A trace's 16-byte id. All zeroes is the spec's "invalid" value, never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's 8-byte id. All zeroes is the spec's "invalid" value, never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Lowercase hex, as the headers and most trace UIs show it.
    #[must_use]
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }

    /// False for the all-zero id.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl SpanId {
    /// Lowercase hex, as the headers and most trace UIs show it.
    #[must_use]
    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        out
    }

    /// False for the all-zero id.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
}

/// A W3C `traceparent` (version 00): <https://www.w3.org/TR/trace-context/>
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the span that receives this header.
    pub parent_id: SpanId,
    /// Bit 0 is "sampled"; other bits are passed on as received.
    pub flags: u8,
}

/// The bit of `flags` saying the caller records this trace.
pub const FLAG_SAMPLED: u8 = 0x01;

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a header value; None when malformed per the spec (wrong length, version ff,
    /// uppercase or non-hex digits, all-zero ids, misplaced dashes).
    ///
    /// A future version (above 00) is read by the spec's forward-compatibility rule: its first
    /// 55 bytes must have the version 00 layout, and anything longer must continue with `-`.
    /// The result is then a version 00 value, which is what [`encode`](Self::encode) sends on.
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = parse_hex_byte(value[0], value[1])?;
        match version {
            // Reserved so that no version can be mistaken for "anything goes".
            0xff => return None,
            0x00 if value.len() != TRACEPARENT_LEN => return None,
            // A later version may append fields, always after a dash.
            _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace = [0u8; 16];
        parse_hex_into(&value[3..35], &mut trace)?;
        let mut span = [0u8; 8];
        parse_hex_into(&value[36..52], &mut span)?;
        let flags = parse_hex_byte(value[53], value[54])?;
        let parsed = TraceParent {
            trace_id: TraceId(trace),
            parent_id: SpanId(span),
            flags,
        };
        (parsed.trace_id.is_valid() && parsed.parent_id.is_valid()).then_some(parsed)
    }

    /// Whether the caller records this trace (flags bit 0).
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// `00-<trace>-<span>-<flags>`: 55 bytes, no allocation.
    #[must_use]
    pub fn encode(&self) -> [u8; 55] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        out[2] = b'-';
        hex_into(&self.trace_id.0, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.parent_id.0, &mut out[36..52]);
        out[52] = b'-';
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }
}

/// The spec's limits: receivers must be able to take 32 list members and 512 bytes; beyond
/// that the header is not one we promise to carry intact, so it is dropped rather than cut.
const TRACESTATE_MAX_MEMBERS: usize = 32;
const TRACESTATE_MAX_LEN: usize = 512;

/// `tracestate` is passed on unchanged but must be well-formed to be kept: at most 32 list
/// members, total ≤ 512 bytes, every member `key=value` with the spec's key and value
/// grammar, keys unique. Returns false if not, and for a value with no members at all
/// (empty or only commas and blanks), which is nothing worth sending on.
#[must_use]
pub fn tracestate_ok(value: &[u8]) -> bool {
    if value.len() > TRACESTATE_MAX_LEN {
        return false;
    }
    let mut keys: [&[u8]; TRACESTATE_MAX_MEMBERS] = [&[]; TRACESTATE_MAX_MEMBERS];
    let mut members = 0;
    for raw in value.split(|&b| b == b',') {
        let member = trim_ows(raw);
        // The grammar allows empty members between commas; they count for nothing.
        if member.is_empty() {
            continue;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, val) = (&member[..eq], &member[eq + 1..]);
        if !tracestate_key_ok(key) || !tracestate_value_ok(val) {
            return false;
        }
        if members == TRACESTATE_MAX_MEMBERS || keys[..members].contains(&key) {
            return false;
        }
        keys[members] = key;
        members += 1;
    }
    members > 0
}

/// Parent-based ratio sampling: with a parent, follow its sampled flag; without one, sample
/// when the trace id's low 8 bytes (big-endian u64) are below `ratio` * 2^64. The comparison
/// is done as OpenTelemetry's `TraceIdRatioBased` does it (those 64 bits shifted right by
/// one, against `ratio` * 2^63), so a trace is sampled the same in every service that uses
/// the same ratio. `ratio` is clamped to [0, 1]; NaN counts as 0.
#[must_use]
pub fn sample(ratio: f64, parent: Option<&TraceParent>, trace_id: &TraceId) -> bool {
    if let Some(parent) = parent {
        return parent.sampled();
    }
    if ratio >= 1.0 {
        return true;
    }
    // `max` maps NaN to 0.0; the float-to-int cast saturates, so no overflow either way.
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// Lowercase only: the spec makes uppercase hex in `traceparent` invalid.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

fn parse_hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (pair, byte) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *byte = parse_hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `simple-key = lcalpha 0*255(keychar)`, or
/// `tenant-id "@" system-id` with `tenant-id = (lcalpha / DIGIT) 0*240(keychar)` and
/// `system-id = lcalpha 0*13(keychar)`.
fn tracestate_key_ok(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            matches!(key, [b'a'..=b'z', rest @ ..] if rest.len() <= 255 && rest.iter().all(|&b| key_char(b)))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            let tenant_ok = matches!(tenant, [b'a'..=b'z' | b'0'..=b'9', rest @ ..]
                if rest.len() <= 240 && rest.iter().all(|&b| key_char(b)));
            let system_ok = matches!(system, [b'a'..=b'z', rest @ ..]
                if rest.len() <= 13 && rest.iter().all(|&b| key_char(b)));
            tenant_ok && system_ok
        }
    }
}

/// `value = 0*255(chr) nblk-chr`: 1 to 256 printable ASCII bytes other than `,` and `=`,
/// spaces allowed inside but not at the end.
fn tracestate_value_ok(value: &[u8]) -> bool {
    let nblk = |b: u8| matches!(b, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    match value {
        [rest @ .., last] => {
            rest.len() <= 255 && nblk(*last) && rest.iter().all(|&b| b == b' ' || nblk(b))
        }
        [] => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPEC_EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn tp(s: &str) -> Option<TraceParent> {
        TraceParent::parse(s.as_bytes())
    }

    #[test]
    fn parses_the_spec_example() {
        let parsed = TraceParent::parse(SPEC_EXAMPLE).expect("the spec's example is valid");
        assert_eq!(
            parsed.trace_id.0,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            parsed.parent_id.0,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parsed.flags, 1);
        assert!(parsed.sampled());
        assert_eq!(&parsed.encode()[..], SPEC_EXAMPLE);
        assert_eq!(
            &parsed.trace_id.to_hex()[..],
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(&parsed.parent_id.to_hex()[..], b"00f067aa0ba902b7");
    }

    #[test]
    fn the_spec_example_not_sampled() {
        let parsed = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .expect("valid with flags 00");
        assert!(!parsed.sampled());
    }

    #[test]
    fn unknown_flags_are_kept() {
        let parsed = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").expect("valid");
        assert_eq!(parsed.flags, 0xff);
        assert!(parsed.sampled());
        assert_eq!(
            &parsed.encode()[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00",
            // Too short / too long for version 00.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Version ff is forbidden, whatever follows.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
            // Uppercase hex anywhere.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // Not hex.
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Dashes in the wrong place.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            // Blanks are not trimmed: a header value with them is not the spec's format.
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            // A future version must still continue with a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            assert_eq!(tp(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn future_versions_are_read_by_their_first_55_bytes() {
        let expected = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(expected.is_some());
        for future in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
            "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert_eq!(tp(future), expected, "{future:?}");
        }
        // What goes on is version 00.
        let parsed = tp("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later")
            .expect("valid future version");
        assert_eq!(&parsed.encode()[..2], b"00");
    }

    #[test]
    fn hex_and_validity_of_ids() {
        let t = TraceId([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0xff]);
        assert_eq!(&t.to_hex()[..], b"000102030405060708090a0b0c0d0eff");
        assert!(t.is_valid());
        assert!(!TraceId([0; 16]).is_valid());
        let s = SpanId([0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
        assert_eq!(&s.to_hex()[..], b"deadbeef00000001");
        assert!(s.is_valid());
        assert!(!SpanId([0; 8]).is_valid());
    }

    #[test]
    fn tracestate_accepts_the_spec_examples() {
        for ok in [
            "rojo=00f067aa0ba902b7",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "congo=t61rcWkgMzE , rojo=00f067aa0ba902b7",
            "fw529a3039@dt=ZmY4ZmI2MzU4MzgxY2Y2Yg",
            "0tenant@vendor=x",
            "a=1,,b=2",
            "\ta=1 ,\tb=2\t",
            "k=value with spaces inside",
            // A value may start with a space; only its last byte must not be one.
            "k= v",
            "key_-*/=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
        ] {
            assert!(tracestate_ok(ok.as_bytes()), "{ok:?} is valid");
        }
    }

    #[test]
    fn tracestate_rejects_malformed_values() {
        let long_value = format!("k={}", "v".repeat(257));
        let long_key = format!("{}=v", "k".repeat(257));
        let long_system = format!("t@{}=v", "s".repeat(15));
        for bad in [
            "",
            " , ,",
            "novalue",
            "k=",
            "=v",
            "Upper=v",
            "1starts-with-digit=v",
            // Blanks around a member are OWS, but a key has none.
            "k =v",
            "k=a=b",
            "k=\u{7f}",
            "k=caf\u{e9}",
            "a@=v",
            "@b=v",
            "a@1b=v",
            "a@b@c=v",
            "k=1,k=2",
            long_value.as_str(),
            long_key.as_str(),
            long_system.as_str(),
        ] {
            assert!(!tracestate_ok(bad.as_bytes()), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn tracestate_limits() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(tracestate_ok(members(32).as_bytes()));
        assert!(!tracestate_ok(members(33).as_bytes()));
        // 512 bytes exactly is fine, 513 is not.
        let over = format!("k=v,{}", "x".repeat(509));
        assert_eq!(over.len(), 513);
        assert!(!tracestate_ok(over.as_bytes()));
        let fits = format!("a={},b={}", "v".repeat(254), "w".repeat(253));
        assert_eq!(fits.len(), 512);
        assert!(tracestate_ok(fits.as_bytes()));
    }

    fn id_with_low(low: u64) -> TraceId {
        let mut bytes = [0xab; 16];
        bytes[8..].copy_from_slice(&low.to_be_bytes());
        TraceId(bytes)
    }

    #[test]
    fn sampling_follows_the_parent() {
        let mut parent =
            tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        let id = parent.trace_id;
        assert!(sample(0.0, Some(&parent), &id));
        parent.flags = 0;
        assert!(!sample(1.0, Some(&parent), &id));
    }

    #[test]
    fn ratio_sampling_by_the_low_bytes() {
        assert!(sample(1.0, None, &id_with_low(u64::MAX)));
        assert!(sample(7.0, None, &id_with_low(u64::MAX)));
        assert!(!sample(0.0, None, &id_with_low(0)));
        assert!(!sample(-1.0, None, &id_with_low(0)));
        assert!(!sample(f64::NAN, None, &id_with_low(0)));
        // Half: below 2^63 is in, from 2^63 up is out.
        assert!(sample(0.5, None, &id_with_low((1 << 63) - 1)));
        assert!(!sample(0.5, None, &id_with_low(1 << 63)));
        assert!(sample(0.25, None, &id_with_low((1 << 62) - 2)));
        assert!(!sample(0.25, None, &id_with_low(1 << 62)));
        // The high bytes do not matter.
        let mut other = id_with_low(1);
        other.0[0] = 0;
        assert!(sample(0.1, None, &other));
    }

    #[test]
    fn ratio_sampling_rate_is_about_the_ratio() {
        // A spread of low halves (a multiplicative hash of the counter).
        let sampled = (0u64..10_000)
            .filter(|i| {
                sample(
                    0.3,
                    None,
                    &id_with_low(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                )
            })
            .count();
        assert!((2_800..3_200).contains(&sampled), "{sampled}");
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(
            trace in any::<[u8; 16]>(),
            span in any::<[u8; 8]>(),
            flags in any::<u8>(),
        ) {
            let value = TraceParent { trace_id: TraceId(trace), parent_id: SpanId(span), flags };
            let parsed = TraceParent::parse(&value.encode());
            if value.trace_id.is_valid() && value.parent_id.is_valid() {
                prop_assert_eq!(parsed, Some(value));
            } else {
                prop_assert_eq!(parsed, None);
            }
        }

        #[test]
        fn parse_then_encode_is_identity_for_version_00(raw in "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}") {
            if let Some(parsed) = TraceParent::parse(raw.as_bytes()) {
                prop_assert_eq!(&parsed.encode()[..], raw.as_bytes());
            }
        }

        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceParent::parse(&raw);
            let _ = tracestate_ok(&raw);
        }
    }
}
