//! Portable cross-process locks that live in the file system.
//!
//! A [`LockFile`] is a lock identified by its path: two handles on the same
//! path exclude each other, whether they are in one process or in two. It
//! follows the contract of Python's `locket`: non-reentrant
//! [`acquire`](LockFile::acquire) / [`release`](LockFile::release), try-once,
//! bounded and unbounded waits, and `release` on an unlocked handle is an
//! error. Every lock carries an [`OwnerRecord`] (JSON: pid, host, machine and
//! boot id, a process start stamp that no clock step moves, a unique token),
//! so a waiter can say who holds the lock, a lock whose owner died is broken
//! safely, and a holder never removes a lock that is no longer its own.
//!
//! # Which type to use
//!
//! | you want | use |
//! | --- | --- |
//! | one holder at a time, across processes (and machines sharing a file system) | [`LockFile`] |
//! | to lock a [`File`](std::fs::File) you opened yourself (portalocker's `lock`/`unlock`) | [`flock::lock`], [`flock::unlock`] |
//! | a lock that hands out the file it locks, portalocker's `Lock(path, 'r+', timeout=5)` | [`LockedFile`] |
//! | many readers or one writer (a readers-writer lock), on every strategy | [`LockFile::lock_shared`] beside [`LockFile::lock`]; [`LockedFileOptions::shared`] |
//! | a lock the owning thread may take again (portalocker's `RLock`) | [`ReentrantLockFile`] |
//! | a lock file that exists only while held | [`LockOptions::remove_on_release`] |
//! | at most N holders at once | [`BoundedSemaphore`] |
//! | a PID file | [`PidFileLock`] |
//! | a lock that outlives this process, held for a command or a shell | [`LockFile::spawn`], [`LockFile::detach`], [`LockFile::release_for`] |
//! | to wait in async code (feature `tokio`) | `LockFile::lock_async` and its kin |
//! | to stop a wait from another thread (Ctrl-C, a user who gives up) | [`CancelToken`] with [`LockFile::lock_cancellable`] or [`LockOptions::cancel_token`] |
//! | to tell the user whom a wait waits for | [`LockOptions::on_wait`] |
//! | a fencing token for the resource the lock guards (Kleppmann) | [`LockOptions::fencing`], [`LockGuard::fence`] |
//! | machines that share a Redis server, not a file system (feature `redis`) | `RedisLock` |
//! | machines that share an etcd cluster: fair, fenced, no single point of failure (feature `etcd`) | `EtcdLock` |
//! | to look at a lock you did not take | [`LockFile::status`], [`LockStrategy::found_at`] |
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use portalock::{Error, LockFile, LockStrategy};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("deploy.lock");
//!
//! // The idiomatic form: a guard that releases the lock when dropped.
//! let lock = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
//! let guard = lock.lock()?;
//!
//! // A second handle on the same path is excluded, in this process as in any
//! // other, and the error names the holder.
//! let other = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
//! match other.try_acquire() {
//!     Err(Error::WouldBlock { holder: Some(owner), .. }) => {
//!         assert_eq!(owner.pid, std::process::id());
//!     }
//!     other => panic!("expected WouldBlock, got {other:?}"),
//! }
//! assert!(matches!(
//!     other.acquire_timeout(Duration::from_millis(20)),
//!     Err(Error::Timeout { .. })
//! ));
//!
//! drop(guard);
//! other.try_acquire()?;
//! other.release()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Strategies
//!
//! A [`LockFile`] takes its lock with one of the strategies of
//! [`LockStrategy`] (its docs have the one table of what each does and
//! where it is safe). The default, [`Auto`](LockStrategy::Auto), picks
//! `Os` on a local file system and `Link` or `Mkdir` on a network or FUSE
//! one, where an OS lock may exclude nobody; an explicit `Os` lock there
//! is refused ([`Error::OsLocksNotShared`]). [`FileSystem`] has the rules
//! for each file system, and the README's "Per file system" section what
//! was measured on real NFS and SMB clients.
//!
//! # What a crash leaves behind
//!
//! An `Os` lock is released when its holder dies; the lock file stays (empty
//! or holding the dead holder's record) and is reused. A `Mkdir` or `Link`
//! lock stays after its holder dies; its owner record names the dead
//! process, and a waiter breaks it
//! ([`LockOptions::break_stale`], on by default) once it is *stale*: a dead
//! owner on this host, a [lease](LockOptions::lease) that went unrefreshed,
//! or no readable record for the [grace period](LockOptions::grace).
//! [`LockFile::break_lock`] breaks a stale lock on request and
//! [`LockFile::force_break`] any lock. Breaking is safe when many processes
//! try at once; the [`stale`] module argues why. A dead owner is judged from
//! its process's start stamp, which no step of the wall clock moves, and
//! never from a look at the process table that failed.
//!
//! A lock handed to a command with [`LockFile::spawn`] (what `portalock run`
//! does) lasts as long as the command runs, even if the process that took
//! it is killed.
//!
//! # Waiting
//!
//! Handles in one process wait on a condition variable and wake as soon as
//! the lock is released. A handle waiting for another process polls with
//! exponential backoff and jitter, never longer than the poll interval
//! ([`LockOptions::poll_interval`]); on Linux, a waiter for a `Mkdir` or
//! `Link` lock also watches the lock itself (inotify on its inode, so that
//! files coming and going beside it wake nobody) and wakes as soon as it is
//! removed, and an unbounded wait on an `Os` lock sleeps in the kernel.
//!
//! Waiting processes are served in turn ([`LockOptions::fair`], on by
//! default on local file systems): a process that releases the lock and
//! asks for it again at once does not take it back before a process that
//! was already waiting, as it does with every other lock library. The
//! first waiter holds a gate, an OS lock on a small file beside the lock
//! (`.<name>.gate`), while it waits; whoever asks after it waits behind
//! the gate. The argument, beside the stale-lock one:
//!
//! - *The gate never excludes.* Whether one holds the lock is decided by
//!   the strategy alone, exactly as without a gate; the gate only decides
//!   who tries first. Any failure of the gate (it cannot be opened, a
//!   file system without OS locks) costs order, never exclusion.
//! - *A dead waiter blocks nobody.* The gate is an OS lock, which the
//!   kernel drops with its holder.
//! - *A stuck waiter blocks nobody for long.* Processes waiting behind the
//!   gate look at the lock every four poll intervals (at least half a
//!   second), break it if it is stale, and pass the head by once they
//!   have found the lock free for twice that long; a handle remembers a
//!   stuck head for its next acquisitions.
//! - *Fair, not FIFO.* The head is served before anyone who asks after it
//!   took the gate; among those waiting behind the gate, the kernel picks.
//!   A waiter gets the lock within two hand-offs of a releaser that asks
//!   again at once (the release-and-ask-again race of a look at the gate
//!   and the lock can let the releaser through once).
//!
//! Across the clients of a network file system there is no gate: order
//! there is first come, first served only by chance.
//!
//! # Network file systems
//!
//! `Mkdir` and `Link` exclude across the clients of one server because
//! the server decides whether the directory or the link already exists. A
//! holder on another machine cannot be judged dead from here: give such
//! locks a [lease](LockOptions::lease), so that a crashed holder's lock
//! expires, and call [`LockFile::ensure_held`] before acting on what the
//! lock protects if a stall may have outlasted the lease. A wait goes on
//! through errors of a server that restarts (see [`LockFile::acquire`]).
//!
//! # Paths and security
//!
//! Lock paths are UTF-8 ([`camino`]); a path that is not gets
//! [`Error::NonUtf8Path`]. Paths are made absolute when the handle is
//! opened. The parent directory must exist ([`Error::MissingParent`]).
//! portalock never follows a symbolic link at the lock path
//! ([`Error::Symlink`]), and never overwrites a file at the lock path that
//! does not hold an owner record ([`Error::Foreign`]). Files are created
//! with mode `0644` less the umask, or with exact bits for a lock a group
//! of users shares ([`LockOptions::permissions`]).
//!
//! # Processes and threads
//!
//! A [`LockFile`] is `Send` and `Sync`: share it with `Arc` and release it
//! from any thread. After `fork()`, a handle the child inherited holds
//! nothing there: dropping or releasing it never releases the parent's
//! lock, and the child takes locks afresh through its handles (as for any
//! fork of a program with threads, no other thread may be inside
//! portalock at the moment of the fork).
//!
//! # Feature flags
//!
//! None is on by default: the default build is the library alone, with no
//! async runtime and no network client. On docs.rs every item that needs a
//! feature says which ("Available on crate feature ... only").
//!
//! - `cli`: the `portalock` command-line tool (`run`, `status`, `break`,
//!   `acquire`, `release`, the flock(1) form, and its own shell completions
//!   and man pages; `cargo install portalock --features cli`). Pulls in
//!   `clap`, `clap_complete`, `clap_mangen` and `signal-hook`; adds nothing
//!   to the library's API.
//! - `tokio`: async waiting, `LockFile::lock_async`,
//!   `LockFile::lock_timeout_async` and `LockFile::acquire_async`, which
//!   sleep on the runtime's timer between tries instead of blocking a
//!   thread. Pulls in `tokio` with its `time` feature only: the caller
//!   brings the runtime (any flavour, with its timer enabled).
//! - `redis`: `RedisLock`, `RedisGuard` and `RedisLockOptions` (the module
//!   `redis_lock`), a lock in one Redis server for machines that share no
//!   file system; with `cli`, also `portalock run --redis URL NAME`. Pulls
//!   in `redis` (its default features off, `script` on).
//! - `etcd`: `EtcdLock`, `EtcdGuard` and `EtcdLockOptions` (the module
//!   `etcd_lock`), a lock in an etcd cluster, served first come, first
//!   served and fenced by etcd's revision; with `cli`, also `portalock run
//!   --etcd URL NAME`. Pulls in `etcd-client` and tokio; building it needs
//!   `protoc` (Debian's `protobuf-compiler`).
//! - `failpoints`: named fault points on every file-system step of the
//!   protocols, for the project's own tests (through the `fail` crate, with
//!   its `failpoints` feature). Off by default; never enable it in a build
//!   that ships.
#![deny(missing_docs, missing_debug_implementations, nonstandard_style)]
// The one exception, `GetDriveTypeW` on Windows, is allowed where it is
// (`sys/windows/file.rs`).
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub mod etcd_lock;
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub mod fault;
#[cfg(not(feature = "failpoints"))]
mod fault;
mod files;
pub mod filesystem;
pub mod flock;
mod holding;
mod lock;
mod locked_file;
mod owner;
mod pidfile;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_lock;
mod reentrant;
mod registry;
mod semaphore;
pub mod stale;
mod strategy;
mod sys;
mod vocab;
mod wait;
pub use wait::CancelToken;

pub use camino::{Utf8Path, Utf8PathBuf};
pub use error::{Error, LockName, Operation, Result};
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use etcd_lock::{EtcdGuard, EtcdLock, EtcdLockOptions};
pub use filesystem::{FileSystem, Locality};
pub use lock::{
    lock_file, LockFile, LockGuard, LockOptions, LockStatus, OwnedLockGuard, SharedGuard, Waiting,
    DEFAULT_POLL_INTERVAL,
};
pub use locked_file::{LockedFile, LockedFileOptions, Mode};
pub use owner::{Liveness, OwnerRecord, RecordedProcess, MAX_RECORD_LEN, RECORD_VERSION};
pub use pidfile::PidFileLock;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_lock::{RedisGuard, RedisLock, RedisLockOptions};
pub use reentrant::ReentrantLockFile;
pub use semaphore::{BoundedSemaphore, SemaphoreGuard};
pub use stale::DEFAULT_GRACE;
pub use vocab::{FileKind, LockStrategy, Mechanism, ParseStrategyError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
