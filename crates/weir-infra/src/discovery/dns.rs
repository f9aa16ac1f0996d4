//! DNS discovery: the A and AAAA records of a name, or its SRV records, resolved with
//! hickory again and again.
//!
//! Each round asks the name server afresh (hickory's cache is off and cleared, so no cached
//! answer can hide a change) and reports the whole result. The next round comes after
//! `refresh`, or when the answer's shortest TTL ends if that is sooner, never within a
//! second. A round that fails is retried after about a second, then twice as long after
//! each failure in a row (with jitter, so that the upstreams of many weirs do not ask in
//! step), at most `refresh`.
//!
//! What is a failure and what is an answer: SERVFAIL, REFUSED, a timeout or an I/O error
//! is a failure (the caller keeps its last good targets); NXDOMAIN, or NOERROR without
//! records, is an answer that there are no targets. For A/AAAA, both families are asked
//! together, and a failure of either fails the round (a half answer would drop the other
//! family's targets). For SRV, only the records of the lowest priority number count; their
//! target hosts' addresses come from the answer's additional section when the server sent
//! them, else they are asked for, and a failure to resolve any of them fails the round.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join, join_all};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::task::JoinHandle;
use tracing::Instrument;
use weir_domain::discovery::{DnsDiscovery, DnsQuery, Endpoint};

use super::Update;

/// Never resolve more often than this, whatever the TTL says.
const MIN_DELAY: Duration = Duration::from_secs(1);

/// The wait after a first failure; it doubles with each failure in a row, up to `refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A round (with hickory's own timeouts and attempts inside) never takes longer than this.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// Resolves `spec` now and then again at `min(refresh, TTL)` (at least 1 s), forever, and
/// calls `sink` with every result, unchanged ones too (the caller compares). A failure is
/// [`Update::Failed`] and is retried with backoff (about 1 s at first, with jitter, at most
/// `refresh`). Nothing is logged here; `upstream` names the task's tracing span, so
/// hickory's own log lines say which upstream they are about.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the name is taken as the caller holds it; only the span borrows it"
)]
pub fn watch_dns(
    upstream: Arc<str>,
    spec: DnsDiscovery,
    sink: impl Fn(Update) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let span = tracing::debug_span!("dns_discovery", upstream = %upstream);
    tokio::spawn(run(spec, sink).instrument(span))
}

