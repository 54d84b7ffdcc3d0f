//! [`LockOptions`]: the builder that opens a [`LockFile`], and the checks
//! made when a handle is opened (the name's length, the file system).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use camino::Utf8Path;

use crate::error::{Error, Op, Result};
use crate::files;
use crate::filesystem::FileSystem;
use crate::holding::OnLost;
use crate::stale::DEFAULT_GRACE;
use crate::strategy::{self};
use crate::vocab::{Concrete, LockStrategy};
use crate::wait::CancelToken;

use super::report::{Hook, OnWait, Waiting};
use super::{LockFile, DEFAULT_POLL_INTERVAL};

/// When a wait is first reported to the `on_wait` hook, and how often
/// after that.
const DEFAULT_WAIT_REPORT_FIRST: Duration = Duration::from_secs(1);
const DEFAULT_WAIT_REPORT_EVERY: Duration = Duration::from_secs(10);

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
    on_wait: Option<Hook>,
    on_wait_first: Duration,
    on_wait_every: Duration,
    permissions: Option<u32>,
    cancel: Option<CancelToken>,
    fencing: bool,
    trust_os_locks: bool,
    sync: bool,
    owner_pid: Option<u32>,
    remove_on_release: bool,
    fair: bool,
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
            on_wait: None,
            on_wait_first: DEFAULT_WAIT_REPORT_FIRST,
            on_wait_every: DEFAULT_WAIT_REPORT_EVERY,
            permissions: None,
            cancel: None,
            fencing: false,
            trust_os_locks: false,
            sync: false,
            owner_pid: None,
            remove_on_release: false,
            fair: true,
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
            .field("on_wait", &self.on_wait.as_ref().map(|_| "Fn(&Waiting)"))
            .field("on_wait_first", &self.on_wait_first)
            .field("on_wait_every", &self.on_wait_every)
            .field("permissions", &self.permissions.map(|m| format!("{m:o}")))
            .field("cancel", &self.cancel)
            .field("fencing", &self.fencing)
            .field("trust_os_locks", &self.trust_os_locks)
            .field("sync", &self.sync)
            .field("owner_pid", &self.owner_pid)
            .field("remove_on_release", &self.remove_on_release)
            .field("fair", &self.fair)
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

    /// Whether waiting processes are served in turn (default: yes): a
    /// process that releases the lock and asks for it again at once does
    /// not take it back before a process that was already waiting.
    ///
    /// Acquisitions pass through a gate, a small file beside the lock
    /// (`.<name>.gate`) on which they take an OS advisory lock: the first
    /// waiter holds it while it waits, so whoever asks after it waits
    /// behind it. The gate only orders; exclusion is the strategy's own.
    /// It costs one system call on an acquisition that finds the lock
    /// free (two outside Linux), and a thread, while a process waits
    /// behind another (one per lock, ended after ten idle seconds). There is
    /// no gate (and so no such order) on a network file system, for locks
    /// that [remove their file](LockOptions::remove_on_release), or on
    /// platforms without OS locks. A process that dies while it waits
    /// leaves the queue at once; one that is stopped at its head is passed
    /// by once the lock has stayed free for twice four poll intervals (at
    /// least a second), and the handle remembers it for its next
    /// acquisitions.
    ///
    /// With `false`, a releaser that asks again at once usually takes the
    /// lock back before a waiter wakes, as with every other lock library.
    pub fn fair(&mut self, fair: bool) -> &mut Self {
        self.fair = fair;
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
    /// another host). Without it (the default) a lock has no lease. (The
    /// same shape as `RedisLockOptions::lease`, feature `redis`.)
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
    ///     .lease(Duration::from_secs(30))
    ///     .open(dir.path().join("job.lock"))?;
    /// let _guard = lock.lock()?;
    /// assert_eq!(lock.owner()?.and_then(|o| o.lease()), Some(Duration::from_secs(30)));
    /// lock.ensure_held()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lease(&mut self, lease: Duration) -> &mut Self {
        self.lease = Some(lease.clamp(MIN_LEASE, MAX_LEASE));
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

    /// A hook that tells the caller whom a wait waits for, as cargo says
    /// "Blocking waiting for file lock": called once when a wait (an
    /// acquisition that does not try only once) has lasted 1 s, then every
    /// 10 s while it goes on (see [`on_wait_timing`]), with the lock's path,
    /// its holder's owner record when readable, and how long the wait has
    /// lasted. Never called for an acquisition that gets the lock sooner.
    ///
    /// It runs on a thread of portalock's (one per process, for every
    /// handle's waits): no call for a wait starts once the wait has ended
    /// (but one that started may still run when it ends; the wait never
    /// waits for it). Keep it short: while it runs, no other wait of the
    /// process is reported. A panic in it is caught.
    ///
    /// [`on_wait_timing`]: LockOptions::on_wait_timing
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::LockOptions;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockOptions::new()
    ///     .on_wait(|w| match w.holder {
    ///         Some(h) => eprintln!("waiting for {}: held by pid {} on {}", w.path, h.pid, h.hostname),
    ///         None => eprintln!("waiting for {}", w.path),
    ///     })
    ///     .open(dir.path().join("build.lock"))?;
    /// let _guard = lock.lock()?; // free: the hook is not called
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_wait(&mut self, hook: impl Fn(&Waiting<'_>) + Send + Sync + 'static) -> &mut Self {
        self.on_wait = Some(Arc::new(hook));
        self
    }

    /// When the [`on_wait`](LockOptions::on_wait) hook is called: `first`
    /// after a wait began, then every `every` (at least 1 ms) while it goes
    /// on; longer than a year counts as a year. Default: 1 s, then every
    /// 10 s.
    pub fn on_wait_timing(&mut self, first: Duration, every: Duration) -> &mut Self {
        // (a year stands for "never": no wait lasts that long unnoticed)
        const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
        self.on_wait_first = first.min(NEVER);
        self.on_wait_every = every.clamp(Duration::from_millis(1), NEVER);
        self
    }

    /// The Unix permission bits of the lock artifacts this handle makes
    /// (the `Os` lock file, a `Mkdir` lock directory and its record, a
    /// `Link` lock file and its claim, the gate of the fair hand-off),
    /// given exactly, whatever the umask; directories also get `x`
    /// wherever `mode` has `r`. For a lock that a group of users shares:
    /// `0o664` lets every member take an `Os` lock file that another made
    /// (which needs it writable) and read every record (which the stale
    /// rules need). Without it, files are made `0o644` and directories
    /// `0o755`, less the umask.
    ///
    /// Only the bits below `0o777` count. Best effort where a file system
    /// keeps no Unix permission bits (SMB without Unix extensions, many
    /// FUSE mounts), and for a file another user made (its owner's bits
    /// stay). Ignored on Windows, where files get the permissions their
    /// directory passes on. The directory the lock lives in must let each
    /// of the users create and remove names in it (for a shared directory,
    /// mode `1777` or `2775` with a common group).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockOptions::new()
    ///     .strategy(LockStrategy::Os)
    ///     .permissions(0o664)
    ///     .open(dir.path().join("shared.lock"))?;
    /// let _guard = lock.lock()?;
    /// # #[cfg(unix)]
    /// # {
    /// use std::os::unix::fs::PermissionsExt;
    /// let mode = std::fs::metadata(dir.path().join("shared.lock"))?.permissions().mode();
    /// assert_eq!(mode & 0o777, 0o664);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn permissions(&mut self, mode: u32) -> &mut Self {
        self.permissions = Some(mode & 0o777);
        self
    }

    /// Gives every acquisition a fencing token
    /// ([`LockFile::fence`](crate::LockFile::fence),
    /// [`LockGuard::fence`](crate::LockGuard::fence)): a number larger than
    /// that of every acquisition of the lock before it, by any process on
    /// any machine that shares the file system, across crashes, breaks and
    /// forced breaks. Pass it with every request to the resource the lock
    /// guards, and have the resource refuse a token smaller than the
    /// largest it has seen: a holder that was paused while its lock was
    /// broken and taken (a long GC pause, a stopped process, a host cut off
    /// past its lease) then cannot act on the resource when it resumes,
    /// which no lock alone can prevent.
    ///
    /// The counter is a directory beside the lock, `.<name>.fence`, holding
    /// one file named by the last token (see the README for its argument).
    /// It costs a directory listing and a rename per acquisition, and a
    /// check that the lock is still held afterwards; default: off. Every
    /// handle on a lock that gives tokens should set it (one that does not
    /// takes the lock without moving the counter).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::LockOptions;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockOptions::new().fencing(true).open(dir.path().join("db.lock"))?;
    /// let first = lock.lock()?.fence().expect("a token");
    /// let second = lock.lock()?.fence().expect("a token");
    /// assert!(second > first);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fencing(&mut self, yes: bool) -> &mut Self {
        self.fencing = yes;
        self
    }

    /// Makes every wait of the handle end with
    /// [`Error::Cancelled`](crate::Error::Cancelled), holding nothing, once
    /// `token` is cancelled (see [`CancelToken`]): its exclusive, shared
    /// and async waits, and those of a
    /// [`BoundedSemaphore`](crate::BoundedSemaphore) opened with these
    /// options (not a [`ReentrantLockFile`](crate::ReentrantLockFile)'s
    /// wait for another thread of this process). For one call, see
    /// [`LockFile::lock_cancellable`](crate::LockFile::lock_cancellable).
    pub fn cancel_token(&mut self, token: &CancelToken) -> &mut Self {
        self.cancel = Some(token.clone());
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
        let path = files::absolute(path.as_ref())?;
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
            on_wait: self.on_wait.as_ref().map(|hook| OnWait {
                hook: Arc::clone(hook),
                first: self.on_wait_first,
                every: self.on_wait_every,
            }),
            permissions: self.permissions,
            cancel: self.cancel.clone(),
            fencing: self.fencing,
            readers: strategy != Concrete::Os,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            held: Mutex::new(None),
            os_file: Mutex::new(None),
            fair: self.fair,
            gate: Mutex::new(None),
            swept: Mutex::new(None),
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
pub(super) fn detect(path: &Utf8Path) -> Result<FileSystem> {
    let dir = path.parent().unwrap_or(path);
    FileSystem::detect(dir).map_err(|e| Error::io(path, Op::DetectFileSystem, e))
}
