//! The configuration file's types: what each key is, its default, and what it means.
//!
//! These types are the source of `docs/configuration.md` (a test checks that every key they
//! serialize is documented there). They only describe the file: units are parsed, names
//! resolved and domain values built by validation. Keys of the contract that this release
//! does not implement yet are typed as [`Unsupported`] so they are recognised (never "unknown
//! key") and then rejected by validation with a clear message.

use serde::{Deserialize, Serialize};

use crate::units::{Dur, Size};

/// The whole file. Its top level is read one section at a time (see `sections`), so that a
/// mistake in one section does not hide the mistakes of the others.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FileConfig {
    /// Where weir accepts traffic. Default: one listener `public` on `0.0.0.0:8080`.
    /// `None` items did not type and have already been reported.
    pub(crate) listeners: Vec<Option<ListenerConfig>>,
    /// Edge protection limits.
    pub(crate) limits: LimitsConfig,
    /// Reload when the config file changes (its directory is watched, so a save by rename
    /// is seen).
    pub(crate) watch: bool,
    /// Networks whose `X-Forwarded-For` entries are believed when finding the client address.
    pub(crate) trusted_proxies: Vec<String>,
    /// The admin API.
    pub(crate) admin: AdminConfig,
    /// Logs.
    pub(crate) observability: ObservabilityConfig,
    /// Runtime worker threads; `0` means one per available CPU.
    pub(crate) workers: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub(crate) shutdown_grace: Dur,
    /// Named groups of targets, in file order (their order is their id).
    #[serde(serialize_with = "serialize_pairs")]
    pub(crate) upstreams: Vec<(String, Option<UpstreamConfig>)>,
    /// The Redis for `store: redis` rate limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis: Option<RedisConfig>,
    /// The etcd cluster for `discovery.etcd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etcd: Option<EtcdConfig>,
    /// The Consul agent for `discovery.consul`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consul: Option<ConsulConfig>,
    /// Identity providers, by name in file order (their order is their id).
    pub(crate) auth: AuthConfig,
    /// Identities for `api_key` and `basic` providers. `None` items did not type.
    pub(crate) consumers: Vec<Option<ConsumerConfig>>,
    /// Routes, in file order (the last tie-breaker of route precedence).
    pub(crate) routes: Vec<Option<RouteConfig>>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            limits: LimitsConfig::default(),
            watch: false,
            trusted_proxies: Vec::new(),
            admin: AdminConfig::default(),
            observability: ObservabilityConfig::default(),
            workers: 0,
            shutdown_grace: Dur::default_of("30s"),
            upstreams: Vec::new(),
            redis: None,
            etcd: None,
            consul: None,
            auth: AuthConfig::default(),
            consumers: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// The top-level keys, in the order of the contract.
pub(crate) const TOP_LEVEL: &[&str] = &[
    "listeners",
    "limits",
    "watch",
    "trusted_proxies",
    "admin",
    "observability",
    "workers",
    "shutdown_grace",
    "redis",
    "etcd",
    "consul",
    "upstreams",
    "auth",
    "consumers",
    "routes",
];

/// The Redis shared by every weir, for `store: redis` rate limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedisConfig {
    /// `redis://[:password@]host[:port][/db]` or `rediss://` (TLS) for a single server.
    #[serde(serialize_with = "masked_url", skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    /// Seed nodes of a Redis Cluster, each a URL like `url`; instead of `url`.
    #[serde(serialize_with = "masked_urls", skip_serializing_if = "Vec::is_empty")]
    pub(crate) cluster: Vec<String>,
    /// Longest wait for one decision; past it, the policy's `on_error` applies.
    pub(crate) timeout: Dur,
    /// PEM certificates trusted for `rediss://` instead of the system's trust store.
    pub(crate) ca_file: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster: Vec::new(),
            timeout: Dur::default_of("50ms"),
            ca_file: None,
        }
    }
}

/// The etcd cluster that `discovery.etcd` reads (v3 API).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EtcdConfig {
    /// Client URLs of the cluster's members, `http://HOST:PORT` or `https://HOST:PORT`, all
    /// with the same scheme. At least one.
    pub(crate) endpoints: Vec<String>,
    /// A user of etcd's own authentication; with `password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// The password of `username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) password: Option<String>,
    /// PEM certificates trusted for `https://` endpoints instead of the system's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
    /// A PEM client certificate (then its chain) for clusters that require one; with
    /// `key_file`. Only with `https://` endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cert_file: Option<String>,
    /// The PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_file: Option<String>,
    /// Connecting to a member, and each request but the watch itself, gives up after this.
    pub(crate) timeout: Dur,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Dur::default_of("5s"),
        }
    }
}

/// The Consul agent that `discovery.consul` asks (HTTP API).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConsulConfig {
    /// The agent's HTTP API, `http://HOST[:PORT]` or `https://HOST[:PORT]`.
    pub(crate) address: String,
    /// An ACL token with read access to the services, sent as `X-Consul-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    /// The datacenter to ask about. Default: the agent's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) datacenter: Option<String>,
    /// PEM certificates trusted for an `https://` address instead of the system's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
    /// How long one blocking query waits for a change before the agent answers anyway,
    /// 1s to 10m.
    pub(crate) wait: Dur,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".to_owned(),
            token: None,
            datacenter: None,
            ca_file: None,
            wait: Dur::default_of("55s"),
        }
    }
}

