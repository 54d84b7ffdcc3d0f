//! [`LockFile`], the handle on a lock identified by its path.
//!
//! Read bottom-up: [`options`] opens a handle; [`acquire`] takes the lock
//! (the wait and its breaking of stale locks, [`breaking`]); [`release`]
//! gives it back; [`guard`] holds it for a scope; [`shared`] takes it as a
//! reader; [`found`] tells which strategy took a lock found at a path;
//! [`turnstile`] keeps waiters in order. This file holds the handle itself
//! and its questions (who holds it, is it still ours).

mod acquire;
mod breaking;
mod fence;
mod found;
mod guard;
mod options;
mod readers;
mod release;
mod report;
mod shared;
mod turnstile;
mod waiter;

pub use guard::{lock_file, LockGuard, OwnedLockGuard};
pub use options::LockOptions;
pub use report::Waiting;
pub use shared::SharedGuard;

use options::detect;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files::Look;
use crate::filesystem::FileSystem;
use crate::holding::{self, Holding, OnLost};
use crate::owner::{OwnerRecord, RecordedProcess};
use crate::registry::registry;
use crate::strategy::{self, Probe};
use crate::vocab::{Concrete, LockStrategy, Writers};

/// The longest pause between two attempts on a lock held by another process,
/// unless [`LockOptions::poll_interval`] says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What [`LockFile::status`] found.
///
/// The enum is `#[non_exhaustive]`: a `match` on it needs a `_` arm.
///
/// # Examples
///
/// ```
/// use portalock::{LockFile, LockStatus};
///
/// let dir = tempfile::tempdir()?;
/// let lock = LockFile::new(dir.path().join("x.lock"))?;
/// let _guard = lock.lock()?;
/// let line = match lock.status()? {
///     LockStatus::Free => "free".to_owned(),
///     LockStatus::Held(Some(owner)) => format!("held by pid {} on {}", owner.pid, owner.hostname),
///     LockStatus::Held(None) => "held by an unknown owner".to_owned(),
///     _ => "unknown".to_owned(),
/// };
/// assert!(line.starts_with(&format!("held by pid {}", std::process::id())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// A value returned once per look: its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LockStatus {
    /// Nobody holds the lock.
    Free,
    /// Somebody holds the lock; their owner record, when it could be read.
    Held(Option<OwnerRecord>),
    /// Readers hold a `Mkdir` or `Link` lock shared
    /// ([`LockFile::lock_shared`]); the owner record of each, when it could
    /// be read. (Readers of an `Os` lock keep no records: such a lock reads
    /// as free.)
    Shared(Vec<Option<OwnerRecord>>),
}

