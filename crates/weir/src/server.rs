//! Listeners and connections: accept (bounded by `max_connections`), serve HTTP/1.1 and
//! h2c on each connection with the edge limits, and drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use weir_app::pipeline::ConnInfo;
use weir_config::{Limits, ListenerSettings};

use crate::activity::{Activity, Watched};
use crate::service;
use crate::snapshot::Snapshot;

/// Connection counts of one listener, for `weir_connections_active`.
#[derive(Debug)]
pub struct ListenerStats {
    pub name: String,
    pub active: AtomicI64,
}

/// State every connection and the admin API share for the life of the process.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// False until listeners are up, and again once draining starts.
    pub ready: AtomicBool,
    pub listeners: Vec<ListenerStats>,
    /// `weir_config_reloads_total{result="success"|"failure"}`.
    pub reloads: [AtomicU64; 2],
}

impl Shared {
    #[must_use]
    pub fn new(snapshot: Snapshot) -> Self {
        let listeners = snapshot
            .settings
            .listeners
            .iter()
            .map(|l| ListenerStats {
                name: l.name.clone(),
                active: AtomicI64::new(0),
            })
            .collect();
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            listeners,
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
    pub index: usize,
    /// Registered with the worker's runtime when its accept loop starts.
    pub socket: std::net::TcpListener,
    pub settings: ListenerSettings,
    pub limits: Limits,
}

/// One connection's context, shared by its requests.
struct ConnCtx {
    shared: Arc<Shared>,
    info: ConnInfo,
    activity: Arc<Activity>,
}

/// Accepts until `stop` flips, serving each connection on its own task.
///
/// Every connection holds a clone of `stop`: when it flips, HTTP/1 connections finish their
/// current response and close, HTTP/2 ones send GOAWAY; `drain` waits for all clones to drop.
pub async fn accept_loop(l: Listener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let socket = match TcpListener::from_std(l.socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %l.settings.name, error = %e, "cannot register the listening socket");
            return;
        }
    };
    // Shared, not copied: a copy would sit in every connection's task for its whole life.
    let builder = Arc::new(connection_builder(&l.settings, &l.limits));
    let permits = Arc::new(Semaphore::new(l.limits.max_connections));
    loop {
        // At the connection cap, wait for a slot rather than accept and drop: the kernel's
        // backlog holds new clients until then.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %l.settings.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let conn_stop = stop.clone();
        let limits = l.limits;
        let index = l.index;
        tokio::spawn(async move {
            shared.listeners[index]
                .active
                .fetch_add(1, Ordering::Relaxed);
            serve_connection(
                stream,
                peer,
                Arc::clone(&shared),
                &builder,
                conn_stop,
                limits,
            )
            .await;
            shared.listeners[index]
                .active
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

fn connection_builder(
    settings: &ListenerSettings,
    limits: &Limits,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // Heads over max_header_bytes are answered 431 with a problem body by the pipeline.
        // hyper's parse buffer is 64 KiB larger so that check decides for all but absurd heads;
        // past the buffer hyper refuses the head itself (431, no body). The buffer is only
        // filled as far as a client actually sends.
        .max_buf_size(limits.max_header_bytes + 64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(100))
        .max_local_error_reset_streams(Some(1024));
    if settings.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let activity = Arc::new(Activity::default());
    let info = ConnInfo::new(peer, &shared.snapshot.load().settings.trusted_proxies);
    let ctx = Arc::new(ConnCtx {
        shared,
        info,
        activity: Arc::clone(&activity),
    });
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
    // The request future is boxed: hyper keeps a connection's service future inline in the
    // connection, so an unboxed one would cost its full size on every idle connection.
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&ctx);
        Box::pin(async move {
            ctx.activity
                .request_started(req.version() == Version::HTTP_2);
            let _done = RequestDone(&ctx.activity);
            Ok::<_, Infallible>(service::handle(req, &ctx.shared, &ctx.info).await)
        })
    });
    let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, svc));
    let mut draining = *stop.borrow();
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
            () = activity.watchdog(limits.header_read_timeout, limits.idle_timeout) => {
                tracing::debug!(peer = %peer, "connection closed: header read or idle timeout");
                return;
            }
        }
    }
}

/// Marks the request finished even when the client goes away mid-request.
struct RequestDone<'a>(&'a Activity);

impl Drop for RequestDone<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Stops accepting, then waits up to `grace` for in-flight requests to finish.
pub async fn drain(stop: &watch::Sender<bool>, grace: Duration) -> bool {
    let _ = stop.send(true);
    tokio::time::timeout(grace, stop.closed()).await.is_ok()
}
