//! Checking and building the process settings: listeners, limits, admin, logs, proxies.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use weir_domain::net::Cidr;

use crate::checks::{duration, size, socket_addr};
use crate::model::{FileConfig, LimitsConfig, ObservabilityConfig, RedisConfig};
use crate::node::KeyPath;
use crate::report::Report;
use crate::{
    AccessLogSettings, AccessLogTarget, AdminSettings, Limits, ListenerSettings, LogFormat,
    LogSettings, RedisSettings, Settings,
};

pub(crate) const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Checks every setting; `None` when any of them is wrong (all of them are reported).
/// `dir` is where relative paths in the file (`redis.ca_file`) are taken from.
pub(crate) fn build(cfg: &FileConfig, dir: &Path, r: &mut Report<'_>) -> Option<Settings> {
    let root = KeyPath::root();
    let admin = admin(cfg, r);
    let listeners = listeners(cfg, admin.as_ref(), dir, r);
    let limits = limits(&cfg.limits, &root.key("limits"), r);
    let (log, access_log) = observability(&cfg.observability, r);
    let tracing = match &cfg.observability.tracing {
        Some(t) => tracing(t, &root.key("observability").key("tracing"), r).map(Some),
        None => Some(None),
    };
    let mut trusted_proxies = Some(Vec::with_capacity(cfg.trusted_proxies.len()));
    for (i, cidr) in cfg.trusted_proxies.iter().enumerate() {
        let parsed = r.check(
            &root.key("trusted_proxies").index(i),
            Cidr::parse(cidr.trim()),
        );
        match (parsed, &mut trusted_proxies) {
            (Some(c), Some(list)) => list.push(c),
            _ => trusted_proxies = None,
        }
    }
    let shutdown_grace = duration(r, &root.key("shutdown_grace"), &cfg.shutdown_grace, false);
    let redis = match &cfg.redis {
        Some(c) => redis(c, &root.key("redis"), dir, r).map(Some),
        None => Some(None),
    };
    Some(Settings {
        listeners: listeners?,
        limits: limits?,
        admin: admin?,
        log: log?,
        access_log: access_log?,
        trusted_proxies: trusted_proxies?,
        workers: cfg.workers,
        shutdown_grace: shutdown_grace?,
        redis: redis?,
        watch: cfg.watch,
        tracing: tracing?,
    })
}

fn admin(cfg: &FileConfig, r: &mut Report<'_>) -> Option<AdminSettings> {
    let path = KeyPath::root().key("admin");
    let listen = match cfg.admin.listen.trim() {
        "off" => Some(None),
        text => r
            .check(
                &path.key("listen"),
                socket_addr(text).map_err(|e| format!("{e}, or off")),
            )
            .map(Some),
    };
    // An empty token (`${WEIR_ADMIN_TOKEN:-}` with the variable unset) means no token.
    let token = cfg.admin.token.clone().filter(|t| !t.is_empty());
    Some(AdminSettings {
        listen: listen?,
        token,
    })
}

fn listeners(
    cfg: &FileConfig,
    admin: Option<&AdminSettings>,
    dir: &Path,
    r: &mut Report<'_>,
) -> Option<Vec<ListenerSettings>> {
    let list = KeyPath::root().key("listeners");
    let mut out = Some(Vec::with_capacity(cfg.listeners.len()));
    let mut names: Vec<(&str, usize)> = Vec::new();
    let mut addresses: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, listener) in cfg.listeners.iter().enumerate() {
        let Some(l) = listener else {
            out = None;
            continue;
        };
        let path = list.index(i);
        let mut ok = true;
        let tls = match &l.tls {
            Some(t) => crate::tls::listener(t, &path.key("tls"), dir, r).map(Some),
            None => Some(None),
        };
        ok &= tls.is_some();
        if l.name.trim().is_empty() {
            r.at(&path.key("name"), "a listener needs a name");
            ok = false;
        } else if let Some((_, j)) = names.iter().find(|(n, _)| *n == l.name) {
            r.at(
                &path.key("name"),
                format!(
                    "duplicate listener name \"{}\" (also listeners[{j}])",
                    l.name
                ),
            );
            ok = false;
        } else {
            names.push((&l.name, i));
        }
        let address = r.check(&path.key("address"), socket_addr(&l.address));
        // Port 0 asks the kernel for a free port, so two of them never collide.
        if let Some(a) = address.filter(|a| a.port() != 0) {
            if let Some((_, j)) = addresses.iter().find(|(x, _)| *x == a) {
                r.at(
                    &path.key("address"),
                    format!("duplicate listener address {a} (also listeners[{j}])"),
                );
                ok = false;
            } else if admin.and_then(|s| s.listen) == Some(a) {
                r.at(
                    &path.key("address"),
                    format!("{a} is also admin.listen; the admin API needs its own address"),
                );
                ok = false;
            }
            addresses.push((a, i));
        }
        match (address, tls, &mut out) {
            (Some(address), Some(tls), Some(v)) if ok => v.push(ListenerSettings {
                name: l.name.clone(),
                address,
                http2: l.http2,
                tls,
            }),
            _ => out = None,
        }
    }
    out
}

