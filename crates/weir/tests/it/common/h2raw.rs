//! Raw HTTP/2 frames over any byte stream, for what a polite client never sends: streams
//! reset as soon as they are opened, header blocks that never end, floods of control frames,
//! windows that never open, frames the protocol forbids. Frames are written by hand (a
//! 9-byte header and a payload); header blocks use HPACK literals without indexing and
//! without Huffman coding, which every decoder must accept. Reading decodes the frame
//! headers and, of a response's header block, only `:status`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const INTERNAL_ERROR: u32 = 0x2;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const SETTINGS_TIMEOUT: u32 = 0x4;
    pub const STREAM_CLOSED: u32 = 0x5;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const CONNECT_ERROR: u32 = 0xa;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn name(code: u32) -> &'static str {
        match code {
            NO_ERROR => "NO_ERROR",
            PROTOCOL_ERROR => "PROTOCOL_ERROR",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
            SETTINGS_TIMEOUT => "SETTINGS_TIMEOUT",
            STREAM_CLOSED => "STREAM_CLOSED",
            FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
            REFUSED_STREAM => "REFUSED_STREAM",
            CANCEL => "CANCEL",
            COMPRESSION_ERROR => "COMPRESSION_ERROR",
            CONNECT_ERROR => "CONNECT_ERROR",
            ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
            _ => "unknown",
        }
    }
}

/// SETTINGS parameters (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

// ---------------------------------------------------------------------------------------
// Writing frames

/// Appends one frame. The length is not checked against anything: oversized frames are a
/// thing to send on purpose.
pub fn put_frame(buf: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame length");
    buf.extend_from_slice(&len.to_be_bytes()[1..]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    buf.extend_from_slice(payload);
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(9 + payload.len());
    put_frame(&mut buf, kind, flags, stream, payload);
    buf
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(params.len() * 6);
    for (id, value) in params {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(kind::PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    frame(kind::GOAWAY, 0, 0, &payload)
}

pub fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(kind::HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, end_headers: bool, block: &[u8]) -> Vec<u8> {
    let flags = if end_headers { flag::END_HEADERS } else { 0 };
    frame(kind::CONTINUATION, flags, stream, block)
}

pub fn data(stream: u32, end_stream: bool, payload: &[u8]) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::DATA, flags, stream, payload)
}

// ---------------------------------------------------------------------------------------
// HPACK, the simple half

/// An HPACK integer with an `n`-bit prefix; `first` holds the representation's high bits.
pub fn hpack_int(buf: &mut Vec<u8>, n: u32, first: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        buf.push(first | u8::try_from(value).unwrap());
        return;
    }
    buf.push(first | u8::try_from(max).unwrap());
    let mut rest = value - max;
    while rest >= 128 {
        buf.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    buf.push(u8::try_from(rest).unwrap());
}

/// A string literal without Huffman coding.
pub fn hpack_str(buf: &mut Vec<u8>, s: &[u8]) {
    hpack_int(buf, 7, 0, s.len());
    buf.extend_from_slice(s);
}

/// A header field as a literal without indexing, with a literal name (RFC 7541 §6.2.2):
/// nothing enters the server's dynamic table, so blocks can be reused across streams.
pub fn hpack_literal(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.push(0x00);
    hpack_str(buf, name.as_bytes());
    hpack_str(buf, value);
}

/// The header block of a request: the four pseudo-headers, then `extra` in order.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, ":method", method.as_bytes());
    hpack_literal(&mut block, ":scheme", b"http");
    hpack_literal(&mut block, ":path", path.as_bytes());
    hpack_literal(&mut block, ":authority", b"test.local");
    for (name, value) in extra {
        hpack_literal(&mut block, name, value.as_bytes());
    }
    block
}

/// A complete GET without a body: one HEADERS frame with END_HEADERS and END_STREAM.
pub fn get(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    headers(
        stream,
        flag::END_HEADERS | flag::END_STREAM,
        &request_block("GET", path, extra),
    )
}

// ---------------------------------------------------------------------------------------
// Reading frames

#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// The payload's length as sent, also when `payload` was not kept (DATA).
    pub len: usize,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream: u32,
    pub code: u32,
    pub debug: String,
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GOAWAY {} (last stream {}, {:?})",
            code::name(self.code),
            self.last_stream,
            self.debug
        )
    }
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    pub fn goaway(&self) -> Option<GoAway> {
        if self.kind != kind::GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        Some(GoAway {
            last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            debug: String::from_utf8_lossy(&p[8..]).into_owned(),
        })
    }

    /// The error code of a RST_STREAM.
    pub fn reset_code(&self) -> Option<u32> {
        if self.kind != kind::RST_STREAM || self.payload.len() != 4 {
            return None;
        }
        let p = &self.payload;
        Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
    }

    /// The parameters of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        if self.kind != kind::SETTINGS {
            return Vec::new();
        }
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// `:status` of a response HEADERS frame (see [`status_of_block`]).
    pub fn status(&self) -> Option<u16> {
        if self.kind != kind::HEADERS {
            return None;
        }
        let mut block = &self.payload[..];
        if self.has(flag::PADDED) {
            let pad = usize::from(*block.first()?);
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.has(flag::PRIORITY) {
            block = block.get(5..)?;
        }
        status_of_block(block)
    }
}