/// A URL with any password replaced by `***`, for `/config`.
pub(crate) fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn masked_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&mask_url(u)),
        None => s.serialize_none(),
    }
}

fn masked_urls<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| mask_url(u)))
}

const fn yes() -> bool {
    true
}

/// One place where weir accepts traffic.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// Unique name; the `listener` label of `weir_connections_active`. Required.
    pub(crate) name: String,
    /// Socket address to bind, `IP:PORT` (`0.0.0.0:8080`, `[::]:8080`). Required.
    pub(crate) address: String,
    /// Also accept HTTP/2 with prior knowledge (h2c) on this plain listener.
    #[serde(default = "yes")]
    pub(crate) http2: bool,
    /// TLS termination: with it the listener speaks HTTPS only (ALPN `h2` when `http2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<ListenerTlsConfig>,
}

/// `listeners[].tls`: certificates (or ACME), versions and client certificates.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTlsConfig {
    /// PEM certificate chains and keys (RSA, ECDSA or Ed25519), chosen by the client's SNI;
    /// the first is served when no other matches. Required unless `acme` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) certificates: Vec<CertificateConfig>,
    /// The oldest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default = "tls12")]
    pub(crate) min_version: String,
    /// PEM CA certificates: when set, every client must present a certificate they sign
    /// (mTLS); its subject is `${tls.client_subject}` and the access log's `tls_client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_ca_file: Option<String>,
    /// Certificates obtained and renewed from an ACME CA (Let's Encrypt and others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acme: Option<AcmeConfig>,
}

fn tls12() -> String {
    "1.2".to_owned()
}

/// One certificate of a TLS listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateConfig {
    /// The PEM certificate, then its intermediates.
    pub(crate) cert_file: String,
    /// Its PEM private key (PKCS#8, or RSA/EC PRIVATE KEY).
    pub(crate) key_file: String,
}

/// `listeners[].tls.acme`: one certificate for `domains`, obtained with HTTP-01 (on a plain
/// listener) or TLS-ALPN-01 (on this one) and renewed before it expires.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcmeConfig {
    /// The CA's ACME directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub(crate) directory: String,
    /// The account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<String>,
    /// The names the certificate covers; the first is its subject. At least one.
    pub(crate) domains: Vec<String>,
    /// Where the account key, certificate and key are kept (created if missing).
    pub(crate) storage_dir: String,
    /// PEM CA certificates trusted for the directory's own HTTPS instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
    /// Renew when the certificate expires within this.
    #[serde(default = "renew_before")]
    pub(crate) renew_before: Dur,
}

fn renew_before() -> Dur {
    Dur::default_of("30d")
}

/// `upstreams.<name>.tls`: how weir checks `https://` targets and proves itself to them.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UpstreamTlsConfig {
    /// PEM CA certificates trusted instead of the system's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
    /// A PEM client certificate (then its chain) for targets that require one (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_cert_file: Option<String>,
    /// The PEM private key of `client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_key_file: Option<String>,
    /// The name sent in SNI and checked in the target's certificate, instead of the
    /// target's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_name: Option<String>,
}

impl ListenerConfig {
    pub(crate) fn public(address: &str) -> Self {
        Self {
            name: "public".to_owned(),
            address: address.to_owned(),
            http2: true,
            tls: None,
        }
    }
}

/// Edge protection, applied to every listener (routes may lower `max_body_bytes`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsConfig {
    /// Largest request head (request line and headers); larger gets 431.
    pub(crate) max_header_bytes: Size,
    /// Largest request body; larger gets 413. A route's `max_body_bytes` replaces it.
    pub(crate) max_body_bytes: Size,
    /// Most client connections open at once on a listener.
    pub(crate) max_connections: usize,
    /// Time a client has to send the complete request head (slowloris guard).
    pub(crate) header_read_timeout: Dur,
    /// An idle keep-alive connection is closed after this long.
    pub(crate) idle_timeout: Dur,
    /// Concurrent streams per HTTP/2 connection.
    pub(crate) http2_max_concurrent_streams: u32,
    /// Memory for the responses of `store: memory` caches, all routes together; the least
    /// used go first.
    pub(crate) max_cache_bytes: Size,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: Size::default_of("32KiB"),
            max_body_bytes: Size::default_of("10MiB"),
            max_connections: 20_000,
            header_read_timeout: Dur::default_of("10s"),
            idle_timeout: Dur::default_of("60s"),
            http2_max_concurrent_streams: 200,
            max_cache_bytes: Size::default_of("64MiB"),
        }
    }
}

/// The admin API: health, metrics, config, reload. Keep it off public networks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// Socket address of the admin API, or `off` to disable it.
    pub(crate) listen: String,
    /// When set and not empty, every admin call needs `Authorization: Bearer <token>`.
    pub(crate) token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".to_owned(),
            token: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ObservabilityConfig {
    /// The process log.
    pub(crate) log: LogConfig,
    /// One line per request.
    pub(crate) access_log: AccessLogConfig,
    /// OpenTelemetry tracing: a span per request, exported over OTLP/gRPC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tracing: Option<TracingConfig>,
}

