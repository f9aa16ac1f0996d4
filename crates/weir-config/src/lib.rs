//! weir's configuration layer: from a YAML file to validated domain values.
//!
//! `load_file` reads the file, replaces `${VAR}` / `${VAR:-default}` in string values, applies
//! `WEIR_*` environment overrides and then command-line flags (precedence, highest first:
//! flags > environment > file > defaults), deserializes into typed structs that reject unknown
//! keys, validates everything, and builds the domain's route table and upstreams. It collects
//! every problem rather than stopping at the first, each located as `FILE:LINE:COL` with its
//! key path. It performs no network I/O and starts nothing: `weir validate` and a reload use
//! exactly this function, so what validates is what runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_domain::auth::AuthSettings;
use weir_domain::net::Cidr;
use weir_domain::router::RouteTable;
use weir_domain::upstream::Upstream;

mod access;
mod auth;
mod cache;
mod checks;
mod de;
mod discovery;
mod grpc;
mod grpc_route;
mod idp;
mod interpolate;
mod model;
mod node;
mod overrides;
mod pem;
mod ratelimit;
mod redact;
mod registries;
mod report;
mod resilience;
mod routes;
mod sections;
mod settings;
mod tls;
mod transforms;
mod units;
mod upstreams;

use node::KeyPath;
use report::{Issue, Report};

/// Command-line flags of `weir run` that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`: replaces the first listener's address (creating it if the file has none).
    pub listen: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--workers`.
    pub workers: Option<usize>,
}

/// Where environment variables come from; tests pass a map instead of mutating the process.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for discovering `WEIR_*` overrides.
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

/// An environment given as a map: for tests, and for embedding weir without touching the
/// process environment.
#[derive(Clone, Debug, Default)]
pub struct MapEnv(pub std::collections::BTreeMap<String, String>);

impl MapEnv {
    #[must_use]
    pub fn with(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// One configuration problem, printed as `FILE:LINE:COL: key.path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file as given on the command line, or `env:WEIR_X` / `flag:--listen` for values that
    /// came from an override (then `line` and `col` are 0 and not printed).
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// `routes[2].upstream`; empty for problems of the whole file (e.g. YAML syntax).
    pub path: String,
    /// Never contains a secret value.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)?;
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A validated configuration: runtime settings plus the domain values built from it.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub routes: RouteTable,
    /// Indexed by `UpstreamId`.
    pub upstreams: Vec<Upstream>,
    /// Identity providers (indexed by `ProviderId`) and consumers.
    pub auth: AuthSettings,
    /// The effective configuration (defaults and overrides applied) as JSON, every secret
    /// replaced by `"***"`: what `GET /config` shows.
    pub effective: serde_json::Value,
    /// A short hex hash of the effective configuration, unique per content.
    pub version: String,
}

/// Settings of the process itself, with defaults applied and units resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// At least one; default: `public` on `0.0.0.0:8080`.
    pub listeners: Vec<ListenerSettings>,
    pub limits: Limits,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub access_log: AccessLogSettings,
    pub trusted_proxies: Vec<Cidr>,
    /// Runtime worker threads; 0 means one per available CPU.
    pub workers: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// The Redis for `store: redis` rate limits, when configured.
    pub redis: Option<RedisSettings>,
    /// Reload when the configuration file changes.
    pub watch: bool,
    /// OpenTelemetry tracing, when configured.
    pub tracing: Option<TracingSettings>,
}

/// `observability.tracing`.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingSettings {
    pub endpoint: String,
    pub sample_ratio: f64,
    pub service_name: String,
}

// The ratio is checked to be within 0..=1 at load, so it is never NaN.
impl Eq for TracingSettings {}

