//! Reloading: the new file is loaded, validated and built into a complete snapshot next to
//! the running one; only then are new listeners bound and the snapshot swapped in one store.
//! Any error before the swap leaves everything as it was. Requests in flight keep the
//! snapshot they started with; connections are never closed by a reload, except those of a
//! listener the new config removes, which finish their requests first (as in a drain).
//!
//! Reloads are serialized (SIGHUP, `POST /reload` and the file watcher may race). A file
//! that loads to the running version is not rebuilt.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use weir_config::{ListenerSettings, Loaded, Problems, Settings};

use crate::server::{self, Listener, ListenerStats, Shared};
use crate::snapshot::{Process, Snapshot};

/// Where a configuration comes from again: the file, and how to load it.
#[derive(Clone)]
pub struct Source {
    pub path: PathBuf,
    pub load: Arc<dyn Fn() -> Result<Loaded, Problems> + Send + Sync>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("path", &self.path).finish()
    }
}

/// Why a reload kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems (each with file:line:col).
    #[error("{0}")]
    Problems(Problems),
    /// The file is valid but could not be put to work (a certificate, a port in use).
    #[error("{0}")]
    Build(String),
    #[error("this gateway was not started from a file, so it cannot reload")]
    NoSource,
}

/// The cache stores for these settings.
pub fn caches(settings: &Settings) -> Result<Arc<crate::cache::Caches>, String> {
    let redis = settings.redis.as_ref().map(crate::snapshot::redis_settings);
    let stores =
        weir_infra::cache::CacheStores::new(settings.limits.max_cache_bytes, redis.as_ref())?;
    Ok(Arc::new(crate::cache::Caches(stores)))
}

/// One open listener: its sockets' accept loops (one per worker) and their stop switch.
struct Open {
    name: String,
    /// As configured (port 0 stays 0, so an unchanged listener matches).
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    stats: Arc<ListenerStats>,
}

