//! What removers and holders that were killed half way leave beside a
//! `Link` lock: an orphan (a lock whose claim a dead remover took) is
//! recovered through its taken name; claims never linked and taken names
//! never removed are swept.

use std::io;

use camino::Utf8Path;

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::owner::is_token;
use crate::strategy::{record_at, Broken};
use crate::vocab::Writers;

use super::removal::{finish_break, taken_name};
use super::{claim_path, names, private_prefix};

/// The taker named by a taken name's suffix (after `.taken.`): whether it
/// may still run. `None` if it cannot be told (another machine or PID
/// namespace, or a name of an older format). `writers`: which machines
/// write to the lock's directory (see `tagged_process_runs`).
pub(super) fn taker_runs(suffix: &str, writers: Writers) -> Option<bool> {
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
pub(super) fn recover_orphan(path: &Utf8Path, token: &str, writers: Writers) -> Result<Broken> {
    let claim = claim_path(path, token)?;
    let (Some(dir), Some(claim_name)) = (claim.parent(), claim.file_name()) else {
        return Ok(Broken::Orphan);
    };
    let prefix = format!("{claim_name}.taken.");
    let entries = files::read_dir(dir).map_err(|e| Error::io(dir, Op::List, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, Op::List, e))?;
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
        let ours = taken_name(&taken).map_err(|e| Error::io(&taken, Op::NameTaken, e))?;
        match fault::step("link.recover.take_over", || {
            files::stale_retry(|| std::fs::rename(&taken, &ours))
        }) {
            Ok(()) => {}
            // On NFS a rename whose reply was lost is answered `ENOENT` when
            // sent again: our own new name tells whether it happened.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && files::lkind(&ours).ok().flatten().is_some() => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
            Err(e) => return Err(Error::io(&taken, Op::TakeOver, e)),
        }
        return finish_break(path, token, &claim, &ours, writers);
    }
    // No taken name: an orphan, unless the lock changed meanwhile (removed
    // by someone else, or taken afresh).
    match names(path, token) {
        Ok(true) => Ok(Broken::Orphan),
        Ok(false) => Ok(Broken::Raced),
        Err(e) => Err(Error::io(path, Op::Inspect, e)),
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
    let Ok(entries) = files::read_dir(dir) else {
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
                // A PID that runs may be another process's now: the start
                // time in the record tells, if the record names the maker
                // itself (a record made on behalf of another process names
                // that one, whose end says nothing of the maker).
                Some(pid) => {
                    !crate::owner::pid_runs(pid)
                        || record_at(&target).is_some_and(|r| {
                            r.token == token
                                && r.pid == pid
                                && crate::owner::pid_reused(pid, r.start.as_deref())
                        })
                }
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
        let loose = files::lstat(&target)
            .is_ok_and(|m| m.is_file() && crate::sys::link_count(&m).unwrap_or(1) == 1);
        if loose && matches!(names(path, token), Ok(false)) {
            let _ = files::remove_file(&target);
        }
    }
}
