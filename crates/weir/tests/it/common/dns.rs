//! A small authoritative DNS server for the discovery tests, so that a test controls the
//! answers, their TTLs and the failures (SERVFAIL, REFUSED, NXDOMAIN, silence) while weir
//! runs.
//!
//! [`TestDns::start`] listens on UDP and TCP on one port of `127.0.0.1` and answers from a
//! zone the test edits at run time: A, AAAA and SRV records per name (SRV answers carry the
//! A and AAAA records of their targets in the additional section), or a failure per name.
//! A name the zone does not hold is NXDOMAIN; a name it holds without records of the asked
//! type is NOERROR with an empty answer. Messages are encoded by hand (RFC 1035): the ID
//! and RD are echoed, QR and AA (and RA) set, the question echoed byte for byte, answer
//! owners compressed to the question; a query with EDNS gets an OPT record back, and a UDP
//! answer larger than the client can take is truncated (TC) so that it asks over TCP.
//! Names are matched without regard to case or a final dot.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;

/// The most a client without EDNS can take over UDP.
const PLAIN_UDP: usize = 512;

/// How a name is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// From its records.
    #[default]
    Records,
    ServFail,
    NxDomain,
    Refused,
}

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    mode: Mode,
    a: Vec<Ipv4Addr>,
    a_ttl: u32,
    aaaa: Vec<Ipv6Addr>,
    aaaa_ttl: u32,
    srv: Vec<Srv>,
    srv_ttl: u32,
}

#[derive(Debug)]
struct Zone {
    names: HashMap<String, Entry>,
    /// Queries seen per name (every type), well-formed ones only.
    queries: HashMap<String, usize>,
    /// Answer nothing at all (a server that is there but never answers: timeouts).
    silent: bool,
    /// Put SRV targets' addresses in the additional section.
    additionals: bool,
}

/// The test name server. Dropping it (or [`TestDns::stop`]) closes its sockets: queries
/// then go unanswered (UDP) or are refused (TCP).
#[derive(Debug)]
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Starts the server on a free port of 127.0.0.1, UDP and TCP, with an empty zone.
    pub async fn start() -> Self {
        let (udp, tcp) = bind().await;
        let addr = udp.local_addr().expect("the UDP socket's address");
        let zone = Arc::new(Mutex::new(Zone {
            names: HashMap::new(),
            queries: HashMap::new(),
            silent: false,
            additionals: true,
        }));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&zone))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&zone))),
        ];
        Self { addr, zone, tasks }
    }

    /// Where it listens (UDP and TCP): the `server` of a `discovery.dns`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        let mut zone = self.zone();
        f(zone.names.entry(key(name)).or_default());
    }

    /// The A records of `name` (replacing any); the name is answered from its records again.
    /// An empty list makes A queries NOERROR with no records.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        self.edit(name, |e| {
            e.mode = Mode::Records;
            e.a = ips.to_vec();
            e.a_ttl = ttl;
        });
    }

    /// The AAAA records of `name`, as [`TestDns::set_a`].
    pub fn set_aaaa(&self, name: &str, ips: &[Ipv6Addr], ttl: u32) {
        self.edit(name, |e| {
            e.mode = Mode::Records;
            e.aaaa = ips.to_vec();
            e.aaaa_ttl = ttl;
        });
    }

    /// The SRV records of `name`, each `(priority, weight, port, target)`, as
    /// [`TestDns::set_a`]. Answers carry the A and AAAA records the zone holds for the
    /// targets in their additional section.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        self.edit(name, |e| {
            e.mode = Mode::Records;
            e.srv = records
                .iter()
                .map(|&(priority, weight, port, target)| Srv {
                    priority,
                    weight,
                    port,
                    target: target.to_owned(),
                })
                .collect();
            e.srv_ttl = ttl;
        });
    }

    /// Every query for `name` is answered SERVFAIL until a `set_*` of its records.
    pub fn set_servfail(&self, name: &str) {
        self.edit(name, |e| e.mode = Mode::ServFail);
    }

    /// Every query for `name` is answered NXDOMAIN until a `set_*` of its records (which
    /// are kept meanwhile).
    pub fn set_nxdomain(&self, name: &str) {
        self.edit(name, |e| e.mode = Mode::NxDomain);
    }

    /// Every query for `name` is answered REFUSED until a `set_*` of its records.
    pub fn set_refused(&self, name: &str) {
        self.edit(name, |e| e.mode = Mode::Refused);
    }

    /// Forgets `name` and its records: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.zone().names.remove(&key(name));
    }

    /// `true`: no query gets any answer (a server that has gone quiet: clients time out).
    pub fn set_silent(&self, silent: bool) {
        self.zone().silent = silent;
    }

    /// `false`: SRV answers come without the targets' addresses, so clients must ask for
    /// them. Default `true`.
    pub fn set_additionals(&self, on: bool) {
        self.zone().additionals = on;
    }

    /// Queries received for `name` so far, of every type (silent ones included).
    pub fn queries(&self, name: &str) -> usize {
        self.zone().queries.get(&key(name)).copied().unwrap_or(0)
    }

    /// Closes the sockets: the server is gone (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port.