/// A listener's sockets, bound but not yet served.
pub struct Bound {
    settings: ListenerSettings,
    bound: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

struct State {
    process: Process,
    caches: Arc<crate::cache::Caches>,
    open: Vec<Open>,
    /// Stop switches of listeners a reload removed, whose connections may still be
    /// finishing; a drain waits for them too.
    closing: Vec<watch::Sender<bool>>,
}

/// Reloads and listeners.
pub struct Control {
    shared: Arc<Shared>,
    workers: Vec<Handle>,
    source: Option<Source>,
    state: tokio::sync::Mutex<State>,
    /// The file watcher, while `watch: true`.
    watcher: std::sync::Mutex<Option<Watcher>>,
    me: Weak<Control>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        workers: Vec<Handle>,
        process: Process,
        caches: Arc<crate::cache::Caches>,
        source: Option<Source>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            shared,
            workers,
            source,
            state: tokio::sync::Mutex::new(State {
                process,
                caches,
                open: Vec::new(),
                closing: Vec::new(),
            }),
            watcher: std::sync::Mutex::new(None),
            me: me.clone(),
        })
    }

    /// Binds every listener of `listeners`, or none: `(what, address, error)` of the first
    /// that fails.
    pub async fn open_all(
        &self,
        listeners: &[ListenerSettings],
    ) -> Result<Vec<Bound>, (String, SocketAddr, std::io::Error)> {
        listeners.iter().map(|l| self.bind(l)).collect()
    }

    /// The first socket of a listener fixes its port (port 0 asks for a free one); the
    /// other workers' sockets join that same port.
    fn bind(&self, l: &ListenerSettings) -> Result<Bound, (String, SocketAddr, std::io::Error)> {
        let fail = |e| (format!("listener \"{}\"", l.name), l.address, e);
        let reuse_port = self.workers.len() > 1;
        let first = server::bind(l.address, reuse_port).map_err(fail)?;
        let bound = first.local_addr().unwrap_or(l.address);
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(server::bind(bound, true).map_err(fail)?);
        }
        Ok(Bound {
            settings: l.clone(),
            bound,
            sockets,
        })
    }

    /// Starts the accept loops of bound listeners; returns their addresses.
    pub async fn serve(&self, bound: Vec<Bound>) -> Vec<SocketAddr> {
        let mut state = self.state.lock().await;
        let addrs = bound.iter().map(|b| b.bound).collect();
        for b in bound {
            let open = self.start_accepting(b);
            state.open.push(open);
        }
        self.publish_stats(&state);
        addrs
    }

    fn start_accepting(&self, b: Bound) -> Open {
        let l = &b.settings;
        let tls = l.tls.is_some();
        tracing::info!(listener = %l.name, address = %b.bound, tls, http2 = l.http2, workers = self.workers.len(), "listening");
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(ListenerStats {
            name: arc_swap::ArcSwap::from_pointee(l.name.clone()),
            active: std::sync::atomic::AtomicI64::new(0),
        });
        let max = self.shared.snapshot.load().settings.limits.max_connections;
        for (socket, handle) in b.sockets.into_iter().zip(&self.workers) {
            let listener = Listener {
                name: l.name.clone(),
                configured: l.address,
                socket,
                permits: Arc::new(Semaphore::new(max)),
                stats: Arc::clone(&stats),
            };
            // Detached: it ends when `stop` flips.
            drop(handle.spawn(server::accept_loop(
                listener,
                Arc::clone(&self.shared),
                stop_rx.clone(),
            )));
        }
        Open {
            name: l.name.clone(),
            configured: l.address,
            bound: b.bound,
            stop,
            stats,
        }
    }

    fn publish_stats(&self, state: &State) {
        self.shared.listeners.store(Arc::new(
            state.open.iter().map(|o| Arc::clone(&o.stats)).collect(),
        ));
    }

    /// Where listener `name` is bound now.
    pub async fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        let state = self.state.lock().await;
        state.open.iter().find(|o| o.name == name).map(|o| o.bound)
    }

    /// Reloads from the source. On success returns the running version; on any error the
    /// running configuration stays and the failure is counted and logged.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let result = self.try_reload().await;
        let slot = usize::from(result.is_err());
        self.shared.reloads[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &result {
            Ok(version) => tracing::info!(version = %version, "configuration reloaded"),
            Err(ReloadError::Problems(problems)) => {
                for p in &problems.0 {
                    tracing::error!(problem = %p, "reload refused: the configuration has problems; the running one stays");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the running configuration stays");
            }
        }
        if result.is_ok() {
            self.watch_if_asked();
        }
        result
    }

    async fn try_reload(&self) -> Result<String, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let mut state = self.state.lock().await;
        let loaded = (source.load)().map_err(ReloadError::Problems)?;
        let old = self.shared.snapshot.load_full();
        if loaded.version == old.version {
            return Ok(old.version.clone());
        }
        let version = loaded.version.clone();
        let next = &loaded.settings;
        warn_restart_only(&old.settings, next);
        let mut process = state.process.clone();
        if next.access_log != old.settings.access_log {
            process.access_log = crate::start::open_access_log(&next.access_log)
                .map_err(|e| ReloadError::Build(format!("cannot open the access log: {e}")))?;
        }
        let caches = if next.limits.max_cache_bytes == old.settings.limits.max_cache_bytes
            && next.redis == old.settings.redis
        {
            Arc::clone(&state.caches)
        } else {
            caches(next).map_err(ReloadError::Build)?
        };
        let listeners = next.listeners.clone();
        let snapshot = Snapshot::build(loaded, &process, Arc::clone(&caches), Some(&old))
            .map_err(ReloadError::Build)?;

        // Listeners: the same name on the same configured address stays open as it is. A
        // listener renamed on the address (not port 0) it holds keeps its socket: binding
        // the address again before the old socket closes would fail.
        let renames: Vec<(usize, String)> = state
            .open
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.configured.port() != 0 && !listeners.iter().any(|l| l.name == o.name)
            })
            .filter_map(|(i, o)| {
                listeners
                    .iter()
                    .find(|l| {
                        l.address == o.configured && !state.open.iter().any(|x| x.name == l.name)
                    })
                    .map(|l| (i, l.name.clone()))
            })
            .collect();
        let renamed = |l: &ListenerSettings| renames.iter().any(|(_, n)| *n == l.name);
        let kept = |o: &Open| {
            listeners
                .iter()
                .any(|l| l.name == o.name && l.address == o.configured)
        };
        let mut bound = Vec::new();
        for l in &listeners {
            let open = state
                .open
                .iter()
                .any(|o| o.name == l.name && o.configured == l.address);
            if !open && !renamed(l) {
                bound.push(self.bind(l).map_err(|(what, addr, e)| {
                    ReloadError::Build(format!("cannot bind {what} {addr}: {e}"))
                })?);
            }
        }

        // Past this point nothing fails: swap, then open and close listeners.
        self.shared.snapshot.store(Arc::new(snapshot));
        state.process = process;
        state.caches = caches;
        for (i, name) in renames {
            let o = &mut state.open[i];
            tracing::info!(listener = %name, was = %o.name, address = %o.bound, "listener renamed by reload");
            o.name = name.clone();
            o.stats.name.store(Arc::new(name));
        }
        let (stay, gone): (Vec<Open>, Vec<Open>) = state.open.drain(..).partition(kept);
        state.open = stay;
        for o in gone {
            tracing::info!(listener = %o.name, address = %o.bound, "listener closed by reload");
            let _ = o.stop.send(true);
            state.closing.push(o.stop);
        }
        state.closing.retain(|s| s.receiver_count() > 0);
        for b in bound {
            let open = self.start_accepting(b);
            state.open.push(open);
        }
        self.publish_stats(&state);
        drop(old);
        Ok(version)
    }

    /// Stops accepting everywhere, then waits up to `grace` for in-flight requests.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stop_watching();
        let state = self.state.lock().await;
        let stops: Vec<&watch::Sender<bool>> = state
            .open
            .iter()
            .map(|o| &o.stop)
            .chain(&state.closing)
            .collect();
        for stop in &stops {
            let _ = stop.send(true);
        }
        let all = futures_util::future::join_all(stops.iter().map(|s| s.closed()));
        tokio::time::timeout(grace, all).await.is_ok()
    }

    /// Starts or stops watching the file, as the running configuration's `watch` says.
    pub fn watch_if_asked(&self) {
        let wanted = self.shared.snapshot.load().settings.watch;
        let mut slot = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&self.source, wanted, slot.is_some()) {
            (Some(source), true, false) => match Watcher::start(&source.path, self.me.clone()) {
                Ok(w) => *slot = Some(w),
                Err(e) => {
                    tracing::error!(path = %source.path.display(), error = %e, "cannot watch the configuration file; reload with SIGHUP or POST /reload");
                }
            },
            (_, false, true) => *slot = None,
            _ => {}
        }
    }

    fn stop_watching(&self) {
        let mut slot = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
    }
}