/// `observability.tracing`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingConfig {
    /// The OTLP/gRPC collector, `http://HOST:PORT` (4317 is OTLP/gRPC's port).
    pub(crate) otlp_endpoint: String,
    /// The share of new traces recorded, 0 to 1; a request with a `traceparent` follows
    /// its sampled flag instead.
    #[serde(default = "all")]
    pub(crate) sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "weir_name")]
    pub(crate) service_name: String,
}

const fn all() -> f64 {
    1.0
}

fn weir_name() -> String {
    "weir".to_owned()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub(crate) level: String,
    /// `json` (one object a line) or `text` (for humans).
    pub(crate) format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: "json".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AccessLogConfig {
    /// Write an access log line per request.
    pub(crate) enabled: bool,
    /// `stdout`, `stderr`, or the path of a file to append to.
    pub(crate) path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "stdout".to_owned(),
        }
    }
}

/// A named group of targets and how requests are spread over them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// The static list of backend instances. At least one.
    #[serde(default)]
    pub(crate) targets: Vec<TargetConfig>,
    /// `round_robin`, `weighted`, `least_connections`, `p2c` or `consistent_hash`.
    #[serde(default = "round_robin")]
    pub(crate) load_balancing: String,
    /// What `consistent_hash` hashes: `header:NAME`, `cookie:NAME`, `ip` or `path`.
    /// Default for `consistent_hash`: `ip`. Only valid with `consistent_hash`.
    #[serde(default)]
    pub(crate) hash_key: Option<String>,
    /// `http1`, or `http2` (prior knowledge, h2c) toward the targets.
    #[serde(default = "http1")]
    pub(crate) protocol: String,
    /// Timeouts toward the targets.
    #[serde(default)]
    pub(crate) timeouts: TimeoutsConfig,
    /// Health checking.
    #[serde(default)]
    pub(crate) health_check: HealthCheckConfig,
    /// Where the targets come from at run time, instead of `targets`: exactly one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) discovery: Option<DiscoveryConfig>,
    /// TLS toward the targets: their trust, SNI name and client certificate. Targets are
    /// spoken to over TLS when this is set or when they are `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<UpstreamTlsConfig>,
    /// A circuit breaker per target: a target whose recent tries fail too often is not
    /// sent requests for a while. Default: none.
    #[serde(default)]
    pub(crate) circuit_breaker: Option<CircuitBreakerConfig>,
    /// Retrying failed tries on another target. Default: none (one try).
    #[serde(default)]
    pub(crate) retry: Option<RetryConfig>,
    /// Rate limits on all traffic to the upstream, after each route's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rate_limit: Vec<RateLimitConfig>,
}

/// `upstreams.<name>.discovery`: the source of an upstream's targets, watched at run time.
/// Exactly one source.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DiscoveryConfig {
    /// DNS: the A and AAAA records of `name` (each address with `port`), or the SRV records
    /// of `srv`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dns: Option<DnsDiscoveryConfig>,
    /// etcd: every key under `prefix` is a target, its value `{"url": "...", "weight": N}`.
    /// Needs the top-level `etcd` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) etcd: Option<EtcdDiscoveryConfig>,
    /// Consul: the instances of `service` whose health checks pass, from the agent of the
    /// top-level `consul` section (default `http://127.0.0.1:8500`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consul: Option<ConsulDiscoveryConfig>,
}

/// `discovery.etcd`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdDiscoveryConfig {
    /// The key prefix listed and watched (`/weir/upstreams/users/`; end it with `/` so that
    /// `/users` does not also match `/users2`). Required.
    pub(crate) prefix: String,
}

/// `discovery.consul`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsulDiscoveryConfig {
    /// The service name as registered in Consul. Required.
    pub(crate) service: String,
    /// Only instances with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tag: Option<String>,
    /// This upstream's datacenter, when not `consul.datacenter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) datacenter: Option<String>,
}

/// `discovery.dns`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsDiscoveryConfig {
    /// The name whose A and AAAA records are the targets, each with `port`. Exactly one of
    /// `name` and `srv`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// The port of every address of `name`, 1 to 65535. Required with `name`; not allowed
    /// with `srv` (the records carry their ports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u32>,
    /// The name whose SRV records are the targets (`_http._tcp.users.internal`): the lowest
    /// priority's records, with their ports and weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) srv: Option<String>,
    /// Resolve again after this long, or when the answer's TTL ends if that is sooner. At
    /// least 1s.
    pub(crate) refresh: Dur,
    /// The name server to ask, `IP:PORT`. Default: the system's (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<String>,
}

impl Default for DnsDiscoveryConfig {
    fn default() -> Self {
        Self {
            name: None,
            port: None,
            srv: None,
            refresh: Dur::default_of("30s"),
            server: None,
        }
    }
}

fn round_robin() -> String {
    "round_robin".to_owned()
}

