//! The one error type of portalock.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::owner::OwnerRecord;
use crate::vocab::{FileKind, LockStrategy, Mechanism};

/// A `Result` whose error is portalock's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when taking, releasing or inspecting a lock.
///
/// Every variant names the lock it concerns: its path, or, for the
/// variants a [`RedisLock`](crate::RedisLock) or an
/// [`EtcdLock`](crate::EtcdLock) shares, a [`LockName`]. Contention errors
/// ([`WouldBlock`](Error::WouldBlock), [`Timeout`](Error::Timeout)) carry the
/// holder's [`OwnerRecord`] when it could be read, so that a caller can say
/// who holds the lock.
///
/// `Display` prints one line that includes the underlying cause; the cause
/// is not repeated by [`std::error::Error::source`]. The I/O error, when
/// there is one, is available through [`Error::io_error`], and
/// `From<Error> for io::Error` keeps its kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A try-once acquire found the lock held.
    #[error("lock `{lock}` is held{}", holder_suffix(.holder.as_deref()))]
    #[non_exhaustive]
    WouldBlock {
        /// The lock: its path, or a Redis lock's key.
        lock: LockName,
        /// The holder's owner record, when it could be read.
        holder: Option<Box<OwnerRecord>>,
    },
    /// A bounded wait ended before the lock became free.
    #[error(
        "timed out after {:.3}s waiting for lock `{lock}`, held{}",
        .timeout.as_secs_f64(),
        holder_suffix(.holder.as_deref())
    )]
    #[non_exhaustive]
    Timeout {
        /// The lock: its path, or a Redis lock's key.
        lock: LockName,
        /// How long the caller asked to wait.
        timeout: Duration,
        /// The holder's owner record, when it could be read.
        holder: Option<Box<OwnerRecord>>,
    },
    /// A wait for the lock was cancelled through its
    /// [`CancelToken`](crate::CancelToken); nothing is held.
    #[error("the wait for lock `{lock}` was cancelled")]
    #[non_exhaustive]
    Cancelled {
        /// The lock: its path, or a Redis lock's key.
        lock: LockName,
    },
    /// `release` was called on a handle that does not hold the lock.
    #[error("lock `{lock}` is not held by this handle")]
    #[non_exhaustive]
    NotLocked {
        /// The lock: its path, or a Redis lock's key.
        lock: LockName,
    },
    /// The lock this handle held was removed or taken over by someone else;
    /// nothing of theirs was touched.
    #[error(
        "lock `{lock}` was lost: it no longer carries this handle's token{}",
        .holder.as_deref().map(|h| format!("; now held{}", holder_suffix(Some(h)))).unwrap_or_default()
    )]
    #[non_exhaustive]
    LockLost {
        /// The lock: its path, or a Redis lock's key.
        lock: LockName,
        /// The record now in place, when there is a readable one.
        holder: Option<Box<OwnerRecord>>,
    },
    /// [`LockFile::break_lock`](crate::LockFile::break_lock) found the lock
    /// held by an owner that is not stale: alive, of another host without
    /// a lease, or a lease that was refreshed while it watched.
    #[error(
        "lock `{path}` is not stale ({why}){}; not broken without force",
        holder_suffix(.holder.as_deref())
    )]
    #[non_exhaustive]
    NotStale {
        /// The lock path.
        path: Utf8PathBuf,
        /// Why the lock counts as live.
        why: &'static str,
        /// The holder's owner record, when readable.
        holder: Option<Box<OwnerRecord>>,
    },
    /// The lock is held, but not on behalf of the process that
    /// [`LockFile::release_for`](crate::LockFile::release_for) named.
    #[error(
        "lock `{path}` is not held for pid {pid}{}",
        .holder.as_deref().map(|h| format!("; it is held{}", holder_suffix(Some(h)))).unwrap_or_default()
    )]
    #[non_exhaustive]
    NotOwner {
        /// The lock path.
        path: Utf8PathBuf,
        /// The process named as the owner.
        pid: u32,
        /// The holder's owner record, when readable.
        holder: Option<Box<OwnerRecord>>,
    },
    /// A [`ReentrantLockFile`](crate::ReentrantLockFile) held by another
    /// thread was released from this one.
    #[error("lock `{path}` is held by another thread, which alone may release it")]
    #[non_exhaustive]
    WrongThread {
        /// The lock path.
        path: Utf8PathBuf,
    },
    /// The strategy cannot work here (platform or file system).
    #[error("the {strategy} strategy is not supported for lock `{path}`: {reason}")]
    #[non_exhaustive]
    Unsupported {
        /// The lock path.
        path: Utf8PathBuf,
        /// The strategy that was asked for.
        strategy: LockStrategy,
        /// Why not.
        reason: String,
    },
    /// An explicit [`Os`](LockStrategy::Os) lock was asked for on a file
    /// system where OS advisory locks do not exclude processes on its other
    /// clients (sshfs and other FUSE mounts, NFS mounted `nolock`, ...): it
    /// would exclude nobody there. Use [`Auto`](LockStrategy::Auto),
    /// [`Link`](LockStrategy::Link) or [`Mkdir`](LockStrategy::Mkdir), or
    /// opt in with
    /// [`LockOptions::trust_os_locks`](crate::LockOptions::trust_os_locks)
    /// when every process that takes the lock runs on this machine.
    #[error(
        "OS locks on `{path}` would not exclude processes on other clients of its \
         {file_system} file system; use the auto, link or mkdir strategy, or opt in \
         with LockOptions::trust_os_locks"
    )]
    #[non_exhaustive]
    OsLocksNotShared {
        /// The lock path.
        path: Utf8PathBuf,
        /// The file system, as [`FileSystem`](crate::FileSystem) prints it
        /// (`fuse.sshfs (FUSE)`).
        file_system: String,
    },
    /// The lock path is not valid UTF-8.
    #[error("lock path {} is not valid UTF-8", .path.display())]
    #[non_exhaustive]
    NonUtf8Path {
        /// The path as it was given.
        path: PathBuf,
    },
    /// The directory that should hold the lock does not exist. portalock
    /// never creates it: a typo in a path should not silently lock nothing.
    #[error("the parent directory of lock `{path}` does not exist")]
    #[non_exhaustive]
    MissingParent {
        /// The lock path.
        path: Utf8PathBuf,
    },
    /// The lock path is a symbolic link. portalock never follows one to
    /// write, truncate or delete its target.
    #[error("lock path `{path}` is a symbolic link; refusing to follow it")]
    #[non_exhaustive]
    Symlink {
        /// The lock path.
        path: Utf8PathBuf,
    },
    /// The lock path names a file system object of the wrong kind for the
    /// strategy (a directory for `Os` or `Link`, a regular file for `Mkdir`).
    #[error(
        "lock path `{path}` is {found}{}, but the {strategy} strategy needs {expected}",
        made_by(*.found)
    )]
    #[non_exhaustive]
    WrongFileType {
        /// The lock path.
        path: Utf8PathBuf,
        /// The strategy in use.
        strategy: LockStrategy,
        /// What the strategy needs there.
        expected: FileKind,
        /// What was found.
        found: FileKind,
    },
    /// The lock at this path was taken with another strategy than this
    /// handle's (a script with `--strategy link`, a library user whose
    /// `Auto` picked `Os`): every process must use one strategy for one
    /// lock. Nothing was taken, overwritten or removed.
    #[error(
        "lock `{path}` is {} the {found} strategy{}, but this handle uses the {strategy} strategy; \
         use one strategy for one lock everywhere",
        if .holder.is_some() { "taken with" } else { "a lock file of" },
        holder_suffix(.holder.as_deref())
    )]
    #[non_exhaustive]
    StrategyMismatch {
        /// The lock path.
        path: Utf8PathBuf,
        /// This handle's strategy.
        strategy: LockStrategy,
        /// What took the lock whose artifact is at the path.
        found: Mechanism,
        /// The holder's owner record, when there is one.
        holder: Option<Box<OwnerRecord>>,
    },
    /// The lock's file name is longer than the file system allows for the
    /// names the strategy makes (a `Link` lock makes private names up to
    /// 214 bytes beside its lock file). Refused when the handle is opened,
    /// so that no lock is ever taken that could not be released.
    #[error("the name of lock `{path}` is {len} bytes long; at most {max} bytes can be used here")]
    #[non_exhaustive]
    NameTooLong {
        /// The lock path.
        path: Utf8PathBuf,
        /// The length of its file name, in bytes.
        len: usize,
        /// The longest name that can be used.
        max: usize,
    },
    /// The lock file holds data that is not a portalock owner record, so it
    /// was not overwritten.
    #[error("lock file `{path}` holds data that is not a portalock owner record; refusing to overwrite it")]
    #[non_exhaustive]
    Foreign {
        /// The lock path.
        path: Utf8PathBuf,
    },
    /// Redis could not be reached, or answered an error (feature `redis`).
    #[error("failed to {op} Redis lock `{name}`: {message}")]
    #[non_exhaustive]
    Redis {
        /// The lock's name.
        name: String,
        /// What was being done.
        op: Operation,
        /// What went wrong.
        message: String,
    },
    /// etcd could not be reached, or answered an error (feature `etcd`).
    #[error("failed to {op} etcd lock `{name}`: {message}")]
    #[non_exhaustive]
    Etcd {
        /// The lock's name.
        name: String,
        /// What was being done.
        op: Operation,
        /// What went wrong.
        message: String,
    },
    /// An I/O error, with the path and the operation it concerns.
    #[error("failed to {op} `{path}`: {cause}")]
    #[non_exhaustive]
    Io {
        /// The path the operation concerned.
        path: Utf8PathBuf,
        /// What was being done ("create lock directory").
        op: Operation,
        /// The underlying error (printed by `Display`, not returned by
        /// `source()`).
        cause: io::Error,
    },
}

