//! Signals: SIGTERM and SIGINT drain and stop; SIGHUP reloads the configuration file.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::reload::Control;

/// Resolves on SIGTERM or SIGINT; reloads on each SIGHUP meanwhile.
pub async fn wait_for_stop(control: &Arc<Control>) {
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
            _ = hup.recv() => {
                tracing::info!("SIGHUP received; reloading the configuration");
                // The outcome is logged and counted by the reload itself.
                let _ = control.reload().await;
            }
        }
    }
}
