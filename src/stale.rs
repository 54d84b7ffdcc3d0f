//! Stale locks: when a lock may be broken, and how breaking stays safe when
//! many processes try at once.
//!
//! # When a lock is stale
//!
//! A contender judges what it sees at the lock path:
//!
//! * **A dead owner.** The record names this host, this boot and this PID
//!   namespace, and neither its process nor the command it took the lock
//!   for runs: no process has the PID (`kill(pid, 0)` answers `ESRCH`), or
//!   only a zombie, or one with another start stamp (the PID was reused)
//!   ([`Liveness::Dead`]). Stale at once. A look that fails (no file
//!   descriptor left, `/proc` hidden or unreadable) proves nothing: the
//!   owner is then alive or unknown, never dead.
//! * **An owner of an earlier boot of this machine**, on a file system only
//!   this machine writes to (a local disk): same host name and machine id,
//!   another Linux boot id. Every process of that boot has ended. On a
//!   network file system such a record could be a clone's (a copied VM
//!   keeps its host name and machine id), alive: there it is unknown.
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
//! * **An orphan** (`Link`): the lock file's claim was taken by a remover
//!   (see below) that has not removed the lock path; if that remover is
//!   proved gone, a contender finishes its removal, whoever the owner was
//!   (its owner lost the lock the moment its claim was taken).
//!
//! Never stale, whatever else: an owner of another host, boot or PID
//! namespace ([`Liveness::Unknown`]) without a lease; a record that exists
//! but cannot be read (another user's, a umask of `077`) or is of another
//! format version (a newer portalock's); an artifact of another strategy
//! (a `Link` lock file seen by an `Os` handle, and so on: refused with
//! [`Error::StrategyMismatch`]); and `Os` locks, which the kernel releases
//! when their holder dies. Only a forced break removes the first three.
//!
//! # What a clock step can and cannot do
//!
//! A process's start stamp never depends on the wall clock (see the
//! [owner record](crate::OwnerRecord) docs: clock ticks since boot on
//! Linux, the creation time the kernel stored elsewhere), and leases and
//! grace periods are measured on each contender's monotonic clock. So a
//! step of the wall clock (NTP, `date -s`, a VM resynchronised), either way
//! and of any size, never makes a live owner dead and never expires a
//! lease early. On Linux it changes only what a record's `acquired_at`
//! says. On macOS, the BSDs and Windows the boot is told by the boot time,
//! which moves with a step: records written before a step of more than two
//! seconds then read as another boot's, whose owners are unknown (never
//! dead) until they release. A step can never make two holders.
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
//! * `Link`: the claim is the private file `.<stem>.<token>.owner` that the
//!   holder linked onto the lock path and keeps while it holds the lock.
//!   It is taken by a `rename` to a name of the taker's own
//!   (`<claim>.taken.<machine>.<boot>.<pid>.<start>.<nonce>`; a rename,
//!   because on Windows a second delete of a delete-pending file can
//!   succeed). The winner then removes the lock path if the file there
//!   still holds the claim's token, and its taken name last.
//!
//! Why this is safe (the test that checks each claim in brackets):
//!
//! 1. `unlink` (`rename`) of one name succeeds for exactly one caller. Two
//!    breakers of one stale lock (or a breaker and a holder that wakes up
//!    to release) cannot both go on: the loser sees `ENOENT` and looks
//!    again. (On NFS, a rename whose reply was lost is answered `ENOENT`
//!    when it is sent again: the taker's own taken name, which exists only
//!    if the rename happened, settles it.)
//!    (tests: `sixteen_processes_race_to_break_one_stale_lock`, the fault matrix's
//!    `link.remove.take` and `mkdir.remove.record` rows)
//! 2. A fresh lock has a fresh token, hence a claim of another name. A
//!    breaker holding an old judgment can only ever remove the old claim,
//!    which no longer exists: it cannot touch the fresh lock. Nothing is
//!    ever decided by an inode number: ext4 hands a freed inode out again at
//!    once, so the next holder's lock file may well have the number of the
//!    one that was judged. A forced break removes only the acquisition it
//!    looked at first; if that one goes away meanwhile, it stops.
//!    (tests: `a_forced_break_never_removes_a_newer_lock_in_a_reused_inode`, the
//!    fault matrix's turnover while a breaker or forcer is stopped)
//! 3. Between winning the claim and removing the lock path, nobody else can
//!    remove the path: that needs the claim, and creating a lock needs the
//!    path to be absent. So the path still names the judged lock. (`Mkdir`:
//!    `rmdir` could only fail, never remove a non-empty directory; `Link`:
//!    the token is compared anyway, in case something outside portalock
//!    replaced the lock file.) (tests: the fault matrix's `link.remove.check` and
//!    `link.remove.unlink` rows, every role)
//! 4. A `Mkdir` directory without a record is removed only by `rmdir`,
//!    which fails as soon as a record is in it. That `rmdir` acts on an
//!    earlier look, so it may remove a directory another acquirer has just
//!    made and not yet written to. Every acquirer therefore checks, after
//!    writing its record, that the directory is still the one it made and
//!    that its record is the only entry; otherwise it removes its own
//!    record, by its own name, and counts the lock as busy. Two acquirers
//!    that meet in one directory both withdraw, which is safe (the empty
//!    directory is broken after the grace period). (tests: the fault matrix's
//!    `mkdir.acquire.*` and `mkdir.break_empty.rmdir` rows)
//! 5. A taken name is taken over only from a remover proved gone: of this
//!    machine, boot and PID namespace, with its PID absent or reused (the
//!    name carries its start stamp), or of an earlier boot of this machine
//!    on a file system it alone writes to. A remover that may still run is
//!    left to finish; one that cannot be judged (another machine) is left
//!    too, even by a forced break: a forced break makes a new claim only
//!    where no taken name exists, so there is never a second remover of
//!    one path. Two recoverers race for a taken name by the same exclusive
//!    rename as in point 1. A remover that could neither finish nor put
//!    the claim back keeps its taken name, and its release is retried from
//!    it. (tests: `an_orphan_whose_taker_died_is_recovered`,
//!    `a_forced_break_never_competes_with_a_remover_it_cannot_judge`,
//!    the fault matrix's `stranded-release` row,
//!    `an_orphan_whose_taker_runs_is_left_to_it`,
//!    `an_orphan_whose_taker_ran_in_an_earlier_boot_is_recovered_on_a_local_disk`,
//!    the fault matrix's `link.recover.take_over` row)
//!
//! # Handing a lock to a command
//!
//! [`LockFile::spawn`] (and `portalock run`) makes a lock last as long as
//! the command it runs, even if the holder is killed:
//!
//! 1. The command's record entry is written before the command runs: the
//!    child waits between its fork and its exec until the holder has
//!    rewritten the record to name it (an exec keeps the PID and the start
//!    stamp), so no moment exists at which the command runs under a record
//!    that names only a process that may die. (tests: the fault matrix's
//!    `spawn.gate` rows)
//! 2. If the holder dies before it opened the gate, the child sees the
//!    gate's pipe close and exits without running the command: the lock is
//!    then stale as soon as both have ended. (tests: the fault matrix's
//!    `spawn.gate` and `spawn.named` rows, outcome `kill`)
//! 3. Liveness counts the lock alive while the holder or the command runs
//!    (for `Os`, the command also holds the locked open file, so the kernel
//!    keeps the lock). (tests: `a_killed_run_keeps_the_lock_while_its_command_runs`)
//!
//! # What remains, documented rather than hidden
//!
//! * An orphan without a taken name (a cleaner removed the hidden files) is
//!   never broken automatically; [`LockFile::break_lock`] reports it as not
//!   stale and [`LockFile::force_break`] recovers it by making a new claim
//!   with `link()` (run one forced break at a time). An orphan whose
//!   remover is of another machine may still be being removed by it:
//!   nothing removes it, not even a forced break (two removers of one path
//!   could unlink a new holder's lock), until an operator who knows that
//!   remover stopped deletes its taken name.
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
//! * Liveness trusts the kernel: a process hidden from this user (`hidepid`)
//!   still answers `kill(pid, 0)` with `EPERM`, so its live lock looks alive
//!   (its start stamp cannot be read, so a reused PID looks alive too, until
//!   it exits: use leases where that matters).
//! * The earlier-boot rule assumes machine ids are unique per machine (as
//!   systemd requires); it applies only on a file system that only this
//!   machine writes to.
//!
//! [`Liveness::Dead`]: crate::Liveness::Dead
//! [`Liveness::Unknown`]: crate::Liveness::Unknown
//! [`LockFile::spawn`]: crate::LockFile::spawn
//! [`LockFile::ensure_held`]: crate::LockFile::ensure_held
//! [`LockFile::break_lock`]: crate::LockFile::break_lock
//! [`LockFile::force_break`]: crate::LockFile::force_break
//! [`Error::LockLost`]: crate::Error::LockLost
//! [`Error::StrategyMismatch`]: crate::Error::StrategyMismatch

