//! Signals: SIGTERM and SIGINT drain and stop. SIGHUP would reload; until reload exists it
//! is logged and ignored rather than killing the process (its default action).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_stop() {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => tracing::warn!("SIGHUP received: configuration reload is not supported yet; restart to apply changes"),
        }
    }
}
