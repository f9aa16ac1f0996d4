//! weir's interface layer and composition root.
//!
//! The command line, the listeners and the hyper server, the per-request edge (snapshot,
//! pipeline, response), the single error-to-problem+json mapper, the admin API, shutdown,
//! and the wiring of config, domain, application and infrastructure into a running gateway.
//! This is the only crate that may name every other one; `main.rs` only calls [`cli::main`].

pub mod acme;
pub mod activity;
pub mod admin;
pub mod bodies;
pub mod body;
pub mod cache;
pub mod carry;
pub mod cli;
pub mod discovery;
pub mod explain;
pub mod forward;
pub mod grpc;
pub mod grpc_web;
pub mod listener;
pub mod logging;
pub mod problem;
pub mod reload;
pub mod server;
pub mod service;
pub mod signals;
pub mod snapshot;
pub mod start;
pub mod tls;
pub mod trace;
pub mod transcode;
pub mod tunnel;
pub mod upstream_view;

pub use start::{Running, StartError, start};

/// Cargo features compiled in, for `weir version`.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "jemalloc")]
    "jemalloc",
    "http1",
    "h2c",
];
