//! `Link`: an atomic `link()` of a fully written private file onto the lock
//! path.
//!
//! The record is written to a private file beside the lock path, named
//! after the record's token (`.<stem>.<token>.owner`, where the stem is
//! the lock's name, or for a long name its beginning and a hash: see
//! [`stem`]), then hard linked to the lock path. `link()` fails with
//! `EEXIST` if the lock path exists, atomically, also on NFS. A successful
//! `link()` means the lock is ours; only after an error, which may hide a
//! success (an NFS reply lost and the request retransmitted), is the
//! outcome looked up: a link count of 2 on the private file, or the lock
//! path holding its token. Some file systems (sshfs) report a link count
//! of 1 and a new inode number per name after a successful `link()`, so
//! neither is ever a condition on success. The lock file is the record,
//! so a reader sees no lock or a whole record.
//!
//! The private file stays while the lock is held: it is the lock's *claim*.
//! Whoever removes the lock (its holder releasing, or a breaker) first
//! takes the claim: renames it to a name of its own
//! (`<claim>.taken.<machine>.<boot>.<pid>.<nonce>`). Only one rename of a
//! name can succeed, so exactly one remover goes on, and it then unlinks
//! the lock path only if the path still holds the claim's token, and its
//! taken name last. Nobody else can have removed the lock in between: that
//! too would have needed the claim. The token decides, never an inode
//! number: ext4 hands a freed inode out again at once, so the next
//! holder's lock file may well have the number of the one that was judged.
//! A remover killed between taking the claim and unlinking the lock path
//! leaves the lock without a claim; its taken name says who it was, and
//! once that process is proved gone (it is of this machine and boot and
//! has exited, or of an earlier boot of this machine) a recoverer takes
//! the taken name over the same way. See the `stale` module for the whole
//! argument.
//!
//! A waiter on a local file system keeps its claim from one try to the
//! next (one token for the whole wait; the record's time rewritten in place
//! when it moves on), so that a release wakes it to a `link()` alone; the
//! wait removes its claim when it ends. It is not the lock's claim (its
//! token is in no lock file), so no remover ever takes it; one that a
//! killed waiter left is swept (`recovery.rs`) by a later wait.
//!
//! This file holds the names, taking the lock, checking it and looking at
//! it; `removal.rs` takes a claim to release or break a lock; `recovery.rs`
//! recovers orphans and sweeps what killed processes left.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::owner::{is_token, read_capped, record_has_token, OwnerRecord};
use crate::strategy::{Claim, Opaque, Probe, Seen};
use crate::vocab::FileKind;
use crate::vocab::{LockStrategy, Mechanism};

mod recovery;
mod removal;
#[cfg(test)]
mod tests;

pub(crate) use recovery::sweep;
pub(crate) use removal::{break_link, release};

#[derive(Debug, Clone)]
pub(crate) struct LinkHold {
    pub(crate) token: String,
    claim: Utf8PathBuf,
    sync: bool,
    look: files::Look,
    /// A taken name of this acquisition that a failed release could not put
    /// back as the claim. Shared with the copies a release keeps: a retry
    /// goes on from it (nobody else may: it names this live process).
    stranded: Arc<Mutex<Option<Utf8PathBuf>>>,
}

/// The longest lock name used whole in private names; longer ones are
/// cut to [`STEM_CUT`] bytes and a hash.
const STEM_MAX: usize = 64;
const STEM_CUT: usize = 40;

/// The longest private name this strategy makes: a taken name of the
/// longest stem. `.` stem `.` token (32) `.owner` `.taken.` machine (16)
/// `.` boot (up to 21) `.` pid (up to 10) `.` start (up to 20) `.` nonce
/// (32).
pub(crate) const LONGEST_NAME: usize =
    1 + STEM_MAX + 1 + 32 + 6 + 7 + 16 + 1 + 21 + 1 + 10 + 1 + 20 + 1 + 32;
// The docs of `Error::NameTooLong` and of the name check at open say so.
const _: () = assert!(LONGEST_NAME == 214);

/// The part of a lock's name that its private names carry: the name
/// itself when it is short, else its first bytes (at a character
/// boundary), `~` and a hash of the whole name, so that a private name
/// stays well within every file system's limit (see [`LONGEST_NAME`]),
/// however long the lock's name. Every process derives the same stem.
fn stem(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= STEM_MAX {
        return name.into();
    }
    let mut cut = STEM_CUT;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}~{:016x}",
        &name[..cut],
        crate::owner::fnv64(&["portalock-stem", name])
    )
    .into()
}

