//! weir's infrastructure layer: adapters to the world outside the process.
//!
//! The pooled upstream HTTP client, the active health checker, the identity providers
//! (API keys, Basic passwords, JWTs with JWKS, OAuth2 introspection), the metrics registry
//! and its Prometheus rendering, the access-log writer, and the response cache's stores
//! (`cache`: in memory and in Redis). Each one is shaped by a hot-path
//! rule: pools are reused, metrics are atomics resolved at config load, and log lines are
//! formatted and written on their own thread. This crate implements what the domain
//! needs from the outside; it never depends on the application layer.

pub mod access_log;
pub mod acme;
pub mod auth;
pub mod cache;
pub mod client;
pub mod discovery;
pub mod grpc;
pub mod health;
pub mod json_edit;
pub mod metrics;
pub mod otel;
pub mod ratelimit;
mod redis_conn;
#[cfg(test)]
mod test_logs;
#[cfg(test)]
mod test_net;
pub mod tls;
