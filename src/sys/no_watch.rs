//! No directory watcher here: a waiter polls with backoff (see `inotify`
//! for Linux).

use std::time::Duration;

use camino::Utf8Path;

/// Nothing to watch with.
#[derive(Debug)]
pub(crate) struct DirWatch;

impl DirWatch {
    /// `None`: the caller polls.
    pub(crate) fn new(_path: &Utf8Path) -> Option<DirWatch> {
        None
    }

    /// Sleeps for `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}
