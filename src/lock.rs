//! [`LockFile`], its options and its guard.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Result};
use crate::owner::OwnerRecord;
use crate::registry::registry;
use crate::strategy::{self, Held, LockStrategy, Probe};
use crate::wait::{Backoff, Deadline};

/// The longest pause between two attempts on a lock held by another process,
/// unless [`LockOptions::poll_interval`] says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

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
#[derive(Debug, Clone)]
pub struct LockOptions {
    strategy: LockStrategy,
    timeout: Option<Duration>,
    poll_interval: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            strategy: LockStrategy::default(),
            timeout: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
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

    /// Opens a handle on the lock at `path`, without taking it.
    ///
    /// The path is made absolute against the current directory now, so a
    /// later `set_current_dir` does not change which lock the handle names.
    /// Nothing is created until the lock is taken.
    ///
    /// # Errors
    ///
    /// [`Error::NonUtf8Path`] if `path` (or the current directory, for a
    /// relative path) is not UTF-8; [`Error::Io`] if the path has no file
    /// name or the current directory cannot be read.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<LockFile> {
        let path = absolute(path.as_ref())?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(LockFile {
            path,
            strategy: self.strategy,
            timeout: self.timeout,
            poll_interval: self.poll_interval,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            held: Mutex::new(None),
        })
    }
}

fn absolute(path: &Path) -> Result<Utf8PathBuf> {
    let non_utf8 = |p: &Path| Error::NonUtf8Path { path: p.to_owned() };
    let utf8 = Utf8Path::from_path(path).ok_or_else(|| non_utf8(path))?;
    let invalid = |why: &str| {
        Error::io(
            utf8,
            "use as a lock path",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        )
    };
    if utf8.as_str().is_empty() {
        return Err(invalid("the path is empty"));
    }
    let abs =
        std::path::absolute(utf8).map_err(|e| Error::io(utf8, "make an absolute path of", e))?;
    let abs = Utf8PathBuf::from_path_buf(abs).map_err(|p| non_utf8(&p))?;
    match abs.file_name() {
        Some(name) if name != ".." => Ok(abs),
        _ => Err(invalid("the path has no file name")),
    }
}

/// What [`LockFile::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[derive(Debug)]
pub struct LockFile {
    path: Utf8PathBuf,
    strategy: LockStrategy,
    timeout: Option<Duration>,
    poll_interval: Duration,
    /// Unique in this process; the registry's claim on the path.
    id: u64,
    held: Mutex<Option<Held>>,
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

    /// The strategy this handle locks with.
    pub fn strategy(&self) -> LockStrategy {
        self.strategy
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

    /// Releases the lock this handle holds. Any thread may call it.
    ///
    /// The lock artifact is removed (or, for `Os`, emptied and unlocked) only
    /// if it still carries this handle's token.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle does not hold the lock;
    /// [`Error::LockLost`] if the artifact was removed or replaced by someone
    /// else meanwhile (nothing of theirs is touched, and the handle is
    /// unlocked afterwards); [`Error::Io`].
    pub fn release(&self) -> Result<()> {
        let held = self.state().take().ok_or_else(|| self.not_locked())?;
        self.finish_release(held)
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
            Probe::Held(rec) => LockStatus::Held(rec),
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

    fn state(&self) -> MutexGuard<'_, Option<Held>> {
        // `held` is replaced whole under the mutex; a panic elsewhere cannot
        // leave it half updated.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn not_locked(&self) -> Error {
        Error::NotLocked {
            path: self.path.clone(),
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
            Ok(held) => {
                let token = held.token().to_owned();
                *self.state() = Some(held);
                Ok(token)
            }
            Err(e) => {
                registry().leave(&self.path, self.id);
                Err(e)
            }
        }
    }

    fn acquire_in_fs(&self, timeout: Option<Duration>, deadline: &Deadline) -> Result<Held> {
        let mut record = OwnerRecord::for_this_process(self.strategy)
            .map_err(|e| Error::io(&self.path, "make an owner record for", e))?;
        let block = deadline.is_unbounded() && strategy::can_block(self.strategy);
        let mut backoff = Backoff::new(self.poll_interval);
        loop {
            if let Some(held) = strategy::try_acquire(self.strategy, &self.path, &record, block)? {
                return Ok(held);
            }
            if !backoff.sleep(deadline) {
                return Err(self.contended(timeout));
            }
            record.touch();
        }
    }

    /// The error for a wait that ended with the lock still held.
    fn contended(&self, timeout: Option<Duration>) -> Error {
        let holder = match strategy::probe(self.strategy, &self.path) {
            Ok(Probe::Held(rec)) => rec.map(Box::new),
            _ => None,
        };
        let path = self.path.clone();
        match timeout {
            Some(t) if !t.is_zero() => Error::Timeout {
                path,
                timeout: t,
                holder,
            },
            _ => Error::WouldBlock { path, holder },
        }
    }

    fn finish_release(&self, held: Held) -> Result<()> {
        let result = strategy::release(&self.path, held);
        registry().leave(&self.path, self.id);
        result
    }

    /// Releases the lock if it is still the acquisition that issued `token`.
    fn release_token(&self, token: &str) -> Result<()> {
        let held = {
            let mut state = self.state();
            match state.as_ref() {
                Some(held) if held.token() == token => state.take(),
                _ => None,
            }
        };
        let held = held.ok_or_else(|| self.not_locked())?;
        self.finish_release(held)
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(held) = held {
            // Best effort: a caller who wants the error calls `release`.
            let _ = self.finish_release(held);
        }
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
        self.lock.release_token(&token)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release_token(&self.token);
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
