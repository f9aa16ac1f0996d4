//! The upstream client: one keep-alive pool per upstream (HTTP/1.1, or HTTP/2 multiplexed
//! over one connection per target with prior knowledge).

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use weir_domain::upstream::Protocol;

/// Idle upstream connections are closed after this; shorter than common upstream keep-alive
/// defaults (nginx 75 s, Node 5 s is the outlier) so weir usually closes first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A pooled client for one upstream, generic over the request body.
#[derive(Debug)]
pub struct UpstreamClient<B> {
    inner: Client<HttpConnector, B>,
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> UpstreamClient<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    #[must_use]
    pub fn new(protocol: Protocol, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The client's own Host header is passed through; the pipeline guarantees one.
            .set_host(false);
        if protocol == Protocol::Http2 {
            builder.http2_only(true);
        }
        Self {
            inner: builder.build(connector),
        }
    }

    /// Sends a request whose URI names the target; resolves with the response head.
    pub async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, ClientError> {
        self.inner.request(req).await.map_err(ClientError)
    }
}

/// A failed exchange.
#[derive(Debug)]
pub struct ClientError(hyper_util::client::legacy::Error);

impl ClientError {
    /// No connection could be made: the target is down or unreachable.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }

    /// The underlying error, to look through its source chain.
    #[must_use]
    pub fn into_inner(self) -> hyper_util::client::legacy::Error {
        self.0
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::error::Error as _;
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
