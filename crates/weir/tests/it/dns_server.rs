//! The test name server (`crate::common::dns::TestDns`) answers correct DNS, checked two ways: with
//! a real resolver (hickory, as weir uses it) and byte by byte over raw UDP and TCP. Then
//! weir's DNS watcher (`weir_infra::discovery::watch_dns`) against it: targets from A/AAAA
//! and SRV records, changes seen within a refresh, TTLs, and which outcomes are failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::dns::{TYPE_A, TYPE_AAAA, TYPE_SRV, TestDns};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_domain::discovery::{DnsDiscovery, DnsQuery, Endpoint};
use weir_infra::discovery::{Update, watch_dns};

// ---------------------------------------------------------------------------------------
// The server, through hickory

/// A resolver that asks only `server`, caches nothing and gives up after a second.
fn resolver(server: SocketAddr) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let mut b = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    let o = b.options_mut();
    o.cache_size = 0;
    o.timeout = Duration::from_secs(1);
    o.attempts = 1;
    o.use_hosts_file = ResolveHosts::Never;
    b.build().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The response code of a lookup that found nothing or failed.
fn code(e: &NetError) -> ResponseCode {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) => n.response_code,
        NetError::Dns(DnsError::ResponseCode(c)) => *c,
        other => panic!("not a DNS answer: {other:?}"),
    }
}

#[tokio::test]
async fn answers_a_and_aaaa_records_with_their_ttls() {
    let dns = TestDns::start().await;
    dns.set_a("users.internal", &[v4("10.0.0.1"), v4("10.0.0.2")], 30);
    dns.set_aaaa("users.internal", &[v6("fd00::1")], 20);
    let r = resolver(dns.addr());

    let a = r.lookup("users.internal.", RecordType::A).await.unwrap();
    let got: Vec<(RData, u32)> = a
        .answers()
        .iter()
        .map(|r| (r.data.clone(), r.ttl))
        .collect();
    assert_eq!(
        got,
        [
            (RData::A(v4("10.0.0.1").into()), 30),
            (RData::A(v4("10.0.0.2").into()), 30),
        ]
    );
    assert!(a.message().metadata.authoritative);
    // Names match regardless of case and of the final dot.
    let aaaa = r.lookup("USERS.Internal", RecordType::AAAA).await.unwrap();
    let got: Vec<(RData, u32)> = aaaa
        .answers()
        .iter()
        .map(|r| (r.data.clone(), r.ttl))
        .collect();
    assert_eq!(got, [(RData::AAAA(v6("fd00::1").into()), 20)]);
    assert_eq!(dns.queries("users.internal"), 2);

    // Replaced at run time.
    dns.set_a("users.internal", &[v4("10.0.0.3")], 5);
    let a = r.lookup("users.internal.", RecordType::A).await.unwrap();
    assert_eq!(a.answers().len(), 1);
    assert_eq!(a.answers()[0].data, RData::A(v4("10.0.0.3").into()));
}

#[tokio::test]
async fn answers_srv_records_with_the_targets_in_the_additional_section() {
    let dns = TestDns::start().await;
    dns.set_a("a.internal", &[v4("10.0.0.1")], 40);
    dns.set_aaaa("a.internal", &[v6("fd00::a")], 40);
    dns.set_srv(
        "_http._tcp.users.internal",
        &[(10, 5, 8080, "a.internal"), (20, 0, 8081, "b.internal")],
        60,
    );
    let r = resolver(dns.addr());
    let srv = r
        .lookup("_http._tcp.users.internal.", RecordType::SRV)
        .await
        .unwrap();
    let records: Vec<(u16, u16, u16, String, u32)> = srv
        .answers()
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii(), r.ttl),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        records,
        [
            (10, 5, 8080, "a.internal.".to_owned(), 60),
            (20, 0, 8081, "b.internal.".to_owned(), 60),
        ]
    );
    let extra: Vec<(String, RData)> = srv
        .additionals()
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.clone()))
        .collect();
    assert_eq!(
        extra,
        [
            ("a.internal.".to_owned(), RData::A(v4("10.0.0.1").into())),
            ("a.internal.".to_owned(), RData::AAAA(v6("fd00::a").into())),
        ]
    );

    dns.set_additionals(false);
    let srv = r
        .lookup("_http._tcp.users.internal.", RecordType::SRV)
        .await
        .unwrap();
    assert_eq!(srv.answers().len(), 2);
    assert!(srv.additionals().is_empty());
}

