//! Releasing a [`LockFile`]: by the handle, by a guard, or by a drop,
//! and what a release that failed half way leaves.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::holding::{self, Holding};
use crate::registry::registry;
use crate::strategy::{self, Hold, Released};

use super::LockFile;

impl LockFile {
    /// Releases the lock this handle holds. Any thread may call it.
    ///
    /// The lock artifact is removed (or, for `Os`, unlocked, its file left
    /// with the record in it; on a network file system the record is
    /// blanked first) only if it is still this acquisition's: its claim is
    /// removed first, so a lock that was broken and taken by someone else
    /// is never touched.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle does not hold the lock;
    /// [`Error::LockLost`] if the lock was broken or replaced by someone
    /// else meanwhile (nothing of theirs is touched, and the handle is
    /// unlocked afterwards); [`Error::Io`]. A `Mkdir` or `Link` release
    /// that fails before it changed anything (a read-only or full file
    /// system, a permission taken away) leaves the lock held by this handle,
    /// so that `release` may be called again; an `Os` lock is unlocked even
    /// when clearing its record failed.
    pub fn release(&self) -> Result<()> {
        let holding = self.state().take().ok_or_else(|| self.not_locked())?;
        self.finish_release(holding, Keep::Handle)
    }

    /// Gives the lock up: releases it in the file system and leaves the
    /// process's table.
    ///
    /// A `Mkdir` or `Link` release that failed before it changed anything
    /// (a read-only or full file system, a permission taken away, a passing
    /// I/O error), the lock still this acquisition's, is not given up:
    /// with `Keep::Handle` the handle holds the lock again, so that the
    /// caller may retry; with `Keep::Background` (a drop: nobody to see the
    /// error or to retry) the release is tried again in the background
    /// until it succeeds or the lock is found lost, and the handle is free.
    pub(super) fn finish_release(&self, holding: Arc<Holding>, keep: Keep) -> Result<()> {
        let held = holding.take();
        let copy = held.as_ref().and_then(Hold::retry_copy);
        let result = match held {
            Some(held) => strategy::release(&self.path, held, &mut holding::lock(&self.os_file)),
            None => Ok(Released::Lost(None)),
        };
        let unchanged = |copy: &Hold| {
            matches!(&result, Err(e) if e.io_error().is_some())
                && copy.check(&self.path).unwrap_or(false)
        };
        if let Some(copy) = copy.filter(unchanged) {
            match keep {
                Keep::Handle => {
                    holding.restore(copy);
                    *self.state() = Some(holding);
                }
                Keep::Background => {
                    registry().leave(&self.path, self.id);
                    holding::release_later(&self.path, copy);
                }
            }
            return result.map(drop);
        }
        registry().leave(&self.path, self.id);
        match result? {
            Released::Done => Ok(()),
            Released::Lost(seen) => {
                holding.mark_lost();
                Err(match seen {
                    Some(holder) => Error::LockLost {
                        lock: self.path.clone().into(),
                        holder: holder.map(Box::new),
                    },
                    None => self.lost(),
                })
            }
        }
    }

    /// Releases the lock if it is still the acquisition that issued `token`.
    pub(super) fn release_token(&self, token: &str, keep: Keep) -> Result<()> {
        let holding = {
            let mut state = self.state();
            match state.as_ref() {
                Some(holding) if holding.token() == token => state.take(),
                _ => None,
            }
        };
        let holding = holding.ok_or_else(|| self.not_locked())?;
        self.finish_release(holding, keep)
    }
}

/// Where a release that failed before changing anything leaves the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Held by the handle again: the caller sees the error and may retry.
    Handle,
    /// Released in the background, retried until done: for drops.
    Background,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Through `state`, which forgets a lock inherited through `fork()`.
        let held = self.state().take();
        if let Some(holding) = held {
            // Best effort: a caller who wants the error calls `release`.
            // A release that fails for a moment is finished in the
            // background: the handle goes away.
            let _ = self.finish_release(holding, Keep::Background);
        }
    }
}
