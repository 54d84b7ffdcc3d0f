//! Shared (reader) locks on a [`LockFile`]: for `Os`, the kernel's shared
//! lock, through [`LockedFile`]; for `Mkdir` and `Link`, a registration
//! beside the lock (see [`super::readers`]).

use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::locked_file::LockedFile;
use crate::vocab::Concrete;

use crate::wait::Deadline;

use super::turnstile::{AtGate, Turnstile};
use super::LockFile;

impl LockFile {
    /// Takes the lock shared (as a reader), waiting as long as the handle's
    /// timeout says: any number of shared holders at once, in any
    /// processes and on any hosts, but none while an exclusive holder
    /// ([`acquire`], [`lock`]) holds it, and no exclusive holder while any
    /// shared one does. Every strategy has shared locks:
    ///
    /// - [`Os`](crate::LockStrategy::Os): the kernel's shared lock
    ///   (`flock(LOCK_SH)`, `LockFileEx` without `EXCLUSIVE`), released by
    ///   the kernel when the holder dies. Shared holders write no owner
    ///   record. On a local file system readers pass the lock's turnstile,
    ///   so that they wait behind a writer at the head of its queue
    ///   (writer preference); on a network file system the server's lock
    ///   manager orders them (a stream of readers may keep a writer out).
    /// - [`Mkdir`](crate::LockStrategy::Mkdir) and
    ///   [`Link`](crate::LockStrategy::Link): each reader registers in the
    ///   directory `.<name>.readers` beside the lock, with an owner record of
    ///   its own; a reader that crashed is broken by a writer by the rules
    ///   of a crashed holder (dead PID, expired [lease], grace period), and
    ///   a reader with a lease refreshes it. An exclusive holder waits,
    ///   holding the lock, for the readers that were in when it came;
    ///   readers that come after it wait behind it (writer preference: a
    ///   stream of readers does not starve a writer). The protocol and its
    ///   safety are argued in the crate's `lock::readers` module.
    ///   [`status`](LockFile::status) lists the readers.
    ///
    /// A shared hold is not the handle's exclusive one: the handle stays
    /// free ([`is_held`](LockFile::is_held) is `false`). Like the
    /// exclusive lock it is not reentrant: a process that reads and then
    /// asks to write waits for itself, and one that reads and asks to read
    /// again waits behind a writer that came between (as with
    /// `std::sync::RwLock`).
    ///
    /// Limits of the order: an `Os` reader behind a writer that waits at
    /// the head of the queue passes it after about two patience periods
    /// (it cannot tell that writer from a stopped one); an async writer
    /// (`lock_async`) tries the lock and the readers together between its
    /// sleeps, and so holds no reader back while it sleeps.
    ///
    /// [`acquire`]: LockFile::acquire
    /// [`lock`]: LockFile::lock
    /// [lease]: crate::LockOptions::lease
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] / [`Error::Timeout`] while an exclusive holder
    /// keeps it (or, for `Mkdir` and `Link`, waits for the readers to go),
    /// naming it; [`Error::Cancelled`] if the handle's
    /// [cancel token](crate::LockOptions::cancel_token) was cancelled; the
    /// errors of [`acquire`](LockFile::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStatus, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// for strategy in [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link] {
    ///     let path = dir.path().join(format!("catalog-{strategy}.lock"));
    ///     let (a, b) = (LockFile::with_strategy(&path, strategy)?,
    ///                   LockFile::with_strategy(&path, strategy)?);
    ///     let reader_a = a.lock_shared()?;
    ///     let reader_b = b.try_lock_shared()?; // readers share
    ///     let writer = LockFile::with_strategy(&path, strategy)?;
    ///     assert!(matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })));
    ///     if strategy != LockStrategy::Os {
    ///         assert!(matches!(writer.status()?, LockStatus::Shared(readers) if readers.len() == 2));
    ///     }
    ///     drop((reader_a, reader_b));
    ///     writer.try_acquire()?;
    ///     assert!(matches!(a.try_lock_shared(), Err(Error::WouldBlock { .. })));
    /// }
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
            let registration = self.register_reader(timeout)?;
            return Ok(SharedGuard {
                lock: self.path.clone(),
                hold: Some(Hold::Registered(Box::new(registration))),
            });
        }
        let _reported = self.report_wait(timeout);
        // Through the turnstile, as an exclusive acquisition: a reader
        // waits behind a writer at the head of the queue rather than
        // joining the readers the writer waits for (the kernel grants a
        // shared lock beside shared holders even while an exclusive one
        // waits).
        let deadline = Deadline::after(timeout).or_cancelled(self.cancel.as_ref());
        let mut gate = Turnstile::new(self);
        if let AtGate::Held = gate.enter(&deadline) {
            return Err(if deadline.cancelled() {
                Error::Cancelled {
                    lock: self.path.clone().into(),
                }
            } else {
                self.contended(timeout)
            });
        }
        let opened = LockedFile::options()
            .cancel_with(self.cancel.as_ref())
            .shared(true)
            .timeout(deadline.remaining())
            .poll_interval(self.poll_interval)
            .open(&self.path);
        gate.pass();
        match opened {
            Ok(file) => Ok(SharedGuard {
                lock: self.path.clone(),
                hold: Some(Hold::Os(file)),
            }),
            Err(e) if e.is_contended() => Err(Error::contended(
                self.path.clone(),
                timeout,
                self.owner().ok().flatten().map(Box::new),
            )),
            Err(e) => Err(e),
        }
    }
}

