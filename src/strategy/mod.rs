//! Lock strategies: how the lock is taken in the file system.
//!
//! Each strategy module exports the same three functions:
//! `try_acquire(path, record, block) -> Result<Option<Held>>`,
//! `release(path, held) -> Result<()>` and `probe(path) -> Result<Probe>`.
//! This module dispatches on [`LockStrategy`].

use std::fmt;
use std::str::FromStr;

use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::owner::OwnerRecord;

mod link;
mod mkdir;
mod os;

/// How a [`LockFile`](crate::LockFile) takes its lock.
///
/// | strategy | atomic primitive | released by a crash? | safe on |
/// | --- | --- | --- | --- |
/// | [`Os`](LockStrategy::Os) | advisory lock on an open file (`flock`, `LockFileEx`) | yes, by the kernel | local file systems |
/// | [`Mkdir`](LockStrategy::Mkdir) | `mkdir` of a directory that must not exist | no | everywhere, network file systems included |
/// | [`Link`](LockStrategy::Link) | `link()` of a fully written private file onto the lock path | no | Unix and NTFS, network file systems included |
///
/// The default is [`Os`](LockStrategy::Os).
///
/// # Examples
///
/// ```
/// use portalock::LockStrategy;
///
/// let s: LockStrategy = "mkdir".parse()?;
/// assert_eq!(s, LockStrategy::Mkdir);
/// assert_eq!(s.to_string(), "mkdir");
/// # Ok::<(), portalock::ParseStrategyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LockStrategy {
    /// An advisory lock on an open file, through `fd-lock` (`flock` on Unix,
    /// `LockFileEx` on Windows). The kernel releases it when the holder
    /// dies. It does not exclude processes on other clients of a network
    /// file system. The lock file stays in place after release and holds
    /// the owner record while the lock is held.
    #[default]
    Os,
    /// An atomic `mkdir` of the lock path. Works on every file system,
    /// network ones included. The owner record is `owner.json` inside the
    /// directory; release removes both.
    Mkdir,
    /// An atomic `link()` of a fully written private file onto the lock
    /// path. Works on Unix file systems with hard links, network ones
    /// included. The lock file is the owner record; release removes it.
    Link,
}

impl LockStrategy {
    /// Every strategy, in declaration order.
    pub const ALL: [LockStrategy; 3] = [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link];

    /// The lower-case name used in owner records and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LockStrategy::Os => "os",
            LockStrategy::Mkdir => "mkdir",
            LockStrategy::Link => "link",
        }
    }
}

impl fmt::Display for LockStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`LockStrategy`] from a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock strategy `{0}` (expected os, mkdir or link)")]
pub struct ParseStrategyError(String);

impl FromStr for LockStrategy {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockStrategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseStrategyError(s.to_owned()))
    }
}

/// Proof that a strategy holds a lock, kept by the handle until release.
#[derive(Debug)]
pub(crate) enum Held {
    Os(os::Held),
    Mkdir(mkdir::Held),
    Link(link::Held),
}

impl Held {
    /// The token of the owner record this acquisition wrote.
    pub(crate) fn token(&self) -> &str {
        match self {
            Held::Os(h) => &h.token,
            Held::Mkdir(h) => &h.token,
            Held::Link(h) => &h.token,
        }
    }
}

/// What a look at a lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Nobody holds it.
    Free,
    /// Somebody holds it; their record, when readable.
    Held(Option<OwnerRecord>),
}

/// One attempt at taking the lock; `Ok(None)` when someone else holds it.
/// With `block`, strategies that can sleep in the kernel until the lock is
/// free (`Os`) do so instead of returning `None`.
pub(crate) fn try_acquire(
    strategy: LockStrategy,
    path: &Utf8Path,
    record: &OwnerRecord,
    block: bool,
) -> Result<Option<Held>> {
    Ok(match strategy {
        LockStrategy::Os => os::try_acquire(path, record, block)?.map(Held::Os),
        LockStrategy::Mkdir => mkdir::try_acquire(path, record)?.map(Held::Mkdir),
        LockStrategy::Link => link::try_acquire(path, record)?.map(Held::Link),
    })
}

/// Releases a lock this process holds, if it still carries its token.
pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<()> {
    match held {
        Held::Os(h) => os::release(path, h),
        Held::Mkdir(h) => mkdir::release(path, h),
        Held::Link(h) => link::release(path, h),
    }
}

/// Looks at the lock without taking it.
pub(crate) fn probe(strategy: LockStrategy, path: &Utf8Path) -> Result<Probe> {
    match strategy {
        LockStrategy::Os => os::probe(path),
        LockStrategy::Mkdir => mkdir::probe(path),
        LockStrategy::Link => link::probe(path),
    }
}

/// Whether `try_acquire` can block in the kernel for `strategy`.
pub(crate) fn can_block(strategy: LockStrategy) -> bool {
    strategy == LockStrategy::Os
}

/// The `LockLost` error for `path`, naming whoever holds it now.
pub(crate) fn lost(path: &Utf8Path, holder: Option<OwnerRecord>) -> crate::Error {
    crate::Error::LockLost {
        path: path.to_owned(),
        holder: holder.map(Box::new),
    }
}
