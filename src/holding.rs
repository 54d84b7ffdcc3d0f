//! One acquisition of a lock, shared between its handle and, for a lock
//! with a lease, the process's heartbeat thread.
//!
//! A holder with a lease rewrites its owner record (its `beat` counter)
//! three times per lease, in place, through the file it created: the write
//! reaches its own record and never anyone else's, even after its lock was
//! broken. After each refresh it checks that the lock path is still its
//! own; when it is not (or the refresh failed) the acquisition is *lost*:
//! the `on_lost` callback runs once, [`LockFile::ensure_held`] and
//! `release` return [`Error::LockLost`].
//!
//! One thread per process serves every lease, however many there are. It
//! is started on the first lease and sleeps on a condition variable until
//! the next refresh is due.
//!
//! [`LockFile::ensure_held`]: crate::LockFile::ensure_held
//! [`Error::LockLost`]: crate::Error::LockLost

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::owner::OwnerRecord;
use crate::strategy::Held;

/// A callback run when a lock is found lost.
pub(crate) type OnLost = Arc<dyn Fn(&Utf8Path) + Send + Sync>;

/// One acquisition of a lock.
pub(crate) struct Holding {
    path: Utf8PathBuf,
    token: String,
    held: Mutex<Option<Held>>,
    /// The record as last written, and the longest length written so far.
    record: Mutex<(OwnerRecord, usize)>,
    lost: AtomicBool,
    on_lost: Option<OnLost>,
}

impl fmt::Debug for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holding")
            .field("path", &self.path)
            .field("token", &self.token)
            .field("lost", &self.lost.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Locks `m`, poisoned or not: for mutexes whose value is only ever
/// replaced whole (or changed in one step), which a panic elsewhere cannot
/// leave half updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Holding {
    /// A new acquisition; with a lease, the heartbeat starts refreshing it.
    pub(crate) fn start(
        path: &Utf8Path,
        held: Held,
        record: OwnerRecord,
        on_lost: Option<OnLost>,
    ) -> Arc<Holding> {
        let lease = record.lease();
        let len = record.to_json().len();
        let holding = Arc::new(Holding {
            path: path.to_owned(),
            token: held.token().to_owned(),
            held: Mutex::new(Some(held)),
            record: Mutex::new((record, len)),
            lost: AtomicBool::new(false),
            on_lost,
        });
        if let Some(lease) = lease {
            heartbeat().add(&holding, lease / 3);
        }
        holding
    }

    /// The record as last written.
    pub(crate) fn record(&self) -> OwnerRecord {
        lock(&self.record).0.clone()
    }

    /// The token of this acquisition's record.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Takes the proof of holding out, for release; `None` the second time.
    pub(crate) fn take(&self) -> Option<Held> {
        lock(&self.held).take()
    }

    /// Puts the proof of holding back after a release that failed without
    /// changing anything.
    pub(crate) fn restore(&self, held: Held) {
        *lock(&self.held) = Some(held);
    }

    /// Whether this acquisition was found lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the acquisition lost; runs the callback the first time.
    pub(crate) fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            if let Some(on_lost) = &self.on_lost {
                // A panicking callback must not take the heartbeat thread
                // (and every other lease of the process) down with it.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_lost(&self.path)));
            }
        }
    }

    /// Whether the lock is still this acquisition's; marks it lost if not.
    pub(crate) fn check(&self) -> std::io::Result<bool> {
        if self.is_lost() {
            return Ok(false);
        }
        let ok = match lock(&self.held).as_ref() {
            Some(held) => held.check(&self.path)?,
            None => return Ok(false),
        };
        if !ok {
            self.mark_lost();
        }
        Ok(ok)
    }

    /// Rewrites the record with the next beat and checks the lock is still
    /// ours. Returns whether the heartbeat should keep refreshing it.
    fn refresh(&self) -> bool {
        let ours = self.refresh_locked();
        if ours {
            return true;
        }
        // The guard on `held` is gone: the callback may call `release`.
        if lock(&self.held).is_some() {
            self.mark_lost();
        }
        false
    }

    /// Rewrites the record and checks the lock, under the `held` mutex.
    fn refresh_locked(&self) -> bool {
        let held = lock(&self.held);
        let Some(held) = held.as_ref() else {
            return false;
        };
        if self.is_lost() {
            return false;
        }
        let written = {
            let mut record = lock(&self.record);
            record.0.beat += 1;
            let json = record.0.to_json();
            let written = held.rewrite_record(&self.path, json.as_bytes(), record.1);
            record.1 = record.1.max(json.len());
            written
        };
        let ours = written.and_then(|()| held.check(&self.path));
        matches!(ours, Ok(true))
    }
}

/// The process's heartbeat: the leases it refreshes and when each is due.
struct Heartbeat {
    entries: Mutex<Vec<Entry>>,
    wake: Condvar,
}

struct Entry {
    holding: Weak<Holding>,
    every: Duration,
    due: Instant,
}

fn heartbeat() -> &'static Heartbeat {
    static BEAT: OnceLock<Heartbeat> = OnceLock::new();
    BEAT.get_or_init(|| {
        // Spawned once per process; it outlives every lease and sleeps when
        // there are none.
        let spawned = std::thread::Builder::new()
            .name("portalock-heartbeat".to_owned())
            .spawn(|| heartbeat().run());
        if let Err(e) = spawned {
            // Without the thread, leases are not refreshed: contenders will
            // break them after one lease, and the holder finds out through
            // `ensure_held`. Say so once.
            eprintln!("portalock: cannot start the lease heartbeat thread: {e}");
        }
        Heartbeat {
            entries: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }
    })
}

impl Heartbeat {
    fn add(&self, holding: &Arc<Holding>, every: Duration) {
        let every = every.max(Duration::from_millis(1));
        lock(&self.entries).push(Entry {
            holding: Arc::downgrade(holding),
            every,
            due: Instant::now() + every,
        });
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut entries = lock(&self.entries);
        loop {
            entries.retain(|e| e.holding.strong_count() > 0);
            let now = Instant::now();
            let mut due = Vec::new();
            for entry in entries.iter_mut() {
                if entry.due <= now {
                    entry.due = now + entry.every;
                    if let Some(holding) = entry.holding.upgrade() {
                        due.push(holding);
                    }
                }
            }
            if due.is_empty() {
                let next = entries.iter().map(|e| e.due).min();
                let wait = next.map_or(Duration::from_secs(3600), |d| {
                    d.saturating_duration_since(now)
                });
                entries = self
                    .wake
                    .wait_timeout(entries, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            drop(entries);
            let finished: Vec<_> = due
                .into_iter()
                .filter(|h| !h.refresh())
                .map(|h| Arc::as_ptr(&h))
                .collect();
            entries = lock(&self.entries);
            entries.retain(|e| !finished.contains(&e.holding.as_ptr()));
        }
    }
}
