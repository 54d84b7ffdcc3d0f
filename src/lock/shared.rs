//! Shared (reader) locks on a [`LockFile`]: `Os` only, through
//! [`LockedFile`].

use std::time::Duration;

use crate::error::{Error, Result};
use crate::locked_file::LockedFile;
use crate::vocab::Concrete;

use super::LockFile;

impl LockFile {
    /// Takes the lock shared (as a reader), waiting as long as the handle's
    /// timeout says: any number of shared holders at once, in any
    /// processes, but none while an exclusive holder ([`acquire`],
    /// [`lock`]) holds it, and no exclusive holder while any shared one
    /// does. Only the [`Os`](crate::LockStrategy::Os) strategy has shared locks;
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
        let _reported = self.report_wait(timeout);
        let opened = LockedFile::options()
            .cancel_with(self.cancel.as_ref())
            .shared(true)
            .timeout(timeout)
            .poll_interval(self.poll_interval)
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
}

/// A shared (reader) hold on an `Os` lock, from
/// [`LockFile::lock_shared`]; dropping it (or [`release`](SharedGuard::release))
/// lets go.
///
/// A shared hold is not the handle's exclusive one: while it lasts,
/// [`LockFile::is_held`] is `false` and [`LockFile::release`] has nothing
/// to release.
///
/// # Examples
///
/// ```
/// use portalock::{Error, LockFile, LockStrategy};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("catalog.lock");
/// let lock = LockFile::with_strategy(&path, LockStrategy::Os)?;
/// let reader = lock.lock_shared()?;
/// assert!(!lock.is_held());
/// assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));
/// let writer = LockFile::with_strategy(&path, LockStrategy::Os)?;
/// assert!(matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })));
/// reader.release()?;
/// writer.try_acquire()?;
///
/// // Only `Os` locks have readers.
/// let dir_lock = LockFile::with_strategy(dir.path().join("dir.lock"), LockStrategy::Mkdir)?;
/// assert!(matches!(dir_lock.lock_shared(), Err(Error::Unsupported { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the shared lock is released at once"]
pub struct SharedGuard {
    pub(super) file: LockedFile,
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
