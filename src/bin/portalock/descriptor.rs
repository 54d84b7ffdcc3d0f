//! fd mode of the flock(1) form: `portalock [-s|-x] [-n|-w T] [-E N] FD`
//! locks the open descriptor FD, and `portalock -u FD` unlocks it, as
//! `flock FD` does.
//!
//! The lock belongs to the open file the descriptor refers to, which the
//! shell that opened it (`exec 9>LOCK`, or `( ... ) 9>LOCK`) keeps after
//! portalock exits: the lock lasts until that shell closes it or `-u`. It
//! is a bare OS lock (`flock(2)`): no owner record is written into a file
//! the caller opened, and nothing says who holds it.

use std::path::Path;

use crate::flock_form::usage;
#[cfg(not(unix))]
use crate::Outcome;
use crate::RunArgs;

/// The descriptor `lock` names, if it is a number (digits only).
pub(crate) fn number(lock: &Path) -> Option<i32> {
    let s = lock.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Refuses the options fd mode has no use for: the lock is the caller's
/// open file, an os lock held by nothing that portalock keeps running.
fn check(args: &RunArgs) -> Option<&'static str> {
    use portalock::LockStrategy;
    if !matches!(
        args.strategy,
        None | Some(LockStrategy::Os | LockStrategy::Auto)
    ) {
        return Some("fd mode locks a descriptor with an os lock: --strategy os (or none)");
    }
    if args.lease.is_some() {
        return Some("fd mode has no lease: nothing refreshes it once portalock exits");
    }
    if args.slots > 1 {
        return Some("fd mode locks one descriptor: --slots needs a lock path");
    }
    #[cfg(feature = "redis")]
    if args.redis.is_some() {
        return Some("fd mode locks a descriptor, not a Redis lock");
    }
    #[cfg(feature = "etcd")]
    if args.etcd.is_some() {
        return Some("fd mode locks a descriptor, not an etcd lock");
    }
    None
}

#[cfg(unix)]
pub(crate) use unix::lock;

#[cfg(not(unix))]
/// Locks descriptor `fd`: Unix only.
pub(crate) fn lock(_fd: i32, args: &RunArgs, _unlock: bool) -> Outcome {
    if let Some(refusal) = check(args) {
        return usage(refusal);
    }
    usage("fd mode needs a Unix descriptor: give a lock path and a command")
}

#[cfg(unix)]
mod unix {
    use std::io;
    use std::os::fd::{BorrowedFd, RawFd};
    use std::time::{Duration, Instant};

    use rustix::fs::{flock, FlockOperation};

    use super::{check, usage};
    use crate::{Failure, Outcome, RunArgs, EXIT_BAD_DESCRIPTOR, EXIT_LOCK_ERROR};

    /// The first pause of a bounded wait's retries, and the longest.
    const FIRST_PAUSE: Duration = Duration::from_millis(1);
    const LONGEST_PAUSE: Duration = Duration::from_millis(50);

    /// Locks (or with `unlock`, unlocks) descriptor `fd` as `args` say.
    pub(crate) fn lock(fd: RawFd, args: &RunArgs, unlock: bool) -> Outcome {
        if let Some(refusal) = check(args) {
            return usage(refusal);
        }
        let Some(descriptor) = borrow(fd) else {
            return Err(Failure::new(
                format!("{fd}: not an open descriptor"),
                EXIT_BAD_DESCRIPTOR,
            ));
        };
        let started = Instant::now();
        if unlock {
            return retry_interrupted(|| flock(descriptor, FlockOperation::Unlock))
                .map(|()| 0)
                .map_err(|e| failure(fd, "unlock", e));
        }
        let (blocking, nonblocking) = if args.shared {
            (
                FlockOperation::LockShared,
                FlockOperation::NonBlockingLockShared,
            )
        } else {
            (
                FlockOperation::LockExclusive,
                FlockOperation::NonBlockingLockExclusive,
            )
        };
        // (a wait too long to have an end waits forever)
        let deadline = args.wait.timeout().map(|t| started.checked_add(t));
        let taken = match deadline {
            None | Some(None) => retry_interrupted(|| flock(descriptor, blocking)).map(|()| true),
            Some(Some(deadline)) => {
                let mut pause = FIRST_PAUSE;
                loop {
                    match retry_interrupted(|| flock(descriptor, nonblocking)) {
                        Ok(()) => break Ok(true),
                        Err(e) if !busy(&e) => break Err(e),
                        Err(_) => {}
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break Ok(false);
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
        };
        match taken {
            Ok(true) => {
                if args.wait.verbose {
                    eprintln!(
                        "portalock: got the lock on descriptor {fd} after {:.3}s",
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok(0)
            }
            Ok(false) => Err(Failure::new(
                format!("descriptor {fd}: the lock is held by another open file"),
                args.wait.conflict(),
            )),
            Err(e) => Err(failure(fd, "lock", e)),
        }
    }

    /// Whether a failed non-blocking `flock` says the lock is busy: EAGAIN,
    /// or EACCES (as an SMB mount answers).
    fn busy(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::WouldBlock
            || e.raw_os_error() == Some(rustix::io::Errno::ACCESS.raw_os_error())
    }

    fn failure(fd: RawFd, what: &str, e: io::Error) -> Failure {
        Failure::new(
            format!("cannot {what} descriptor {fd}: {e}"),
            EXIT_LOCK_ERROR,
        )
    }

    /// Calls `op` again while it is interrupted by a signal.
    fn retry_interrupted(mut op: impl FnMut() -> rustix::io::Result<()>) -> io::Result<()> {
        loop {
            match op() {
                Err(rustix::io::Errno::INTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    /// Descriptor `fd`, if it is open in this process.
    #[allow(unsafe_code)]
    fn borrow(fd: RawFd) -> Option<BorrowedFd<'static>> {
        if fd < 0 {
            return None;
        }
        // SAFETY: `fcntl(F_GETFD)` only reads the descriptor table; it is
        // sound for any integer and fails with EBADF for one not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            return None;
        }
        // SAFETY: `fd` is open (checked just above), and stays open for
        // the rest of this process: it is the caller's descriptor, which
        // portalock never closes, and fd mode opens and closes nothing
        // else that could reuse its number before it exits.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }
}
