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
//! Those waiting at the gate sleep in the kernel (a helper thread, one per
//! gate a process waits at, shared by its handles on that lock and ended
//! after ten idle seconds, blocks on the gate for them), so the next head
//! takes over the gate as soon as the last one lets it go. An acquisition
//! that finds the lock free pays one
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
//! therefore looks at the lock every [`patience`] (more often in a short
//! bounded wait), breaks it if it is stale, and once its looks have found
//! the lock free for twice the patience while the gate stayed taken,
//! leaves the queue and tries the lock directly, as it would without a
//! gate. The handle remembers it (until it sees the gate free or the lock
//! held): its next acquisitions, try-once ones included, pass the stuck
//! head at once.
//!
//! **Readers.** A shared `Os` acquisition passes the gate too: one that
//! finds it taken waits for it, and holds it until its shared lock is
//! taken. Readers then do not join the readers a writer at the head waits
//! for, which the kernel would let them do. (`Mkdir` and `Link` readers
//! take the lock itself to register, and so queue as any acquisition.)
//!
//! **What the gate does not order.** `LockedFile`,
//! and waits at more than [`MAX_HELPERS`] gates at once in one process go
//! on as without one. A gate file that is removed (a cleaner of old files)
//! while a handle keeps looking at it is noticed at that handle's next
//! failed claim, and the new one looked at; until then order suffers,
//! exclusion does not.
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
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use std::time::Instant;

use camino::{Utf8Path, Utf8PathBuf};

use crate::fault;
use crate::files;
use crate::holding;
use crate::strategy::{self, Probe};
use crate::sys::{self, Wait};
use crate::vocab::Writers;
use crate::wait::Deadline;

use super::LockFile;

/// A handle's gate file, kept open between acquisitions, and what the
/// handle has seen of a head that may be stuck.
#[derive(Debug)]
pub(super) struct GateFile {
    /// The gate's path, beside the lock.
    path: Utf8PathBuf,
    file: File,
    /// The process that opened it: a child of `fork()` shares the open
    /// file, and with it the lock, so it opens its own.
    pid: u32,
    /// Since when, and until when, this handle's looks have found the lock
    /// free while the gate stayed taken (see [`GateFile::stuck`]).
    free_since: Option<Instant>,
    free_last: Option<Instant>,
}

impl GateFile {
    /// Records a look at the lock made while the gate was taken.
    fn saw(&mut self, free: bool, patience: Duration) {
        if !free {
            return self.forget();
        }
        let now = Instant::now();
        // Looks more than two patiences apart do not make a stretch.
        if self
            .free_last
            .is_none_or(|last| now.duration_since(last) > patience * 2)
        {
            self.free_since = Some(now);
        }
        self.free_last = Some(now);
    }

    /// Whether the head is stuck: the lock has been free, at every look
    /// for twice the patience, the gate taken all along, and the last look
    /// is recent.
    fn stuck(&self, patience: Duration) -> bool {
        match (self.free_since, self.free_last) {
            (Some(since), Some(last)) => {
                last.duration_since(since) >= patience * 2 && last.elapsed() < patience
            }
            _ => false,
        }
    }

    /// The gate was seen free, or the lock taken: no head is stuck.
    fn forget(&mut self) {
        self.free_since = None;
        self.free_last = None;
    }
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
fn open_gate_to_look(path: &Utf8Path, mode: Option<u32>) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    match files::open_with(path, &mut opts) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files::apply_mode(&open_gate(path)?, mode);
            files::open_with(path, &mut opts)
        }
        other => other,
    }
}

/// How long a process waiting at the gate goes between two looks at the
/// lock (or less, to fit two looks in a bounded wait): a head that leaves
/// the lock free for twice this long is stuck, and is passed by.
pub(super) fn patience(poll_interval: Duration) -> Duration {
    (poll_interval * 4).max(Duration::from_millis(500))
}

