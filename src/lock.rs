//! [`LockFile`], its options and its guard.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Result};
use crate::fault;
use crate::filesystem::FileSystem;
use crate::fs;
use crate::fs::Look;
use crate::holding::{self, Holding, OnLost};
use crate::locked_file::LockedFile;
use crate::owner::{OwnerRecord, RecordedProcess};
use crate::registry::registry;
use crate::stale::{judge, Verdict, Watch, DEFAULT_GRACE};
use crate::strategy::{self, Broken, Claim, Held, Probe, Released};
use crate::sys::DirWatch;
use crate::vocab::{Breaking, Concrete, LockStrategy, Writers};
use crate::wait::{Backoff, Deadline};

/// The longest pause between two attempts on a lock held by another process,
/// unless [`LockOptions::poll_interval`] says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why a `Link` lock whose claim a remover of another machine took is not
/// broken.
const UNJUDGED: &str = "its claim was taken by a remover of another machine (or PID \
     namespace), which may still be removing it; once it is known to have stopped, \
     remove its file `.<name>.<token>.owner.taken.*` beside the lock and break again";

/// How long a wait goes on through errors of a network server out of
/// reach (see [`LockFile::acquire`]): longer than a server restart with
/// its grace period.
const SERVER_PATIENCE: Duration = Duration::from_secs(120);

/// The shortest lease: three refreshes of at least 1 ms each.
const MIN_LEASE: Duration = Duration::from_millis(3);
/// The longest lease; longer ones are clamped (no `Instant` overflow, and
/// the record's millisecond count stays exact).
const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Options for opening a [`LockFile`], in the manner of
/// [`std::fs::OpenOptions`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use portalock::{LockOptions, LockStrategy};
///
/// let dir = tempfile::tempdir()?;
/// let lock = LockOptions::new()
///     .strategy(LockStrategy::Link)
///     .timeout(Some(Duration::from_secs(5)))
///     .poll_interval(Duration::from_millis(20))
///     .open(dir.path().join("job.lock"))?;
/// assert_eq!(lock.strategy(), LockStrategy::Link);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LockOptions {
    strategy: LockStrategy,
    timeout: Option<Duration>,
    poll_interval: Duration,
    break_stale: bool,
    grace: Duration,
    lease: Option<Duration>,
    on_lost: Option<OnLost>,
    trust_os_locks: bool,
    sync: bool,
    owner_pid: Option<u32>,
    remove_on_release: bool,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            strategy: LockStrategy::default(),
            timeout: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            break_stale: true,
            grace: DEFAULT_GRACE,
            lease: None,
            on_lost: None,
            trust_os_locks: false,
            sync: false,
            owner_pid: None,
            remove_on_release: false,
        }
    }
}

impl fmt::Debug for LockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockOptions")
            .field("strategy", &self.strategy)
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("break_stale", &self.break_stale)
            .field("grace", &self.grace)
            .field("lease", &self.lease)
            .field("on_lost", &self.on_lost.as_ref().map(|_| "Fn(&Utf8Path)"))
            .field("trust_os_locks", &self.trust_os_locks)
            .field("sync", &self.sync)
            .field("owner_pid", &self.owner_pid)
            .field("remove_on_release", &self.remove_on_release)
            .finish()
    }
}

impl LockOptions {
    /// The defaults: the default strategy, wait forever, poll at most every
    /// [`DEFAULT_POLL_INTERVAL`].
    pub fn new() -> Self {
        LockOptions::default()
    }

    /// The strategy that takes the lock.
    pub fn strategy(&mut self, strategy: LockStrategy) -> &mut Self {
        self.strategy = strategy;
        self
    }

    /// How long [`LockFile::acquire`] and [`LockFile::lock`] wait:
    /// `None` waits forever, `Some(Duration::ZERO)` tries once.
    pub fn timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The longest pause between two attempts while another process holds
    /// the lock. Waits start with short pauses that double, with jitter, up
    /// to this interval. Waiters in the same process do not poll: a release
    /// wakes them at once.
    pub fn poll_interval(&mut self, interval: Duration) -> &mut Self {
        self.poll_interval = interval;
        self
    }

    /// Whether waiting breaks stale locks (default: yes): locks of dead
    /// owners on this host, leases that went unrefreshed for a whole lease,
    /// and `Mkdir` directories without a record after the
    /// [grace period](LockOptions::grace). Locks of other hosts without a
    /// lease are never broken automatically; `Os` locks need no breaking
    /// (the kernel releases them). See [`LockFile::break_lock`] for the
    /// explicit break.
    pub fn break_stale(&mut self, yes: bool) -> &mut Self {
        self.break_stale = yes;
        self
    }

