//! Starting and stopping the service on a local port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::incoming::{self, SharedSockets};
use crate::pb::orders_server::OrdersServer;
use crate::service::{OrderService, Recorder};

/// The order service on `127.0.0.1`, plaintext HTTP/2 with prior knowledge (h2c), running
/// on the tokio runtime that started it.
///
/// Its answers are fixed so tests can assert exact values:
///
/// - `GetOrder`: id `missing` fails NOT_FOUND "order missing not found"; `err-N` (N in 0..=16)
///   fails with code N and message "forced N"; `slow-MS` waits MS milliseconds first. Otherwise
///   the order has that id, `amount_cents` 9007199254740993 (2^53 + 1), status SHIPPED,
///   `created_at` 2026-01-02T03:04:05.500Z, items `a`, `b` (and `full` when `view` is "full"),
///   and `customer` from the `x-customer` request metadata.
/// - `CreateOrder`: echoes the order, with id `ord-1` and the same `created_at` when unset.
/// - `UpdateOrder`: echoes `order`; without one, INVALID_ARGUMENT "order is required".
/// - `ListOrders`: `limit` orders (3 when 0) `o1`..`oN`, with the request's status and
///   customer and `amount_cents` i*100. Customer `fail-mid` ends after one order with
///   UNAVAILABLE "stream broke"; customer `slow` waits 200 ms between orders.
/// - `UploadItems`: the number of items and the sum of their quantities.
/// - `Chat`: each message answered as it arrives, `seq` counting from 1, text "echo: " + text.
///
/// Every response carries the header `x-served-by: weir-test-grpc`.
///
/// Dropping it closes the listening socket and shuts down every open connection before
/// `drop` returns, like a process that died: new connections are refused and calls in flight
/// or sent later on a pooled connection fail.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    sockets: SharedSockets,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Starts the service on `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// When no local port can be bound, or outside a tokio runtime.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the test gRPC server");
        TestServer::start_on(listener).await
    }

    /// Starts the service on a listener the test already bound, for a test that must know
    /// the address before the server exists (or reuse one a stopped server had).
    ///
    /// # Panics
    ///
    /// When the listener has no local address, or outside a tokio runtime.
    pub async fn start_on(listener: TcpListener) -> TestServer {
        let addr = listener
            .local_addr()
            .expect("a bound listener has a local address");
        let recorder = Arc::new(Recorder::default());
        let service = OrdersServer::new(OrderService {
            recorder: Arc::clone(&recorder),
        });
        let (sockets, shutdown) = incoming::spawn(
            listener,
            tonic::service::Routes::new(service),
            "weir-test-grpc",
        );
        TestServer {
            addr,
            recorder,
            sockets,
            shutdown: Some(shutdown),
        }
    }

    /// `http://127.0.0.1:port`, for a tonic `Channel` or an upstream in gateway config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many calls (any method) reached the service.
    pub fn calls(&self) -> usize {
        self.recorder.calls()
    }

    /// The request metadata of the most recent call: lower-case names, values that are ASCII
    /// (`-bin` values as their base64 wire text), in the order received. Empty before any call.
    pub fn last_metadata(&self) -> Vec<(String, String)> {
        self.recorder.last_metadata()
    }

    /// The `grpc-timeout` header of the most recent call as received (e.g. "500m"), if any.
    pub fn last_grpc_timeout(&self) -> Option<String> {
        self.last_metadata()
            .into_iter()
            .find_map(|(name, value)| (name == "grpc-timeout").then_some(value))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        incoming::close_all(&self.sockets);
        // Ends the server task, which would otherwise wait for a connection that never comes.
        if let Some(shutdown) = self.shutdown.take() {
            // Fails only when the server task has already ended.
            let _ = shutdown.send(());
        }
    }
}