use std::time::{Duration, Instant};

use crate::owner::Liveness;
use crate::strategy::{Claim, Seen};
use crate::vocab::Writers;

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
    /// Why a stale lock is stale, for the log line of its break.
    pub(crate) fn why(self) -> &'static str {
        match self {
            Verdict::Dead => "its owner has exited",
            Verdict::LeaseExpired => "its lease ran out unrefreshed",
            Verdict::NoRecord => "it had no readable owner record for the grace period",
            Verdict::Orphaned => "its owner had lost it to a remover that died",
            Verdict::Live(why) => why,
            Verdict::Pending(_) => "not stale yet",
        }
    }

    pub(crate) fn is_stale(self) -> bool {
        matches!(
            self,
            Verdict::Dead | Verdict::LeaseExpired | Verdict::NoRecord | Verdict::Orphaned
        )
    }
}

/// Judges `seen`, unchanged since `unchanged_for` on this process's clock.
/// `writers`: which machines write to the lock's directory.
pub(crate) fn judge(
    seen: &Seen,
    unchanged_for: Duration,
    grace: Duration,
    writers: Writers,
) -> Verdict {
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
    match record.liveness_here(writers) {
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

/// A contender's memory of what it last saw at the lock path, and since when
/// (its own monotonic clock).
#[derive(Debug, Default)]
pub(crate) struct LastSeen {
    last: Option<(Vec<u8>, Instant)>,
}

impl LastSeen {
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