    /// How long a lock artifact without a readable owner record must stay
    /// unchanged before it counts as stale (default [`DEFAULT_GRACE`]). Such
    /// an artifact is left by a holder that crashed between creating the
    /// artifact and writing its record, or is being written right now.
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// Holds locks with a lease of `lease` (clamped to 3 ms ..= 30 days):
    /// the holder's
    /// owner record says so, and a heartbeat thread (one per process, for
    /// all its leases) rewrites the record three times per lease. A
    /// contender that sees the record unchanged for a whole lease, on its
    /// own clock, breaks the lock, even if its owner lives (paused, or on
    /// another host). `None` (the default) keeps no lease.
    ///
    /// A lease lets locks of other hosts be recovered, at a price: a holder
    /// that stalls for longer than its lease loses the lock. It finds out
    /// through [`LockFile::ensure_held`], the [`on_lost`](LockOptions::on_lost)
    /// callback and [`Error::LockLost`] from
    /// [`release`](LockFile::release). `Os` locks cannot be taken away; for
    /// them the lease only keeps the record fresh.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use portalock::{LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockOptions::new()
    ///     .strategy(LockStrategy::Mkdir)
    ///     .lease(Some(Duration::from_secs(30)))
    ///     .open(dir.path().join("job.lock"))?;
    /// let _guard = lock.lock()?;
    /// assert_eq!(lock.owner()?.and_then(|o| o.lease()), Some(Duration::from_secs(30)));
    /// lock.ensure_held()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lease(&mut self, lease: Option<Duration>) -> &mut Self {
        self.lease = lease.map(|l| l.clamp(MIN_LEASE, MAX_LEASE));
        self
    }

    /// A callback run once, with the lock path, when an acquisition is found
    /// lost: by the heartbeat of a lease, or by
    /// [`ensure_held`](LockFile::ensure_held) or
    /// [`release`](LockFile::release). It runs on the thread that found
    /// out (for leases, the heartbeat thread), holding no lock of
    /// portalock's: it may call [`release`](LockFile::release). Keep it
    /// short, and do not wait in it for the lock. A panic in it is caught.
    pub fn on_lost(&mut self, callback: impl Fn(&Utf8Path) + Send + Sync + 'static) -> &mut Self {
        self.on_lost = Some(Arc::new(callback));
        self
    }

    /// Allows an explicit [`LockStrategy::Os`] on a file system where OS
    /// advisory locks do not reach its other clients (sshfs and other FUSE
    /// mounts, NFS mounted `nolock`, ...; see [`FileSystem`]). Without it,
    /// [`open`](LockOptions::open) refuses such a lock with
    /// [`Error::OsLocksNotShared`]. Set it only when every process that
    /// takes the lock runs on this machine (and, for FUSE, through one
    /// mount). Default: off. [`LockStrategy::Auto`] never picks `Os` there.
    pub fn trust_os_locks(&mut self, yes: bool) -> &mut Self {
        self.trust_os_locks = yes;
        self
    }

    /// Flushes the owner record and the lock's directory to stable storage
    /// (`fsync`) when the lock is taken and when it is released, so that a
    /// crash of the machine, or of an NFS server, cannot lose a lock that
    /// was granted or bring back one that was released. Costs one or two
    /// `fsync`s per acquire and per release. Default: off (most locks are
    /// only as durable as the processes they exclude).
    pub fn sync(&mut self, yes: bool) -> &mut Self {
        self.sync = yes;
        self
    }

    /// Takes the lock on behalf of the process `pid` of this machine: the
    /// owner record names that process (its PID and start time), so the
    /// lock counts as stale once that process has exited, whoever took it.
    /// With [`LockFile::detach`], a short-lived tool can take a lock that
    /// outlives it and belongs to a longer-lived process (a shell script,
    /// like `dotlockfile -p`), and [`LockFile::release_for`] releases it
    /// later. Default: the calling process.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("script.lock");
    /// let me = std::process::id();
    /// let lock = LockOptions::new()
    ///     .strategy(LockStrategy::Mkdir)
    ///     .on_behalf_of(me)
    ///     .open(&path)?;
    /// lock.acquire()?;
    /// let record = lock.detach()?; // stays held after `lock` is dropped
    /// drop(lock);
    /// assert_eq!(record.pid, me);
    ///
    /// // Later, maybe in another process:
    /// let later = LockOptions::new().strategy(LockStrategy::Mkdir).open(&path)?;
    /// assert_eq!(later.release_for(me)?.token, record.token);
    /// assert!(!later.is_locked()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_behalf_of(&mut self, pid: u32) -> &mut Self {
        self.owner_pid = Some(pid);
        self
    }

    /// Makes an [`Os`](LockStrategy::Os) lock file temporary: it exists
    /// only while the lock is held, and is removed on release (while still
    /// locked). Waiters that then lock the removed file notice that the
    /// path no longer names it and open it afresh, so a delete-and-recreate
    /// race never lets two holders in. `Mkdir` and `Link` artifacts are
    /// always removed on release. A holder that crashes leaves the file
    /// behind (unlocked; the next holder reuses it). Default: off.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("temp.lock");
    /// let lock = LockOptions::new()
    ///     .strategy(LockStrategy::Os)
    ///     .remove_on_release(true)
    ///     .open(&path)?;
    /// lock.acquire()?;
    /// assert!(path.exists());
    /// lock.release()?;
    /// assert!(!path.exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove_on_release(&mut self, yes: bool) -> &mut Self {
        self.remove_on_release = yes;
        self
    }

    /// Opens a handle on the lock at `path`, without taking it.
    ///
    /// The path is made absolute against the current directory now, so a
    /// later `set_current_dir` does not change which lock the handle names.
    /// Nothing is created until the lock is taken. For
    /// [`LockStrategy::Auto`], [`LockStrategy::Os`] and
    /// [`LockStrategy::Link`], the file system that holds the lock's
    /// directory is inspected now (if the directory does not exist yet, its
    /// nearest existing ancestor's), and `Auto` is resolved:
    /// [`LockFile::strategy`] says to what.
    ///
    /// # Errors
    ///
    /// [`Error::NonUtf8Path`] if `path` (or the current directory, for a
    /// relative path) is not UTF-8; [`Error::OsLocksNotShared`] for an
    /// explicit `Os` lock on a file system where it would exclude nobody;
    /// [`Error::Unsupported`] for an explicit `Link` lock on an SMB share
    /// (see the README's table of file systems); [`Error::Io`] if the path
    /// has no file name, the current directory cannot be read, or the file
    /// system cannot be inspected.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<LockFile> {
        let path = fs::absolute(path.as_ref())?;
        if self.strategy == LockStrategy::Redis {
            return Err(Error::Unsupported {
                path,
                strategy: LockStrategy::Redis,
                reason: "a lock file cannot be taken in Redis; use RedisLock".to_owned(),
            });
        }
        let (strategy, file_system) = match Concrete::explicit(self.strategy) {
            Some(Concrete::Mkdir) => (Concrete::Mkdir, None),
            _ => {
                let fs = detect(&path)?;
                let strategy = Concrete::resolve(self.strategy, &fs);
                if strategy == Concrete::Os && !fs.os_locks_shared() && !self.trust_os_locks {
                    return Err(Error::OsLocksNotShared {
                        path,
                        file_system: fs.to_string(),
                    });
                }
                if strategy == Concrete::Link && fs.is_smb() {
                    return Err(Error::Unsupported {
                        path,
                        strategy: LockStrategy::Link,
                        reason: format!(
                            "on {fs}, a file removed while another client has it open stays \
                             \"delete pending\" (its name still taken, but it cannot be opened) \
                             until that client closes it, which a released link lock cannot \
                             wait for; use the mkdir strategy (what auto picks there)"
                        ),
                    });
                }
                (strategy, Some(fs))
            }
        };
        check_name(&path, strategy)?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(LockFile {
            path,
            strategy,
            look: file_system
                .as_ref()
                .map(|fs| std::sync::OnceLock::from(fs.look()))
                .unwrap_or_default(),
            file_system,
            sync: self.sync,
            owner_pid: self.owner_pid,
            remove_on_release: self.remove_on_release,
            timeout: self.timeout,
            poll_interval: self.poll_interval,
            break_stale: self.break_stale,
            grace: self.grace,
            lease: self.lease,
            on_lost: self.on_lost.clone(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            held: Mutex::new(None),
            os_file: Mutex::new(None),
        })
    }
}

