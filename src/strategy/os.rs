//! `Os`: an advisory lock on an open file (`flock`, `LockFileEx`).
//!
//! The lock file is created if needed (never truncated before the lock is
//! held: truncating a live holder's file would destroy its record), locked
//! exclusively, and only then given this holder's owner record. The file
//! stays after release: unlinking it would let a later waiter lock a new
//! inode while an earlier one still holds the old. On a network file system
//! a release reads the record back and blanks it (overwrites it with
//! spaces). On a local file system it leaves the file as it is: the
//! kernel's lock is the holder's proof there, and the path still naming the
//! locked file (checked first) the proof that the lock was not lost; the
//! record stays, naming the last holder, and the next holder writes over it
//! (a write that would change the inode for nothing, and a read before it,
//! are saved on every release). The record counts only while the kernel's
//! lock is held: `probe` says free when it is not. In the moment between
//! the next holder's lock and its write, a reader finds the previous
//! holder's record: `probe` names nobody if that process is gone, and the
//! previous holder otherwise (for as long as the next one stays in that
//! moment).
//!
//! On Unix a handle keeps its lock file open between acquisitions and checks after
//! each lock that the path still names that file (the file may have been
//! removed or replaced meanwhile; then it locks what the path names now).
//!
//! Two APIs take these locks, each where its shape fits. The lock a handle
//! holds from `acquire` to `release` is the standard library's
//! (`File::lock`, through [`crate::flock`]): it belongs to the open file
//! description, which the handle keeps, and release unlocks that file
//! explicitly and closes it (closing alone would also unlock). `fd-lock`'s
//! guards borrow their `RwLock` and unlock when dropped, so they serve a
//! lock that lives for one scope: `probe`'s shared look at whether the
//! lock is held (`sys::try_shared_for_a_moment`). Both are `flock` on Unix
//! and `LockFileEx` on Windows, so they exclude each other.
//!
//! The record is written with one write at offset 0, padded with spaces to
//! the length of what it replaces; the file is never cut. JSON allows
//! trailing white space, so a reader sees either a whole
//! record or, in the rare case of a torn read, bytes that do not parse and
//! count as an unknown owner, never a wrong one.

use std::fs::File;
use std::io;
use std::sync::Arc;

use camino::Utf8Path;

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::flock::LockFlags;
use crate::owner::{record_has_token, OwnerRecord, MAX_RECORD_LEN};
use crate::strategy::{Claim, Probe, Released, Seen};
use crate::sys::Wait;
use crate::vocab::FileKind;
use crate::vocab::{LockStrategy, Writers};

#[derive(Debug)]
pub(crate) struct OsHold {
    pub(crate) file: Arc<File>,
    pub(crate) token: String,
    id: files::FileId,
    how: How,
    /// The record as written (without the padding).
    written: Vec<u8>,
}

/// A handle's lock file, kept open between acquisitions.
#[derive(Debug)]
pub(crate) struct Open {
    file: File,
    id: files::FileId,
    /// The process that opened it. A child of `fork()` shares the open
    /// file, and with it the lock (`flock` locks belong to the open file):
    /// it opens its own.
    pid: u32,
    /// The record this handle wrote last, which a local release leaves in
    /// the file: found there whole at the next acquisition, it needs no
    /// parsing to be known overwritable. Empty if none.
    written: Vec<u8>,
}

/// How a handle takes and releases its `Os` lock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct How {
    /// Flush record and directory to stable storage (`fsync`).
    pub(crate) sync: bool,
    /// Remove the lock file on release (a temporary lock file).
    pub(crate) remove: bool,
    /// How the lock file's path is looked at (see `files::Look`).
    pub(crate) look: files::Look,
    /// The permission bits of the files it makes
    /// (`LockOptions::permissions`).
    pub(crate) mode: Option<u32>,
}

