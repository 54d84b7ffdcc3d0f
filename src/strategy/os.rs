//! `Os`: an advisory lock on an open file, through `fd-lock`.
//!
//! The lock file is created if needed (never truncated before the lock is
//! held: truncating a live holder's file would destroy its record), locked
//! exclusively, and only then given this holder's owner record. The file
//! stays after release, emptied: unlinking it would let a later waiter lock
//! a new inode while an earlier one still holds the old.
//!
//! `fd-lock`'s write guard borrows its `RwLock`, so a handle cannot keep it
//! between `acquire` and `release` without a self-referential struct. The
//! guard is instead forgotten once the lock is taken: the lock belongs to
//! the open file description, which the handle keeps, and release unlocks
//! that file explicitly and closes it (closing alone would also unlock).
//!
//! The record is written with one write at offset 0, padded with spaces to
//! the length of what it replaces, then the file is cut to the record's
//! length. JSON allows trailing white space, so a reader sees either a whole
//! record or, in the rare case of a torn read, bytes that do not parse and
//! count as an unknown owner, never a wrong one.

use std::fs::File;
use std::io;
use std::sync::Arc;

use camino::Utf8Path;

use crate::error::{Error, FileKind, Result};
use crate::fs;
use crate::owner::{OwnerRecord, MAX_RECORD_LEN};
use crate::strategy::{Claim, LockStrategy, Probe, Released, Seen};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) file: Arc<File>,
    pub(crate) token: String,
    id: fs::FileId,
    sync: bool,
    /// Remove the lock file on release (a temporary lock file).
    remove: bool,
}

pub(crate) fn try_acquire(
    path: &Utf8Path,
    record: &OwnerRecord,
    block: bool,
    sync: bool,
    remove: bool,
) -> Result<Option<Held>> {
    // A holder that removes the file on release (or anyone who deletes or
    // replaces it) leaves waiters locking a file that the path no longer
    // names: such a lock excludes nobody, so it is dropped and the file
    // opened afresh. Each round means the lock was released meanwhile;
    // after many, the lock is plainly busy.
    for _ in 0..64 {
        let file = fs::open_create(path).map_err(|e| open_error(path, e))?;
        // The identity of an open file does not change; it is compared
        // with the path's once the lock is held.
        let id = check_regular(path, &file)?;
        let mut lock = fd_lock::RwLock::new(file);
        let taken = if block {
            lock.write().map(std::mem::forget)
        } else {
            lock.try_write().map(std::mem::forget)
        };
        match taken {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(Error::io(path, "lock", e)),
        }
        let mut file = lock.into_inner();
        // The lock is ours from here; any error below must unlock it.
        match check_id(path, id).map_err(|e| Error::io(path, "inspect lock file", e)) {
            Ok(true) => {}
            Ok(false) => {
                unlock(&file);
                continue;
            }
            Err(e) => {
                unlock(&file);
                return Err(e);
            }
        }
        let written = write_record(path, &mut file, record).and_then(|()| {
            if sync {
                file.sync_all()
                    .and_then(|()| fs::sync_parent(path))
                    .map_err(|e| Error::io(path, "flush the owner record of", e))?;
            }
            Ok(id)
        });
        return match written {
            Ok(id) => Ok(Some(Held {
                file: Arc::new(file),
                token: record.token.clone(),
                id,
                sync,
                remove,
            })),
            Err(e) => {
                unlock(&file);
                Err(e)
            }
        };
    }
    Ok(None)
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<Released> {
    let Held {
        file,
        token,
        id,
        sync,
        remove,
    } = held;
    let result = release_locked(path, &file, &token, id).and_then(|released| {
        if !matches!(released, Released::Done) {
            return Ok(released);
        }
        if remove {
            // Removed while still locked: a waiter that then locks the
            // removed file sees that the path no longer names it.
            fs::remove_file(path).map_err(|e| Error::io(path, "remove lock file", e))?;
            if sync {
                fs::sync_parent(path).map_err(|e| Error::io(path, "flush the removal of", e))?;
            }
        } else if sync {
            file.sync_all()
                .map_err(|e| Error::io(path, "flush the cleared record of", e))?;
        }
        Ok(released)
    });
    unlock(&file);
    result
}

fn release_locked(path: &Utf8Path, file: &File, token: &str, id: fs::FileId) -> Result<Released> {
    if !check_id(path, id).map_err(|e| Error::io(path, "inspect lock file", e))? {
        // Deleted or replaced: others lock another inode now.
        return Ok(Released::Lost(None));
    }
    let bytes =
        read_from_start(file).map_err(|e| Error::io(path, "read the owner record of", e))?;
    match OwnerRecord::parse(&bytes) {
        Some(rec) if rec.token == token => {
            file.set_len(0)
                .map_err(|e| Error::io(path, "clear the owner record of", e))?;
            Ok(Released::Done)
        }
        other => Ok(Released::Lost(Some(other))),
    }
}

/// The lock is ours while the path still names the inode we locked: the
/// kernel lock cannot be taken away, but the file can be deleted or
/// replaced, after which other processes lock another inode.
pub(crate) fn check(path: &Utf8Path, held: &Held) -> io::Result<bool> {
    check_id(path, held.id)
}

fn check_id(path: &Utf8Path, id: fs::FileId) -> io::Result<bool> {
    Ok(fs::path_id(path)? == Some(id))
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match fs::open_read(path) {
        Ok(file) => file,
        Err(e) if fs::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) => return Err(open_error(path, e)),
    };
    check_regular(path, &file)?;
    let lock = fd_lock::RwLock::new(file);
    match lock.try_read() {
        Ok(guard) => {
            drop(guard);
            return Ok(Probe::Free);
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(Error::io(path, "probe", e)),
    }
    let file = lock.into_inner();
    // The holder may be between locking and writing its record: try a few
    // times before calling the owner unknown.
    let mut record = None;
    let mut stamp = Vec::new();
    for _ in 0..3 {
        stamp = read_from_start(&file).map_err(|e| Error::io(path, "read", e))?;
        record = OwnerRecord::parse(&stamp);
        if record.is_some() {
            break;
        }
        std::thread::yield_now();
    }
    Ok(Probe::Held(Box::new(Seen {
        record,
        claim: Claim::Os,
        stamp,
    })))
}

fn open_error(path: &Utf8Path, err: io::Error) -> Error {
    fs::open_file_error(path, LockStrategy::Os, err)
}

/// Fails unless `file` is a regular file; its identity.
fn check_regular(path: &Utf8Path, file: &File) -> Result<fs::FileId> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "inspect lock file", e))?;
    fs::expect_kind(path, LockStrategy::Os, FileKind::File, fs::kind(&meta))?;
    fs::id_of(&meta, file).map_err(|e| Error::io(path, "inspect lock file", e))
}