fn http1() -> String {
    "http1".to_owned()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetConfig {
    /// `http://HOST[:PORT]` (port 80 when omitted), without path. Required.
    pub(crate) url: String,
    /// Relative share of requests for `weighted`, and of load for `least_connections`,
    /// `p2c` and `consistent_hash`. At least 1.
    #[serde(default = "one")]
    pub(crate) weight: u32,
}

const fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TimeoutsConfig {
    /// Time to open a connection to a target.
    pub(crate) connect: Dur,
    /// Time until the response head arrives. A route's `timeout` replaces it.
    pub(crate) request: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: Dur::default_of("2s"),
            request: Dur::default_of("30s"),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthCheckConfig {
    /// Probe every target periodically; without it every target counts as healthy.
    pub(crate) active: Option<ActiveCheckConfig>,
    /// Eject targets whose real traffic fails repeatedly; without it no target is ejected.
    pub(crate) passive: Option<PassiveCheckConfig>,
}

/// `health_check.passive`: outlier ejection by failures of real traffic.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PassiveCheckConfig {
    /// Failures in a row (connect errors, resets, timeouts, 5xx answers) that eject a
    /// target. At least 1.
    pub(crate) consecutive_failures: u32,
    /// How long a first ejection lasts; a target ejected again soon after coming back stays
    /// out `eject_for` times its ejections in a row, at most 10 times. Longer than 0.
    pub(crate) eject_for: Dur,
    /// Most targets of the upstream ejected at once, in percent of its targets (0 to 100);
    /// one target may always be ejected unless this is 0.
    pub(crate) max_ejected_percent: u32,
}

impl Default for PassiveCheckConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            eject_for: Dur::default_of("30s"),
            max_ejected_percent: 50,
        }
    }
}

/// `circuit_breaker`: one breaker per target of the upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CircuitBreakerConfig {
    /// The share of failed tries over `window` that opens the circuit: more than 0, at most 1.
    pub(crate) failure_ratio: f64,
    /// Tries over `window` below which the circuit never opens. At least 1.
    pub(crate) min_requests: u32,
    /// The rolling window the ratio is measured over, sliding in tenths. At least 100ms.
    pub(crate) window: Dur,
    /// How long an open circuit refuses requests before letting probes through. Longer
    /// than 0.
    pub(crate) open_for: Dur,
    /// Probes a half-open circuit lets through; all must succeed to close it. 1 to 1023.
    pub(crate) half_open_requests: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Dur::default_of("10s"),
            open_for: Dur::default_of("30s"),
            half_open_requests: 5,
        }
    }
}

/// `retry`: trying a failed request again, on another target when there is one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryConfig {
    /// Tries in all, the first included: 1 to 10.
    pub(crate) attempts: u32,
    /// The wait before each retry.
    pub(crate) backoff: BackoffConfig,
    /// The failures retried: `connect_failure`, `reset`, `timeout` and 5xx statuses such
    /// as `"503"` (or `503`). At least one.
    pub(crate) on: Vec<String>,
    /// Retry only methods that are idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub(crate) idempotent_only: bool,
    /// Time limit of each try. Default: none (each try has what is left of the timeout).
    pub(crate) per_try_timeout: Option<Dur>,
    /// The share of requests that may be retried, so retries cannot multiply the load on a
    /// failing upstream.
    pub(crate) budget: BudgetConfig,
}

/// `retry.on` when it is not written.
pub(crate) const DEFAULT_RETRY_ON: [&str; 5] = ["connect_failure", "reset", "502", "503", "504"];

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: BackoffConfig::default(),
            on: DEFAULT_RETRY_ON.iter().map(|s| (*s).to_owned()).collect(),
            idempotent_only: true,
            per_try_timeout: None,
            budget: BudgetConfig::default(),
        }
    }
}

/// `retry.backoff`: exponential, capped, with optional full jitter.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackoffConfig {
    /// The wait before the first retry. At most `max`.
    pub(crate) initial: Dur,
    /// The longest wait.
    pub(crate) max: Dur,
    /// Each wait is the previous one times this. At least 1.
    pub(crate) multiplier: f64,
    /// `full` (wait a random part of the wait) or `none`.
    pub(crate) jitter: String,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Dur::default_of("25ms"),
            max: Dur::default_of("1s"),
            multiplier: 2.0,
            jitter: "full".to_owned(),
        }
    }
}

/// `retry.budget`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BudgetConfig {
    /// Retries over the last 10 s may be at most this share of the requests. More than 0.
    pub(crate) ratio: f64,
    /// Retries allowed each second regardless of `ratio`.
    pub(crate) min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ActiveCheckConfig {
    /// Path probed with `GET`; a 2xx answer is a success.
    pub(crate) path: String,
    /// Time between probes of one target.
    pub(crate) interval: Dur,
    /// A probe without an answer within this time is a failure.
    pub(crate) timeout: Dur,
    /// Consecutive successes that bring an unhealthy target back.
    pub(crate) healthy_threshold: u32,
    /// Consecutive failures that take a healthy target out of rotation.
    pub(crate) unhealthy_threshold: u32,
}

impl Default for ActiveCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval: Dur::default_of("5s"),
            timeout: Dur::default_of("1s"),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// The `auth` section.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct AuthConfig {
    /// Identity providers by name, in file order. `None` items did not type.
    #[serde(serialize_with = "serialize_pairs")]
    pub(crate) providers: Vec<(String, Option<ProviderConfig>)>,
}

/// The provider types, in the order messages list them.
pub(crate) const PROVIDER_TYPES: [&str; 4] = ["api_key", "basic", "jwt", "oauth2"];

pub(crate) const DEFAULT_API_KEY_HEADER: &str = "X-Api-Key";
pub(crate) const DEFAULT_REALM: &str = "weir";
pub(crate) const DEFAULT_JWKS_REFRESH: &str = "5m";
pub(crate) const DEFAULT_LEEWAY: &str = "60s";
pub(crate) const DEFAULT_IDP_TIMEOUT: &str = "5s";
pub(crate) const DEFAULT_CACHE_TTL: &str = "60s";
pub(crate) const DEFAULT_NEGATIVE_TTL: &str = "10s";

