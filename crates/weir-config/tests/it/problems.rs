//! Every kind of problem `load_str` reports, with its exact location and wording.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::problems;

/// A valid base to append a broken part to: one upstream `users`, one route.
const BASE: &str = "\
upstreams:
  users:
    targets:
      - url: http://10.0.0.1:9000
routes:
  - name: ok
    match: { prefix: /ok }
    upstream: users
";

fn with_route(route: &str) -> Vec<String> {
    problems(&format!("{BASE}{route}"))
}

#[test]
fn the_contracts_example_location_format() {
    let yaml = "\
upstreams:
  users:
    targets: [{ url: http://10.0.0.1:9000 }]
routes:
  - name: a
    match: { path: /a }
    upstream: users
  - name: b
    match: { path: /b }
    upstream: users
  - name: c
    match:
      path: /c
    upstream: user
";
    assert_eq!(
        problems(yaml),
        [r#"weir.yaml:14:15: routes[2].upstream: unknown upstream "user"; did you mean "users"?"#]
    );
}

#[test]
fn many_problems_are_reported_at_once_in_file_order() {
    let yaml = "\
listeners:
  - name: public
    address: 0.0.0.0:80800
admin:
  listen: 127.0.0.1
upstreams:
  users:
    targets: [{ url: ftp://x }]
routes:
  - name: a
    match: { pathh: /a }
    upstream: users
  - name: b
    upstream: nobody
    timeout: 5
";
    assert_eq!(
        problems(yaml),
        [
            r#"weir.yaml:3:14: listeners[0].address: "0.0.0.0:80800" is not IP:PORT such as 0.0.0.0:8080 (host names are not resolved)"#,
            r#"weir.yaml:5:11: admin.listen: "127.0.0.1" needs both an IP and a port, such as 0.0.0.0:8080, or off"#,
            r#"weir.yaml:8:22: upstreams.users.targets[0].url: "ftp://x" is not an http:// or https:// URL"#,
            r#"weir.yaml:11:14: routes[0].match.pathh: unknown key "pathh" (expected one of host, path, prefix, regex, methods, headers)"#,
            r#"weir.yaml:14:15: routes[1].upstream: unknown upstream "nobody""#,
            "weir.yaml:15:14: routes[1].timeout: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
        ]
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    assert_eq!(
        problems("routes:\n  - name: a\n   upstream: x\n"),
        [
            "weir.yaml:3:4: invalid YAML: while parsing a block collection, did not find expected '-' indicator"
        ]
    );
    assert_eq!(
        problems("admin: {}\nadmin: {}\n"),
        ["weir.yaml:2:1: invalid YAML: duplicate mapping key `admin` is not allowed here"]
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let yaml = "\
listners: []
admin: { lisen: x }
upstreams:
  users:
    targets: [{ url: http://a:1, wieght: 2 }]
routes:
  - name: r
    upstream: users
    tiemout: 1s
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:1:1: listners: unknown key \"listners\" (expected one of listeners, limits, watch, trusted_proxies, admin, observability, workers, shutdown_grace, redis, etcd, consul, upstreams, auth, consumers, routes)",
            "weir.yaml:2:10: admin.lisen: unknown key \"lisen\" (expected one of listen, token)",
            "weir.yaml:5:34: upstreams.users.targets[0].wieght: unknown key \"wieght\" (expected one of url, weight)",
            "weir.yaml:9:5: routes[0].tiemout: unknown key \"tiemout\" (expected one of name, match, upstream, respond, timeout, max_body_bytes, allow_ambiguous_paths, priority, transform, auth, rate_limit, cache, cors, ip, fallback, grpc)",
        ]
    );
}

#[test]
fn type_errors() {
    let yaml = "\
workers: many
limits: { max_connections: -5 }
observability:
  access_log: { enabled: maybe }
routes:
  - name: [x]
    respond: {}
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:1:10: workers: expected a whole number (0 or more), found a string",
            "weir.yaml:2:28: limits.max_connections: -5 is out of range (0 to 18446744073709551615)",
            "weir.yaml:4:26: observability.access_log.enabled: expected true or false, found a string",
            "weir.yaml:6:11: routes[0].name: expected a string, found a list",
        ]
    );
    assert_eq!(
        problems("routes:\n  - respond: {}\n"),
        ["weir.yaml:2:5: routes[0]: missing required key \"name\""]
    );
}

#[test]
fn durations_and_sizes() {
    let yaml = "\
shutdown_grace: 30
limits:
  max_header_bytes: 0
  max_body_bytes: 10MB
  idle_timeout: 1.5s
  header_read_timeout: 0s
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:1:17: shutdown_grace: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            "weir.yaml:3:21: limits.max_header_bytes: must be at least 1",
            "weir.yaml:4:19: limits.max_body_bytes: \"10MB\" is ambiguous: sizes use binary units B, KiB, MiB, GiB (1KiB = 1024 bytes)",
            "weir.yaml:5:17: limits.idle_timeout: \"1.5s\" is not a duration such as 250ms, 5s, 1m, 2h or 30d",
            "weir.yaml:6:24: limits.header_read_timeout: must be longer than 0",
        ]
    );
}

#[test]
fn route_problems() {
    let p = with_route(
        "  - name: ok
    match: { path: /x, prefix: /x }
    upstream: users
  - name: both
    upstream: users
    respond: { status: 200 }
  - name: neither
  - name: bad-template
    match: { path: '/a/{*rest}/b', methods: [GET, get, FETCH] }
    respond: { status: 99, headers: { 'Bad Name': x } }
  - name: bad-host
    match: { host: 'api.example.com:443', headers: { X-Ok: \"1\" } }
    upstream: users
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:9:11: routes[1].name: duplicate route name \"ok\" (also routes[0])",
            "weir.yaml:10:12: routes[1].match: use only one of path, prefix and regex (found path, prefix)",
            "weir.yaml:12:5: routes[2]: a route has either `upstream` or `respond`, not both",
            "weir.yaml:15:5: routes[3]: a route needs `upstream` (an upstream's name) or `respond` (a fixed response)",
            "weir.yaml:17:20: routes[4].match.path: catch-all {*rest} must be the last segment",
            "weir.yaml:17:51: routes[4].match.methods[1]: methods are written in upper case: \"GET\"",
            "weir.yaml:17:56: routes[4].match.methods[2]: unknown method \"FETCH\" (one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT)",
            "weir.yaml:18:24: routes[4].respond.status: status 99 is not between 100 and 599",
            "weir.yaml:18:51: routes[4].respond.headers.Bad Name: \"Bad Name\" is not a valid header name",
            "weir.yaml:20:20: routes[5].match.host: \"api.example.com:443\": a host is matched without its port",
        ]
    );
}

#[test]
fn regexes_and_transforms() {
    let p = with_route(
        "  - name: re
    match: { regex: '^/(x' }
    upstream: users
    transform:
      request:
        path: { strip_prefix: api, rewrite: { regex: '[z', to: /y } }
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:10:21: routes[1].match.regex: invalid regex: unclosed group",
            "weir.yaml:14:31: routes[1].transform.request.path.strip_prefix: strip_prefix must start with '/'",
            "weir.yaml:14:54: routes[1].transform.request.path.rewrite.regex: invalid regex: unclosed character class",
        ]
    );
}

#[test]
fn conflicting_routes_point_at_the_later_match() {
    let p = with_route(
        "  - name: same
    match: { prefix: /ok }
    upstream: users
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:10:12: routes[1].match: matches exactly what route \"ok\" (routes[0]) matches; it could never be chosen (give one a different priority, method, host or header)"
        ]
    );
    // Conflicts are found even when another route is broken, with file positions kept.
    let p = with_route(
        "  - name: broken
    upstream: nobody
  - name: same
    match: { prefix: /ok }
    upstream: users
",
    );
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[1].starts_with(
            "weir.yaml:12:12: routes[2].match: matches exactly what route \"ok\" (routes[0])"
        ),
        "{}",
        p[1]
    );
}

#[test]
fn templates_differing_only_in_parameter_names_conflict() {
    let p = with_route(
        "  - name: by-id
    match: { path: '/users/{id}' }
    upstream: users
  - name: by-name
    match: { path: '/users/{name}' }
    upstream: users
",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("weir.yaml:13:12: routes[2].match: path template /users/{name} conflicts"),
        "{}",
        p[0]
    );
}

#[test]
fn upstream_problems() {
    let yaml = "\
upstreams:
  empty: {}
  bad:
    targets:
      - { url: 'http://u:hunter2@10.0.0.1:80' }
      - { url: 'http://10.0.0.2:80', weight: 0 }
      - { url: 'https://10.0.0.3' }
      - { url: 'http://10.0.0.2:80/' }
    load_balancing: fastest
    protocol: http3
    timeouts: { connect: 0s }
  hashed:
    targets: [{ url: http://a:1 }]
    load_balancing: consistent_hash
    hash_key: 'query:x'
  misplaced:
    targets: [{ url: http://a:1 }]
    hash_key: ip
    health_check:
      active: { path: health, interval: 5, healthy_threshold: 0 }
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:2:10: upstreams.empty.targets: an upstream needs at least one target, such as { url: http://10.0.0.1:9000 }",
            "weir.yaml:5:16: upstreams.bad.targets[0].url: a target URL must not carry a user or password",
            "weir.yaml:6:46: upstreams.bad.targets[1].weight: must be at least 1",
            "weir.yaml:8:16: upstreams.bad.targets[3].url: duplicate target http://10.0.0.2:80 (also targets[1])",
            "weir.yaml:9:21: upstreams.bad.load_balancing: \"fastest\" is not one of round_robin, weighted, least_connections, p2c, consistent_hash",
            "weir.yaml:10:15: upstreams.bad.protocol: \"http3\" is not one of http1, http2, grpc",
            "weir.yaml:11:26: upstreams.bad.timeouts.connect: must be longer than 0",
            "weir.yaml:15:15: upstreams.hashed.hash_key: \"query:x\" is not one of header:NAME, cookie:NAME, ip, path",
            "weir.yaml:18:15: upstreams.misplaced.hash_key: hash_key is used only by load_balancing: consistent_hash",
            "weir.yaml:20:23: upstreams.misplaced.health_check.active.path: a health check path must start with '/'",
            "weir.yaml:20:41: upstreams.misplaced.health_check.active.interval: a duration needs a unit: ms, s, m, h, d (e.g. 5s)",
            "weir.yaml:20:63: upstreams.misplaced.health_check.active.healthy_threshold: must be at least 1",
        ]
    );
}

#[test]
fn settings_problems() {
    let yaml = "\
listeners:
  - { name: a, address: '127.0.0.1:9901' }
  - { name: a, address: '127.0.0.1:9901' }
  - { name: '', address: 'localhost:80' }
trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, nope]
observability:
  log: { level: verbose, format: yaml }
  access_log: { path: '' }
";
    assert_eq!(
        problems(yaml),
        [
            "weir.yaml:2:25: listeners[0].address: 127.0.0.1:9901 is also admin.listen; the admin API needs its own address",
            "weir.yaml:3:13: listeners[1].name: duplicate listener name \"a\" (also listeners[0])",
            "weir.yaml:3:25: listeners[1].address: duplicate listener address 127.0.0.1:9901 (also listeners[0])",
            "weir.yaml:4:13: listeners[2].name: a listener needs a name",
            "weir.yaml:4:26: listeners[2].address: \"localhost:80\" is not IP:PORT such as 0.0.0.0:8080 (host names are not resolved)",
            "weir.yaml:5:31: trusted_proxies[1]: \"10.0.0.0/33\" has a bad prefix length (0..=32)",
            "weir.yaml:5:44: trusted_proxies[2]: \"nope\" is not an IP address or CIDR range",
            "weir.yaml:7:17: observability.log.level: \"verbose\" is not one of error, warn, info, debug, trace",
            "weir.yaml:7:34: observability.log.format: \"yaml\" is not one of json, text",
            "weir.yaml:8:23: observability.access_log.path: an access log path cannot be empty (stdout, stderr or a file)",
        ]
    );
}

#[test]
fn secrets_never_appear_in_messages() {
    let yaml = "\
admin:
  token: [s3cr3t-token]
upstreams:
  u:
    targets: [{ url: 'http://user:s3cr3t-pass@h:1' }]
";
    let p = problems(yaml).join("\n");
    assert!(!p.contains("s3cr3t"), "{p}");
    // A secret interpolated into a field that echoes its value is scrubbed too.
    let env = crate::common::TestEnv::with(&[("TOKEN", "tok-value-1")]);
    let yaml = "admin: { token: '${TOKEN}', listen: '${TOKEN}' }\n";
    let p = crate::common::problems_with(yaml, &env, &Default::default()).join("\n");
    assert!(!p.contains("tok-value-1"), "{p}");
    assert!(p.contains("admin.listen: \"***\""), "{p}");
}

#[test]
fn redis_problems_name_the_key_and_never_the_url() {
    let p = problems(
        "\
upstreams:
  u:
    targets: [{ url: 'http://a:1' }]
    rate_limit: [{ key: global, limit: 5, per: 1s, store: redis }]
routes:
  - name: r
    upstream: u
    rate_limit: [{ key: ip, limit: 10, per: 2400h, store: redis }]
",
    );
    assert_eq!(
        p,
        [
            "weir.yaml:4:59: upstreams.u.rate_limit[0].store: store: redis needs the top-level `redis` section (url or cluster)",
            "weir.yaml:8:45: routes[0].rate_limit[0].per: with store: redis, per / limit × burst must be under 52 days",
            "weir.yaml:8:59: routes[0].rate_limit[0].store: store: redis needs the top-level `redis` section (url or cluster)",
        ]
    );
    let p = problems("redis: { url: 'http://:hunter2@x:1' }\n");
    assert_eq!(
        p,
        ["weir.yaml:1:15: redis.url: a Redis URL starts with redis:// or rediss:// (TLS)"]
    );
    assert_eq!(
        problems("redis: { url: 'redis://a:1', cluster: ['redis://a:1'] }\n"),
        ["weir.yaml:1:30: redis.cluster: give `url` or `cluster`, not both"]
    );
    assert!(p.iter().all(|m| !m.contains("hunter2")));
    assert_eq!(
        problems("redis: { timeout: 1s }\n"),
        ["weir.yaml:1:8: redis: `redis` needs `url` (one server) or `cluster` (seed nodes)"]
    );
}

/// `redis.ca_file`: read relative to the config's directory, and only with rediss:// URLs
/// (a plain URL, even one seed among TLS ones, has no certificate to check).
#[test]
fn redis_ca_file_needs_rediss_everywhere() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let load = |yaml: &str| {
        weir_config::load_str_in(
            "weir.yaml",
            yaml,
            &keys,
            &crate::common::TestEnv::default(),
            &weir_config::Overrides::default(),
        )
    };
    let problems = |yaml: &str| match load(yaml) {
        Ok(_) => panic!("loaded:\n{yaml}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let message = "`ca_file` applies only when every Redis URL is rediss:// (plain redis:// has no certificate to check)";
    assert_eq!(
        problems("redis: { url: 'redis://:hunter2@a:1', ca_file: ca.pem }\n"),
        [format!("weir.yaml:1:39: redis.ca_file: {message}")]
    );
    assert_eq!(
        problems("redis: { cluster: ['rediss://a:1', 'redis://b:1'], ca_file: ca.pem }\n"),
        [format!("weir.yaml:1:52: redis.ca_file: {message}")]
    );
    assert_eq!(
        problems("redis: { url: 'rediss://a:1', ca_file: ed25519.pub.pem }\n"),
        [
            "weir.yaml:1:40: redis.ca_file: no -----BEGIN CERTIFICATE----- block; a ca_file holds \
          the PEM certificates of the CAs that sign the server's certificate"
        ]
    );

    let loaded = load("redis: { url: 'rediss://a:1', ca_file: ca.pem }\n").unwrap();
    let redis = loaded.settings.redis.unwrap();
    assert_eq!(
        redis.ca_pem,
        Some(std::fs::read(keys.join("ca.pem")).unwrap())
    );
    assert_eq!(loaded.effective["redis"]["ca_file"], "ca.pem");
    let loaded = load("redis: { url: 'rediss://a:1' }\n").unwrap();
    assert_eq!(
        loaded.settings.redis.unwrap().ca_pem,
        None,
        "the system's trust store"
    );
    assert_eq!(
        loaded.effective["redis"]["ca_file"],
        serde_json::Value::Null
    );
}