/// Reads an HPACK integer with an `n`-bit prefix at `pos`.
fn read_int(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(*pos)?) & max;
    *pos += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
    }
}

/// The Huffman codes of the ten digits (RFC 7541 Appendix B): all a status needs.
const HUFFMAN_DIGITS: [(u32, u32); 10] = [
    (0b00000, 5),
    (0b00001, 5),
    (0b00010, 5),
    (0b01_1001, 6),
    (0b01_1010, 6),
    (0b01_1011, 6),
    (0b01_1100, 6),
    (0b01_1101, 6),
    (0b01_1110, 6),
    (0b01_1111, 6),
];

fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut input = bytes.iter();
    loop {
        let found = HUFFMAN_DIGITS
            .iter()
            .enumerate()
            .find(|(_, (code, len))| bits >= *len && (acc >> (bits - len)) == *code);
        if let Some((digit, (_, len))) = found {
            out.push(char::from(b'0' + u8::try_from(digit).unwrap()));
            bits -= len;
            acc &= (1 << bits) - 1;
            continue;
        }
        match input.next() {
            Some(b) => {
                acc = (acc << 8) | u32::from(*b);
                bits += 8;
            }
            // What is left is padding: the most significant bits of EOS, all ones.
            None => return (bits < 8 && acc == (1 << bits) - 1).then_some(out),
        }
    }
}

/// The `:status` at the start of a response header block, which is where servers put it.
/// Only static-table references and literals are understood: clients of this module send
/// SETTINGS_HEADER_TABLE_SIZE = 0, so the server's encoder has no dynamic table to refer to.
pub fn status_of_block(block: &[u8]) -> Option<u16> {
    let mut pos = 0;
    // Dynamic table size updates come first.
    while block.get(pos)? & 0xe0 == 0x20 {
        read_int(block, &mut pos, 5)?;
    }
    let first = *block.get(pos)?;
    let index_bits = if first & 0x80 != 0 {
        let index = read_int(block, &mut pos, 7)?;
        let status = [200, 204, 206, 304, 400, 404, 500];
        return index.checked_sub(8).and_then(|i| status.get(i)).copied();
    } else if first & 0x40 != 0 {
        6
    } else {
        4
    };
    let index = read_int(block, &mut pos, index_bits)?;
    if !(8..=14).contains(&index) {
        return None;
    }
    let huffman = block.get(pos)? & 0x80 != 0;
    let len = read_int(block, &mut pos, 7)?;
    let raw = block.get(pos..pos + len)?;
    let text = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Frames out of a byte stream.
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    pos: usize,
    /// DATA payloads are counted, not kept: some tests receive megabytes of them.
    pub keep_data: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: Vec::new(),
            pos: 0,
            keep_data: false,
        }
    }

    /// The next frame; `Ok(None)` at EOF.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() >= 9 {
                let len =
                    usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
                if rest.len() >= 9 + len {
                    let kind = rest[3];
                    let keep = kind != kind::DATA || self.keep_data;
                    let frame = Frame {
                        kind,
                        flags: rest[4],
                        stream: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]])
                            & 0x7fff_ffff,
                        len,
                        payload: if keep {
                            rest[9..9 + len].to_vec()
                        } else {
                            Vec::new()
                        },
                    };
                    self.pos += 9 + len;
                    return Ok(Some(frame));
                }
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(16 * 1024);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections

/// What a [`Collector`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub frames: usize,
    pub goaway: Option<GoAway>,
    /// When the server closed the connection (EOF or a reset).
    pub closed: Option<Instant>,
}