/// One identity provider. Every type's keys are in one flat struct so that a key of another
/// type can be named as such ("`realm` applies to type basic, not jwt") rather than as an
/// unknown key; validation checks which keys fit `type`.
///
/// `GET /config` shows only the keys of the provider's type, with defaults filled in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderConfig {
    /// `api_key`, `basic`, `jwt` or `oauth2`. Required.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// api_key: the header holding the key.
    #[serde(default)]
    pub(crate) header: Option<String>,
    /// api_key: the query parameter holding the key.
    #[serde(default)]
    pub(crate) query: Option<String>,
    /// basic: the realm named in `WWW-Authenticate`.
    #[serde(default)]
    pub(crate) realm: Option<String>,
    /// jwt: an HMAC secret (HS256, HS384, HS512).
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// jwt: a PEM public key file.
    #[serde(default)]
    pub(crate) public_key_file: Option<String>,
    /// jwt: an `http://` or `https://` JWKS URL.
    #[serde(default)]
    pub(crate) jwks_url: Option<String>,
    /// jwt (with jwks_url), oauth2: PEM certificates trusted for an `https://` URL instead
    /// of the system's trust store.
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
    /// jwt: how often the JWKS is fetched again.
    #[serde(default)]
    pub(crate) jwks_refresh: Option<Dur>,
    /// jwt: accepted `alg` values.
    #[serde(default)]
    pub(crate) algorithms: Option<Vec<String>>,
    /// jwt: required `iss`.
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// jwt: accepted `aud` values.
    #[serde(default)]
    pub(crate) audiences: Option<Vec<String>>,
    /// jwt, oauth2: the claim holding the roles.
    #[serde(default)]
    pub(crate) roles_claim: Option<String>,
    /// jwt: clock skew allowed on `exp` and `nbf`.
    #[serde(default)]
    pub(crate) leeway: Option<Dur>,
    /// jwt, oauth2: time allowed for one call to the identity provider.
    #[serde(default)]
    pub(crate) timeout: Option<Dur>,
    /// oauth2: the RFC 7662 introspection endpoint.
    #[serde(default)]
    pub(crate) introspection_url: Option<String>,
    /// oauth2: weir's client id at the identity provider.
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    /// oauth2: weir's client secret at the identity provider.
    #[serde(default)]
    pub(crate) client_secret: Option<String>,
    /// oauth2: longest reuse of an active token's answer.
    #[serde(default)]
    pub(crate) cache_ttl: Option<Dur>,
    /// oauth2: reuse of an inactive token's answer.
    #[serde(default)]
    pub(crate) negative_ttl: Option<Dur>,
}

impl ProviderConfig {
    /// Every key but `type`, with whether it is set and the types it applies to.
    pub(crate) fn keys(&self) -> [(&'static str, bool, &'static [&'static str]); 19] {
        const API_KEY: &[&str] = &["api_key"];
        const BASIC: &[&str] = &["basic"];
        const JWT: &[&str] = &["jwt"];
        const OAUTH2: &[&str] = &["oauth2"];
        const BEARER: &[&str] = &["jwt", "oauth2"];
        [
            ("header", self.header.is_some(), API_KEY),
            ("query", self.query.is_some(), API_KEY),
            ("realm", self.realm.is_some(), BASIC),
            ("secret", self.secret.is_some(), JWT),
            ("public_key_file", self.public_key_file.is_some(), JWT),
            ("jwks_url", self.jwks_url.is_some(), JWT),
            ("jwks_refresh", self.jwks_refresh.is_some(), JWT),
            ("ca_file", self.ca_file.is_some(), BEARER),
            ("algorithms", self.algorithms.is_some(), JWT),
            ("issuer", self.issuer.is_some(), JWT),
            ("audiences", self.audiences.is_some(), JWT),
            ("roles_claim", self.roles_claim.is_some(), BEARER),
            ("leeway", self.leeway.is_some(), JWT),
            ("timeout", self.timeout.is_some(), BEARER),
            (
                "introspection_url",
                self.introspection_url.is_some(),
                OAUTH2,
            ),
            ("client_id", self.client_id.is_some(), OAUTH2),
            ("client_secret", self.client_secret.is_some(), OAUTH2),
            ("cache_ttl", self.cache_ttl.is_some(), OAUTH2),
            ("negative_ttl", self.negative_ttl.is_some(), OAUTH2),
        ]
    }

    /// api_key's header: as written, or `X-Api-Key` when neither header nor query is.
    pub(crate) fn api_key_header(&self) -> Option<&str> {
        match (&self.header, &self.query) {
            (None, None) => Some(DEFAULT_API_KEY_HEADER),
            (header, _) => header.as_deref(),
        }
    }

    pub(crate) fn realm(&self) -> &str {
        self.realm.as_deref().unwrap_or(DEFAULT_REALM)
    }

    pub(crate) fn jwks_refresh(&self) -> Dur {
        or_default(self.jwks_refresh.as_ref(), DEFAULT_JWKS_REFRESH)
    }

    pub(crate) fn leeway(&self) -> Dur {
        or_default(self.leeway.as_ref(), DEFAULT_LEEWAY)
    }

    pub(crate) fn timeout(&self) -> Dur {
        or_default(self.timeout.as_ref(), DEFAULT_IDP_TIMEOUT)
    }

    pub(crate) fn cache_ttl(&self) -> Dur {
        or_default(self.cache_ttl.as_ref(), DEFAULT_CACHE_TTL)
    }

    pub(crate) fn negative_ttl(&self) -> Dur {
        or_default(self.negative_ttl.as_ref(), DEFAULT_NEGATIVE_TTL)
    }
}

fn or_default(d: Option<&Dur>, default: &str) -> Dur {
    d.cloned().unwrap_or_else(|| Dur::default_of(default))
}

impl Serialize for ProviderConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &self.kind)?;
        match self.kind.trim() {
            "api_key" => {
                m.serialize_entry("header", &self.api_key_header())?;
                m.serialize_entry("query", &self.query)?;
            }
            "basic" => m.serialize_entry("realm", self.realm())?,
            "jwt" => {
                // Only the key source in use (a valid provider has exactly one).
                if let Some(v) = &self.secret {
                    m.serialize_entry("secret", v)?;
                }
                if let Some(v) = &self.public_key_file {
                    m.serialize_entry("public_key_file", v)?;
                }
                if let Some(v) = &self.jwks_url {
                    m.serialize_entry("jwks_url", v)?;
                    m.serialize_entry("jwks_refresh", &self.jwks_refresh())?;
                    m.serialize_entry("ca_file", &self.ca_file)?;
                }
                // Filled in from the built provider when not written (it depends on the key).
                m.serialize_entry("algorithms", &self.algorithms)?;
                m.serialize_entry("issuer", &self.issuer)?;
                m.serialize_entry("audiences", self.audiences.as_deref().unwrap_or_default())?;
                m.serialize_entry("roles_claim", &self.roles_claim)?;
                m.serialize_entry("leeway", &self.leeway())?;
                m.serialize_entry("timeout", &self.timeout())?;
            }
            "oauth2" => {
                m.serialize_entry("introspection_url", &self.introspection_url)?;
                m.serialize_entry("ca_file", &self.ca_file)?;
                m.serialize_entry("client_id", &self.client_id)?;
                m.serialize_entry("client_secret", &self.client_secret)?;
                m.serialize_entry("cache_ttl", &self.cache_ttl())?;
                m.serialize_entry("negative_ttl", &self.negative_ttl())?;
                m.serialize_entry("roles_claim", &self.roles_claim)?;
                m.serialize_entry("timeout", &self.timeout())?;
            }
            // Not a valid provider: the file does not load, so this is never shown.
            _ => {}
        }
        m.end()
    }
}

