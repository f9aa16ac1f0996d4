//! TLS toward `https://` identity providers: a rustls client (aws-lc-rs) that trusts the
//! provider's `ca_file` or else the system's trust store, names the URL's host in SNI and in
//! certificate verification, and offers ALPN `http/1.1` only.
//!
//! Each worker gets its own pooling client (hyper-util's legacy `Client` over a hyper-rustls
//! connector): workers are single-threaded runtimes, and a connection is driven by the
//! runtime that opened it, so sharing one pool would make workers wake each other. Pooling
//! matters most for introspection, which calls the provider per uncached token: a TLS
//! handshake per call would cost more than the call.
//!
//! This is the identity providers' own TLS client, kept apart from the upstream client on
//! purpose; general upstream TLS is separate work. Consul discovery borrows it for an
//! `https://` agent (one client, not one per worker: its watcher is a single task).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

/// A pooling HTTPS client for one identity provider (or one Consul agent).
pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Idle connections older than this are closed rather than reused (servers commonly close
/// idle connections at 60-75 s; reusing one they are closing fails the call).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// One client per worker for `host` (the URL's host: a DNS name or an IP literal, IPv6 in
/// brackets or not). `connect_timeout` bounds the TCP connect; the caller's deadline bounds
/// the handshake and the whole exchange.
pub(crate) fn clients(
    host: &str,
    ca_pem: Option<&[u8]>,
    connect_timeout: Duration,
    workers: usize,
) -> Result<Box<[HttpsClient]>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // Checked here so a host that cannot be a TLS server name fails at load, not per call.
    let name = ServerName::try_from(bare.to_owned())
        .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))?;
    let config = Arc::new(client_config(ca_pem)?);
    let clients = (0..workers.max(1))
        .map(|_| {
            let mut http = HttpConnector::new();
            // The scheme is https; the TLS layer above wraps this plain TCP connector.
            http.enforce_http(false);
            http.set_connect_timeout(Some(connect_timeout));
            http.set_nodelay(true);
            let https = HttpsConnector::new(
                http,
                Arc::clone(&config),
                // Never fall back to plain HTTP, whatever URI reaches the connector.
                true,
                Arc::new(FixedServerNameResolver::new(name.clone())),
            );
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(https)
        })
        .collect();
    Ok(clients)
}

/// TLS 1.3 and 1.2 with aws-lc-rs, no client certificate, ALPN `http/1.1` (weir speaks
/// HTTP/1.1 to identity providers; offering h2 would let a server pick what is not spoken).
fn client_config(ca_pem: Option<&[u8]>) -> Result<ClientConfig, String> {
    let roots = crate::tls::roots(ca_pem)?;
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error with its sources, `: `-separated: hyper-util's "client error (Connect)" alone
/// says nothing, the reason (a refused connection, rustls's "invalid peer certificate:
/// UnknownIssuer") is in the chain.
pub(crate) fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut out = if e.is_connect() {
        "connect".to_owned()
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_1_1_is_offered() {
        let pem = crate::auth::test_tls::TestCa::new().pem();
        let config = client_config(Some(pem.as_bytes())).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn hosts_become_server_names() {
        let t = Duration::from_secs(1);
        let ca = crate::auth::test_tls::TestCa::new();
        let pem = ca.pem();
        assert!(clients("idp.example.com", Some(pem.as_bytes()), t, 2).is_ok_and(|c| c.len() == 2));
        assert!(clients("127.0.0.1", Some(pem.as_bytes()), t, 1).is_ok());
        assert!(clients("[::1]", Some(pem.as_bytes()), t, 1).is_ok());
        let err = clients("bad name!", Some(pem.as_bytes()), t, 1).unwrap_err();
        assert!(err.contains("cannot be a TLS server name"), "{err}");
    }
}