/// Refuses a lock name that the file system of its directory cannot take,
/// or that `strategy` could take but not release: a `Link` lock makes
/// private names beside its lock file of up to 214 bytes, whatever the
/// lock's name (a long name is shortened in them). Where the limit cannot
/// be asked (the directory does not exist yet), 255 bytes, the limit of
/// every common file system, is assumed.
fn check_name(path: &Utf8Path, strategy: Concrete) -> Result<()> {
    let len = path.file_name().map_or(0, str::len);
    let max = path
        .parent()
        .and_then(|dir| crate::sys::name_max(dir.as_std_path()))
        .unwrap_or(255);
    if len > max {
        return Err(Error::NameTooLong {
            path: path.to_owned(),
            len,
            max,
        });
    }
    if strategy == Concrete::Link && max < strategy::LONGEST_LINK_NAME {
        return Err(Error::Unsupported {
            path: path.to_owned(),
            strategy: LockStrategy::Link,
            reason: format!(
                "the file system takes names of at most {max} bytes, and the link strategy \
                 makes names of up to {} bytes beside the lock; use the mkdir strategy",
                strategy::LONGEST_LINK_NAME
            ),
        });
    }
    Ok(())
}

/// The file system of the directory of `path` (an absolute path with a
/// file name).
fn detect(path: &Utf8Path) -> Result<FileSystem> {
    let dir = path.parent().unwrap_or(path);
    FileSystem::detect(dir).map_err(|e| Error::io(path, "detect the file system of", e))
}