/// An identity for `api_key` and `basic` providers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerConfig {
    /// Unique name, sent upstream in `X-Consumer`. Required.
    pub(crate) name: String,
    /// Roles, sent upstream in `X-Consumer-Roles`.
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    /// Keys for `api_key` providers: the key itself, or `sha256:<64 hex digits>`.
    #[serde(default)]
    pub(crate) api_keys: Vec<String>,
    /// A user name and password hash for `basic` providers.
    #[serde(default)]
    pub(crate) basic: Option<BasicCredentialConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicCredentialConfig {
    /// Unique among consumers, without `:`. Required.
    pub(crate) username: String,
    /// An argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash. Required.
    pub(crate) password_hash: String,
}

/// A route: what it matches and where the request goes.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// Unique name: the `route` label of metrics and the name in logs. Required.
    pub(crate) name: String,
    /// What the request must look like. Default: every request (`prefix: /`).
    #[serde(default, rename = "match")]
    pub(crate) matcher: MatchConfig,
    /// The upstream to forward to, by name. Exactly one of `upstream` and `respond`.
    #[serde(default)]
    pub(crate) upstream: Option<String>,
    /// A fixed response instead of an upstream.
    #[serde(default)]
    pub(crate) respond: Option<RespondConfig>,
    /// Time until the upstream's response head arrives; default the upstream's
    /// `timeouts.request`.
    #[serde(default)]
    pub(crate) timeout: Option<Dur>,
    /// Largest request body on this route; default `limits.max_body_bytes`.
    #[serde(default)]
    pub(crate) max_body_bytes: Option<Size>,
    /// Accept paths with separators servers read differently (`%2F`, `%5C`, a backslash, `..;`).
    #[serde(default)]
    pub(crate) allow_ambiguous_paths: bool,
    /// A higher priority wins over every other precedence rule.
    #[serde(default)]
    pub(crate) priority: i32,
    /// Changes made to the request before it is forwarded.
    #[serde(default)]
    pub(crate) transform: Option<TransformConfig>,
    /// Who may call the route: any of `providers` authenticates, every one of `roles` must
    /// be held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth: Option<RouteAuthConfig>,
    /// Rate limits: every policy must admit the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rate_limit: Vec<RateLimitConfig>,
    /// Response caching: responses kept and served again, in memory or in Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<CacheConfig>,
    /// Cross-origin requests from browsers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cors: Option<CorsConfig>,
    /// Client address allow and deny lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<IpConfig>,
    /// What is answered when the upstream cannot answer: a fixed response, or one try on
    /// another upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fallback: Option<FallbackConfig>,
    /// gRPC on a route to a `protocol: grpc` upstream: REST -> gRPC transcoding from
    /// `google.api.http` annotations, and gRPC-Web.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) grpc: Option<GrpcRouteConfig>,
}

