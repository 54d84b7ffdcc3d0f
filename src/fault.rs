//! Fault points: the named steps of the protocols, at which a test can
//! stop a process, kill it while it is stopped, or make the step fail.
//!
//! With the `failpoints` feature (test-only, off by default) every step is
//! a [`fail`](https://docs.rs/fail) point of the same name: a test
//! configures it with `fail::cfg(name, "return(ERRNO)")` to make the step
//! fail with that OS error (EIO when no number is given), or with
//! `fail::cfg_callback` to pause there. Without the feature a step is its
//! operation and nothing else.

use std::io;

/// Every named step, for tests that must cover them all.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub const STEPS: &[&str] = &[
    // Os: the lock held, the record not yet written; the release checked
    // (and on a network file system the record blanked), the lock not yet
    // unlocked.
    "os.acquire.locked",
    "os.release.unlocking",
    // Mkdir: acquire.
    "mkdir.acquire.mkdir",
    "mkdir.acquire.record",
    "mkdir.acquire.alone",
    // Mkdir: release and break (the record by its token's name, then the
    // directory), and the break of a directory without a record.
    "mkdir.remove.record",
    "mkdir.remove.dir",
    "mkdir.break_empty.rmdir",
    // Mkdir and Link: a lease refresh writing the record.
    "mkdir.refresh.write",
    "link.refresh.write",
    // Link: acquire.
    "link.acquire.claim",
    "link.acquire.link",
    // Link: release, break and forced break take the claim, check the lock
    // path, remove it, then remove the taken name.
    "link.remove.take",
    "link.remove.check",
    "link.remove.unlink",
    "link.remove.taken",
    // Link: putting the taken name back as the claim after a removal that
    // failed half way.
    "link.remove.restore",
    // Link: recovery of an orphan through its dead remover's taken name,
    // and a forced break's new claim for an orphan without one.
    "link.recover.take_over",
    "link.force.relink",
    // Handing a lock to a command (`LockFile::spawn`): the command forked
    // and waiting at its gate, its record not yet naming it; named, the
    // gate not yet open.
    "spawn.gate",
    "spawn.named",
    // The turnstile: its gate taken, the lock not yet tried; the lock
    // taken, the gate not yet let go.
    "gate.taken",
    "gate.passed",
    // Breaking: a lock judged stale, not yet removed (waiters and
    // `break_lock`; `force_break`).
    "break.judged",
    "force.judged",
    // Readers (`LockFile::lock_shared` on `Mkdir` and `Link`): a reader's
    // registration made, the lock not yet checked and let go; a writer
    // holding the lock found readers registered, not yet judged.
    "readers.registered",
    "readers.draining",
];

/// Points where a test injects an error that a file system can give but
/// no local test can provoke on cue, or pauses a network lock: not
/// file-system protocol steps (the fault-point matrix leaves them out).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
pub const INJECTIONS: &[&str] = &[
    // Mkdir: listing the lock directory that `lstat` just called a
    // directory (an SMB client can answer ENOTDIR for a moment, taking it
    // for a file it had cached under the same reused inode number).
    "mkdir.probe.list",
    // Mkdir: opening the record just listed in the lock directory (the
    // same client can answer ENOTDIR for the directory in its path).
    "mkdir.probe.record",
    // Fencing (`LockOptions::fencing`): the counter read, not yet moved
    // (a test holds a caller here while another moves it).
    "fence.moving",
    // EtcdLock (feature `etcd`), where a test pauses a process past its
    // lease: `ensure_held` with etcd's answer in hand; an acquisition that
    // found itself first in line, not yet granted.
    "etcd.check.answered",
    "etcd.acquire.first",
];

/// Runs the step `name`: `op`, unless a test made the step fail.
pub(crate) fn step<T>(name: &'static str, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    match injected(name) {
        Some(err) => Err(err),
        None => op(),
    }
}

/// A step that is a point in time rather than a call (a test may pause
/// here); an injected failure is returned for the caller to act on.
pub(crate) fn point(name: &'static str) -> io::Result<()> {
    step(name, || Ok(()))
}

#[cfg(feature = "failpoints")]
fn injected(name: &'static str) -> Option<io::Error> {
    debug_assert!(
        STEPS.contains(&name) || INJECTIONS.contains(&name),
        "unlisted fault point {name}"
    );
    let hit = (|| {
        fail::fail_point!(name, |arg: Option<String>| Some(arg));
        None
    })();
    hit.map(|arg| {
        let errno = arg.and_then(|a| a.trim().parse().ok()).unwrap_or(5);
        io::Error::from_raw_os_error(errno)
    })
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn injected(_name: &'static str) -> Option<io::Error> {
    None
}
