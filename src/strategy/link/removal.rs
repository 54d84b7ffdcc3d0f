//! Removing a `Link` lock, by its holder or by a breaker: always through
//! its claim, which only one remover can take (see the protocol in the
//! parent module).

use std::io;
use std::sync::PoisonError;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::strategy::{Broken, Released};
use crate::vocab::{Breaking, Writers};

use super::recovery::{recover_orphan, sweep};
use super::{claim_path, names, LinkHold};

impl LinkHold {
    /// The taken name a failed release left, if it is still there.
    pub(super) fn stranded_name(&self) -> Option<Utf8PathBuf> {
        let stranded = self.stranded.lock().unwrap_or_else(PoisonError::into_inner);
        stranded
            .clone()
            .filter(|name| files::lkind(name).ok().flatten().is_some())
    }
}

pub(crate) fn release(path: &Utf8Path, held: LinkHold) -> Result<Released> {
    let stranded = held.stranded_name();
    let LinkHold {
        token, claim, sync, ..
    } = &held;
    let taken = match stranded {
        // A release that failed half way: go on from its taken name.
        Some(taken) => taken,
        None => match take_claim(claim) {
            Ok(taken) => taken,
            // A breaker took the claim: the lock is no longer ours.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Released::Lost(None)),
            Err(e) => return Err(Error::io(claim, Op::TakeClaim, e)),
        },
    };
    // The claim was ours, so nobody else may remove the lock path now; it
    // is still ours unless something outside portalock removed it.
    let removed = match remove_lock_path(path, token, claim, &taken) {
        Ok(removed) => removed,
        Err(e) => {
            // Not put back as the claim: remembered, for a retry.
            if files::lkind(&taken).ok().flatten().is_some() {
                *held.stranded.lock().unwrap_or_else(PoisonError::into_inner) = Some(taken);
            }
            return Err(e);
        }
    };
    if !removed {
        return Ok(Released::Lost(None));
    }
    if *sync {
        files::sync_parent(path).map_err(|e| Error::io(path, Op::Sync, e))?;
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
pub(super) fn remove_lock_path(
    path: &Utf8Path,
    token: &str,
    claim: &Utf8Path,
    taken: &Utf8Path,
) -> Result<bool> {
    let outcome = match fault::step("link.remove.check", || names(path, token)) {
        Ok(true) => match fault::step("link.remove.unlink", || files::remove_file(path)) {
            Ok(()) => {
                // The unlink woke the waiters, likely one on this CPU (the
                // kernel wakes a thread where its waker runs): it goes
                // first, the taken name's removal after (measured: the
                // ping-pong hand-off went from about 115 to 100 us).
                std::thread::yield_now();
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(path, Op::RemoveFile, e)),
        },
        Ok(false) => Ok(false),
        Err(e) => Err(Error::io(path, Op::Inspect, e)),
    };
    match outcome {
        Ok(_) => {
            // Removed last: while the lock path is there, the taken name
            // says who is removing it (see `recover_orphan`). A failure
            // here leaves a taken name that a later sweep removes.
            let _ = fault::step("link.remove.taken", || files::remove_file(taken));
        }
        Err(_) => {
            // Tried a few times: a taken name left in place names this
            // live process, and nobody could recover the lock until it
            // exits.
            for attempt in 0..4u32 {
                match fault::step("link.remove.restore", || {
                    files::stale_retry(|| std::fs::rename(taken, claim))
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
pub(super) fn take_claim(claim: &Utf8Path) -> io::Result<Utf8PathBuf> {
    let taken = taken_name(claim)?;
    match fault::step("link.remove.take", || {
        files::stale_retry(|| std::fs::rename(claim, &taken))
    }) {
        Ok(()) => Ok(taken),
        // On NFS a rename whose reply was lost is sent again and answered
        // `ENOENT`, though it happened: the taken name (ours alone) tells.
        Err(e) if e.kind() == io::ErrorKind::NotFound && files::lkind(&taken)?.is_some() => {
            Ok(taken)
        }
        Err(e) => Err(e),
    }
}

/// A fresh taken name for `claim` (a claim or a taken name), of this
/// process.
pub(super) fn taken_name(claim: &Utf8Path) -> io::Result<Utf8PathBuf> {
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
        Ok(false) if files::lkind(&claim).ok().flatten().is_some() => return Ok(Broken::Raced),
        Ok(false) => match recover_orphan(path, token, writers)? {
            Broken::Orphan if breaking == Breaking::Forced => {
                match fault::step("link.force.relink", || files::hard_link(path, &claim)) {
                    Ok(()) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                        ) =>
                    {
                        return Ok(Broken::Raced)
                    }
                    Err(e) => return Err(Error::io(&claim, Op::MakeClaim, e)),
                }
                if !names(&claim, token).map_err(|e| Error::io(&claim, Op::Inspect, e))? {
                    // The lock path changed before the link: this claim
                    // names someone else's lock file. Removing our extra
                    // name of it leaves their lock as it was.
                    let _ = files::remove_file(&claim);
                    return Ok(Broken::Raced);
                }
            }
            other => return Ok(other),
        },
        Err(e) => return Err(Error::io(&claim, Op::InspectClaim, e)),
    }
    let taken = match take_claim(&claim) {
        Ok(taken) => taken,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Broken::Raced),
        Err(e) => return Err(Error::io(&claim, Op::TakeClaim, e)),
    };
    finish_break(path, token, &claim, &taken, writers)
}

/// The end of a break, its claim taken (as `taken`): the lock path removed
/// if it is still that lock's, then what dead processes left beside it.
pub(super) fn finish_break(
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
