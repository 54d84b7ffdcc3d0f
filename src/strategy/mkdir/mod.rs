//! `Mkdir`: an atomic `mkdir` of the lock path.
//!
//! `mkdir` either creates the directory or fails with `EEXIST`, atomically,
//! on every file system that portalock knows of, network ones included. The
//! holder then writes its owner record inside the new directory, in a file
//! named after the record's token: `<token>.json`.
//!
//! The token in the name is what makes removal safe. Whoever removes the
//! lock (its holder releasing, or a breaker) first unlinks the record *by
//! its token's name*: only one `unlink` of a name can succeed, and a newer
//! lock, whose record has another name, can never be touched by it. The
//! winner then removes the directory with `rmdir`, which removes only an
//! empty directory. A directory without any record (a holder that crashed
//! between `mkdir` and writing its record) is removed with `rmdir` alone
//! after the grace period, which likewise fails if a record appeared. See
//! the `stale` module for the whole argument.

use std::io::{self, Write};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::owner::{is_token, read_capped, OwnerRecord};
use crate::strategy::{Broken, Claim, Opaque, Probe, Released, Seen};
use crate::sys::{self, Create};
use crate::vocab::FileKind;
use crate::vocab::LockStrategy;

#[derive(Debug, Clone)]
pub(crate) struct MkdirHold {
    pub(crate) token: String,
    sync: bool,
    look: files::Look,
}

/// How long a lock path of the wrong kind on a network file system is
/// looked at again before it is an error (see `try_acquire` and `probe`;
/// `remove_dir_after` waits longer for its own directory).
const WRONG_KIND_PATIENCE: Duration = Duration::from_millis(2500);

pub(crate) fn record_path(path: &Utf8Path, token: &str) -> Utf8PathBuf {
    path.join(format!("{token}.json"))
}

