//! One acquisition of a lock, shared between its handle and, for a lock
//! with a lease, a heartbeat thread.
//!
//! A holder with a lease rewrites its owner record (its `beat` counter)
//! three times per lease, in place, through the file it created: the write
//! reaches its own record and never anyone else's, even after its lock was
//! broken. After each refresh it checks that the lock path is still its
//! own. The acquisition is *lost* when that check proves otherwise, or when
//! no refresh has succeeded for a whole lease (contenders may then have
//! broken it): the `on_lost` callback runs once, and
//! [`LockFile::ensure_held`] and `release` return [`Error::LockLost`].
//!
//! A refresh that fails (`EIO`, `ESTALE`, a full disk) is tried again a
//! few times within the lease before the lock counts as lost: a passing
//! error of a network file system does not cost the lock.
//!
//! One heartbeat thread serves the leases of one file system (one device
//! of the lock's directory): a mount that hangs stalls its own leases, and
//! never those of locks elsewhere. Each thread is started with the first
//! lease on its file system and sleeps on a condition variable until the
//! next refresh is due.
//!
//! [`LockFile::ensure_held`]: crate::LockFile::ensure_held
//! [`Error::LockLost`]: crate::Error::LockLost

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::owner::OwnerRecord;
use crate::strategy::Hold;

/// A callback run when a lock is found lost.
pub(crate) type OnLost = Arc<dyn Fn(&Utf8Path) + Send + Sync>;

/// One acquisition of a lock.
pub(crate) struct Holding {
    path: Utf8PathBuf,
    token: String,
    /// The process that took the lock: a child of `fork()` holds nothing.
    pid: u32,
    held: Mutex<Option<Hold>>,
    /// The record as last written, and the longest length written so far.
    record: Mutex<(OwnerRecord, usize)>,
    /// The lease, if the lock keeps one that contenders may break, and
    /// when a refresh last succeeded (the acquisition itself first), on a
    /// clock that runs on through a suspend (`sys::since_boot`): after a
    /// laptop's lid was closed for longer than the lease, the lock counts
    /// as lost, as its contenders may have seen it.
    lease: Option<Duration>,
    refreshed: Mutex<Duration>,
    lost: AtomicBool,
    /// Counts the times the proof of holding was taken out for a release:
    /// a look made meanwhile from a copy proves nothing (the release itself
    /// may have removed, or moved, what it looked at).
    releases: std::sync::atomic::AtomicU64,
    on_lost: Option<OnLost>,
    /// The acquisition's fencing token, once given (`LockOptions::fencing`).
    pub(crate) fence: std::sync::OnceLock<u64>,
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
    /// A new acquisition; with a lease, the heartbeat of the lock's file
    /// system starts refreshing it. `breakable` says whether contenders
    /// break the lock when its lease runs out (not for `Os` locks, which
    /// only the kernel releases).
    pub(crate) fn start(
        path: &Utf8Path,
        held: Hold,
        record: OwnerRecord,
        on_lost: Option<OnLost>,
        breakable: bool,
    ) -> Arc<Holding> {
        let lease = record.lease();
        let len = record.to_json().len();
        let holding = Arc::new(Holding {
            path: path.to_owned(),
            token: held.token().to_owned(),
            pid: crate::sys::pid(),
            held: Mutex::new(Some(held)),
            record: Mutex::new((record, len)),
            lease: lease.filter(|_| breakable),
            refreshed: Mutex::new(crate::sys::since_boot()),
            lost: AtomicBool::new(false),
            releases: std::sync::atomic::AtomicU64::new(0),
            on_lost,
            fence: std::sync::OnceLock::new(),
        });
        if let Some(lease) = lease {
            heartbeat_of(path).add(&holding, lease / 3);
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

    /// Whether this acquisition was made by another process: the handle
    /// was inherited through `fork()`, and the lock is the parent's.
    pub(crate) fn is_inherited(&self) -> bool {
        self.pid != crate::sys::pid()
    }

    /// Takes the proof of holding out, for release; `None` the second time.
    /// The heartbeat skips the acquisition meanwhile.
    pub(crate) fn take(&self) -> Option<Hold> {
        let mut held = lock(&self.held);
        self.releases.fetch_add(1, Ordering::AcqRel);
        held.take()
    }

    /// Puts the proof of holding back after a release that failed without
    /// changing anything; the heartbeat goes on refreshing it.
    pub(crate) fn restore(&self, held: Hold) {
        *lock(&self.held) = Some(held);
    }

    /// The open lock file of an `Os` acquisition.
    pub(crate) fn os_file(&self) -> Option<Arc<std::fs::File>> {
        lock(&self.held).as_ref().and_then(Hold::os_file)
    }

    /// Whether this acquisition was found lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Marks the acquisition lost; runs the callback the first time.
    pub(crate) fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            log::error!(
                target: "portalock",
                "lost the lock {}: it no longer carries this holder's token {} \
                 (it was broken, removed or replaced by another process, or its lease ran out)",
                self.path,
                self.token()
            );
            if let Some(on_lost) = &self.on_lost {
                // A panicking callback must not take the heartbeat thread
                // (and every other lease of its file system) down with it.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_lost(&self.path)));
            }
        }
    }

