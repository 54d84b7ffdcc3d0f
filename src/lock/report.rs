//! The wait hook ([`LockOptions::on_wait`]): one thread per process,
//! started by the first wait that has a hook, tells each waiting caller's
//! hook whom it waits for, once after a short delay and then at an
//! interval, as cargo says "Blocking waiting for file lock".
//!
//! A wait registers itself here (a mutex and a push; the thread is woken
//! only when it must report sooner than it planned) and unregisters when it
//! ends, without waiting for anything. The hook runs on the reporting
//! thread; no report of a wait starts once the wait has ended (the thread
//! looks again, after reading the holder's record, just before it calls
//! the hook), but one that started may still be running when it ends: a
//! hook that blocks, or a look at a lock on a server that does not answer,
//! delays other reports, never a wait.
//!
//! [`LockOptions::on_wait`]: crate::LockOptions::on_wait

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::owner::OwnerRecord;
use crate::strategy::{self, Probe};
use crate::vocab::Concrete;

/// A wait hook, as [`LockOptions::on_wait`](crate::LockOptions::on_wait)
/// takes it.
pub(crate) type Hook = Arc<dyn Fn(&Waiting<'_>) + Send + Sync>;

/// A wait hook with its timing.
#[derive(Clone)]
pub(crate) struct OnWait {
    pub(crate) hook: Hook,
    /// The first report comes this long after the wait began...
    pub(crate) first: Duration,
    /// ... and the next ones this long after each other.
    pub(crate) every: Duration,
}

/// What a wait hook ([`LockOptions::on_wait`]) is told about a wait that
/// goes on.
///
/// [`LockOptions::on_wait`]: crate::LockOptions::on_wait
#[derive(Debug)]
#[non_exhaustive]
pub struct Waiting<'a> {
    /// The lock's path.
    pub path: &'a Utf8Path,
    /// Who holds the lock, when its owner record can be read: `None`
    /// between two holders, for a lock without a readable record, or while
    /// another handle of this process holds it or waits for it first.
    pub holder: Option<&'a OwnerRecord>,
    /// How long the wait has lasted.
    pub waited: Duration,
    /// How many reports of this wait came before this one (0 for the
    /// first).
    pub reports: u32,
}

/// One wait that goes on.
struct Entry {
    id: u64,
    path: Utf8PathBuf,
    strategy: Concrete,
    on_wait: OnWait,
    started: Instant,
    next: Instant,
    reports: u32,
}

#[derive(Default)]
struct State {
    waits: Vec<Entry>,
    next_id: u64,
    /// The process whose thread reports (started by its first wait): a
    /// child forked since has no thread, and starts its own.
    running: Option<u32>,
    /// Until when the thread sleeps (`None`: until woken).
    sleeping_until: Option<Instant>,
}

struct Reporter {
    state: Mutex<State>,
    /// Wakes the thread: a wait must be reported sooner.
    changed: Condvar,
}

fn reporter() -> &'static Reporter {
    static REPORTER: OnceLock<Reporter> = OnceLock::new();
    REPORTER.get_or_init(|| Reporter {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    })
}

fn lock(reporter: &Reporter) -> MutexGuard<'_, State> {
    reporter
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A wait being reported; unregisters it when dropped.
pub(crate) struct Reported {
    id: u64,
}

/// Registers a wait for `path` that began now, to report to `on_wait`.
pub(crate) fn start(path: &Utf8Path, strategy: Concrete, on_wait: &OnWait) -> Reported {
    let reporter = reporter();
    let mut state = lock(reporter);
    let id = state.next_id;
    state.next_id += 1;
    let started = Instant::now();
    // (`OnWait`'s durations are clamped: no overflow)
    let next = started + on_wait.first;
    state.waits.push(Entry {
        id,
        path: path.to_owned(),
        strategy,
        on_wait: on_wait.clone(),
        started,
        next,
        reports: 0,
    });
    let me = std::process::id();
    if state.running != Some(me) {
        // Without the thread nothing is reported: a hook is a courtesy,
        // and the wait goes on as without one.
        state.running = std::thread::Builder::new()
            .name("portalock-wait-report".into())
            .spawn(|| run(reporter))
            .ok()
            .map(|_| me);
    } else if state.sleeping_until.is_none_or(|until| next < until) {
        reporter.changed.notify_all();
    }
    Reported { id }
}

impl Drop for Reported {
    fn drop(&mut self) {
        lock(reporter()).waits.retain(|entry| entry.id != self.id);
    }
}

/// The reporting thread: sleeps until a wait is due, reports it, and so on.
fn run(reporter: &'static Reporter) {
    let mut state = lock(reporter);
    loop {
        let now = Instant::now();
        let due = state
            .waits
            .iter_mut()
            .filter(|entry| entry.next <= now)
            .min_by_key(|entry| entry.next);
        if let Some(entry) = due {
            let id = entry.id;
            let (path, strategy, on_wait) =
                (entry.path.clone(), entry.strategy, entry.on_wait.clone());
            let (waited, reports) = (now - entry.started, entry.reports);
            entry.reports += 1;
            entry.next = now + on_wait.every;
            drop(state);
            let holder = strategy::probe(strategy, &path)
                .ok()
                .and_then(Probe::into_record);
            // The wait may have ended while the record was read.
            if lock(reporter).waits.iter().any(|entry| entry.id == id) {
                let waiting = Waiting {
                    path: &path,
                    holder: holder.as_ref(),
                    waited,
                    reports,
                };
                // A panicking hook loses its report, not the thread.
                let _ = catch_unwind(AssertUnwindSafe(|| (on_wait.hook)(&waiting)));
            }
            state = lock(reporter);
            continue;
        }
        let until = state.waits.iter().map(|entry| entry.next).min();
        state.sleeping_until = until;
        state = match until {
            Some(until) => {
                reporter
                    .changed
                    .wait_timeout(state, until.saturating_duration_since(now))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
            None => reporter
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        };
        state.sleeping_until = None;
    }
}
