//! Stale locks: when a lock may be broken, and how breaking stays safe when
//! many processes try at once.
//!
//! # When a lock is stale
//!
//! A contender judges what it sees at the lock path:
//!
//! * **A dead owner.** The record names this host, this boot and this PID
//!   namespace, and its PID is gone, a zombie, or now belongs to a process
//!   with another start time ([`Liveness::Dead`]). Stale at once.
//! * **An expired lease.** The record carries a lease and the contender has
//!   seen the record unchanged for the whole lease, measured on its own
//!   monotonic clock from the first time it saw that very record. A holder
//!   with a lease rewrites its record (its `beat` counter) three times per
//!   lease, so a live holder is seen to change; clocks of other hosts never
//!   enter into it.
//! * **No record, past the grace period.** A `Mkdir` directory without a
//!   record (a crash between `mkdir` and writing it), or with a record file
//!   that does not parse, unchanged for the grace period on the contender's
//!   clock. `Link` locks always carry their record (it is written before
//!   the link), so a `Link` lock file without a readable record is foreign
//!   and never broken.
//!
//! An owner of another host, boot or PID namespace ([`Liveness::Unknown`])
//! without a lease is never judged stale: only a forced break removes it.
//! `Os` locks are never broken: the kernel releases them when their holder
//! dies.
//!
//! # How a lock is broken
//!
//! The hazard is the one that hit other lock libraries: two contenders see
//! the same stale lock; the first removes it and takes a fresh lock; the
//! second, acting on what it saw before, removes the fresh one. Removal by
//! *name* after a check is always racy. portalock never removes a lock
//! path on the strength of an earlier look. Every removal, by a breaker or
//! by the holder itself, first removes a name that belongs to **one
//! acquisition only**, its *claim*, derived from the 128-bit token of the
//! record that was judged:
//!
//! * `Mkdir`: the claim is the record file `<lock>/<token>.json`. The winner
//!   of its `unlink` then calls `rmdir` on the lock directory, which the
//!   kernel refuses unless the directory is empty.
//! * `Link`: the claim is the private file `.<name>.<token>.owner` that the
//!   holder linked onto the lock path and keeps while it holds the lock.
//!   It is taken by a `rename` to a name of the taker's own
//!   (`<claim>.taken.<host>.<pid>.<nonce>`; a rename, because on Windows
//!   a second delete of a delete-pending file can succeed). The winner
//!   then removes the lock path if it is still that acquisition's lock
//!   file (it names the claim's inode, or, where inode numbers do not
//!   tell, as on sshfs, which numbers names rather than files, it holds
//!   the record with the claim's token), and its taken name last.
//!
//! Why this is safe:
//!
//! 1. `unlink` (`rename`) of one name succeeds for exactly one caller. Two
//!    breakers of one stale lock (or a breaker and a holder that wakes up
//!    to release) cannot both go on: the loser sees `ENOENT` and looks
//!    again.
//! 2. A fresh lock has a fresh token, hence a claim of another name. A
//!    breaker holding an old judgment can only ever remove the old claim,
//!    which no longer exists: it cannot touch the fresh lock.
//! 3. Between winning the claim and removing the lock path, nobody else can
//!    remove the path: that needs the claim, and creating a lock needs the
//!    path to be absent. So the path still names the judged lock. (`Mkdir`:
//!    `rmdir` could only fail, never remove a non-empty directory; `Link`:
//!    the inode or token is compared anyway, in case something outside
//!    portalock replaced the lock file.)
//! 4. A `Mkdir` directory without a record is removed only by `rmdir`,
//!    which fails as soon as a record is in it. That `rmdir` acts on an
//!    earlier look, so it may remove a directory another acquirer has just
//!    made and not yet written to. Every acquirer therefore checks, after
//!    writing its record, that the directory is still the one it made and
//!    that its record is the only entry; otherwise it removes its own
//!    record, by its own name, and counts the lock as busy. Two acquirers
//!    that meet in one directory both withdraw, which is safe (the empty
//!    directory is broken after the grace period).
//!
//! The multi-process test `sixteen_processes_race_to_break_one_stale_lock`
//! checks points 1 to 3: in every round exactly one of 16 contenders holds
//! the lock and no fresh lock is ever removed (with a plain unlink of the
//! lock path instead of the claim, 8 to 12 contenders "win" a round).
//!
//! What remains, and is documented rather than hidden:
//!
//! * A `Link` lock whose claim is gone while the lock file stays is an
//!   *orphan*: its remover was killed after taking the claim and before
//!   removing the lock path. Its taken name (still there: it is removed
//!   last) names the remover's machine and PID. When the lock's owner is
//!   judged stale and the remover is a process of this machine that no
//!   longer runs, a contender takes the taken name over by the same
//!   exclusive `rename` and goes on as in point 3; nobody else can be
//!   between its claim and the lock path, because that would need the
//!   taken name too (or a live remover, whose taken name makes everyone
//!   wait). An orphan without a taken name (a cleaner removed the hidden
//!   files) or whose remover is on another machine is never broken
//!   automatically; [`LockFile::break_lock`] reports it as not stale and
//!   [`LockFile::force_break`] recovers it by making a new claim with
//!   `link()` (run one forced break at a time).
//! * Processes killed while waiting can leave `Link` claims that were never
//!   linked, and removers killed after removing the lock path their taken
//!   names. Tokens begin with their maker's machine tag and PID, so a
//!   break (automatic or not) removes those of dead processes of this
//!   machine, even empty ones; other machines' files are left alone.
//! * A lease is a promise about time. A holder paused past its lease loses
//!   the lock, finds out through [`LockFile::ensure_held`], the `on_lost`
//!   callback and [`Error::LockLost`] from `release`, and never removes its
//!   successor's lock (its claim is gone). What it did between losing the
//!   lock and finding out is not undone: protect shared resources with the
//!   record's token where that matters.
//! * Liveness trusts the process table: where `/proc` hides other users'
//!   processes (`hidepid`), their live locks look dead. Use leases there.
//!
//! [`Liveness::Dead`]: crate::Liveness::Dead
//! [`Liveness::Unknown`]: crate::Liveness::Unknown
//! [`LockFile::ensure_held`]: crate::LockFile::ensure_held
//! [`LockFile::break_lock`]: crate::LockFile::break_lock
//! [`LockFile::force_break`]: crate::LockFile::force_break
//! [`Error::LockLost`]: crate::Error::LockLost

