//! [`LockGuard`], the proof of holding a [`LockFile`]; [`OwnedLockGuard`],
//! the same owning its handle; and [`lock_file`], the one-call shortcut.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;

use super::release::Keep;
use super::LockFile;

/// Proof that a [`LockFile`] holds its lock; dropping it releases the lock.
///
/// The guard releases only the acquisition that created it: if the lock was
/// released through the handle meanwhile and taken again, dropping the old
/// guard leaves the new acquisition alone.
///
/// # Examples
///
/// ```
/// use portalock::LockFile;
///
/// let dir = tempfile::tempdir()?;
/// let lock = LockFile::new(dir.path().join("x.lock"))?;
/// let guard = lock.lock()?;
/// // The guard names its acquisition in the owner record.
/// assert_eq!(lock.owner()?.map(|o| o.token).as_deref(), Some(guard.token()));
/// guard.release()?; // as a drop, but the error is the caller's to see
/// assert!(!lock.is_held());
///
/// // A guard outlived by its acquisition releases nothing.
/// let old = lock.lock()?;
/// lock.release()?;
/// lock.acquire()?;
/// drop(old);
/// assert!(lock.is_held());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct LockGuard<'a> {
    pub(super) lock: &'a LockFile,
    pub(super) token: String,
}

impl LockGuard<'_> {
    /// The handle this guard locks.
    pub fn lock_file(&self) -> &LockFile {
        self.lock
    }

    /// The fencing token of this acquisition (with
    /// [`LockOptions::fencing`](crate::LockOptions::fencing)): larger than
    /// that of every acquisition of the lock before it.
    pub fn fence(&self) -> Option<u64> {
        self.lock.fence_of(&self.token)
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

/// Proof that a [`LockFile`] holds its lock, owning a reference to the
/// handle: from [`LockFile::lock_owned`], to keep in a struct or move into
/// a thread or an async task. Dropping it releases the lock.
///
/// Like [`LockGuard`], it releases only the acquisition that created it.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use portalock::LockFile;
///
/// let dir = tempfile::tempdir()?;
/// let lock = Arc::new(LockFile::new(dir.path().join("job.lock"))?);
/// let guard = Arc::clone(&lock).lock_owned()?;
/// // The guard goes to another thread, which releases the lock when done.
/// std::thread::spawn(move || {
///     assert!(guard.lock_file().is_held());
///     drop(guard);
/// })
/// .join()
/// .expect("the thread");
/// assert!(!lock.is_held());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct OwnedLockGuard {
    pub(super) lock: Arc<LockFile>,
    pub(super) token: String,
}

impl OwnedLockGuard {
    /// The handle this guard locks.
    pub fn lock_file(&self) -> &Arc<LockFile> {
        &self.lock
    }

    /// The fencing token of this acquisition, as [`LockGuard::fence`].
    pub fn fence(&self) -> Option<u64> {
        self.lock.fence_of(&self.token)
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
        let token = std::mem::take(&mut self.token);
        self.lock.release_token(&token, Keep::Handle)
    }
}

impl Drop for OwnedLockGuard {
    fn drop(&mut self) {
        // As `LockGuard`'s (an empty token, after `release`, matches none).
        let _ = self.lock.release_token(&self.token, Keep::Background);
    }
}

/// Opens the lock at `path` with the default options and takes it, waiting
/// as long as it takes: the shortcut of Python's `locket.lock_file`.
///
/// The returned handle holds the lock; dropping it (or calling
/// [`LockFile::release`]) releases it. A call whose handle is not kept
/// takes the lock and lets it go at once, and the compiler says so
/// (`LockFile` is `#[must_use]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let dir = tempfile::tempdir()?;
///     portalock::lock_file(dir.path().join("cron.lock"))?; // unused: warned
///     Ok(())
/// }
/// ```
///
/// # Errors
///
/// As [`LockOptions::open`](super::LockOptions::open) and [`LockFile::acquire`].
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
