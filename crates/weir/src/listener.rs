//! What one configuration generation serves a listener's new connections with: the HTTP
//! settings (edge limits, HTTP/2) and, on a TLS listener, the rustls acceptor with its
//! certificates. The accept loop reads it from the current snapshot for every connection,
//! so a reload changes certificates and limits for new connections without closing the
//! socket; connections keep what they started with.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;
use weir_config::{Limits, ListenerSettings, TlsVersion};
use weir_infra::tls::server::{DynamicCerts, ServerTls, server_config};

pub struct ListenerRuntime {
    pub settings: ListenerSettings,
    /// The edge limits of this generation (header and idle timeouts of its connections).
    pub limits: Limits,
    pub builder: auto::Builder<TokioExecutor>,
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("name", &self.settings.name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ListenerRuntime {
    pub fn build(
        settings: &ListenerSettings,
        limits: &Limits,
        dynamic: Option<Arc<dyn DynamicCerts>>,
    ) -> Result<Self, String> {
        let tls = match &settings.tls {
            Some(t) => {
                let config = server_config(&ServerTls {
                    certificates: t
                        .certificates
                        .iter()
                        .map(|c| (c.cert_pem.clone(), c.key_pem.expose().to_owned()))
                        .collect(),
                    tls13_only: t.min_version == TlsVersion::Tls13,
                    client_ca_pem: t.client_ca_pem.clone(),
                    http2: settings.http2,
                    dynamic,
                })
                .map_err(|e| format!("listener {}: {e}", settings.name))?;
                Some(TlsAcceptor::from(config))
            }
            None => None,
        };
        Ok(Self {
            settings: settings.clone(),
            limits: *limits,
            builder: connection_builder(settings, limits),
            tls,
        })
    }
}

fn connection_builder(
    settings: &ListenerSettings,
    limits: &Limits,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // Heads over max_header_bytes are answered 431 with a problem body by the pipeline.
        // hyper's parse buffer is 64 KiB larger so that check decides for all but absurd heads;
        // past the buffer hyper refuses the head itself (431, no body). The buffer is only
        // filled as far as a client actually sends.
        .max_buf_size(limits.max_header_bytes + 64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(100))
        .max_local_error_reset_streams(Some(1024));
    if settings.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