/// `routes[].grpc`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GrpcRouteConfig {
    /// An encoded FileDescriptorSet (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`), relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) descriptor_set: Option<String>,
    /// `.proto` files compiled when the config is loaded, relative to the config file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) protos: Vec<String>,
    /// Where `protos` find their imports, relative to the config file (the config file's
    /// directory when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) import_paths: Vec<String>,
    /// Also accept gRPC-Web (binary and text) and answer it in kind.
    pub(crate) web: bool,
}

/// `routes[].cache`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CacheConfig {
    /// How long a response stays fresh when the upstream says nothing (no `max-age`,
    /// `s-maxage` or `Expires`).
    pub(crate) ttl: Dur,
    /// `memory` (this process) or `redis` (the top-level `redis`, shared by every weir).
    pub(crate) store: String,
    /// Request headers whose values are part of the key.
    pub(crate) vary: Vec<String>,
    /// After freshness ends, serve the stored response this long while one request
    /// refreshes it in the background.
    pub(crate) stale_while_revalidate: Dur,
    /// After freshness ends, serve the stored response this long when the upstream fails.
    pub(crate) stale_if_error: Dur,
    /// Responses with larger bodies stream through and are not stored.
    pub(crate) max_body: Size,
    /// Key entries by the authenticated consumer. Default: true on routes with `auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_consumer: Option<bool>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Dur::default_of("60s"),
            store: "memory".to_owned(),
            vary: Vec::new(),
            stale_while_revalidate: Dur::default_of("0s"),
            stale_if_error: Dur::default_of("0s"),
            max_body: Size::default_of("1MiB"),
            per_consumer: None,
        }
    }
}

pub(crate) const DEFAULT_MAX_KEYS: u64 = 65_536;

/// One entry of a route's or an upstream's `rate_limit`.
///
/// `GET /config` shows it with its defaults filled in and the keys of its store only.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitConfig {
    /// What requests are counted by: `consumer`, `ip`, `route`, `header:NAME` or `global`.
    /// Required.
    pub(crate) key: String,
    /// Requests per `per`, in the long run. At least 1. Required.
    pub(crate) limit: u32,
    /// The period of `limit`. Required.
    pub(crate) per: Dur,
    /// Requests that may pass at once. Default: `limit`.
    #[serde(default)]
    pub(crate) burst: Option<u32>,
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub(crate) store: Option<String>,
    /// `allow` (default) or `deny` when the store cannot decide; `store: redis` only.
    #[serde(default)]
    pub(crate) on_error: Option<String>,
    /// Most keys tracked at once, rounded up to a power of two; `store: memory` only.
    #[serde(default)]
    pub(crate) max_keys: Option<u64>,
}

impl RateLimitConfig {
    pub(crate) fn store(&self) -> &str {
        self.store.as_deref().map_or("memory", str::trim)
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.limit)
    }

    /// The number of slots the memory store has: `max_keys` rounded up to a power of two.
    pub(crate) fn max_keys(&self) -> u64 {
        self.max_keys
            .unwrap_or(DEFAULT_MAX_KEYS)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
    }
}

impl Serialize for RateLimitConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        // As it runs: a header name in lower case.
        match crate::ratelimit::limit_key(&self.key) {
            Ok(key) => m.serialize_entry("key", &key.describe())?,
            // Not a valid policy: the file does not load, so this is never shown.
            Err(_) => m.serialize_entry("key", &self.key)?,
        }
        m.serialize_entry("limit", &self.limit)?;
        m.serialize_entry("per", &self.per)?;
        m.serialize_entry("burst", &self.burst())?;
        m.serialize_entry("store", self.store())?;
        if self.store() == "redis" {
            m.serialize_entry(
                "on_error",
                self.on_error.as_deref().map_or("allow", str::trim),
            )?;
        } else {
            m.serialize_entry("max_keys", &self.max_keys())?;
        }
        m.end()
    }
}

/// A route's `auth`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteAuthConfig {
    /// Names of `auth.providers`; any one of them may authenticate. At least one.
    #[serde(default)]
    pub(crate) providers: Vec<String>,
    /// Roles the identity must all hold (403 otherwise).
    #[serde(default)]
    pub(crate) roles: Vec<String>,
}

/// A route's `cors`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsConfig {
    /// `scheme://host[:port]` origins, or `["*"]` for every origin. At least one.
    #[serde(default)]
    pub(crate) origins: Vec<String>,
    /// Methods a preflight may ask for. Empty: the route's methods.
    #[serde(default)]
    pub(crate) methods: Vec<String>,
    /// Request headers a preflight may ask for. Empty: any.
    #[serde(default)]
    pub(crate) headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub(crate) expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub(crate) credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub(crate) max_age: Option<Dur>,
}

