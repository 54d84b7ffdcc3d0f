//! The crate's shared vocabulary: the lock strategies and the kinds of file
//! system object. It depends on nothing else in the crate, so that every
//! other module can use it (and be read after it).
//!
//! The rules that pick and resolve a strategy live with the file systems
//! ([`FileSystem`](crate::FileSystem)); the protocols live in `strategy`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a [`LockFile`](crate::LockFile) takes its lock.
///
/// | strategy | takes the lock with | a crashed holder's lock | safe on |
/// | --- | --- | --- | --- |
/// | [`Auto`](LockStrategy::Auto) (default) | one of the three below, chosen when the handle is opened | | every file system |
/// | [`Os`](LockStrategy::Os) | `flock` / `LockFileEx` on an open file | released by the kernel | local file systems |
/// | [`Mkdir`](LockStrategy::Mkdir) | an atomic `mkdir` of the lock path | stays, naming the dead owner, until broken | every file system, network ones included |
/// | [`Link`](LockStrategy::Link) | an atomic `link()` of a fully written private file onto the lock path | stays, naming the dead owner, until broken | file systems with hard links, NFS and sshfs included |
///
/// The default is [`Auto`](LockStrategy::Auto): `Os` on a local file
/// system, `Link` or `Mkdir` on a network or FUSE one (see
/// [`FileSystem`](crate::FileSystem) for the rules).
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
    /// dies. The lock file stays in place after release and holds the owner
    /// record while the lock is held.
    ///
    /// On file systems where such locks do not reach other clients (sshfs
    /// and other FUSE mounts, NFS mounted `nolock`, ...) opening a handle
    /// with this strategy fails with
    /// [`Error::OsLocksNotShared`](crate::Error::OsLocksNotShared) unless
    /// [`LockOptions::trust_os_locks`](crate::LockOptions::trust_os_locks)
    /// is set.
    Os,
    /// An atomic `mkdir` of the lock path. Works on every file system,
    /// network ones included. The owner record is a file inside the
    /// directory named after the record's token (`<token>.json`); release
    /// removes both.
    Mkdir,
    /// An atomic `link()` of a fully written private file onto the lock
    /// path. Works on Unix file systems with hard links, network ones
    /// included. The lock file is the owner record; the private file stays
    /// beside it (`.<name>.<token>.owner`) while the lock is held, as the
    /// claim that release and break remove first. Release removes both.
    Link,
    /// Chosen per lock when its handle is opened, from the file system
    /// that holds the lock's directory ([`FileSystem::auto_strategy`]):
    /// `Os` on a local file system, `Link` on network file systems that
    /// make hard links (NFS, ...), `Mkdir` on the others (SMB shares,
    /// FUSE mounts such as sshfs). [`LockFile::strategy`] reports the choice;
    /// owner records name it, never `auto`.
    ///
    /// Every process that takes one lock must end up with the same
    /// strategy. Processes on an NFS server that lock its exported
    /// directory directly see a local file system and would pick `Os`
    /// where its clients pick `Link`: name the strategy explicitly there.
    ///
    /// [`FileSystem::auto_strategy`]: crate::FileSystem::auto_strategy
    /// [`LockFile::strategy`]: crate::LockFile::strategy
    #[default]
    Auto,
}

impl LockStrategy {
    /// Every strategy that takes a lock itself ([`Auto`](LockStrategy::Auto)
    /// resolves to one of these), in declaration order.
    pub const ALL: [LockStrategy; 3] = [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link];

    /// The lower-case name used in owner records and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LockStrategy::Os => "os",
            LockStrategy::Mkdir => "mkdir",
            LockStrategy::Link => "link",
            LockStrategy::Auto => "auto",
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
#[error("unknown lock strategy `{0}` (expected auto, os, mkdir or link)")]
pub struct ParseStrategyError(String);

impl FromStr for LockStrategy {
    type Err = ParseStrategyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockStrategy::ALL
            .into_iter()
            .chain([LockStrategy::Auto])
            .find(|strategy| strategy.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseStrategyError(s.to_owned()))
    }
}

/// A strategy that takes a lock itself: a [`LockStrategy`] with `Auto`
/// resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Concrete {
    Os,
    Mkdir,
    Link,
}

