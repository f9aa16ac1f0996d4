//! Connection timeouts that hyper alone cannot express: a slow request head
//! (`header_read_timeout`, the slowloris guard) and an idle keep-alive connection
//! (`idle_timeout`) are different clocks. hyper's own header timeout also runs while a
//! keep-alive connection waits for its next request, which would make every idle connection
//! close after the header timeout; so weir tracks both itself.
//!
//! The socket wrapper notes when bytes of a new request head arrive and when response bytes
//! leave; the service notes requests starting and ending; a watchdog per connection sleeps
//! until the nearest deadline and ends the connection if nothing moved it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weir_app::clock::now_ms;
use weir_domain::framing::{Ambiguity, Framing};

/// Shared between the socket wrapper, the service and the watchdog of one connection.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicU32,
    /// When the first byte of the next request head arrived; 0 when none is pending.
    head_since: AtomicU64,
    /// Last time the connection became or stayed idle.
    idle_since: AtomicU64,
    /// HTTP/2 multiplexes: there is no "request head in progress" to time.
    multiplexed: AtomicBool,
    /// HTTP/1 requests started on this connection.
    requests: AtomicU32,
    /// The first request the framing guard refused: its index << 8 | why; `NONE` if none.
    refused: AtomicU64,
    /// Requests the client gave up on before their response head, and those answered.
    cancelled: AtomicU32,
    answered: AtomicU32,
    /// Set (and `abuse` notified) once cancellations pass [`CANCEL_BUDGET`].
    abusive: AtomicBool,
    abuse: tokio::sync::Notify,
}

/// Cancelled requests a connection may have before it is closed, if it has also had more
/// cancelled than answered. HTTP/2 lets a client cancel a stream weir already accepted (and
/// forwarded) and at once open another: without a budget, one connection could keep an
/// origin busy with far more requests than its stream limit (the paced form of rapid reset,
/// which h2's own reset counter does not see because the streams were accepted).
const CANCEL_BUDGET: u32 = 100;

const NONE: u64 = u64::MAX;

fn ambiguity_code(a: Ambiguity) -> u64 {
    match a {
        Ambiguity::BareLf => 0,
        Ambiguity::DuplicateLength => 1,
        Ambiguity::LengthAndEncoding => 2,
        Ambiguity::BadLength => 3,
        Ambiguity::BadChunk => 4,
        Ambiguity::BadEncoding => 5,
    }
}

fn ambiguity_of(code: u64) -> Ambiguity {
    match code {
        0 => Ambiguity::BareLf,
        1 => Ambiguity::DuplicateLength,
        2 => Ambiguity::LengthAndEncoding,
        3 => Ambiguity::BadLength,
        5 => Ambiguity::BadEncoding,
        _ => Ambiguity::BadChunk,
    }
}

impl Default for Activity {
    /// A fresh connection must deliver its first request head within the header timeout.
    fn default() -> Self {
        let now = now_ms();
        Self {
            in_flight: AtomicU32::new(0),
            head_since: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            multiplexed: AtomicBool::new(false),
            requests: AtomicU32::new(0),
            refused: AtomicU64::new(NONE),
            cancelled: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            abusive: AtomicBool::new(false),
            abuse: tokio::sync::Notify::new(),
        }
    }
}

impl Activity {
    /// A request head is complete and handed to the service. Returns why the framing guard
    /// refused it, if it did: the socket wrapper read its head before hyper parsed it.
    pub fn request_started(&self, http2: bool) -> Option<Ambiguity> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        if http2 {
            self.multiplexed.store(true, Ordering::Relaxed);
            return None;
        }
        let index = u64::from(self.requests.fetch_add(1, Ordering::Relaxed));
        let refused = self.refused.load(Ordering::Relaxed);
        (refused != NONE && index >= refused >> 8).then(|| ambiguity_of(refused & 0xff))
    }

    /// The service returned its response (the body may still be streaming), or, when not
    /// `answered`, the client cancelled the request first.
    pub fn request_finished(&self, answered: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.idle_since.store(now_ms(), Ordering::Relaxed);
        if answered {
            self.answered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cancelled = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled > CANCEL_BUDGET
            && cancelled > self.answered.load(Ordering::Relaxed)
            && !self.abusive.swap(true, Ordering::Relaxed)
        {
            self.abuse.notify_one();
        }
    }

    /// Resolves once the connection has cancelled too many requests.
    pub async fn abused(&self) {
        while !self.abusive.load(Ordering::Relaxed) {
            self.abuse.notified().await;
        }
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.idle_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Resolves when the connection should be closed for slowness or idleness.
    ///
    /// It never sleeps longer than the header timeout: a request head may start while it
    /// sleeps toward a farther deadline, and is noticed at the next wake. Waking it for every
    /// head instead would cost a task wake and a timer per request.
    pub async fn watchdog(&self, header_timeout: Duration, idle_timeout: Duration) {
        let header_ms = u64::try_from(header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let now = now_ms();
            let head = self.head_since.load(Ordering::Relaxed);
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // Requests in flight are bounded by upstream and body timeouts, not here.
                u64::MAX
            } else if head != 0 && !self.multiplexed.load(Ordering::Relaxed) {
                head.saturating_add(header_ms)
            } else {
                self.idle_since
                    .load(Ordering::Relaxed)
                    .saturating_add(idle_ms)
            };
            if now >= deadline {
                return;
            }
            let wake = deadline.min(now.saturating_add(header_ms.max(1)));
            tokio::time::sleep(Duration::from_millis(wake - now)).await;
        }
    }
}

/// After weir closes its side, unread request bytes the client is still sending are read and
/// dropped for at most this long: closing a socket with unread data makes the kernel send a
/// reset, which can destroy a response (say, a 413 for an upload) before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
/// ... and at most this much, so a client that never stops sending cannot hold the slot.
const LINGER_BYTES: usize = 8 * 1024 * 1024;

pin_project_lite::pin_project! {
    /// A socket that reports traffic to its connection's [`Activity`] and closes lingering.
    pub struct Watched<S> {
        #[pin]
        inner: S,
        activity: std::sync::Arc<Activity>,
        framing: Framing,
        linger: Option<Pin<Box<tokio::time::Sleep>>>,
        drained: usize,
    }
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: std::sync::Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            framing: Framing::default(),
            linger: None,
            drained: 0,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
            if !this.framing.is_off() {
                this.framing.feed(&buf.filled()[before..]);
                if let Some((index, why)) = this.framing.refused() {
                    this.activity.refused.store(
                        (u64::from(index) << 8) | ambiguity_code(why),
                        Ordering::Relaxed,
                    );
                }
            }
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if this.linger.is_none() {
            // Send FIN first: the client learns the response is complete and stops sending.
            std::task::ready!(this.inner.as_mut().poll_shutdown(cx))?;
            *this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        let mut this_poll = 0;
        while *this.drained < LINGER_BYTES {
            let mut buf = ReadBuf::new(&mut scratch);
            match this.inner.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    *this.drained += buf.filled().len();
                    this_poll += buf.filled().len();
                    if this_poll >= 64 * 1024 {
                        // Let other connections run; come back for the rest.
                        cx.waker().wake_by_ref();
                        break;
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        if *this.drained >= LINGER_BYTES {
            return Poll::Ready(Ok(()));
        }
        match this.linger.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Ok(())),
        }
    }
}