/// A route's `ip`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpConfig {
    /// When not empty, only these networks may call the route.
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// These networks may never call the route; deny wins over allow.
    #[serde(default)]
    pub(crate) deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MatchConfig {
    /// `api.example.com` (exact) or `*.example.com` (any name ending in `.example.com`).
    pub(crate) host: Option<String>,
    /// An exact path (`/health`) or a template (`/users/{id}`, `/files/{*rest}`).
    pub(crate) path: Option<String>,
    /// A path prefix, matched at segment boundaries (`/v2` matches `/v2` and `/v2/x`).
    pub(crate) prefix: Option<String>,
    /// A regular expression on the normalized path.
    pub(crate) regex: Option<String>,
    /// Methods, upper case. Empty: every method.
    pub(crate) methods: Vec<String>,
    /// Headers the request must carry with exactly these values.
    pub(crate) headers: OrderedMap<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RespondConfig {
    /// Status code, 100 to 599.
    pub(crate) status: u16,
    /// Response headers.
    pub(crate) headers: OrderedMap<String>,
    /// Response body.
    pub(crate) body: String,
}

impl Default for RespondConfig {
    fn default() -> Self {
        Self {
            status: 200,
            headers: OrderedMap::default(),
            body: String::new(),
        }
    }
}

/// A route's `fallback`: either `upstream`, or a response (`status`, `content_type`,
/// `headers`, `body`).
///
/// `GET /config` shows the keys of the form in use, with the response's defaults filled in.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FallbackConfig {
    /// Another upstream, by name, tried once instead of a response.
    pub(crate) upstream: Option<String>,
    /// Status code of the response, 100 to 599. Default: 200.
    pub(crate) status: Option<u16>,
    /// The response's `Content-Type`.
    pub(crate) content_type: Option<String>,
    /// Response headers.
    pub(crate) headers: Option<OrderedMap<String>>,
    /// Response body. Default: empty.
    pub(crate) body: Option<String>,
}

impl FallbackConfig {
    /// The response keys that were written, in the order messages list them.
    pub(crate) fn response_keys(&self) -> Vec<&'static str> {
        let given = [
            ("status", self.status.is_some()),
            ("content_type", self.content_type.is_some()),
            ("headers", self.headers.is_some()),
            ("body", self.body.is_some()),
        ];
        given.iter().filter(|(_, g)| *g).map(|(k, _)| *k).collect()
    }
}

impl Serialize for FallbackConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let Some(upstream) = &self.upstream {
            m.serialize_entry("upstream", upstream)?;
        } else {
            m.serialize_entry("status", &self.status.unwrap_or(200))?;
            m.serialize_entry("content_type", &self.content_type)?;
            m.serialize_entry(
                "headers",
                self.headers.as_ref().unwrap_or(&OrderedMap(Vec::new())),
            )?;
            m.serialize_entry("body", self.body.as_deref().unwrap_or_default())?;
        }
        m.end()
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TransformConfig {
    /// Changes to the request.
    pub(crate) request: Option<RequestTransformConfig>,
    /// Changes to the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response: Option<ResponseTransformConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ResponseTransformConfig {
    /// Header changes on the way to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<HeaderOpsConfig>,
    /// JSON body edits on the way to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<BodyTransformConfig>,
}

/// `headers` of a request or response transform.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HeaderOpsConfig {
    /// Headers set, replacing any of the same name; values may use variables.
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub(crate) set: OrderedMap<String>,
    /// Headers added, after any of the same name.
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub(crate) add: OrderedMap<String>,
    /// Headers removed (before `set` and `add`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) remove: Vec<String>,
}

/// `query` of a request transform.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QueryOpsConfig {
    /// Parameters set, replacing every parameter of the same name; values may use variables.
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub(crate) set: OrderedMap<String>,
    /// Parameters removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RequestTransformConfig {
    /// Path rewriting: `strip_prefix`, then `rewrite`, then `add_prefix`.
    pub(crate) path: Option<PathTransformConfig>,
    /// Header changes before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<HeaderOpsConfig>,
    /// Query changes before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) query: Option<QueryOpsConfig>,
    /// JSON body edits before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<BodyTransformConfig>,
}

/// `body` of a request or response transform.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BodyTransformConfig {
    /// Edits of an `application/json` (or `+json`) body, by JSON Pointer.
    pub(crate) json: Option<JsonEditsConfig>,
    /// Refuse a body that is not JSON or is malformed (400 for a request, 502 for a
    /// response) instead of passing it on untouched.
    pub(crate) strict: bool,
}

/// `body.json`: applied `remove`, then `rename`, then `set`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JsonEditsConfig {
    /// Places set to a value (any YAML value, taken as JSON), created when missing.
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub(crate) set: OrderedMap<serde_json::Value>,
    /// Places removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) remove: Vec<String>,
    /// Places moved: `{ /from: /to }`.
    #[serde(skip_serializing_if = "OrderedMap::is_empty")]
    pub(crate) rename: OrderedMap<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PathTransformConfig {
    /// Removed from the start of the path when it is there (at a segment boundary).
    pub(crate) strip_prefix: Option<String>,
    /// Put in front of the path.
    pub(crate) add_prefix: Option<String>,
    /// Replaces the first match of `regex` by `to` (`$1`, `${name}` refer to groups,
    /// `${path.NAME}` to the route's path parameters).
    pub(crate) rewrite: Option<RewriteConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RewriteConfig {
    /// A regular expression on the path (after `strip_prefix`). Required.
    pub(crate) regex: String,
    /// The replacement. Required.
    pub(crate) to: String,
}

/// A map that keeps the file's order (header conditions and response headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OrderedMap<V>(pub(crate) Vec<(String, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> OrderedMap<V> {
    pub(crate) const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    pairs.push((k, v));
                }
                Ok(OrderedMap(pairs))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn serialize_pairs<S: serde::Serializer, V: Serialize>(
    pairs: &[(String, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}