async fn bind() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("the UDP socket's address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let reply = respond(&zone, &buf[..n], Transport::Udp);
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(serve_connection(stream, Arc::clone(&zone)));
        while connections.try_join_next().is_some() {}
    }
}

/// DNS over TCP: each message preceded by its length in two bytes.
async fn serve_connection(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        if let Some(reply) = respond(&zone, &query, Transport::Tcp) {
            let Ok(len) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// A name as the zone keys it: lower case, without the final dot.
fn key(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads an uncompressed name at `at`: its key and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            return Some((key(&labels.join(".")), at));
        }
        if len & 0xC0 != 0 {
            return None; // No compression in a question.
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
    }
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in key(name).split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(u8::try_from(bytes.len()).unwrap_or(63));
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

/// A resource record; `owner` `None` is the question's name (compressed to a pointer).
fn write_record(out: &mut Vec<u8>, owner: Option<&str>, rtype: u16, ttl: u32, rdata: &[u8]) {
    match owner {
        None => out.extend_from_slice(&[0xC0, 0x0C]),
        Some(name) => write_name(out, name),
    }
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    let len = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(rdata);
}

/// A parsed query: what the answer needs of it.
struct Query<'q> {
    id: [u8; 2],
    opcode: u16,
    rd: bool,
    /// The question section as received (name case included).
    question: &'q [u8],
    name: String,
    qtype: u16,
    /// The UDP payload size of its EDNS OPT record, when it had one.
    edns: Option<u16>,
}

fn parse(msg: &[u8]) -> Result<Query<'_>, Option<[u8; 2]>> {
    let id = [*msg.first().ok_or(None)?, *msg.get(1).ok_or(None)?];
    let flags = be16(msg, 2).ok_or(None)?;
    if flags & 0x8000 != 0 {
        return Err(None); // A response, not a query: ignored.
    }
    let counts = |i: usize| be16(msg, 4 + 2 * i).ok_or(Some(id));
    let (qd, an, ns, ar) = (counts(0)?, counts(1)?, counts(2)?, counts(3)?);
    if qd != 1 {
        return Err(Some(id));
    }
    let (name, after) = read_name(msg, 12).ok_or(Some(id))?;
    let qtype = be16(msg, after).ok_or(Some(id))?;
    let end = after + 4;
    let question = msg.get(12..end).ok_or(Some(id))?;
    // The OPT record, if any, is in the additional section; skip what comes before it.
    let mut at = end;
    let mut edns = None;
    for i in 0..usize::from(an) + usize::from(ns) + usize::from(ar) {
        let Some(owner_end) = skip_name(msg, at) else {
            break;
        };
        let (Some(rtype), Some(class), Some(rdlen)) = (
            be16(msg, owner_end),
            be16(msg, owner_end + 2),
            be16(msg, owner_end + 8),
        ) else {
            break;
        };
        if i >= usize::from(an) + usize::from(ns) && rtype == TYPE_OPT {
            edns = Some(class);
        }
        at = owner_end + 10 + usize::from(rdlen);
    }
    Ok(Query {
        id,
        opcode: (flags >> 11) & 0xF,
        rd: flags & 0x0100 != 0,
        question,
        name,
        qtype,
        edns,
    })
}

/// The offset after a (possibly compressed) name.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len & 0xC0 == 0xC0 {
            return Some(at + 2);
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return Some(at);
        }
    }
}

fn header(id: [u8; 2], opcode: u16, rd: bool, rcode: u16, counts: [u16; 4]) -> Vec<u8> {
    // QR, the query's opcode, AA, the query's RD, RA.
    let rd = if rd { 0x0100 } else { 0 };
    let flags = 0x8000 | (opcode << 11) | 0x0400 | rd | 0x0080 | rcode;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id);
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out
}

