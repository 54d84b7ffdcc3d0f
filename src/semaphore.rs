//! A counting semaphore across processes: portalocker's `BoundedSemaphore`
//! and `NamedBoundedSemaphore`.

use std::path::Path;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::lock::{LockFile, LockOptions};
use crate::wait::{Backoff, Deadline};

/// At most `n` holders at once, across processes: `n` slot locks
/// (`<prefix>.0` ... `<prefix>.<n-1>`), each a [`LockFile`] with the given
/// options (any strategy; stale slots are broken as for any lock). An
/// acquisition tries the slots in a random order, so that waiters spread
/// over them, and waits (polling, with the handle's timeout) until one is
/// free.
///
/// Every process must use the same prefix, `n` and strategy.
///
/// # Examples
///
/// ```
/// use portalock::{BoundedSemaphore, Error, LockOptions};
///
/// let dir = tempfile::tempdir()?;
/// let prefix = dir.path().join("downloads");
/// let sem = BoundedSemaphore::new(&prefix, 2, &LockOptions::new())?;
/// let a = sem.try_acquire()?;
/// let b = sem.try_acquire()?;
/// assert_ne!(a.slot(), b.slot());
/// assert!(matches!(sem.try_acquire(), Err(Error::WouldBlock { .. })));
/// drop(a);
/// let c = sem.try_acquire()?; // a slot is free again
/// # drop((b, c));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BoundedSemaphore {
    prefix: Utf8PathBuf,
    slots: Vec<LockFile>,
    timeout: Option<Duration>,
    poll_interval: Duration,
}

impl BoundedSemaphore {
    /// A semaphore of `n` slots named `<prefix>.<i>`, each opened with
    /// `options` (whose timeout and poll interval are the semaphore's).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] with `InvalidInput` if `n` is zero; the errors of
    /// [`LockOptions::open`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use portalock::{BoundedSemaphore, Error, LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let prefix = dir.path().join("encoders");
    /// let mut options = LockOptions::new();
    /// options.strategy(LockStrategy::Mkdir).timeout(Some(Duration::from_millis(20)));
    /// let sem = BoundedSemaphore::new(&prefix, 3, &options)?;
    /// assert_eq!(sem.slots(), 3);
    ///
    /// // Slot `i` is the lock `<prefix>.<i>`, a directory with `Mkdir`.
    /// let slot = sem.acquire()?;
    /// assert!(dir.path().join(format!("encoders.{}", slot.slot())).is_dir());
    ///
    /// // The options' timeout is the semaphore's.
    /// let (_b, _c) = (sem.acquire()?, sem.acquire()?);
    /// assert!(matches!(sem.acquire(), Err(Error::Timeout { .. })));
    ///
    /// let zero = BoundedSemaphore::new(&prefix, 0, &options).unwrap_err();
    /// assert_eq!(zero.io_error().map(|e| e.kind()), Some(std::io::ErrorKind::InvalidInput));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(prefix: impl AsRef<Path>, n: usize, options: &LockOptions) -> Result<Self> {
        let prefix = crate::files::absolute(prefix.as_ref())?;
        if n == 0 {
            return Err(Error::io(
                &prefix,
                Op::MakeSemaphore,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "zero slots"),
            ));
        }
        let slots = (0..n)
            .map(|i| options.open(format!("{prefix}.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let (timeout, poll_interval) = match slots.first() {
            Some(slot) => (slot.timeout(), slot.poll_interval()),
            None => (None, crate::lock::DEFAULT_POLL_INTERVAL),
        };
        Ok(BoundedSemaphore {
            prefix,
            slots,
            timeout,
            poll_interval,
        })
    }

    /// portalocker's `NamedBoundedSemaphore`: `n` slots named after `name`
    /// in the system's temporary directory, so that unrelated programs can
    /// share a semaphore by name.
    ///
    /// # Errors
    ///
    /// As [`new`](BoundedSemaphore::new).
    pub fn named(name: &str, n: usize, options: &LockOptions) -> Result<Self> {
        BoundedSemaphore::new(std::env::temp_dir().join(name), n, options)
    }

    /// The prefix of the slot paths.
    pub fn prefix(&self) -> &Utf8Path {
        &self.prefix
    }

    /// How many holders it admits at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Takes a slot, waiting as long as the options' timeout says.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] or [`Error::Timeout`] (naming the semaphore's
    /// prefix) if every slot stayed taken; the errors of the slot locks.
    pub fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
        self.acquire_within(self.timeout)
    }

    /// Takes a slot if one is free now.
    ///
    /// # Errors
    ///
    /// As [`acquire`](BoundedSemaphore::acquire).
    pub fn try_acquire(&self) -> Result<SemaphoreGuard<'_>> {
        self.acquire_within(Some(Duration::ZERO))
    }

    /// Takes a slot, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](BoundedSemaphore::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
        self.acquire_within(Some(timeout))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<SemaphoreGuard<'_>> {
        let cancel = self.slots.first().and_then(LockFile::cancel_token);
        let deadline = Deadline::after(timeout).or_cancelled(cancel);
        let mut backoff = Backoff::new(self.poll_interval);
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        loop {
            fastrand::shuffle(&mut order);
            for &slot in &order {
                match self.slots[slot].try_acquire() {
                    Ok(()) => {
                        return Ok(SemaphoreGuard {
                            semaphore: self,
                            slot,
                        })
                    }
                    Err(e) if e.is_contended() => {}
                    Err(e) => return Err(e),
                }
            }
            if !backoff.sleep(&deadline) {
                return Err(if deadline.cancelled() {
                    Error::Cancelled {
                        lock: self.prefix.clone().into(),
                    }
                } else {
                    Error::contended(self.prefix.clone(), timeout, None)
                });
            }
        }
    }
}

/// A slot of a [`BoundedSemaphore`]; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "if unused the slot is freed at once"]
pub struct SemaphoreGuard<'a> {
    semaphore: &'a BoundedSemaphore,
    slot: usize,
}

impl SemaphoreGuard<'_> {
    /// Which slot this is (`0..n`): holders at once hold different slots,
    /// so it can pick a resource of `n` (a GPU, a port, a worker directory)
    /// that nobody else uses meanwhile.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{BoundedSemaphore, LockOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let gpus = BoundedSemaphore::new(dir.path().join("gpu"), 2, &LockOptions::new())?;
    /// let guard = gpus.acquire()?;
    /// let gpu = guard.slot();
    /// assert!(gpu < gpus.slots());
    /// assert_eq!(guard.lock_file().path().as_str(), format!("{}.{gpu}", gpus.prefix()));
    /// // ... run on GPU `gpu` ...
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The slot's lock.
    pub fn lock_file(&self) -> &LockFile {
        &self.semaphore.slots[self.slot]
    }

    /// Frees the slot, reporting what failed.
    ///
    /// # Errors
    ///
    /// As [`LockFile::release`].
    pub fn release(self) -> Result<()> {
        let result = self.lock_file().release();
        std::mem::forget(self);
        result
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock_file().release();
    }
}
