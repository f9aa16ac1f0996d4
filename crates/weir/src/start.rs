//! Starting and stopping a gateway: build the snapshot, bind every listener (all or
//! nothing), serve, and drain on request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use weir_config::{AccessLogTarget, Loaded};
use weir_infra::access_log::{AccessLog, Sink};

use crate::server::{self, Listener, Shared};
use crate::snapshot::Snapshot;

/// Why the gateway could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot build the configuration: {0}")]
    Build(String),
}

/// A running gateway.
pub struct Running {
    /// Bound addresses, in listener order (useful with port 0).
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.addrs)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Binds and serves a loaded configuration on the current runtime (one worker).
pub async fn start(loaded: Loaded) -> Result<Running, StartError> {
    start_on(loaded, &[tokio::runtime::Handle::current()]).await
}

/// Binds and serves a loaded configuration with one accept loop per listener on each
/// worker runtime in `workers` (the first is the current one, which also runs the admin API
/// and health checks). With several workers each gets its own `SO_REUSEPORT` socket, so
/// connections are spread by the kernel and a connection lives on one thread for its life.
pub async fn start_on(
    loaded: Loaded,
    workers: &[tokio::runtime::Handle],
) -> Result<Running, StartError> {
    let settings = loaded.settings.clone();
    let access_log = if settings.access_log.enabled {
        let sink = match &settings.access_log.target {
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::Stderr => Sink::Stderr,
            AccessLogTarget::File(p) => Sink::File(p.clone()),
        };
        Some(AccessLog::start(&sink).map_err(StartError::AccessLog)?)
    } else {
        None
    };
    let worker_count = workers.len().max(1);
    // The cache stores outlive configuration generations: a reload keeps what is cached.
    let redis = settings.redis.as_ref().map(crate::snapshot::redis_settings);
    let caches =
        weir_infra::cache::CacheStores::new(settings.limits.max_cache_bytes, redis.as_ref())
            .map_err(StartError::Build)?;
    let caches = Arc::new(crate::cache::Caches(caches));
    let snapshot =
        Snapshot::build(loaded, access_log, worker_count, caches).map_err(StartError::Build)?;
    let shared = Arc::new(Shared::new(snapshot));

    // Bind everything before serving anything: a half-started gateway is worse than none.
    // The first socket of a listener fixes its port (port 0 asks for a free one); the other
    // workers' sockets join that same port.
    let reuse_port = worker_count > 1;
    let mut sockets: Vec<Vec<std::net::TcpListener>> = Vec::new();
    let mut addrs = Vec::new();
    for l in &settings.listeners {
        let bind_error = |source| StartError::Bind {
            what: format!("listener \"{}\"", l.name),
            addr: l.address,
            source,
        };
        let first = server::bind(l.address, reuse_port).map_err(bind_error)?;
        let addr = first.local_addr().unwrap_or(l.address);
        let mut per_worker = vec![first];
        for _ in 1..worker_count {
            per_worker.push(server::bind(addr, true).map_err(bind_error)?);
        }
        addrs.push(addr);
        sockets.push(per_worker);
    }
    let admin_socket = match settings.admin.listen {
        Some(addr) => {
            let std = server::bind(addr, false).map_err(|source| StartError::Bind {
                what: "admin".into(),
                addr,
                source,
            })?;
            Some(
                tokio::net::TcpListener::from_std(std).map_err(|source| StartError::Bind {
                    what: "admin".into(),
                    addr,
                    source,
                })?,
            )
        }
        None => None,
    };

    let (stop, stop_rx) = watch::channel(false);
    for (index, (per_worker, l)) in sockets.into_iter().zip(&settings.listeners).enumerate() {
        tracing::info!(listener = %l.name, address = %addrs[index], http2 = l.http2, workers = worker_count, "listening");
        for (socket, handle) in per_worker.into_iter().zip(workers) {
            let listener = Listener {
                index,
                socket,
                settings: l.clone(),
                limits: settings.limits,
            };
            handle.spawn(server::accept_loop(
                listener,
                Arc::clone(&shared),
                stop_rx.clone(),
            ));
        }
    }
    let (admin_addr, admin_stop) = match admin_socket {
        Some(socket) => {
            let addr = socket.local_addr().ok();
            if let Some(a) = addr {
                tracing::info!(address = %a, "admin API listening");
            }
            let app = crate::admin::router(&shared, settings.admin.token);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let serve = axum::serve(socket, app).with_graceful_shutdown(async {
                    let _ = rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin API stopped");
                }
            });
            (addr, Some(tx))
        }
        None => (None, None),
    };
    shared.ready.store(true, Ordering::Relaxed);
    drop(stop_rx);
    Ok(Running {
        addrs,
        admin_addr,
        shared,
        stop,
        admin_stop,
    })
}

impl Running {
    /// Drains: `/readyz` turns 503, listeners stop accepting, in-flight requests finish
    /// (up to `shutdown_grace`). Returns false if the grace period ran out first.
    pub async fn shutdown(mut self) -> bool {
        self.shared.ready.store(false, Ordering::Relaxed);
        let grace = self.shared.snapshot.load().settings.shutdown_grace;
        let drained = server::drain(&self.stop, grace).await;
        if let Some(tx) = self.admin_stop.take() {
            let _ = tx.send(());
        }
        drained
    }
}
