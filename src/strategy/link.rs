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

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Result};
use crate::fault;
use crate::fs;
use crate::owner::{is_token, read_capped, record_has_token, OwnerRecord};
use crate::strategy::{Broken, Claim, Opaque, Probe, Released, Seen};
use crate::vocab::FileKind;
use crate::vocab::{Breaking, LockStrategy, Writers};

#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) token: String,
    claim: Utf8PathBuf,
    sync: bool,
    look: fs::Look,
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
fn private_prefix(path: &Utf8Path) -> Option<String> {
    Some(format!(".{}.", stem(path.file_name()?)))
}

/// The private name of the record of `token` beside `path`.
fn claim_path(path: &Utf8Path, token: &str) -> Result<Utf8PathBuf> {
    match (path.parent(), private_prefix(path)) {
        (Some(dir), Some(prefix)) => Ok(dir.join(format!("{prefix}{token}.owner"))),
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
    look: fs::Look,
) -> Result<Option<Held>> {
    let claim = claim_path(path, &record.token)?;
    let mut file = fault::step("link.acquire.claim", || fs::create_new(&claim))
        .map_err(|e| fs::io_error(path, "create a private record file beside", e))?;
    let written = file.write_all(record.to_json().as_bytes()).and_then(|()| {
        if sync {
            file.sync_all()
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&claim);
        return Err(Error::io(path, "write a private record file beside", e));
    }
    // Closed before the link: an NFS client writes back on close, so that
    // another client that finds the lock file finds the whole record in it
    // (never an empty file, which would read as another strategy's).
    drop(file);
    let held = Held {
        token: record.token.clone(),
        claim: claim.clone(),
        sync,
        look,
        stranded: Arc::default(),
    };
    let linked = link(path, &claim, &record.token).and_then(|ours| {
        if ours && sync {
            if let Err(e) = fs::sync_parent(path) {
                // Ours, but not durably: given back the way every lock is
                // released (through its claim), never by removing the path,
                // which may be someone else's by the time this runs.
                let _ = release(path, held.clone());
                return Err(Error::io(path, "flush the new lock file", e));
            }
        }
        Ok(ours)
    });
    match linked {
        // The claim is closed: see `Held::rewrite_record`.
        Ok(true) => Ok(Some(held)),
        Ok(false) => {
            let _ = fs::remove_file(&claim);
            Ok(None)
        }
        // Not linked, for certain: the claim is ours alone to remove.
        Err(e) if matches!(names(path, &record.token), Ok(false)) => {
            let _ = fs::remove_file(&claim);
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

/// Links `claim` to the lock path: whether the lock is now ours.
///
/// A successful `link()` is the answer. Any error may hide a success: on
/// NFS, a reply lost and the request retransmitted makes the server answer
/// `EEXIST` (or `ESTALE`, or the RPC times out) for a link it made. So after
/// every error the outcome is looked up: the lock is ours if the claim's
/// link count is 2 or the lock path holds our token. Errors that a retry
/// may cure (`ESTALE`, `EINTR`, `ETIMEDOUT`, `EIO`, ...) are retried a few
/// times. A lock path that holds another strategy's lock file is refused
/// with [`Error::StrategyMismatch`].
fn link(path: &Utf8Path, claim: &Utf8Path, token: &str) -> Result<bool> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        let err = match fault::step("link.acquire.link", || fs::hard_link(claim, path)) {
            Ok(()) => return Ok(true),
            Err(e) => e,
        };
        let count = fs::lstat(claim)
            .ok()
            .and_then(|m| crate::sys::link_count(&m));
        if count == Some(2) || names(path, token).unwrap_or(false) {
            return Ok(true);
        }
        if err.kind() == io::ErrorKind::AlreadyExists {
            return busy(path).map(|()| false);
        }
        if crate::sys::is_eperm(&err) && fs::lkind(path).ok().flatten().is_some() {
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
        if !(unsupported || fs::is_transient(&err)) || attempt >= ATTEMPTS {
            return Err(fs::io_error(path, "link lock file", err));
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
    }
}

/// After `EEXIST` from linking onto `path`: busy (`Ok(())`) if a `Link`
/// lock file (or nothing, any more) is there, or a file whose record
/// cannot be read; the typed error for anything else, such as the lock
/// file of the `Os` strategy (an `os` record, or blank once released).
fn busy(path: &Utf8Path) -> Result<()> {
    fs::busy(path, LockStrategy::Link, FileKind::File)?;
    let bytes = match fs::open_read(path).and_then(read_capped) {
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
            found: LockStrategy::Os,
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
    match fs::lstat(path) {
        Ok(meta) if !meta.is_file() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    // On sshfs even reading an open file can find it gone (ENOENT).
    match fs::open_read(path).and_then(read_capped) {
        Ok(bytes) => Ok(record_has_token(&bytes, token)),
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
    // Not `lstat`ed on a network file system: see `fs::Look`.
    match fs::look_id(&held.claim, held.look) {
        Ok(Some(_)) => names(path, &held.token),
        Ok(None) => match held.stranded_name() {
            // Mid-release (a release that failed half way): still ours.
            Some(_) => names(path, &held.token),
            None => Ok(false),
        },
        Err(e) => Err(e),
    }
}

impl Held {
    /// The taken name a failed release left, if it is still there.
    fn stranded_name(&self) -> Option<Utf8PathBuf> {
        let stranded = self.stranded.lock().unwrap_or_else(PoisonError::into_inner);
        stranded
            .clone()
            .filter(|name| fs::lkind(name).ok().flatten().is_some())
    }
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<Released> {
    let stranded = held.stranded_name();
    let Held {
        token, claim, sync, ..
    } = &held;
    let taken = match stranded {
        // A release that failed half way: go on from its taken name.
        Some(taken) => taken,
        None => match take_claim(claim) {
            Ok(taken) => taken,
            // A breaker took the claim: the lock is no longer ours.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Lost(None)),
            Err(e) => return Err(Error::io(claim, "remove the claim of", e)),
        },
    };
    // The claim was ours, so nobody else may remove the lock path now; it
    // is still ours unless something outside portalock removed it.
    let removed = match remove_lock_path(path, token, claim, &taken) {
        Ok(removed) => removed,
        Err(e) => {
            // Not put back as the claim: remembered, for a retry.
            if fs::lkind(&taken).ok().flatten().is_some() {
                *held.stranded.lock().unwrap_or_else(PoisonError::into_inner) = Some(taken);
            }
            return Err(e);
        }
    };
    if !removed {
        return Ok(Released::Lost(None));
    }
    if *sync {
        fs::sync_parent(path).map_err(|e| Error::io(path, "flush the removal of", e))?;
    }
    Ok(Released::Done)
}

/// The second half of every removal, once the claim is taken (as `taken`):
/// removes the lock path if it still holds the claim's token, then the
/// taken name. Whether the lock path was this lock's and is removed.
///
/// On an error the taken name is put back as the claim (or, failing that,
/// kept, and a releaser remembers it), so the lock keeps a claim or a
/// taken name: never an orphan that only a forced break recovers.
fn remove_lock_path(
    path: &Utf8Path,
    token: &str,
    claim: &Utf8Path,
    taken: &Utf8Path,
) -> Result<bool> {
    let outcome = match fault::step("link.remove.check", || names(path, token)) {
        Ok(true) => match fault::step("link.remove.unlink", || fs::remove_file(path)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, "remove lock file", e)),
        },
        Ok(false) => Ok(false),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    };
    match outcome {
        Ok(_) => {
            // Removed last: while the lock path is there, the taken name
            // says who is removing it (see `recover_orphan`). A failure
            // here leaves a taken name that a later sweep removes.
            let _ = fault::step("link.remove.taken", || fs::remove_file(taken));
        }
        Err(_) => {
            // Tried a few times: a taken name left in place names this
            // live process, and nobody could recover the lock until it
            // exits.
            for attempt in 0..4u32 {
                match fault::step("link.remove.restore", || {
                    fs::stale_retry(|| std::fs::rename(taken, claim))
                }) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1 << attempt)),
                }
            }
        }
    }
    outcome
}

/// Takes the claim `claim` away, for exactly one caller: renames it to a
/// name of the caller's own, which the caller removes once it is done with
/// the lock path. `NotFound` if someone else took it first.
///
/// A rename, not an unlink, is the step only one caller can win: on Windows
/// a file that another process has open stays at its name after it is
/// deleted ("delete pending"), and deleting it again may succeed (seen
/// under Wine), so two callers could both "remove" one claim. Renaming a
/// name away succeeds once, on every platform.
///
/// The taken name, `<claim>.taken.<machine>.<boot>.<pid>.<nonce>`, names
/// the taker: if it dies before removing the lock path, the lock is left
/// without its claim, and a recoverer that proves the taker gone may take
/// the taken name over in turn (see `recover_orphan`).
fn take_claim(claim: &Utf8Path) -> io::Result<Utf8PathBuf> {
    let taken = taken_name(claim)?;
    match fault::step("link.remove.take", || {
        fs::stale_retry(|| std::fs::rename(claim, &taken))
    }) {
        Ok(()) => Ok(taken),
        // On NFS a rename whose reply was lost is sent again and answered
        // `ENOENT`, though it happened: the taken name (ours alone) tells.
        Err(e) if e.kind() == io::ErrorKind::NotFound && fs::lkind(&taken)?.is_some() => Ok(taken),
        Err(e) => Err(e),
    }
}

/// A fresh taken name for `claim` (a claim or a taken name), of this
/// process.
fn taken_name(claim: &Utf8Path) -> io::Result<Utf8PathBuf> {
    let Some(name) = claim.file_name() else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // A claim's name ends in `.owner`; a taken name continues with
    // `.owner.taken.<tags>.<nonce>`, whose tags hold no `.owner.taken.`:
    // there the last one is where the claim's name ends (the lock's own
    // name may contain `.owner.taken.` too).
    let base = match name.strip_suffix(".owner") {
        Some(base) => base,
        None => name
            .rsplit_once(".owner.taken.")
            .map_or(name, |(base, _)| base),
    };
    Ok(claim.with_file_name(format!(
        "{base}.owner.taken.{}.{}",
        crate::owner::process_tags(),
        crate::owner::new_token()?
    )))
}

/// The taker named by a taken name's suffix (after `.taken.`): whether it
/// may still run. `None` if it cannot be told (another machine or PID
/// namespace, or a name of an older format). `writers`: which machines
/// write to the lock's directory (see `tagged_process_runs`).
fn taker_runs(suffix: &str, writers: Writers) -> Option<bool> {
    // `<machine>.<boot>.<pid>.<start>.<nonce>`
    let (tags, _nonce) = suffix.rsplit_once('.')?;
    crate::owner::tagged_process_runs(tags, writers)
}

/// Recovers a lock file of `token` whose claim is missing and whose owner
/// was judged stale: its remover died after taking the claim and before
/// removing the lock path. Its taken name is still there; if its taker is
/// proved gone, this process takes the taken name over (a rename only one
/// recoverer wins) and removes the lock path if it still holds that token.
///
/// A taker that may still run is finishing its removal (`Raced`: look
/// again); one that cannot be judged may be (`Unjudged`: nobody else may
/// remove the lock); no taken name at all leaves an orphan that only
/// [`force_break`](crate::LockFile::force_break) recovers.
fn recover_orphan(path: &Utf8Path, token: &str, writers: Writers) -> Result<Broken> {
    let claim = claim_path(path, token)?;
    let (Some(dir), Some(claim_name)) = (claim.parent(), claim.file_name()) else {
        return Ok(Broken::Orphan);
    };
    let prefix = format!("{claim_name}.taken.");
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())) else {
            continue;
        };
        let taken = dir.join(name.to_str().unwrap_or_default());
        match taker_runs(suffix, writers) {
            // Perhaps still removing the lock: nobody else may, not even a
            // forced break (that would make two removers of one path).
            None => return Ok(Broken::Unjudged),
            Some(true) => return Ok(Broken::Raced),
            Some(false) => {}
        }
        let ours = taken_name(&taken).map_err(|e| Error::io(&taken, "name", e))?;
        match fault::step("link.recover.take_over", || {
            fs::stale_retry(|| std::fs::rename(&taken, &ours))
        }) {
            Ok(()) => {}
            // On NFS a rename whose reply was lost is answered `ENOENT` when
            // sent again: our own new name tells whether it happened.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && fs::lkind(&ours).ok().flatten().is_some() => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
            Err(e) => return Err(Error::io(&taken, "take over", e)),
        }
        return finish_break(path, token, &claim, &ours, writers);
    }
    // No taken name: an orphan, unless the lock changed meanwhile (removed
    // by someone else, or taken afresh).
    match names(path, token) {
        Ok(true) => Ok(Broken::Orphan),
        Ok(false) => Ok(Broken::Raced),
        Err(e) => Err(Error::io(path, "inspect lock file", e)),
    }
}

/// Removes what killed processes left beside the lock at `path`: claims
/// whose maker (named by their token) is proved gone and that are not the
/// lock's (a process killed between creating its claim and linking it,
/// possibly before it wrote its record), and taken names whose taker is
/// proved gone and that are not the lock's (killed between removing the
/// lock path and its taken name). Anything else, other machines' files
/// included, is left alone. Best effort.
pub(crate) fn sweep(path: &Utf8Path, writers: Writers) {
    let (Some(dir), Some(prefix)) = (path.parent(), private_prefix(path)) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix.as_str()))
        else {
            continue;
        };
        let (token, kind) = match rest.split_once(".owner") {
            Some((token, kind)) if is_token(token) => (token, kind),
            _ => continue,
        };
        let target = dir.join(file_name.to_str().unwrap_or_default());
        let dead = if kind.is_empty() {
            // The token names the process that made the claim (even an
            // empty one: killed before it wrote its record); a claim of
            // another machine or boot is judged by its record.
            match crate::owner::token_maker(token) {
                Some(pid) => !crate::owner::pid_runs(pid),
                None => record_at(&target).is_some_and(|r| {
                    r.token == token && r.liveness_here(writers) == crate::Liveness::Dead
                }),
            }
        } else {
            kind.strip_prefix(".taken.")
                .and_then(|suffix| taker_runs(suffix, writers))
                .is_some_and(|runs| !runs)
        };
        if !dead {
            continue;
        }
        // Looked at only now, after its maker was found dead (a dead
        // process links nothing more): a name that is also the lock file (a
        // second link) or carries the lock's current token stays, and so
        // does everything if the lock file cannot be read now (only a
        // definite "not this token" lets a name go).
        let loose = fs::lstat(&target)
            .is_ok_and(|m| m.is_file() && crate::sys::link_count(&m).unwrap_or(1) == 1);
        if loose && matches!(names(path, token), Ok(false)) {
            let _ = fs::remove_file(&target);
        }
    }
}