pub(crate) fn try_acquire(
    path: &Utf8Path,
    record: &OwnerRecord,
    sync: bool,
    look: files::Look,
    mode: Option<u32>,
) -> Result<Option<MkdirHold>> {
    match fault::step("mkdir.acquire.mkdir", || files::create_dir(path)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let busy = || files::expect_kind_at(path, LockStrategy::Mkdir, FileKind::Directory);
            let mut found = busy();
            // An SMB client may take a directory that another client made
            // for a file it had cached under the same (reused) inode
            // number, until it looks again: only a kind that stays wrong
            // for longer than its attribute cache (a second) is an error.
            let mut waited = Duration::ZERO;
            while look != files::Look::Stat
                && matches!(found, Err(Error::WrongFileType { .. }))
                && waited < WRONG_KIND_PATIENCE
            {
                std::thread::sleep(Duration::from_millis(100));
                waited += Duration::from_millis(100);
                found = busy();
            }
            return found.map(|()| None);
        }
        Err(e) => return Err(files::io_error(path, Op::CreateDir, e)),
    }
    match write_record(path, record, sync, mode) {
        Ok(true) => Ok(Some(MkdirHold {
            token: record.token.clone(),
            sync,
            look,
        })),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes our record into the directory just made at `path` and checks that
/// the lock is ours: whether it is.
///
/// This process may have lost its still empty directory to a breaker
/// (acting on an earlier, empty directory of the same name) and be writing
/// its record into someone else's. So after writing, the directory must
/// hold our record alone; otherwise we take our record back out (the name
/// is ours alone) and count the lock as busy. If both writers withdraw,
/// the empty directory is broken after the grace period.
///
/// The directory is opened once (`sys::DirHandle`), the record created in
/// it and the same directory listed: on Unix through one open directory
/// (a directory with our record in it cannot be removed, so the listing
/// speaks of the lock); elsewhere by its path, where the listing decides
/// (and a directory that changed identity meanwhile counts as lost, where
/// the platform tells a directory's identity from its metadata).
fn write_record(
    path: &Utf8Path,
    record: &OwnerRecord,
    sync: bool,
    mode: Option<u32>,
) -> Result<bool> {
    let name = format!("{}.json", record.token);
    let dir = match files::stale_retry(|| sys::DirHandle::open(path.as_std_path())) {
        Ok(dir) => dir,
        // Removed already, or replaced by something else: not ours.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) || sys::is_symlink_refusal(&e) =>
        {
            return Ok(false)
        }
        Err(e) => {
            let _ = files::remove_dir(path);
            return Err(Error::io(path, Op::OpenDir, e));
        }
    };
    // The bits of a lock a group of users shares, before the record goes
    // in (best effort, as `files::apply_mode`); through the directory
    // opened, which is the one this acquisition made or another's that it
    // will leave (a lock directory's bits are every user's same option).
    if let Some(mode) = mode {
        let _ = dir.set_mode(files::dir_mode(mode));
    }
    let written = fault::step("mkdir.acquire.record", || {
        match files::stale_retry(|| dir.create(&name, Create::New)) {
            // The name is this acquisition's alone (a fresh token): if it
            // exists, this process made it, and the client lost the
            // answer (an SMB client replaying its create, or taking the
            // new file for one it had cached under the same reused inode
            // number). Opened as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                files::stale_retry(|| dir.create(&name, Create::Truncate))
            }
            other => other,
        }
    })
    .and_then(|mut file| {
        files::apply_mode(&file, mode);
        file.write_all(record.to_json().as_bytes())?;
        if sync {
            file.sync_all()?;
            dir.sync()?;
            files::sync_parent(path)?;
        }
        // Closed now: see `Held::rewrite_record`.
        Ok(())
    });
    match written {
        Ok(()) => {}
        // A breaker removed the directory while it was still empty (this
        // process paused past the grace period): not ours, try again.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            // The directory is ours: a failure to write the record must not
            // leave a lock behind that nobody will release.
            let _ = dir.remove(&name);
            let _ = files::remove_dir(path);
            return Err(Error::io(
                &record_path(path, &record.token),
                Op::WriteRecord,
                e,
            ));
        }
    }
    if fault::point("mkdir.acquire.alone").is_ok()
        && dir.still_at(path.as_std_path())
        && retry_listing(|| alone_in(&dir, &name))
    {
        return Ok(true);
    }
    let _ = files::remove_file(record_path(path, &record.token));
    Ok(false)
}

/// The answer of `list`, a listing of the lock directory; an error counts
/// as no. A listing that fails for a moment (a stale NFS handle; Wine,
/// while another process deletes in the directory) is tried again, a few
/// times: withdrawing needlessly would leave an empty directory that only
/// the grace period clears.
fn retry_listing(mut list: impl FnMut() -> io::Result<bool>) -> bool {
    for attempt in 0..8u32 {
        match list() {
            Ok(answer) => return answer,
            Err(e) if files::is_transient(&e) => {
                std::thread::sleep(Duration::from_millis(1 << attempt.min(4)));
            }
            Err(_) => return false,
        }
    }
    false
}

/// Whether `name` is the only entry of the lock directory `dir` (beside
/// hidden renames of unlinked files, which are going away).
fn alone_in(dir: &sys::DirHandle, name: &str) -> io::Result<bool> {
    let mut count = 0;
    for listed in dir.names()? {
        match listed.to_str() {
            Some(n) if n == name => count += 1,
            Some(n) if files::is_silly_renamed(n) => {}
            _ => return Ok(false),
        }
    }
    Ok(count == 1)
}

pub(crate) fn check(path: &Utf8Path, held: &MkdirHold) -> io::Result<bool> {
    // Not `lstat`ed on a network file system: see `files::Look`.
    Ok(files::look_id(&record_path(path, &held.token), held.look)?.is_some_and(|(_, file)| file))
}

