//! Starting and stopping a gateway: build the snapshot, bind every listener (all or
//! nothing), serve, and drain on request. Reloads go through [`Control`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use weir_config::{AccessLogTarget, Loaded, Overrides, ProcessEnv};
use weir_infra::access_log::{AccessLog, Sink};

use crate::reload::{Control, Source};
use crate::server::Shared;
use crate::snapshot::{Process, Snapshot};

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
    /// Bound addresses, in listener order at start (useful with port 0).
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// Reloads and the listeners they open and close.
    pub control: Arc<Control>,
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

/// Binds and serves a loaded configuration on the current runtime (one worker). It cannot
/// be reloaded from a file: see [`start_file`].
pub async fn start(loaded: Loaded) -> Result<Running, StartError> {
    start_on(loaded, &[tokio::runtime::Handle::current()], None).await
}

/// Loads `path` (with the process's `WEIR_*` variables) and serves it on the current
/// runtime; reloads read `path` again.
pub async fn start_file(path: PathBuf) -> Result<Running, StartError> {
    let file = path.clone();
    start_source(Source {
        path,
        load: Arc::new(move || weir_config::load_file(&file, &ProcessEnv, &Overrides::default())),
    })
    .await
}

/// Loads `source` and serves it on the current runtime; reloads load it again.
pub async fn start_source(source: Source) -> Result<Running, StartError> {
    let loaded = (source.load)().map_err(|p| StartError::Build(p.to_string()))?;
    start_on(loaded, &[tokio::runtime::Handle::current()], Some(source)).await
}

/// Opens the access log its settings name.
pub(crate) fn open_access_log(
    settings: &weir_config::AccessLogSettings,
) -> std::io::Result<Option<AccessLog>> {
    if !settings.enabled {
        return Ok(None);
    }
    let sink = match &settings.target {
        AccessLogTarget::Stdout => Sink::Stdout,
        AccessLogTarget::Stderr => Sink::Stderr,
        AccessLogTarget::File(p) => Sink::File(p.clone()),
    };
    AccessLog::start(&sink).map(Some)
}

/// Binds and serves a loaded configuration with one accept loop per listener on each
/// worker runtime in `workers` (the first is the current one, which also runs the admin API
/// and health checks). With several workers each gets its own `SO_REUSEPORT` socket, so
/// connections are spread by the kernel and a connection lives on one thread for its life.
/// `source` gives the configuration again for a reload (SIGHUP, `POST /reload`, `watch`).
pub async fn start_on(
    loaded: Loaded,
    workers: &[tokio::runtime::Handle],
    source: Option<Source>,
) -> Result<Running, StartError> {
    let settings = loaded.settings.clone();
    let access_log = open_access_log(&settings.access_log).map_err(StartError::AccessLog)?;
    let process = Process {
        access_log,
        workers: workers.len().max(1),
    };
    // The cache stores outlive configuration generations: a reload keeps what is cached.
    let caches = crate::reload::caches(&settings).map_err(StartError::Build)?;
    let snapshot =
        Snapshot::build(loaded, &process, Arc::clone(&caches), None).map_err(StartError::Build)?;
    let shared = Arc::new(Shared::new(snapshot));

    // Bind everything before serving anything: a half-started gateway is worse than none.
    let control = Control::new(
        Arc::clone(&shared),
        workers.to_vec(),
        process,
        caches,
        source,
    );
    let opened = control
        .open_all(&settings.listeners)
        .await
        .map_err(|(what, addr, source)| StartError::Bind { what, addr, source })?;
    let admin_socket = match settings.admin.listen {
        Some(addr) => {
            let bind_error = |source| StartError::Bind {
                what: "admin".into(),
                addr,
                source,
            };
            let std = crate::server::bind(addr, false).map_err(bind_error)?;
            Some(tokio::net::TcpListener::from_std(std).map_err(bind_error)?)
        }
        None => None,
    };
    let addrs = control.serve(opened).await;
    let (admin_addr, admin_stop) = match admin_socket {
        Some(socket) => {
            let addr = socket.local_addr().ok();
            if let Some(a) = addr {
                tracing::info!(address = %a, "admin API listening");
            }
            let app = crate::admin::router(&shared, &control, settings.admin.token);
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
    control.watch_if_asked();
    shared.ready.store(true, Ordering::Relaxed);
    Ok(Running {
        addrs,
        admin_addr,
        shared,
        control,
        admin_stop,
    })
}

impl Running {
    /// Drains: `/readyz` turns 503, listeners stop accepting, in-flight requests finish
    /// (up to `shutdown_grace`). Returns false if the grace period ran out first.
    pub async fn shutdown(mut self) -> bool {
        self.shared.ready.store(false, Ordering::Relaxed);
        let grace = self.shared.snapshot.load().settings.shutdown_grace;
        let drained = self.control.drain(grace).await;
        if let Some(tx) = self.admin_stop.take() {
            let _ = tx.send(());
        }
        drained
    }

    /// The address listener `name` is bound to now (it may have been opened by a reload).
    pub async fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.control.addr_of(name).await
    }
}
