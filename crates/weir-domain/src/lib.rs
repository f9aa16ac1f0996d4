//! weir's domain layer: what a gateway *is*, free of how it runs.
//!
//! Routes and the route table (with the contract's precedence rules), path normalization,
//! upstreams, targets and the load-balancing choice, active and passive health, the circuit
//! breaker's state machine, retry policies and budgets, and the error kinds
//! every phase speaks. Everything here is pure and synchronous: no I/O, no tokio, no serde,
//! no HTTP library. Shared mutable state is atomics only, so the request path never locks.
//! Adapters and the pipeline live in outer crates and depend on this one, never the reverse.

pub mod auth;
pub mod balance;
pub mod breaker;
pub mod cache;
pub mod clock;
pub mod discovery;
pub mod error;
pub mod framing;
pub mod grpc;
pub mod health;
pub mod limiter;
pub mod net;
pub mod outlier;
pub mod path;
pub mod percent;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod router;
pub mod trace;
pub mod transform;
pub mod upstream;
pub mod window;

mod hash;

pub use error::ErrorKind;
