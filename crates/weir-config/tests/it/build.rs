//! What a valid file builds: settings with defaults, upstreams, the route table, the
//! effective config and its version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::common::ok;
use weir_config::{AccessLogTarget, LogFormat};
use weir_domain::balance::LoadBalancing;
use weir_domain::route::{HostPattern, MethodSet, PathPattern, RouteAction, UpstreamId};
use weir_domain::router::{Lookup, RequestHead};
use weir_domain::upstream::{HashKey, Protocol};

#[test]
fn defaults() {
    let loaded = ok("");
    let s = &loaded.settings;
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.listeners[0].name, "public");
    assert_eq!(s.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
    assert!(s.listeners[0].http2);
    assert_eq!(s.limits.max_header_bytes, 32 * 1024);
    assert_eq!(s.limits.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(s.limits.max_connections, 20_000);
    assert_eq!(s.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.limits.http2_max_concurrent_streams, 200);
    assert_eq!(s.admin.listen, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(s.admin.token, None);
    assert_eq!(s.log.level, "info");
    assert_eq!(s.log.format, LogFormat::Json);
    assert!(s.access_log.enabled);
    assert_eq!(s.access_log.target, AccessLogTarget::Stdout);
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(s.workers, 0);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert!(loaded.routes.routes().is_empty());
    assert!(loaded.upstreams.is_empty());
    assert_eq!(loaded.effective["limits"]["max_header_bytes"], "32KiB");
    assert_eq!(loaded.version.len(), 16);
}

const FULL: &str = "\
listeners:
  - { name: a, address: '0.0.0.0:8080', http2: false }
  - { name: b, address: '[::1]:8081' }
limits: { max_body_bytes: 2048, max_header_bytes: 16KiB }
trusted_proxies: [10.0.0.0/8, 192.168.1.1]
admin: { listen: off, token: t0ken }
observability:
  log: { level: debug, format: text }
  access_log: { enabled: false, path: /var/log/weir/access.log }
workers: 3
shutdown_grace: 2m
upstreams:
  zeta:
    targets: [{ url: 'http://10.0.0.9:80' }]
  users:
    targets:
      - { url: 'http://10.0.0.1:9000', weight: 3 }
      - { url: 'http://10.0.0.2' }
    load_balancing: consistent_hash
    protocol: http2
    timeouts: { connect: 250ms, request: 5s }
    health_check:
      active: { path: /ready, interval: 2s }
routes:
  - name: user
    match:
      host: '*.Example.com'
      path: /users/{id}
      methods: [GET, PUT]
      headers: { X-Api-Version: 2 }
    upstream: users
    timeout: 1s
    max_body_bytes: 1MiB
    priority: 5
    transform:
      request:
        path: { strip_prefix: /users, add_prefix: /internal, rewrite: { regex: '^/(\\d+)$', to: '/u/$1' } }
  - name: hello
    match: { path: /hello, methods: [GET] }
    respond: { status: 201, headers: { Content-Type: application/json }, body: '{\"hi\":1}' }
  - name: catch-all
    upstream: zeta
";

struct Req {
    host: Option<&'static str>,
    method: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl RequestHead for Req {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn method_bit(&self) -> u16 {
        MethodSet::bit(self.method).unwrap_or(0)
    }
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == lower_name)
            .map(|(_, v)| v.as_bytes())
    }
}

#[test]
fn settings_from_the_file() {
    let s = ok(FULL).settings;
    assert_eq!(s.listeners.len(), 2);
    assert!(!s.listeners[0].http2);
    assert_eq!(s.listeners[1].address, "[::1]:8081".parse().unwrap());
    assert_eq!(s.limits.max_body_bytes, 2048);
    assert_eq!(s.limits.max_header_bytes, 16 * 1024);
    assert_eq!(s.trusted_proxies.len(), 2);
    assert!(s.trusted_proxies[1].contains("192.168.1.1".parse().unwrap()));
    assert_eq!(s.admin.listen, None);
    assert_eq!(s.admin.token.as_deref(), Some("t0ken"));
    assert_eq!(s.log.level, "debug");
    assert_eq!(s.log.format, LogFormat::Text);
    assert!(!s.access_log.enabled);
    assert_eq!(
        s.access_log.target,
        AccessLogTarget::File("/var/log/weir/access.log".into())
    );
    assert_eq!(s.workers, 3);
    assert_eq!(s.shutdown_grace, Duration::from_secs(120));
}

#[test]
fn upstreams_keep_file_order_and_build_their_policy() {
    let loaded = ok(FULL);
    let names: Vec<_> = loaded.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["zeta", "users"]);
    let users = &loaded.upstreams[1];
    assert_eq!(users.static_targets.len(), 2);
    assert_eq!(users.static_targets[0].weight, 3);
    assert_eq!(users.static_targets[1].weight, 1);
    assert_eq!(users.static_targets[1].addr.authority, "10.0.0.2:80");
    assert_eq!(users.load_balancing, LoadBalancing::ConsistentHash);
    assert_eq!(users.hash_key, Some(HashKey::Ip)); // the documented default
    assert_eq!(users.protocol, Protocol::Http2);
    assert_eq!(users.timeouts.connect, Duration::from_millis(250));
    assert_eq!(users.timeouts.request, Duration::from_secs(5));
    let hc = users.health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/ready");
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(hc.timeout, Duration::from_secs(1));
    assert_eq!((hc.healthy_threshold, hc.unhealthy_threshold), (2, 3));
    let zeta = &loaded.upstreams[0];
    assert_eq!(zeta.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(zeta.hash_key, None);
    assert_eq!(zeta.protocol, Protocol::Http1);
    assert!(zeta.health_check.is_none());
}

#[test]
fn routes_are_built_and_looked_up() {
    let loaded = ok(FULL);
    let routes = loaded.routes.routes();
    assert_eq!(routes.len(), 3);
    let user = &routes[0];
    assert_eq!(user.index, 0);
    assert_eq!(
        user.matcher.host,
        Some(HostPattern::Suffix(".example.com".into()))
    );
    assert!(matches!(user.matcher.path, PathPattern::Template(_)));
    assert_eq!(user.matcher.headers[0].name, "x-api-version");
    assert_eq!(user.matcher.headers[0].value, "2");
    assert!(matches!(user.action, RouteAction::Upstream(UpstreamId(1))));
    assert_eq!(user.timeout, Some(Duration::from_secs(1)));
    assert_eq!(user.max_body_bytes, Some(1 << 20));
    assert_eq!(user.priority, 5);
    assert_eq!(user.path_transform.apply("/users/42"), "/internal/u/42");

    let RouteAction::Respond(hello) = &routes[1].action else {
        panic!("hello responds")
    };
    assert_eq!(hello.status, 201);
    assert_eq!(
        hello.headers,
        [("Content-Type".to_owned(), "application/json".to_owned())]
    );
    assert_eq!(&*hello.body, "{\"hi\":1}");
    assert!(matches!(routes[2].matcher.path, PathPattern::Prefix(ref p) if p == "/"));

    let req = Req {
        host: Some("api.example.com"),
        method: "GET",
        headers: vec![("x-api-version", "2")],
    };
    let Lookup::Found(found) = loaded.routes.lookup(&req, "/users/7") else {
        panic!("the user route matches")
    };
    assert_eq!(found.route.name, "user");
    let other = Req {
        host: None,
        method: "POST",
        headers: Vec::new(),
    };
    let Lookup::Found(found) = loaded.routes.lookup(&other, "/users/7") else {
        panic!("the catch-all matches")
    };
    assert_eq!(found.route.name, "catch-all");
}

#[test]
fn the_effective_config_hides_secrets_and_has_a_stable_version() {
    let a = ok(FULL);
    let b = ok(FULL);
    assert_eq!(a.version, b.version);
    assert!(a.version.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a.effective["admin"]["token"], "***");
    assert_eq!(a.effective["admin"]["listen"], "off");
    assert_eq!(a.effective["upstreams"]["users"]["targets"][1]["weight"], 1);
    assert_eq!(a.effective["routes"][0]["match"]["host"], "*.Example.com");
    assert_eq!(a.effective["routes"][2]["respond"], serde_json::Value::Null);
    assert!(!a.effective.to_string().contains("t0ken"));

    // Any change, even only of a secret, is a new version.
    let c = ok(&FULL.replace("t0ken", "t1ken"));
    assert_ne!(a.version, c.version);
    assert_eq!(a.effective, c.effective);
}

#[test]
fn string_keys_keep_numbers_as_written() {
    let yaml = "routes:\n  - name: v\n    match: { headers: { X-Api-Version: 1.10 } }\n    respond: { body: 007 }\n";
    let loaded = ok(yaml);
    let route = &loaded.routes.routes()[0];
    assert_eq!(route.matcher.headers[0].value, "1.10");
    let RouteAction::Respond(r) = &route.action else {
        panic!("responds")
    };
    assert_eq!(&*r.body, "007");
}
