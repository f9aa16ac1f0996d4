//! The port to the upstream client.

use std::future::Future;

use http::{Request, Response};
use weir_domain::upstream::Target;

/// Why forwarding failed, as far as the pipeline needs to know.
#[derive(Debug)]
pub enum ForwardError {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The request body exceeded the route's limit while streaming.
    BodyTooLarge,
    /// The client's request body failed while streaming (malformed, or cut off).
    ClientBody,
    /// The try's time ran out while the client was still sending its body.
    ClientSlow,
    /// The upstream closed or broke the exchange before a response head arrived.
    Other(Box<dyn std::error::Error + Send + Sync>),
    /// No response head within the try's time.
    Timeout,
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::BodyTooLarge => f.write_str("request body too large"),
            Self::ClientBody => f.write_str("the client's request body failed"),
            Self::ClientSlow => f.write_str("the client's request body did not arrive in time"),
            Self::Other(e) => write!(f, "upstream exchange failed: {e}"),
            Self::Timeout => f.write_str("no response head in time"),
        }
    }
}

/// Makes the per-target state a forwarder keeps: its connection pool and counters. Made
/// once per target, kept while discovery keeps the target.
pub trait Connector: Send + Sync + 'static {
    type Conn: Clone + Send + Sync + std::fmt::Debug + 'static;

    fn conn(&self, target: &Target) -> Self::Conn;
}

/// Sends a request (already rewritten for the upstream, with an absolute URI naming the
/// target) and resolves with the response head within `timeout`; the body streams
/// afterwards. Each call is one try: implementations count it in the upstream's metrics.
pub trait Forwarder<B>: Connector {
    type ResBody: Send + 'static;

    /// `conn` is the chosen target's state, from [`Connector::conn`].
    fn forward(
        &self,
        conn: &Self::Conn,
        req: Request<B>,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<Response<Self::ResBody>, ForwardError>> + Send;
}
