//! The turnstile: a fair hand-off between processes.
//!
//! Without it, a process that releases a lock and asks for it again at
//! once takes it back before a process that was waiting has woken up (the
//! kernel wakes a waiter on release, but the releaser is already running):
//! a process that loops over work under a lock starves every other.
//!
//! Beside each lock is a gate, `.<name>.gate`: an empty file on which
//! processes take an exclusive OS lock (on Linux an open-file-description
//! lock, `F_OFD_SETLK`, which can be looked at without taking it;
//! elsewhere `flock` or `LockFileEx`). An acquisition:
//!
//! 1. looks at the gate: if another process holds it, somebody is waiting
//!    at the head of the queue, and this acquisition waits for the gate
//!    (a try-once acquire says the lock is held);
//! 2. tries the lock, once, without blocking;
//! 3. if the lock is held, takes the gate and waits for the lock while
//!    holding it: it is now the head of the queue;
//! 4. once it holds the lock, it lets the gate go.
//!
//! A releaser that asks again finds the head of the queue at the gate and
//! waits behind it; the head, woken by the release, takes the lock.
//! Those waiting at the gate sleep in the kernel (a helper thread of the
//! handle, started at its first wait at a gate and kept for its life,
//! blocks on the gate for them), so the next head takes over the gate as
//! soon as the last one lets it go. An acquisition that finds the lock free pays one
//! system call for the gate on Linux (the look), two elsewhere. Between the
//! look and the try, a waiter may take the gate: that acquisition then
//! passes it once, and the next one waits behind it (a waiter gets the
//! lock within two hand-offs).
//!
//! **The gate orders; it never excludes.** Exclusion is the lock's own
//! protocol, unchanged; the gate only decides who tries first. Anything
//! that goes wrong with the gate costs fairness, never safety: a gate that
//! cannot be opened or locked (a read-only directory, a file system
//! without OS locks) is skipped, and the acquisition goes on as before.
//!
//! **Crash safety.** The gate is an OS lock, which the kernel drops when
//! its holder dies: a waiter killed at the head of the queue leaves the
//! queue at once, and blocks nobody. (The head locks a file it opened for
//! that claim alone, unlocked explicitly before it is closed, so that a
//! child forked meanwhile does not keep the gate.) A head that stops
//! without dying (`SIGSTOP`, a debugger), or that does not break stale
//! locks, would hold up the queue; a process waiting at the gate
//! therefore looks at the lock every [`patience`], breaks it if it is
//! stale, and if it found the lock free at two looks in a row while the
//! gate stayed taken, leaves the queue and tries the lock directly, as it
//! would without a gate. Try-once acquires do the same across calls: once
//! they have seen the lock free for twice the patience while the gate
//! stayed taken, they try it.
//!
//! **What the gate does not order.** Shared (reader) locks, `LockedFile`,
//! and waits of handles beyond the [`MAX_HELPERS`] of a process that have
//! waited at a gate go on as without one. A gate file that is removed
//! while a process keeps it open splits the queue until the process opens
//! it again; order suffers, exclusion does not.
//!
//! **Where there is no gate.** A lock on a network file system has none:
//! an OS lock there goes through the server's lock manager, which costs
//! two round trips a cycle and stops answering for its grace period after
//! a server restart (`Mkdir` and `Link` exist to need no lock manager).
//! Nor has a lock that
//! removes its file on release (it leaves nothing behind), a handle opened
//! with [`LockOptions::fair(false)`](super::LockOptions::fair), or a
//! platform without OS locks. A try-once acquire that finds the gate taken
//! says the lock is held: it is promised to the process at the head.

use std::fs::{File, OpenOptions};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::fault;
use crate::files;
use crate::holding;
use crate::strategy::{self, Probe};
use crate::sys::{self, Wait};
use crate::vocab::Writers;
use crate::wait::Deadline;

use super::LockFile;

/// A handle's gate file, kept open between acquisitions.
#[derive(Debug)]
pub(super) struct GateFile {
    file: File,
    /// The process that opened it: a child of `fork()` shares the open
    /// file, and with it the lock, so it opens its own.
    pid: u32,
    /// A helper still blocked on the gate for an earlier wait.
    helper: Option<Helper>,
    /// Since when try-once acquires have found the lock free while the
    /// gate stayed taken.
    free_since: Option<std::time::Instant>,
}

