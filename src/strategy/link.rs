//! `Link`: an atomic `link()` of a fully written private file onto the lock
//! path.
//!
//! The record is written to a private file beside the lock path, named
//! after the record's token (`.<name>.<token>.owner`), then hard linked to
//! the lock path. `link()` fails with `EEXIST` if the lock path exists,
//! atomically, also on NFS. A successful `link()` means the lock is ours;
//! only after an error, which may hide a success (an NFS reply lost and the
//! request retransmitted), is the outcome looked up: a link count of 2 on
//! the private file, or the lock path naming its inode or holding its
//! token. Some file systems (sshfs) report a link count of 1 and a new
//! inode number per name after a successful `link()`, so neither is ever a
//! condition on success. The lock file is the record, so a reader sees no
//! lock or a whole record.
//!
//! The private file stays while the lock is held: it is the lock's *claim*.
//! Whoever removes the lock (its holder releasing, or a breaker) first
//! unlinks the claim. Only one `unlink` of a name can succeed, so exactly
//! one remover goes on, and it then unlinks the lock path only if the path
//! is still the claim's lock file (same inode, or same token where inode
//! numbers do not tell). Nobody else can have removed the lock in
//! between: that too would have needed the claim. See the `stale` module
//! for the whole argument.

use std::fs::File;
use std::io::{self, Write};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, FileKind, Result};
use crate::fs;
use crate::owner::{read_capped, OwnerRecord};
use crate::strategy::{Broken, Claim, LockStrategy, Probe, Released, Seen};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) token: String,
    claim: Utf8PathBuf,
    ino: u64,
    sync: bool,
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

pub(crate) fn try_acquire(
    path: &Utf8Path,
    record: &OwnerRecord,
    sync: bool,
) -> Result<Option<Held>> {
    let claim = claim_path(path, &record.token)?;
    let mut file = fs::create_new(&claim)
        .map_err(|e| fs::io_error(path, "create a private record file beside", e))?;
    let written = file
        .write_all(record.to_json().as_bytes())
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
        .and_then(|()| file.metadata());
    let meta = match written {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(&claim);
            return Err(Error::io(path, "write a private record file beside", e));
        }
    };
    let ino = fs::ino(&meta);
    let linked = link(path, &claim, &file, ino, &record.token).and_then(|ours| {
        if ours && sync {
            if let Err(e) = fs::sync_parent(path) {
                let _ = fs::remove_file(path);
                return Err(Error::io(path, "flush the new lock file", e));
            }
        }
        Ok(ours)
    });
    match linked {
        // The claim is closed now: see `Held::rewrite_record`.
        Ok(true) => Ok(Some(Held {
            token: record.token.clone(),
            claim,
            ino,
            sync,
        })),
        other => {
            let _ = fs::remove_file(&claim);
            other.map(|_| None)
        }
    }
}

/// Links `claim` (open as `file`, inode `ino`) to the lock path: whether
/// the lock is now ours.
///
/// A successful `link()` is the answer. Any error may hide a success: on
/// NFS, a reply lost and the request retransmitted makes the server answer
/// `EEXIST` (or `ESTALE`, or the RPC times out) for a link it made. So after
/// every error the outcome is looked up: the lock is ours if the claim's
/// link count is 2 or the lock path names the claim's inode (on platforms
/// without inode numbers: holds our token). Errors that a retry may cure
/// (`ESTALE`, `EINTR`, `ETIMEDOUT`, `EIO`, ...) are retried a few times.
fn link(path: &Utf8Path, claim: &Utf8Path, file: &File, ino: u64, token: &str) -> Result<bool> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        let err = match fs::hard_link(claim, path) {
            Ok(()) => return Ok(true),
            Err(e) => e,
        };
        if link_count(file) == Some(2) || names(path, ino, token).unwrap_or(false) {
            return Ok(true);
        }
        if err.kind() == io::ErrorKind::AlreadyExists {
            return fs::busy(path, LockStrategy::Link, FileKind::File).map(|()| false);
        }
        if err.raw_os_error() == Some(EPERM) && fs::lkind(path).ok().flatten().is_some() {
            // sshfs answers EPERM for a link onto an existing name.
            return fs::busy(path, LockStrategy::Link, FileKind::File).map(|()| false);
        }
        let unsupported =
            err.kind() == io::ErrorKind::Unsupported || err.raw_os_error() == Some(EPERM);
        if unsupported && attempt >= ATTEMPTS {
            return Err(Error::Unsupported {
                path: path.to_owned(),
                strategy: LockStrategy::Link,
                reason: format!(
                    "the file system does not make hard links ({err}); use the mkdir strategy"
                ),
            });
        }
        // EPERM with the lock path absent: either no hard links here, or
        // the lock was released in between; trying again tells.
        if !(unsupported || fs::is_transient(&err)) || attempt >= ATTEMPTS {
            return Err(fs::io_error(path, "link lock file", err));
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
    }
}