/// The answer to one message, or `None` when it gets none (silent, or not a query).
fn respond(zone: &Mutex<Zone>, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let q = match parse(msg) {
        Ok(q) => q,
        Err(Some(id)) => return Some(header(id, 0, false, FORMERR, [0; 4])),
        Err(None) => return None,
    };
    let mut zone = zone
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *zone.queries.entry(q.name.clone()).or_default() += 1;
    if zone.silent {
        return None;
    }
    if q.opcode != 0 {
        let mut out = header(q.id, q.opcode, q.rd, NOTIMP, [1, 0, 0, 0]);
        out.extend_from_slice(q.question);
        return Some(out);
    }

    let mut answers: Vec<u8> = Vec::new();
    let mut additionals: Vec<u8> = Vec::new();
    let (mut an, mut ar) = (0u16, 0u16);
    let rcode = match zone.names.get(&q.name) {
        None => NXDOMAIN,
        Some(e) => match e.mode {
            Mode::ServFail => SERVFAIL,
            Mode::NxDomain => NXDOMAIN,
            Mode::Refused => REFUSED,
            Mode::Records => {
                let any = q.qtype == TYPE_ANY;
                if q.qtype == TYPE_A || any {
                    for ip in &e.a {
                        write_record(&mut answers, None, TYPE_A, e.a_ttl, &ip.octets());
                        an += 1;
                    }
                }
                if q.qtype == TYPE_AAAA || any {
                    for ip in &e.aaaa {
                        write_record(&mut answers, None, TYPE_AAAA, e.aaaa_ttl, &ip.octets());
                        an += 1;
                    }
                }
                if q.qtype == TYPE_SRV || any {
                    let mut targets: Vec<&str> = Vec::new();
                    for s in &e.srv {
                        let mut rdata = Vec::new();
                        rdata.extend_from_slice(&s.priority.to_be_bytes());
                        rdata.extend_from_slice(&s.weight.to_be_bytes());
                        rdata.extend_from_slice(&s.port.to_be_bytes());
                        write_name(&mut rdata, &s.target);
                        write_record(&mut answers, None, TYPE_SRV, e.srv_ttl, &rdata);
                        an += 1;
                        if !targets.contains(&s.target.as_str()) {
                            targets.push(&s.target);
                        }
                    }
                    for target in targets.into_iter().filter(|_| zone.additionals) {
                        let Some(t) = zone.names.get(&key(target)) else {
                            continue;
                        };
                        if t.mode != Mode::Records {
                            continue;
                        }
                        for ip in &t.a {
                            write_record(
                                &mut additionals,
                                Some(target),
                                TYPE_A,
                                t.a_ttl,
                                &ip.octets(),
                            );
                            ar += 1;
                        }
                        for ip in &t.aaaa {
                            write_record(
                                &mut additionals,
                                Some(target),
                                TYPE_AAAA,
                                t.aaaa_ttl,
                                &ip.octets(),
                            );
                            ar += 1;
                        }
                    }
                }
                NOERROR
            }
        },
    };
    drop(zone);

    let opt = q.edns.map(|_| {
        // Root owner, OPT, our UDP payload size, no extended flags, no options.
        let mut rr = vec![0u8];
        rr.extend_from_slice(&TYPE_OPT.to_be_bytes());
        rr.extend_from_slice(&4096u16.to_be_bytes());
        rr.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        rr
    });
    let ar_total = ar + u16::from(opt.is_some());
    let mut out = header(q.id, q.opcode, q.rd, rcode, [1, an, 0, ar_total]);
    out.extend_from_slice(q.question);
    out.extend_from_slice(&answers);
    out.extend_from_slice(&additionals);
    if let Some(rr) = &opt {
        out.extend_from_slice(rr);
    }

    let limit = q
        .edns
        .map_or(PLAIN_UDP, |size| usize::from(size).max(PLAIN_UDP));
    if transport == Transport::Udp && out.len() > limit {
        // Too big for the client over UDP: the question only, TC set, and it asks over TCP.
        let mut cut = header(q.id, q.opcode, q.rd, rcode, [1, 0, 0, 0]);
        cut[2] |= 0x02;
        cut.extend_from_slice(q.question);
        return Some(cut);
    }
    Some(out)
}
