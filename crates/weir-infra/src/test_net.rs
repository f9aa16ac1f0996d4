//! Addresses for tests that need nothing to answer.

use std::net::SocketAddr;

/// An address that refuses connections for the rest of the test: a socket bound to it but
/// never listening, kept open. A port merely bound and closed could be taken by a server of
/// a test running beside this one.
pub(crate) fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("local addr");
    // The test's process ends with the test (nextest); the socket lives until then.
    std::mem::forget(socket);
    addr
}