/// `EPERM`: what `link()` returns on file systems without hard links.
#[cfg(unix)]
const EPERM: i32 = libc::EPERM;
#[cfg(not(unix))]
const EPERM: i32 = i32::MIN;

#[cfg(unix)]
fn link_count(file: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.nlink())
}

#[cfg(not(unix))]
fn link_count(_file: &File) -> Option<u64> {
    None
}

/// Whether `path` is the lock file of the acquisition with `token`, whose
/// claim has inode `ino`: it names that inode, or, where inode numbers do
/// not tell (platforms without them; sshfs, which numbers names rather than
/// files), it holds a record with that token. Tokens are unique per
/// acquisition, so either answer is exact.
fn names(path: &Utf8Path, ino: u64, token: &str) -> io::Result<bool> {
    match fs::lstat(path) {
        Ok(meta) if !meta.is_file() => return Ok(false),
        Ok(meta) if cfg!(unix) && fs::ino(&meta) == ino => return Ok(true),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    // On sshfs even reading an open file can find it gone (ENOENT).
    match fs::open_read(path).and_then(read_capped) {
        Ok(bytes) => Ok(OwnerRecord::parse(&bytes).is_some_and(|r| r.token == token)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Held {
    /// The private name of this holder's record.
    pub(crate) fn claim(&self) -> &Utf8Path {
        &self.claim
    }
}

pub(crate) fn check(path: &Utf8Path, held: &Held) -> io::Result<bool> {
    match fs::lstat(&held.claim) {
        Ok(_) => names(path, held.ino, &held.token),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<Released> {
    let Held {
        token,
        claim,
        ino,
        sync,
    } = held;
    match take_claim(&claim) {
        Ok(()) => {}
        // A breaker took the claim: the lock is no longer ours.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Lost(None)),
        Err(e) => return Err(Error::io(&claim, "remove the claim of", e)),
    }
    // The claim was ours, so nobody else may remove the lock path now; it
    // is still ours unless something outside portalock removed it.
    match names(path, ino, &token) {
        Ok(true) => match fs::remove_file(path) {
            Ok(()) if sync => fs::sync_parent(path)
                .map(|()| Released::Done)
                .map_err(|e| Error::io(path, "flush the removal of", e)),
            Ok(()) => Ok(Released::Done),
            Err(e) => Err(Error::io(path, "remove lock file", e)),
        },
        Ok(false) => Ok(Released::Lost(None)),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    }
}

/// Takes the claim `claim` away, for exactly one caller: renames it to a
/// name of the caller's own, then removes that. `NotFound` if someone else
/// took it first.
///
/// A rename, not an unlink, is the step only one caller can win: on Windows
/// a file that another process has open stays at its name after it is
/// deleted ("delete pending"), and deleting it again may succeed (seen
/// under Wine), so two callers could both "remove" one claim. Renaming a
/// name away succeeds once, on every platform.
fn take_claim(claim: &Utf8Path) -> io::Result<()> {
    let taken = match claim.file_name() {
        Some(name) => claim.with_file_name(format!("{name}.taken.{}", crate::owner::new_token()?)),
        None => return Err(io::ErrorKind::InvalidInput.into()),
    };
    fs::stale_retry(|| std::fs::rename(claim, &taken))?;
    // Ours alone now; a failure leaves a hidden file, not a lock.
    let _ = fs::remove_file(&taken);
    Ok(())
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match fs::open_read(path) {
        Ok(file) => file,
        Err(e) if fs::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) => return Err(fs::open_file_error(path, LockStrategy::Link, e)),
    };
    // sshfs answers `fstat` and `read` on an open file by its name: if the
    // lock was released since the open, they fail with ENOENT. Free, then.
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Free),
        Err(e) => return Err(Error::io(path, "inspect lock file", e)),
    };
    fs::expect_kind(path, LockStrategy::Link, FileKind::File, fs::kind(&meta))?;
    let bytes = match read_capped(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Free),
        Err(e) => return Err(Error::io(path, "read lock file", e)),
    };
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
    match names(&claim, ino, token) {
        Ok(true) => {}
        Ok(false) if fs::lkind(&claim).ok().flatten().is_some() => return Ok(Broken::Raced),
        Ok(false) => {
            if !recover {
                return Ok(Broken::Orphan);
            }
            match fs::hard_link(path, &claim) {
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
                let _ = fs::remove_file(&claim);
                return Ok(Broken::Raced);
            }
        }
        Err(e) => return Err(Error::io(&claim, "inspect the claim of", e)),
    }
    match take_claim(&claim) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
        Err(e) => return Err(Error::io(&claim, "remove the claim of", e)),
    }
    match names(path, ino, token) {
        Ok(true) => match fs::remove_file(path) {
            Ok(()) => Ok(Broken::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Broken::Raced),
            Err(e) => Err(Error::io(path, "remove lock file", e)),
        },
        Ok(false) => Ok(Broken::Raced),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_for(dir: &Utf8Path, path: &Utf8Path) -> (OwnerRecord, Utf8PathBuf, File, u64) {
        let record = OwnerRecord::for_this_process(LockStrategy::Link).expect("record");
        let claim = claim_path(path, &record.token).expect("claim path");
        let mut file = fs::create_new(&claim).expect("claim");
        file.write_all(record.to_json().as_bytes()).expect("write");
        let ino = fs::ino(&file.metadata().expect("meta"));
        assert!(claim.starts_with(dir));
        (record, claim, file, ino)
    }

    fn scratch() -> (tempfile::TempDir, Utf8PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
        (dir, root)
    }

    #[test]
    fn eexist_for_a_link_that_was_made_counts_as_ours() {
        // What a lost NFS reply looks like: the link exists (made by the
        // first transmission), and the retransmission answers EEXIST.
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (record, claim, file, ino) = claim_for(&root, &path);
        std::fs::hard_link(&claim, &path).expect("the first transmission");
        assert!(link(&path, &claim, &file, ino, &record.token).expect("link"));
    }

    #[test]
    fn eexist_for_another_holders_lock_is_busy() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (other, other_claim, _f, _i) = claim_for(&root, &path);
        std::fs::hard_link(&other_claim, &path).expect("other holder");
        let (record, claim, file, ino) = claim_for(&root, &path);
        assert_ne!(other.token, record.token);
        assert!(!link(&path, &claim, &file, ino, &record.token).expect("link"));
    }

    #[test]
    fn a_copy_with_our_token_counts_as_ours_where_inodes_do_not_tell() {
        // sshfs: another inode number per name, but the same record.
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (record, claim, _file, _ino) = claim_for(&root, &path);
        std::fs::copy(&claim, &path).expect("copy");
        assert!(names(&path, u64::MAX, &record.token).expect("names"));
        assert!(!names(&path, u64::MAX, "0123456789abcdef0123456789abcdef").expect("names"));
    }
}
