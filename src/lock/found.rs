//! Which strategy took the lock found at a path, for tools that look at
//! a lock they did not take.

use std::path::Path;

use crate::error::{Error, Op, Result};
use crate::files;
use crate::strategy;
use crate::vocab::{FileKind, LockStrategy};

impl LockStrategy {
    /// The strategy of the lock at `path`, as far as what is there tells:
    /// a directory is a [`Mkdir`](LockStrategy::Mkdir) lock, and a regular
    /// file whose owner record can be read is a lock of the strategy its
    /// record names. A released `Os` lock's file names `Os` where it keeps
    /// its last holder's record (on a local file system). `None` when
    /// nothing is there, or when what is there tells nothing: a file
    /// without a readable record (a released `Os` lock's on a network file
    /// system, blanked, or another program's), a symbolic link, a FIFO.
    /// A lock held only by readers ([`LockFile::lock_shared`] on `Mkdir` or
    /// `Link`: nothing at `path`, registrations beside it) is found as
    /// `Mkdir`, the strategy of the registrations; a `Mkdir` and a `Link`
    /// lock on one path exclude each other and share their readers.
    ///
    /// [`LockFile::lock_shared`]: crate::LockFile::lock_shared
    ///
    /// A tool that looks at a lock it did not take (`portalock status`,
    /// `portalock break`) opens its handle with this strategy, so that it
    /// looks at the lock as its holder took it.
    ///
    /// # Errors
    ///
    /// [`Error::NonUtf8Path`] if `path` (or the current directory, for a
    /// relative path) is not UTF-8; [`Error::Io`] if what is at `path`
    /// cannot be looked at (a permission denied on its directory).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("job.lock");
    /// assert_eq!(LockStrategy::found_at(&path)?, None);
    ///
    /// let lock = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// lock.acquire()?;
    /// assert_eq!(LockStrategy::found_at(&path)?, Some(LockStrategy::Link));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn found_at(path: impl AsRef<Path>) -> Result<Option<LockStrategy>> {
        let path = files::absolute(path.as_ref())?;
        let kind = files::lkind(&path).map_err(|e| Error::io(&path, Op::Inspect, e))?;
        Ok(match kind {
            Some(FileKind::Directory) => Some(LockStrategy::Mkdir),
            // Opened without following a link and without waiting on a
            // FIFO put there meanwhile; a record that cannot be read tells
            // nothing.
            Some(FileKind::File) => {
                strategy::record_at(&path).and_then(|record| record.strategy.file_strategy())
            }
            Some(FileKind::Symlink | FileKind::Other) => None,
            None => super::readers::readers_dir(&path)
                .filter(|dir| super::readers::any_registered(dir))
                .map(|_| LockStrategy::Mkdir),
        })
    }
}
