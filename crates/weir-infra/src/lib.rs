//! weir's infrastructure layer: adapters to the world outside the process.
//!
//! The pooled upstream HTTP client, the active health checker, the identity providers
//! (API keys, Basic passwords, JWTs with JWKS, OAuth2 introspection), the metrics registry
//! and its Prometheus rendering, and the access-log writer. Each one is shaped by a hot-path
//! rule: pools are reused, metrics are atomics resolved at config load, and log lines are
//! formatted and written on their own thread. This crate implements what the domain
//! needs from the outside; it never depends on the application layer.

pub mod access_log;
pub mod auth;
pub mod client;
pub mod discovery;
pub mod health;
pub mod metrics;
pub mod ratelimit;
