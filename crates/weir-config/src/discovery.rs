//! Checking an upstream's `discovery` and building the domain's [`Discovery`]: where its
//! targets come from at run time instead of `targets`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use weir_domain::discovery::{ConsulDiscovery, Discovery, DnsDiscovery, DnsQuery, EtcdDiscovery};

use crate::checks::duration;
use crate::model::{
    ConsulDiscoveryConfig, DiscoveryConfig, DnsDiscoveryConfig, EtcdDiscoveryConfig,
};
use crate::node::KeyPath;
use crate::registries::{Registries, Section, name_part};
use crate::report::Report;

/// The shortest `refresh`: a name server is not asked more often than once a second.
pub(crate) const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The longest DNS name, without its final dot (RFC 1035: 255 octets on the wire).
const MAX_NAME: usize = 253;

/// The longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// `upstreams.<name>.discovery` (at `path`): exactly one source; etcd and Consul through
/// the top-level sections in `registries`. `None` when it has problems, all reported.
pub(crate) fn build(
    cfg: &DiscoveryConfig,
    registries: &Registries,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Discovery> {
    let sources: Vec<&str> = [
        ("dns", cfg.dns.is_some()),
        ("etcd", cfg.etcd.is_some()),
        ("consul", cfg.consul.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match sources.as_slice() {
        [] => {
            r.at(
                path,
                "discovery needs one source: dns: { name: users.internal, port: 9000 }, \
                 etcd: { prefix: /weir/upstreams/users/ } or consul: { service: users }",
            );
            return None;
        }
        [_] => {}
        [first, rest @ ..] => {
            for other in rest {
                r.at_key(
                    &path.key(other),
                    format!("discovery takes exactly one source; `{first}` is already given"),
                );
            }
            return None;
        }
    }
    if let Some(dns) = &cfg.dns {
        return dns_discovery(dns, &path.key("dns"), r).map(Discovery::Dns);
    }
    if let Some(etcd) = &cfg.etcd {
        return etcd_discovery(etcd, &registries.etcd, &path.key("etcd"), r).map(Discovery::Etcd);
    }
    let consul = cfg.consul.as_ref()?;
    consul_discovery(consul, &registries.consul, &path.key("consul"), r).map(Discovery::Consul)
}

/// `discovery.etcd`: a prefix, read from the cluster of the top-level `etcd` section.
fn etcd_discovery(
    c: &EtcdDiscoveryConfig,
    cluster: &Section<weir_domain::discovery::EtcdCluster>,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<EtcdDiscovery> {
    let prefix = c.prefix.trim();
    let prefix = if prefix.is_empty() {
        // An empty prefix would make every key of the cluster a target.
        r.at(
            &path.key("prefix"),
            "the prefix cannot be empty; use the keys of one upstream, such as \
             /weir/upstreams/users/",
        );
        None
    } else {
        Some(prefix.to_owned())
    };
    let cluster = match cluster {
        Section::Ready(c) => Some(Arc::clone(c)),
        Section::Broken => None,
        Section::Absent => {
            r.at_key(
                path,
                "etcd discovery needs the top-level `etcd` section, such as \
                 etcd: { endpoints: [http://10.0.0.5:2379] }",
            );
            None
        }
    };
    Some(EtcdDiscovery {
        prefix: prefix?,
        cluster: cluster?,
    })
}

/// `discovery.consul`: a service (and tag, datacenter), asked of the top-level `consul`
/// section's agent.
fn consul_discovery(
    c: &ConsulDiscoveryConfig,
    agent: &Section<weir_domain::discovery::ConsulAgent>,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<ConsulDiscovery> {
    let service = r.check(&path.key("service"), name_part("service", &c.service));
    if service.as_deref().is_some_and(|s| s.contains('/')) {
        r.at(&path.key("service"), "a Consul service name has no '/'");
        return None;
    }
    let tag = match &c.tag {
        None => Some(None),
        Some(t) => r.check(&path.key("tag"), name_part("tag", t)).map(Some),
    };
    let datacenter = match &c.datacenter {
        None => Some(None),
        Some(d) => r
            .check(&path.key("datacenter"), name_part("datacenter", d))
            .map(Some),
    };
    let agent = match agent {
        Section::Ready(a) => Some(Arc::clone(a)),
        Section::Broken | Section::Absent => None,
    };
    Some(ConsulDiscovery {
        service: service?,
        tag: tag?,
        datacenter: datacenter?,
        agent: agent?,
    })
}

/// `discovery.dns`.
fn dns_discovery(
    c: &DnsDiscoveryConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<DnsDiscovery> {
    let query = match (&c.name, &c.srv) {
        (Some(_), Some(_)) => {
            r.at_key(
                &path.key("srv"),
                "`name` (A/AAAA records) and `srv` (SRV records) exclude each other; keep one",
            );
            None
        }
        (None, None) => {
            r.at(
                path,
                "dns discovery needs `name` (A/AAAA records, with `port`) or `srv` (SRV records)",
            );
            None
        }
        (Some(name), None) => {
            let name = r.check(&path.key("name"), dns_name(name));
            let port = match c.port {
                None => {
                    r.at(
                        path,
                        "missing required key \"port\": the port every address of `name` is \
                         served on, 1 to 65535",
                    );
                    None
                }
                Some(p) => match u16::try_from(p) {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        r.at(&path.key("port"), format!("{p} is not a port (1 to 65535)"));
                        None
                    }
                },
            };
            name.zip(port)
                .map(|(name, port)| DnsQuery::Address { name, port })
        }
        (None, Some(srv)) => {
            let name = r.check(&path.key("srv"), dns_name(srv));
            if c.port.is_some() {
                r.at_key(
                    &path.key("port"),
                    "`port` is not used with `srv`: each SRV record carries its own port",
                );
                None
            } else {
                name.map(|name| DnsQuery::Srv { name })
            }
        }
    };
    let refresh = match duration(r, &path.key("refresh"), &c.refresh, false) {
        Some(d) if d < MIN_REFRESH => {
            r.at(
                &path.key("refresh"),
                format!(
                    "{} is too short: a name server is asked at most once a second (at least 1s)",
                    c.refresh.text()
                ),
            );
            None
        }
        d => d,
    };
    let server = match &c.server {
        Some(s) => r.check(&path.key("server"), server(s)).map(Some),
        None => Some(None),
    };
    Some(DnsDiscovery {
        query: query?,
        refresh: refresh?,
        server: server?,
    })
}

/// A plausible DNS name: dot-separated labels of letters, digits, `-` and `_` (SRV names
/// start with `_service._proto`), none empty, none over 63 characters, at most 253 in all.
/// One final dot (a fully qualified name) is allowed and kept.
pub(crate) fn dns_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("a DNS name cannot be empty".to_owned());
    }
    if t.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "\"{t}\" is an IP address, not a DNS name; list it under `targets` instead"
        ));
    }
    let bare = t.strip_suffix('.').unwrap_or(t);
    if bare.len() > MAX_NAME {
        return Err(format!(
            "the DNS name is {} characters long; the most is {MAX_NAME}",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(format!(
                "\"{t}\" is not a DNS name: it has an empty label (a leading dot or two dots in \
                 a row)"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "\"{t}\" is not a DNS name: {c:?} is not allowed (letters, digits, '-', '_' and \
                 '.' are)"
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "\"{t}\" is not a DNS name: the label \"{label}\" is longer than {MAX_LABEL} \
                 characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{t}\" is not a DNS name: the label \"{label}\" starts or ends with '-'"
            ));
        }
    }
    Ok(t.to_owned())
}

/// `discovery.dns.server`: `IP:PORT`, the port not 0.
fn server(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Err(format!(
            "\"{t}\" needs a port too, such as {}",
            SocketAddr::new(ip, 53)
        ));
    }
    match t.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!(
            "\"{t}\" has port 0; a name server needs a port such as 53"
        )),
        Ok(a) => Ok(a),
        Err(_) if t.is_empty() => Err(
            "a name server address cannot be empty; write IP:PORT such as 10.0.0.2:53".to_owned(),
        ),
        Err(_) => Err(format!(
            "\"{t}\" is not IP:PORT such as 10.0.0.2:53 or [::1]:53 (a name server is given by \
             address, not by name)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use weir_domain::discovery::{ConsulAgent, EtcdCluster};

    use super::*;
    use crate::de::from_node;
    use crate::node::{Origin, parse};

    /// Builds `discovery` from `upstream: { discovery: <yaml> }`, returning the result and
    /// every problem as `LINE:COL path: message`.
    fn run(yaml: &str) -> (Option<Discovery>, Vec<String>) {
        let text = format!("discovery:\n{yaml}");
        let root = parse(&text).unwrap();
        let path = KeyPath::root().key("discovery");
        let issues = RefCell::new(Vec::new());
        let node = root.get("discovery").unwrap();
        let cfg = from_node::<DiscoveryConfig>(node, &path, &issues).unwrap_or_else(|issue| {
            issues.borrow_mut().push(issue);
            DiscoveryConfig::default()
        });
        let mut r = Report::new(&root, issues.into_inner());
        let built = build(&cfg, &registries(), &path, &mut r);
        let problems = r
            .issues
            .into_iter()
            .map(|i| {
                let Origin::File { line, col } = i.origin else {
                    panic!("not in the file")
                };
                format!("{line}:{col} {}: {}", i.path, i.message)
            })
            .collect();
        (built, problems)
    }

    /// Both registries configured, as the top-level sections would build them.
    fn registries() -> Registries {
        Registries {
            etcd: Section::Ready(Arc::new(cluster())),
            consul: Section::Ready(Arc::new(agent())),
        }
    }

    fn cluster() -> EtcdCluster {
        EtcdCluster {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            credentials: None,
            ca_pem: None,
            identity: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn agent() -> ConsulAgent {
        ConsulAgent {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            datacenter: None,
            ca_pem: None,
            wait: Duration::from_secs(55),
        }
    }

    fn ok(yaml: &str) -> Discovery {
        let (built, problems) = run(yaml);
        assert!(problems.is_empty(), "{problems:?}");
        built.unwrap()
    }

    fn bad(yaml: &str) -> Vec<String> {
        let (built, problems) = run(yaml);
        assert!(built.is_none(), "built {built:?}");
        assert!(!problems.is_empty());
        problems
    }

    #[test]
    fn address_records_with_defaults() {
        assert_eq!(
            ok("  dns: { name: users.internal, port: 9000 }\n"),
            Discovery::Dns(DnsDiscovery {
                query: DnsQuery::Address {
                    name: "users.internal".to_owned(),
                    port: 9000,
                },
                refresh: Duration::from_secs(30),
                server: None,
            })
        );
    }

    #[test]
    fn srv_records_with_everything() {
        assert_eq!(
            ok(
                "  dns:\n    srv: _http._tcp.users.internal.\n    refresh: 5s\n    server: '[::1]:5353'\n"
            ),
            Discovery::Dns(DnsDiscovery {
                query: DnsQuery::Srv {
                    name: "_http._tcp.users.internal.".to_owned(),
                },
                refresh: Duration::from_secs(5),
                server: Some("[::1]:5353".parse().unwrap()),
            })
        );
        let Discovery::Dns(d) = ok("  dns: { srv: ' x ', server: 127.0.0.1:53, refresh: 1s }\n")
        else {
            panic!("dns")
        };
        assert_eq!(
            d.query,
            DnsQuery::Srv {
                name: "x".to_owned()
            }
        );
        assert_eq!(d.refresh, MIN_REFRESH);
    }

    #[test]
    fn exactly_one_source() {
        assert_eq!(
            bad("  {}\n"),
            [
                "2:3 discovery: discovery needs one source: dns: { name: users.internal, port: \
                 9000 }, etcd: { prefix: /weir/upstreams/users/ } or consul: { service: users }"
            ]
        );
        assert_eq!(
            bad("  dns: { name: a, port: 1 }\n  consul: { service: users }\n"),
            ["3:3 discovery.consul: discovery takes exactly one source; `dns` is already given"]
        );
        assert_eq!(
            bad("  dnss: {}\n"),
            [
                "2:3 discovery.dnss: unknown key \"dnss\" (expected one of dns, etcd, consul)",
                "2:3 discovery: discovery needs one source: dns: { name: users.internal, port: \
                 9000 }, etcd: { prefix: /weir/upstreams/users/ } or consul: { service: users }",
            ]
        );
    }

    #[test]
    fn etcd_prefix_and_cluster() {
        assert_eq!(
            ok("  etcd: { prefix: ' /weir/upstreams/users/ ' }\n"),
            Discovery::Etcd(EtcdDiscovery {
                prefix: "/weir/upstreams/users/".to_owned(),
                cluster: Arc::new(cluster()),
            })
        );
        assert_eq!(
            bad("  etcd: { prefix: '' }\n"),
            [
                "2:19 discovery.etcd.prefix: the prefix cannot be empty; use the keys of one \
                 upstream, such as /weir/upstreams/users/"
            ]
        );
        assert_eq!(
            bad("  etcd: { prefx: /a/ }\n")[..2],
            [
                "2:11 discovery.etcd.prefx: unknown key \"prefx\" (expected one of prefix)",
                "2:9 discovery.etcd: missing required key \"prefix\"",
            ]
        );
    }

    #[test]
    fn consul_service_tag_datacenter() {
        assert_eq!(
            ok("  consul: { service: users, tag: v2, datacenter: dc2 }\n"),
            Discovery::Consul(ConsulDiscovery {
                service: "users".to_owned(),
                tag: Some("v2".to_owned()),
                datacenter: Some("dc2".to_owned()),
                agent: Arc::new(agent()),
            })
        );
        assert_eq!(
            bad("  consul: { service: 'a/b' }\n"),
            ["2:22 discovery.consul.service: a Consul service name has no '/'"]
        );
        assert_eq!(
            bad("  consul: { service: ' ', tag: 'x y', datacenter: '' }\n").len(),
            3
        );
    }

    #[test]
    fn name_and_port() {
        assert_eq!(
            bad("  dns: { name: users.internal }\n"),
            [
                "2:8 discovery.dns: missing required key \"port\": the port every address of \
              `name` is served on, 1 to 65535"
            ]
        );
        assert_eq!(
            bad("  dns: { name: users.internal, port: 0 }\n"),
            ["2:38 discovery.dns.port: 0 is not a port (1 to 65535)"]
        );
        assert_eq!(
            bad("  dns: { name: users.internal, port: 70000 }\n"),
            ["2:38 discovery.dns.port: 70000 is not a port (1 to 65535)"]
        );
        assert_eq!(
            bad("  dns: { srv: _x._tcp.a, port: 80 }\n"),
            [
                "2:26 discovery.dns.port: `port` is not used with `srv`: each SRV record carries \
              its own port"
            ]
        );
        assert_eq!(
            bad("  dns: { name: a, srv: b, port: 80 }\n"),
            [
                "2:19 discovery.dns.srv: `name` (A/AAAA records) and `srv` (SRV records) exclude \
              each other; keep one"
            ]
        );
        assert_eq!(
            bad("  dns: { refresh: 5s }\n"),
            [
                "2:8 discovery.dns: dns discovery needs `name` (A/AAAA records, with `port`) or \
              `srv` (SRV records)"
            ]
        );
        assert_eq!(
            bad("  dns: { name: 'users..internal', port: 1 }\n"),
            [
                "2:16 discovery.dns.name: \"users..internal\" is not a DNS name: it has an empty \
              label (a leading dot or two dots in a row)"
            ]
        );
    }

    #[test]
    fn refresh_and_server() {
        assert_eq!(
            bad("  dns: { name: a, port: 1, refresh: 500ms }\n"),
            [
                "2:37 discovery.dns.refresh: 500ms is too short: a name server is asked at most \
              once a second (at least 1s)"
            ]
        );
        assert_eq!(
            bad("  dns: { name: a, port: 1, refresh: 5 }\n"),
            ["2:37 discovery.dns.refresh: a duration needs a unit: ms, s, m, h, d (e.g. 5s)"]
        );
        assert_eq!(
            bad("  dns: { name: a, port: 1, server: 10.0.0.2 }\n"),
            ["2:36 discovery.dns.server: \"10.0.0.2\" needs a port too, such as 10.0.0.2:53"]
        );
        assert_eq!(
            bad("  dns: { name: a, port: 1, server: 'ns.internal:53' }\n"),
            [
                "2:36 discovery.dns.server: \"ns.internal:53\" is not IP:PORT such as 10.0.0.2:53 \
              or [::1]:53 (a name server is given by address, not by name)"
            ]
        );
        assert_eq!(
            bad("  dns: { name: a, port: 1, server: '127.0.0.1:0' }\n"),
            [
                "2:36 discovery.dns.server: \"127.0.0.1:0\" has port 0; a name server needs a \
              port such as 53"
            ]
        );
        // Every problem of the block at once.
        assert_eq!(
            bad("  dns: { name: -a, port: 0, refresh: 0s, server: x }\n").len(),
            4
        );
    }

    #[test]
    fn plausible_names() {
        for good in [
            "users",
            "users.internal",
            "users.internal.",
            "_http._tcp.users.internal",
            "a-b.c9.example",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(dns_name(good), Ok(good.to_owned()), "{good}");
        }
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(60); 5].join(".");
        for (bad, why) in [
            ("", "cannot be empty"),
            ("10.0.0.1", "is an IP address"),
            ("::1", "is an IP address"),
            (".users", "empty label"),
            ("users..internal", "empty label"),
            ("users.internal..", "empty label"),
            ("users internal", "' ' is not allowed"),
            ("http://users", "':' is not allowed"),
            ("users:9000", "':' is not allowed"),
            ("bücher.example", "'ü' is not allowed"),
            ("-users.internal", "starts or ends with '-'"),
            ("users-.internal", "starts or ends with '-'"),
            (&long_label, "longer than 63"),
            (&long_name, "the most is 253"),
        ] {
            let err = dns_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
