//! The async waiter's wake-up (feature `tokio`): the lock watch of the
//! blocking waiter (`inotify` on Linux), slept on by a thread of tokio's
//! blocking pool, so that an async wait for a `Mkdir` or `Link` lock wakes
//! when the lock is released instead of at its next poll, without taking
//! a runtime worker. It needs no I/O driver in the runtime (a runtime
//! built with its time driver alone panics on a descriptor registered with
//! it). Where there is no watch, the async waiter polls with backoff.
//!
//! A future dropped while its watch sleeps leaves the blocking thread to
//! finish that sleep (at most the poll interval), after which the watch is
//! closed: nothing is held meanwhile.

use std::time::Duration;

use camino::Utf8Path;

use super::{Armed, LockWatch};

/// A lock watch that an async task can wait on.
#[derive(Debug)]
pub(crate) struct AsyncLockWatch {
    /// `None` while a blocking thread sleeps on it, or once one failed.
    watch: Option<LockWatch>,
}

impl AsyncLockWatch {
    /// A watch; `None` where there is none (then poll).
    pub(crate) fn new() -> Option<AsyncLockWatch> {
        LockWatch::new().map(|watch| AsyncLockWatch { watch: Some(watch) })
    }

    /// Watches what `path` names now (see `LockWatch::arm`).
    pub(crate) fn arm(&mut self, path: &Utf8Path, dir: bool) -> Armed {
        self.watch
            .as_mut()
            .map_or(Armed::Failed, |watch| watch.arm(path, dir))
    }

    /// Waits until the watched lock is removed, renamed or loses a link,
    /// or `timeout` passes.
    pub(crate) async fn wait(&mut self, timeout: Duration) {
        let Some(watch) = self.watch.take() else {
            return tokio::time::sleep(timeout).await;
        };
        // (a runtime shutting down refuses the task: poll from then on)
        if let Ok(watch) = tokio::task::spawn_blocking(move || {
            let _ = watch.wait(timeout);
            watch
        })
        .await
        {
            self.watch = Some(watch);
        }
    }
}
