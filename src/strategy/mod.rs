//! Lock strategies: how the lock is taken in the file system.
//!
//! Each strategy module exports `try_acquire`, `release`, `check` (is the
//! lock still ours?), `probe` (who holds it, and how it could be broken)
//! and, for the strategies whose artifacts outlive their holder, the break
//! functions. This module dispatches on [`LockStrategy`].

use std::io;

use camino::Utf8Path;

use crate::error::{Error, Op, Result};
use crate::filesystem::FileSystem;
use crate::owner::OwnerRecord;
use crate::sys::Wait;
use crate::vocab::{Breaking, Concrete, LockStrategy, Mechanism, Writers};

mod link;
mod mkdir;

pub(crate) use link::private_prefix;
pub(crate) use link::Kept as KeptClaim;
pub(crate) use link::LONGEST_NAME as LONGEST_LINK_NAME;
pub(crate) mod os;

impl Concrete {
    /// `strategy` for a lock in `dir`; the file system is looked at only
    /// for `Auto`.
    pub(crate) fn resolve(strategy: LockStrategy, fs: &FileSystem) -> Concrete {
        match strategy.resolve(fs) {
            LockStrategy::Mkdir => Concrete::Mkdir,
            LockStrategy::Link => Concrete::Link,
            LockStrategy::Os | LockStrategy::Auto => Concrete::Os,
        }
    }
}

/// The owner record in the regular file at `path` (opened without following
/// a link or waiting on a FIFO), if it holds a readable one.
pub(crate) fn record_at(path: &Utf8Path) -> Option<OwnerRecord> {
    crate::files::open_read(path)
        .and_then(crate::owner::read_capped)
        .ok()
        .and_then(|b| OwnerRecord::parse(&b))
}

/// Proof that a strategy holds a lock, kept by the handle until release.
#[derive(Debug)]
pub(crate) enum Hold {
    Os(os::OsHold),
    Mkdir(mkdir::MkdirHold),
    Link(link::LinkHold),
}

impl Hold {
    /// A copy to keep while releasing, so that a release that fails
    /// before changing anything can leave the lock held (and retried).
    /// `None` for `Os`, whose release always unlocks.
    pub(crate) fn retry_copy(&self) -> Option<Hold> {
        match self {
            Hold::Os(_) => None,
            Hold::Mkdir(h) => Some(Hold::Mkdir(h.clone())),
            Hold::Link(h) => Some(Hold::Link(h.clone())),
        }
    }

    /// The open lock file of an `Os` lock (which holds the lock).
    pub(crate) fn os_file(&self) -> Option<std::sync::Arc<std::fs::File>> {
        match self {
            Hold::Os(h) => Some(std::sync::Arc::clone(&h.file)),
            Hold::Mkdir(_) | Hold::Link(_) => None,
        }
    }

    /// The token of the owner record this acquisition wrote.
    pub(crate) fn token(&self) -> &str {
        match self {
            Hold::Os(h) => &h.token,
            Hold::Mkdir(h) => &h.token,
            Hold::Link(h) => &h.token,
        }
    }

    /// Rewrites this holder's own record in place (a lease refresh): `Os`
    /// through the locked file, `Mkdir` and `Link` through the record's
    /// private name (`<token>.json`, `.<name>.<token>.owner`), opened
    /// anew each time. Those names belong to this acquisition alone, so
    /// the write can never land in another holder's artifact; once the
    /// lock is broken they are gone and the write fails.
    ///
    /// `Mkdir` and `Link` holders keep no file open while they hold the
    /// lock: on FUSE and NFS clients, unlinking a file that is (or was just)
    /// open leaves a hidden rename behind (`.fuse_hidden*`, `.nfs*`).
    pub(crate) fn rewrite_record(
        &self,
        path: &Utf8Path,
        bytes: &[u8],
        old_len: usize,
    ) -> io::Result<()> {
        match self {
            Hold::Os(h) => crate::files::rewrite(&h.file, bytes, old_len),
            Hold::Mkdir(h) => crate::fault::step("mkdir.refresh.write", || {
                let file = crate::files::open_write(&mkdir::record_path(path, &h.token))?;
                crate::files::rewrite(&file, bytes, old_len)
            }),
            Hold::Link(h) => crate::fault::step("link.refresh.write", || {
                let file = crate::files::open_write(h.claim())?;
                crate::files::rewrite(&file, bytes, old_len)
            }),
        }
    }