impl Error {
    /// The lock path this error concerns, when it is valid UTF-8 and the
    /// lock is a file (not a Redis lock's key).
    pub fn path(&self) -> Option<&camino::Utf8Path> {
        match self {
            Error::WouldBlock { lock, .. }
            | Error::Timeout { lock, .. }
            | Error::NotLocked { lock }
            | Error::Cancelled { lock }
            | Error::LockLost { lock, .. } => lock.path(),
            Error::NotStale { path, .. }
            | Error::Unsupported { path, .. }
            | Error::OsLocksNotShared { path, .. }
            | Error::NotOwner { path, .. }
            | Error::WrongThread { path }
            | Error::MissingParent { path }
            | Error::Symlink { path }
            | Error::WrongFileType { path, .. }
            | Error::Foreign { path }
            | Error::StrategyMismatch { path, .. }
            | Error::NameTooLong { path, .. }
            | Error::Io { path, .. } => Some(path),
            Error::NonUtf8Path { .. } | Error::Redis { .. } | Error::Etcd { .. } => None,
        }
    }

    /// The holder's owner record, for contention, lost-lock and not-stale
    /// errors.
    ///
    /// `None` also when the record could not be read (a holder between
    /// taking the lock and writing its record), and always for the
    /// contention errors of a [`LockedFile`](crate::LockedFile), a
    /// [`PidFileLock`](crate::PidFileLock) or a
    /// [`BoundedSemaphore`](crate::BoundedSemaphore), whose files carry no
    /// record.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("deploy.lock");
    /// let first = LockFile::new(&path)?;
    /// let _guard = first.lock()?;
    ///
    /// let second = LockFile::new(&path)?;
    /// let err = second.try_acquire().unwrap_err();
    /// let holder = err.holder().expect("the holder's record");
    /// assert_eq!(holder.pid, std::process::id());
    /// assert!(err.to_string().contains(&format!("by pid {}", holder.pid)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn holder(&self) -> Option<&OwnerRecord> {
        match self {
            Error::WouldBlock { holder, .. }
            | Error::Timeout { holder, .. }
            | Error::LockLost { holder, .. }
            | Error::NotStale { holder, .. }
            | Error::NotOwner { holder, .. }
            | Error::StrategyMismatch { holder, .. } => holder.as_deref(),
            _ => None,
        }
    }

    /// The underlying I/O error, for [`Error::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// Whether this error means "someone else holds the lock"
    /// ([`WouldBlock`](Error::WouldBlock) or [`Timeout`](Error::Timeout)).
    ///
    /// # Examples
    ///
    /// A try-once and a bounded wait both fail as contended while another
    /// handle holds the lock; any other error is something to report.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portalock::LockFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("deploy.lock");
    /// let first = LockFile::new(&path)?;
    /// first.acquire()?;
    ///
    /// let second = LockFile::new(&path)?;
    /// assert!(second.try_acquire().unwrap_err().is_contended());
    /// assert!(second.acquire_timeout(Duration::from_millis(10)).unwrap_err().is_contended());
    /// // Releasing what this handle does not hold is not contention.
    /// assert!(!second.release().unwrap_err().is_contended());
    ///
    /// match second.try_acquire() {
    ///     Ok(()) => unreachable!("the first handle holds it"),
    ///     Err(e) if e.is_contended() => { /* busy: try again later */ }
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_contended(&self) -> bool {
        matches!(self, Error::WouldBlock { .. } | Error::Timeout { .. })
    }

    /// The error of a wait that ended with the lock still held: `Timeout`
    /// after a wait of `timeout` (not zero), else `WouldBlock` (a try-once,
    /// or a zero timeout).
    pub(crate) fn contended(
        lock: impl Into<LockName>,
        timeout: Option<Duration>,
        holder: Option<Box<OwnerRecord>>,
    ) -> Error {
        let lock = lock.into();
        match timeout {
            Some(timeout) if !timeout.is_zero() => Error::Timeout {
                lock,
                timeout,
                holder,
            },
            _ => Error::WouldBlock { lock, holder },
        }
    }

    pub(crate) fn io(path: &camino::Utf8Path, op: Op, cause: io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            op: op.into(),
            cause,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Io { cause, .. } => cause.kind(),
            Error::WouldBlock { .. } => io::ErrorKind::WouldBlock,
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::Cancelled { .. } => io::ErrorKind::Interrupted,
            Error::MissingParent { .. } => io::ErrorKind::NotFound,
            Error::Unsupported { .. } | Error::OsLocksNotShared { .. } => {
                io::ErrorKind::Unsupported
            }
            Error::NonUtf8Path { .. }
            | Error::Symlink { .. }
            | Error::WrongFileType { .. }
            | Error::StrategyMismatch { .. } => io::ErrorKind::InvalidInput,
            Error::NameTooLong { .. } => io::ErrorKind::InvalidFilename,
            Error::Foreign { .. } => io::ErrorKind::InvalidData,
            Error::NotStale { .. } | Error::NotOwner { .. } => io::ErrorKind::ResourceBusy,
            Error::NotLocked { .. }
            | Error::LockLost { .. }
            | Error::WrongThread { .. }
            | Error::Redis { .. }
            | Error::Etcd { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// What is locked, as an error names it: a lock file's path, or a Redis
/// lock's key. `Display` prints either as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockName {
    /// The path of a lock in the file system.
    Path(Utf8PathBuf),
    /// The key of a [`RedisLock`](crate::RedisLock) (feature `redis`).
    RedisKey(String),
    /// The key prefix of an [`EtcdLock`](crate::EtcdLock) (feature `etcd`).
    EtcdKey(String),
}

impl LockName {
    /// The lock's path, for a lock in the file system.
    pub fn path(&self) -> Option<&Utf8Path> {
        match self {
            LockName::Path(path) => Some(path),
            LockName::RedisKey(_) | LockName::EtcdKey(_) => None,
        }
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockName::Path(path) => path.fmt(f),
            LockName::RedisKey(key) | LockName::EtcdKey(key) => f.write_str(key),
        }
    }
}