/// The gate as one acquisition uses it.
pub(super) struct Turnstile<'a> {
    lock: &'a LockFile,
    /// Whether this acquisition goes through a gate (the lock has one, and
    /// the acquisition has not given up on it).
    on: bool,
    /// The handle's gate file while this acquisition uses it (returned to
    /// the handle when it ends).
    cached: Option<GateFile>,
    /// The gate while this acquisition holds it: a file opened for the
    /// claim, or by the helper thread.
    held: Option<File>,
    /// A claim found the gate taken: wait for it, without looking first.
    behind: bool,
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
        let pid = sys::pid();
        let cached = on
            .then(|| holding::lock(&lock.gate).take())
            .flatten()
            .filter(|gate| gate.pid == pid);
        Turnstile {
            lock,
            on,
            cached,
            held: None,
            behind: false,
        }
    }

    /// Before a try of the lock: passes the gate, or waits for it as far
    /// as `deadline` allows (not at all for a try-once acquire).
    pub(super) fn enter(&mut self, deadline: &Deadline) -> AtGate {
        if self.held.is_some() {
            return AtGate::Through;
        }
        if !self.on {
            return AtGate::Through;
        }
        if self.cached.is_none() {
            // Once per handle: the gate's path, and the file to look at.
            let Some(path) = gate_path(&self.lock.path) else {
                return self.skip();
            };
            match open_gate_to_look(&path, self.lock.permissions) {
                Ok(file) => {
                    self.cached = Some(GateFile {
                        path,
                        file,
                        pid: sys::pid(),
                        free_since: None,
                        free_last: None,
                    })
                }
                Err(_) => return self.skip(),
            }
        }
        let Some(gate) = self.cached.as_mut() else {
            return self.skip();
        };
        let taken = if self.behind {
            Ok(true)
        } else {
            sys::gate_taken(&gate.file)
        };
        match taken {
            Ok(false) => {
                gate.forget();
                AtGate::Through
            }
            Ok(true) if deadline.expired() => self.stuck_head_at_a_try(),
            Ok(true) => self.wait(deadline),
            Err(_) => self.skip(),
        }
    }

    /// A try-once acquire (or the async API's polling) that finds the gate
    /// taken: the lock counts as held, unless this handle's looks have
    /// found the lock free for twice the patience while the gate stayed
    /// taken (the head is stuck): then it is tried without the gate.
    fn stuck_head_at_a_try(&mut self) -> AtGate {
        if self.head_is_stuck(&mut crate::stale::LastSeen::default()) {
            return self.skip();
        }
        AtGate::Held
    }

    /// Looks at the lock from behind the gate, records what it saw in the
    /// handle's memory, and says whether the head is stuck (see
    /// [`GateFile::stuck`]). The lock looks free if it is, or if it was
    /// stale and is broken here: a head that does not break stale locks,
    /// or is stopped, would otherwise keep the queue behind a dead holder;
    /// one that waits as it should takes a lock broken here at once.
    fn head_is_stuck(&mut self, seen: &mut crate::stale::LastSeen) -> bool {
        let free = matches!(
            strategy::probe(self.lock.strategy, &self.lock.path),
            Ok(Probe::Free)
        ) || (self.lock.break_stale
            && !strategy::can_block(self.lock.strategy)
            && self.lock.break_if_stale(seen).unwrap_or(false));
        let patience = patience(self.lock.poll_interval);
        self.cached.as_mut().is_some_and(|gate| {
            gate.saw(free, patience);
            gate.stuck(patience)
        })
    }

    /// Whether this acquisition goes through a gate (it has one, and has
    /// not given up on it).
    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// Whether this acquisition holds the gate: it is the head of the
    /// queue.
    pub(super) fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// After a try found the lock held, without the gate: takes the gate
    /// to wait at the head of the queue. If another process took it first,
    /// the next [`enter`](Turnstile::enter) waits behind it.
    pub(super) fn claim(&mut self) {
        // A file of its own for the claim, unlocked and closed when the gate
        // goes: the handle's kept file only ever looks. A file that a child
        // forked later could share never holds the gate: if this process
        // were killed at the head, the child's copy would keep it.
        let Some(path) = self.cached.as_ref().map(|gate| gate.path.clone()) else {
            return;
        };
        let Ok(file) = open_gate(&path) else {
            self.skip();
            return;
        };
        // (made here if it was removed since the handle first looked)
        files::apply_mode(&file, self.lock.permissions);
        match sys::gate_lock(&file, Wait::Try) {
            Ok(()) => {
                self.held = Some(file);
                self.taken();
            }
            Err(e) if sys::lock_contended(&e, &file) => {
                self.behind = true;
                // The kept file looked free: if it is not the gate the path
                // names any more (removed and made again), look through
                // the new one from now on.
                if let Some(gate) = self.cached.as_mut() {
                    let same = files::file_id(&gate.file).ok() == files::file_id(&file).ok();
                    if !same {
                        if let Ok(look) = open_gate_to_look(&path, self.lock.permissions) {
                            gate.file = look;
                        }
                    }
                }
            }
            Err(_) => {
                self.skip();
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
            return self.skip();
        }
        AtGate::Through
    }

    /// Goes on without the gate for the rest of this acquisition.
    fn skip(&mut self) -> AtGate {
        self.let_go();
        self.on = false;
        AtGate::Through
    }

    fn let_go(&mut self) {
        if let Some(file) = self.held.take() {
            // Unlocked before it is closed: a child forked meanwhile may
            // share the open file, and closing alone would leave it the
            // gate.
            let _ = sys::gate_unlock(&file);
        }
    }

    /// Waits at the gate: the helper thread of the gate's path blocks on
    /// it (in the kernel, so that it is woken as soon as the gate is let
    /// go) and hands over its locked file, while this thread looks at the
    /// lock every [`patience`] (or more often, to fit two looks before the
    /// deadline) and passes a stuck head by.
    fn wait(&mut self, deadline: &Deadline) -> AtGate {
        // Often this process has just released the lock and asked again:
        // its release woke the head of the queue, and the kernel likes to
        // wake a thread on the CPU of the thread that woke it, this one.
        // Giving the CPU up here lets the head take the lock now rather than
        // after this process has gone to sleep at the gate (measured: a
        // fair `Os` hand-off went from about 58 to 37 us on two CPUs; see
        // BENCHMARKS.md). Where nothing else waits for this CPU, it costs
        // one system call.
        std::thread::yield_now();
        let patience = patience(self.lock.poll_interval);
        let mut seen = crate::stale::LastSeen::default();
        // A head already seen stuck by earlier acquisitions of this handle:
        // one look now may be enough to pass it by.
        if self.cached.as_ref().is_some_and(|g| g.free_last.is_some())
            && self.head_is_stuck(&mut seen)
        {
            return self.skip();
        }
        let Some(helper) = self
            .cached
            .as_ref()
            .and_then(|gate| Helper::for_path(&gate.path))
        else {
            return self.skip();
        };
        let mut state = holding::lock(&helper.state);
        state.wanted = true;
        state.failed = false;
        helper.woken.notify_all();
        // When the current nap ends: a wait that can be cancelled wakes
        // more often to look at its tokens, and only looks at the lock
        // once the nap is over.
        let mut nap_end: Option<Instant> = None;
        let end = loop {
            if let Some(file) = state.file.take() {
                self.held = Some(file);
                break Some(AtGate::Through);
            }
            if state.failed || state.ended {
                // It could not open or lock the gate: go on without it.
                break None;
            }
            let nap = match deadline.remaining() {
                Some(left) if left.is_zero() => break Some(AtGate::Held),
                Some(left) => (left / 3).clamp(Duration::from_millis(1), patience),
                None => patience,
            };
            let until = *nap_end.get_or_insert_with(|| Instant::now() + nap);
            let left = until.saturating_duration_since(Instant::now());
            let slice = deadline.slice(Some(left)).unwrap_or(left);
            let (next, waited) = match helper.woken.wait_timeout(state, slice) {
                Ok(woken) => woken,
                Err(poisoned) => poisoned.into_inner(),
            };
            state = next;
            if !waited.timed_out() || state.file.is_some() || state.failed {
                continue;
            }
            if Instant::now() < until && !deadline.expired() {
                continue;
            }
            nap_end = None;
            drop(state);
            let stuck = self.head_is_stuck(&mut seen);
            state = holding::lock(&helper.state);
            if stuck && state.file.is_none() {
                // The head is stuck: pass it by (and remember, for the
                // next acquisitions of this handle, until the gate is seen
                // free or the lock held).
                break None;
            }
            if deadline.expired() && state.file.is_none() {
                break Some(AtGate::Held);
            }
        };
        state.wanted = false;
        drop(state);
        self.behind = false;
        match end {
            Some(AtGate::Through) => self.taken(),
            Some(AtGate::Held) => AtGate::Held,
            None => self.skip(),
        }
    }
}

