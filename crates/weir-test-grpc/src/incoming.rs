//! The server's accepted connections, kept so that stopping the server can cut them at once.
//!
//! tonic's own shutdown is graceful: it stops accepting when its task next runs and lets open
//! connections finish their calls. A test that drops the server to simulate the upstream going
//! away needs more than that, and right away: a pooled connection the gateway picks next must
//! fail, not be served one last time because the server task had not run yet.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The listener and a handle on each open connection's socket, shared between the accept
/// stream, the connections and the `TestServer` that stops them.
pub(crate) struct Sockets {
    listener: Option<TcpListener>,
    open: HashMap<u64, Socket>,
    next_id: u64,
}

pub(crate) type SharedSockets = Arc<Mutex<Sockets>>;

pub(crate) fn shared(listener: TcpListener) -> SharedSockets {
    Arc::new(Mutex::new(Sockets {
        listener: Some(listener),
        open: HashMap::new(),
        next_id: 0,
    }))
}

fn lock(sockets: &SharedSockets) -> std::sync::MutexGuard<'_, Sockets> {
    sockets.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Closes the listening socket and shuts down every open connection before returning, so
/// the peer sees the close no matter when the server's tasks next run.
pub(crate) fn close_all(sockets: &SharedSockets) {
    let mut sockets = lock(sockets);
    drop(sockets.listener.take());
    for (_, socket) in sockets.open.drain() {
        // Fails only when the peer has already gone.
        let _ = socket.shutdown(Shutdown::Both);
    }
}

/// Accepted connections for tonic, ending once the listener has been closed.
pub(crate) struct Incoming {
    pub(crate) sockets: SharedSockets,
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut guard = lock(&self.sockets);
        let sockets = &mut *guard;
        let Some(listener) = sockets.listener.as_ref() else {
            return Poll::Ready(None);
        };
        let stream = match listener.poll_accept(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
            Poll::Ready(Ok((stream, _))) => stream,
        };
        // Small messages both ways (the chat): without this, Nagle and delayed ACKs can hold
        // a reply back for 40 ms.
        let _ = stream.set_nodelay(true);
        // A second descriptor for the same socket, only to shut it down from `close_all`;
        // a connection we could not cut is refused rather than served.
        let handle = match SockRef::from(&stream).try_clone() {
            Ok(handle) => handle,
            Err(err) => return Poll::Ready(Some(Err(err))),
        };
        let id = sockets.next_id;
        sockets.next_id += 1;
        sockets.open.insert(id, handle);
        Poll::Ready(Some(Ok(Connection {
            stream,
            id,
            sockets: Arc::clone(&self.sockets),
        })))
    }
}

/// An accepted TCP connection that forgets its shutdown handle when tonic is done with it,
/// so the socket closes then and not only when the server stops.
pub(crate) struct Connection {
    stream: TcpStream,
    id: u64,
    sockets: SharedSockets,
}

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.sockets).open.remove(&self.id);
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A tonic server for `routes` on `listener`, in its own task: its accepted sockets (for
/// `close_all`) and the switch that stops it (dropping the switch stops it too). `what`
/// names it in the message printed if it fails.
pub(crate) fn spawn(
    listener: TcpListener,
    routes: tonic::service::Routes,
    what: &'static str,
) -> (SharedSockets, tokio::sync::oneshot::Sender<()>) {
    let addr = listener.local_addr().ok();
    let sockets = shared(listener);
    let incoming = Incoming {
        sockets: Arc::clone(&sockets),
    };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let serving = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                // A closed channel means the owner is gone: stop just the same.
                let _ = stopped.await;
            });
        if let Err(err) = serving.await {
            eprintln!("{what} on {addr:?} stopped: {err}");
        }
    });
    (sockets, shutdown)
}
