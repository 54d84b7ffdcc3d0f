//! Files elsewhere: only what the standard library offers everywhere.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub(crate) use super::super::portable::*;
use super::super::{FileId, LockKind, Wait};

/// Directories are not flushed here.
pub(crate) const SYNCS_DIRECTORIES: bool = false;

/// Only the portable kinds count here.
pub(crate) fn is_transient_os(_err: &io::Error) -> bool {
    false
}

/// No OS advisory locks here.
pub(crate) const HAS_OS_LOCKS: bool = false;

/// No OS advisory locks here: `Unsupported`.
pub(crate) fn lock_file(_file: &File, _kind: LockKind, _wait: Wait) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "OS advisory locks are not supported on this platform",
    ))
}

/// No OS advisory locks here: nothing to release.
pub(crate) fn unlock_file(_file: &File) -> io::Result<()> {
    Ok(())
}

/// No identity here: every open file looks the same (`(0, 0)`).
pub(crate) fn file_id(file: &File) -> io::Result<FileId> {
    file.metadata().map(|_| (0, 0))
}

/// The length of the open `file`, with the identity of [`file_id`].
pub(crate) fn file_state(file: &File) -> io::Result<(FileId, u64)> {
    Ok((file_id(file)?, file.metadata()?.len()))
}

/// Reads from `offset`, through the file's cursor.
pub(crate) fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    file.read(buf)
}

/// Writes all of `bytes` at offset 0 of `file`, through its cursor.
pub(crate) fn write_all_at(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)
}

/// Nothing to tell here (the directory must exist).
pub(crate) fn fs_facts(dir: &std::path::Path) -> io::Result<super::super::FsFacts> {
    std::fs::metadata(dir)?;
    Ok(super::super::FsFacts::Unknown)
}

/// No flag to keep a file's access time here: `false`.
pub(crate) fn no_follow_no_atime(_opts: &mut std::fs::OpenOptions) -> bool {
    false
}