/// The top-level `redis` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// One URL for a single server; the seed nodes for a cluster. May hold a password.
    pub urls: Vec<weir_domain::auth::Secret>,
    pub cluster: bool,
    pub timeout: Duration,
    /// The certificates of `ca_file`: trusted for `rediss://` instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    pub name: String,
    pub address: SocketAddr,
    /// Also accept HTTP/2: with prior knowledge (h2c) on a plain listener, by ALPN on TLS.
    /// Default true.
    pub http2: bool,
    /// TLS termination; `None` for a plain listener.
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// Chosen by SNI; the first is the default. Empty with `acme`.
    pub certificates: Vec<ServerCertificate>,
    pub min_version: TlsVersion,
    /// When set, clients must present a certificate signed by one of these.
    pub client_ca_pem: Option<Vec<u8>>,
    pub acme: Option<AcmeSettings>,
}

/// A certificate chain and its key, PEM, checked to belong together.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: weir_domain::auth::Secret,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `listeners[].tls.acme`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    pub domains: Vec<String>,
    /// Relative to the config file's directory when written relative.
    pub storage_dir: PathBuf,
    /// Trusted for the directory's HTTPS instead of the system's store.
    pub ca_pem: Option<Vec<u8>>,
    pub renew_before: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// The bound of the memory shared by `store: memory` caches.
    pub max_cache_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// `None` when `admin.listen` is `off`.
    pub listen: Option<SocketAddr>,
    /// When set, every admin call needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter directive: `error`, `warn`, `info`, `debug`, `trace`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    pub target: AccessLogTarget,
}