/// The record in the file at `path`, if it holds a readable one.
fn record_at(path: &Utf8Path) -> Option<OwnerRecord> {
    fs::open_read(path)
        .and_then(read_capped)
        .ok()
        .and_then(|b| OwnerRecord::parse(&b))
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    let file = match fs::open_read(path) {
        Ok(file) => file,
        Err(e) if fs::is_absent(path, &e) => return Ok(Probe::Free),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Another user's lock (or one made under a umask of 077): held,
            // by an owner this process cannot read.
            let meta = fs::lstat(path).map_err(|e| Error::io(path, "inspect lock file", e))?;
            fs::expect_kind(path, LockStrategy::Link, FileKind::File, fs::kind(&meta))?;
            return Ok(Probe::Held(Box::new(Seen {
                opaque: Some(Opaque::Unreadable),
                ..Seen::new(None, Claim::Unreadable, fs::stamp(&meta))
            })));
        }
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
    let mut stamp = fs::stamp(&meta);
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
        // Blank: a released `Os` lock file.
        None if bytes.trim_ascii().is_empty() => {
            Seen::new(None, Claim::Strategy(LockStrategy::Os), stamp)
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
        seen.orphaned = fs::lkind(&claim).is_ok_and(|kind| kind.is_none());
    }
    Ok(Probe::Held(Box::new(seen)))
}