pub(crate) fn release(path: &Utf8Path, held: MkdirHold) -> Result<Released> {
    let MkdirHold { token, sync, .. } = held;
    Ok(match break_record(path, &token)? {
        Broken::Removed => {
            if sync {
                files::sync_parent(path).map_err(|e| Error::io(path, Op::Sync, e))?;
            }
            Released::Done
        }
        _ => Released::Lost(None),
    })
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    // Answers that say the lock changed under the look, or may be a
    // client's passing confusion, are looked at again, for
    // `WRONG_KIND_PATIENCE` at most (see `Looked`). None of them is ever
    // taken for a missing record: a record missing for a grace period lets
    // a waiter break the lock, and a live record answered so for that long
    // would be broken.
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let looked = probe_once(path)?;
        let patient = started.elapsed() < WRONG_KIND_PATIENCE;
        match looked {
            Looked::Done(probe) => return Ok(probe),
            Looked::NotADirectory(_) | Looked::Unread(_) if patient => {
                std::thread::sleep(pause);
                pause = Duration::from_millis(100);
            }
            Looked::NotADirectory(e) => return Err(e),
            // Still there and still not readable: held by an owner that
            // cannot be judged now (looked at again at the next poll).
            Looked::Unread(seen) => return Ok(Probe::Held(seen)),
        }
    }
}

/// What one look at a `Mkdir` lock found.
enum Looked {
    Done(Probe),
    /// "Not a directory" from listing the lock directory that `lstat` just
    /// called one, or from opening the record just listed in it: the
    /// directory was replaced meanwhile (a second look says what is there
    /// now), or an SMB client took it for a file it had cached under the
    /// same reused inode number, until its attribute cache runs out.
    NotADirectory(Error),
    /// The record just listed could not be opened or read: removed since
    /// the listing (on sshfs, `fstat` and `read` of an open file can find
    /// it gone too), or "delete pending" on an SMB server (which newer
    /// Linux clients report as EBUSY, and Linux 6.1's as EINVAL when its
    /// directory went too). A second look usually finds the lock gone; if
    /// not, this look (an owner that cannot be judged) is the answer.
    Unread(Box<Seen>),
}