/// What [`LockFile::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// A value returned once per look: its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum LockStatus {
    /// Nobody holds the lock.
    Free,
    /// Somebody holds the lock; their owner record, when it could be read.
    Held(Option<OwnerRecord>),
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
    /// Unique in this process; the registry's claim on the path.
    id: u64,
    held: Mutex<Option<Arc<Holding>>>,
    /// The `Os` lock file, kept open between acquisitions.
    os_file: Mutex<Option<strategy::os::Open>>,
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

    /// Takes the lock, waiting as long as the handle's timeout allows.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] (timeout zero) or [`Error::Timeout`] if the lock
    /// stayed held, with the holder's record when readable; the typed path
    /// errors ([`Error::MissingParent`], [`Error::Symlink`],
    /// [`Error::WrongFileType`], [`Error::Foreign`]) and [`Error::Io`].
    ///
    /// Errors that may pass (a stale NFS file handle, `EIO`, a server out
    /// of reach: `EHOSTDOWN`, `ECONNABORTED`, `ENETDOWN`, ...) are tried
    /// again a few times even by a try-once acquire. On a network file
    /// system a wait goes on through them until its deadline, for two
    /// minutes at most, so that a server restarting under a waiter does
    /// not end its wait; then the last such error is returned.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_within(self.timeout)
    }

    /// Tries once to take the lock.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if it is held (by anyone, this handle
    /// included); otherwise as [`acquire`](LockFile::acquire).
    pub fn try_acquire(&self) -> Result<()> {
        self.acquire_within(Some(Duration::ZERO))
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the lock stayed held for the whole wait
    /// ([`Error::WouldBlock`] for a zero timeout); otherwise as
    /// [`acquire`](LockFile::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
        self.acquire_within(Some(timeout))
    }

    /// Takes the lock as [`acquire`](LockFile::acquire) does and returns a
    /// guard that releases it when dropped.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockFile::acquire).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.guard_within(self.timeout)
    }

    /// Tries once to take the lock, as [`try_acquire`](LockFile::try_acquire),
    /// and returns a guard.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](LockFile::try_acquire).
    pub fn try_lock(&self) -> Result<LockGuard<'_>> {
        self.guard_within(Some(Duration::ZERO))
    }

    /// Takes the lock, waiting at most `timeout`, and returns a guard.
    ///
    /// # Errors
    ///
    /// As [`acquire_timeout`](LockFile::acquire_timeout).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.guard_within(Some(timeout))
    }

    /// Takes the lock from async code, waiting as long as the handle's
    /// timeout says without blocking the runtime's threads (feature
    /// `tokio`). The future is cancel-safe: dropping it before it completes
    /// leaves the lock not held by this handle.
    ///
    /// Waiting polls: an unbounded wait on an `Os` lock does not sleep in
    /// the kernel here, and a release in this process is noticed at the
    /// next try rather than at once.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockFile::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::new(dir.path().join("async.lock"))?;
    /// let guard = lock.lock_async().await?;
    /// // ... the critical section, free to .await ...
    /// guard.release()?;
    ///
    /// // Cancelled waits leave nothing held.
    /// let holder = LockFile::new(lock.path())?;
    /// holder.acquire()?;
    /// let waited = tokio::time::timeout(Duration::from_millis(20), lock.lock_async()).await;
    /// assert!(waited.is_err());
    /// assert!(!lock.is_held());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn lock_async(&self) -> Result<LockGuard<'_>> {
        self.guard_within_async(self.timeout).await
    }

    /// Takes the lock from async code, waiting at most `timeout`; see
    /// [`lock_async`](LockFile::lock_async).
    ///
    /// # Errors
    ///
    /// As [`acquire_timeout`](LockFile::acquire_timeout).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn lock_timeout_async(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.guard_within_async(Some(timeout)).await
    }

    /// The state-machine form of [`lock_async`](LockFile::lock_async):
    /// takes the lock for this handle until [`release`](LockFile::release).
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockFile::acquire).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn acquire_async(&self) -> Result<()> {
        let mut guard = self.guard_within_async(self.timeout).await?;
        // An empty token matches no acquisition: the guard's drop then
        // leaves the lock to the handle.
        guard.token.clear();
        Ok(())
    }

    /// Takes the lock shared (as a reader), waiting as long as the handle's
    /// timeout says: any number of shared holders at once, in any
    /// processes, but none while an exclusive holder ([`acquire`],
    /// [`lock`]) holds it, and no exclusive holder while any shared one
    /// does. Only the [`Os`](LockStrategy::Os) strategy has shared locks;
    /// shared holders write no owner record (the record names the
    /// exclusive holder).
    ///
    /// [`acquire`]: LockFile::acquire
    /// [`lock`]: LockFile::lock
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for `Mkdir` and `Link`: portalock has no
    /// readers-writer protocol over `mkdir` or `link()` that stays safe
    /// when readers crash; [`Error::WouldBlock`] / [`Error::Timeout`] while
    /// an exclusive holder keeps it; the errors of [`LockedFile`]'s open.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("catalog.lock");
    /// let (a, b) = (LockFile::with_strategy(&path, LockStrategy::Os)?,
    ///               LockFile::with_strategy(&path, LockStrategy::Os)?);
    /// let reader_a = a.lock_shared()?;
    /// let reader_b = b.try_lock_shared()?; // readers share
    /// let writer = LockFile::with_strategy(&path, LockStrategy::Os)?;
    /// assert!(matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })));
    /// drop((reader_a, reader_b));
    /// writer.try_acquire()?;
    /// assert!(matches!(a.try_lock_shared(), Err(Error::WouldBlock { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_shared(&self) -> Result<SharedGuard> {
        self.shared_within(self.timeout)
    }

    /// Takes the lock shared if no exclusive holder has it now; see
    /// [`lock_shared`](LockFile::lock_shared).
    ///
    /// # Errors
    ///
    /// As [`lock_shared`](LockFile::lock_shared).
    pub fn try_lock_shared(&self) -> Result<SharedGuard> {
        self.shared_within(Some(Duration::ZERO))
    }

    /// Takes the lock shared, waiting at most `timeout`; see
    /// [`lock_shared`](LockFile::lock_shared).
    ///
    /// # Errors
    ///
    /// As [`lock_shared`](LockFile::lock_shared).
    pub fn lock_shared_timeout(&self, timeout: Duration) -> Result<SharedGuard> {
        self.shared_within(Some(timeout))
    }

    fn shared_within(&self, timeout: Option<Duration>) -> Result<SharedGuard> {
        if self.strategy != Concrete::Os {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                strategy: self.strategy.into(),
                reason: "shared locks need the os strategy: portalock has no readers-writer \
                         protocol over mkdir or link() that stays safe when readers crash"
                    .to_owned(),
            });
        }
        let opened = LockedFile::options()
            .shared(true)
            .timeout(timeout)
            .check_interval(self.poll_interval)
            .open(&self.path);
        match opened {
            Ok(file) => Ok(SharedGuard { file }),
            Err(e) if e.is_contended() => Err(Error::contended(
                self.path.clone(),
                timeout,
                self.owner().ok().flatten().map(Box::new),
            )),
            Err(e) => Err(e),
        }
    }

    /// Releases the lock this handle holds. Any thread may call it.
    ///
    /// The lock artifact is removed (or, for `Os`, blanked and unlocked) only
    /// if it is still this acquisition's: its claim is removed first, so a
    /// lock that was broken and taken by someone else is never touched.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle does not hold the lock;
    /// [`Error::LockLost`] if the lock was broken or replaced by someone
    /// else meanwhile (nothing of theirs is touched, and the handle is
    /// unlocked afterwards); [`Error::Io`]. A `Mkdir` or `Link` release
    /// that fails before it changed anything (a read-only or full file
    /// system, a permission taken away) leaves the lock held by this handle,
    /// so that `release` may be called again; an `Os` lock is unlocked even
    /// when clearing its record failed.
    pub fn release(&self) -> Result<()> {
        let holding = self.state().take().ok_or_else(|| self.not_locked())?;
        self.finish_release(holding, Keep::Handle)
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
    /// # #[cfg(unix)] {
    /// use std::process::Command;
    /// use portalock::{LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::with_strategy(dir.path().join("job.lock"), LockStrategy::Mkdir)?;
    /// lock.acquire()?;
    /// let mut child = lock.spawn(&mut Command::new("true"))?;
    /// let owner = lock.owner()?.expect("a record");
    /// assert_eq!(owner.command.map(|c| c.pid), Some(child.id()));
    /// assert!(child.wait()?.success());
    /// lock.release()?;
    /// # }
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
            Error::io(&self.path, "start a command under", e)
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
    pub fn ensure_held(&self) -> Result<()> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        match holding.check() {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(e) => Err(Error::io(&self.path, "check the lock at", e)),
        }
    }

    /// Breaks the lock if it is stale, and returns the owner record it
    /// removed (`None` if the lock was free, or the artifact had no
    /// readable record).
    ///
    /// Stale means: the owner is dead (same host, boot and PID namespace;
    /// PID gone or reused); or its lease went unrefreshed for a whole lease;
    /// or a `Mkdir` directory has no readable record for the grace period.
    /// To judge a lease or a grace period this call watches the lock, on
    /// this process's clock, for up to that long. Breaking is safe when
    /// many processes try at once: exactly one removes the stale lock, and
    /// a lock taken afresh meanwhile is never removed (the protocol is
    /// argued in [`stale`](crate::stale)).
    ///
    /// For `Link`, breaking (or finding the lock free) also removes the
    /// private files that killed processes of this machine left beside the
    /// lock: claims never linked and taken names never removed.
    ///
    /// # Errors
    ///
    /// [`Error::NotStale`] if the lock is held by a live owner, by an owner
    /// of another host without a lease, or is an `Os` lock (which the
    /// kernel releases); [`Error::Foreign`] for an artifact portalock cannot
    /// identify as its own; the typed path errors and [`Error::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("x.lock");
    /// let holder = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// holder.acquire()?;
    ///
    /// // Its owner (this process) is alive: not broken.
    /// let other = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// assert!(matches!(other.break_lock(), Err(Error::NotStale { .. })));
    ///
    /// // Forced, it goes; the holder finds out.
    /// let removed = other.force_break()?.expect("the holder's record");
    /// assert_eq!(removed.pid, std::process::id());
    /// assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    /// assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn break_lock(&self) -> Result<Option<OwnerRecord>> {
        self.break_with(Breaking::IfStale)
    }

    /// Breaks the lock whatever its owner's state, and returns the owner
    /// record it removed, as [`break_lock`](LockFile::break_lock) does.
    ///
    /// This is for an operator who knows the holder is gone when portalock
    /// cannot tell (another host without a lease). A live holder loses its
    /// lock and finds out only when it next checks. The removal is as safe
    /// under races as `break_lock`'s.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for an `Os` lock held by a process (only the
    /// kernel releases it); [`Error::Foreign`] for an artifact portalock
    /// cannot identify as its own; the typed path errors and [`Error::Io`].
    pub fn force_break(&self) -> Result<Option<OwnerRecord>> {
        self.break_with(Breaking::Forced)
    }

    /// Lets go of the lock this handle holds without releasing it: the lock
    /// stays held after the handle (and the process) is gone, until it is
    /// released with [`release_for`](LockFile::release_for) or broken as
    /// stale once its owner ([`LockOptions::on_behalf_of`]) has exited.
    /// Returns the lock's owner record. A lease is no longer refreshed.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if the handle holds nothing;
    /// [`Error::Unsupported`] for an [`Os`](LockStrategy::Os) lock, which
    /// the kernel releases when this process exits (the handle keeps it).
    pub fn detach(&self) -> Result<OwnerRecord> {
        let mut state = self.state();
        if state.is_none() {
            return Err(self.not_locked());
        }
        if self.strategy == Concrete::Os {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                strategy: LockStrategy::Os,
                reason: "an OS lock cannot outlive the process that holds it; use mkdir or link"
                    .to_owned(),
            });
        }
        let holding = state.take().ok_or_else(|| self.not_locked())?;
        drop(state);
        // Mkdir and Link artifacts stay until removed: dropping the proof
        // of holding releases nothing.
        drop(holding.take());
        registry().leave(&self.path, self.id);
        Ok(holding.record())
    }

    /// Releases a lock held on behalf of the process `pid` of this machine
    /// (see [`LockOptions::on_behalf_of`] and [`detach`](LockFile::detach)),
    /// whichever process took it. Returns the removed owner record.
    ///
    /// Removes exactly the lock it looked at, and only if its record names
    /// `pid` on this host: a lock taken afresh meanwhile by anyone else is
    /// left alone.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if the lock is free; [`Error::NotOwner`] if it
    /// is held for another process (or its record is unreadable);
    /// [`Error::Unsupported`] for an [`Os`](LockStrategy::Os) lock.
    pub fn release_for(&self, pid: u32) -> Result<OwnerRecord> {
        // A lock taken afresh each time we look is plainly not ours.
        for _ in 0..64 {
            let seen = match strategy::probe(self.strategy, &self.path)? {
                Probe::Free => return Err(self.not_locked()),
                Probe::Held(seen) => *seen,
            };
            // The whole identity, not the PID alone: a PID of another PID
            // namespace (a container), of another boot, or of an earlier
            // process that had the same PID is another process.
            let record = match &seen.record {
                Some(r) if r.is_held_for(pid) => r.clone(),
                other => {
                    return Err(Error::NotOwner {
                        path: self.path.clone(),
                        pid,
                        holder: other.clone().map(Box::new),
                    })
                }
            };
            match strategy::break_claim(
                self.strategy,
                &self.path,
                &seen,
                Breaking::IfStale,
                self.writers(),
            )? {
                Broken::Removed => return Ok(record),
                Broken::Raced => std::thread::yield_now(),
                Broken::Unjudged => {
                    return Err(Error::NotStale {
                        path: self.path.clone(),
                        why: UNJUDGED,
                        holder: Some(Box::new(record)),
                    })
                }
                Broken::Orphan => {
                    return Err(Error::NotStale {
                        path: self.path.clone(),
                        why: "its claim file is missing; only force_break recovers it",
                        holder: Some(Box::new(record)),
                    })
                }
            }
        }
        Err(Error::NotOwner {
            path: self.path.clone(),
            pid,
            holder: strategy::probe(self.strategy, &self.path)
                .ok()
                .and_then(Probe::into_record)
                .map(Box::new),
        })
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
    /// that very instant report [`Error::WouldBlock`].
    ///
    /// # Errors
    ///
    /// The typed path errors and [`Error::Io`].
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
    pub fn status(&self) -> Result<LockStatus> {
        Ok(match strategy::probe(self.strategy, &self.path)? {
            Probe::Free => LockStatus::Free,
            Probe::Held(seen) => LockStatus::Held(seen.record),
        })
    }

    /// The owner record of whoever holds the lock; `None` if it is free or
    /// its record cannot be read.
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
            LockStatus::Free => None,
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
            path: self.path.clone(),
        }
    }

    /// Waits for the lock without blocking an async runtime: tries once,
    /// then sleeps with `tokio::time::sleep` between tries (backoff with
    /// jitter, at most the poll interval), until `timeout`. Dropping the
    /// future between two tries leaves nothing held. As the blocking wait
    /// does, it goes on through errors that may pass on a network file
    /// system (for `SERVER_PATIENCE` at most), and says the last of them if
    /// it ends while they last.
    #[cfg(feature = "tokio")]
    async fn guard_within_async(&self, timeout: Option<Duration>) -> Result<LockGuard<'_>> {
        let deadline = Deadline::after(timeout);
        let mut backoff = Backoff::new(self.poll_interval);
        let mut failing: Option<(Instant, Error)> = None;
        loop {
            match self.acquire_token(Some(Duration::ZERO)) {
                Ok(token) => return Ok(LockGuard { lock: self, token }),
                Err(e) if e.is_contended() => failing = None,
                Err(e)
                    if (self.writers() == Writers::AnyMachine)
                        && e.io_error().is_some_and(fs::is_transient) =>
                {
                    let since = failing
                        .as_ref()
                        .map_or_else(Instant::now, |(since, _)| *since);
                    if since.elapsed() >= SERVER_PATIENCE {
                        return Err(e);
                    }
                    failing = Some((since, e));
                }
                Err(e) => return Err(e),
            }
            match backoff.next(&deadline) {
                Some(nap) => tokio::time::sleep(nap).await,
                None => {
                    return Err(match failing {
                        Some((_, e)) => e,
                        None => self.contended(timeout),
                    })
                }
            }
        }
    }

    fn guard_within(&self, timeout: Option<Duration>) -> Result<LockGuard<'_>> {
        let token = self.acquire_token(timeout)?;
        Ok(LockGuard { lock: self, token })
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<()> {
        self.acquire_token(timeout).map(drop)
    }

    /// Takes the lock and returns the token of its owner record.
    fn acquire_token(&self, timeout: Option<Duration>) -> Result<String> {
        let deadline = Deadline::after(timeout);
        if !registry().enter(&self.path, self.id, &deadline) {
            return Err(self.contended(timeout));
        }
        match self.acquire_in_fs(timeout, &deadline) {
            Ok((held, record)) => {
                let breakable = self.strategy != Concrete::Os;
                let holding =
                    Holding::start(&self.path, held, record, self.on_lost.clone(), breakable);
                let token = holding.token().to_owned();
                *self.state() = Some(holding);
                Ok(token)
            }
            Err(e) => {
                registry().leave(&self.path, self.id);
                Err(e)
            }
        }
    }

    fn acquire_in_fs(
        &self,
        timeout: Option<Duration>,
        deadline: &Deadline,
    ) -> Result<(Held, OwnerRecord)> {
        let mut record = OwnerRecord::for_process(self.strategy.into(), self.owner_pid)
            .map_err(|e| Error::io(&self.path, "make an owner record for", e))?;
        record.lease_ms = self.lease.map(|l| l.as_millis().max(1) as u64);
        let block = deadline.is_unbounded() && strategy::can_block(self.strategy);
        let may_break = self.break_stale && !strategy::can_block(self.strategy);
        let mut backoff = Backoff::new(self.poll_interval);
        let mut watch = Watch::default();
        // Retries at once after a break, a few times in a row at most: a
        // lock that keeps looking breakable without giving way (a claim
        // that is not the lock's own, say) must not make this loop spin.
        let mut quick = 0;
        // Errors that may pass (a stale NFS handle, a timeout) are retried
        // after a poll, a few times in a row at most.
        let mut transient = 0;
        // Since when they have lasted, past those few retries.
        let mut failing: Option<Instant> = None;
        let mut watching = false;
        let mut dir_watch: Option<DirWatch> = None;
        // Taken out for the whole attempt (the registry lets one thread of
        // this process at a time take the lock) and put back on every exit.
        let mut cached = CachedFile {
            slot: &self.os_file,
            file: holding::lock(&self.os_file).take(),
        };
        let how = strategy::os::How {
            sync: self.sync,
            remove: self.remove_on_release,
            look: self.look(),
        };
        let mut first = true;
        loop {
            if !first {
                record
                    .renew()
                    .map_err(|e| Error::io(&self.path, "make an owner record for", e))?;
            }
            first = false;
            match strategy::try_acquire(
                self.strategy,
                &self.path,
                &record,
                block,
                how,
                &mut cached.file,
            ) {
                Ok(Some(held)) => return Ok((held, record)),
                Ok(None) => {
                    transient = 0;
                    failing = None;
                }
                Err(e) if e.io_error().is_some_and(fs::is_transient) => {
                    // Tried again after a short pause even by a try-once
                    // acquire: such an error says nothing about the lock.
                    if transient < 3 {
                        transient += 1;
                        std::thread::sleep(Duration::from_millis(1 << transient));
                        continue;
                    }
                    // Still failing, on a network file system: a server
                    // restarting or out of reach. A wait goes on through
                    // it, polling, until its deadline or for
                    // `SERVER_PATIENCE` at most, and then says why it could
                    // not look. (On a local disk such an error stays.)
                    let since = *failing.get_or_insert_with(Instant::now);
                    if self.writers() == Writers::ThisMachine || since.elapsed() >= SERVER_PATIENCE
                    {
                        return Err(e);
                    }
                    let Some(nap) = backoff.next(deadline) else {
                        return Err(e);
                    };
                    std::thread::sleep(nap);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if may_break && quick < 3 && self.break_if_stale(&mut watch)? {
                quick += 1;
                continue;
            }
            let Some(nap) = backoff.next(deadline) else {
                return Err(self.contended(timeout));
            };
            if self.strategy != Concrete::Os && !watching {
                // Wake on the release rather than at the next poll: watch
                // the lock's directory, then look once more, in case the
                // release came before the watch.
                watching = true;
                dir_watch = DirWatch::new(&self.path);
                if dir_watch.is_some() {
                    continue;
                }
            }
            match &dir_watch {
                Some(w) => w.wait(nap),
                None => std::thread::sleep(nap),
            }
            quick = 0;
            record.touch();
        }
    }

    /// One look at a held lock while waiting: breaks it if it is stale.
    /// Returns whether to try again at once (broken, or free meanwhile).
    fn break_if_stale(&self, watch: &mut Watch) -> Result<bool> {
        let seen = match strategy::probe(self.strategy, &self.path) {
            Ok(Probe::Held(seen)) => seen,
            Ok(Probe::Free) => return Ok(true),
            // The lock changed under the look (a stale NFS handle, say):
            // look again at the next poll.
            Err(e) if e.io_error().is_some_and(fs::is_transient) => return Ok(false),
            Err(e) => return Err(e),
        };
        let unchanged = watch.observe(&seen);
        if !judge(&seen, unchanged, self.grace, self.writers()).is_stale() {
            return Ok(false);
        }
        if let Err(e) = fault::point("break.judged") {
            return Err(Error::io(&self.path, "break", e));
        }
        // An orphan (a Link lock whose claim is gone) is recovered only
        // through the taken name of its dead remover; without one, only
        // `force_break` recovers it (concurrent recoverers could collide).
        match strategy::break_claim(
            self.strategy,
            &self.path,
            &seen,
            Breaking::IfStale,
            self.writers(),
        ) {
            Ok(Broken::Removed | Broken::Raced) => Ok(true),
            Ok(Broken::Orphan | Broken::Unjudged) => Ok(false),
            // Something in the way for a moment (on Windows, a name another
            // process has open): look again at the next poll.
            Err(e) if e.io_error().is_some_and(fs::is_transient) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn break_with(&self, breaking: Breaking) -> Result<Option<OwnerRecord>> {
        // Each race lost means the lock changed under us; after this many
        // the lock is plainly busy, and taken afresh each time.
        const MAX_RACES: u32 = 64;
        let mut watch = Watch::default();
        let mut races = 0;
        let mut watching = false;
        // A forced break removes the acquisition it looked at first and no
        // other: if that one goes away meanwhile, a new holder's lock is
        // left alone (its owner was never shown to the caller).
        let mut judged: Option<Claim> = None;
        loop {
            let seen = match strategy::probe(self.strategy, &self.path)? {
                Probe::Free => {
                    strategy::sweep(self.strategy, &self.path, self.writers());
                    return Ok(None);
                }
                Probe::Held(seen) => *seen,
            };
            let not_stale = |why| Error::NotStale {
                path: self.path.clone(),
                why,
                holder: seen.record.clone().map(Box::new),
            };
            if breaking == Breaking::Forced {
                match &judged {
                    None => judged = Some(seen.claim.clone()),
                    Some(first) if *first != seen.claim => {
                        return Err(not_stale(
                            "the lock it looked at was released and taken afresh while it was \
                             being broken; the new holder's lock was left alone",
                        ))
                    }
                    Some(_) => {}
                }
            }
            let unchanged = watch.observe(&seen);
            if watching && unchanged.is_zero() {
                // A lease refreshed, a record written, or a new holder: the
                // lock showed life while we watched it.
                return Err(not_stale("it changed while it was watched"));
            }
            let verdict = if breaking == Breaking::Forced {
                Verdict::Dead
            } else {
                judge(&seen, unchanged, self.grace, self.writers())
            };
            match verdict {
                Verdict::Live(why) => return Err(not_stale(why)),
                Verdict::Pending(left) => {
                    watching = true;
                    std::thread::sleep(left.min(self.poll_interval));
                    continue;
                }
                _ => {}
            }
            let step = if breaking == Breaking::Forced {
                "force.judged"
            } else {
                "break.judged"
            };
            fault::point(step).map_err(|e| Error::io(&self.path, "break", e))?;
            match strategy::break_claim(self.strategy, &self.path, &seen, breaking, self.writers())?
            {
                Broken::Removed => return Ok(seen.record),
                Broken::Raced if races < MAX_RACES => {
                    races += 1;
                    watching = false;
                    watch = Watch::default();
                    std::thread::yield_now();
                }
                Broken::Raced => {
                    return Err(not_stale("it was taken afresh each time it was broken"))
                }
                Broken::Orphan => {
                    return Err(not_stale(
                        "its claim file is missing; only force_break recovers it",
                    ))
                }
                Broken::Unjudged => return Err(not_stale(UNJUDGED)),
            }
        }
    }

    /// The error for a wait that ended with the lock still held.
    fn contended(&self, timeout: Option<Duration>) -> Error {
        let holder = strategy::probe(self.strategy, &self.path)
            .ok()
            .and_then(Probe::into_record)
            .map(Box::new);
        Error::contended(self.path.clone(), timeout, holder)
    }

    /// The `LockLost` error, naming whoever holds the lock now.
    fn lost(&self) -> Error {
        Error::LockLost {
            path: self.path.clone(),
            holder: strategy::probe(self.strategy, &self.path)
                .ok()
                .and_then(Probe::into_record)
                .map(Box::new),
        }
    }

    /// Gives the lock up: releases it in the file system and leaves the
    /// process's table.
    ///
    /// A `Mkdir` or `Link` release that failed before it changed anything
    /// (a read-only or full file system, a permission taken away, a passing
    /// I/O error), the lock still this acquisition's, is not given up:
    /// with `Keep::Handle` the handle holds the lock again, so that the
    /// caller may retry; with `Keep::Background` (a drop: nobody to see the
    /// error or to retry) the release is tried again in the background
    /// until it succeeds or the lock is found lost, and the handle is free.
    fn finish_release(&self, holding: Arc<Holding>, keep: Keep) -> Result<()> {
        let held = holding.take();
        let copy = held.as_ref().and_then(Held::retry_copy);
        let result = match held {
            Some(held) => strategy::release(&self.path, held, &mut holding::lock(&self.os_file)),
            None => Ok(Released::Lost(None)),
        };
        let unchanged = |copy: &Held| {
            matches!(&result, Err(e) if e.io_error().is_some())
                && copy.check(&self.path).unwrap_or(false)
        };
        if let Some(copy) = copy.filter(unchanged) {
            match keep {
                Keep::Handle => {
                    holding.restore(copy);
                    *self.state() = Some(holding);
                }
                Keep::Background => {
                    registry().leave(&self.path, self.id);
                    holding::release_later(&self.path, copy);
                }
            }
            return result.map(drop);
        }
        registry().leave(&self.path, self.id);
        match result? {
            Released::Done => Ok(()),
            Released::Lost(seen) => {
                holding.mark_lost();
                Err(match seen {
                    Some(holder) => Error::LockLost {
                        path: self.path.clone(),
                        holder: holder.map(Box::new),
                    },
                    None => self.lost(),
                })
            }
        }
    }

    /// Releases the lock if it is still the acquisition that issued `token`.
    fn release_token(&self, token: &str, keep: Keep) -> Result<()> {
        let holding = {
            let mut state = self.state();
            match state.as_ref() {
                Some(holding) if holding.token() == token => state.take(),
                _ => None,
            }
        };
        let holding = holding.ok_or_else(|| self.not_locked())?;
        self.finish_release(holding, keep)
    }
}

/// Where a release that failed before changing anything leaves the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Held by the handle again: the caller sees the error and may retry.
    Handle,
    /// Released in the background, retried until done: for drops.
    Background,
}

/// A handle's open `Os` lock file while an acquisition uses it; returned to
/// the handle when dropped.
struct CachedFile<'a> {
    slot: &'a Mutex<Option<strategy::os::Open>>,
    file: Option<strategy::os::Open>,
}

impl Drop for CachedFile<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            *holding::lock(self.slot) = Some(file);
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Through `state`, which forgets a lock inherited through `fork()`.
        let held = self.state().take();
        if let Some(holding) = held {
            // Best effort: a caller who wants the error calls `release`.
            // A release that fails for a moment is finished in the
            // background: the handle goes away.
            let _ = self.finish_release(holding, Keep::Background);
        }
    }
}