#[tokio::test]
async fn failures_and_empty_answers() {
    let dns = TestDns::start().await;
    let r = resolver(dns.addr());
    // Unknown: NXDOMAIN.
    let e = r
        .lookup("nobody.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ResponseCode::NXDomain);
    assert!(e.is_nx_domain());
    // Known without records of the type: NOERROR, empty.
    dns.set_a("users.internal", &[v4("10.0.0.1")], 30);
    let e = r
        .lookup("users.internal.", RecordType::AAAA)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ResponseCode::NoError);
    assert!(e.is_no_records_found());
    dns.set_a("users.internal", &[], 30);
    let e = r
        .lookup("users.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ResponseCode::NoError);

    dns.set_servfail("users.internal");
    let e = r
        .lookup("users.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ResponseCode::ServFail);
    assert!(!e.is_no_records_found());
    dns.set_refused("users.internal");
    let e = r
        .lookup("users.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ResponseCode::Refused);
    dns.set_nxdomain("users.internal");
    let e = r
        .lookup("users.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert!(e.is_nx_domain());
    dns.set_a("users.internal", &[v4("10.0.0.9")], 30);
    assert!(r.lookup("users.internal.", RecordType::A).await.is_ok());
    dns.remove("users.internal");
    let e = r
        .lookup("users.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert!(e.is_nx_domain());

    // Silent: the client times out; the query was seen.
    dns.set_a("quiet.internal", &[v4("10.0.0.1")], 30);
    dns.set_silent(true);
    let started = Instant::now();
    let e = r
        .lookup("quiet.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert!(!e.is_no_records_found(), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(dns.queries("quiet.internal") >= 1);
    dns.set_silent(false);
    assert!(r.lookup("quiet.internal.", RecordType::A).await.is_ok());

    // Stopped: no answer at all.
    let addr = dns.addr();
    dns.stop();
    let e = resolver(addr)
        .lookup("quiet.internal.", RecordType::A)
        .await
        .unwrap_err();
    assert!(!e.is_no_records_found(), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// The server, byte by byte

/// A query for `name` of `qtype` with `id`, RD as given, without EDNS.
fn raw_query(id: u16, rd: bool, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&(if rd { 0x0100u16 } else { 0 }).to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn the_header_and_question_are_echoed_as_rfc_1035_says() {
    let dns = TestDns::start().await;
    dns.set_a("users.internal", &[v4("10.1.2.3")], 77);

    for rd in [false, true] {
        let q = raw_query(0xBEEF, rd, "Users.Internal", TYPE_A);
        let a = udp_exchange(dns.addr(), &q).await;
        assert_eq!(u16_at(&a, 0), 0xBEEF, "ID echoed");
        let flags = u16_at(&a, 2);
        assert_ne!(flags & 0x8000, 0, "QR");
        assert_eq!((flags >> 11) & 0xF, 0, "opcode QUERY");
        assert_ne!(flags & 0x0400, 0, "AA");
        assert_eq!(flags & 0x0200, 0, "not TC");
        assert_eq!(flags & 0x0100 != 0, rd, "RD copied");
        assert_eq!(flags & 0xF, 0, "NOERROR");
        assert_eq!(
            [u16_at(&a, 4), u16_at(&a, 6), u16_at(&a, 8), u16_at(&a, 10)],
            [1, 1, 0, 0]
        );
        let question = &q[12..];
        assert_eq!(&a[12..12 + question.len()], question, "question echoed");
        let rr = &a[12 + question.len()..];
        assert_eq!(&rr[..2], &[0xC0, 0x0C], "owner compressed to the question");
        assert_eq!(u16_at(rr, 2), TYPE_A);
        assert_eq!(u16_at(rr, 4), 1, "class IN");
        assert_eq!(u32::from_be_bytes([rr[6], rr[7], rr[8], rr[9]]), 77);
        assert_eq!(u16_at(rr, 10), 4);
        assert_eq!(&rr[12..16], &[10, 1, 2, 3]);
        assert_eq!(rr.len(), 16);
    }

    // NXDOMAIN and SERVFAIL carry the question and no records.
    let a = udp_exchange(
        dns.addr(),
        &raw_query(7, true, "nobody.internal", TYPE_AAAA),
    )
    .await;
    assert_eq!(u16_at(&a, 2) & 0xF, 3);
    assert_eq!([u16_at(&a, 4), u16_at(&a, 6)], [1, 0]);
    dns.set_servfail("users.internal");
    let a = udp_exchange(dns.addr(), &raw_query(8, true, "users.internal", TYPE_SRV)).await;
    assert_eq!(u16_at(&a, 0), 8);
    assert_eq!(u16_at(&a, 2) & 0xF, 2);

    // The same over TCP, length-prefixed.
    dns.set_aaaa("v6.internal", &[v6("fd00::1")], 9);
    let mut tcp = tokio::net::TcpStream::connect(dns.addr()).await.unwrap();
    for id in [1u16, 2] {
        let q = raw_query(id, true, "v6.internal", TYPE_AAAA);
        tcp.write_u16(u16::try_from(q.len()).unwrap())
            .await
            .unwrap();
        tcp.write_all(&q).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut a = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut a).await.unwrap();
        assert_eq!(u16_at(&a, 0), id);
        assert_eq!(u16_at(&a, 6), 1, "one answer");
        assert_eq!(&a[a.len() - 16..], &v6("fd00::1").octets());
    }
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let dns = TestDns::start().await;
    let many: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
    dns.set_a("big.internal", &many, 30);
    // Without EDNS a client takes 512 bytes: 60 records do not fit.
    let a = udp_exchange(dns.addr(), &raw_query(3, true, "big.internal", TYPE_A)).await;
    assert_ne!(u16_at(&a, 2) & 0x0200, 0, "TC");
    assert_eq!(u16_at(&a, 6), 0);
    // hickory then asks over TCP and gets them all.
    let r = resolver(dns.addr());
    let lookup = r.lookup("big.internal.", RecordType::A).await.unwrap();
    assert_eq!(lookup.answers().len(), 60);
}

// ---------------------------------------------------------------------------------------
// weir's watcher against it

/// Watches `query` at `server` every `refresh`; the updates arrive on the receiver.
fn watch(
    server: SocketAddr,
    query: DnsQuery,
    refresh: Duration,
) -> (mpsc::UnboundedReceiver<Update>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let spec = DnsDiscovery {
        query,
        refresh,
        server: Some(server),
    };
    let task = watch_dns(Arc::from("users"), spec, move |u| {
        let _ = tx.send(u);
    });
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an update within 10 s")
        .expect("the watcher runs")
}

/// Waits for an update that `matches`, skipping others (unchanged repeats).
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Update>,
    matches: impl Fn(&Update) -> bool,
) -> Update {
    loop {
        let u = next(rx).await;
        if matches(&u) {
            return u;
        }
    }
}

fn endpoints(pairs: &[(&str, u32)]) -> Update {
    Update::Endpoints(
        pairs
            .iter()
            .map(|(addr, weight)| Endpoint::from_socket(addr.parse().unwrap(), *weight))
            .collect(),
    )
}

fn address(name: &str, port: u16) -> DnsQuery {
    DnsQuery::Address {
        name: name.to_owned(),
        port,
    }
}

#[tokio::test]
async fn the_watcher_follows_address_records() {
    let dns = TestDns::start().await;
    dns.set_a("users.internal", &[v4("10.0.0.2"), v4("10.0.0.1")], 30);
    dns.set_aaaa("users.internal", &[v6("fd00::1")], 30);
    let (mut rx, task) = watch(
        dns.addr(),
        address("users.internal", 9000),
        Duration::from_secs(1),
    );
    assert_eq!(
        next(&mut rx).await,
        endpoints(&[
            ("10.0.0.1:9000", 1),
            ("10.0.0.2:9000", 1),
            ("[fd00::1]:9000", 1),
        ])
    );
    // A change is seen within a refresh (1 s) and the next round.
    let changed_at = Instant::now();
    dns.set_a("users.internal", &[v4("10.0.0.3")], 30);
    dns.set_aaaa("users.internal", &[], 30);
    let want = endpoints(&[("10.0.0.3:9000", 1)]);
    until(&mut rx, |u| *u == want).await;
    assert!(changed_at.elapsed() < Duration::from_millis(2500));

    // SERVFAIL and REFUSED are failures; NXDOMAIN and empty answers are answers.
    dns.set_servfail("users.internal");
    let failed = until(&mut rx, |u| matches!(u, Update::Failed(_))).await;
    let Update::Failed(reason) = failed else {
        unreachable!()
    };
    assert!(reason.contains("users.internal"), "{reason}");
    dns.set_a("users.internal", &[v4("10.0.0.4")], 30);
    let want = endpoints(&[("10.0.0.4:9000", 1)]);
    until(&mut rx, |u| *u == want).await;
    dns.set_refused("users.internal");
    until(&mut rx, |u| matches!(u, Update::Failed(_))).await;
    dns.set_nxdomain("users.internal");
    until(&mut rx, |u| *u == Update::Endpoints(vec![])).await;
    dns.set_a("users.internal", &[], 30);
    dns.set_aaaa("users.internal", &[], 30);
    assert_eq!(
        until(&mut rx, |u| !matches!(u, Update::Failed(_))).await,
        Update::Endpoints(vec![])
    );
    task.abort();
}

#[tokio::test]
async fn the_watcher_resolves_again_when_the_ttl_ends() {
    let dns = TestDns::start().await;
    dns.set_a("users.internal", &[v4("10.0.0.1")], 1);
    // refresh 60 s, but a TTL of 1 s: asked again every second.
    let (mut rx, task) = watch(
        dns.addr(),
        address("users.internal", 80),
        Duration::from_secs(60),
    );
    let started = Instant::now();
    next(&mut rx).await;
    next(&mut rx).await;
    next(&mut rx).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A and AAAA each round.
    assert!(dns.queries("users.internal") >= 6);
    task.abort();
}

#[tokio::test]
async fn the_watcher_retries_a_failure_after_about_a_second() {
    let dns = TestDns::start().await;
    dns.set_servfail("users.internal");
    let (mut rx, task) = watch(
        dns.addr(),
        address("users.internal", 80),
        Duration::from_secs(30),
    );
    assert!(matches!(next(&mut rx).await, Update::Failed(_)));
    let failed_at = Instant::now();
    dns.set_a("users.internal", &[v4("10.0.0.1")], 30);
    assert_eq!(next(&mut rx).await, endpoints(&[("10.0.0.1:80", 1)]));
    let took = failed_at.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(2),
        "{took:?}"
    );
    task.abort();
}

#[tokio::test]
async fn the_watcher_fails_when_the_server_is_gone_or_silent() {
    let dns = TestDns::start().await;
    dns.set_a("users.internal", &[v4("10.0.0.1")], 30);
    let (mut rx, task) = watch(
        dns.addr(),
        address("users.internal", 80),
        Duration::from_secs(1),
    );
    assert_eq!(next(&mut rx).await, endpoints(&[("10.0.0.1:80", 1)]));
    // Silent: a timeout is a failure, not an empty set.
    dns.set_silent(true);
    until(&mut rx, |u| matches!(u, Update::Failed(_))).await;
    dns.set_silent(false);
    until(&mut rx, |u| *u == endpoints(&[("10.0.0.1:80", 1)])).await;
    // Gone.
    dns.stop();
    until(&mut rx, |u| matches!(u, Update::Failed(_))).await;
    task.abort();
}

#[tokio::test]
async fn the_watcher_uses_the_lowest_srv_priority_with_ports_and_weights() {
    let dns = TestDns::start().await;
    dns.set_a("a.internal", &[v4("10.0.0.1")], 30);
    dns.set_aaaa("a.internal", &[v6("fd00::a")], 30);
    dns.set_a("b.internal", &[v4("10.0.0.2")], 30);
    dns.set_a("backup.internal", &[v4("10.0.0.9")], 30);
    dns.set_srv(
        "_http._tcp.users.internal",
        &[
            (10, 3, 8080, "a.internal"),
            (10, 0, 8081, "b.internal"),
            (20, 5, 8082, "backup.internal"),
        ],
        30,
    );
    let srv = DnsQuery::Srv {
        name: "_http._tcp.users.internal".to_owned(),
    };
    let (mut rx, task) = watch(dns.addr(), srv.clone(), Duration::from_secs(1));
    let want = endpoints(&[
        ("10.0.0.1:8080", 3),
        ("10.0.0.2:8081", 1),
        ("[fd00::a]:8080", 3),
    ]);
    assert_eq!(next(&mut rx).await, want);
    // The targets came from the additional section: not asked for.
    assert_eq!(dns.queries("a.internal"), 0);
    task.abort();

    // Without additionals, the targets are asked for.
    dns.set_additionals(false);
    let (mut rx, task) = watch(dns.addr(), srv.clone(), Duration::from_secs(1));
    assert_eq!(next(&mut rx).await, want);
    assert_eq!(dns.queries("a.internal"), 2);
    assert_eq!(dns.queries("backup.internal"), 0);
    // A target that fails fails the round; one that does not exist adds nothing.
    dns.set_servfail("b.internal");
    until(&mut rx, |u| matches!(u, Update::Failed(_))).await;
    dns.remove("b.internal");
    let want = endpoints(&[("10.0.0.1:8080", 3), ("[fd00::a]:8080", 3)]);
    until(&mut rx, |u| *u == want).await;
    // No SRV records: no targets.
    dns.set_srv("_http._tcp.users.internal", &[], 30);
    until(&mut rx, |u| *u == Update::Endpoints(vec![])).await;
    task.abort();
}

#[test]
fn record_type_numbers() {
    assert_eq!(RecordType::from(TYPE_A), RecordType::A);
    assert_eq!(RecordType::from(TYPE_AAAA), RecordType::AAAA);
    assert_eq!(RecordType::from(TYPE_SRV), RecordType::SRV);
}
