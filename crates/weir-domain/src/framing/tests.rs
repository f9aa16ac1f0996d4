#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{Ambiguity, Framing};

fn run(bytes: &[u8]) -> Framing {
    let mut f = Framing::default();
    f.feed(bytes);
    f
}

/// Feeds in pieces of `size` bytes: where reads split must not matter.
fn run_split(bytes: &[u8], size: usize) -> Framing {
    let mut f = Framing::default();
    for piece in bytes.chunks(size.max(1)) {
        f.feed(piece);
    }
    f
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn plain_requests_pass_and_are_counted() {
    let mut all = Vec::new();
    all.extend_from_slice(GET);
    all.extend_from_slice(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    all.extend_from_slice(
        b"POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=v\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    );
    all.extend_from_slice(GET);
    for size in [1, 2, 3, 7, 64, all.len()] {
        let f = run_split(&all, size);
        assert_eq!(f.refused(), None, "split {size}");
        assert_eq!(f.heads, 4, "split {size}");
        assert!(!f.is_off());
    }
}

#[test]
fn bodies_that_look_like_heads_are_skipped() {
    let body = b"GET / HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n\n";
    let mut all = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    all.extend_from_slice(body);
    all.extend_from_slice(GET);
    let f = run(&all);
    assert_eq!(f.refused(), None);
    assert_eq!(f.heads, 2);
}

#[test]
fn each_ambiguity_is_refused_at_its_request() {
    let cases: [(&[u8], Ambiguity); 7] = [
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ambiguity::LengthAndEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Ambiguity::LengthAndEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
            Ambiguity::DuplicateLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n",
            Ambiguity::BadLength,
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", Ambiguity::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", Ambiguity::BareLf),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Ambiguity::BadChunk,
        ),
    ];
    for (bytes, why) in cases {
        let mut all = GET.to_vec();
        all.extend_from_slice(bytes);
        let f = run(&all);
        assert_eq!(
            f.refused(),
            Some((1, why)),
            "{}",
            String::from_utf8_lossy(bytes)
        );
        assert!(f.is_off());
    }
}

#[test]
fn transfer_encoding_must_be_exactly_chunked() {
    for te in [
        "Transfer-Encoding: chunked ",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity",
        "Transfer-Encoding:\tchunked\t",
    ] {
        let req = format!("POST / HTTP/1.1\r\n{te}\r\n\r\n0\r\n\r\n");
        assert_eq!(
            run(req.as_bytes()).refused(),
            Some((0, Ambiguity::BadEncoding)),
            "{te:?}"
        );
    }
    for te in [
        "Transfer-Encoding: chunked",
        "transfer-encoding:CHUNKED",
        "Transfer-Encoding:\tchunked",
    ] {
        let req = format!("POST / HTTP/1.1\r\n{te}\r\n\r\n0\r\n\r\n");
        assert_eq!(run(req.as_bytes()).refused(), None, "{te:?}");
    }
}

#[test]
fn chunk_lines_follow_hyper() {
    for line in ["5", "5 ", "5\t;x", "5;x=\"y\"", "0005"] {
        let req = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\nhello\r\n0\r\n\r\n"
        );
        let f = run(req.as_bytes());
        assert_eq!(f.refused(), None, "{line:?}");
    }
    for line in ["", "-5", "5x", "0x5", "1234567890abcdef0"] {
        let req = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\n");
        let f = run(req.as_bytes());
        assert_eq!(f.refused(), Some((0, Ambiguity::BadChunk)), "{line:?}");
    }
    // Data must end in CRLF exactly where its size says.
    let f = run(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n");
    assert_eq!(f.refused(), Some((0, Ambiguity::BadChunk)));
}

#[test]
fn http2_and_upgrades_turn_the_guard_off() {
    let f = run(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00\n\n");
    assert!(f.is_off());
    assert_eq!(f.refused(), None);
    let f =
        run(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05\n\n");
    assert!(f.is_off());
    assert_eq!(f.refused(), None);
}

#[test]
fn long_lines_keep_only_what_is_needed() {
    let long = "x".repeat(10_000);
    let req = format!("GET /{long} HTTP/1.1\r\nX-Long: {long}\r\nContent-Length: 2\r\n\r\nhi");
    let mut all = req.into_bytes();
    all.extend_from_slice(GET);
    let f = run_split(&all, 1000);
    assert_eq!(f.refused(), None);
    assert_eq!(f.heads, 2);
    let long_length = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}1\r\n\r\n",
        "0".repeat(60)
    );
    assert_eq!(
        run(long_length.as_bytes()).refused(),
        Some((0, Ambiguity::BadLength))
    );
}

#[test]
fn empty_lines_before_a_request_are_allowed() {
    let f = run(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(f.refused(), None);
    assert_eq!(f.heads, 1);
}

proptest! {
    /// Well-formed pipelines of any shape, split anywhere, are never refused and every head
    /// is found.
    #[test]
    fn well_formed_pipelines_are_never_refused(
        bodies in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..64),
            1..8,
        ),
        split in 1usize..200,
    ) {
        let mut all = Vec::new();
        for (chunked, body, chunk) in &bodies {
            if *chunked {
                all.extend_from_slice(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
                for part in body.chunks(*chunk) {
                    all.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    all.extend_from_slice(part);
                    all.extend_from_slice(b"\r\n");
                }
                all.extend_from_slice(b"0\r\n\r\n");
            } else {
                all.extend_from_slice(
                    format!("POST /l HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len())
                        .as_bytes(),
                );
                all.extend_from_slice(body);
            }
        }
        let f = run_split(&all, split);
        prop_assert_eq!(f.refused(), None);
        prop_assert_eq!(f.heads as usize, bodies.len());
    }

    /// Whatever the bytes, the guard neither panics nor refuses a request it has not read.
    #[test]
    fn any_bytes_are_survived(bytes in proptest::collection::vec(any::<u8>(), 0..2000), split in 1usize..100) {
        let f = run_split(&bytes, split);
        if let Some((index, _)) = f.refused() {
            prop_assert!(index <= f.heads);
        }
    }
}