/// The thread that blocks on one gate for this process's waits at it: one
/// per gate path, shared by every handle on that path (the registry lets
/// one of them at a time wait), started at the first wait and ended after
/// [`HELPER_IDLE`] without one.
#[derive(Debug)]
struct Helper {
    state: Mutex<HelperShared>,
    woken: Condvar,
}

#[derive(Debug, Default)]
struct HelperShared {
    /// A wait wants the gate.
    wanted: bool,
    /// The gate, locked, for the wait that wants it.
    file: Option<File>,
    /// The gate could not be opened or locked for the last wait.
    failed: bool,
    /// The thread has ended (idle): a new one serves the next wait.
    ended: bool,
}

/// This process's helpers: the gate's path, the process that started the
/// thread (a child of `fork()` inherits the table, not the threads), and
/// the helper.
type Helpers = Vec<(Utf8PathBuf, u32, Arc<Helper>)>;

static HELPERS: Mutex<Helpers> = Mutex::new(Vec::new());

/// The most helper threads (gates waited at) a process keeps at once;
/// beyond, waits go on without a gate.
const MAX_HELPERS: usize = 16;

/// How long a helper waits for a next wait before it ends.
const HELPER_IDLE: Duration = Duration::from_secs(10);

impl Helper {
    /// The helper of the gate at `path`, started if there is none.
    fn for_path(path: &Utf8Path) -> Option<Arc<Helper>> {
        let pid = sys::pid();
        let mut helpers = holding::lock(&HELPERS);
        helpers.retain(|(_, owner, helper)| *owner == pid && !holding::lock(&helper.state).ended);
        if let Some((_, _, helper)) = helpers.iter().find(|(p, _, _)| p == path) {
            return Some(helper.clone());
        }
        if helpers.len() >= MAX_HELPERS {
            return None;
        }
        let helper = Arc::new(Helper {
            state: Mutex::new(HelperShared::default()),
            woken: Condvar::new(),
        });
        let (thread_helper, thread_path) = (helper.clone(), path.to_owned());
        std::thread::Builder::new()
            .name("portalock-gate".into())
            .spawn(move || serve(&thread_path, &thread_helper))
            .ok()?;
        helpers.push((path.to_owned(), pid, helper.clone()));
        Some(helper)
    }
}

