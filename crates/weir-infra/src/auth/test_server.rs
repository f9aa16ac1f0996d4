//! A small in-process HTTP server for the JWKS and introspection tests: it answers every
//! request with what the test's handler says (after an optional delay) and counts requests.
//! Plain HTTP, or HTTPS with a certificate from [`super::test_tls`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the server received.
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    scheme: &'static str,
    hits: Arc<AtomicUsize>,
    /// Connections accepted (over TLS: handshakes completed).
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// Serves `handler`'s (status, JSON body) for every request, each after `delay`.
pub(crate) async fn serve<F>(delay: Duration, handler: F) -> TestServer
where
    F: Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
{
    start(delay, None, Arc::new(handler)).await
}

/// [`serve`] over TLS, presenting `tls`'s certificate.
pub(crate) async fn serve_tls<F>(delay: Duration, tls: Arc<ServerConfig>, handler: F) -> TestServer
where
    F: Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
{
    start(delay, Some(TlsAcceptor::from(tls)), Arc::new(handler)).await
}

async fn start(delay: Duration, tls: Option<TlsAcceptor>, handler: Arc<Handler>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let accepted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            let hits = Arc::clone(&counter);
            let tls = tls.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                match tls {
                    // A failed handshake (the client refused the certificate) just ends.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            connection(stream, delay, handler, hits).await;
                        }
                    }
                    None => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        connection(stream, delay, handler, hits).await;
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        scheme,
        hits,
        connections,
        task,
    }
}

async fn connection<S>(stream: S, delay: Duration, handler: Arc<Handler>, hits: Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let hits = Arc::clone(&hits);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            hits.fetch_add(1, Ordering::SeqCst);
            let seen = Seen {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body,
            };
            let (status, text) = handler(&seen);
            tokio::time::sleep(delay).await;
            let resp = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(text)))
                .unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
