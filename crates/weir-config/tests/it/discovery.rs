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
            "weir.yaml:3:16: upstreams.users.discovery: discovery needs one source: dns: { name: \
             users.internal, port: 9000 }, etcd: { prefix: /weir/upstreams/users/ } or consul: \
             { service: users }"
        ]
    );
    let p = problems(&config(
        "    discovery:\n      dns: { name: a.internal, port: 80 }\n      etcd: { prefix: /weir/users/ }\n",
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:5:7: upstreams.users.discovery.etcd: discovery takes exactly one source; \
             `dns` is already given",
        ]
    );
}

#[test]
fn etcd_with_everything() {
    let l = ok(&format!(
        "\
etcd:
  endpoints: [https://10.0.0.5:2379, 'HTTPS://10.0.0.6:2379/']
  username: weir
  password: s3cret
  ca_file: tests/keys/ca.pem
  cert_file: tests/keys/ca.pem
  key_file: tests/keys/test-only-client.key.pem
  timeout: 2s
{}",
        config("    discovery:\n      etcd: { prefix: /weir/upstreams/users/ }\n")
    ));
    let Discovery::Etcd(e) = &l.upstreams[0].discovery else {
        panic!("etcd")
    };
    assert_eq!(e.prefix, "/weir/upstreams/users/");
    let c = &e.cluster;
    assert_eq!(
        c.endpoints,
        ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
    );
    let creds = c.credentials.as_ref().unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.expose()),
        ("weir", "s3cret")
    );
    assert!(
        c.ca_pem
            .as_ref()
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
    let id = c.identity.as_ref().unwrap();
    assert!(
        id.key_pem
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAw")
    );
    assert_eq!(c.timeout, Duration::from_secs(2));
    // The password never shows in the effective config, nor in Debug output.
    assert_eq!(l.effective["etcd"]["password"], "***");
    assert!(!format!("{:?}", l.upstreams[0].discovery).contains("s3cret"));
    assert!(!format!("{:?}", l.upstreams[0].discovery).contains("MC4CAQAw"));
}

#[test]
fn every_problem_of_the_etcd_section_at_its_place() {
    let p = problems(&format!(
        "\
etcd:
  endpoints: [http://10.0.0.5:2379, https://10.0.0.6:2379, 'ftp://x', 'http://h:1/v3']
  username: weir
  cert_file: tests/keys/ca.pem
  timeout: 0s
{}",
        config("    discovery:\n      etcd: { prefix: /weir/ }\n")
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:2:60: etcd.endpoints[2]: \"ftp://x\" is not an http:// or https:// URL \
             such as http://10.0.0.5:2379",
            "weir.yaml:2:71: etcd.endpoints[3]: \"http://h:1/v3\" must be scheme://host[:port] \
             only, without a path",
            "weir.yaml:3:3: etcd.username: `username` needs `password` too",
            "weir.yaml:4:3: etcd.cert_file: `cert_file` needs `key_file` too",
            "weir.yaml:5:12: etcd.timeout: must be longer than 0",
        ]
    );
    let p = problems(&format!(
        "etcd: {{ endpoints: [http://a:1, https://b:1] }}\n{}",
        config("    discovery:\n      etcd: { prefix: /weir/ }\n")
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:1:20: etcd.endpoints: mix of http:// and https:// endpoints; a cluster is \
             reached one way, so give them all the same scheme"
        ]
    );
    let p = problems(&format!(
        "etcd: {{ endpoints: [http://a:1], ca_file: tests/keys/ca.pem }}\n{}",
        config("    discovery:\n      etcd: { prefix: /weir/ }\n")
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:1:34: etcd.ca_file: `ca_file` applies only to https:// endpoints (plain \
             http:// has no TLS)"
        ]
    );
    // No section at all: said where the section is needed.
    assert_eq!(
        problems(&config("    discovery:\n      etcd: { prefix: /weir/ }\n")),
        [
            "weir.yaml:4:7: upstreams.users.discovery.etcd: etcd discovery needs the top-level \
             `etcd` section, such as etcd: { endpoints: [http://10.0.0.5:2379] }"
        ]
    );
}

#[test]
fn consul_defaults_to_the_local_agent() {
    let l = ok(&config(
        "    discovery:\n      consul: { service: users, tag: v2 }\n",
    ));
    let Discovery::Consul(c) = &l.upstreams[0].discovery else {
        panic!("consul")
    };
    assert_eq!(
        (c.service.as_str(), c.tag.as_deref()),
        ("users", Some("v2"))
    );
    assert_eq!(c.datacenter, None);
    assert_eq!(c.agent.address, "http://127.0.0.1:8500");
    assert_eq!(c.agent.token, None);
    assert_eq!(c.agent.wait, Duration::from_secs(55));
    assert_eq!(
        l.effective["upstreams"]["users"]["discovery"],
        json!({ "consul": { "service": "users", "tag": "v2" } })
    );
}

#[test]
fn consul_with_everything_and_its_problems() {
    let l = ok(&format!(
        "consul: {{ address: 'https://consul.internal:8501/', token: t0ken, datacenter: dc1, \
         ca_file: tests/keys/ca.pem, wait: 5m }}\n{}",
        config("    discovery:\n      consul: { service: users, datacenter: dc2 }\n")
    ));
    let Discovery::Consul(c) = &l.upstreams[0].discovery else {
        panic!("consul")
    };
    assert_eq!(c.datacenter.as_deref(), Some("dc2"));
    let a = &c.agent;
    assert_eq!(a.address, "https://consul.internal:8501");
    assert_eq!(a.token.as_ref().unwrap().expose(), "t0ken");
    assert_eq!(a.datacenter.as_deref(), Some("dc1"));
    assert!(a.ca_pem.is_some());
    assert_eq!(a.wait, Duration::from_secs(300));
    assert_eq!(l.effective["consul"]["token"], "***");

    // An unset `${CONSUL_TOKEN:-}` is no token.
    let l = ok(&format!(
        "consul: {{ token: '' }}\n{}",
        config("    discovery:\n      consul: { service: users }\n")
    ));
    let Discovery::Consul(c) = &l.upstreams[0].discovery else {
        panic!("consul")
    };
    assert_eq!(c.agent.token, None);

    let p = problems(&format!(
        "consul: {{ address: 'consul:8500', datacenter: 'd c', wait: 20m, ca_file: x.pem }}\n{}",
        config("    discovery:\n      consul: { service: '' }\n")
    ));
    assert_eq!(
        p,
        [
            "weir.yaml:1:20: consul.address: \"consul:8500\" is not an http:// or https:// URL \
             such as http://10.0.0.5:2379",
            "weir.yaml:1:47: consul.datacenter: the datacenter \"d c\" has ' ', which Consul \
             names never have",
            "weir.yaml:1:60: consul.wait: 20m is out of range: 1s to 10m",
            "weir.yaml:1:74: consul.ca_file: cannot read \"x.pem\": No such file or directory \
             (os error 2)",
            "weir.yaml:5:26: upstreams.users.discovery.consul.service: the service cannot be empty",
        ]
    );
}

#[test]
fn targets_or_discovery_not_both() {
    // Exactly one of the two; where the problem is reported is up to the upstream's checks.
    let p = problems(&config(
        "    targets: [{ url: 'http://10.0.0.1:9000' }]\n    discovery:\n      dns: { name: a.internal, port: 80 }\n",
    ));
    assert!(p.iter().any(|m| m.contains("upstreams.users")), "{p:?}");
}
