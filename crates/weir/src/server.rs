//! Listeners and connections: accept (bounded by `max_connections`), complete TLS on TLS
//! listeners, serve HTTP/1.1 and HTTP/2 on each connection with the edge limits, and drain
//! on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use weir_app::pipeline::ConnInfo;

use crate::activity::{Activity, Watched};
use crate::listener::ListenerRuntime;
use crate::service;
use crate::snapshot::Snapshot;

/// Connection counts of one listener, for `weir_connections_active`.
#[derive(Debug)]
pub struct ListenerStats {
    /// The listener's name; a reload that renames a listener on the same address keeps it
    /// open and renames it here.
    pub name: arc_swap::ArcSwap<String>,
    pub active: AtomicI64,
}

/// State every connection and the admin API share for the life of the process.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// False until listeners are up, and again once draining starts.
    pub ready: AtomicBool,
    /// The open listeners' counters; a reload adds and removes them.
    pub listeners: ArcSwap<Vec<Arc<ListenerStats>>>,
    /// `weir_config_reloads_total{result="success"|"failure"}`.
    pub reloads: [AtomicU64; 2],
}

impl Shared {
    #[must_use]
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            listeners: ArcSwap::from_pointee(Vec::new()),
            reloads: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }
}

/// Binds a listening socket with `SO_REUSEADDR`, so a restart does not wait out TIME_WAIT,
/// and with `reuse_port` also `SO_REUSEPORT`, so each worker thread can own a socket on the
/// same address and the kernel spreads new connections over them.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Everything one accept loop needs.
pub struct Listener {
    /// The listener's name in the config: its settings are looked up by it in the current
    /// snapshot for every connection.
    pub name: String,
    /// Its configured address (port 0 stays 0).
    pub configured: SocketAddr,
    /// Registered with the worker's runtime when its accept loop starts.
    pub socket: std::net::TcpListener,
    /// Fixed when the socket opened; a reload does not resize it.
    pub permits: Arc<Semaphore>,
    pub stats: Arc<ListenerStats>,
}

/// One connection's context, shared by its requests.
struct ConnCtx {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<Activity>,
    slot: Arc<ConnSlot>,
}

/// A connection's place under `max_connections`, counted in the listener's open
/// connections. A WebSocket tunnel keeps it after hyper lets go of the connection, so
/// switched connections stay counted and bounded.
pub struct ConnSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<ListenerStats>,
}

impl ConnSlot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, stats: Arc<ListenerStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until `stop` flips, serving each connection on its own task.
///
/// Every connection holds a clone of `stop`: when it flips, HTTP/1 connections finish their
/// current response and close, HTTP/2 ones send GOAWAY; `drain` waits for all clones to drop.
pub async fn accept_loop(l: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let socket = match TcpListener::from_std(l.socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %l.name, error = %e, "cannot register the listening socket");
            return;
        }
    };
    loop {
        // At the connection cap, wait for a slot rather than accept and drop: the kernel's
        // backlog holds new clients until then.
        let permit = tokio::select! {
            p = Arc::clone(&l.permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %l.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        // This generation's settings for the listener; a connection keeps them for its life.
        let Some(runtime) = shared
            .snapshot
            .load()
            .listeners
            .iter()
            // By address where it is the listener's alone (port not 0): a listener renamed
            // by a reload keeps its socket and finds its settings under the new name. By
            // name otherwise.
            .find(|r| {
                if l.configured.port() == 0 {
                    r.settings.name == l.name
                } else {
                    r.settings.address == l.configured
                }
            })
            .map(Arc::clone)
        else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let conn_stop = stop.clone();
        let stats = Arc::clone(&l.stats);
        tokio::spawn(async move {
            let slot = Arc::new(ConnSlot::new(permit, stats));
            let limits = runtime.limits;
            match runtime.tls {
                None => {
                    let info =
                        ConnInfo::new(peer, &shared.snapshot.load().settings.trusted_proxies);
                    serve_connection(stream, info, shared, &runtime, conn_stop, slot).await;
                }
                Some(ref acceptor) => {
                    // Boxed: a TLS connection's state is kilobytes, and inline it would
                    // grow every plain connection's task to its size.
                    Box::pin(async {
                        if let Some((tls, info)) =
                            crate::tls::accept(stream, peer, acceptor, &shared, &limits).await
                        {
                            serve_connection(tls, info, shared, &runtime, conn_stop, slot).await;
                        }
                    })
                    .await;
                }
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    shared: Arc<Shared>,
    runtime: &ListenerRuntime,
    mut stop: watch::Receiver<bool>,
    slot: Arc<ConnSlot>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let activity = Arc::new(Activity::default());
    let limits = runtime.limits;
    let ctx = Arc::new(ConnCtx {
        shared,
        info,
        activity: Arc::clone(&activity),
        slot,
    });
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    // The request future is boxed: hyper keeps a connection's service future inline in the
    // connection, so an unboxed one would cost its full size on every idle connection.
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&ctx);
        Box::pin(async move {
            let refused = ctx
                .activity
                .request_started(req.version() == Version::HTTP_2);
            let mut done = RequestDone {
                activity: &ctx.activity,
                answered: false,
            };
            let resp = service::handle(req, &ctx.shared, &ctx.info, refused, &ctx.slot).await;
            done.answered = true;
            Ok::<_, Infallible>(resp)
        })
    });
    let mut conn = std::pin::pin!(runtime.builder.serve_connection_with_upgrades(io, svc));
    let mut draining = *stop.borrow();
    let mut abusive = false;
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.abused(), if !abusive => {
                // GOAWAY: no new streams; what is in flight may finish.
                tracing::info!(peer = %peer, "connection closed: too many cancelled requests");
                abusive = true;
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.watchdog(limits.header_read_timeout, limits.idle_timeout) => {
                tracing::debug!(peer = %peer, "connection closed: header read or idle timeout");
                return;
            }
        }
    }
}

/// Marks the request finished even when the client goes away mid-request.
struct RequestDone<'a> {
    activity: &'a Activity,
    answered: bool,
}

impl Drop for RequestDone<'_> {
    fn drop(&mut self) {
        self.activity.request_finished(self.answered);
    }
}

/// Stops accepting, then waits up to `grace` for in-flight requests to finish.
pub async fn drain(stops: &[watch::Sender<bool>], grace: Duration) -> bool {
    for stop in stops {
        let _ = stop.send(true);
    }
    let all = futures_util::future::join_all(stops.iter().map(watch::Sender::closed));
    tokio::time::timeout(grace, all).await.is_ok()
}
