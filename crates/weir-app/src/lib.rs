//! weir's application layer: the request pipeline.
//!
//! One function, [`Gateway::handle`], takes a request from the edge to an upstream response
//! in the contract's order: normalize the path, route, enforce the route's body limit,
//! answer `respond:` routes, pick a healthy target, rewrite the path and headers, forward.
//! It is generic over the [`Forwarder`] port, so it names no HTTP client, and it returns
//! errors as values ([`GatewayError`]) for the single mapper in the `weir` crate to render.
//! Depends on the domain and on `http` types only; never on an adapter.

pub mod access;
pub mod body;
pub mod cache;
pub mod cached;
pub mod clock;
pub mod convert;
pub mod error;
pub mod forward;
pub mod headers;
pub mod limits;
pub mod members;
pub mod pipeline;
pub mod request_id;
mod transform;
mod tries;

pub use access::Authenticator;
pub use error::GatewayError;
pub use forward::{Connector, ForwardError, Forwarder};
pub use pipeline::{Exchange, Gateway, Outcome};
