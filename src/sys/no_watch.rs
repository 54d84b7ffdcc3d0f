//! No lock watcher here: a waiter polls with backoff (see `inotify` for
//! Linux).

use std::time::Duration;

use camino::Utf8Path;

/// Nothing to watch with.
#[derive(Debug)]
pub(crate) struct LockWatch;

/// What arming a watch found: here, always that it could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armed {
    /// The lock's removal will wake the waiter (never here).
    #[allow(dead_code)]
    Watching,
    /// Nothing is at the path (never said here).
    #[allow(dead_code)]
    Absent,
    /// No watch: poll.
    Failed,
}

impl LockWatch {
    /// `None`: the caller polls.
    pub(crate) fn new() -> Option<LockWatch> {
        None
    }

    /// Never watches.
    pub(crate) fn arm(&mut self, _path: &Utf8Path, _dir: bool) -> Armed {
        Armed::Failed
    }

    /// Sleeps for `timeout`; never woken early (false).
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}
