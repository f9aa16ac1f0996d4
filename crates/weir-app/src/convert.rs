//! Request bodies that must be rewritten whole: JSON edits, REST -> gRPC transcoding and
//! gRPC-Web. The parsers live in adapters (this layer carries no JSON or protobuf); the
//! composition root gives each route its converter, and the pipeline buffers the body under
//! the route's limit, hands it over, and sends what comes back.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request;
use http::uri::PathAndQuery;
use weir_domain::ErrorKind;

use crate::body::{LimitedBody, is_body_too_large};
use crate::error::GatewayError;
use crate::pipeline::{Exchange, payload_too_large};

/// What a converter may change besides the body.
pub struct Outbound<'a> {
    /// The head as it will be sent (headers already transformed); its URI is the client's.
    pub head: &'a mut request::Parts,
    /// The path and query the upstream gets (after the route's path and query transforms).
    pub path_and_query: &'a mut PathAndQuery,
    /// `conversion` records, in the converter's own terms, what the response side must
    /// undo (which gRPC method was called, gRPC-Web text or binary...).
    pub ex: &'a mut Exchange,
    /// What is left for the whole exchange (the route's timeout, or a gRPC client's
    /// deadline), for a converter that passes a deadline on.
    pub timeout: Duration,
}

/// A route's request body work.
pub trait RequestConverter: Send + Sync + std::fmt::Debug {
    /// Whether this request is one to convert, from its head alone (its content type, its
    /// path): only then is the body buffered.
    fn wants(&self, head: &request::Parts) -> bool;

    /// The body to send instead of `body`.
    ///
    /// # Errors
    /// The request cannot be converted; the error is the client's answer.
    fn convert(&self, out: Outbound<'_>, body: Bytes) -> Result<Bytes, GatewayError>;
}

/// Reads the whole body, refusing more than `max` bytes (413) and a body that does not
/// arrive within `timeout`.
pub(crate) async fn buffer<B>(body: B, max: u64, timeout: Duration) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = LimitedBody::new(body, max);
    match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if is_body_too_large(e.as_ref()) => Err(payload_too_large(max)),
        Ok(Err(_)) => Err(GatewayError::new(
            ErrorKind::BadRequest,
            "the request body could not be read",
        )),
        Err(_) => Err(GatewayError::new(
            ErrorKind::BadRequest,
            "the request body did not arrive within the route's timeout",
        )),
    }
}

/// The head describes the new body: its exact length, never a chunked encoding.
pub(crate) fn set_length(head: &mut request::Parts, len: usize) {
    head.headers.remove(header::TRANSFER_ENCODING);
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}