use std::time::{Duration, Instant};

use crate::owner::Liveness;
use crate::strategy::{Claim, Seen};

/// The grace period for lock artifacts without a readable record, unless
/// [`LockOptions::grace`](crate::LockOptions::grace) says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Why a lock was judged stale, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its owner is dead.
    Dead,
    /// Its lease went unrefreshed for the whole lease.
    LeaseExpired,
    /// No readable record, unchanged for the grace period.
    NoRecord,
    /// A `Link` lock file whose claim a remover took: its owner has lost
    /// it; it is removed by taking over the taken name of a remover that
    /// is proved gone.
    Orphaned,
    /// Not stale now; the reason, for `NotStale` errors.
    Live(&'static str),
    /// Not stale yet: it becomes stale if it stays unchanged for this long
    /// (a lease or the grace period), counted from the first look.
    Pending(Duration),
}

impl Verdict {
    pub(crate) fn is_stale(self) -> bool {
        matches!(
            self,
            Verdict::Dead | Verdict::LeaseExpired | Verdict::NoRecord | Verdict::Orphaned
        )
    }
}

/// Judges `seen`, unchanged since `unchanged_for` on this process's clock.
/// `local`: the lock lives on a file system only this machine writes to.
pub(crate) fn judge(seen: &Seen, unchanged_for: Duration, grace: Duration, local: bool) -> Verdict {
    if seen.claim == Claim::Os {
        return Verdict::Live("an OS lock is released by the kernel when its holder exits");
    }
    if let Some(opaque) = seen.opaque {
        return Verdict::Live(opaque.reason());
    }
    if let Claim::Strategy(_) = seen.claim {
        return Verdict::Live("the lock was taken with another strategy");
    }
    if matches!(seen.claim, Claim::Foreign | Claim::Unreadable) {
        return Verdict::Live("the lock artifact is not one portalock can identify as its own");
    }
    if seen.orphaned {
        // Whoever owns it has lost it already (its claim is taken); the
        // break goes on only through a remover proved gone.
        return Verdict::Orphaned;
    }
    let Some(record) = &seen.record else {
        if matches!(seen.claim, Claim::Link { .. }) {
            return Verdict::Live("a link lock always has a record");
        }
        return expiring(unchanged_for, grace, Verdict::NoRecord);
    };
    match record.liveness_here(local) {
        Liveness::Dead => Verdict::Dead,
        liveness => match record.lease() {
            Some(lease) => expiring(unchanged_for, lease, Verdict::LeaseExpired),
            None if liveness == Liveness::Alive => Verdict::Live("its owner is alive"),
            None => Verdict::Live("its owner is on another host and keeps no lease"),
        },
    }
}

fn expiring(unchanged_for: Duration, limit: Duration, stale: Verdict) -> Verdict {
    if unchanged_for >= limit {
        stale
    } else {
        Verdict::Pending(limit - unchanged_for)
    }
}

/// A contender's memory of what it saw at the lock path, and since when
/// (its own monotonic clock).
#[derive(Debug, Default)]
pub(crate) struct Watch {
    last: Option<(Vec<u8>, Instant)>,
}

impl Watch {
    /// Records a look; returns how long the artifact has been seen
    /// unchanged (zero on the first look and after any change).
    pub(crate) fn observe(&mut self, seen: &Seen) -> Duration {
        let now = Instant::now();
        match &self.last {
            Some((stamp, since)) if *stamp == seen.stamp => now.duration_since(*since),
            _ => {
                self.last = Some((seen.stamp.clone(), now));
                Duration::ZERO
            }
        }
    }
}