/// The prefix of every private name beside the lock at `path`.
pub(crate) fn private_prefix(path: &Utf8Path) -> Option<String> {
    Some(format!(".{}.", stem(path.file_name()?)))
}

/// The private name of the record of `token` beside `path`.
fn claim_path(path: &Utf8Path, token: &str) -> Result<Utf8PathBuf> {
    match (path.parent(), private_prefix(path)) {
        (Some(dir), Some(prefix)) => Ok(dir.join(format!("{prefix}{token}.owner"))),
        _ => Err(Error::io(
            path,
            Op::UseAsLockPath,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )),
    }
}

/// A claim kept from one try of a wait to the next, on a local file
/// system: a waiter woken by a release then only links it, instead of
/// making it first (a new file: the longest step of a try). Its owner
/// removes it when the wait ends ([`Kept::remove`]); one left by a killed
/// waiter is swept (`sweep`) by the next process that waits.
#[derive(Debug)]
pub(crate) struct Kept {
    /// The lock's path.
    path: Utf8PathBuf,
    claim: Utf8PathBuf,
    token: String,
    /// The record as it is in the claim.
    written: String,
}

impl Kept {
    /// The token of the record in the claim: the next try's must be it.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Removes the claim (the wait is over without it). Unless it is the
    /// lock's after all: on a file system taken for a local one that is
    /// not, a link made can be answered `EEXIST` (a reply lost and the
    /// request sent again); then it is let go the way every lock is.
    pub(crate) fn remove(self) {
        let linked = files::lstat(&self.claim)
            .ok()
            .and_then(|m| crate::sys::link_count(&m))
            .is_some_and(|n| n != 1)
            || names(&self.path, &self.token).unwrap_or(true);
        if linked {
            let _ = release(
                &self.path,
                LinkHold {
                    token: self.token,
                    claim: self.claim,
                    sync: false,
                    look: files::Look::Stat,
                    stranded: Arc::default(),
                },
            );
        } else {
            let _ = files::remove_file(&self.claim);
        }
    }
}

/// Makes the claim for `record` (or takes `kept`, the one of the wait's
/// last try, with the record's current time written into it) and links
/// it to the lock path. On a local file system a try that finds the lock
/// held leaves its claim in `kept`; elsewhere it removes it.
pub(crate) fn try_acquire(
    path: &Utf8Path,
    record: &OwnerRecord,
    sync: bool,
    look: files::Look,
    mode: Option<u32>,
    kept: &mut Option<Kept>,
) -> Result<Option<LinkHold>> {
    let json = record.to_json();
    let reused = match kept.take() {
        Some(old) if old.token == record.token && look == files::Look::Stat => {
            match reuse(old, &json, sync) {
                Ok(claim) => claim,
                Err(e) => return Err(Error::io(path, Op::WriteClaim, e)),
            }
        }
        old => {
            if let Some(old) = old {
                old.remove();
            }
            None
        }
    };
    let claim = match reused {
        Some(claim) => claim,
        None => make_claim(path, &record.token, &json, sync, mode)?,
    };
    let mut linked = link(path, &claim, &record.token, look);
    // A claim removed between its making (or the last try) and its link
    // (a cleaner of hidden files): made again, a few times.
    for _ in 0..3 {
        let gone = linked
            .as_ref()
            .is_err_and(|e| e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound))
            && matches!(files::lkind(&claim), Ok(None));
        if !gone {
            break;
        }
        make_claim(path, &record.token, &json, sync, mode)?;
        linked = link(path, &claim, &record.token, look);
    }
    let held = LinkHold {
        token: record.token.clone(),
        claim: claim.clone(),
        sync,
        look,
        stranded: Arc::default(),
    };
    let linked = linked.and_then(|ours| {
        if ours && sync {
            if let Err(e) = files::sync_parent(path) {
                // Ours, but not durably: given back the way every lock is
                // released (through its claim), never by removing the path,
                // which may be someone else's by the time this runs.
                let _ = release(path, held.clone());
                return Err(Error::io(path, Op::Sync, e));
            }
        }
        Ok(ours)
    });
    match linked {
        // The claim is closed: see `Held::rewrite_record`.
        Ok(true) => Ok(Some(held)),
        Ok(false) if look == files::Look::Stat => {
            *kept = Some(Kept {
                path: path.to_owned(),
                claim,
                token: record.token.clone(),
                written: json,
            });
            Ok(None)
        }
        Ok(false) => {
            let _ = files::remove_file(&claim);
            Ok(None)
        }
        // Not linked, for certain: the claim is ours alone to remove.
        Err(e) if matches!(names(path, &record.token), Ok(false)) => {
            let _ = files::remove_file(&claim);
            Err(e)
        }
        // An error after a link that did, or may have, happened: let it go
        // the way every lock is released, which removes the lock path only
        // if it holds our token.
        Err(e) => {
            let _ = release(path, held);
            Err(e)
        }
    }
}