fn limits(l: &LimitsConfig, path: &KeyPath, r: &mut Report<'_>) -> Option<Limits> {
    let max_header_bytes = size(r, &path.key("max_header_bytes"), &l.max_header_bytes)
        .and_then(|n| at_least_one(r, &path.key("max_header_bytes"), n))
        .and_then(|n| {
            r.check(
                &path.key("max_header_bytes"),
                usize::try_from(n).map_err(|_| "too large".to_owned()),
            )
        });
    let max_body_bytes = size(r, &path.key("max_body_bytes"), &l.max_body_bytes);
    let max_connections = at_least_one(r, &path.key("max_connections"), l.max_connections as u64);
    let header_read_timeout = duration(
        r,
        &path.key("header_read_timeout"),
        &l.header_read_timeout,
        true,
    );
    let idle_timeout = duration(r, &path.key("idle_timeout"), &l.idle_timeout, true);
    let streams = at_least_one(
        r,
        &path.key("http2_max_concurrent_streams"),
        u64::from(l.http2_max_concurrent_streams),
    );
    let max_cache_bytes = size(r, &path.key("max_cache_bytes"), &l.max_cache_bytes);
    max_connections?;
    streams?;
    Some(Limits {
        max_cache_bytes: max_cache_bytes?,
        max_header_bytes: max_header_bytes?,
        max_body_bytes: max_body_bytes?,
        max_connections: l.max_connections,
        header_read_timeout: header_read_timeout?,
        idle_timeout: idle_timeout?,
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
    })
}

pub(crate) fn at_least_one(r: &mut Report<'_>, path: &KeyPath, n: u64) -> Option<u64> {
    if n == 0 {
        r.at(path, "must be at least 1");
        None
    } else {
        Some(n)
    }
}

fn observability(
    o: &ObservabilityConfig,
    r: &mut Report<'_>,
) -> (Option<LogSettings>, Option<AccessLogSettings>) {
    let path = KeyPath::root().key("observability");
    let level = o.log.level.trim().to_ascii_lowercase();
    let level = if LOG_LEVELS.contains(&level.as_str()) {
        Some(level)
    } else {
        r.at(
            &path.key("log").key("level"),
            format!(
                "\"{}\" is not one of {}",
                o.log.level,
                LOG_LEVELS.join(", ")
            ),
        );
        None
    };
    let format = match o.log.format.trim() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        other => {
            r.at(
                &path.key("log").key("format"),
                format!("\"{other}\" is not one of json, text"),
            );
            None
        }
    };
    let target = match o.access_log.path.trim() {
        "stdout" => Some(AccessLogTarget::Stdout),
        "stderr" => Some(AccessLogTarget::Stderr),
        "" => {
            r.at(
                &path.key("access_log").key("path"),
                "an access log path cannot be empty (stdout, stderr or a file)",
            );
            None
        }
        file => Some(AccessLogTarget::File(PathBuf::from(file))),
    };
    let log = level
        .zip(format)
        .map(|(level, format)| LogSettings { level, format });
    let access_log = target.map(|target| AccessLogSettings {
        enabled: o.access_log.enabled,
        target,
    });
    (log, access_log)
}

fn tracing(
    t: &crate::model::TracingConfig,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<crate::TracingSettings> {
    let before = r.issues.len();
    let endpoint = t.otlp_endpoint.trim();
    let ok = endpoint
        .strip_prefix("http://")
        .is_some_and(|rest| !rest.is_empty() && !rest.trim_end_matches('/').contains('/'));
    if !ok {
        r.at(
            &path.key("otlp_endpoint"),
            format!(
                "\"{endpoint}\" is not an OTLP/gRPC endpoint such as http://127.0.0.1:4317 \
                 (http:// host and port, no path)"
            ),
        );
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        r.at(
            &path.key("sample_ratio"),
            format!("{} is not between 0 and 1", t.sample_ratio),
        );
    }
    if t.service_name.trim().is_empty() {
        r.at(&path.key("service_name"), "a service name cannot be empty");
    }
    (r.issues.len() == before).then(|| crate::TracingSettings {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        sample_ratio: t.sample_ratio,
        service_name: t.service_name.trim().to_owned(),
    })
}

/// `redis`: exactly one of `url` and `cluster`, each URL `redis://` or `rediss://`; a
/// `ca_file` only when every URL is `rediss://`.
fn redis(c: &RedisConfig, path: &KeyPath, dir: &Path, r: &mut Report<'_>) -> Option<RedisSettings> {
    let before = r.issues.len();
    let timeout = duration(r, &path.key("timeout"), &c.timeout, true);
    let (urls, cluster) = match (&c.url, c.cluster.is_empty()) {
        (Some(u), true) => (vec![(path.key("url"), u)], false),
        (None, false) => (
            c.cluster
                .iter()
                .enumerate()
                .map(|(i, u)| (path.key("cluster").index(i), u))
                .collect(),
            true,
        ),
        (Some(_), false) => {
            r.at_key(&path.key("cluster"), "give `url` or `cluster`, not both");
            (Vec::new(), false)
        }
        (None, true) => {
            r.at(
                path,
                "`redis` needs `url` (one server) or `cluster` (seed nodes)",
            );
            (Vec::new(), false)
        }
    };
    for (at, url) in &urls {
        if let Err(e) = redis_url(url) {
            r.at(at, e);
        }
    }
    let ca_pem = c.ca_file.as_ref().and_then(|file| {
        let at = path.key("ca_file");
        if urls.iter().any(|(_, u)| !u.trim().starts_with("rediss://")) {
            r.at_key(
                &at,
                "`ca_file` applies only when every Redis URL is rediss:// (plain redis:// has no \
                 certificate to check)",
            );
            return None;
        }
        crate::idp::ca_bundle(file, &at, dir, r)
    });
    if r.issues.len() != before {
        return None;
    }
    Some(RedisSettings {
        urls: urls
            .into_iter()
            .map(|(_, u)| weir_domain::auth::Secret::new(u.trim().to_owned()))
            .collect(),
        cluster,
        timeout: timeout?,
        ca_pem,
    })
}

/// A Redis URL's shape; the message never repeats the URL, which may hold a password.
fn redis_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or("a Redis URL starts with redis:// or rediss:// (TLS)")?;
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let authority = host_part.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err("the Redis URL names no host".to_owned());
    }
    Ok(())
}