/// Settings that only a restart applies: said once per reload that changes them.
fn warn_restart_only(old: &Settings, next: &Settings) {
    for (changed, what) in [
        (old.admin != next.admin, "admin"),
        (old.workers != next.workers, "workers"),
        (old.log != next.log, "observability.log"),
        (
            old.limits.max_connections != next.limits.max_connections,
            "limits.max_connections (for listeners already open)",
        ),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "this setting changed; it applies after a restart"
            );
        }
    }
}

/// Debounce: a save is often several events (write, rename, chmod) within milliseconds.
const SETTLE: Duration = Duration::from_millis(250);

/// Watches the config file's directory (editors save by writing a new file and renaming it
/// over the old one, which a watch on the file itself would lose) and reloads once events
/// settle. Dropping it stops both the watch and its task.
struct Watcher {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    fn start(path: &Path, control: Weak<Control>) -> Result<Self, String> {
        use notify::Watcher as _;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(std::ffi::OsStr::to_os_string);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                // The file itself, or Kubernetes' `..data` symlink swap of a mounted ConfigMap.
                let ours = event.paths.iter().any(|p| {
                    let file = p.file_name();
                    file == name.as_deref() || file.is_some_and(|f| f == "..data")
                });
                if ours {
                    let _ = tx.send(());
                }
            })
            .map_err(|e| e.to_string())?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), "watching the configuration file");
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                loop {
                    tokio::select! {
                        more = rx.recv() => if more.is_none() { return },
                        () = tokio::time::sleep(SETTLE) => break,
                    }
                }
                let Some(control) = control.upgrade() else {
                    return;
                };
                tracing::info!("configuration file changed; reloading");
                let _ = control.reload().await;
            }
        });
        Ok(Self {
            _watcher: watcher,
            task,
        })
    }
}
