//! The upstream client: a connection pool per target, on hyper's low-level client.
//!
//! HTTP/1.1: idle connections wait on a per-target LIFO stack (the most recently used, so
//! the warmest, is reused first). A connection returns to the stack when its response body
//! has been read to the end, so no task is spawned per request to watch for that. A request
//! that a pooled connection could not even send (the upstream closed it while idle) is
//! retried once on a fresh connection: nothing reached the upstream, so that is always safe.
//! HTTP/2: one multiplexed connection per target, shared by all requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use weir_domain::upstream::{Protocol, Upstream};

use crate::tls::upstream::UpstreamConnector;

/// Idle connections older than this are not reused (upstreams commonly close at 60-75 s).
const MAX_IDLE_AGE: Duration = Duration::from_secs(55);
/// Idle connections kept per target; more are closed when returned.
const MAX_IDLE_PER_TARGET: usize = 1024;

/// Upstream read buffer, one per pooled connection (not per client connection). A response
/// head must fit in it, a bound like nginx's `proxy_buffer_size`. Measured (task-clock per
/// proxied request, pinned): 32 KiB reads a 16 KiB response with its head in one read
/// where 16 KiB needs two (46 vs 30 µs), and matches the best for small responses; hyper's
/// adaptive default costs more for small ones.
const READ_BUF: usize = 32 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made (refused, unreachable, timed out, handshake failed).
    Connect(BoxError),
    /// The exchange started and failed before a response head arrived.
    Exchange(hyper::Error),
}

impl ClientError {
    #[must_use]
    pub const fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::error::Error as _;
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Exchange(e) => {
                write!(f, "{e}")?;
                let mut source = e.source();
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(&**e),
            Self::Exchange(e) => Some(e),
        }
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `index`. Each worker keeps its own idle connections,
/// so a connection is always driven by the thread that uses it (no cross-thread wake-ups).
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// The index set by [`set_worker_index`] for this thread (0 when never set).
#[must_use]
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// One target's connections. A target that stays when discovery changes its upstream's
/// targets keeps its pool.
pub struct TargetPool<B> {
    authority: String,
    /// Parsed once when the authority is an IP literal, so connects skip name resolution.
    addr: Option<SocketAddr>,
    /// For TLS upstreams: the name sent in SNI and checked in the certificate.
    server_name: Option<Result<ServerName<'static>, String>>,
    /// One idle stack per worker thread.
    idle: Box<[Mutex<Vec<Idle<B>>>]>,
    h2: Mutex<Option<http2::SendRequest<B>>>,
}

impl<B> std::fmt::Debug for TargetPool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// A pooled client for one upstream, generic over the request body. Each target has its
/// own [`TargetPool`], made by [`UpstreamClient::pool`].
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    protocol: Protocol,
    connect_timeout: Duration,
    workers: usize,
    /// TLS toward every target, for `https://` upstreams.
    tls: Option<UpstreamConnector>,
}

impl UpstreamClient {
    /// `workers` is the number of worker threads that will use the client (each gets its
    /// own idle connections).
    #[must_use]
    pub const fn new(protocol: Protocol, connect_timeout: Duration, workers: usize) -> Self {
        Self {
            protocol,
            connect_timeout,
            workers,
            tls: None,
        }
    }

    /// The client of `upstream`: its protocol, and its TLS when it has some.
    pub fn of(
        upstream: &Upstream,
        connect_timeout: Duration,
        workers: usize,
    ) -> Result<Self, String> {
        let tls = upstream
            .tls
            .as_ref()
            .map(|t| UpstreamConnector::new(t, upstream.protocol.is_http2()))
            .transpose()
            .map_err(|e| format!("upstream {}: tls: {e}", upstream.name))?;
        Ok(Self {
            tls,
            ..Self::new(upstream.protocol, connect_timeout, workers)
        })
    }