pub(crate) fn try_acquire(
    path: &Utf8Path,
    record: &OwnerRecord,
    wait: Wait,
    how: How,
    cached: &mut Option<Open>,
) -> Result<Option<OsHold>> {
    // Made before the lock is taken: the lock is held for as short a time
    // as can be, and a waiter woken by the release gets it sooner.
    let mut json = record.to_json().into_bytes();
    json.push(b'\n');
    // A holder that removes the file on release (or anyone who deletes or
    // replaces it) leaves waiters locking a file that the path no longer
    // names: such a lock excludes nobody, so it is dropped and the file
    // opened afresh. Each round means the lock was released meanwhile;
    // after many, the lock is plainly busy.
    for _ in 0..64 {
        let pid = crate::sys::pid();
        let reused = cached.as_ref().is_some_and(|open| open.pid == pid);
        let Open {
            file, id, written, ..
        } = match cached.take().filter(|open| open.pid == pid) {
            Some(open) => open,
            None => {
                let file = open_shared_file(path, how.mode).map_err(|e| open_error(path, e))?;
                // The identity of an open file does not change; it is
                // compared with the path's once the lock is held.
                let id = check_regular(path, &file)?;
                Open {
                    file,
                    id,
                    pid,
                    written: Vec::new(),
                }
            }
        };
        // Held from here until `release` unlocks it (or the process ends):
        // the standard library's lock, which no guard ties to a scope.
        let flags = match wait {
            Wait::Block => LockFlags::EXCLUSIVE,
            Wait::Try => LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING,
        };
        let taken = crate::flock::lock(&file, flags);
        match taken {
            Ok(()) => {}
            Err(e) if crate::sys::lock_contended(&e, &file) => {
                *cached = Some(Open {
                    file,
                    id,
                    pid,
                    written,
                });
                return Ok(None);
            }
            // A file kept open since an earlier try, whose handle the
            // server no longer knows (an SMB client after the server
            // restarted answers "bad file descriptor"; NFS, a stale
            // handle): dropped, and the file opened again.
            Err(e)
                if reused
                    && (e.kind() == io::ErrorKind::StaleNetworkFileHandle
                        || crate::sys::is_bad_handle(&e)) =>
            {
                continue
            }
            Err(e) => return Err(Error::io(path, Op::Lock, e)),
        }
        // The lock is ours from here; any error below must unlock it.
        if let Err(e) = fault::point("os.acquire.locked") {
            let _ = unlock(&file);
            return Err(Error::io(path, Op::Lock, e));
        }
        let len = match path_state(path, &file, how.look) {
            Ok(Some((now, len))) if now == id => len,
            Ok(_) => {
                // Deleted or replaced since it was opened: lock what the
                // path names now.
                let _ = unlock(&file);
                continue;
            }
            Err(e) => {
                let _ = unlock(&file);
                return Err(Error::io(path, Op::Inspect, e));
            }
        };
        let done = write_record(path, &file, len, &json, &written).and_then(|()| {
            if how.sync {
                file.sync_all()
                    .and_then(|()| files::sync_parent(path))
                    .map_err(|e| Error::io(path, Op::Sync, e))?;
            }
            Ok(())
        });
        return match done {
            Ok(()) => Ok(Some(OsHold {
                file: Arc::new(file),
                token: record.token.clone(),
                id,
                how,
                written: json,
            })),
            Err(e) => {
                let _ = unlock(&file);
                Err(e)
            }
        };
    }
    Ok(None)
}

/// Releases the lock; the lock file goes back to `cached` for the next
/// acquisition of the handle unless it was removed or replaced.
pub(crate) fn release(
    path: &Utf8Path,
    held: OsHold,
    cached: &mut Option<Open>,
) -> Result<Released> {
    let OsHold {
        file,
        token,
        id,
        how,
        written,
    } = held;
    let blanks = how.look != files::Look::Stat;
    let result = release_locked(path, &file, &token, id, how.look).and_then(|released| {
        if !matches!(released, Released::Done) {
            return Ok(released);
        }
        if how.remove {
            // Removed while still locked: a waiter that then locks the
            // removed file sees that the path no longer names it.
            files::remove_file(path).map_err(|e| Error::io(path, Op::RemoveFile, e))?;
            if how.sync {
                files::sync_parent(path).map_err(|e| Error::io(path, Op::Sync, e))?;
            }
        } else if how.sync && blanks {
            // (Where the record stays, the release wrote nothing.)
            file.sync_all().map_err(|e| Error::io(path, Op::Sync, e))?;
        }
        Ok(released)
    });
    let unlocked = unlock(&file);
    // Kept open where an unlocked descriptor is as good as new (Unix;
    // see `sys::KEEPS_RELEASED_FILES`), and only once it is unlocked: a
    // file whose unlock failed is closed, which releases its lock.
    if crate::sys::KEEPS_RELEASED_FILES
        && unlocked
        && matches!(result, Ok(Released::Done))
        && !how.remove
    {
        // A lease's heartbeat may hold the file a moment longer: then it
        // is simply closed, and the next acquisition opens it again.
        if let Ok(file) = Arc::try_unwrap(file) {
            *cached = Some(Open {
                file,
                id,
                pid: crate::sys::pid(),
                // Left in the file where the record stays.
                written: if blanks { Vec::new() } else { written },
            });
        }
    }
    result
}

