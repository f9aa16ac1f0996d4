//! Integration tests of `weir-config`, in one binary: a binary per file would link the whole
//! dependency tree once per file, which costs minutes and gigabytes on a 2-core CI machine.

mod auth;
mod build;
mod cache;
mod common;
mod discovery;
mod docs;
mod env;
mod examples;
mod garbage;
mod problems;
mod ratelimit;
mod resilience;
mod tls;
mod transforms;