/// The path of the gate of the lock at `path`, beside it; `None` if the
/// path has no file name.
pub(crate) fn gate_path(path: &Utf8Path) -> Option<Utf8PathBuf> {
    let dir = path.parent()?;
    let prefix = strategy::private_prefix(path)?;
    Some(dir.join(format!("{prefix}gate")))
}

/// Opens the gate to take it (created if missing): for writing, which an
/// exclusive OS lock needs.
fn open_gate(path: &Utf8Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    files::open_with(path, &mut opts)
}

/// Opens the gate to look at it, for reading only: the handle keeps this
/// file open for its life, and a file kept open for writing would stop the
/// file system from being remounted read-only. Created (and closed) first
/// if missing.
fn open_gate_to_look(path: &Utf8Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    match files::open_with(path, &mut opts) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            drop(open_gate(path)?);
            files::open_with(path, &mut opts)
        }
        other => other,
    }
}

/// How long a process waiting at the gate goes between two looks at the
/// lock: a head that leaves the lock free for two looks in a row is stuck,
/// and is passed by.
pub(super) fn patience(poll_interval: Duration) -> Duration {
    (poll_interval * 4).max(Duration::from_millis(500))
}

/// The gate as one acquisition uses it.
pub(super) struct Turnstile<'a> {
    lock: &'a LockFile,
    path: Option<Utf8PathBuf>,
    /// The handle's gate file while this acquisition uses it (returned to
    /// the handle when it ends).
    cached: Option<GateFile>,
    /// The gate while this acquisition holds it: the handle's file, or
    /// one that a helper thread opened and locked.
    held: Option<Held>,
}

enum Held {
    /// A file opened for this claim, or by a helper thread.
    Own(File),
}

/// What waiting at the gate came to.
pub(super) enum AtGate {
    /// This acquisition holds the gate, or goes on without it: try the
    /// lock.
    Through,
    /// The gate is taken and the acquisition was a try, or its deadline
    /// passed: the lock counts as held.
    Held,
}

impl<'a> Turnstile<'a> {
    /// The gate for one acquisition of `lock`: none where it has none (see
    /// the module's docs).
    pub(super) fn new(lock: &'a LockFile) -> Self {
        let on = lock.fair
            && sys::HAS_OS_LOCKS
            && !lock.remove_on_release
            && lock.writers() == Writers::ThisMachine;
        let path = if on { gate_path(&lock.path) } else { None };
        let pid = crate::sys::pid();
        let cached = path
            .as_ref()
            .and_then(|_| holding::lock(&lock.gate).take())
            .filter(|gate| gate.pid == pid);
        Turnstile {
            lock,
            path,
            cached,
            held: None,
        }
    }

    /// Before a try of the lock: passes the gate, or waits for it as far
    /// as `deadline` allows (not at all for a try-once acquire).
    pub(super) fn enter(&mut self, deadline: &Deadline) -> AtGate {
        if self.held.is_some() {
            return AtGate::Through;
        }
        let Some(path) = self.path.clone() else {
            return AtGate::Through;
        };
        if self.cached.is_none() {
            match open_gate_to_look(&path) {
                Ok(file) => {
                    self.cached = Some(GateFile {
                        file,
                        pid: crate::sys::pid(),
                        helper: None,
                        free_since: None,
                    })
                }
                Err(_) => return self.skip(),
            }
        }
        let Some(gate) = &self.cached else {
            return self.skip();
        };
        match sys::gate_taken(&gate.file) {
            Ok(false) => AtGate::Through,
            Ok(true) => {
                if deadline.expired() {
                    return self.stuck_head_at_a_try();
                }
                self.wait(path, deadline)
            }
            Err(_) => self.skip(),
        }
    }

    /// A try-once acquire (or the async API's polling) that finds the gate
    /// taken: the lock counts as held, unless the lock has been seen free
    /// by such tries for twice the patience while the gate stayed taken
    /// (the head is stuck): then it is tried without the gate.
    fn stuck_head_at_a_try(&mut self) -> AtGate {
        let free = matches!(
            strategy::probe(self.lock.strategy, &self.lock.path),
            Ok(Probe::Free)
        );
        let patience = patience(self.lock.poll_interval);
        let Some(gate) = self.cached.as_mut() else {
            return AtGate::Held;
        };
        if !free {
            gate.free_since = None;
            return AtGate::Held;
        }
        let since = *gate.free_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= patience * 2 {
            gate.free_since = None;
            return self.skip();
        }
        AtGate::Held
    }

