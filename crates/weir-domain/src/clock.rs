//! Time as a port, so state machines are tested on a fake clock instead of `sleep`.

use std::time::Duration;

/// A monotonic clock. `now` is the time elapsed since an arbitrary fixed origin.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}
