//! The configuration file's types: what each key is, its default, and what it means.
//!
//! These types are the source of `docs/configuration.md` (a test checks that every key they
//! serialize is documented there). They only describe the file: units are parsed, names
//! resolved and domain values built by validation. Keys of the contract that this release
//! does not implement yet are typed as [`Unsupported`] so they are recognised (never "unknown
//! key") and then rejected by validation with a clear message.

use serde::{Deserialize, Serialize};

use crate::units::{Dur, Size};

/// Any content under a key this release recognises but does not implement yet.
pub(crate) type Unsupported = Option<serde_json::Value>;

/// The whole file. Its top level is read one section at a time (see `sections`), so that a
/// mistake in one section does not hide the mistakes of the others.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FileConfig {
    /// Where weir accepts traffic. Default: one listener `public` on `0.0.0.0:8080`.
    /// `None` items did not type and have already been reported.
    pub(crate) listeners: Vec<Option<ListenerConfig>>,
    /// Edge protection limits.
    pub(crate) limits: LimitsConfig,
    /// Reload when the config file changes. Only `false` is supported yet.
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
            routes: Vec::new(),
        }
    }
}

/// The top-level keys, in the order of the contract. `redis`, `etcd`, `consul`, `auth` and
/// `consumers` are recognised but not supported yet.
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

/// Top-level sections recognised but not supported yet.
pub(crate) const UNSUPPORTED_TOP_LEVEL: &[&str] = &["redis", "etcd", "consul", "auth", "consumers"];

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
    /// TLS termination: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Unsupported,
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
    /// OpenTelemetry tracing: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tracing: Unsupported,
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
    /// Dynamic discovery (DNS, etcd, Consul): not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) discovery: Unsupported,
    /// TLS toward `https://` targets: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Unsupported,
    /// Circuit breaking: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) circuit_breaker: Unsupported,
    /// Retries: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry: Unsupported,
    /// Rate limits on all traffic to the upstream: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate_limit: Unsupported,
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
    /// Ejecting targets by failures of real traffic: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) passive: Unsupported,
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
    /// A higher priority wins over every other precedence rule.
    #[serde(default)]
    pub(crate) priority: i32,
    /// Changes made to the request before it is forwarded.
    #[serde(default)]
    pub(crate) transform: Option<TransformConfig>,
    /// Authentication: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth: Unsupported,
    /// Rate limiting: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate_limit: Unsupported,
    /// Response caching: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Unsupported,
    /// CORS: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cors: Unsupported,
    /// IP allow and deny lists: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Unsupported,
    /// Fallback responses: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fallback: Unsupported,
    /// REST to gRPC transcoding: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) grpc: Unsupported,
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

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TransformConfig {
    /// Changes to the request.
    pub(crate) request: Option<RequestTransformConfig>,
    /// Changes to the response: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response: Unsupported,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RequestTransformConfig {
    /// Path rewriting: `strip_prefix`, then `rewrite`, then `add_prefix`.
    pub(crate) path: Option<PathTransformConfig>,
    /// Header changes: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Unsupported,
    /// Query changes: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) query: Unsupported,
    /// Body changes: not supported yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Unsupported,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PathTransformConfig {
    /// Removed from the start of the path when it is there (at a segment boundary).
    pub(crate) strip_prefix: Option<String>,
    /// Put in front of the path.
    pub(crate) add_prefix: Option<String>,
    /// Replaces the first match of `regex` by `to` (`$1`, `${name}` refer to groups).
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