fn release_locked(
    path: &Utf8Path,
    file: &File,
    token: &str,
    id: files::FileId,
    look: files::Look,
) -> Result<Released> {
    let len = match path_state(path, file, look) {
        Ok(Some((now, len))) if now == id => len,
        // Deleted or replaced: others lock another inode now. A stale
        // file handle that outlasted its retries says the same of the
        // directory around it (see `Held::check`).
        Ok(_) => return Ok(Released::Lost(None)),
        Err(e) if e.kind() == io::ErrorKind::StaleNetworkFileHandle => {
            return Ok(Released::Lost(None))
        }
        Err(e) => return Err(Error::io(path, Op::Inspect, e)),
    };
    if look == files::Look::Stat {
        // A local file system: the file is the one this holder locked, and
        // while the kernel's lock is ours no holder can have written
        // another record into it. The record stays (see the module's docs).
        fault::point("os.release.unlocking").map_err(|e| Error::io(path, Op::Unlock, e))?;
        return Ok(Released::Done);
    }
    // Read back: a record that is not ours (written by something that
    // ignores the lock, or through a network client whose OS locks do not
    // reach ours) is left alone and the lock reported lost.
    let bytes = match files::conflict_retry(|| read_from_start(file, len)) {
        Ok(bytes) => bytes,
        // Another client's lock covers the file (see `check`).
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(Released::Lost(None)),
        Err(e) => return Err(Error::io(path, Op::ReadRecord, e)),
    };
    if !record_has_token(&bytes, token) {
        return Ok(Released::Lost(Some(OwnerRecord::parse(&bytes))));
    }
    // Blanked, not cut: white space is an empty record to every reader,
    // and the next holder's write reuses the file's block instead of the
    // file system freeing it now and allocating it again then.
    let blank = vec![b' '; usize::try_from(len).map_or(MAX_RECORD_LEN, |l| l.min(MAX_RECORD_LEN))];
    files::rewrite(file, &blank, 0).map_err(|e| Error::io(path, Op::ClearRecord, e))?;
    fault::point("os.release.unlocking").map_err(|e| Error::io(path, Op::Unlock, e))?;
    Ok(Released::Done)
}

/// The lock is ours while the path still names the inode we locked: the
/// kernel lock cannot be taken away, but the file can be deleted or
/// replaced, after which other processes lock another inode.
///
/// On a network file system the server can lose the lock (an SMB server
/// restarted: Linux clients do not take their byte-range locks again), and
/// another client then takes it and writes its record: the record, read
/// through the locked file, must still be ours. An SMB server refuses
/// that read (`EACCES`) while another client's lock covers the file, but
/// also, for a while, while a lease on it is being broken: an error, not
/// an answer.
pub(crate) fn check(path: &Utf8Path, held: &OsHold) -> io::Result<bool> {
    if held.how.look == files::Look::Stat {
        return check_id(path, held.id);
    }
    if path_state(path, &held.file, held.how.look)?.map(|(id, _)| id) != Some(held.id) {
        return Ok(false);
    }
    let bytes = files::conflict_retry(|| read_from_start(&held.file, MAX_RECORD_LEN as u64))?;
    Ok(record_has_token(&bytes, &held.token))
}

/// The identity of the file at `path`, as `look` finds it, and the length
/// of `file`, the locked file it should be.
fn path_state(
    path: &Utf8Path,
    file: &File,
    look: files::Look,
) -> io::Result<Option<(files::FileId, u64)>> {
    if look == files::Look::Stat {
        return files::path_state(path);
    }
    match files::look_id(path, look)? {
        Some((listed, _)) => {
            let mine = files::file_id(file)?;
            let id = if files::same_listed(listed, mine) {
                mine
            } else {
                listed
            };
            Ok(Some((id, file.metadata()?.len())))
        }
        None => Ok(None),
    }
}

fn check_id(path: &Utf8Path, id: files::FileId) -> io::Result<bool> {
    Ok(files::path_id(path)? == Some(id))
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match files::open_read(path) {
        Ok(file) => file,
        Err(e) if files::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) => return Err(open_error(path, e)),
    };
    check_regular(path, &file)?;
    let (file, tried) = crate::sys::try_shared_for_a_moment(file);
    match tried {
        Ok(()) => return Ok(Probe::Free),
        Err(e) if crate::sys::lock_contended(&e, &file) => {}
        Err(e) => return Err(Error::io(path, Op::Inspect, e)),
    }
    // The holder may be between locking and writing its record: try a few
    // times before calling the owner unknown. Until it writes, the file
    // holds nothing, blanks, or (a release on a local file system leaves
    // it) the last holder's record. A record of a process that is gone (or
    // ran before this machine last booted) is not the holder's: the kernel
    // would have let go of its lock. (Also the record of a process that
    // died after a child it forked took the open file over: no owner to
    // name either.)
    let mut record = None;
    let mut stamp = Vec::new();
    for _ in 0..3 {
        stamp = read_from_start(&file, 512).map_err(|e| Error::io(path, Op::Read, e))?;
        record = OwnerRecord::parse(&stamp)
            .filter(|r| r.liveness_here(Writers::ThisMachine) != crate::Liveness::Dead);
        if record.is_some() {
            break;
        }
        std::thread::yield_now();
    }
    Ok(Probe::Held(Box::new(Seen::new(record, Claim::Os, stamp))))
}

