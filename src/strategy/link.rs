//! `Link`: an atomic `link()` of a fully written private file onto the lock
//! path.
//!
//! The record is written to a private file beside the lock path, named
//! after the record's token (`.<name>.<token>.owner`), then hard linked to
//! the lock path. `link()` fails with `EEXIST` if the lock path exists,
//! atomically, also on NFS. A successful `link()` means the lock is ours;
//! only after an ambiguous error (an NFS reply lost and retried, say) does
//! the link count of the private file decide (2 means the link was made).
//! Some file systems (sshfs) report a link count of 1 after a successful
//! `link()`, so the count is never a condition on success. The lock file is
//! the record, so a reader sees no lock or a whole record.
//!
//! The private file stays while the lock is held: it is the lock's *claim*.
//! Whoever removes the lock (its holder releasing, or a breaker) first
//! unlinks the claim. Only one `unlink` of a name can succeed, so exactly
//! one remover goes on, and it then unlinks the lock path only if the path
//! still names the claim's inode. Nobody else can have removed the lock in
//! between: that too would have needed the claim. See the `stale` module
//! for the whole argument.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, FileKind, Result};
use crate::fs;
use crate::owner::{read_capped, OwnerRecord};
use crate::strategy::{Broken, Claim, LockStrategy, Probe, Released, Seen};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) token: String,
    pub(crate) file: Arc<File>,
    claim: Utf8PathBuf,
    ino: u64,
}

/// The private name of the record of `token` beside `path`.
fn claim_path(path: &Utf8Path, token: &str) -> Result<Utf8PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok(dir.join(format!(".{name}.{token}.owner"))),
        _ => Err(Error::io(
            path,
            "use as a lock path",
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )),
    }
}

pub(crate) fn try_acquire(path: &Utf8Path, record: &OwnerRecord) -> Result<Option<Held>> {
    let claim = claim_path(path, &record.token)?;
    let mut file = fs::create_new(&claim)
        .map_err(|e| fs::io_error(path, "create a private record file beside", e))?;
    let written = file
        .write_all(record.to_json().as_bytes())
        .and_then(|()| file.metadata());
    let meta = match written {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_file(&claim);
            return Err(Error::io(path, "write a private record file beside", e));
        }
    };
    let linked = match std::fs::hard_link(&claim, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::busy(path, LockStrategy::Link, FileKind::File).map(|()| false)
        }
        Err(e) if link_count(&file) == Some(2) => {
            // The link was made, but the reply said otherwise (NFS).
            let _ = e;
            Ok(true)
        }
        Err(e) => Err(fs::io_error(path, "link lock file", e)),
    };
    match linked {
        Ok(true) => Ok(Some(Held {
            token: record.token.clone(),
            file: Arc::new(file),
            claim,
            ino: fs::ino(&meta),
        })),
        other => {
            let _ = std::fs::remove_file(&claim);
            other.map(|_| None)
        }
    }
}

#[cfg(unix)]
fn link_count(file: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.nlink())
}

#[cfg(not(unix))]
fn link_count(_file: &File) -> Option<u64> {
    None
}

/// Whether `path` names the inode `ino` (on platforms without inode
/// numbers: whether its record carries `token`).
fn names(path: &Utf8Path, ino: u64, token: &str) -> io::Result<bool> {
    if cfg!(unix) {
        return match path.symlink_metadata() {
            Ok(meta) => Ok(meta.is_file() && fs::ino(&meta) == ino),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
    }
    match fs::open_read(path) {
        Ok(file) => {
            let bytes = read_capped(file)?;
            Ok(OwnerRecord::parse(&bytes).is_some_and(|r| r.token == token))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn check(path: &Utf8Path, held: &Held) -> io::Result<bool> {
    match held.claim.symlink_metadata() {
        Ok(_) => names(path, held.ino, &held.token),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<Released> {
    match std::fs::remove_file(&held.claim) {
        Ok(()) => {}
        // A breaker took the claim: the lock is no longer ours.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Lost(None)),
        Err(e) => return Err(Error::io(&held.claim, "remove the claim of", e)),
    }
    // The claim was ours, so nobody else may remove the lock path now; it
    // is still ours unless something outside portalock removed it.
    match names(path, held.ino, &held.token) {
        Ok(true) => match std::fs::remove_file(path) {
            Ok(()) => Ok(Released::Done),
            Err(e) => Err(Error::io(path, "remove lock file", e)),
        },
        Ok(false) => Ok(Released::Lost(None)),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    }
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match fs::open_read(path) {
        Ok(file) => file,
        Err(e) if fs::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) => return Err(fs::io_error(path, "open lock file", e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "inspect lock file", e))?;
    fs::expect_kind(path, LockStrategy::Link, FileKind::File, fs::kind(&meta))?;
    let bytes = read_capped(file).map_err(|e| Error::io(path, "read lock file", e))?;
    let record = OwnerRecord::parse(&bytes);
    let claim = match &record {
        Some(rec) if is_token(&rec.token) => Claim::Link {
            token: rec.token.clone(),
            ino: fs::ino(&meta),
        },
        _ => Claim::Foreign,
    };
    let mut stamp = fs::stamp(&meta);
    stamp.extend_from_slice(&bytes);
    Ok(Probe::Held(Box::new(Seen {
        record,
        claim,
        stamp,
    })))
}

/// Whether `token` has the shape of the tokens portalock writes, so that it
/// can be part of a file name.
pub(crate) fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Breaks the lock file of `token` at inode `ino`: takes its claim, then
/// removes the lock path if it still names that inode.
///
/// With `recover`, a lock whose claim is missing (its remover died between
/// the two unlinks, or a cleaner removed it) gets a new claim, a hard link
/// of the lock path made with `link()`, which fails if another recoverer
/// made it first.
pub(crate) fn break_link(path: &Utf8Path, token: &str, ino: u64, recover: bool) -> Result<Broken> {
    let claim = claim_path(path, token)?;
    match claim.symlink_metadata() {
        Ok(meta) if meta.is_file() && (fs::ino(&meta) == ino || !cfg!(unix)) => {}
        Ok(_) => return Ok(Broken::Raced),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !recover {
                return Ok(Broken::Orphan);
            }
            match std::fs::hard_link(path, &claim) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                    ) =>
                {
                    return Ok(Broken::Raced)
                }
                Err(e) => return Err(Error::io(&claim, "make a claim for", e)),
            }
            if !names(&claim, ino, token).map_err(|e| Error::io(&claim, "inspect", e))? {
                // The lock path changed before the link: this claim names
                // someone else's inode. Removing our extra name of it
                // leaves their lock as it was.
                let _ = std::fs::remove_file(&claim);
                return Ok(Broken::Raced);
            }
        }
        Err(e) => return Err(Error::io(&claim, "inspect the claim of", e)),
    }
    match std::fs::remove_file(&claim) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
        Err(e) => return Err(Error::io(&claim, "remove the claim of", e)),
    }
    match names(path, ino, token) {
        Ok(true) => match std::fs::remove_file(path) {
            Ok(()) => Ok(Broken::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Broken::Raced),
            Err(e) => Err(Error::io(path, "remove lock file", e)),
        },
        Ok(false) => Ok(Broken::Raced),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    }
}
