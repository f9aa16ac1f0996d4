//! A switched connection (WebSocket) as a byte tunnel between the client and the upstream.
//! It keeps the client connection's slot under `max_connections`, and ends when either side
//! closes or when no byte has moved either way for `limits.idle_timeout` (as nginx's
//! `proxy_read_timeout` ends an idle WebSocket): an abandoned tunnel cannot hold its slot
//! and an upstream connection forever. Applications keep quiet tunnels open with pings.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weir_app::clock::now_ms;

use crate::server::ConnSlot;

/// Splices the two upgraded connections together until either side closes or the tunnel
/// idles for `idle`.
pub fn spawn(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    slot: Arc<ConnSlot>,
    idle: Duration,
) {
    tokio::spawn(async move {
        let _slot = slot;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade failed");
                return;
            }
        };
        let last = Arc::new(AtomicU64::new(now_ms()));
        let mut client = Touched::new(TokioIo::new(client), &last);
        let mut upstream = Touched::new(TokioIo::new(upstream), &last);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            () = idle_for(&last, idle) => {
                tracing::debug!("upgraded connection closed: idle timeout");
            }
        }
    });
}

/// Resolves once nothing was read on either side for `idle`.
async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let deadline = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// One side of the tunnel, noting when bytes arrive from it.
struct Touched<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S> Touched<S> {
    fn new(inner: S, last: &Arc<AtomicU64>) -> Self {
        Self {
            inner,
            last: Arc::clone(last),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
