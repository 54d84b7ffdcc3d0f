//! What portalock asks of the operating system about processes and
//! machines, one implementation per platform with the same names on each
//! side: `unix` (Linux reads `/proc`; macOS and the BSDs ask `sysinfo`),
//! `windows`, and `unsupported`, which compiles everywhere and knows
//! nothing.
//!
//! The functions here never turn an error into an answer: a process is
//! [`ProcessState::Exited`] only on proof (the kernel says no such process,
//! or shows it a zombie), never because a look failed.

use std::fs::File;
use std::io;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

#[cfg(not(any(unix, windows)))]
mod unsupported;
#[cfg(not(any(unix, windows)))]
use unsupported as imp;

#[cfg(not(any(unix, windows)))]
pub(crate) use imp::try_shared_for_a_moment;
pub(crate) use imp::{
    boot_id, dev, dir_builder, entry_ino, file_id, file_is_smb, file_mode, file_state, fs_facts,
    ino, is_bad_handle, is_eperm, is_symlink_refusal, is_transient_os, link_count, lock_file,
    machine_id, may_be_smb_conflict, meta_id, name_max, no_follow, no_follow_no_atime,
    no_follow_no_block, pid, pid_namespace, process_state, read_at, set_mode, since_boot,
    spawn_gated, unlock_file, write_all_at, HAS_OS_LOCKS, ID_FROM_METADATA, KEEPS_RELEASED_FILES,
    SYNCS_DIRECTORIES,
};

#[cfg(any(target_os = "linux", target_os = "android"))]
mod inotify;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use inotify::{Armed, LockWatch};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod no_watch;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) use no_watch::{Armed, LockWatch};

#[cfg(feature = "tokio")]
mod async_watch;
#[cfg(feature = "tokio")]
pub(crate) use async_watch::AsyncLockWatch;
#[cfg(all(feature = "tokio", unix))]
pub(crate) use async_watch::{OsReleaseWake, OsWoke};

#[cfg(not(unix))]
mod path_dir;
#[cfg(not(unix))]
mod portable;
#[cfg(not(unix))]
pub(crate) use path_dir::DirHandle;
#[cfg(unix)]
pub(crate) use unix::DirHandle;

/// The `statfs` magic numbers of Linux's SMB clients (`cifs`, `smb3`):
/// data, the same on every platform (the file-system tables classify by
/// them in their tests everywhere).
#[cfg_attr(
    not(any(target_os = "linux", target_os = "android", test)),
    allow(
        dead_code,
        reason = "used where SMB mounts are told apart: Linux, and the tests"
    )
)]
pub(crate) const SMB_MAGICS: [u64; 2] = [0xff53_4d42, 0xfe53_4d42];

/// What the platform tells of the file system that holds a directory; the
/// `filesystem` module classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code, reason = "each platform makes one of these")]
pub(crate) enum FsFacts {
    /// Linux: the `statfs` magic number (the mount's entry in
    /// `/proc/self/mountinfo` is read when the classification needs it).
    Linux { magic: u64 },
    /// macOS and the BSDs: `f_fstypename`, and whether `MNT_LOCAL` is set.
    Bsd { name: String, local: bool },
    /// Windows: whether the path is a UNC path or on a network drive.
    Windows { remote: bool },
    /// A platform with no way to tell.
    Unknown,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use imp::{gate_lock, gate_taken, gate_unlock};

/// The turnstile's gate, where no cheaper lock serves it: an exclusive
/// [`lock_file`].
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn gate_lock(file: &File, wait: Wait) -> io::Result<()> {
    lock_file(file, LockKind::Exclusive, wait)
}

/// Lets the gate go.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn gate_unlock(file: &File) -> io::Result<()> {
    unlock_file(file)
}

/// Whether another open file holds the gate: a try, let go at once.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn gate_taken(file: &File) -> io::Result<bool> {
    match lock_file(file, LockKind::Exclusive, Wait::Try) {
        Ok(()) => unlock_file(file).map(|()| false),
        Err(e) if lock_contended(&e, file) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether a failed non-blocking lock attempt on `file` means that
/// someone else holds a conflicting lock: `WouldBlock`, and `EACCES` on a
/// Linux SMB mount, whose client answers that for a lock another client
/// holds. Elsewhere `EACCES` is a refusal (a security module denying the
/// lock), not a conflict.
pub(crate) fn lock_contended(e: &io::Error, file: &File) -> bool {
    if e.kind() == io::ErrorKind::WouldBlock {
        return true;
    }
    if may_be_smb_conflict(e) {
        return file_is_smb(file);
    }
    false
}

/// Which OS advisory lock [`lock_file`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

/// Whether [`lock_file`] waits for a conflicting lock to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until the lock is free.
    Block,
    /// Not at all: `WouldBlock` if it is held.
    Try,
}

/// How [`DirHandle::create`] makes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// A new file: fails with `AlreadyExists` if the name is taken.
    New,
    /// An existing file, emptied.
    Truncate,
}

/// The identity of a file: device and inode on Unix, volume serial number
/// and file index on Windows. Two names with one identity are one file.
pub(crate) type FileId = (u64, u64);

/// Tries a shared OS advisory lock on `file` and lets it go at once: a
/// look at whether another handle holds the exclusive lock. The lock
/// lives exactly as long as fd-lock's guard, which is what that guard is
/// for; a lock held from `acquire` to `release` uses the standard
/// library's `File::lock` instead (see `strategy::os`).
#[cfg(any(unix, windows))]
pub(crate) fn try_shared_for_a_moment(file: File) -> (File, io::Result<()>) {
    let lock = fd_lock::RwLock::new(file);
    let tried = lock.try_read().map(drop);
    (lock.into_inner(), tried)
}

/// What a look at a process of this machine found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcessState {
    /// It runs; its start stamp (see [`crate::owner`]), when it could be
    /// read.
    #[cfg_attr(not(any(unix, windows)), allow(dead_code))]
    Running { start: Option<String> },
    /// It has exited: the kernel knows no process with that PID, or only a
    /// zombie.
    Exited,
    /// Nothing could be told (the look failed in a way that proves
    /// nothing).
    #[cfg_attr(windows, allow(dead_code))]
    Unknown,
}

/// What sysinfo knows of process `pid`: `None` if it lists no such
/// process, else whether it is a zombie and its start time in seconds
/// (when known). Refreshes only that one process.
#[cfg_attr(any(target_os = "linux", not(any(unix, windows))), allow(dead_code))]
fn sysinfo_process(pid: u32) -> Option<(bool, Option<u64>)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let mut sys = System::new();
    let id = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[id]),
        false,
        ProcessRefreshKind::nothing(),
    );
    let process = sys.process(id)?;
    let zombie = process.status() == ProcessStatus::Zombie;
    Some((zombie, Some(process.start_time()).filter(|&s| s != 0)))
}

/// Spawns `command`, then calls `name_it` with its PID: for platforms
/// without a gate between fork and exec (the command runs before it is
/// named) and without inheritable locks.
#[cfg_attr(unix, allow(dead_code))]
fn spawn_then_name(
    command: &mut std::process::Command,
    name_it: &mut (dyn FnMut(u32) -> std::io::Result<()> + Send),
) -> std::io::Result<std::process::Child> {
    let child = command.spawn()?;
    let _ = name_it(child.id());
    Ok(child)
}

/// Time on the monotonic clock since this process first asked.
#[cfg_attr(unix, allow(dead_code))]
fn monotonic_since_start() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}