/// The kept claim `old` for a try whose record is `json`: rewritten in
/// place if the record changed since (its time, to the second: the same
/// length). `None` if it is gone (removed since the last try).
fn reuse(old: Kept, json: &str, sync: bool) -> io::Result<Option<Utf8PathBuf>> {
    if old.written == json {
        return Ok(Some(old.claim));
    }
    let rewritten = files::open_write(&old.claim).and_then(|file| {
        files::rewrite(&file, json.as_bytes(), old.written.len())?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    });
    match rewritten {
        Ok(()) => Ok(Some(old.claim)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            old.remove();
            Err(e)
        }
    }
}

/// Makes the claim of `token` beside `path`, holding `json`, the record.
fn make_claim(
    path: &Utf8Path,
    token: &str,
    json: &str,
    sync: bool,
    mode: Option<u32>,
) -> Result<Utf8PathBuf> {
    let claim = claim_path(path, token)?;
    let mut file = fault::step("link.acquire.claim", || files::create_new(&claim))
        .map_err(|e| files::io_error(path, Op::CreateClaim, e))?;
    files::apply_mode(&file, mode);
    let written =
        file.write_all(json.as_bytes())
            .and_then(|()| if sync { file.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        let _ = files::remove_file(&claim);
        return Err(Error::io(path, Op::WriteClaim, e));
    }
    // Closed before the link: an NFS client writes back on close, so that
    // another client that finds the lock file finds the whole record in it
    // (never an empty file, which would read as another strategy's).
    drop(file);
    Ok(claim)
}

/// Links `claim` to the lock path: whether the lock is now ours.
///
/// A successful `link()` is the answer. Any error may hide a success: on
/// NFS, a reply lost and the request retransmitted makes the server answer
/// `EEXIST` (or `ESTALE`, or the RPC times out) for a link it made. So after
/// every error the outcome is looked up: the lock is ours if the claim's
/// link count is 2 or the lock path holds our token. On a local file
/// system (`look`) `EEXIST` is the answer itself (nothing is lost between
/// a process and its own kernel): only the link count is looked at. Errors that a retry
/// may cure (`ESTALE`, `EINTR`, `ETIMEDOUT`, `EIO`, ...) are retried a few
/// times. A lock path that holds another strategy's lock file is refused
/// with [`Error::StrategyMismatch`].
fn link(path: &Utf8Path, claim: &Utf8Path, token: &str, look: files::Look) -> Result<bool> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        let err = match fault::step("link.acquire.link", || files::hard_link(claim, path)) {
            Ok(()) => return Ok(true),
            Err(e) => e,
        };
        let count = files::lstat(claim)
            .ok()
            .and_then(|m| crate::sys::link_count(&m));
        // (Where `EEXIST` is the answer, the link count alone is looked at:
        // a file system taken for a local one that is not would show a
        // link made all the same there.)
        let answered = look == files::Look::Stat && err.kind() == io::ErrorKind::AlreadyExists;
        if count == Some(2) || (!answered && names(path, token).unwrap_or(false)) {
            return Ok(true);
        }
        if err.kind() == io::ErrorKind::AlreadyExists {
            return busy(path).map(|()| false);
        }
        if crate::sys::is_eperm(&err) && files::lkind(path).ok().flatten().is_some() {
            // sshfs answers EPERM for a link onto an existing name.
            return busy(path).map(|()| false);
        }
        let unsupported = err.kind() == io::ErrorKind::Unsupported || crate::sys::is_eperm(&err);
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
        if !(unsupported || files::is_transient(&err)) || attempt >= ATTEMPTS {
            return Err(files::io_error(path, Op::Link, err));
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
    }
}