impl From<Utf8PathBuf> for LockName {
    fn from(path: Utf8PathBuf) -> LockName {
        LockName::Path(path)
    }
}

impl From<&Utf8Path> for LockName {
    fn from(path: &Utf8Path) -> LockName {
        LockName::Path(path.to_owned())
    }
}

impl PartialEq<Utf8Path> for LockName {
    fn eq(&self, other: &Utf8Path) -> bool {
        self.path() == Some(other)
    }
}

impl PartialEq<Utf8PathBuf> for LockName {
    fn eq(&self, other: &Utf8PathBuf) -> bool {
        self.path() == Some(other.as_path())
    }
}

/// What a failed operation was doing: the one place that words every
/// operation of an [`Error::Io`] or [`Error::Redis`] message. Its
/// `Display` is a verb phrase that the path or key follows ("create lock
/// directory").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation(Op);

impl Operation {
    /// The operation as a verb phrase, as `Display` prints it.
    pub fn as_str(self) -> &'static str {
        self.0.phrase()
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Op> for Operation {
    fn from(op: Op) -> Operation {
        Operation(op)
    }
}

/// The operations of the crate, each with the words of its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Absolute,
    #[cfg(any(feature = "redis", feature = "etcd"))]
    Acquire,
    Break,
    Check,
    ClearRecord,
    #[cfg(feature = "redis")]
    Connect,
    CreateClaim,
    CreateDir,
    #[cfg(feature = "etcd")]
    EtcdConnect,
    #[cfg(feature = "etcd")]
    EtcdLease,
    #[cfg(feature = "etcd")]
    EtcdRuntime,
    DetectFileSystem,
    Fence,
    Inspect,
    InspectClaim,
    Link,
    List,
    Lock,
    MakeClaim,
    MakeRecord,
    MakeSemaphore,
    NameTaken,
    Open,
    OpenDir,
    OpenRecord,
    #[cfg(feature = "redis")]
    OpenRedis,
    Read,
    ReadRecord,
    Readers,
    Register,
    #[cfg(any(feature = "redis", feature = "etcd"))]
    Release,
    RemoveDir,
    RemoveFile,
    RemoveRecord,
    Spawn,
    #[cfg(feature = "redis")]
    Subscribe,
    Sync,
    TakeClaim,
    TakeOver,
    Truncate,
    Unlock,
    UseAsLockPath,
    #[cfg(any(feature = "redis", feature = "etcd"))]
    Wait,
    WriteClaim,
    WritePid,
    WriteRecord,
}

