//! The request body on its way upstream: streamed and cut off at the route's limit, or
//! buffered when it is small and may have to be sent again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        // Set when the limit is passed, for a sender that does not hand the body's error
        // back (an HTTP/2 client sends the body from its own task and only resets the
        // stream).
        tripped: Option<Arc<AtomicBool>>,
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

    /// Also records passing the limit in a flag that [`ReqBody::tripped`] hands out.
    #[must_use]
    pub fn watched(mut self) -> Self {
        self.tripped = Some(Arc::new(AtomicBool::new(false)));
        self
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining() as u64;
                    if len > *this.remaining {
                        *this.remaining = 0;
                        if let Some(t) = this.tripped {
                            t.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
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
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
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
    /// The flag a watched stream sets when it passes the route's limit.
    #[must_use]
    pub fn tripped(&self) -> Option<Arc<AtomicBool>> {
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