    /// Whether the lease ran out without a successful refresh: contenders
    /// may have broken the lock. Known without touching the file system.
    fn lease_ran_out(&self) -> bool {
        self.lease.is_some_and(|lease| {
            crate::sys::since_boot().saturating_sub(*lock(&self.refreshed)) >= lease
        })
    }

    /// Whether the lock is still this acquisition's; marks it lost if not.
    pub(crate) fn check(&self) -> std::io::Result<bool> {
        if self.is_lost() {
            return Ok(false);
        }
        if self.lease_ran_out() {
            self.mark_lost();
            return Ok(false);
        }
        let releases = self.releases.load(Ordering::Acquire);
        let ok = match self.held_for_io() {
            Some(Ok(held)) => held.check(&self.path)?,
            Some(Err(guard)) => match guard.as_ref() {
                Some(held) => held.check(&self.path)?,
                None => return Ok(false),
            },
            None => return Ok(false),
        };
        if !ok {
            self.mark_lost_unless_released(releases);
        }
        Ok(ok)
    }

    /// Marks the acquisition lost, unless a release began since `releases`
    /// was read, or none is held now (a look made from a copy of the proof
    /// of holding can find the lock gone, or its claim moved, because its
    /// own release did it).
    fn mark_lost_unless_released(&self, releases: u64) {
        let held = lock(&self.held);
        if held.is_some() && self.releases.load(Ordering::Acquire) == releases {
            drop(held);
            self.mark_lost();
        }
    }

    /// The proof of holding for file-system work: a copy, for `Mkdir` and
    /// `Link` (whose names belong to this acquisition alone, so work on
    /// them needs no lock held, and a mount that hangs does not block
    /// `ensure_held` or `release` behind a refresh); the locked guard, for
    /// `Os`, whose record is written through the lock file itself and must
    /// not be written after a release. `None` if nothing is held.
    fn held_for_io(&self) -> Option<Result<Hold, MutexGuard<'_, Option<Hold>>>> {
        let guard = lock(&self.held);
        match guard.as_ref()?.retry_copy() {
            Some(copy) => Some(Ok(copy)),
            None => Some(Err(guard)),
        }
    }

    /// Rewrites the record with `edit` applied, under the `held` mutex
    /// (a lease refresh, or naming the command the lock was taken for).
    pub(crate) fn rewrite(&self, edit: impl FnOnce(&mut OwnerRecord)) -> std::io::Result<()> {
        let guard = lock(&self.held);
        let Some(held) = guard.as_ref() else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        let mut record = lock(&self.record);
        let mut next = record.0.clone();
        edit(&mut next);
        let json = next.to_json();
        held.rewrite_record(&self.path, json.as_bytes(), record.1)?;
        record.1 = record.1.max(json.len());
        record.0 = next;
        Ok(())
    }

    /// One refresh: rewrites the record with the next beat and checks the
    /// lock is still ours. Returns when to refresh next, or `None` to stop.
    fn refresh(&self, every: Duration) -> Option<Duration> {
        if self.is_lost() {
            return None;
        }
        let releases = self.releases.load(Ordering::Acquire);
        // Late past the lease (this process was stopped, or the machine
        // suspended): contenders may be breaking the lock right now. A
        // refresh would tell this holder it still holds it; it has lost it.
        if self.lease_ran_out() {
            self.mark_lost_unless_released(releases);
            return None;
        }
        // Stamped before the write: contenders count the lease from when
        // they last saw the record change, which is no earlier.
        let attempted = crate::sys::since_boot();
        let write = |held: &Hold| {
            let written = {
                let mut record = lock(&self.record);
                record.0.beat += 1;
                let json = record.0.to_json();
                let written = held.rewrite_record(&self.path, json.as_bytes(), record.1);
                record.1 = record.1.max(json.len());
                written
            };
            written.and_then(|()| held.check(&self.path))
        };
        let outcome = match self.held_for_io() {
            Some(Ok(copy)) => write(&copy),
            Some(Err(guard)) => match guard.as_ref() {
                Some(held) => write(held),
                None => return Some(every),
            },
            // Being released (or given back after a failed release): look
            // again at the next beat.
            None => return Some(every),
        };
        // The guard on `held` is gone: the callback may call `release`.
        match outcome {
            Ok(true) => {
                *lock(&self.refreshed) = attempted;
                Some(every)
            }
            Ok(false) => {
                self.mark_lost_unless_released(releases);
                None
            }
            // A failed refresh proves nothing yet: try again soon, until
            // the lease has run out since the last one that succeeded.
            Err(_) if !self.lease_ran_out() => Some(every / 4),
            Err(_) => {
                self.mark_lost_unless_released(releases);
                None
            }
        }
    }
}