    /// Whether the lock at `path` is still this acquisition's: its artifact
    /// was neither broken nor replaced.
    ///
    /// A stale file handle that outlasts the retries (`files::stale_retry`)
    /// means the server no longer has what this acquisition made (its lock
    /// file or directory, or the directory around them, was removed or
    /// replaced there): not ours any more.
    pub(crate) fn check(&self, path: &Utf8Path) -> io::Result<bool> {
        let checked = match self {
            Hold::Os(h) => os::check(path, h),
            Hold::Mkdir(h) => mkdir::check(path, h),
            Hold::Link(h) => link::check(path, h),
        };
        match checked {
            Err(e) if e.kind() == io::ErrorKind::StaleNetworkFileHandle => Ok(false),
            other => other,
        }
    }
}

/// What a look at a held lock saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The holder's record, when readable.
    pub(crate) record: Option<OwnerRecord>,
    /// Why there is a record that cannot be judged, if there is one.
    pub(crate) opaque: Option<Opaque>,
    /// How exactly this artifact can be broken, if at all.
    pub(crate) claim: Claim,
    /// A `Link` lock file whose claim is missing: its remover took the
    /// claim and has not (yet) removed the lock path.
    pub(crate) orphaned: bool,
    /// Changes whenever the artifact or its record changes (a lease
    /// refresh, a new holder): a contender's clock restarts on any change.
    pub(crate) stamp: Vec<u8>,
}

impl Seen {
    /// A look at an artifact whose record could be read (or not), with
    /// nothing unusual about it.
    pub(crate) fn new(record: Option<OwnerRecord>, claim: Claim, stamp: Vec<u8>) -> Seen {
        Seen {
            record,
            opaque: None,
            claim,
            orphaned: false,
            stamp,
        }
    }
}

/// A record that exists but cannot be judged: its owner is unknown, and
/// the lock is never broken as stale (a missing record, by contrast, is a
/// holder that crashed before writing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opaque {
    /// This process may not read it (another user's, or a umask of 077).
    Unreadable,
    /// A record of another format version.
    Version(u64),
}

impl Opaque {
    /// Why such a lock is not stale.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Opaque::Unreadable => "its owner record cannot be read by this process",
            Opaque::Version(_) => {
                "its owner record is of another format version, which this version cannot judge"
            }
        }
    }
}

/// The handle by which a breaker removes one particular artifact and never
/// another (see the `stale` module for the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// An `Os` lock: only the kernel releases it.
    Os,
    /// A `Mkdir` lock whose record file is named after `token`.
    Mkdir { token: String },
    /// A `Mkdir` directory without any record: a holder that crashed
    /// between `mkdir` and writing its record, or one about to write it.
    MkdirEmpty,
    /// A `Link` lock file with the record of `token`.
    Link { token: String },
    /// An artifact of another strategy than the looker's: never broken by
    /// this one.
    Strategy(Mechanism),
    /// An artifact that this process may not read.
    Unreadable,
    /// Something portalock cannot identify as its own.
    Foreign,
}

/// What a look at a lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Nobody holds it.
    Free,
    /// Somebody holds it.
    Held(Box<Seen>),
}

impl Probe {
    /// The holder's record, if held and readable.
    pub(crate) fn into_record(self) -> Option<OwnerRecord> {
        match self {
            Probe::Free => None,
            Probe::Held(seen) => seen.record,
        }
    }
}

/// How a break attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// This caller removed the artifact it had judged.
    Removed,
    /// The artifact changed or someone else is removing it: look again.
    Raced,
    /// The artifact lacks the claim that would let it be removed safely
    /// (a `Link` lock whose private name and taken name both vanished);
    /// only a forced break recovers it.
    Orphan,
    /// A `Link` lock whose claim a remover took that cannot be judged (of
    /// another machine or PID namespace): it may still be removing the
    /// lock, so nothing else may. An operator who knows it stopped removes
    /// its taken name, after which a forced break recovers the lock.
    Unjudged,
}

