//! Files on Unix: open flags and modes, identities, positioned I/O.

use std::fs::{DirBuilder, DirEntry, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};

use super::super::{FileId, LockKind, Wait};

/// Mode of every lock file portalock creates (before the umask).
pub(crate) const FILE_MODE: u32 = 0o644;

/// Mode of every lock directory portalock creates (before the umask).
const DIR_MODE: u32 = 0o755;

/// Whether [`meta_id`] gives a file's identity from its metadata (`lstat`),
/// so that no open is needed.
pub(crate) const ID_FROM_METADATA: bool = true;

/// Whether a directory can be opened and flushed (`fsync`).
pub(crate) const SYNCS_DIRECTORIES: bool = true;

/// Opens without following a final symbolic link, and closes on `exec`.
pub(crate) fn no_follow(opts: &mut OpenOptions) {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
}

/// As [`no_follow`], and without updating the file's access time when it
/// is read (`O_NOATIME`, Linux): a lock file that is read back after each
/// write would otherwise dirty its inode every time. `false` where there is
/// no such flag. The kernel allows it only to the file's owner: an open
/// refused with `EPERM` is tried again without it.
pub(crate) fn no_follow_no_atime(opts: &mut OpenOptions) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOATIME);
        true
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = opts;
        false
    }
}

/// As [`no_follow`], and without blocking on a FIFO planted at the path.
pub(crate) fn no_follow_no_block(opts: &mut OpenOptions) {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
}

/// Creates files with [`FILE_MODE`] (less the umask).
pub(crate) fn file_mode(opts: &mut OpenOptions) {
    opts.mode(FILE_MODE);
}

/// Gives `file` the permission bits `mode` exactly, whatever the umask
/// (`fchmod`).
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// A builder of lock directories, mode `0o755` less the umask.
pub(crate) fn dir_builder() -> DirBuilder {
    let mut builder = DirBuilder::new();
    builder.mode(DIR_MODE);
    builder
}

/// Whether `err` is an open's refusal of a final symbolic link (`ELOOP`).
pub(crate) fn is_symlink_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP)
}

/// OS errors that trying again may cure, beyond the portable kinds: an
/// I/O error of a network file system, a server that is down for a while.
pub(crate) fn is_transient_os(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EIO | libc::EHOSTDOWN))
}

/// Whether `err` is `EPERM`: what `link()` answers on file systems without
/// hard links (and sshfs, for a link onto an existing name).
pub(crate) fn is_eperm(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EPERM)
}

/// Whether `err` says a file handle is no longer valid (`EBADF`).
pub(crate) fn is_bad_handle(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EBADF)
}

/// Whether `err` may be a lock conflict in disguise: `EACCES`, which a
/// Linux SMB client answers for a lock another client holds.
pub(crate) fn may_be_smb_conflict(err: &io::Error) -> bool {
    cfg!(any(target_os = "linux", target_os = "android"))
        && err.raw_os_error() == Some(libc::EACCES)
}

/// Whether the open `file` is on a Linux SMB mount (`fstatfs`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn file_is_smb(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|stat| {
        #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
        let magic = stat.f_type as u64 & 0xffff_ffff;
        super::super::SMB_MAGICS.contains(&magic)
    })
}

/// Whether the open `file` is on a Linux SMB mount: not on this Unix.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn file_is_smb(_file: &File) -> bool {
    false
}

/// Whether a lock file stays open after release, to be locked again
/// without a new open: yes, an unlocked descriptor is as good as new.
pub(crate) const KEEPS_RELEASED_FILES: bool = true;

/// OS advisory locks exist here: `flock`.
pub(crate) const HAS_OS_LOCKS: bool = true;

/// Takes an OS advisory lock on the open `file` with `flock`, on every
/// Unix (the standard library's `File::lock` is missing on some, Android
/// among them). The lock belongs to the open file description.
pub(crate) fn lock_file(file: &File, kind: LockKind, wait: Wait) -> io::Result<()> {
    use rustix::fs::FlockOperation as Op;
    let op = match (kind, wait) {
        (LockKind::Exclusive, Wait::Block) => Op::LockExclusive,
        (LockKind::Exclusive, Wait::Try) => Op::NonBlockingLockExclusive,
        (LockKind::Shared, Wait::Block) => Op::LockShared,
        (LockKind::Shared, Wait::Try) => Op::NonBlockingLockShared,
    };
    Ok(rustix::fs::flock(file, op)?)
}