/// Opens (or creates) the lock file; with `mode` (a lock a group of users
/// shares), gives a file it made those bits. Another user's file is made
/// with the umask's bits and only then given `mode`: an open that comes in
/// between is refused (`EACCES`), and is tried again for a moment.
fn open_shared_file(path: &Utf8Path, mode: Option<u32>) -> io::Result<File> {
    const TRIES: u32 = 50;
    let mut tries = 0;
    loop {
        match files::open_create_no_atime(path) {
            Ok(file) => {
                files::apply_mode(&file, mode);
                return Ok(file);
            }
            Err(e)
                if mode.is_some()
                    && e.kind() == io::ErrorKind::PermissionDenied
                    && tries < TRIES =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

fn open_error(path: &Utf8Path, err: io::Error) -> Error {
    files::open_file_error(path, LockStrategy::Os, err)
}

/// Fails unless `file` is a regular file; its identity.
fn check_regular(path: &Utf8Path, file: &File) -> Result<files::FileId> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, Op::Inspect, e))?;
    files::expect_kind(path, LockStrategy::Os, FileKind::File, files::kind(&meta))?;
    files::id_of(&meta, file).map_err(|e| Error::io(path, Op::Inspect, e))
}

/// The file's content from its start, up to one byte more than a record
/// may hold. `expected` is the file's length as last seen: one positioned
/// read of that much and a byte more normally finds the end (a short read
/// of a regular file is its end).
fn read_from_start(file: &File, expected: u64) -> io::Result<Vec<u8>> {
    let cap = MAX_RECORD_LEN + 1;
    let first = usize::try_from(expected).map_or(cap, |e| e.saturating_add(1).min(cap));
    let mut buf = vec![0u8; first];
    let mut len = 0;
    loop {
        match files::read_at(file, &mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
                if buf.len() == cap {
                    break;
                }
                // Longer than last seen: read on, up to the cap.
                buf.resize(cap, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Whether the current contents of a lock file may be overwritten: empty,
/// white space, an `os` record, or something that was being written as a
/// record of any version when its writer died.
///
/// A record of another strategy is refused with
/// [`Error::StrategyMismatch`]: the `Link` strategy's lock file looks like
/// ours, but its holder takes no OS lock, so holding the OS lock on it
/// proves nothing.
fn check_overwritable(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Ok(());
    }
    match OwnerRecord::parse(bytes) {
        Some(record) if record.strategy == LockStrategy::Os => Ok(()),
        Some(record) => Err(Error::StrategyMismatch {
            path: path.to_owned(),
            strategy: LockStrategy::Os,
            found: record.strategy,
            holder: Some(Box::new(record)),
        }),
        None if bytes.len() <= MAX_RECORD_LEN && trimmed.starts_with(b"{\"v\":") => Ok(()),
        None => Err(Error::Foreign {
            path: path.to_owned(),
        }),
    }
}

/// Writes `bytes`, the record, into the locked file, which is `len` bytes
/// long: one positioned write over the old content, padded with spaces to
/// its length (the file is never cut: see `release_locked`). `last` is
/// the record this handle wrote last (empty if none).
fn write_record(path: &Utf8Path, file: &File, len: u64, bytes: &[u8], last: &[u8]) -> Result<()> {
    let old = if len == 0 {
        Vec::new()
    } else {
        files::conflict_retry(|| read_from_start(file, len))
            .map_err(|e| Error::io(path, Op::Read, e))?
    };
    // Our own last record, as our release left it, is known to be an `os`
    // record.
    let ours = !last.is_empty()
        && old
            .strip_prefix(last)
            .is_some_and(|rest| rest.iter().all(|&b| b == b' '));
    if !ours {
        check_overwritable(path, &old)?;
    }
    files::conflict_retry(|| files::rewrite(file, bytes, old.len()))
        .map_err(|e| Error::io(path, Op::WriteRecord, e))
}

/// Unlocks `file`; whether that worked. Closing the file releases the
/// lock too, once the last handle on it is gone (a lease's heartbeat may
/// still hold one for a moment); unlocking first makes the release
/// immediate (`flock(LOCK_UN)`, `UnlockFileEx`).
fn unlock(file: &File) -> bool {
    crate::flock::unlock(file).is_ok()
}