    /// The same client with another connect timeout (health probes use theirs).
    #[must_use]
    pub fn with_connect_timeout(&self, connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            ..self.clone()
        }
    }

    /// A new, empty pool for the target at `authority` (`host:port`).
    #[must_use]
    pub fn pool<B>(&self, authority: &str) -> Arc<TargetPool<B>> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        Arc::new(TargetPool {
            authority: authority.to_owned(),
            addr: authority.parse().ok(),
            server_name: self.tls.as_ref().map(|t| t.name_for(host)),
            idle: (0..self.workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            h2: Mutex::new(None),
        })
    }

    /// Sends a request to the target of `pool`; resolves with the response head. The body
    /// streams afterwards and returns the connection to the pool when it ends.
    pub async fn send<B>(
        &self,
        pool: &Arc<TargetPool<B>>,
        req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, ClientError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match self.protocol {
            Protocol::Http1 => self.send_h1(pool, req).await,
            Protocol::Http2 | Protocol::Grpc => self.send_h2(pool, req).await,
        }
    }

    async fn send_h1<B>(
        &self,
        pool: &Arc<TargetPool<B>>,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, ClientError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // HTTP/1.1 to an origin server takes origin-form (`/path?query`), not the absolute URI.
        if req.uri().authority().is_some() {
            let origin = req
                .uri()
                .path_and_query()
                .cloned()
                .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
            *req.uri_mut() = origin;
        }
        while let Some(mut sender) = self.checkout(pool) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(pooled(pool, sender, resp)),
                Err(mut e) => match e.take_message() {
                    // Never sent: the idle connection was already gone. Try the next one.
                    Some(back) => req = back,
                    None => return Err(ClientError::Exchange(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is kilobytes of future state that a request
        // on a pooled connection, the usual case, would otherwise carry and move.
        let mut sender = Box::pin(self.connect_h1(pool)).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(pooled(pool, sender, resp)),
            Err(e) => Err(ClientError::Exchange(e.into_error())),
        }
    }

    async fn send_h2<B>(
        &self,
        pool: &TargetPool<B>,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, ClientError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // HTTP/2 carries scheme and authority as pseudo-headers: the URI must be absolute.
        if req.uri().authority().is_none() {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(if self.tls.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            parts.authority = pool.authority.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        let existing = lock(&pool.h2).as_ref().filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = Box::pin(self.connect_h2(pool)).await?;
                *lock(&pool.h2) = Some(s.clone());
                s
            }
        };
        if sender.ready().await.is_err() {
            sender = Box::pin(self.connect_h2(pool)).await?;
            *lock(&pool.h2) = Some(sender.clone());
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(ClientError::Exchange)?;
        Ok(resp.map(|body| PooledBody {
            inner: body,
            slot: None,
        }))
    }

    fn checkout<B>(&self, pool: &TargetPool<B>) -> Option<http1::SendRequest<B>> {
        let mut idle = lock(&pool.idle[worker_index() % pool.idle.len()]);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < MAX_IDLE_AGE {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect_tcp<B>(&self, pool: &TargetPool<B>) -> Result<TcpStream, ClientError> {
        let connect = async {
            match pool.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect(pool.authority.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                ClientError::Connect(
                    format!("connect timed out after {:?}", self.connect_timeout).into(),
                )
            })?
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The TLS handshake, bounded by the connect timeout too.
    async fn handshake_tls<B>(
        &self,
        tls: &UpstreamConnector,
        pool: &TargetPool<B>,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        let name = match &pool.server_name {
            Some(Ok(n)) => n.clone(),
            Some(Err(e)) => return Err(ClientError::Connect(e.clone().into())),
            None => return Err(ClientError::Connect("no TLS server name".into())),
        };
        tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| {
                ClientError::Connect(
                    format!("TLS handshake timed out after {:?}", self.connect_timeout).into(),
                )
            })?
            .map_err(|e| ClientError::Connect(format!("TLS handshake: {e}").into()))
    }

    async fn connect_h1<B>(
        &self,
        pool: &TargetPool<B>,
    ) -> Result<http1::SendRequest<B>, ClientError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let tcp = self.connect_tcp(pool).await?;
        match &self.tls {
            None => handshake_h1(TokioIo::new(tcp)).await,
            Some(tls) => {
                let stream = self.handshake_tls(tls, pool, tcp).await?;
                handshake_h1(TokioIo::new(stream)).await
            }
        }
    }

    async fn connect_h2<B>(
        &self,
        pool: &TargetPool<B>,
    ) -> Result<http2::SendRequest<B>, ClientError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let tcp = self.connect_tcp(pool).await?;
        match &self.tls {
            None => handshake_h2(TokioIo::new(tcp)).await,
            Some(tls) => {
                let stream = self.handshake_tls(tls, pool, tcp).await?;
                handshake_h2(TokioIo::new(stream)).await
            }
        }
    }
}

async fn handshake_h1<B, I>(io: I) -> Result<http1::SendRequest<B>, ClientError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUF))
        .handshake(io)
        .await
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

async fn handshake_h2<B, I>(io: I) -> Result<http2::SendRequest<B>, ClientError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| ClientError::Connect(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}

fn pooled<B>(
    pool: &Arc<TargetPool<B>>,
    sender: http1::SendRequest<B>,
    resp: Response<Incoming>,
) -> Response<PooledBody<B>> {
    // A protocol switch hands the connection over for good; it never returns to the pool.
    let reusable = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
    let worker = worker_index();
    let slot = reusable.then(|| ReturnSlot {
        pool: Arc::clone(pool),
        worker,
        sender,
    });
    let mut resp = resp.map(|body| PooledBody { inner: body, slot });
    if resp.body().inner.is_end_stream() {
        resp.body_mut().release();
    }
    resp
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave a Vec of senders inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a connection goes back when its response is done.
struct ReturnSlot<B> {
    pool: Arc<TargetPool<B>>,
    /// The worker whose idle stack it came from, and returns to.
    worker: usize,
    sender: http1::SendRequest<B>,
}

/// An upstream response body that returns its connection to the pool at the end.
pub struct PooledBody<B> {
    inner: Incoming,
    slot: Option<ReturnSlot<B>>,
}

impl<B> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl<B> PooledBody<B> {
    /// The whole response was read: the connection can carry the next request.
    fn release(&mut self) {
        if let Some(slot) = self.slot.take() {
            let pool = &slot.pool;
            let mut idle = lock(&pool.idle[slot.worker % pool.idle.len()]);
            if idle.len() < MAX_IDLE_PER_TARGET {
                idle.push(Idle {
                    sender: slot.sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

impl<B: Unpin> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.slot = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