fn probe_once(path: &Utf8Path) -> Result<Looked> {
    let meta = match files::lstat(path) {
        Ok(meta) => meta,
        Err(e) if files::is_absent(path, &e) => return Ok(Looked::Done(Probe::Free)),
        Err(e) => return Err(files::io_error(path, Op::Inspect, e)),
    };
    files::expect_kind(
        path,
        LockStrategy::Mkdir,
        FileKind::Directory,
        files::kind(&meta),
    )?;
    let entries = match fault::step("mkdir.probe.list", || files::read_dir(path)) {
        Ok(entries) => entries,
        // Removed since the look above: free now.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Looked::Done(Probe::Free)),
        // Another user's lock (or one made under a umask of 077): held, by
        // an owner this process cannot read.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Ok(Looked::Done(Probe::Held(Box::new(Seen {
                opaque: Some(Opaque::Unreadable),
                ..Seen::new(None, Claim::Unreadable, files::stamp(&meta))
            }))))
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Ok(Looked::NotADirectory(Error::io(path, Op::List, e)))
        }
        Err(e) => return Err(Error::io(path, Op::List, e)),
    };
    let mut tokens = Vec::new();
    let mut others = 0usize;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, Op::List, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(files::is_silly_renamed) {
            // An unlinked record still open on this client: going away.
            continue;
        }
        match name.to_str().and_then(|n| n.strip_suffix(".json")) {
            Some(token) if is_token(token) => tokens.push(token.to_owned()),
            _ => others += 1,
        }
        if tokens.len() + others > 8 {
            break;
        }
    }
    let mut stamp = files::stamp(&meta);
    let ([token], 0) = (tokens.as_slice(), others) else {
        let claim = if tokens.is_empty() && others == 0 {
            Claim::MkdirEmpty
        } else {
            Claim::Foreign
        };
        return Ok(Looked::Done(Probe::Held(Box::new(Seen::new(
            None, claim, stamp,
        )))));
    };
    let target = record_path(path, token);
    // The token belongs in the stamp: a directory made again with the
    // same inode number and time stamps is another holder's lock.
    stamp.extend_from_slice(token.as_bytes());
    let unread = |stamp: Vec<u8>| {
        Ok(Looked::Unread(Box::new(Seen {
            opaque: Some(Opaque::Unreadable),
            ..Seen::new(
                None,
                Claim::Mkdir {
                    token: token.clone(),
                },
                stamp,
            )
        })))
    };
    let gone = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound
            || e.kind() == io::ErrorKind::ResourceBusy
            || e.kind() == io::ErrorKind::InvalidInput
    };
    let mut opaque = None;
    let bytes = match fault::step("mkdir.probe.record", || files::open_read(&target)) {
        Ok(file) => match file.metadata() {
            Ok(m) if m.is_file() => match read_capped(file) {
                Ok(bytes) => bytes,
                Err(e) if gone(&e) => return unread(stamp),
                Err(e) => return Err(Error::io(&target, Op::Read, e)),
            },
            Err(e) if gone(&e) => return unread(stamp),
            // A FIFO or device under a record's name: not ours.
            _ => {
                return Ok(Looked::Done(Probe::Held(Box::new(Seen::new(
                    None,
                    Claim::Foreign,
                    stamp,
                )))))
            }
        },
        Err(e) if gone(&e) => return unread(stamp),
        // There, but not readable by this process: an owner that exists
        // and cannot be judged, never a missing record.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            opaque = Some(Opaque::Unreadable);
            Vec::new()
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Ok(Looked::NotADirectory(files::io_error(
                &target,
                Op::OpenRecord,
                e,
            )))
        }
        Err(e) => return Err(files::io_error(&target, Op::OpenRecord, e)),
    };
    stamp.extend_from_slice(&bytes);
    let record = OwnerRecord::parse(&bytes).filter(|r| r.token == *token);
    if record.is_none() && opaque.is_none() {
        opaque = crate::owner::other_version(&bytes).map(Opaque::Version);
    }
    let claim = match &record {
        Some(r) if r.strategy != LockStrategy::Mkdir => Claim::Strategy(r.strategy),
        _ => Claim::Mkdir {
            token: token.clone(),
        },
    };
    Ok(Looked::Done(Probe::Held(Box::new(Seen {
        opaque,
        ..Seen::new(record, claim, stamp)
    }))))
}

/// Removes the lock whose record is named after `token`: the record first
/// (only one remover can), then the directory if it is empty.
pub(crate) fn break_record(path: &Utf8Path, token: &str) -> Result<Broken> {
    let target = record_path(path, token);
    match fault::step("mkdir.remove.record", || files::remove_file(&target)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
        Err(e) => return Err(Error::io(&target, Op::RemoveRecord, e)),
    }
    remove_dir_after(path, token)
}