/// The file's content from its start, up to one byte more than a record
/// may hold: one positioned read (a short read of a regular file is its
/// end).
fn read_from_start(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_RECORD_LEN + 1];
    let mut len = 0;
    while len < buf.len() {
        match fs::read_at(file, &mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Whether the current contents of a lock file may be overwritten: empty,
/// white space, or something that is (or was being written as) an owner
/// record of any version.
fn is_ours(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii();
    trimmed.is_empty()
        || OwnerRecord::parse(bytes).is_some()
        || (bytes.len() <= MAX_RECORD_LEN && trimmed.starts_with(b"{\"v\":"))
}

/// Writes the record into the locked file and returns the file's identity.
fn write_record(path: &Utf8Path, file: &mut File, record: &OwnerRecord) -> Result<()> {
    let old = read_from_start(file).map_err(|e| Error::io(path, "read", e))?;
    if !is_ours(&old) {
        return Err(Error::Foreign {
            path: path.to_owned(),
        });
    }
    let mut bytes = record.to_json().into_bytes();
    bytes.push(b'\n');
    let len = bytes.len() as u64;
    // One positioned write, padded over what it replaces, then cut.
    let written = fs::rewrite(file, &bytes, old.len()).and_then(|()| {
        if old.len() as u64 > len {
            file.set_len(len)
        } else {
            Ok(())
        }
    });
    written.map_err(|e| Error::io(path, "write the owner record to", e))
}

fn unlock(file: &File) {
    // Closing the file releases the lock too, once the last handle on it
    // is gone (a lease's heartbeat may still hold one for a moment);
    // unlocking first makes the release immediate.
    let _ = file.unlock();
}
