//! Service discovery: watchers that find an upstream's targets while weir runs.
//!
//! A watcher resolves its source now and then again and again, forever, and hands every
//! result to a sink as a whole list of endpoints, or as a failure. It keeps no state the
//! caller needs: the caller compares lists (a watcher reports unchanged ones too), keeps the
//! last good list when a failure comes (last-known-good), marks the upstream stale, and logs
//! once per change of state. So a watcher never logs its own retries.

mod dns;

pub use dns::watch_dns;

use weir_domain::discovery::Endpoint;

/// One result of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The source answered: these are the targets, sorted by URL, each once. Empty when the
    /// source answered that there are none (DNS: NXDOMAIN, or no records).
    Endpoints(Vec<Endpoint>),
    /// The source could not answer (DNS: SERVFAIL, REFUSED, a timeout, an I/O error); why,
    /// in words for the log.
    Failed(String),
}
