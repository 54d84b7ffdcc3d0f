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
//! A rename answered "no such file" is taken as not done, and the counter
//! looked at again: a network client's cached view (a listing or a name
//! that is gone on the server) costs a retry, and so does a rename whose
//! reply was lost though it was done (it leaves a gap). It is never taken
//! as done on the evidence of the new name's inode, which any process's
//! rename of the same name would show alike: two acquisitions would share
//! a token.
//!
//! The directory is made complete or not at all: its first number is
//! written into a private directory renamed into place, which fails if
//! another process's is there first. That first number is the wall clock
//! in microseconds, not 0: a counter made again after someone removed the
//! directory still gives tokens larger than those of the old one (each
//! acquisition takes more than a microsecond), as long as the clock has
//! not been set back by more than the time the old one lasted.
//!
//! "Earlier" is in the sense of the holds: a holder whose hold began after
//! another's was broken or released has a larger token. A holder paused
//! after its token was given (before its acquire returned) may return a
//! token smaller than that of a holder that returned first; that is what a
//! fenced resource refuses.
//!
//! [`LockOptions::fencing`]: crate::LockOptions::fencing

use std::io;
use std::time::{Duration, Instant, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::strategy;

/// How long a holder goes on looking at a counter that moves under it, or
/// that a listing shows without a number: the counter moves only for
/// holders, one at a time, so this outlasts a network client's cached
/// view (an NFS attribute cache, an SMB directory cache: seconds).
const PATIENCE: Duration = Duration::from_secs(30);

/// The counter's directory beside the lock at `path`.
pub(crate) fn fence_dir(path: &Utf8Path) -> Option<Utf8PathBuf> {
    let dir = path.parent()?;
    let prefix = strategy::private_prefix(path)?;
    Some(dir.join(format!("{prefix}fence")))
}

/// Moves the counter beside the lock at `path` up by one, for the
/// acquisition of `token` that holds the lock: the new number. With
/// `sync`, the counter's directory is flushed to stable storage.
pub(crate) fn next(path: &Utf8Path, token: &str, sync: bool) -> Result<u64> {
    let err = |e: io::Error| Error::io(path, Op::Fence, e);
    let dir = fence_dir(path).ok_or_else(|| {
        Error::io(
            path,
            Op::UseAsLockPath,
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )
    })?;
    let began = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match current(&dir) {
            Ok(Some((number, name))) => {
                let up = number.checked_add(1).ok_or_else(|| {
                    err(io::Error::other(
                        "the fencing counter is at its largest number",
                    ))
                })?;
                let (from, to) = (dir.join(name), dir.join(up.to_string()));
                fault::point("fence.moving").map_err(err)?;
                match std::fs::rename(&from, &to) {
                    Ok(()) => {
                        if sync {
                            files::sync_dir(&dir).map_err(err)?;
                        }
                        return Ok(up);
                    }
                    // Moved meanwhile, or a cached view: look again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(e)),
                }
            }
            // A listing that shows no number (one taken while the counter
            // moved, or a cached view): look again; after the patience,
            // something removed it.
            Ok(None) if began.elapsed() < PATIENCE => {}
            Ok(None) => {
                return Err(err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the fencing counter {dir} holds no number: something removes its file \
                         (it holds one file named by the last token)"
                    ),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                start(&dir, token, sync).map_err(err)?;
                continue;
            }
            Err(e) => return Err(err(e)),
        }
        if began.elapsed() >= PATIENCE {
            return Err(err(io::Error::other(
                "the fencing counter kept moving while this holder moved it",
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The counter: the largest number named in `dir`, and the name that says
/// it; `None` if no name does. Other names (a network client's `.nfs*`
/// files) are not numbers.
fn current(dir: &Utf8Path) -> io::Result<Option<(u64, String)>> {
    let mut largest: Option<(u64, String)> = None;
    for entry in std::fs::read_dir(dir)? {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(number) = name.parse::<u64>() else {
            continue;
        };
        if largest.as_ref().is_none_or(|(n, _)| number > *n) {
            largest = Some((number, name));
        }
    }
    Ok(largest)
}

/// Makes the counter at `dir`, at the wall clock in microseconds, unless
/// another process's is there first: a private directory with that number
/// in it, renamed into place.
fn start(dir: &Utf8Path, token: &str, sync: bool) -> io::Result<()> {
    let private = Utf8PathBuf::from(format!("{dir}.{token}.new"));
    match std::fs::create_dir(&private) {
        Ok(()) => {}
        // (this acquisition's own, from an attempt whose reply was lost)
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
    let first = private.join(micros.to_string());
    match files::create_new(&first) {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if sync {
        files::sync_dir(&private)?;
    }
    let placed = std::fs::rename(&private, dir);
    if placed.is_err() || private.as_std_path().exists() {
        // Another process's counter is there (a rename onto a directory
        // that is not empty fails), or ours went in and the reply was
        // lost: either way the private one, if left, goes.
        if let Ok(entries) = std::fs::read_dir(&private) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&private);
    }
    match placed {
        Err(e) if !dir.as_std_path().is_dir() => Err(e),
        _ if sync => files::sync_parent(dir),
        _ => Ok(()),
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Two callers move one counter; the first is held just before its
    /// rename while the second moves the counter past it (as a network
    /// client's cached view of the old name would let it). The first's
    /// rename then finds no such name: it must look again, not take the
    /// second's number as its own.
    #[test]
    fn a_rename_that_finds_the_counter_moved_looks_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
        let path = root.join("x.lock");
        let first = next(&path, "t0", false).expect("start");
        let scenario = fail::FailScenario::setup();
        let (paused, at_rename) = mpsc::channel();
        let (resume, go) = mpsc::channel::<()>();
        let go = std::sync::Mutex::new(go);
        let once = std::sync::atomic::AtomicBool::new(true);
        fail::cfg_callback("fence.moving", move || {
            if once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = paused.send(());
                let _ = go.lock().map(|rx| rx.recv_timeout(Duration::from_secs(30)));
            }
        })
        .expect("fail point");
        let held = {
            let path = path.clone();
            std::thread::spawn(move || next(&path, "t1", false))
        };
        at_rename
            .recv_timeout(Duration::from_secs(30))
            .expect("paused at the rename");
        let second = next(&path, "t2", false).expect("the second");
        resume.send(()).expect("resume");
        let held = held.join().expect("the first").expect("a number");
        scenario.teardown();
        assert_eq!(second, first + 1);
        assert_eq!(
            held,
            first + 2,
            "the held caller took {held}, the other {second}"
        );
    }
}
