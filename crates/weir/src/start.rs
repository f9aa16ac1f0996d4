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

/// Binds and serves a loaded configuration.
pub async fn start(loaded: Loaded) -> Result<Running, StartError> {
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
    let snapshot = Snapshot::build(loaded, access_log).map_err(StartError::Build)?;
    let shared = Arc::new(Shared::new(snapshot));

    // Bind everything before serving anything: a half-started gateway is worse than none.
    let mut sockets = Vec::new();
    for l in &settings.listeners {
        let socket = server::bind(l.address).map_err(|source| StartError::Bind {
            what: format!("listener \"{}\"", l.name),
            addr: l.address,
            source,
        })?;
        sockets.push(socket);
    }
    let admin_socket = match settings.admin.listen {
        Some(addr) => Some(server::bind(addr).map_err(|source| StartError::Bind {
            what: "admin".into(),
            addr,
            source,
        })?),
        None => None,
    };

    let (stop, stop_rx) = watch::channel(false);
    let mut addrs = Vec::new();
    for (index, (socket, l)) in sockets.into_iter().zip(&settings.listeners).enumerate() {
        let addr = socket.local_addr().unwrap_or(l.address);
        tracing::info!(listener = %l.name, address = %addr, http2 = l.http2, "listening");
        addrs.push(addr);
        let listener = Listener {
            index,
            socket,
            settings: l.clone(),
            limits: settings.limits,
        };
        tokio::spawn(server::accept_loop(
            listener,
            Arc::clone(&shared),
            stop_rx.clone(),
        ));
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
