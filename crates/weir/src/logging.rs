//! Process logs (not the access log): JSON or text to stderr, filtered by level.

use tracing_subscriber::EnvFilter;
use weir_config::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
