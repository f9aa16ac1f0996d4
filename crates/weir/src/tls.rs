//! The TLS side of accepting a connection on a TLS listener: the handshake (bounded by
//! `header_read_timeout`, so a silent client cannot hold a slot), a clear answer to plain
//! HTTP sent to the TLS port instead of a hang, and the connection facts TLS adds (the
//! scheme and the client certificate's subject).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use weir_app::pipeline::ConnInfo;
use weir_config::Limits;
use weir_infra::tls::server::{ACME_TLS_ALPN, client_subject};

use crate::server::Shared;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Completes TLS on an accepted connection; `None` when the connection is over (plain
/// HTTP answered, handshake failed or timed out, or an ACME validation done).
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    shared: &Arc<Shared>,
    limits: &Limits,
) -> Option<(TlsStream<TcpStream>, ConnInfo)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        _ => return None,
    }
    if first[0] != TLS_HANDSHAKE {
        plain_http_answer(stream, peer).await;
        return None;
    }
    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // A client that does not trust us, offers nothing we speak, or has no client
            // certificate: its business, logged only for debugging.
            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return None;
        }
    };
    let session = tls.get_ref().1;
    if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation only needs the handshake (RFC 8737 §3).
        return None;
    }
    let subject = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(client_subject)
        .map(Arc::<str>::from);
    let mut info = ConnInfo::new(peer, &shared.snapshot.load().settings.trusted_proxies);
    info.tls = true;
    info.client_subject = subject;
    Some((tls, info))
}

/// Plain HTTP on a TLS port: a 400 problem saying so, like nginx's "plain HTTP request was
/// sent to HTTPS port", then close. The request is read first so that closing does not
/// reset the connection before the client reads the answer.
async fn plain_http_answer(mut stream: TcpStream, peer: SocketAddr) {
    tracing::debug!(peer = %peer, "plain HTTP on a TLS listener");
    let mut buf = [0u8; 4096];
    let _ =
        tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf)).await;
    let request_id = weir_app::request_id::generate();
    let body = serde_json::json!({
        "type": "https://weir.dev/errors/bad_request",
        "title": "Bad Request",
        "status": 400,
        "detail": "this port speaks TLS: use https://",
        "code": "bad_request",
        "request_id": String::from_utf8_lossy(request_id.as_bytes()),
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}