impl Op {
    fn phrase(self) -> &'static str {
        match self {
            Op::Absolute => "make an absolute path of",
            #[cfg(any(feature = "redis", feature = "etcd"))]
            Op::Acquire => "acquire",
            Op::Break => "break",
            Op::Check => "check the lock at",
            Op::ClearRecord => "clear the owner record of",
            #[cfg(feature = "redis")]
            Op::Connect => "connect to Redis for",
            Op::CreateClaim => "create a private record file beside",
            Op::CreateDir => "create lock directory",
            #[cfg(feature = "etcd")]
            Op::EtcdConnect => "connect to etcd for",
            #[cfg(feature = "etcd")]
            Op::EtcdLease => "keep the lease of",
            #[cfg(feature = "etcd")]
            Op::EtcdRuntime => "start the client runtime of",
            Op::DetectFileSystem => "detect the file system of",
            Op::Fence => "give a fencing token for",
            Op::Inspect => "inspect",
            Op::InspectClaim => "inspect the claim of",
            Op::Link => "link lock file",
            Op::List => "list",
            Op::Lock => "lock",
            Op::MakeClaim => "make a claim for",
            Op::MakeRecord => "make an owner record for",
            Op::MakeSemaphore => "make a semaphore of",
            Op::NameTaken => "name",
            Op::Open => "open lock file",
            Op::OpenDir => "open lock directory",
            Op::OpenRecord => "open owner record",
            #[cfg(feature = "redis")]
            Op::OpenRedis => "open",
            Op::Read => "read",
            Op::ReadRecord => "read the owner record of",
            Op::Readers => "wait for the readers of",
            Op::Register => "register a reader of",
            #[cfg(any(feature = "redis", feature = "etcd"))]
            Op::Release => "release",
            Op::RemoveDir => "remove lock directory",
            Op::RemoveFile => "remove lock file",
            Op::RemoveRecord => "remove owner record",
            Op::Spawn => "start a command under",
            #[cfg(feature = "redis")]
            Op::Subscribe => "subscribe",
            Op::Sync => "flush to stable storage",
            Op::TakeClaim => "remove the claim of",
            Op::TakeOver => "take over",
            Op::Truncate => "truncate locked file",
            Op::Unlock => "unlock",
            Op::UseAsLockPath => "use as a lock path",
            #[cfg(any(feature = "redis", feature = "etcd"))]
            Op::Wait => "wait",
            Op::WriteClaim => "write a private record file beside",
            Op::WritePid => "write the PID into",
            Op::WriteRecord => "write the owner record to",
        }
    }
}

/// Which strategies leave an object of kind `found` at a lock path.
fn made_by(found: FileKind) -> &'static str {
    match found {
        FileKind::Directory => " (as the mkdir strategy makes)",
        FileKind::File => " (as the os and link strategies make)",
        FileKind::Symlink | FileKind::Other => "",
    }
}

/// " by pid 42 on build-7 since 2026-11-22T10:00:00Z", or nothing.
pub(crate) fn holder_suffix(holder: Option<&OwnerRecord>) -> String {
    match holder {
        Some(rec) => format!(
            " by pid {} on {} since {}",
            rec.pid,
            rec.hostname,
            humantime::format_rfc3339_seconds(rec.acquired_at)
        ),
        None => String::new(),
    }
}