impl Concrete {
    /// A strategy that needs no file system to resolve.
    pub(crate) fn explicit(strategy: LockStrategy) -> Option<Concrete> {
        match strategy {
            LockStrategy::Os => Some(Concrete::Os),
            LockStrategy::Mkdir => Some(Concrete::Mkdir),
            LockStrategy::Link => Some(Concrete::Link),
            LockStrategy::Auto => None,
        }
    }
}

impl From<Concrete> for LockStrategy {
    fn from(c: Concrete) -> LockStrategy {
        match c {
            Concrete::Os => LockStrategy::Os,
            Concrete::Mkdir => LockStrategy::Mkdir,
            Concrete::Link => LockStrategy::Link,
        }
    }
}

/// What took a lock, as its owner record names it: one of the strategies
/// of a [`LockFile`](crate::LockFile), or a lock server. Written in
/// records as its lower-case name (the record's `strategy` field).
///
/// It compares equal to the [`LockStrategy`] of the same name, so that a
/// record can be checked against a handle's strategy.
///
/// # Examples
///
/// ```
/// use portalock::{LockFile, LockStrategy, Mechanism};
///
/// let dir = tempfile::tempdir()?;
/// let lock = LockFile::with_strategy(dir.path().join("x.lock"), LockStrategy::Link)?;
/// let _guard = lock.lock()?;
/// let owner = lock.owner()?.expect("a record");
/// assert_eq!(owner.strategy, Mechanism::Link);
/// assert_eq!(owner.strategy, LockStrategy::Link);
/// assert_eq!(owner.strategy.file_strategy(), Some(LockStrategy::Link));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mechanism {
    /// [`LockStrategy::Os`].
    Os,
    /// [`LockStrategy::Mkdir`].
    Mkdir,
    /// [`LockStrategy::Link`].
    Link,
    /// A [`RedisLock`](crate::RedisLock) (feature `redis`): a key in a
    /// Redis server, not a file.
    Redis,
    /// An [`EtcdLock`](crate::EtcdLock) (feature `etcd`): a key in an etcd
    /// cluster, not a file.
    Etcd,
}

impl Mechanism {
    /// The lower-case name used in owner records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Os => "os",
            Mechanism::Mkdir => "mkdir",
            Mechanism::Link => "link",
            Mechanism::Redis => "redis",
            Mechanism::Etcd => "etcd",
        }
    }

    /// The strategy of a [`LockFile`](crate::LockFile) that takes such a
    /// lock; `None` for a lock server.
    pub fn file_strategy(self) -> Option<LockStrategy> {
        match self {
            Mechanism::Os => Some(LockStrategy::Os),
            Mechanism::Mkdir => Some(LockStrategy::Mkdir),
            Mechanism::Link => Some(LockStrategy::Link),
            Mechanism::Redis | Mechanism::Etcd => None,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<LockStrategy> for Mechanism {
    fn eq(&self, other: &LockStrategy) -> bool {
        self.file_strategy() == Some(*other)
    }
}

impl PartialEq<Mechanism> for LockStrategy {
    fn eq(&self, other: &Mechanism) -> bool {
        other == self
    }
}

impl From<Concrete> for Mechanism {
    fn from(c: Concrete) -> Mechanism {
        match c {
            Concrete::Os => Mechanism::Os,
            Concrete::Mkdir => Mechanism::Mkdir,
            Concrete::Link => Mechanism::Link,
        }
    }
}

/// What kind of file system object was found where a lock artifact was
/// expected; carried by
/// [`Error::WrongFileType`](crate::Error::WrongFileType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// Anything else: a socket, a FIFO, a device.
    Other,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::File => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Other => "a special file",
        })
    }
}

/// Which machines write to a lock's directory. Where only this one does
/// (a disk, tmpfs), a record of an earlier boot of this machine names a
/// process that has ended; on a network file system the same record may be
/// a clone's (same host name and machine id), alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// A local file system: only this machine writes to it.
    ThisMachine,
    /// A network or FUSE file system (or one not known to be local).
    AnyMachine,
}

/// How far a break may go with a lock it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaking {
    /// Only a lock judged stale (waiters, `break_lock`).
    IfStale,
    /// Any lock (`force_break`): a `Link` lock whose claim is missing and
    /// cannot be recovered through a dead remover gets a new claim.
    Forced,
}