/// A shared (reader) hold on a lock, from [`LockFile::lock_shared`];
/// dropping it (or [`release`](SharedGuard::release)) lets go.
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
/// let lock = LockFile::with_strategy(&path, LockStrategy::Link)?;
/// let reader = lock.lock_shared()?;
/// assert!(!lock.is_held());
/// assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));
/// reader.ensure_held()?; // still a reader
/// let writer = LockFile::with_strategy(&path, LockStrategy::Link)?;
/// assert!(matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })));
/// reader.release()?;
/// writer.try_acquire()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the shared lock is released at once"]
pub struct SharedGuard {
    /// The lock's path.
    lock: Utf8PathBuf,
    /// `None` once released.
    hold: Option<Hold>,
}

/// What holds a shared lock.
#[derive(Debug)]
enum Hold {
    /// The kernel's shared lock on the `Os` lock file.
    Os(LockedFile),
    /// The reader's registration, a `Mkdir` lock beside a `Mkdir` or
    /// `Link` lock.
    Registered(Box<LockFile>),
}

impl SharedGuard {
    /// The path of the lock this guard holds shared.
    pub fn path(&self) -> &Utf8Path {
        &self.lock
    }

    /// Checks that this reader still holds the lock: for `Mkdir` and
    /// `Link`, that its registration was not broken (its lease went
    /// unrefreshed, or an operator broke it). An `Os` shared lock is held
    /// until released.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the registration was lost; [`Error::Io`] if
    /// the check failed.
    pub fn ensure_held(&self) -> Result<()> {
        match &self.hold {
            Some(Hold::Registered(registration)) => {
                registration.ensure_held().map_err(|e| self.own(e))
            }
            _ => Ok(()),
        }
    }

    /// Starts `command` under this shared lock, so that the lock lasts as
    /// long as the command runs, even if this process dies first, as
    /// [`LockFile::spawn`] does for an exclusive lock: an `Os` lock's open
    /// file is inherited by the command (Unix), a reader's registration
    /// names the command. Wait for the child, then release.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the command cannot be started or its registration
    /// cannot name it (then the command does not run).
    pub fn spawn(&self, command: &mut std::process::Command) -> Result<std::process::Child> {
        match &self.hold {
            None => Err(Error::NotLocked {
                lock: self.lock.clone().into(),
            }),
            Some(Hold::Os(file)) => {
                crate::sys::spawn_gated(command, &[file.file()], &mut |_| Ok(()))
                    .map_err(|e| Error::io(&self.lock, Op::Spawn, e))
            }
            Some(Hold::Registered(registration)) => {
                registration.spawn(command).map_err(|e| self.own(e))
            }
        }
    }

    /// Lets go of the shared lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if a reader's registration was broken
    /// meanwhile; [`Error::Io`] if the lock could not be released.
    pub fn release(mut self) -> Result<()> {
        self.let_go()
    }

    fn let_go(&mut self) -> Result<()> {
        match self.hold.take() {
            None => Ok(()),
            Some(Hold::Os(file)) => file.release(),
            Some(Hold::Registered(registration)) => {
                let released = registration.release().map_err(|e| own(&self.lock, e));
                // The last reader to leave removes the readers directory
                // (an empty one only: `rmdir`), so that a lock read and
                // left leaves nothing another user would have to remove.
                if let Some(dir) = super::readers::readers_dir(&self.lock) {
                    let _ = crate::files::remove_dir(dir);
                }
                released
            }
        }
    }

    /// `e`, said of the lock rather than of the registration.
    fn own(&self, e: Error) -> Error {
        own(&self.lock, e)
    }
}

impl Drop for SharedGuard {
    fn drop(&mut self) {
        // Best effort: a caller who wants the error calls `release`.
        let _ = self.let_go();
    }
}

/// A registration's `LockLost` or `NotLocked`, said of the lock at `lock`.
fn own(lock: &Utf8Path, e: Error) -> Error {
    match e {
        Error::LockLost { holder, .. } => Error::LockLost {
            lock: lock.to_owned().into(),
            holder,
        },
        Error::NotLocked { .. } => Error::LockLost {
            lock: lock.to_owned().into(),
            holder: None,
        },
        other => other,
    }
}
