//! The process-wide table of held locks.
//!
//! Neither `flock` nor `LockFileEx` makes two handles of one process exclude
//! each other in every case (POSIX `fcntl` locks are per process, Windows
//! locks are per handle), and a waiter in the same process should wake the
//! moment the lock is released instead of polling. So every handle first
//! takes its path in this table, keyed by the absolute lock path, and only
//! then the lock in the file system. Waiters in this process sleep on one
//! condition variable, woken by every release.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use camino::Utf8Path;

use crate::wait::Deadline;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    held: Mutex<Table>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct Table {
    /// The process whose handles the table lists: a child of `fork()`
    /// inherits the table, not the locks in it, and starts afresh.
    pid: u32,
    /// Lock path -> id of the handle that holds it (or is taking it). Keyed
    /// by the path's text: handles hold normalized absolute paths, and
    /// hashing a string is much cheaper than hashing a path's components.
    paths: HashMap<String, u64>,
    /// Threads waiting on `released`: a release without waiters makes no
    /// wake-up call.
    waiting: usize,
}

/// The registry of this process.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a thread panicked while
        // holding the mutex: every critical section is a single insert,
        // remove or lookup.
        let mut table = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = crate::sys::pid();
        if table.pid != pid {
            // A new process (or the first use): its handles hold nothing
            // yet. Waiters of the parent are not in this process either.
            table.paths.clear();
            table.waiting = 0;
            table.pid = pid;
        }
        table
    }

    /// Claims `path` for handle `id`, waiting until the deadline while
    /// another handle of this process has it. Returns `false` on timeout.
    pub(crate) fn enter(&self, path: &Utf8Path, id: u64, deadline: &Deadline) -> bool {
        let mut table = self.table();
        loop {
            if !table.paths.contains_key(path.as_str()) {
                table.paths.insert(path.as_str().to_owned(), id);
                return true;
            }
            let left = deadline.remaining();
            if left.is_some_and(|left| left.is_zero()) {
                return false;
            }
            table.waiting += 1;
            table = match deadline.slice(left) {
                None => self
                    .released
                    .wait(table)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.released
                        .wait_timeout(table, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            table.waiting -= 1;
        }
    }

    /// Gives up `path` if handle `id` has it, and wakes the waiters.
    pub(crate) fn leave(&self, path: &Utf8Path, id: u64) {
        let mut table = self.table();
        if table.paths.get(path.as_str()) == Some(&id) {
            table.paths.remove(path.as_str());
            let waiting = table.waiting > 0;
            drop(table);
            if waiting {
                self.released.notify_all();
            }
        }
    }

    /// Whether some handle of this process has `path`.
    pub(crate) fn contains(&self, path: &Utf8Path) -> bool {
        self.table().paths.contains_key(path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn second_handle_waits_and_times_out() {
        let reg = Registry::default();
        let p = Utf8Path::new("/registry/test/a");
        assert!(reg.enter(p, 1, &Deadline::after(None)));
        assert!(!reg.enter(p, 2, &Deadline::after(Some(Duration::from_millis(5)))));
        reg.leave(p, 2); // not the holder: no effect
        assert!(reg.contains(p));
        reg.leave(p, 1);
        assert!(!reg.contains(p));
        assert!(reg.enter(p, 2, &Deadline::after(Some(Duration::ZERO))));
    }
}