/// Reads every frame the server sends on its own task, so the test can write without ever
/// blocking on reads, and watch for GOAWAY and the close meanwhile.
pub struct Collector {
    progress: watch::Receiver<Progress>,
    frames: Arc<Mutex<Vec<Frame>>>,
    task: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub fn start<R: AsyncRead + Unpin + Send + 'static>(
        mut reader: FrameReader<R>,
        already: Vec<Frame>,
    ) -> Self {
        let (tx, progress) = watch::channel(Progress::default());
        let frames = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&frames);
        let task = tokio::spawn(async move {
            let record = |f: Frame| {
                let goaway = f.goaway();
                kept.lock().unwrap().push(f);
                tx.send_modify(|p| {
                    p.frames += 1;
                    if p.goaway.is_none() {
                        p.goaway = goaway;
                    }
                });
            };
            for f in already {
                record(f);
            }
            loop {
                match reader.next().await {
                    Ok(Some(f)) => record(f),
                    Ok(None) | Err(_) => {
                        tx.send_modify(|p| p.closed = Some(Instant::now()));
                        return;
                    }
                }
            }
        });
        Self {
            progress,
            frames,
            task,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn goaway(&self) -> Option<GoAway> {
        self.progress.borrow().goaway.clone()
    }

    pub fn closed(&self) -> Option<Instant> {
        self.progress.borrow().closed
    }

    /// A copy of every frame received so far.
    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    /// Waits until `done` holds of the frames received (or the connection closed, or
    /// `within` passed); returns whether it held.
    pub async fn wait_for(&mut self, within: Duration, done: impl Fn(&[Frame]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(&self.frames.lock().unwrap()) {
                return true;
            }
            if self.closed().is_some() {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return done(&self.frames.lock().unwrap()),
            }
        }
    }

    /// Waits for a GOAWAY.
    pub async fn wait_goaway(&mut self, within: Duration) -> Option<GoAway> {
        self.wait_for(within, |fs| fs.iter().any(|f| f.kind == kind::GOAWAY))
            .await;
        self.goaway()
    }

    /// Waits for the server to close the connection; when it did.
    pub async fn wait_closed(&mut self, within: Duration) -> Option<Instant> {
        let _ = tokio::time::timeout(within, self.progress.wait_for(|p| p.closed.is_some())).await;
        self.closed()
    }

    /// Frames on `stream`.
    pub fn on_stream(&self, stream: u32) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.stream == stream)
            .cloned()
            .collect()
    }
}

/// Client settings every connection here sends: no dynamic table, so that
/// [`status_of_block`] can read every response.
pub const BASE_SETTINGS: &[(u16, u32)] =
    &[(setting::HEADER_TABLE_SIZE, 0), (setting::ENABLE_PUSH, 0)];

/// The start of an HTTP/2 connection over `io`: the preface and our SETTINGS (with
/// `extra`) written, the server's SETTINGS read and acknowledged. Returns the server's
/// SETTINGS parameters and any other frames read meanwhile.
pub async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    extra: &[(u16, u32)],
) -> (Vec<(u16, u32)>, Vec<Frame>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut params = BASE_SETTINGS.to_vec();
    params.extend_from_slice(extra);
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&settings(&params));
    writer.write_all(&out).await.expect("write preface");
    let mut early = Vec::new();
    let deadline = Duration::from_secs(10);
    loop {
        let f = tokio::time::timeout(deadline, reader.next())
            .await
            .expect("the server's SETTINGS in time")
            .expect("read")
            .expect("the server's SETTINGS before EOF");
        if f.kind == kind::SETTINGS && !f.has(flag::ACK) {
            writer
                .write_all(&settings_ack())
                .await
                .expect("write SETTINGS ACK");
            return (f.settings(), early);
        }
        early.push(f);
    }
}

/// An HTTP/2 connection over TCP (h2c with prior knowledge), handshake done, split so that
/// a [`Collector`] reads while the test writes.
pub struct H2c {
    pub server_settings: Vec<(u16, u32)>,
    pub writer: OwnedWriteHalf,
    pub collector: Collector,
}

impl H2c {
    pub async fn connect(addr: SocketAddr, extra: &[(u16, u32)]) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Self::over(stream, extra).await
    }

    pub async fn over(stream: TcpStream, extra: &[(u16, u32)]) -> Self {
        let (r, mut writer) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let (server_settings, early) = handshake(&mut reader, &mut writer, extra).await;
        Self {
            server_settings,
            writer,
            collector: Collector::start(reader, early),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    pub fn server_setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }
}

/// The handshake only, without a reader: for clients that must not read what the server
/// sends (the read half is returned untouched but for the frames of the handshake).
pub async fn connect_unread(
    addr: SocketAddr,
    extra: &[(u16, u32)],
) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    handshake(&mut reader, &mut w, extra).await;
    (reader, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        for v in [0, 1, 14, 15, 16, 126, 127, 128, 1337, 1 << 20] {
            let mut b = Vec::new();
            hpack_int(&mut b, 4, 0, v);
            let mut pos = 0;
            assert_eq!(read_int(&b, &mut pos, 4), Some(v));
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn statuses_are_read_in_every_form() {
        assert_eq!(status_of_block(&[0x88]), Some(200));
        assert_eq!(status_of_block(&[0x20, 0x8d]), Some(404));
        // RFC 7541 C.6.1: `:status: 302` as literal with incremental indexing, Huffman.
        assert_eq!(status_of_block(&[0x48, 0x82, 0x64, 0x02]), Some(302));
        // Literal without indexing, plain.
        assert_eq!(status_of_block(b"\x08\x03431"), Some(431));
    }
}
