//! A reentrant lock: portalocker's `RLock`.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use camino::Utf8Path;

use crate::error::{Error, Result};
use crate::lock::LockFile;

/// A [`LockFile`] that the thread holding it may acquire again.
///
/// The file lock is taken by the first acquisition and released when the
/// count of acquisitions returns to zero. Other threads (and processes)
/// wait as for any `LockFile`. Only the holding thread may release; a
/// release from another thread is [`Error::WrongThread`].
///
/// # Examples
///
/// ```
/// use portalock::{LockFile, ReentrantLockFile};
///
/// let dir = tempfile::tempdir()?;
/// let lock = ReentrantLockFile::new(LockFile::new(dir.path().join("r.lock"))?);
/// lock.acquire()?;
/// lock.acquire()?; // the same thread: no deadlock
/// assert_eq!(lock.count(), 2);
/// lock.release()?;
/// assert!(lock.lock_file().is_held()); // still held once
/// lock.release()?;
/// assert!(!lock.lock_file().is_held());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReentrantLockFile {
    lock: LockFile,
    owner: Mutex<Owner>,
    /// Wakes threads of this process that wait for the owner to let go.
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Owner {
    thread: Option<ThreadId>,
    count: usize,
}

impl ReentrantLockFile {
    /// A reentrant lock over `lock` (which must not be held).
    pub fn new(lock: LockFile) -> ReentrantLockFile {
        ReentrantLockFile {
            lock,
            owner: Mutex::new(Owner::default()),
            freed: Condvar::new(),
        }
    }

    /// The underlying lock.
    pub fn lock_file(&self) -> &LockFile {
        &self.lock
    }

    /// The lock path.
    pub fn path(&self) -> &Utf8Path {
        self.lock.path()
    }

    /// How many times the holding thread has acquired the lock (0 if
    /// nobody in this process holds it). Any thread may ask: the count is
    /// the holder's, not the caller's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portalock::{Error, LockFile, ReentrantLockFile};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = Arc::new(ReentrantLockFile::new(LockFile::new(dir.path().join("r.lock"))?));
    /// assert_eq!(lock.count(), 0);
    /// lock.acquire()?;
    /// lock.acquire()?;
    ///
    /// let seen = Arc::clone(&lock);
    /// let (count, released) = std::thread::spawn(move || (seen.count(), seen.release()))
    ///     .join()
    ///     .expect("the thread");
    /// assert_eq!(count, 2); // another thread sees the holder's count ...
    /// assert!(matches!(released, Err(Error::WrongThread { .. }))); // ... and cannot release
    ///
    /// while lock.count() > 0 {
    ///     lock.release()?;
    /// }
    /// assert!(!lock.lock_file().is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn count(&self) -> usize {
        self.owner().count
    }

    /// Acquires the lock, waiting as long as the underlying handle's
    /// timeout says; at once if this thread already holds it.
    ///
    /// # Errors
    ///
    /// As [`LockFile::acquire`].
    pub fn acquire(&self) -> Result<()> {
        self.acquire_within(self.lock.timeout())
    }

    /// Acquires the lock if that needs no waiting.
    ///
    /// # Errors
    ///
    /// As [`LockFile::try_acquire`].
    pub fn try_acquire(&self) -> Result<()> {
        self.acquire_within(Some(Duration::ZERO))
    }

    /// Acquires the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`LockFile::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
        self.acquire_within(Some(timeout))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<()> {
        let me = std::thread::current().id();
        let mut owner = self.owner();
        if owner.thread == Some(me) {
            owner.count += 1;
            return Ok(());
        }
        // Another thread of this process holds it: wait for it to let go
        // here, without holding the file lock's in-process slot.
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        while owner.thread.is_some() {
            owner = match deadline {
                Some(at) => {
                    let left = at.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(self.busy(timeout));
                    }
                    self.freed
                        .wait_timeout(owner, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .freed
                    .wait(owner)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        // Nobody in this process holds it; other processes may. Mark it
        // ours while we take the file lock, so that the other threads of
        // this process keep waiting on the condition variable.
        owner.thread = Some(me);
        drop(owner);
        let left = deadline.map(|at| at.saturating_duration_since(std::time::Instant::now()));
        let taken = match (timeout, left) {
            (None, _) => self.lock.acquire(),
            (Some(_), Some(left)) => self.lock.acquire_timeout(left),
            (Some(t), None) => self.lock.acquire_timeout(t),
        };
        let mut owner = self.owner();
        match taken {
            Ok(()) => {
                owner.count = 1;
                Ok(())
            }
            Err(e) => {
                owner.thread = None;
                drop(owner);
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    /// Releases one acquisition; the file lock goes when the count returns
    /// to zero.
    ///
    /// # Errors
    ///
    /// [`Error::WrongThread`] if another thread holds the lock,
    /// [`Error::NotLocked`] if nobody does, and the errors of
    /// [`LockFile::release`] for the last release (the count is zero
    /// afterwards whatever happens).
    pub fn release(&self) -> Result<()> {
        let me = std::thread::current().id();
        let mut owner = self.owner();
        match owner.thread {
            Some(t) if t == me && owner.count > 0 => {}
            Some(_) if owner.count > 0 => {
                return Err(Error::WrongThread {
                    path: self.lock.path().to_owned(),
                })
            }
            _ => {
                return Err(Error::NotLocked {
                    lock: self.lock.path().into(),
                })
            }
        }
        owner.count -= 1;
        if owner.count > 0 {
            return Ok(());
        }
        let released = self.lock.release();
        owner.thread = None;
        drop(owner);
        self.freed.notify_one();
        released
    }

    fn owner(&self) -> MutexGuard<'_, Owner> {
        self.owner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn busy(&self, timeout: Option<Duration>) -> Error {
        let holder = self.lock.owner().ok().flatten().map(Box::new);
        Error::contended(self.lock.path().to_owned(), timeout, holder)
    }
}
