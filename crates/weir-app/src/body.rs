//! The request body on its way upstream: streamed and cut off at the route's limit, or
//! buffered when it is small and may have to be sent again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

/// The error a [`LimitedBody`] yields when the limit is passed; forwarders look for it in an
/// error's source chain to answer 413 instead of 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the route's max_body_bytes")
    }
}

impl std::error::Error for BodyTooLarge {}

pin_project_lite::pin_project! {
    #[derive(Debug)]
    /// Streams `inner` and fails with [`BodyTooLarge`] once more than `remaining` bytes passed,
    /// so a chunked upload is bounded as strictly as one with a `Content-Length`.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        // Set when the limit is passed or the client's stream fails, for a sender that does
        // not hand the body's error back (an HTTP/2 client sends the body from its own task
        // and only resets the stream).
        tripped: Option<Tripped>,
    }
}

impl<B> LimitedBody<B> {
    pub const fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            tripped: None,
        }
    }

    /// Also records how the body failed in a flag that [`ReqBody::tripped`] hands out.
    #[must_use]
    pub fn watched(mut self) -> Self {
        self.tripped = Some(Tripped::default());
        self
    }
}

/// How a streamed request body failed, if it did: shared between the body and the code
/// that reads the forwarder's error.
#[derive(Debug, Clone, Default)]
pub struct Tripped(Arc<AtomicU8>);

const TOO_LARGE: u8 = 1;
const CLIENT: u8 = 2;
const DONE: u8 = 3;

impl Tripped {
    /// The body passed the route's limit.
    #[must_use]
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TOO_LARGE
    }

    /// The client's stream failed: a malformed chunk, or the client went away mid-body.
    #[must_use]
    pub fn client_failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == CLIENT
    }

    /// The client's body has not ended yet: a timeout now is the client's slowness, not the
    /// upstream's.
    #[must_use]
    pub fn unfinished(&self) -> bool {
        self.0.load(Ordering::Relaxed) != DONE
    }

    fn set(&self, why: u8) {
        self.0.store(why, Ordering::Relaxed);
    }
}

/// The error a [`LimitedBody`] yields when the client's own stream fails, so the failure is
/// not taken for the upstream's.
#[derive(Debug)]
pub struct ClientBodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining() as u64;
                    if len > *this.remaining {
                        *this.remaining = 0;
                        if let Some(t) = this.tripped {
                            t.set(TOO_LARGE);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= len;
                }
                if let Some(t) = this.tripped
                    && this.inner.is_end_stream()
                {
                    t.set(DONE);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(t) = this.tripped {
                    t.set(CLIENT);
                }
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            Poll::Ready(None) => {
                if let Some(t) = this.tripped {
                    t.set(DONE);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// True when `BodyTooLarge` is somewhere in the error's source chain.
#[must_use]
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    in_chain::<BodyTooLarge>(err)
}

/// True when a [`ClientBodyError`] is somewhere in the error's source chain.
#[must_use]
pub fn is_client_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    in_chain::<ClientBodyError>(err)
}

fn in_chain<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The body of one try upstream: nothing, bytes buffered so a retry can send them again, or
/// the client's stream (which can be sent once).
#[derive(Debug)]
pub enum ReqBody<B> {
    Empty,
    Full(Option<Bytes>),
    Stream(LimitedBody<B>),
}

impl<B> ReqBody<B> {
    /// The flag a watched stream sets when it passes the route's limit or the client fails.
    #[must_use]
    pub fn tripped(&self) -> Option<Tripped> {
        match self {
            Self::Stream(s) => s.tripped.clone(),
            _ => None,
        }
    }
}

impl<B> Body for ReqBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty | Self::Full(None) => true,
            Self::Full(Some(_)) => false,
            Self::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty | Self::Full(None) => SizeHint::with_exact(0),
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Stream(s) => s.size_hint(),
        }
    }
}