/// A shared (reader) hold on an `Os` lock, from
/// [`LockFile::lock_shared`]; dropping it (or [`release`](SharedGuard::release))
/// lets go.
#[derive(Debug)]
#[must_use = "if unused the shared lock is released at once"]
pub struct SharedGuard {
    file: LockedFile,
}

impl SharedGuard {
    /// Lets go of the shared lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the lock could not be released.
    pub fn release(self) -> Result<()> {
        self.file.release()
    }
}

/// Proof that a [`LockFile`] holds its lock; dropping it releases the lock.
///
/// The guard releases only the acquisition that created it: if the lock was
/// released through the handle meanwhile and taken again, dropping the old
/// guard leaves the new acquisition alone.
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct LockGuard<'a> {
    lock: &'a LockFile,
    token: String,
}

impl LockGuard<'_> {
    /// The handle this guard locks.
    pub fn lock_file(&self) -> &LockFile {
        self.lock
    }

    /// The token of this acquisition's owner record.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Releases the lock now and returns what [`LockFile::release`] returns,
    /// which dropping the guard would discard.
    ///
    /// # Errors
    ///
    /// As [`LockFile::release`].
    pub fn release(mut self) -> Result<()> {
        // Leaves an empty token behind, which matches no acquisition, so the
        // guard's `Drop` then does nothing.
        let token = std::mem::take(&mut self.token);
        self.lock.release_token(&token, Keep::Handle)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Nobody sees an error here, and no guard is left to retry with: a
        // release that fails for a moment is finished in the background.
        let _ = self.lock.release_token(&self.token, Keep::Background);
    }
}

/// Opens the lock at `path` with the default options and takes it, waiting
/// as long as it takes: the shortcut of Python's `locket.lock_file`.
///
/// The returned handle holds the lock; dropping it (or calling
/// [`LockFile::release`]) releases it.
///
/// # Errors
///
/// As [`LockOptions::open`] and [`LockFile::acquire`].
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let lock = portalock::lock_file(dir.path().join("cron.lock"))?;
/// assert!(lock.is_held());
/// lock.release()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn lock_file(path: impl AsRef<Path>) -> Result<LockFile> {
    let lock = LockFile::new(path)?;
    lock.acquire()?;
    Ok(lock)
}