    /// Whether this acquisition goes through a gate (it has one, and has
    /// not given up on it).
    pub(super) fn is_on(&self) -> bool {
        self.path.is_some()
    }

    /// Whether this acquisition holds the gate: it is the head of the
    /// queue.
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// After a try found the lock held, without the gate: takes the gate
    /// to wait at the head of the queue. `false` if another process took
    /// it first ([`enter`](Turnstile::enter) then waits behind it).
    pub(super) fn claim(&mut self) -> bool {
        // A file of its own for the claim, unlocked and closed when the gate
        // goes: the handle's kept file only ever looks. A file that a child
        // forked later could share never holds the gate: if this process
        // were killed at the head, the child's copy would keep it.
        let Some(path) = self.path.clone() else {
            return false;
        };
        let Ok(file) = open_gate(&path) else {
            self.skip();
            return false;
        };
        match sys::gate_lock(&file, Wait::Try) {
            Ok(()) => {
                self.held = Some(Held::Own(file));
                self.taken();
                true
            }
            Err(e) if crate::flock::contended(&e, &file) => false,
            Err(_) => {
                self.skip();
                false
            }
        }
    }

    /// After the lock was taken: lets the gate go.
    pub(super) fn pass(&mut self) {
        if self.held.is_some() {
            // A fault here stops or kills a holder that has not let the
            // gate go; an error injected here changes nothing (the gate
            // goes anyway).
            let _ = fault::point("gate.passed");
        }
        self.let_go();
    }

    fn taken(&mut self) -> AtGate {
        if fault::point("gate.taken").is_err() {
            // The gate could not be used: go on without it.
            self.let_go();
            self.path = None;
        }
        AtGate::Through
    }

    /// Goes on without the gate for the rest of this acquisition.
    fn skip(&mut self) -> AtGate {
        self.let_go();
        self.path = None;
        AtGate::Through
    }

    fn let_go(&mut self) {
        if let Some(Held::Own(file)) = self.held.take() {
            // Unlocked before it is closed: a child forked meanwhile may
            // share the open file, and closing alone would leave it the
            // gate.
            let _ = sys::gate_unlock(&file);
        }
    }

    /// Waits at the gate: the handle's helper thread blocks on it (in the
    /// kernel, so that it is woken as soon as the gate is let go) and
    /// hands over its locked file, while this thread looks at the lock
    /// every [`patience`] and at the deadline. The helper is the handle's
    /// for its life: started at its first wait at a gate, it serves every
    /// later one. If a wait ends while the helper is blocked, the helper
    /// lets the gate go as soon as it gets it, unless a new wait wants it.
    fn wait(&mut self, path: Utf8PathBuf, deadline: &Deadline) -> AtGate {
        let Some(gate) = self.cached.as_mut() else {
            return self.skip();
        };
        if gate.helper.is_none() {
            gate.helper = Helper::start(path);
        }
        let Some(helper) = gate.helper.as_ref().map(Helper::share) else {
            return self.skip();
        };
        let patience = patience(self.lock.poll_interval);
        let mut free_looks = 0;
        let mut seen = crate::stale::LastSeen::default();
        let mut state = holding::lock(&helper.state);
        state.wanted = true;
        state.failed = false;
        helper.woken.notify_all();
        let end = loop {
            if let Some(file) = state.file.take() {
                self.held = Some(Held::Own(file));
                break Some(AtGate::Through);
            }
            if state.failed || state.closed {
                // It could not open or lock the gate: go on without it.
                break None;
            }
            let nap = match deadline.remaining() {
                Some(left) if left.is_zero() => break Some(AtGate::Held),
                Some(left) => left.min(patience),
                None => patience,
            };
            let (next, waited) = match helper.woken.wait_timeout(state, nap) {
                Ok(woken) => woken,
                Err(poisoned) => poisoned.into_inner(),
            };
            state = next;
            if !waited.timed_out() || state.file.is_some() || state.failed {
                continue;
            }
            if deadline.expired() {
                break Some(AtGate::Held);
            }
            drop(state);
            // Free, or stale and broken here: a head that waits as it
            // should takes it now; one that does not is passed by at the
            // next look. (A head that does not break stale locks, or is
            // stopped, would otherwise keep the queue behind a dead
            // holder.)
            let free = matches!(
                strategy::probe(self.lock.strategy, &self.lock.path),
                Ok(Probe::Free)
            ) || (self.lock.break_stale
                && !strategy::can_block(self.lock.strategy)
                && self.lock.break_if_stale(&mut seen).unwrap_or(false));
            state = holding::lock(&helper.state);
            free_looks = if free { free_looks + 1 } else { 0 };
            if free_looks >= 2 && state.file.is_none() {
                // The head is stuck: pass it by.
                break None;
            }
        };
        state.wanted = false;
        drop(state);
        match end {
            Some(AtGate::Through) => self.taken(),
            Some(AtGate::Held) => AtGate::Held,
            None => self.skip(),
        }
    }
}

