//! TLS toward an upstream's targets: its trust (a `ca_file` or the system's store), weir's
//! client certificate for mTLS, the name checked and sent in SNI, and ALPN matching the
//! upstream's protocol (`h2` for HTTP/2 and gRPC, `http/1.1` otherwise).

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weir_domain::upstream::UpstreamTls;

/// One upstream's TLS client, shared by all its targets' connections.
#[derive(Clone)]
pub struct UpstreamConnector {
    connector: TlsConnector,
    /// `server_name` from the config; otherwise each target's host.
    server_name: Option<ServerName<'static>>,
    http2: bool,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("server_name", &self.server_name)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    /// Builds the client config once per upstream and config generation.
    pub fn new(tls: &UpstreamTls, http2: bool) -> Result<Self, String> {
        let roots = super::roots(tls.ca_pem.as_deref())?;
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &tls.identity {
            Some(id) => {
                let chain = CertificateDer::pem_slice_iter(&id.cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client_cert_file: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.expose().as_bytes())
                    .map_err(|_| "client_key_file does not parse".to_owned())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = tls
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_owned()).map_err(|e| format!("server_name {n:?}: {e}"))
            })
            .transpose()?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            http2,
        })
    }

    /// The name to send and check for a target whose host is `host` (a DNS name or an IP
    /// literal, IPv6 in brackets or not).
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("{host:?} cannot be a TLS server name: {e}"))
    }

    /// The TLS handshake over a connected stream. HTTP/2 upstreams must agree to `h2`:
    /// speaking it to a server that did not would only fail later and less clearly.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tls = self.connector.connect(name, stream).await?;
        if self.http2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other(
                "the target did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(tls)
    }
}
