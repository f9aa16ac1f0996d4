//! gRPC status codes in both directions, and the `grpc-timeout` header.

use std::time::Duration;

/// Names of the codes 0..=16, indexed by code.
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// HTTP statuses a REST client gets, indexed by code (the mapping of `google.rpc.Code`, with
/// 499 for a cancelled call).
const HTTP: [u16; 17] = [
    200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
];

/// The codes by name, for code that sets or tests one.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const OUT_OF_RANGE: u32 = 11;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const DATA_LOSS: u32 = 15;
    pub const UNAUTHENTICATED: u32 = 16;
}

use code::{
    CANCELLED, DEADLINE_EXCEEDED, INTERNAL, OK, PERMISSION_DENIED, RESOURCE_EXHAUSTED,
    UNAUTHENTICATED, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN,
};

/// The code's name (`NOT_FOUND`); `UNKNOWN` for a code outside the spec.
#[must_use]
pub fn code_name(code: u32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The HTTP status a REST client gets for a gRPC code; 500 for a code outside the spec.
#[must_use]
pub fn http_status(code: u32) -> u16 {
    usize::try_from(code)
        .ok()
        .and_then(|i| HTTP.get(i))
        .copied()
        .unwrap_or(500)
}

/// The gRPC code weir answers a gRPC client with when it fails the call itself with `status`.
///
/// The gRPC spec's "HTTP to gRPC status code mapping" is followed where it speaks (400
/// INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 502 and 503
/// UNAVAILABLE, anything else UNKNOWN). That table is a client's guess about a foreign
/// server; where weir knows what its own answer means it says so instead:
///
/// | status | code | why |
/// |---|---|---|
/// | 405 | UNIMPLEMENTED | like 404: no such method here |
/// | 408, 504 | DEADLINE_EXCEEDED | weir's timeout ran out, which is a deadline |
/// | 413, 431, 429 | RESOURCE_EXHAUSTED | a size or rate limit; what gRPC servers use for quotas, and clients do not retry it blindly as they would UNAVAILABLE |
/// | 499 | CANCELLED | the call was abandoned |
/// | 500 | INTERNAL | weir itself failed |
/// | 501 | UNIMPLEMENTED | |
/// | 2xx | OK | |
#[must_use]
pub fn code_for_http(status: u16) -> u32 {
    match status {
        200..=299 => OK,
        400 | 500 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 | 405 | 501 => UNIMPLEMENTED,
        408 | 504 => DEADLINE_EXCEEDED,
        413 | 429 | 431 => RESOURCE_EXHAUSTED,
        499 => CANCELLED,
        502 | 503 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`ours, `M`inutes,
/// `S`econds, `m`illis, `u`micros, `n`anos). `None` when malformed, which the spec leaves to
/// the server; the caller then applies no deadline of the client's.
#[must_use]
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_statuses_cover_every_code() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(17), "UNKNOWN");
        let expected = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (17, 500),
            (u32::MAX, 500),
        ];
        for (code, status) in expected {
            assert_eq!(http_status(code), status, "code {code}");
        }
    }

    #[test]
    fn weir_errors_map_to_codes() {
        let expected = [
            (200, OK),
            (400, INTERNAL),
            (401, UNAUTHENTICATED),
            (403, PERMISSION_DENIED),
            (404, UNIMPLEMENTED),
            (405, UNIMPLEMENTED),
            (413, RESOURCE_EXHAUSTED),
            (429, RESOURCE_EXHAUSTED),
            (431, RESOURCE_EXHAUSTED),
            (499, CANCELLED),
            (500, INTERNAL),
            (502, UNAVAILABLE),
            (503, UNAVAILABLE),
            (504, DEADLINE_EXCEEDED),
            (418, UNKNOWN),
        ];
        for (status, code) in expected {
            assert_eq!(code_for_http(status), code, "status {status}");
        }
    }

    #[test]
    fn timeouts_parse_every_unit() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(
            parse_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn malformed_timeouts_are_none() {
        for bad in [
            &b""[..],
            b"S",
            b"100",
            b"123456789S",
            b"1s",
            b"-1S",
            b"1.5S",
            b" 1S",
            b"1Sx",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