/// A cross-process lock identified by its path.
///
/// Two handles on one path exclude each other whether they live in one
/// process or in two. A handle is either unlocked or locked; locking is not
/// reentrant: acquiring again through a handle that holds the lock waits
/// (and so times out, or, without a timeout, waits forever), like
/// `std::sync::Mutex` or Python's `threading.Lock`.
///
/// Any thread may release a lock taken by another thread of the same
/// process. Dropping a handle that holds its lock releases it.
///
/// After `fork()`, the child's copy of a handle is in an undefined state:
/// do not use it.
///
/// # Examples
///
/// ```
/// use portalock::{LockFile, LockStrategy};
///
/// let dir = tempfile::tempdir()?;
/// let lock = LockFile::with_strategy(dir.path().join("build.lock"), LockStrategy::Mkdir)?;
/// {
///     let _guard = lock.lock()?;
///     assert!(lock.is_held());
///     // ... the critical section ...
/// }
/// assert!(!lock.is_held());
///
/// // The state-machine style, as in Python's `locket`:
/// lock.acquire()?;
/// lock.release()?;
/// assert!(matches!(lock.release(), Err(portalock::Error::NotLocked { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a LockFile that holds its lock releases it when dropped"]
pub struct LockFile {
    path: Utf8PathBuf,
    strategy: Concrete,
    /// Inspected at open for `Auto` and `Os`.
    file_system: Option<FileSystem>,
    /// How a holder looks at the lock's name on its file system: `lstat`
    /// only where that file system is local (from `file_system`, or looked
    /// up the first time it matters).
    look: std::sync::OnceLock<Look>,
    sync: bool,
    owner_pid: Option<u32>,
    remove_on_release: bool,
    timeout: Option<Duration>,
    poll_interval: Duration,
    break_stale: bool,
    grace: Duration,
    lease: Option<Duration>,
    on_lost: Option<OnLost>,
    on_wait: Option<report::OnWait>,
    /// The permission bits of the artifacts it makes (Unix).
    permissions: Option<u32>,
    /// Cancels every wait of this handle.
    cancel: Option<crate::wait::CancelToken>,
    /// Whether each acquisition gets a fencing token.
    fencing: bool,
    /// Whether an exclusive acquisition waits for the lock's readers (see
    /// [`readers`]): `Mkdir` and `Link` locks, but not a reader's own
    /// registration.
    readers: bool,
    /// Unique in this process; the registry's claim on the path.
    id: u64,
    held: Mutex<Option<Arc<Holding>>>,
    /// The `Os` lock file, kept open between acquisitions.
    os_file: Mutex<Option<strategy::os::Open>>,
    /// Whether acquisitions pass through the turnstile (see
    /// [`turnstile`]).
    fair: bool,
    /// The turnstile's gate file, kept open between acquisitions.
    gate: Mutex<Option<turnstile::GateFile>>,
    /// When a wait of this handle last removed what killed `Link` waiters
    /// left (see `waiter::SWEEP_EVERY`).
    swept: Mutex<Option<std::time::Instant>>,
}