/// After `EEXIST` from linking onto `path`: busy (`Ok(())`) if a `Link`
/// lock file (or nothing, any more) is there, or a file whose record
/// cannot be read; the typed error for anything else, such as the lock
/// file of the `Os` strategy (an `os` record, which a release leaves in
/// place on a local file system, or blank once released on a network one).
fn busy(path: &Utf8Path) -> Result<()> {
    files::expect_kind_at(path, LockStrategy::Link, FileKind::File)?;
    let bytes = match files::open_read(path).and_then(read_capped) {
        Ok(bytes) => bytes,
        // Gone, or not readable by us: busy either way.
        Err(_) => return Ok(()),
    };
    match OwnerRecord::parse(&bytes) {
        Some(record) if record.strategy != LockStrategy::Link => Err(Error::StrategyMismatch {
            path: path.to_owned(),
            strategy: LockStrategy::Link,
            found: record.strategy,
            holder: Some(Box::new(record)),
        }),
        // Blank: the file of a released `Os` lock, which stays. A `Link`
        // lock file always holds its record (it is linked whole), so this
        // is no `Link` lock, and waiting would never end.
        None if bytes.trim_ascii().is_empty() => Err(Error::StrategyMismatch {
            path: path.to_owned(),
            strategy: LockStrategy::Link,
            found: Mechanism::Os,
            holder: None,
        }),
        _ => Ok(()),
    }
}

/// Whether `path` is the lock file of the acquisition with `token`: a
/// regular file that holds the record of that token.
///
/// The token decides, never the inode number: tokens are unique per
/// acquisition, while ext4 hands out a freed inode again at once (the next
/// holder's lock file may have the number of the one that was judged) and
/// sshfs numbers names rather than files.
fn names(path: &Utf8Path, token: &str) -> io::Result<bool> {
    match files::lstat(path) {
        Ok(meta) if !meta.is_file() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    // On sshfs even reading an open file can find it gone (ENOENT).
    match files::open_read(path).and_then(read_capped) {
        Ok(bytes) => Ok(record_has_token(&bytes, token)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl LinkHold {
    /// The private name of this holder's record.
    pub(crate) fn claim(&self) -> &Utf8Path {
        &self.claim
    }
}

pub(crate) fn check(path: &Utf8Path, held: &LinkHold) -> io::Result<bool> {
    // Not `lstat`ed on a network file system: see `files::Look`.
    match files::look_id(&held.claim, held.look) {
        Ok(Some(_)) => names(path, &held.token),
        Ok(None) => match held.stranded_name() {
            // Mid-release (a release that failed half way): still ours.
            Some(_) => names(path, &held.token),
            None => Ok(false),
        },
        Err(e) => Err(e),
    }
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match files::open_read(path) {
        Ok(file) => file,
        Err(e) if files::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Another user's lock (or one made under a umask of 077): held,
            // by an owner this process cannot read.
            let meta = files::lstat(path).map_err(|e| Error::io(path, Op::Inspect, e))?;
            files::expect_kind(path, LockStrategy::Link, FileKind::File, files::kind(&meta))?;
            return Ok(Probe::Held(Box::new(Seen {
                opaque: Some(Opaque::Unreadable),
                ..Seen::new(None, Claim::Unreadable, files::stamp(&meta))
            })));
        }
        Err(e) => return Err(files::open_file_error(path, LockStrategy::Link, e)),
    };
    // sshfs answers `fstat` and `read` on an open file by its name: if the
    // lock was released since the open, they fail with ENOENT. Free, then.
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Free),
        Err(e) => return Err(Error::io(path, Op::Inspect, e)),
    };
    files::expect_kind(path, LockStrategy::Link, FileKind::File, files::kind(&meta))?;
    let bytes = match read_capped(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Free),
        Err(e) => return Err(Error::io(path, Op::ReadRecord, e)),
    };
    let mut stamp = files::stamp(&meta);
    stamp.extend_from_slice(&bytes);
    let record = OwnerRecord::parse(&bytes);
    let mut seen = match &record {
        Some(rec) if rec.strategy != LockStrategy::Link => {
            Seen::new(record.clone(), Claim::Strategy(rec.strategy), stamp)
        }
        Some(rec) if is_token(&rec.token) => Seen::new(
            record.clone(),
            Claim::Link {
                token: rec.token.clone(),
            },
            stamp,
        ),
        // Blank: a released `Os` lock file (on a network file system).
        None if bytes.trim_ascii().is_empty() => {
            Seen::new(None, Claim::Strategy(Mechanism::Os), stamp)
        }
        _ => Seen::new(record.clone(), Claim::Foreign, stamp),
    };
    if record.is_none() {
        seen.opaque = crate::owner::other_version(&bytes).map(Opaque::Version);
    }
    if let Claim::Link { token } = &seen.claim {
        // Its remover took the claim and has not removed the lock path: a
        // moment of every release, or an orphan if the remover died.
        let claim = claim_path(path, token)?;
        seen.orphaned = files::lkind(&claim).is_ok_and(|kind| kind.is_none());
    }
    Ok(Probe::Held(Box::new(seen)))
}
