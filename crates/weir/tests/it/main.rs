//! Integration tests of `weir`, in one binary: a binary per file would link the whole
//! dependency tree once per file, which costs minutes and gigabytes on a 2-core CI machine.

mod acme;
mod acme_edge;
mod admin;
mod auth_jwt;
mod auth_keys;
mod auth_oauth2;
mod auth_tls;
mod balancing;
mod breaker;
mod cache;
mod cache_redis;
mod cli;
mod common;
mod discovery_consul;
mod discovery_dns;
mod discovery_etcd;
mod dns_server;
mod fallback;
mod grpc;
mod grpc_transcode;
mod grpc_web;
mod health;
mod limits;
mod proxy;
mod ratelimit;
mod ratelimit_redis;
mod reload;
mod resilience;
mod routing;
mod streaming;
mod tls;
mod tls_edge;
mod tracing;
mod transforms;
mod transforms_body;