/// The turnstile's gate (see `lock::turnstile`), on Linux: an
/// open-file-description lock (`F_OFD_SETLK`) over the whole file, which
/// belongs to the open file as a `flock` lock does, and which
/// [`gate_taken`] can look at with one system call, without taking it.
/// Elsewhere, `flock`. The gate's file holds no other lock.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn gate_lock(file: &File, wait: Wait) -> io::Result<()> {
    let cmd = match wait {
        Wait::Block => libc::F_OFD_SETLKW,
        Wait::Try => libc::F_OFD_SETLK,
    };
    ofd(file, cmd, libc::F_WRLCK).map(drop)
}

/// Lets the gate go (see [`gate_lock`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn gate_unlock(file: &File) -> io::Result<()> {
    ofd(file, libc::F_OFD_SETLK, libc::F_UNLCK).map(drop)
}

/// Whether another open file holds the gate (see [`gate_lock`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn gate_taken(file: &File) -> io::Result<bool> {
    ofd(file, libc::F_OFD_GETLK, libc::F_WRLCK).map(|found| found != libc::F_UNLCK)
}

/// One `fcntl` open-file-description lock call over the whole of `file`;
/// the lock type it reports back (for `F_OFD_GETLK`).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn ofd(file: &File, cmd: libc::c_int, kind: libc::c_int) -> io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    // A zeroed `flock` with these fields: the whole file (l_len 0 reaches
    // the end, however it grows), and l_pid 0, which OFD locks require.
    // SAFETY: `libc::flock` is plain data, for which all-zero bytes are a
    // valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open for as long as `file` is borrowed,
    // and `lock` is a valid `flock` that outlives the call, which is what
    // the three OFD commands read and (GETLK) write.
    let done = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut lock as *mut libc::flock) };
    if done == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(lock.l_type))
}

/// Releases the OS advisory lock of the open `file` (`flock(LOCK_UN)`;
/// nothing happens if it holds none).
pub(crate) fn unlock_file(file: &File) -> io::Result<()> {
    Ok(rustix::fs::flock(file, rustix::fs::FlockOperation::Unlock)?)
}

/// The link count in `meta`.
pub(crate) fn link_count(meta: &Metadata) -> Option<u64> {
    Some(meta.nlink())
}

/// The inode number in `meta`.
pub(crate) fn ino(meta: &Metadata) -> u64 {
    meta.ino()
}

/// The device number in `meta`.
pub(crate) fn dev(meta: &Metadata) -> Option<u64> {
    Some(meta.dev())
}

/// The identity (device, inode) that `meta` carries.
pub(crate) fn meta_id(meta: &Metadata) -> Option<FileId> {
    Some((meta.dev(), meta.ino()))
}

/// The inode number of a directory entry, from the listing itself.
pub(crate) fn entry_ino(entry: &DirEntry) -> Option<u64> {
    Some(entry.ino())
}

/// The identity of the open `file`.
pub(crate) fn file_id(file: &File) -> io::Result<FileId> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The identity and length of the open `file`.
pub(crate) fn file_state(file: &File) -> io::Result<(FileId, u64)> {
    let meta = file.metadata()?;
    Ok(((meta.dev(), meta.ino()), meta.len()))
}

/// Reads from `offset` without moving the file position (`pread`).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.read_at(buf, offset)
}

/// Writes all of `bytes` at offset 0 of `file`, moving no cursor.
pub(crate) fn write_all_at(file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all_at(bytes, 0)
}

/// What `statfs` tells of the file system that holds `dir`: Linux's magic
/// number.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn fs_facts(dir: &std::path::Path) -> io::Result<super::super::FsFacts> {
    let stat = rustix::fs::statfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    let magic = stat.f_type as u64 & 0xffff_ffff;
    Ok(super::super::FsFacts::Linux { magic })
}

/// What `statfs` tells of the file system that holds `dir`: its type name
/// and whether it is local (`MNT_LOCAL`).
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
pub(crate) fn fs_facts(dir: &std::path::Path) -> io::Result<super::super::FsFacts> {
    let stat = rustix::fs::statfs(dir)?;
    let name: Vec<u8> = stat
        .f_fstypename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8_lossy(&name).into_owned();
    #[allow(clippy::unnecessary_cast)] // f_flags' width differs by target
    let local = stat.f_flags as u64 & libc::MNT_LOCAL as u64 != 0;
    Ok(super::super::FsFacts::Bsd { name, local })
}

/// Nothing to tell on the other Unixes (the directory must exist).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
pub(crate) fn fs_facts(dir: &std::path::Path) -> io::Result<super::super::FsFacts> {
    std::fs::metadata(dir)?;
    Ok(super::super::FsFacts::Unknown)
}
