//! Files on Windows: identities from the file index, positioned I/O, and
//! the error codes of files that are briefly in use.

use std::fs::File;
use std::io;
use std::os::windows::fs::FileExt;

pub(crate) use super::super::portable::*;
use super::super::{FileId, LockKind, Wait};

/// Whether a directory can be opened and flushed: not here (NTFS journals
/// its metadata).
pub(crate) const SYNCS_DIRECTORIES: bool = false;

/// ERROR_SHARING_VIOLATION and ERROR_LOCK_VIOLATION, while another process
/// has the file or directory open for a moment; ERROR_ACCESS_DENIED, also
/// what creating a name answers while a file or directory of that name is
/// being deleted but still open elsewhere ("delete pending");
/// ERROR_INVALID_NAME, what Wine answers when listing a directory that is
/// being removed.
pub(crate) fn is_transient_os(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(5 | 32 | 33 | 123))
}

/// OS advisory locks exist here: `LockFileEx`.
pub(crate) const HAS_OS_LOCKS: bool = true;

/// Takes an OS advisory lock on the open `file`: the standard library's
/// `LockFileEx` over the whole file. The lock belongs to the handle.
pub(crate) fn lock_file(file: &File, kind: LockKind, wait: Wait) -> io::Result<()> {
    use std::fs::TryLockError;
    let tried = match (kind, wait) {
        (LockKind::Exclusive, Wait::Block) => return file.lock(),
        (LockKind::Shared, Wait::Block) => return file.lock_shared(),
        (LockKind::Exclusive, Wait::Try) => file.try_lock(),
        (LockKind::Shared, Wait::Try) => file.try_lock_shared(),
    };
    match tried {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Releases the OS advisory lock of the open `file`: the standard library
/// unlocks twice (a file may hold a shared and an exclusive lock at once),
/// and for a range no longer locked Windows answers ERROR_NOT_LOCKED and
/// Wine ERROR_LOCK_VIOLATION, which mean that nothing is locked any more.
pub(crate) fn unlock_file(file: &File) -> io::Result<()> {
    match file.unlock() {
        Err(e) if matches!(e.raw_os_error(), Some(33 | 158)) => Ok(()),
        other => other,
    }
}

/// The identity (volume serial number, file index) of the open `file`.
pub(crate) fn file_id(file: &File) -> io::Result<FileId> {
    let info = winapi_util::file::information(file)?;
    Ok((info.volume_serial_number(), info.file_index()))
}

/// The identity and length of the open `file`, in one call.
pub(crate) fn file_state(file: &File) -> io::Result<(FileId, u64)> {
    let info = winapi_util::file::information(file)?;
    Ok((
        (info.volume_serial_number(), info.file_index()),
        info.file_size(),
    ))
}

/// Reads from `offset` (the file position moves; no reader of a lock file
/// uses it).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek_read(buf, offset)
}

/// Writes all of `bytes` at offset 0 of `file` (Windows moves the cursor
/// of a positioned write; no reader of a lock file uses it).
pub(crate) fn write_all_at(file: &File, mut bytes: &[u8]) -> io::Result<()> {
    let mut offset = 0;
    while !bytes.is_empty() {
        let n = file.seek_write(bytes, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Whether `dir` is on another machine: a UNC path, or a drive that
/// `GetDriveTypeW` calls remote. Fails with `NotFound` for a missing
/// directory, as `statfs` does.
pub(crate) fn fs_facts(dir: &std::path::Path) -> io::Result<super::super::FsFacts> {
    use std::path::{Component, Prefix};

    std::fs::metadata(dir)?;
    let abs = std::path::absolute(dir)?;
    let remote = match abs.components().next() {
        Some(Component::Prefix(p)) => match p.kind() {
            Prefix::UNC(..) | Prefix::VerbatimUNC(..) => true,
            Prefix::Disk(letter) | Prefix::VerbatimDisk(letter) => drive::is_remote(letter),
            _ => false,
        },
        _ => false,
    };
    Ok(super::super::FsFacts::Windows { remote })
}

#[allow(unsafe_code)]
mod drive {
    use windows_sys::Win32::Storage::FileSystem::GetDriveTypeW;

    /// `DRIVE_REMOTE` from `GetDriveTypeW`.
    const DRIVE_REMOTE: u32 = 4;

    /// Whether the drive with this letter is a network drive.
    pub(super) fn is_remote(letter: u8) -> bool {
        let root: [u16; 4] = [u16::from(letter), u16::from(b':'), u16::from(b'\\'), 0];
        // SAFETY: `root` is a NUL-terminated UTF-16 string that lives
        // across the call; GetDriveTypeW only reads it.
        let kind = unsafe { GetDriveTypeW(root.as_ptr()) };
        kind == DRIVE_REMOTE
    }
}

/// No flag to keep a file's access time here: `false`.
pub(crate) fn no_follow_no_atime(_opts: &mut std::fs::OpenOptions) -> bool {
    false
}