/// Loads, validates and builds a configuration file. Relative paths in it (a JWT provider's
/// `public_key_file`) are relative to the file's directory.
pub fn load_file(path: &Path, env: &dyn Env, overrides: &Overrides) -> Result<Loaded, Problems> {
    let name = path.display().to_string();
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_in(&name, &text, dir, env, overrides),
        Err(e) => Err(Problems(vec![Problem {
            file: name,
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Like [`load_file`], for text already in memory; `name` is used in problem locations.
/// Relative paths in it are relative to the current directory.
pub fn load_str(
    name: &str,
    text: &str,
    env: &dyn Env,
    overrides: &Overrides,
) -> Result<Loaded, Problems> {
    load_str_in(name, text, Path::new(""), env, overrides)
}

/// Like [`load_str`], with relative paths in the file taken from `dir` (`""` is the current
/// directory).
pub fn load_str_in(
    name: &str,
    text: &str,
    dir: &Path,
    env: &dyn Env,
    overrides: &Overrides,
) -> Result<Loaded, Problems> {
    let mut root = node::parse(text).map_err(|(origin, message)| {
        Problems(vec![
            Issue {
                origin,
                path: KeyPath::root(),
                message,
            }
            .into_problem(name),
        ])
    })?;

    // Values first: `${VAR}` in the file, then `WEIR_*` over the file, then flags over both.
    let mut issues = Vec::new();
    interpolate::interpolate(&mut root, env, &KeyPath::root(), &mut issues);
    let unset: Vec<KeyPath> = issues.iter().map(|i| i.path.clone()).collect();
    overrides::apply_env(&mut root, env, &mut issues);
    overrides::apply_flags(&mut root, overrides, &mut issues);

    // Then types, then meaning; every step reports and carries on.
    let typing = std::cell::RefCell::new(issues);
    let cfg = sections::read(&root, &typing);
    let mut report = Report::new(&root, typing.into_inner());
    let settings = settings::build(&cfg, dir, &mut report);
    let registries = registries::build(&cfg, dir, &mut report);
    let upstreams = upstreams::build(&cfg.upstreams, &registries, dir, &mut report);
    let providers = auth::providers(&cfg.auth, dir, &mut report);
    let consumers = auth::consumers(&cfg.consumers, &mut report);
    let names: Vec<&str> = cfg.upstreams.iter().map(|(n, _)| n.as_str()).collect();
    let provider_names: Vec<&str> = cfg.auth.providers.iter().map(|(n, _)| n.as_str()).collect();
    let protocols: Vec<Option<weir_domain::upstream::Protocol>> = upstreams
        .iter()
        .map(|u| u.as_ref().map(|u| u.protocol))
        .collect();
    let routes = routes::build(
        &cfg.routes,
        &routes::Known {
            upstreams: &names,
            protocols: &protocols,
            providers: &provider_names,
            dir,
        },
        &mut report,
    );
    ratelimit::check_stores(&cfg, &mut report);

    if !report.is_clean() {
        return Err(problems(name, &root, report.issues, &unset));
    }
    let (Some(settings), Some(routes), Some(upstreams), Some(providers), Some(consumers)) = (
        settings,
        routes,
        upstreams.into_iter().collect::<Option<Vec<_>>>(),
        providers.into_iter().collect::<Option<Vec<_>>>(),
        consumers,
    ) else {
        // Every `None` above comes with a reported issue; this is a guard, not a path.
        return Err(Problems(vec![Problem {
            file: name.to_owned(),
            line: 0,
            col: 0,
            path: String::new(),
            message: "the configuration could not be built".to_owned(),
        }]));
    };
    let auth = AuthSettings {
        providers,
        consumers,
    };
    let mut effective = serde_json::to_value(&cfg).unwrap_or(serde_json::Value::Null);
    auth::fill_effective(&mut effective, &auth);
    // A key file's content is part of what runs: rotating a key (or the Redis CA, or a
    // registry's certificates) is a new version.
    let redis_ca = settings
        .redis
        .as_ref()
        .and_then(|r| r.ca_pem.as_deref())
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    // A route's descriptors are read at load too: a changed .proto is a new version.
    let descriptors: String = routes
        .routes()
        .iter()
        .filter_map(|r| r.grpc.as_ref())
        .map(|g| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &g.descriptors))
        .collect();
    let version = redact::version(
        &(effective.to_string()
            + &auth::key_material(&auth)
            + &redis_ca
            + &registries.key_material()
            + &descriptors
            + &tls_material(&settings, &upstreams)),
    );
    redact::redact(&mut effective);
    Ok(Loaded {
        settings,
        routes,
        upstreams,
        auth,
        effective,
        version,
    })
}

/// The certificates and keys the listeners and upstreams read: a renewed certificate is a
/// new version.
fn tls_material(settings: &Settings, upstreams: &[Upstream]) -> String {
    let mut out = String::new();
    let mut add = |bytes: &[u8]| out.push_str(&String::from_utf8_lossy(bytes));
    for t in settings.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        for c in &t.certificates {
            add(&c.cert_pem);
            add(c.key_pem.expose().as_bytes());
        }
        add(t.client_ca_pem.as_deref().unwrap_or_default());
        if let Some(a) = &t.acme {
            add(a.ca_pem.as_deref().unwrap_or_default());
        }
    }
    for t in upstreams.iter().filter_map(|u| u.tls.as_ref()) {
        add(t.ca_pem.as_deref().unwrap_or_default());
        if let Some(id) = &t.identity {
            add(&id.cert_pem);
            add(id.key_pem.expose().as_bytes());
        }
    }
    out
}

/// Orders the issues as in the file, drops the follow-ups of an unset variable (its empty
/// value would be reported again), and scrubs any secret out of the messages.
fn problems(name: &str, root: &node::Node, mut issues: Vec<Issue>, unset: &[KeyPath]) -> Problems {
    let secrets = redact::secrets(root);
    let unset_count = unset.len();
    let mut kept: Vec<Issue> = Vec::with_capacity(issues.len());
    for (i, issue) in issues.drain(..).enumerate() {
        let follow_up = i >= unset_count && unset.contains(&issue.path);
        if !follow_up && !kept.contains(&issue) {
            kept.push(issue);
        }
    }
    kept.sort_by(|a, b| a.origin.order().cmp(&b.origin.order()));
    Problems(
        kept.into_iter()
            .map(|mut i| {
                i.message = redact::scrub(&i.message, &secrets);
                i.into_problem(name)
            })
            .collect(),
    )
}