/// A handle's thread that blocks on the gate for its waits.
#[derive(Debug)]
pub(super) struct Helper {
    state: std::sync::Arc<HelperState>,
    woken: std::sync::Arc<Condvar>,
}

#[derive(Debug, Default)]
struct HelperShared {
    /// A wait wants the gate.
    wanted: bool,
    /// The gate, locked, for the wait that wants it.
    file: Option<File>,
    /// The gate could not be opened or locked for the last wait.
    failed: bool,
    /// The handle is gone: the thread ends (once it is not blocked).
    closed: bool,
}

type HelperState = Mutex<HelperShared>;

/// Helper threads of this process that have not ended.
static HELPERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most helper threads a process keeps (see [`Helper::start`]).
const MAX_HELPERS: usize = 16;

impl Helper {
    /// The helper thread of one handle. A process keeps at most
    /// [`MAX_HELPERS`]: a handle dropped while its helper is blocked
    /// leaves it blocked until the gate frees; beyond that many, waits go
    /// on without the gate.
    fn start(path: Utf8PathBuf) -> Option<Helper> {
        use std::sync::atomic::Ordering;
        if HELPERS.fetch_add(1, Ordering::Relaxed) >= MAX_HELPERS {
            HELPERS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let state = std::sync::Arc::new(HelperState::default());
        let woken = std::sync::Arc::new(Condvar::new());
        let (thread_state, thread_woken) = (state.clone(), woken.clone());
        let spawned = std::thread::Builder::new()
            .name("portalock-gate".into())
            .spawn(move || {
                serve(&path, &thread_state, &thread_woken);
                HELPERS.fetch_sub(1, Ordering::Relaxed);
            })
            .ok();
        if spawned.is_none() {
            HELPERS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Helper { state, woken })
    }

    fn share(&self) -> Helper {
        Helper {
            state: self.state.clone(),
            woken: self.woken.clone(),
        }
    }
}

/// The helper thread: whenever a wait wants the gate, blocks on it and
/// hands the locked file over, or lets it go if the wait is over.
fn serve(path: &Utf8Path, state: &HelperState, woken: &Condvar) {
    loop {
        let mut shared = holding::lock(state);
        while !shared.wanted && !shared.closed {
            shared = match woken.wait(shared) {
                Ok(next) => next,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        if shared.closed {
            return;
        }
        drop(shared);
        let locked = open_gate(path)
            .ok()
            .filter(|file| sys::gate_lock(file, Wait::Block).is_ok());
        let mut shared = holding::lock(state);
        match locked {
            Some(file) if shared.wanted && !shared.closed => shared.file = Some(file),
            // Nobody waits for it any more: let it go (unlocked before it
            // is closed, as in `let_go`).
            Some(file) => {
                let _ = sys::gate_unlock(&file);
            }
            None => shared.failed = true,
        }
        shared.wanted = false;
        drop(shared);
        woken.notify_all();
    }
}

impl Drop for GateFile {
    fn drop(&mut self) {
        if let Some(helper) = &self.helper {
            holding::lock(&helper.state).closed = true;
            helper.woken.notify_all();
        }
    }
}

impl Drop for Turnstile<'_> {
    fn drop(&mut self) {
        self.let_go();
        if let Some(gate) = self.cached.take() {
            *holding::lock(&self.lock.gate) = Some(gate);
        }
    }
}