/// The leases of one file system and the thread that refreshes them.
struct Heartbeat {
    /// The process whose thread this is (a child of `fork()` inherits the
    /// table of heartbeats, not their threads).
    pid: u32,
    entries: Mutex<Vec<Entry>>,
    wake: Condvar,
}

struct Entry {
    holding: Weak<Holding>,
    every: Duration,
    due: Instant,
}

/// The heartbeat of the file system that holds `path` (keyed by the
/// device of its directory), started on first use.
fn heartbeat_of(path: &Utf8Path) -> Arc<Heartbeat> {
    static BEATS: OnceLock<Mutex<HashMap<u64, Arc<Heartbeat>>>> = OnceLock::new();
    let device = path
        .parent()
        .and_then(|dir| crate::files::device(dir).ok())
        .unwrap_or(0);
    let pid = crate::sys::pid();
    let mut beats = lock(BEATS.get_or_init(Default::default));
    match beats.get(&device) {
        Some(beat) if beat.pid == pid => Arc::clone(beat),
        _ => {
            let beat = Heartbeat::start(pid);
            beats.insert(device, Arc::clone(&beat));
            beat
        }
    }
}

impl Heartbeat {
    fn start(pid: u32) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat {
            pid,
            entries: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        });
        // Runs for the rest of the process; it sleeps when it has no lease.
        let runner = Arc::clone(&beat);
        let spawned = std::thread::Builder::new()
            .name("portalock-heartbeat".to_owned())
            .spawn(move || runner.run());
        if let Err(e) = spawned {
            // Without the thread, these leases are not refreshed: contenders
            // break them after one lease, and their holders find out
            // through `ensure_held`. Say so once per file system.
            eprintln!("portalock: cannot start a lease heartbeat thread: {e}");
        }
        beat
    }

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
            let due: Vec<_> = entries
                .iter()
                .filter(|e| e.due <= now)
                .filter_map(|e| Some((e.holding.upgrade()?, e.every)))
                .collect();
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
            // Matched by a `Weak` kept meanwhile: it keeps the allocation,
            // so no new holding can have taken its address.
            let next: Vec<_> = due
                .into_iter()
                .map(|(h, every)| (Arc::downgrade(&h), h.refresh(every)))
                .collect();
            entries = lock(&self.entries);
            let now = Instant::now();
            entries.retain_mut(
                |e| match next.iter().find(|(w, _)| Weak::ptr_eq(w, &e.holding)) {
                    Some((_, None)) => false,
                    Some((_, Some(after))) => {
                        e.due = now + *after;
                        true
                    }
                    None => true,
                },
            );
        }
    }
}

/// Releases that failed in a drop, tried again in the background (one
/// thread per process, started on first use) until each succeeds or its
/// lock is found no longer its own. Waits between tries grow from 10 ms to
/// 5 s.
pub(crate) fn release_later(path: &Utf8Path, held: Hold) {
    /// The pending releases and the process whose thread serves them (a
    /// child of `fork()` inherits the list, not the thread: it starts its
    /// own, and the parent's releases are the parent's).
    struct Later {
        pid: u32,
        pending: Vec<(Utf8PathBuf, Hold)>,
    }
    static LATER: Mutex<Later> = Mutex::new(Later {
        pid: 0,
        pending: Vec::new(),
    });
    static WAKE: Condvar = Condvar::new();
    let pid = crate::sys::pid();
    let mut later = lock(&LATER);
    if later.pid != pid {
        later.pid = pid;
        later.pending.clear();
        let spawned = std::thread::Builder::new()
            .name("portalock-release".to_owned())
            .spawn(|| {
                let mut pause = Duration::from_millis(10);
                let mut pending = lock(&LATER);
                loop {
                    while pending.pending.is_empty() {
                        pause = Duration::from_millis(10);
                        pending = WAKE.wait(pending).unwrap_or_else(PoisonError::into_inner);
                    }
                    pending = WAKE
                        .wait_timeout(pending, pause)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    let batch = std::mem::take(&mut pending.pending);
                    drop(pending);
                    let mut again = Vec::new();
                    for (path, held) in batch {
                        let copy = held.retry_copy();
                        let released = crate::strategy::release(&path, held, &mut None);
                        if let (Err(_), Some(copy)) = (released, copy) {
                            if copy.check(&path).unwrap_or(true) {
                                again.push((path, copy));
                            }
                        }
                    }
                    pending = lock(&LATER);
                    pending.pending.extend(again);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            });
        if let Err(e) = spawned {
            eprintln!("portalock: cannot start the background release thread: {e}");
        }
    }
    later.pending.push((path.to_owned(), held));
    drop(later);
    WAKE.notify_all();
}