/// Removes the lock directory `path` once the record of `token` was
/// unlinked from it.
///
/// A process on this client that still has the record open (a prober,
/// for a moment) turns its unlink into a hidden rename on FUSE and NFS
/// clients (`.fuse_hidden*`, `.nfs*`), which goes away when it closes the
/// file; on SMB the record stays listed, "delete pending", until then.
/// Wait for that, briefly; nothing else may be in the way.
fn remove_dir_after(path: &Utf8Path, token: &str) -> Result<Broken> {
    let mut wait = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    let rmdir = || fault::step("mkdir.remove.dir", || files::remove_dir(path));
    loop {
        let err = match rmdir() {
            Ok(()) => return Ok(Broken::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Removed),
            Err(e) => e,
        };
        if err.kind() == io::ErrorKind::DirectoryNotEmpty {
            match contents(path, token) {
                // Our record is gone, and the directory was removed and
                // made again meanwhile: it is another holder's lock now.
                Contents::Another => return Ok(Broken::Removed),
                Contents::Foreign(name) => {
                    let cause = io::Error::new(err.kind(), format!("{err}; it holds `{name}`"));
                    return Err(Error::io(path, Op::RemoveDir, cause));
                }
                Contents::Pending => {}
            }
        } else if err.kind() == io::ErrorKind::NotADirectory {
            // An SMB client can answer `ENOTDIR` for our own directory from
            // what it cached under the same reused inode number (a regular
            // file another client removed), for seconds while other
            // processes' looks keep that cache fresh: asked again (see
            // `OWN_DIRECTORY_PATIENCE`). Only an empty directory is ever
            // removed, so asking again is safe.
        } else if !files::is_transient(&err) {
            return Err(Error::io(path, Op::RemoveDir, err));
        }
        let patience = if err.kind() == io::ErrorKind::NotADirectory {
            OWN_DIRECTORY_PATIENCE
        } else {
            (10 * SILLY_RENAME_WAIT).max(WRONG_KIND_PATIENCE)
        };
        if waited > patience {
            return Err(Error::io(path, Op::RemoveDir, err));
        }
        if waited >= SILLY_RENAME_WAIT {
            // Some FUSE servers (sshfs) sometimes keep the hidden name
            // after the file is closed. It is an unlinked record of this
            // lock, nothing else: remove it.
            clear_hidden(path);
        }
        std::thread::sleep(wait);
        waited += wait;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// How long a holder asks again to remove its own, empty lock directory
/// that its client calls "not a directory": as long as the default grace
/// period (`stale::DEFAULT_GRACE`, 10 s), after which others may break the
/// empty directory anyway.
const OWN_DIRECTORY_PATIENCE: Duration = Duration::from_secs(10);

/// How long a remover waits for hidden renames of unlinked open files to
/// go away before it removes them itself.
const SILLY_RENAME_WAIT: Duration = Duration::from_millis(200);

/// Removes the hidden renames from the lock directory `path`.
fn clear_hidden(path: &Utf8Path) {
    let Ok(entries) = files::read_dir(path) else {
        return;
    };
    for entry in entries.take(16).flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(files::is_silly_renamed)
        {
            let _ = files::remove_file(entry.path());
        }
    }
}

/// What keeps a lock directory whose record was just unlinked from being
/// removed.
enum Contents {
    /// Nothing that will stay: hidden renames of unlinked open files
    /// (FUSE's `.fuse_hidden*`, NFS's `.nfs*`), the unlinked record itself
    /// (Windows lists a file that another process still has open until it
    /// is closed: "delete pending"), nothing at all, or a listing that
    /// failed for a moment (Wine, while a file in it is being deleted).
    Pending,
    /// The record of another token: a new holder's.
    Another,
    /// Something portalock did not put there (its name).
    Foreign(String),
}

/// Looks at what is in the lock directory after the record of `token`
/// was unlinked.
fn contents(path: &Utf8Path, token: &str) -> Contents {
    let entries = match files::read_dir(path) {
        Ok(entries) => entries,
        // Gone meanwhile (the next rmdir says so), or not listable for a
        // moment (Windows, while it is being deleted): the caller's wait
        // is bounded.
        Err(_) => return Contents::Pending,
    };
    let mut result = Contents::Pending;
    for entry in entries.take(16) {
        let Ok(entry) = entry else {
            continue;
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Contents::Foreign(name.to_string_lossy().into_owned());
        };
        if files::is_silly_renamed(name) {
            continue;
        }
        match name.strip_suffix(".json") {
            Some(t) if t == token => {}
            Some(t) if is_token(t) => result = Contents::Another,
            _ => return Contents::Foreign(name.to_owned()),
        }
    }
    result
}

/// Removes a lock directory without a record, if it is still empty.
pub(crate) fn break_empty(path: &Utf8Path) -> Result<Broken> {
    if matches!(contents(path, ""), Contents::Pending) {
        // Judged empty: hidden renames do not count (see `break_record`).
        clear_hidden(path);
    }
    match fault::step("mkdir.break_empty.rmdir", || files::remove_dir(path)) {
        Ok(()) => Ok(Broken::Removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Broken::Raced),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(Broken::Raced),
        Err(e) => Err(Error::io(path, Op::RemoveDir, e)),
    }
}

#[cfg(test)]
mod tests;
