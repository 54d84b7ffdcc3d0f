//! Locking a file the caller already opened: portalocker's `lock`,
//! `unlock` and `LockFlags`.
//!
//! These are the OS advisory locks (`flock` on Unix, `LockFileEx` on
//! Windows, through the standard library) on an open [`File`], with no
//! lock path, owner record or registry: the building block for callers who
//! manage their files themselves. A lock belongs to the open file (its
//! file description), is released by [`unlock`] or when the last handle to
//! that open file closes, and does not exclude other clients of a network
//! file system (see [`FileSystem`](crate::FileSystem)).

use std::fs::File;
use std::io;
use std::ops::BitOr;

use crate::sys::{self, LockKind, Wait};

/// How [`lock`] locks: exclusive or shared, blocking or not. Combine with
/// `|`, as in portalocker: `LockFlags::SHARED | LockFlags::NON_BLOCKING`.
///
/// # Examples
///
/// ```
/// use portalock::flock::{lock, unlock, LockFlags};
///
/// let file = tempfile::tempfile()?;
/// lock(&file, LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING)?;
/// unlock(&file)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockFlags(u8);

impl LockFlags {
    /// An exclusive (writer) lock: nobody else holds the file locked.
    pub const EXCLUSIVE: LockFlags = LockFlags(1);
    /// A shared (reader) lock: others may hold shared locks too, but no
    /// exclusive one.
    pub const SHARED: LockFlags = LockFlags(2);
    /// Fail at once with [`io::ErrorKind::WouldBlock`] instead of waiting.
    pub const NON_BLOCKING: LockFlags = LockFlags(4);

    /// Whether every flag of `other` is set in `self`.
    pub fn contains(self, other: LockFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for LockFlags {
    type Output = LockFlags;

    fn bitor(self, other: LockFlags) -> LockFlags {
        LockFlags(self.0 | other.0)
    }
}

/// Locks the open `file` as `flags` say. Without
/// [`NON_BLOCKING`](LockFlags::NON_BLOCKING) it waits as long as it takes.
/// Locking a file this open file already holds changes the lock's kind
/// (on Unix; Windows stacks the locks, so unlock first).
///
/// # Errors
///
/// [`io::ErrorKind::WouldBlock`] when `NON_BLOCKING` is set and someone
/// else holds a conflicting lock; [`io::ErrorKind::InvalidInput`] when
/// both or neither of `EXCLUSIVE` and `SHARED` are set; the operating
/// system's error otherwise.
pub fn lock(file: &File, flags: LockFlags) -> io::Result<()> {
    let exclusive = flags.contains(LockFlags::EXCLUSIVE);
    if exclusive == flags.contains(LockFlags::SHARED) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "lock flags need exactly one of EXCLUSIVE and SHARED",
        ));
    }
    let kind = if exclusive {
        LockKind::Exclusive
    } else {
        LockKind::Shared
    };
    let wait = if flags.contains(LockFlags::NON_BLOCKING) {
        Wait::Try
    } else {
        Wait::Block
    };
    match sys::lock_file(file, kind, wait) {
        Err(e) if wait == Wait::Try && sys::lock_contended(&e, file) => {
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    }
}

/// Releases the lock that the open `file` holds (nothing happens if it
/// holds none).
///
/// # Errors
///
/// The operating system's error.
pub fn unlock(file: &File) -> io::Result<()> {
    sys::unlock_file(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_opens() -> (tempfile::NamedTempFile, File, File) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        let a = File::open(tmp.path()).expect("open a");
        let b = File::open(tmp.path()).expect("open b");
        (tmp, a, b)
    }

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let (_tmp, a, b) = two_opens();
        let try_ex = LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING;
        let try_sh = LockFlags::SHARED | LockFlags::NON_BLOCKING;
        lock(&a, try_ex).expect("a exclusive");
        let e = lock(&b, try_sh).expect_err("b is excluded");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        unlock(&a).expect("unlock");
        lock(&a, try_sh).expect("a shared");
        lock(&b, try_sh).expect("b shared too");
        let e = lock(&b, try_ex).expect_err("no writer while a reads");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn flags_need_exactly_one_kind() {
        let (_tmp, a, _b) = two_opens();
        for flags in [
            LockFlags::NON_BLOCKING,
            LockFlags::EXCLUSIVE | LockFlags::SHARED,
        ] {
            let e = lock(&a, flags).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