async fn run(spec: DnsDiscovery, sink: impl Fn(Update)) {
    // Built on the first round (and again after a round that could not build it), so that
    // an unreadable resolv.conf is a failure like any other, retried.
    let mut resolver: Option<TokioResolver> = None;
    let mut failures: u32 = 0;
    loop {
        let result = tokio::time::timeout(ROUND_LIMIT, round(&mut resolver, &spec))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", ROUND_LIMIT.as_secs())));
        let delay = match result {
            Ok(answer) => {
                failures = 0;
                let delay = next_delay(spec.refresh, answer.ttl);
                sink(Update::Endpoints(answer.endpoints));
                delay
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                sink(Update::Failed(reason));
                retry_delay(failures, spec.refresh, super::random())
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// One resolution's targets, and how long they may be trusted (the shortest TTL of the
/// records used, or the negative TTL of an empty answer; `None` when the answer gave none).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    endpoints: Vec<Endpoint>,
    ttl: Option<Duration>,
}

async fn round(slot: &mut Option<TokioResolver>, spec: &DnsDiscovery) -> Result<Answer, String> {
    if slot.is_none() {
        *slot = Some(resolver(spec)?);
    }
    let Some(resolver) = slot.as_ref() else {
        return Err("the resolver could not be built".to_owned());
    };
    // Belt and braces with `cache_size = 0`: every round asks the name server.
    resolver.clear_cache();
    match &spec.query {
        DnsQuery::Address { name, port } => {
            let found = addresses(resolver, name).await?;
            Ok(Answer {
                endpoints: address_endpoints(&found.ips, *port),
                ttl: found.ttl,
            })
        }
        DnsQuery::Srv { name } => srv(resolver, name).await,
    }
}

/// A resolver that asks `spec.server` only (UDP, TCP for truncated answers), or the
/// system's name servers; without a cache, so that every round sees the current records.
fn resolver(spec: &DnsDiscovery) -> Result<TokioResolver, String> {
    let mut builder = match spec.server {
        Some(server) => {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut ns.connections {
                connection.port = server.port();
            }
            let config = ResolverConfig::from_name_servers(vec![ns]);
            let mut builder =
                Resolver::builder_with_config(config, TokioRuntimeProvider::default());
            // The named server is the only source: no /etc/hosts.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.positive_max_ttl = Some(spec.refresh);
    options.negative_max_ttl = Some(spec.refresh);
    // A server that does not answer is noticed within a refresh.
    options.timeout = options.timeout.min(spec.refresh.max(MIN_DELAY));
    builder
        .build()
        .map_err(|e| format!("cannot set up the resolver: {e}"))
}

/// The A and AAAA addresses of one name.
#[derive(Debug, Default, PartialEq, Eq)]
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
}

/// Asks for the A and AAAA records of `name` together; either failing fails both.
async fn addresses(resolver: &TokioResolver, name: &str) -> Result<Addresses, String> {
    let (a, aaaa) = join(
        resolver.lookup(name, RecordType::A),
        resolver.lookup(name, RecordType::AAAA),
    )
    .await;
    let mut out = Addresses::default();
    for (result, kind) in [(a, RecordType::A), (aaaa, RecordType::AAAA)] {
        match result {
            Ok(lookup) => collect_addresses(lookup.answers(), None, &mut out),
            Err(e) => match no_records(&e) {
                Some(negative_ttl) => out.ttl = shortest(out.ttl, negative_ttl),
                None => return Err(failure(name, kind, &e)),
            },
        }
    }
    Ok(out)
}

/// Adds the A and AAAA records of `records` (those of `owner` only, when given) to `out`.
/// CNAMEs on the way count for the TTL: the answer is only as good as its chain.
fn collect_addresses(records: &[Record], owner: Option<&str>, out: &mut Addresses) {
    for r in records {
        if owner.is_some_and(|o| host_key(&r.name) != o) {
            continue;
        }
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            RData::CNAME(_) if owner.is_none() => {
                out.ttl = shortest(out.ttl, Some(secs(r.ttl)));
                continue;
            }
            _ => continue,
        };
        out.ips.push(ip);
        out.ttl = shortest(out.ttl, Some(secs(r.ttl)));
    }
}

/// An SRV record, its target host written as [`host_key`] writes names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

async fn srv(resolver: &TokioResolver, name: &str) -> Result<Answer, String> {
    let lookup = match resolver.lookup(name, RecordType::SRV).await {
        Ok(lookup) => lookup,
        Err(e) => {
            return match no_records(&e) {
                Some(ttl) => Ok(Answer {
                    endpoints: Vec::new(),
                    ttl,
                }),
                None => Err(failure(name, RecordType::SRV, &e)),
            };
        }
    };
    let mut ttl = None;
    let mut records = Vec::new();
    for r in lookup.answers() {
        if let RData::SRV(s) = &r.data {
            ttl = shortest(ttl, Some(secs(r.ttl)));
            records.push(SrvRecord {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: host_key(&s.target),
            });
        }
    }
    let chosen = lowest_priority(&records);

    // Each target host once: from the additional section when the server sent its
    // addresses, else asked for.
    let mut hosts: Vec<&str> = chosen.iter().map(|r| r.target.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let mut found: HashMap<&str, Vec<IpAddr>> = HashMap::with_capacity(hosts.len());
    let mut missing = Vec::new();
    for host in hosts {
        let mut extra = Addresses::default();
        collect_addresses(lookup.additionals(), Some(host), &mut extra);
        if extra.ips.is_empty() {
            missing.push(host);
        } else {
            ttl = shortest(ttl, extra.ttl);
            found.insert(host, extra.ips);
        }
    }
    let names: Vec<String> = missing.iter().map(|host| fqdn(host)).collect();
    let asked = join_all(names.iter().map(|n| addresses(resolver, n))).await;
    for (host, result) in missing.iter().zip(asked) {
        let a = result?;
        ttl = shortest(ttl, a.ttl);
        found.insert(host, a.ips);
    }
    Ok(Answer {
        endpoints: srv_endpoints(&chosen, &found),
        ttl,
    })
}

/// The records a client must use: those of the lowest priority number. A record whose
/// target is `.` ("no service here", RFC 2782) is never used.
fn lowest_priority(records: &[SrvRecord]) -> Vec<&SrvRecord> {
    let usable = || records.iter().filter(|r| !r.target.is_empty());
    let Some(lowest) = usable().map(|r| r.priority).min() else {
        return Vec::new();
    };
    usable().filter(|r| r.priority == lowest).collect()
}

/// Every address of `ips` on `port`, weight 1; sorted by URL, each once.
fn address_endpoints(ips: &[IpAddr], port: u16) -> Vec<Endpoint> {
    let mut ips = ips.to_vec();
    ips.sort_unstable();
    ips.dedup();
    super::merged(
        ips.into_iter()
            .map(|ip| Endpoint::from_socket(SocketAddr::new(ip, port), 1))
            .collect(),
    )
}

/// Every address of each record's target on the record's port, with the record's weight
/// (0 counts as 1); sorted by URL. An address and port two records lead to is one endpoint
/// with their weights added: it gets the share of both.
fn srv_endpoints(records: &[&SrvRecord], addresses: &HashMap<&str, Vec<IpAddr>>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for r in records {
        let mut ips = addresses
            .get(r.target.as_str())
            .cloned()
            .unwrap_or_default();
        ips.sort_unstable();
        ips.dedup();
        for ip in ips {
            out.push(Endpoint::from_socket(
                SocketAddr::new(ip, r.port),
                u32::from(r.weight.max(1)),
            ));
        }
    }
    super::merged(out)
}

/// When to resolve again after an answer: after `refresh`, or when the TTL ends if that
/// is sooner, but not within [`MIN_DELAY`].
fn next_delay(refresh: Duration, ttl: Option<Duration>) -> Duration {
    ttl.map_or(refresh, |t| t.min(refresh)).max(MIN_DELAY)
}

/// When to try again after `failures` failed rounds in a row (1 for the first): about
/// [`FIRST_RETRY`], doubling, at most `refresh`; each wait is 75% to 100% of that, by
/// `random`.
fn retry_delay(failures: u32, refresh: Duration, random: u64) -> Duration {
    super::backoff(failures, FIRST_RETRY, refresh.max(MIN_DELAY), 0.75, random)
}

/// When the error is an answer that there are no such records (NXDOMAIN, or NOERROR with
/// none): `Some` with the answer's negative TTL when it gave one.
fn no_records(e: &NetError) -> Option<Option<Duration>> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(none)) => Some(none.negative_ttl.map(secs)),
        _ => None,
    }
}

fn failure(name: &str, kind: RecordType, e: &NetError) -> String {
    format!("{kind} {name}: {e}")
}

fn shortest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn secs(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

/// A host name as a key: lower case, without the final dot (`.` itself becomes empty).
fn host_key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A [`host_key`] as a fully qualified name, so that no search domain is appended.
fn fqdn(host: &str) -> String {
    format!("{host}.")
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};

    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }

    fn urls(list: &[Endpoint]) -> Vec<(&str, u32)> {
        list.iter().map(|e| (e.url.as_str(), e.weight)).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_become_sorted_unique_endpoints_of_both_families() {
        let list = address_endpoints(
            &[
                ip("10.0.0.9"),
                ip("fd00::1"),
                ip("10.0.0.10"),
                ip("10.0.0.9"),
            ],
            9000,
        );
        assert_eq!(
            urls(&list),
            [
                ("http://10.0.0.10:9000", 1),
                ("http://10.0.0.9:9000", 1),
                ("http://[fd00::1]:9000", 1),
            ]
        );
        assert_eq!(list[2].addr.host, "[fd00::1]");
        assert!(address_endpoints(&[], 80).is_empty());
    }

    #[test]
    fn only_the_lowest_priority_is_used() {
        let records = [
            srv(20, 5, 80, "backup.internal"),
            srv(10, 3, 8080, "a.internal"),
            srv(10, 0, 8081, "b.internal"),
            srv(5, 1, 80, ""),
        ];
        let chosen = lowest_priority(&records);
        assert_eq!(chosen, [&records[1], &records[2]]);
        assert!(lowest_priority(&[srv(0, 0, 0, "")]).is_empty());
        assert!(lowest_priority(&[]).is_empty());
    }

    #[test]
    fn srv_endpoints_take_port_and_weight_from_the_records() {
        let records = [
            srv(10, 3, 8080, "a.internal"),
            srv(10, 0, 8081, "b.internal"),
            srv(10, 2, 8080, "c.internal"),
            srv(10, 7, 9000, "gone.internal"),
        ];
        let chosen: Vec<&SrvRecord> = records.iter().collect();
        let addresses = HashMap::from([
            ("a.internal", vec![ip("10.0.0.1"), ip("fd00::a")]),
            ("b.internal", vec![ip("10.0.0.2")]),
            // c resolves to the same address as a: one endpoint with both shares.
            ("c.internal", vec![ip("10.0.0.1")]),
            ("gone.internal", vec![]),
        ]);
        assert_eq!(
            urls(&srv_endpoints(&chosen, &addresses)),
            [
                ("http://10.0.0.1:8080", 5),
                ("http://10.0.0.2:8081", 1),
                ("http://[fd00::a]:8080", 3),
            ]
        );
    }

    #[test]
    fn records_of_the_answer_give_addresses_and_the_shortest_ttl() {
        let name = Name::from_ascii("a.internal.").unwrap();
        let other = Name::from_ascii("B.Internal.").unwrap();
        let records = [
            Record::from_rdata(name.clone(), 30, RData::A(A::new(10, 0, 0, 1))),
            Record::from_rdata(
                name.clone(),
                20,
                RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            ),
            Record::from_rdata(other.clone(), 5, RData::A(A::new(10, 0, 0, 2))),
            Record::from_rdata(other.clone(), 3, RData::CNAME(CNAME(name))),
        ];
        let mut all = Addresses::default();
        collect_addresses(&records, None, &mut all);
        assert_eq!(all.ips, [ip("10.0.0.1"), ip("fd00::1"), ip("10.0.0.2")]);
        assert_eq!(all.ttl, Some(secs(3)));
        let mut b = Addresses::default();
        collect_addresses(&records, Some("b.internal"), &mut b);
        assert_eq!(
            b,
            Addresses {
                ips: vec![ip("10.0.0.2")],
                ttl: Some(secs(5)),
            }
        );
        assert_eq!(host_key(&other), "b.internal");
        assert_eq!(host_key(&Name::root()), "");
        assert_eq!(fqdn("b.internal"), "b.internal.");
    }

    #[test]
    fn next_round_after_refresh_or_ttl_but_not_within_a_second() {
        let refresh = Duration::from_secs(30);
        assert_eq!(next_delay(refresh, None), refresh);
        assert_eq!(next_delay(refresh, Some(secs(300))), refresh);
        assert_eq!(next_delay(refresh, Some(secs(5))), secs(5));
        assert_eq!(next_delay(refresh, Some(secs(0))), MIN_DELAY);
        assert_eq!(next_delay(Duration::from_millis(200), None), MIN_DELAY);
    }

    #[test]
    fn retries_back_off_from_a_second_to_refresh_with_jitter() {
        let refresh = Duration::from_secs(10);
        let (low, high) = (0, u64::MAX);
        assert_eq!(retry_delay(1, refresh, low), Duration::from_millis(750));
        assert!(retry_delay(1, refresh, high) <= FIRST_RETRY);
        assert!(retry_delay(1, refresh, high) > Duration::from_millis(999));
        assert_eq!(retry_delay(2, refresh, low), Duration::from_millis(1500));
        assert_eq!(retry_delay(3, refresh, low), Duration::from_secs(3));
        assert_eq!(retry_delay(4, refresh, low), Duration::from_secs(6));
        assert_eq!(retry_delay(5, refresh, low), Duration::from_millis(7500));
        assert!(retry_delay(u32::MAX, refresh, high) <= refresh);
        // A refresh of one second is never waited longer than a second.
        assert!(retry_delay(9, Duration::from_secs(1), high) <= Duration::from_secs(1));
        // Jitter spreads the waits.
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| retry_delay(1, refresh, crate::discovery::random()))
            .collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn only_no_records_is_an_answer() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::{Query, ResponseCode};

        let query = Query::query(Name::from_ascii("a.internal.").unwrap(), RecordType::A);
        let mut nx = NoRecords::new(query.clone(), ResponseCode::NXDomain);
        nx.negative_ttl = Some(7);
        assert_eq!(
            no_records(&NetError::from(DnsError::NoRecordsFound(nx))),
            Some(Some(secs(7)))
        );
        let empty = NoRecords::new(query, ResponseCode::NoError);
        assert_eq!(
            no_records(&NetError::from(DnsError::NoRecordsFound(empty))),
            Some(None)
        );
        let servfail = NetError::from(DnsError::ResponseCode(ResponseCode::ServFail));
        assert_eq!(no_records(&servfail), None);
        assert_eq!(no_records(&NetError::Timeout), None);
        assert!(failure("a.internal", RecordType::A, &servfail).starts_with("A a.internal: "));
    }
}