/// One attempt at taking the lock; `Ok(None)` when someone else holds it.
/// With `Wait::Block`, strategies that can sleep in the kernel until the
/// lock is free (`Os`) do so instead of returning `None`. With `how.sync`, the record
/// and the directory entries are flushed to stable storage (`fsync`) before
/// the lock counts as taken, and again when it is released. With `how.remove`,
/// an `Os` lock file is removed on release (`Mkdir` and `Link` artifacts
/// always are). `cached` is the handle's open `Os` lock file, if any;
/// `kept`, a `Link` wait's claim from its last try (see [`KeptClaim`]).
pub(crate) fn try_acquire(
    strategy: Concrete,
    path: &Utf8Path,
    record: &OwnerRecord,
    wait: Wait,
    how: os::How,
    cached: &mut Option<os::Open>,
    kept: &mut Option<KeptClaim>,
) -> Result<Option<Hold>> {
    let sync = how.sync;
    Ok(match strategy {
        Concrete::Os => os::try_acquire(path, record, wait, how, cached)?.map(Hold::Os),
        Concrete::Mkdir => {
            mkdir::try_acquire(path, record, sync, how.look, how.mode)?.map(Hold::Mkdir)
        }
        Concrete::Link => {
            link::try_acquire(path, record, sync, how.look, how.mode, kept)?.map(Hold::Link)
        }
    })
}

/// How a release ended.
#[derive(Debug)]
// Returned once per release.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Released {
    /// The lock was this acquisition's and is released.
    Done,
    /// The lock was lost (broken or replaced); nothing was touched. The
    /// record found in its place, when the strategy saw one.
    Lost(Option<Option<OwnerRecord>>),
}

/// Releases a lock this process holds, if it is still this acquisition's.
/// An `Os` lock file stays open in `cached` for the handle's next
/// acquisition.
pub(crate) fn release(
    path: &Utf8Path,
    held: Hold,
    cached: &mut Option<os::Open>,
) -> Result<Released> {
    match held {
        Hold::Os(h) => os::release(path, h, cached),
        Hold::Mkdir(h) => mkdir::release(path, h),
        Hold::Link(h) => link::release(path, h),
    }
}

/// Looks at the lock without taking it.
pub(crate) fn probe(strategy: Concrete, path: &Utf8Path) -> Result<Probe> {
    match strategy {
        Concrete::Os => os::probe(path),
        Concrete::Mkdir => mkdir::probe(path),
        Concrete::Link => link::probe(path),
    }
}

/// Removes the artifact that `claim` names, and no other. When
/// `Breaking::Forced`, a `Link` lock whose claim is missing and cannot be
/// recovered through a dead remover gets a new claim (see
/// `link::break_link`). `writers`: which machines write to the lock's
/// directory.
pub(crate) fn break_claim(
    strategy: Concrete,
    path: &Utf8Path,
    seen: &Seen,
    breaking: Breaking,
    writers: Writers,
) -> Result<Broken> {
    match &seen.claim {
        Claim::Mkdir { token } => mkdir::break_record(path, token),
        Claim::MkdirEmpty => mkdir::break_empty(path),
        Claim::Link { token } => link::break_link(path, token, breaking, writers),
        Claim::Os => Err(Error::Unsupported {
            path: path.to_owned(),
            strategy: LockStrategy::Os,
            reason: "an OS lock held by a process cannot be broken; the kernel releases it \
                     when that process exits"
                .to_owned(),
        }),
        Claim::Strategy(found) => Err(Error::StrategyMismatch {
            path: path.to_owned(),
            strategy: strategy.into(),
            found: *found,
            holder: seen.record.clone().map(Box::new),
        }),
        Claim::Unreadable => Err(Error::io(
            path,
            Op::ReadRecord,
            io::ErrorKind::PermissionDenied.into(),
        )),
        Claim::Foreign => Err(Error::Foreign {
            path: path.to_owned(),
        }),
    }
}

/// Removes what killed processes of this machine left beside the lock
/// (`Link`'s claims and taken names); nothing for the other strategies,
/// whose leftovers are inside the lock artifact itself.
pub(crate) fn sweep(strategy: Concrete, path: &Utf8Path, writers: Writers) {
    if strategy == Concrete::Link {
        link::sweep(path, writers);
    }
}

/// Whether `try_acquire` can block in the kernel for `strategy`.
pub(crate) fn can_block(strategy: Concrete) -> bool {
    strategy == Concrete::Os
}
