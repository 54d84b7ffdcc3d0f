//! [`EtcdGuard`]: proof of holding an [`EtcdLock`].

use crate::error::Result;

use super::EtcdLock;

/// Proof that an [`EtcdLock`] holds its lock; dropping it releases the
/// lock.
///
/// The guard releases only the acquisition that created it, as
/// [`LockGuard`](crate::LockGuard) does: if the lock was released through
/// the handle meanwhile and taken again, dropping the old guard leaves the
/// new acquisition alone.
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct EtcdGuard<'a> {
    pub(super) lock: &'a EtcdLock,
    pub(super) fence: u64,
}

impl EtcdGuard<'_> {
    /// The lock this guard holds (as [`LockGuard::lock_file`]).
    ///
    /// [`LockGuard::lock_file`]: crate::LockGuard::lock_file
    pub fn etcd_lock(&self) -> &EtcdLock {
        self.lock
    }

    /// The fencing token of the acquisition this guard holds.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Releases the lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// As [`EtcdLock::release`].
    pub fn release(mut self) -> Result<()> {
        // Fence 0 matches no acquisition: `Drop` then does nothing.
        let fence = std::mem::take(&mut self.fence);
        self.lock.release_fence(Some(fence))
    }
}

impl Drop for EtcdGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release_fence(Some(self.fence));
    }
}
