//! Upstream `discovery`: what it builds, its defaults in the effective config, and every
//! problem with its exact location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::{ok, problems};
use serde_json::json;
use weir_domain::discovery::{Discovery, DnsDiscovery, DnsQuery};

/// An upstream `users` with `body` (indented under it) and a route to it.
fn config(body: &str) -> String {
    format!(
        "\
upstreams:
  users:
{body}routes:
  - {{ name: r, match: {{ prefix: /r }}, upstream: users }}
"
    )
}

#[test]
fn address_records_with_the_defaults() {
    let l = ok(&config(
        "    discovery:\n      dns: { name: users.internal, port: 9000 }\n",
    ));
    assert_eq!(
        l.upstreams[0].discovery,
        Discovery::Dns(DnsDiscovery {
            query: DnsQuery::Address {
                name: "users.internal".to_owned(),
                port: 9000,
            },
            refresh: Duration::from_secs(30),
            server: None,
        })
    );
    assert_eq!(
        l.effective["upstreams"]["users"]["discovery"],
        json!({ "dns": { "name": "users.internal", "port": 9000, "refresh": "30s" } })
    );
}

#[test]
fn srv_records_from_a_given_server() {
    let l = ok(&config(
        "    discovery:\n      dns:\n        srv: _http._tcp.users.internal\n        refresh: 5s\n        server: 127.0.0.1:5353\n    load_balancing: weighted\n",
    ));
    assert_eq!(
        l.upstreams[0].discovery,
        Discovery::Dns(DnsDiscovery {
            query: DnsQuery::Srv {
                name: "_http._tcp.users.internal".to_owned(),
            },
            refresh: Duration::from_secs(5),
            server: Some("127.0.0.1:5353".parse().unwrap()),
        })
    );
    assert_eq!(
        l.effective["upstreams"]["users"]["discovery"],
        json!({ "dns": { "srv": "_http._tcp.users.internal", "refresh": "5s",
                         "server": "127.0.0.1:5353" } })
    );
}

#[test]
fn static_targets_are_static_discovery() {
    let l = ok(&config("    targets: [{ url: 'http://10.0.0.1:9000' }]\n"));
    assert_eq!(l.upstreams[0].discovery, Discovery::Static);
    assert!(l.effective["upstreams"]["users"].get("discovery").is_none());
}

#[test]
fn every_problem_of_a_dns_source_at_its_place() {
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns: { name: users.internal, refresh: 500ms, server: 10.0.0.2 }\n",
        )),
        [
            "weir.yaml:4:12: upstreams.users.discovery.dns: missing required key \"port\": the \
             port every address of `name` is served on, 1 to 65535",
            "weir.yaml:4:45: upstreams.users.discovery.dns.refresh: 500ms is too short: a name \
             server is asked at most once a second (at least 1s)",
            "weir.yaml:4:60: upstreams.users.discovery.dns.server: \"10.0.0.2\" needs a port \
             too, such as 10.0.0.2:53",
        ]
    );
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns:\n        name: users_internal.\n        port: 65536\n",
        )),
        ["weir.yaml:6:15: upstreams.users.discovery.dns.port: 65536 is not a port (1 to 65535)"]
    );
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns:\n        name: 'users internal'\n        port: 80\n",
        )),
        [
            "weir.yaml:5:15: upstreams.users.discovery.dns.name: \"users internal\" is not a DNS \
             name: ' ' is not allowed (letters, digits, '-', '_' and '.' are)"
        ]
    );
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns:\n        srv: _http._tcp.users\n        port: 80\n",
        )),
        [
            "weir.yaml:6:9: upstreams.users.discovery.dns.port: `port` is not used with `srv`: \
             each SRV record carries its own port"
        ]
    );
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns: { name: a.internal, srv: _http._tcp.a.internal }\n",
        )),
        [
            "weir.yaml:4:32: upstreams.users.discovery.dns.srv: `name` (A/AAAA records) and \
             `srv` (SRV records) exclude each other; keep one"
        ]
    );
    assert_eq!(
        problems(&config(
            "    discovery:\n      dns: { port: 80, server: 'ns1:53', severs: x }\n",
        )),
        [
            "weir.yaml:4:12: upstreams.users.discovery.dns: dns discovery needs `name` (A/AAAA \
             records, with `port`) or `srv` (SRV records)",
            "weir.yaml:4:32: upstreams.users.discovery.dns.server: \"ns1:53\" is not IP:PORT \
             such as 10.0.0.2:53 or [::1]:53 (a name server is given by address, not by name)",
            "weir.yaml:4:42: upstreams.users.discovery.dns.severs: unknown key \"severs\" \
             (expected one of name, port, srv, refresh, server)",
        ]
    );
}

#[test]
fn exactly_one_source() {
    assert_eq!(
        problems(&config("    discovery: {}\n")),
        [
            "weir.yaml:3:16: upstreams.users.discovery: discovery needs one source, such as \
             dns: { name: users.internal, port: 9000 } or dns: { srv: _http._tcp.users.internal }"
        ]
    );
    let p = problems(&config(
        "    discovery:\n      dns: { name: a.internal, port: 80 }\n      etcd: { prefix: /weir/users/ }\n",
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:5:7: upstreams.users.discovery.etcd: etcd discovery is not supported yet; \
             use `dns`, or list `targets`",
            "weir.yaml:5:7: upstreams.users.discovery.etcd: discovery takes exactly one source; \
             `dns` is already given",
        ]
    );
}

#[test]
fn etcd_and_consul_are_recognised_but_not_supported_yet() {
    for (source, name) in [("etcd", "etcd"), ("consul", "Consul")] {
        let p = problems(&config(&format!(
            "    discovery:\n      {source}: {{ x: 1 }}\n"
        )));
        assert_eq!(
            p,
            [format!(
                "weir.yaml:4:7: upstreams.users.discovery.{source}: {name} discovery is not \
                 supported yet; use `dns`, or list `targets`"
            )]
        );
    }
}

#[test]
fn targets_or_discovery_not_both() {
    // Exactly one of the two; where the problem is reported is up to the upstream's checks.
    let p = problems(&config(
        "    targets: [{ url: 'http://10.0.0.1:9000' }]\n    discovery:\n      dns: { name: a.internal, port: 80 }\n",
    ));
    assert!(p.iter().any(|m| m.contains("upstreams.users")), "{p:?}");
}