impl fmt::Debug for LockFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockFile")
            .field("path", &self.path)
            .field("strategy", &self.strategy)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl LockFile {
    /// A handle on the lock at `path` with the default options.
    ///
    /// # Errors
    ///
    /// As [`LockOptions::open`].
    pub fn new(path: impl AsRef<Path>) -> Result<LockFile> {
        LockOptions::new().open(path)
    }

    /// A handle on the lock at `path` taken with `strategy`.
    ///
    /// # Errors
    ///
    /// As [`LockOptions::open`].
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::with_strategy(dir.path().join("x.lock"), LockStrategy::Link)?;
    /// assert_eq!(lock.strategy(), LockStrategy::Link);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_strategy(path: impl AsRef<Path>, strategy: LockStrategy) -> Result<LockFile> {
        LockOptions::new().strategy(strategy).open(path)
    }

    /// A builder for handles with other options.
    pub fn options() -> LockOptions {
        LockOptions::new()
    }

    /// The absolute lock path.
    pub fn path(&self) -> &Utf8Path {
        &self.path
    }

    /// The strategy this handle locks with; never
    /// [`Auto`](LockStrategy::Auto), which is resolved when the handle is
    /// opened.
    pub fn strategy(&self) -> LockStrategy {
        self.strategy.into()
    }

    /// The file system that holds the lock's directory (inspected when the
    /// handle was opened, for [`Auto`](LockStrategy::Auto) and
    /// [`Os`](LockStrategy::Os) handles; now, for the others).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file system cannot be inspected.
    pub fn file_system(&self) -> Result<FileSystem> {
        match &self.file_system {
            Some(fs) => Ok(fs.clone()),
            None => detect(&self.path),
        }
    }

    /// The longest pause between two looks at a lock held by another
    /// process.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The timeout [`acquire`](LockFile::acquire) and
    /// [`lock`](LockFile::lock) use (`None`: wait forever).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Starts `command` under the lock this handle holds, so that the lock
    /// lasts as long as the command runs, even if this process dies first
    /// (the OOM killer, `kill -9`, `timeout -s KILL`): what `portalock run`
    /// does. Wait for the returned child, then release the lock.
    ///
    /// Before the command starts, the owner record names it
    /// ([`OwnerRecord::command`]), and the lock counts as alive while this
    /// process or the command runs:
    ///
    /// - [`Os`](LockStrategy::Os) (Unix): the command also inherits the
    ///   open file that holds the lock, as with util-linux `flock(1)`, so
    ///   the kernel keeps the lock while either process has it open (and
    ///   any process the command starts that keeps the descriptor).
    /// - [`Mkdir`](LockStrategy::Mkdir), [`Link`](LockStrategy::Link): the
    ///   lock stays until released or broken, and it is not stale while
    ///   the command runs. On Unix the command waits, between its fork and
    ///   its exec, until its record names it (an exec keeps the PID and the
    ///   start time): there is no moment at which it runs under a record
    ///   that does not name it, and if this process dies before that, the
    ///   command never runs.
    /// - With a [lease](LockOptions::lease), the lease governs: if nobody
    ///   refreshes it (this process died), the lock expires after one
    ///   lease, even though the command still runs.
    /// - Windows: an inherited handle does not carry a `LockFileEx` lock,
    ///   so an `Os` lock lasts only as long as this process; `Mkdir` and
    ///   `Link` records name the command just after it has started.
    ///
    /// The record names one command: a second `spawn` names the newer one
    /// in place of the first. On Unix the `Command` keeps the gate, disarmed:
    /// a later `spawn` or `status` of that same `Command` is a plain one,
    /// not under the lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle holds nothing; [`Error::Io`] if
    /// the command cannot be started (its kind tells why: `NotFound` for a
    /// program that does not exist) or the record cannot name it (then the
    /// command does not run).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::{Command, Stdio};
    /// use portalock::{LockFile, LockStrategy};
    /// # // The job is this example's own program, run again (and doing
    /// # // nothing there): a program that exists on every platform.
    /// # if std::env::var_os("PORTALOCK_DOC_JOB").is_some() {
    /// #     return Ok(());
    /// # }
    /// # let job = std::env::current_exe()?;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::with_strategy(dir.path().join("job.lock"), LockStrategy::Mkdir)?;
    /// lock.acquire()?;
    /// let mut command = Command::new(job);
    /// # command.env("PORTALOCK_DOC_JOB", "1");
    /// command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    /// let mut child = lock.spawn(&mut command)?;
    /// let owner = lock.owner()?.expect("a record");
    /// assert_eq!(owner.command.map(|c| c.pid), Some(child.id()));
    /// assert!(child.wait()?.success());
    /// lock.release()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(&self, command: &mut std::process::Command) -> Result<std::process::Child> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        let os_file = holding.os_file();
        let keep: Vec<&std::fs::File> = os_file.iter().map(|f| &**f).collect();
        let mut name_it = |pid: u32| {
            fault::point("spawn.gate")?;
            let start = crate::owner::start_of(pid);
            holding.rewrite(|record| record.command = Some(RecordedProcess { pid, start }))?;
            fault::point("spawn.named")
        };
        crate::sys::spawn_gated(command, &keep, &mut name_it).map_err(|e| {
            // Named, perhaps, but not started: the record names nobody.
            let _ = holding.rewrite(|record| record.command = None);
            Error::io(&self.path, Op::Spawn, e)
        })
    }

    /// Checks that the lock this handle holds is still its own: not broken
    /// (a lease that went unrefreshed, a forced break) and not replaced.
    ///
    /// Call it before acting on what the lock protects, when a stall could
    /// have outlasted a lease. The check costs a `stat` or two.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle does not hold the lock;
    /// [`Error::LockLost`] if it was lost (the handle still counts as
    /// holding it until [`release`](LockFile::release), which then returns
    /// `LockLost` too); [`Error::Io`] if the check itself failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("deploy.lock");
    /// let lock = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// assert!(matches!(lock.ensure_held(), Err(Error::NotLocked { .. })));
    /// lock.acquire()?;
    /// lock.ensure_held()?; // still ours: go on
    ///
    /// // An operator breaks the lock meanwhile.
    /// LockFile::with_strategy(&path, LockStrategy::Mkdir)?.force_break()?;
    /// assert!(matches!(lock.ensure_held(), Err(Error::LockLost { .. })));
    /// assert!(lock.is_held()); // until released, which says so too
    /// assert!(matches!(lock.release(), Err(Error::LockLost { .. })));
    /// assert!(!lock.is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ensure_held(&self) -> Result<()> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        match holding.check() {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(e) => Err(Error::io(&self.path, Op::Check, e)),
        }
    }

    /// The fencing token of this handle's acquisition (with
    /// [`LockOptions::fencing`]): larger than that of every acquisition of
    /// the lock before it. `None` when the handle does not hold the lock or
    /// gives no tokens.
    pub fn fence(&self) -> Option<u64> {
        self.state().as_ref().and_then(|h| h.fence.get().copied())
    }

    /// The fencing token of the acquisition of `token`, if it is this
    /// handle's current one.
    pub(crate) fn fence_of(&self, token: &str) -> Option<u64> {
        self.state()
            .as_ref()
            .filter(|h| h.token() == token)
            .and_then(|h| h.fence.get().copied())
    }

    /// Whether this handle holds the lock.
    pub fn is_held(&self) -> bool {
        self.state().is_some()
    }

    /// Whether anyone (this handle, another handle or another process) holds
    /// the lock now.
    ///
    /// For `Os` locks held elsewhere this takes and drops a shared lock on
    /// the lock file, which can make another process's try-once acquire at
    /// that very instant report [`Error::WouldBlock`]. An `Os` lock held
    /// only by shared holders ([`lock_shared`](LockFile::lock_shared))
    /// therefore reads as free: telling them apart would take an exclusive
    /// look, which other lookers' shared looks (and readers' try-once
    /// acquires) would find in their way, reporting a free lock held.
    ///
    /// # Errors
    ///
    /// The typed path errors and [`Error::Io`].
    ///
    /// # Examples
    ///
    /// [`is_held`](LockFile::is_held) asks about this handle,
    /// `is_locked` about everyone:
    ///
    /// ```
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("x.lock");
    /// let (mine, other) = (LockFile::new(&path)?, LockFile::new(&path)?);
    /// assert!(!other.is_locked()?);
    /// let _guard = mine.lock()?;
    /// assert!(other.is_locked()?);
    /// assert!(!other.is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_locked(&self) -> Result<bool> {
        if registry().contains(&self.path) {
            return Ok(true);
        }
        Ok(self.status()? != LockStatus::Free)
    }

    /// Looks at the lock without taking it: free, or held and by whom.
    ///
    /// # Errors
    ///
    /// The typed path errors and [`Error::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockFile, LockStatus, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("x.lock");
    /// let lock = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// assert_eq!(lock.status()?, LockStatus::Free);
    ///
    /// let holder = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// let guard = holder.lock()?;
    /// match lock.status()? {
    ///     LockStatus::Held(Some(owner)) => {
    ///         assert_eq!(owner.pid, std::process::id());
    ///         assert_eq!(owner.token, guard.token());
    ///     }
    ///     other => panic!("expected a held lock with a record, got {other:?}"),
    /// }
    /// drop(guard);
    /// assert_eq!(lock.status()?, LockStatus::Free);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn status(&self) -> Result<LockStatus> {
        Ok(match strategy::probe(self.strategy, &self.path)? {
            Probe::Free => {
                let readers = self.reader_records()?;
                if readers.is_empty() {
                    LockStatus::Free
                } else {
                    LockStatus::Shared(readers)
                }
            }
            Probe::Held(seen) => LockStatus::Held(seen.record),
        })
    }

    /// The owner record of whoever holds the lock; `None` if it is free,
    /// held only by readers ([`LockStatus::Shared`]), or its record cannot
    /// be read.
    ///
    /// # Errors
    ///
    /// As [`status`](LockFile::status).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::new(dir.path().join("x.lock"))?;
    /// assert!(lock.owner()?.is_none());
    /// let _guard = lock.lock()?;
    /// assert_eq!(lock.owner()?.map(|o| o.pid), Some(std::process::id()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner(&self) -> Result<Option<OwnerRecord>> {
        Ok(match self.status()? {
            LockStatus::Held(rec) => rec,
            LockStatus::Free | LockStatus::Shared(_) => None,
        })
    }

    /// Whether the owner named by `owner` (read from this lock) still runs,
    /// as this lock's waiters judge it: [`OwnerRecord::liveness`], and, on
    /// a file system only this machine writes to (a local disk), an owner
    /// from an earlier boot of this machine is [`Liveness::Dead`]: its
    /// lock is stale. (On a network file system such a record may be a
    /// cloned machine's: it stays [`Liveness::Unknown`].)
    ///
    /// [`Liveness::Dead`]: crate::Liveness::Dead
    /// [`Liveness::Unknown`]: crate::Liveness::Unknown
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockFile, Liveness};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::new(dir.path().join("x.lock"))?;
    /// let _guard = lock.lock()?;
    /// let owner = lock.owner()?.expect("our own record");
    /// assert_eq!(lock.owner_liveness(&owner), Liveness::Alive);
    ///
    /// // A record this machine wrote before it last booted. Nothing proves
    /// // its process gone (`liveness` judges only this boot's PIDs), but
    /// // on a local disk only this machine wrote it: that process is gone.
    /// let mut before_reboot = owner.clone();
    /// before_reboot.boot = Some("00000000-0000-0000-0000-000000000000".to_owned());
    /// assert_eq!(before_reboot.liveness(), Liveness::Unknown);
    /// // (Where the boot and machine ids are known: Linux.)
    /// if owner.machine.is_some() && owner.boot.is_some() && lock.file_system()?.is_local() {
    ///     assert_eq!(lock.owner_liveness(&before_reboot), Liveness::Dead);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner_liveness(&self, owner: &OwnerRecord) -> crate::Liveness {
        owner.liveness_here(self.writers())
    }

    fn state(&self) -> MutexGuard<'_, Option<Arc<Holding>>> {
        let mut state = holding::lock(&self.held);
        if state.as_ref().is_some_and(|h| h.is_inherited()) {
            // A child of `fork()`: the lock is its parent's. Forgotten
            // without touching the file system (dropping the proof closes
            // only this process's copy of an `Os` lock file; the parent's
            // copy keeps the lock).
            if let Some(inherited) = state.take() {
                drop(inherited.take());
            }
            registry().leave(&self.path, self.id);
        }
        state
    }

    /// Which machines write to the lock's directory: `AnyMachine` (the
    /// careful answer) unless the file system is known to be local.
    fn writers(&self) -> Writers {
        match self.look() {
            Look::Stat => Writers::ThisMachine,
            Look::Open | Look::List => Writers::AnyMachine,
        }
    }

    /// How a holder looks at the lock's name (an unknown file system is
    /// taken for a network one).
    fn look(&self) -> Look {
        *self
            .look
            .get_or_init(|| detect(&self.path).map_or(Look::Open, |fs| fs.look()))
    }

    fn not_locked(&self) -> Error {
        Error::NotLocked {
            lock: self.path.clone().into(),
        }
    }

    /// The `LockLost` error, naming whoever holds the lock now.
    fn lost(&self) -> Error {
        Error::LockLost {
            lock: self.path.clone().into(),
            holder: strategy::probe(self.strategy, &self.path)
                .ok()
                .and_then(Probe::into_record)
                .map(Box::new),
        }
    }
}
