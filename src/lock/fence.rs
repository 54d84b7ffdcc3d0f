//! Fencing tokens for file locks ([`LockOptions::fencing`]): a number for
//! each acquisition, larger than that of every acquisition before it,
//! across processes, crashes, breaks and forced breaks, on local and
//! network file systems.
//!
//! # Why
//!
//! A lock cannot stop a holder that was paused (a long GC pause, a stopped
//! process, a partitioned host) from acting after its lock was broken and
//! taken by another: when it resumes it still believes it holds the lock.
//! The resource the lock guards can stop it, if every request carries the
//! holder's fencing token and the resource refuses a token smaller than
//! the largest it has seen (Kleppmann, "How to do distributed locking").
//! The paused holder's token is smaller than its successor's, so its late
//! writes are refused.
//!
//! # The counter
//!
//! Beside the lock, the directory `.<name>.fence` holds one file whose
//! name is the last token given out (`.<name>.fence/41`). An acquisition,
//! once it holds the lock:
//!
//! 1. lists that directory and takes the number N there;
//! 2. renames `N` to `N+1`: the rename moves the one name there is, so it
//!    succeeds for one process only, and only while `N` is still the
//!    counter; otherwise (another moved it meanwhile) it looks again;
//! 3. checks that it still holds the lock: the token `N+1` is its own only
//!    if nobody broke the lock before the counter moved.
//!
//! The counter only ever moves up, by renames of the name that is there:
//! no write of a number read earlier can land later and take it back, as a
//! paused holder's would in a file rewritten in place. Every holder whose
//! check (3) succeeded moved the counter before any later holder took the
//! lock (which needs the lock broken or released first, after that
//! check), so each later holder moves it further: its token is larger. A
//! holder killed between (2) and (3) leaves a number unused: tokens grow
//! strictly, with gaps.
//!
//! On a network file system a rename whose reply was lost may be answered
//! "no such file" though it was done: the new name then carries the inode
//! the old one had, which tells. The directory is made complete or not at
//! all: `0` is written into a private directory renamed into place, which
//! fails if another process's is there first.
//!
//! Do not remove the directory while its numbers matter to a resource: a
//! new one starts again from 1.
//!
//! [`LockOptions::fencing`]: crate::LockOptions::fencing

use std::io;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::files;
use crate::strategy;

/// How many times the counter is looked at again when it moved under an
/// acquisition: it moves only for holders, one at a time, so more means
/// something else renames in the directory.
const TRIES: u32 = 64;

/// The counter's directory beside the lock at `path`.
pub(crate) fn fence_dir(path: &Utf8Path) -> Option<Utf8PathBuf> {
    let dir = path.parent()?;
    let prefix = strategy::private_prefix(path)?;
    Some(dir.join(format!("{prefix}fence")))
}

/// Moves the counter beside the lock at `path` up by one, for the
/// acquisition of `token` that holds the lock: the new number.
pub(crate) fn next(path: &Utf8Path, token: &str) -> Result<u64> {
    let err = |op: Op, e: io::Error| Error::io(path, op, e);
    let dir = fence_dir(path).ok_or_else(|| {
        err(
            Op::UseAsLockPath,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    for _ in 0..TRIES {
        let current = match current(&dir) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(err(
                    Op::Fence,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the fencing counter {dir} holds no number (something removed it); \
                             remove the directory to start again from 1, once no resource \
                             remembers a larger token"
                        ),
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                start(&dir, token).map_err(|e| err(Op::Fence, e))?;
                continue;
            }
            Err(e) => return Err(err(Op::Fence, e)),
        };
        let Some(up) = current.checked_add(1) else {
            return Err(err(
                Op::Fence,
                io::Error::other("the fencing counter is at its largest number"),
            ));
        };
        let (from, to) = (dir.join(current.to_string()), dir.join(up.to_string()));
        // The inode that moves, to tell a rename done but not answered.
        let moving = match std::fs::symlink_metadata(&from) {
            Ok(meta) => ino(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(Op::Fence, e)),
        };
        match std::fs::rename(&from, &to) {
            Ok(()) => return Ok(up),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let moved = std::fs::symlink_metadata(&to).ok().map(|meta| ino(&meta));
                if moving.is_some() && moved == Some(moving) {
                    return Ok(up);
                }
                std::thread::yield_now();
            }
            Err(e) => return Err(err(Op::Fence, e)),
        }
    }
    Err(err(
        Op::Fence,
        io::Error::other("the fencing counter kept moving while this holder moved it"),
    ))
}

/// The inode number in `meta`, where the platform says one.
fn ino(meta: &std::fs::Metadata) -> Option<u64> {
    Some(crate::sys::ino(meta)).filter(|&ino| ino != 0)
}

/// The counter's number: the largest number named in `dir`; `None` if it
/// names none. Other names (a network client's `.nfs*` files) are not
/// numbers.
fn current(dir: &Utf8Path) -> io::Result<Option<u64>> {
    let mut largest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        largest = largest.max(number);
    }
    Ok(largest)
}

/// Makes the counter at `dir`, at 0, unless another process's is there
/// first: a private directory with `0` in it, renamed into place.
fn start(dir: &Utf8Path, token: &str) -> io::Result<()> {
    let private = Utf8PathBuf::from(format!("{dir}.{token}.new"));
    match std::fs::create_dir(&private) {
        Ok(()) => {}
        // (this acquisition's own, from an attempt whose reply was lost)
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let zero = private.join("0");
    match files::create_new(&zero) {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let placed = std::fs::rename(&private, dir);
    if placed.is_err() || private.as_std_path().exists() {
        // Another process's counter is there (a rename onto a directory
        // that is not empty fails), or ours went in and the reply was lost:
        // either way the private one, if left, goes.
        let _ = std::fs::remove_file(&zero);
        let _ = std::fs::remove_dir(&private);
    }
    match placed {
        Err(e) if !dir.as_std_path().is_dir() => Err(e),
        _ => Ok(()),
    }
}
