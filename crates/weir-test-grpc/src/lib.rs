//! A real gRPC service for weir's integration tests: the order service of
//! `examples/protos/weir/test/v1/orders.proto`, served by tonic over plaintext HTTP/2.
//!
//! Tests start it on port 0, point a gateway route at it and assert on what arrived: its
//! answers are fixed values (see [`TestServer`]), and it records the metadata of each call so a
//! test can check what the gateway added or forwarded. It is test support only: nothing in the
//! gateway may depend on it.

mod incoming;
pub mod otlp;
mod server;
mod service;
#[cfg(test)]
mod tests;

pub use server::TestServer;

/// The generated messages, `orders_client::OrdersClient` and `orders_server`.
pub mod pb {
    tonic::include_proto!("weir.test.v1");
}

/// The encoded `FileDescriptorSet` of orders.proto, imports included, for transcoding tests
/// that load the service from a descriptor rather than from the .proto source.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/orders_descriptor.bin"));
