//! `docs/configuration.md` documents every key the configuration has, so the docs cannot
//! silently drift from the types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::Value;

/// A file that uses every supported key (the effective config then holds all of them, with
/// defaults filled in for the rest).
const EVERY_KEY: &str = "\
listeners: [{ name: a, address: '0.0.0.0:8080', http2: true }]
limits: { max_header_bytes: 32KiB, max_cache_bytes: 64MiB }
watch: false
trusted_proxies: [10.0.0.0/8]
admin: { listen: '127.0.0.1:9901', token: t }
observability:
  log: { level: info, format: json }
  access_log: { enabled: true, path: stdout }
workers: 0
shutdown_grace: 30s
redis: { url: 'rediss://:pw@127.0.0.1:6379/0', timeout: 50ms, ca_file: tests/keys/ca.pem }
etcd: { endpoints: ['https://10.0.0.5:2379'], username: weir, password: pw, ca_file: tests/keys/ca.pem,
        cert_file: tests/keys/ca.pem, key_file: tests/keys/test-only-client.key.pem, timeout: 5s }
consul: { address: 'https://127.0.0.1:8501', token: t, datacenter: dc1, ca_file: tests/keys/ca.pem, wait: 55s }
auth:
  providers:
    keys: { type: api_key, header: X-Api-Key, query: api_key }
    staff: { type: basic, realm: staff }
    hs: { type: jwt, secret: 0123456789abcdef0123456789abcdef, algorithms: [HS256], issuer: i,
          audiences: [a], roles_claim: roles, leeway: 30s, timeout: 2s }
    pk: { type: jwt, public_key_file: tests/keys/ed25519.pub.pem }
    jwks: { type: jwt, jwks_url: 'https://idp/jwks.json', jwks_refresh: 1m, ca_file: tests/keys/ca.pem }
    idp: { type: oauth2, introspection_url: 'https://idp/introspect', ca_file: tests/keys/ca.pem, client_id: weir,
           client_secret: s3cr3t-value, cache_ttl: 1m, negative_ttl: 5s, roles_claim: scope, timeout: 1s }
consumers:
  - name: acme
    roles: [orders:read]
    api_keys: [k-123456]
    basic: { username: acme, password_hash: '$2b$10$vB3H0y0jKXQc1mnslFBcT.2F81LqvgpWKoCasUPbE4/R73nxG/0xC' }
upstreams:
  users:
    targets: [{ url: 'http://10.0.0.1:9000', weight: 1 }]
    load_balancing: consistent_hash
    hash_key: ip
    protocol: http1
    timeouts: { connect: 2s, request: 30s }
    health_check:
      active: {}
      passive: { consecutive_failures: 5, eject_for: 30s, max_ejected_percent: 50 }
    circuit_breaker: { failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 30s, half_open_requests: 5 }
    retry:
      attempts: 3
      backoff: { initial: 25ms, max: 1s, multiplier: 2, jitter: full }
      on: [connect_failure, reset, '502', 503, '504']
      idempotent_only: true
      per_try_timeout: 2s
      budget: { ratio: 0.2, min_per_second: 10 }
    rate_limit: [{ key: global, limit: 100, per: 1s, store: redis, on_error: deny }]
  spare:
    targets: [{ url: 'http://10.0.0.2:9000' }]
  by-name:
    discovery: { dns: { name: users.internal, port: 9000, refresh: 30s, server: '127.0.0.1:53' } }
  by-srv:
    discovery: { dns: { srv: _http._tcp.users.internal } }
  from-etcd:
    discovery: { etcd: { prefix: /weir/upstreams/users/ } }
  from-consul:
    discovery: { consul: { service: users, tag: v2, datacenter: dc2 } }
routes:
  - name: a
    match: { host: example.com, path: /a, methods: [GET], headers: { X-A: b } }
    upstream: users
    timeout: 1s
    max_body_bytes: 1KiB
    priority: 1
    auth: { providers: [keys], roles: [orders:read] }
    ip: { allow: [10.0.0.0/8], deny: [10.0.0.1] }
    rate_limit: [{ key: ip, limit: 10, per: 1m, burst: 5, store: memory, max_keys: 1024 }]
    cors: { origins: ['https://app.example.com'], methods: [GET], headers: [Authorization],
            expose_headers: [X-Request-Id], credentials: true, max_age: 10m }
    transform:
      request:
        path: { strip_prefix: /a, add_prefix: /b, rewrite: { regex: x, to: y } }
        headers: { set: { X-Tenant: '${consumer.name}' }, add: { X-Via: weir }, remove: [Cookie] }
        query: { set: { source: gateway }, remove: [debug] }
      response:
        headers: { set: { X-Served-By: weir }, remove: [Server] }
    cache: { ttl: 30s, store: memory, vary: [Accept], stale_while_revalidate: 10s, stale_if_error: 5m,
             max_body: 1MiB, per_consumer: true }
  - name: b
    match: { prefix: /b }
    respond: { status: 200, headers: { X-A: b }, body: '' }
  - name: c
    match: { regex: ^/c$ }
    respond: {}
  - name: d
    match: { prefix: /d }
    upstream: users
    fallback: { status: 503, content_type: application/json, headers: { X-A: b }, body: '[]' }
  - name: e
    match: { prefix: /e }
    upstream: users
    fallback: { upstream: spare }
";

/// Keys that name files (certificates), which the fixture above cannot hold: documented too.
const FILE_KEYS: &[&str] = &[
    "listeners[].tls",
    "listeners[].tls.certificates",
    "listeners[].tls.certificates[].cert_file",
    "listeners[].tls.certificates[].key_file",
    "listeners[].tls.min_version",
    "listeners[].tls.client_ca_file",
    "listeners[].tls.acme",
    "listeners[].tls.acme.directory",
    "listeners[].tls.acme.email",
    "listeners[].tls.acme.domains",
    "listeners[].tls.acme.storage_dir",
    "listeners[].tls.acme.ca_file",
    "listeners[].tls.acme.renew_before",
    "upstreams.<name>.tls",
    "upstreams.<name>.tls.ca_file",
    "upstreams.<name>.tls.client_cert_file",
    "upstreams.<name>.tls.client_key_file",
    "upstreams.<name>.tls.server_name",
];

/// Maps whose keys are names the user chose.
const NAMED: [&str; 2] = ["upstreams", "auth.providers"];

/// Every key path of `value`, written as the docs write them: `routes[].match.host`,
/// `upstreams.<name>.targets[].url`. User-named maps (header maps) are not entered.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let named = NAMED.contains(&prefix);
                let path = if prefix.is_empty() {
                    key.clone()
                } else if named {
                    format!("{prefix}.<name>")
                } else {
                    format!("{prefix}.{key}")
                };
                if !named {
                    out.push(path.clone());
                }
                // Header maps and a query's `set` are keyed by names the user chose.
                if key != "headers" && !(key == "set" && prefix.ends_with(".query")) {
                    key_paths(v, &path, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_key_is_documented() {
    let docs_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let docs = std::fs::read_to_string(docs_path).unwrap();
    let loaded = crate::common::ok(EVERY_KEY);
    let mut paths = Vec::new();
    key_paths(&loaded.effective, "", &mut paths);
    paths.sort();
    paths.dedup();
    assert!(paths.len() > 60, "the walk found too few keys: {paths:?}");
    paths.extend(FILE_KEYS.iter().map(|s| (*s).to_owned()));
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !docs.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document: {missing:?}"
    );
}