/// Breaks the lock file of `token`: takes its claim, then removes the lock
/// path if it still holds that token, and sweeps what dead processes left
/// beside it.
///
/// A lock whose claim is missing is recovered through the taken name of its
/// remover if that process is proved gone (`recover_orphan`); a remover
/// that may still run is left to finish (`Raced`). When forced, a lock
/// without any taken name (a cleaner removed the hidden files) gets a new
/// claim, a hard link of the lock path made with `link()`, which fails if
/// another recoverer made it first; run one forced break at a time.
pub(crate) fn break_link(
    path: &Utf8Path,
    token: &str,
    breaking: Breaking,
    writers: Writers,
) -> Result<Broken> {
    let claim = claim_path(path, token)?;
    match names(&claim, token) {
        Ok(true) => {}
        Ok(false) if fs::lkind(&claim).ok().flatten().is_some() => return Ok(Broken::Raced),
        Ok(false) => match recover_orphan(path, token, writers)? {
            Broken::Orphan if breaking == Breaking::Forced => {
                match fault::step("link.force.relink", || fs::hard_link(path, &claim)) {
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
                if !names(&claim, token).map_err(|e| Error::io(&claim, "inspect", e))? {
                    // The lock path changed before the link: this claim
                    // names someone else's lock file. Removing our extra
                    // name of it leaves their lock as it was.
                    let _ = fs::remove_file(&claim);
                    return Ok(Broken::Raced);
                }
            }
            other => return Ok(other),
        },
        Err(e) => return Err(Error::io(&claim, "inspect the claim of", e)),
    }
    let taken = match take_claim(&claim) {
        Ok(taken) => taken,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
        Err(e) => return Err(Error::io(&claim, "remove the claim of", e)),
    };
    finish_break(path, token, &claim, &taken, writers)
}

/// The end of a break, its claim taken (as `taken`): the lock path removed
/// if it is still that lock's, then what dead processes left beside it.
fn finish_break(
    path: &Utf8Path,
    token: &str,
    claim: &Utf8Path,
    taken: &Utf8Path,
    writers: Writers,
) -> Result<Broken> {
    Ok(if remove_lock_path(path, token, claim, taken)? {
        sweep(path, writers);
        Broken::Removed
    } else {
        Broken::Raced
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

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
        let (record, claim, _file, _ino) = claim_for(&root, &path);
        std::fs::hard_link(&claim, &path).expect("the first transmission");
        assert!(link(&path, &claim, &record.token).expect("link"));
    }

    #[test]
    fn eexist_for_another_holders_lock_is_busy() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (other, other_claim, _f, _i) = claim_for(&root, &path);
        std::fs::hard_link(&other_claim, &path).expect("other holder");
        let (record, claim, _file, _ino) = claim_for(&root, &path);
        assert_ne!(other.token, record.token);
        assert!(!link(&path, &claim, &record.token).expect("link"));
    }

    #[test]
    fn a_copy_with_our_token_counts_as_ours_where_inodes_do_not_tell() {
        // sshfs: another inode number per name, but the same record.
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (record, claim, _file, _ino) = claim_for(&root, &path);
        std::fs::copy(&claim, &path).expect("copy");
        assert!(names(&path, &record.token).expect("names"));
        assert!(!names(&path, "0123456789abcdef0123456789abcdef").expect("names"));
    }

    /// A PID that ran on this machine and does not any more.
    #[cfg(unix)]
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    }

    /// The tags a taken name of process `pid` of this machine and boot
    /// carries (its start unknown: judged by its PID alone).
    #[cfg(unix)]
    fn tags_of(pid: u32) -> String {
        let tags = crate::owner::process_tags();
        let mut parts = tags.split('.');
        let (machine, boot) = (parts.next().expect("machine"), parts.next().expect("boot"));
        format!("{machine}.{boot}.{pid}.x")
    }

    /// A lock of a dead owner whose remover took the claim (as `pid`) and
    /// died before removing the lock path.
    #[cfg(unix)]
    fn orphan(root: &Utf8Path, path: &Utf8Path, taker: u32) -> (String, Utf8PathBuf) {
        let mut record = OwnerRecord::for_this_process(LockStrategy::Link).expect("record");
        record.pid = dead_pid();
        let claim = claim_path(path, &record.token).expect("claim path");
        std::fs::write(&claim, record.to_json()).expect("claim");
        std::fs::hard_link(&claim, path).expect("lock");
        let taken = root.join(format!(
            "{}.taken.{}.{}",
            claim.file_name().expect("name"),
            tags_of(taker),
            "ab".repeat(16)
        ));
        std::fs::rename(&claim, &taken).expect("take");
        (record.token, taken)
    }

    #[cfg(unix)]
    #[test]
    fn an_orphan_whose_taker_died_is_recovered() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (token, taken) = orphan(&root, &path, dead_pid());
        assert_eq!(
            break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
            Broken::Removed
        );
        assert!(!path.exists());
        assert!(!taken.exists());
        let left: Vec<_> = std::fs::read_dir(&root).expect("list").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_orphan_whose_taker_runs_is_left_to_it() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (token, taken) = orphan(&root, &path, std::process::id());
        assert_eq!(
            break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
            Broken::Raced
        );
        assert!(path.exists() && taken.exists());
    }

    #[cfg(unix)]
    #[test]
    fn an_orphan_without_a_taken_name_needs_force() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (token, taken) = orphan(&root, &path, dead_pid());
        std::fs::remove_file(&taken).expect("remove taken");
        assert_eq!(
            break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
            Broken::Orphan
        );
        assert!(path.exists());
        assert_eq!(
            break_link(&path, &token, Breaking::Forced, Writers::AnyMachine).expect("force"),
            Broken::Removed
        );
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn sweep_removes_only_what_dead_processes_left() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        // The live lock and its claim.
        let (live, live_claim, _f, _i) = claim_for(&root, &path);
        std::fs::hard_link(&live_claim, &path).expect("lock");
        // Claims made by a dead process, never linked: one with its
        // record, one killed before it wrote the record.
        let dead = dead_pid();
        let dead_token = |n: u64| format!("{}{dead:08x}{n:016x}", crate::owner::host_tag());
        let mut record = OwnerRecord::for_this_process(LockStrategy::Link).expect("record");
        record.token = dead_token(1);
        record.pid = dead;
        let dead_claim = claim_path(&path, &record.token).expect("claim path");
        std::fs::write(&dead_claim, record.to_json()).expect("dead claim");
        let empty_claim = claim_path(&path, &dead_token(2)).expect("claim path");
        std::fs::write(&empty_claim, "").expect("empty claim");
        // A claim of a live process (this one), not yet linked.
        let (_waiting, waiting_claim, _g, _j) = claim_for(&root, &path);
        // Taken names: of a dead taker, of a live one, of another machine.
        let taken = |who: String| {
            let name = format!(
                ".x.lock.{}.owner.taken.{who}.{}",
                "cd".repeat(16),
                "ef".repeat(16)
            );
            let p = root.join(name);
            std::fs::write(&p, "{}").expect("taken");
            p
        };
        let dead_taken = taken(tags_of(dead_pid()));
        let live_taken = taken(tags_of(std::process::id()));
        let foreign_taken = taken(format!(
            "{}.h{}.{}.x",
            "0".repeat(16),
            "0".repeat(16),
            dead_pid()
        ));
        let unrelated = root.join("notes.txt");
        std::fs::write(&unrelated, "keep").expect("unrelated");
        sweep(&path, Writers::AnyMachine);
        assert!(!dead_claim.exists(), "a dead process's claim stays");
        assert!(!empty_claim.exists(), "a dead process's empty claim stays");
        assert!(!dead_taken.exists(), "a dead taker's name stays");
        for kept in [
            &path,
            &live_claim,
            &waiting_claim,
            &live_taken,
            &foreign_taken,
            &unrelated,
        ] {
            assert!(kept.exists(), "{kept} was removed");
        }
        assert_eq!(
            OwnerRecord::parse(&std::fs::read(&path).expect("lock")).map(|r| r.token),
            Some(live.token)
        );
    }

    /// A remover of an earlier boot of this machine cannot be alive: on a
    /// file system only this machine writes to, its orphan is recovered;
    /// on a network one (where a clone of this machine could have written
    /// it) it needs a forced break.
    #[cfg(unix)]
    #[test]
    fn an_orphan_whose_taker_ran_in_an_earlier_boot_is_recovered_on_a_local_disk() {
        let tags = crate::owner::process_tags();
        let boot = tags.split('.').nth(1).expect("boot").to_owned();
        if crate::owner::Identity::get().machine.is_none() || !boot.starts_with('h') {
            eprintln!("no machine id or boot id here: nothing to test");
            return;
        }
        for writers in [Writers::AnyMachine, Writers::ThisMachine] {
            let (_dir, root) = scratch();
            let path = root.join("x.lock");
            // Its PID is alive in this boot (numbers are reused after a
            // reboot): the boot, not the PID, proves it gone.
            let (token, taken) = orphan(&root, &path, std::process::id());
            // The same remover, as an earlier boot named it.
            let name = taken.file_name().expect("name").to_owned();
            let earlier = root.join(name.replace(&boot, &format!("h{}", "0".repeat(16))));
            std::fs::rename(&taken, &earlier).expect("rename");
            let broken = break_link(&path, &token, Breaking::IfStale, writers).expect("break");
            if writers == Writers::ThisMachine {
                assert_eq!(broken, Broken::Removed);
                assert!(!path.exists() && !earlier.exists());
            } else {
                // Its remover cannot be judged there (a clone of this
                // machine could be removing it): nobody else may remove it.
                assert_eq!(broken, Broken::Unjudged);
                assert!(path.exists() && earlier.exists());
            }
        }
    }

    #[test]
    fn taken_names_keep_the_token_whatever_the_lock_is_called() {
        let (_dir, root) = scratch();
        let token = "0123456789abcdef0123456789abcdef";
        for lock in ["a.taken.lock", "x.owner.taken.y", "z.owner"] {
            let path = root.join(lock);
            let claim = claim_path(&path, token).expect("claim");
            let taken = taken_name(&claim).expect("taken");
            let again = taken_name(&taken).expect("taken again");
            for name in [&taken, &again] {
                let name = name.file_name().expect("name");
                assert!(
                    name.starts_with(&format!(".{lock}.{token}.owner.taken.")),
                    "{name}"
                );
            }
            assert_ne!(taken, again);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_forced_break_leaves_an_orphan_to_its_running_remover() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (token, taken) = orphan(&root, &path, std::process::id());
        assert_eq!(
            break_link(&path, &token, Breaking::Forced, Writers::AnyMachine).expect("force"),
            Broken::Raced
        );
        assert!(path.exists() && taken.exists());
        assert!(!claim_path(&path, &token).expect("claim").exists());
    }

    /// A forced break acts on one judged acquisition. If that lock is
    /// released meanwhile and the next holder's lock file lands in the same
    /// inode (ext4 hands a freed inode out again at once), the break must
    /// leave the new lock alone.
    #[cfg(unix)]
    #[test]
    fn a_forced_break_never_removes_a_newer_lock_in_a_reused_inode() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        // The lock the breaker looked at: its token in inode `ino`.
        let (old, old_claim, file, ino) = claim_for(&root, &path);
        drop(file);
        std::fs::hard_link(&old_claim, &path).expect("lock");
        // Released (lock path, then claim), and the same inode becomes the
        // next holder's claim, record and lock file.
        std::fs::remove_file(&path).expect("release the lock path");
        let new = OwnerRecord::for_this_process(LockStrategy::Link).expect("record");
        let new_claim = claim_path(&path, &new.token).expect("claim path");
        std::fs::rename(&old_claim, &new_claim).expect("the inode, reused");
        std::fs::write(&new_claim, new.to_json()).expect("the new record");
        std::fs::hard_link(&new_claim, &path).expect("the new lock");
        assert_eq!(fs::ino(&fs::lstat(&path).expect("lstat")), ino);

        let broken =
            break_link(&path, &old.token, Breaking::Forced, Writers::AnyMachine).expect("break");
        assert_ne!(broken, Broken::Removed);
        assert_eq!(record_at(&path).map(|r| r.token), Some(new.token.clone()));
        assert!(new_claim.exists(), "the new holder's claim was taken");
        assert!(!claim_path(&path, &old.token).expect("claim").exists());
    }

    #[cfg(unix)]
    #[test]
    fn an_orphan_that_was_removed_meanwhile_is_a_race_not_an_orphan() {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        let (token, taken) = orphan(&root, &path, dead_pid());
        std::fs::remove_file(&taken).expect("remove taken");
        std::fs::remove_file(&path).expect("someone removed the lock");
        assert_eq!(
            break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
            Broken::Raced
        );
    }
}