/// The helper thread: whenever a wait wants the gate, blocks on it and
/// hands the locked file over, or lets it go if the wait is over; ends
/// after [`HELPER_IDLE`] without a wait.
fn serve(path: &Utf8Path, helper: &Helper) {
    loop {
        let mut shared = holding::lock(&helper.state);
        while !shared.wanted {
            let (next, waited) = match helper.woken.wait_timeout(shared, HELPER_IDLE) {
                Ok(woken) => woken,
                Err(poisoned) => poisoned.into_inner(),
            };
            shared = next;
            if waited.timed_out() && !shared.wanted {
                shared.ended = true;
                return;
            }
        }
        drop(shared);
        let locked = open_gate(path).ok().filter(|file| loop {
            match sys::gate_lock(file, Wait::Block) {
                Ok(()) => break true,
                // A signal handler installed without `SA_RESTART`.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        });
        let mut shared = holding::lock(&helper.state);
        match locked {
            Some(file) if shared.wanted => shared.file = Some(file),
            // Nobody waits for it any more: let it go (unlocked before it
            // is closed, as in `let_go`).
            Some(file) => {
                let _ = sys::gate_unlock(&file);
            }
            None => shared.failed = true,
        }
        shared.wanted = false;
        drop(shared);
        helper.woken.notify_all();
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
