//! [`RedisGuard`]: proof of holding a [`RedisLock`].

use crate::error::Result;

use super::RedisLock;

/// Proof that a [`RedisLock`] holds its lock; dropping it releases the
/// lock.
///
/// The guard releases only the acquisition that created it, as
/// [`LockGuard`](crate::LockGuard) does: if the lock was released through
/// the handle meanwhile and taken again, dropping the old guard leaves the
/// new acquisition alone.
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct RedisGuard<'a> {
    pub(super) lock: &'a RedisLock,
    pub(super) token: String,
}

impl RedisGuard<'_> {
    /// The lock this guard holds (as [`LockGuard::lock_file`]).
    ///
    /// [`LockGuard::lock_file`]: crate::LockGuard::lock_file
    pub fn redis_lock(&self) -> &RedisLock {
        self.lock
    }

    /// Releases the lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// As [`RedisLock::release`].
    pub fn release(mut self) -> Result<()> {
        // An empty token matches no acquisition: `Drop` then does nothing.
        let token = std::mem::take(&mut self.token);
        self.lock.release_token(&token)
    }
}

impl Drop for RedisGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release_token(&self.token);
    }
}
