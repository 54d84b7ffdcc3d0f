//! Taking a [`LockFile`]: the public acquire calls, blocking and async.
//! The wait itself is in [`super::waiter`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::strategy::{self, Probe};
use crate::wait::CancelToken;

use super::guard::{LockGuard, OwnedLockGuard};
use super::LockFile;

impl LockFile {
    /// Takes the lock, waiting as long as the handle's timeout allows.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] (timeout zero) or [`Error::Timeout`] if the lock
    /// stayed held, with the holder's record when readable (this handle
    /// too, if it holds the lock: it is not reentrant);
    /// [`Error::LockLost`] if this handle held the lock and lost it
    /// meanwhile (said once: the acquisition is let go, and the next
    /// acquire takes the lock as any); the typed path errors
    /// ([`Error::MissingParent`], [`Error::Symlink`],
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

    /// Takes the lock, as [`lock`](LockFile::lock), and returns a guard that
    /// owns this reference to the handle ([`OwnedLockGuard`]: `'static`, to
    /// keep in a struct or move into a thread or task). Call it on a clone
    /// of the `Arc` to keep one.
    ///
    /// # Errors
    ///
    /// As [`lock`](LockFile::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.lock");
    /// let lock = Arc::new(LockFile::new(&path)?);
    /// let guard = Arc::clone(&lock).lock_owned()?; // `lock` stays usable here
    /// let worker = std::thread::spawn(move || {
    ///     assert!(guard.lock_file().is_held());
    ///     // ... the work, under the lock; dropping the guard releases it ...
    /// });
    /// let next = LockFile::new(&path)?;
    /// let _next = next.lock()?; // waits for the worker to finish
    /// worker.join().expect("the worker");
    /// assert!(!lock.is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock_owned(self: Arc<Self>) -> Result<OwnedLockGuard> {
        let token = self.acquire_token(self.timeout)?;
        Ok(OwnedLockGuard { lock: self, token })
    }

    /// Tries once to take the lock, as [`lock_owned`](LockFile::lock_owned).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](LockFile::try_acquire).
    pub fn try_lock_owned(self: Arc<Self>) -> Result<OwnedLockGuard> {
        let token = self.acquire_token(Some(Duration::ZERO))?;
        Ok(OwnedLockGuard { lock: self, token })
    }

    /// Takes the lock, waiting at most `timeout`, as
    /// [`lock_owned`](LockFile::lock_owned).
    ///
    /// # Errors
    ///
    /// As [`acquire_timeout`](LockFile::acquire_timeout).
    pub fn lock_owned_timeout(self: Arc<Self>, timeout: Duration) -> Result<OwnedLockGuard> {
        let token = self.acquire_token(Some(timeout))?;
        Ok(OwnedLockGuard { lock: self, token })
    }

    /// Takes the lock as [`acquire`](LockFile::acquire) does (waiting as
    /// long as the handle's timeout allows), unless `cancel` is cancelled
    /// first: then it returns [`Error::Cancelled`] within 10 ms, holding
    /// nothing (see [`CancelToken`]).
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`]; otherwise as [`acquire`](LockFile::acquire).
    pub fn acquire_cancellable(&self, cancel: &CancelToken) -> Result<()> {
        self.acquire_token_until(self.timeout, Some(cancel))
            .map(drop)
    }

    /// Takes the lock as [`lock`](LockFile::lock) does, unless `cancel` is
    /// cancelled first (see [`acquire_cancellable`]).
    ///
    /// [`acquire_cancellable`]: LockFile::acquire_cancellable
    ///
    /// # Errors
    ///
    /// As [`acquire_cancellable`](LockFile::acquire_cancellable).
    pub fn lock_cancellable(&self, cancel: &CancelToken) -> Result<LockGuard<'_>> {
        let token = self.acquire_token_until(self.timeout, Some(cancel))?;
        Ok(LockGuard { lock: self, token })
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
    /// A wait for a `Mkdir` or `Link` lock on Linux sleeps on a watch of
    /// the lock (on a thread of tokio's blocking pool, not a runtime
    /// worker) and wakes when the lock is released, as the blocking wait
    /// does. A wait for an `Os` lock on Unix has a thread of its own (one
    /// per lock file and process, shared by the waits) ask for a shared
    /// lock of the lock file, waiting in the kernel, and let it go at
    /// once: it wakes at the release too, and otherwise tries at the
    /// backoff's pace as a polling wait would. Costs to know of:
    ///
    /// - the thread, with the lock file open, stays until the release
    ///   (or the process ends), even once every future waiting on it was
    ///   dropped: one thread per lock file that async waits wait for;
    ///   it does not keep a runtime from shutting down;
    /// - right after a release (or at once, where only shared holders have
    ///   the lock) it holds a shared lock for an instant, which another
    ///   process's try of an exclusive lock at that instant finds in its
    ///   way (a try-once acquire, `portalock run -n`, a bounded wait's
    ///   try, which then waits on).
    ///
    /// Elsewhere a wait polls with backoff, at most the poll interval
    /// apart.
    /// The runtime needs its time driver (`enable_time`, or `enable_all` as
    /// `#[tokio::main]` sets up).
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

    fn guard_within(&self, timeout: Option<Duration>) -> Result<LockGuard<'_>> {
        let token = self.acquire_token(timeout)?;
        Ok(LockGuard { lock: self, token })
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<()> {
        self.acquire_token(timeout).map(drop)
    }

    /// The error for a wait that ended with the lock still held.
    pub(super) fn contended(&self, timeout: Option<Duration>) -> Error {
        let holder = strategy::probe(self.strategy, &self.path)
            .ok()
            .and_then(Probe::into_record)
            .map(Box::new);
        Error::contended(self.path.clone(), timeout, holder)
    }
}
