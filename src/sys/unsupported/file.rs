//! Files elsewhere: only what the standard library offers everywhere.

use std::fs::{DirBuilder, DirEntry, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::super::FileId;

/// No identity in metadata here.
pub(crate) const ID_FROM_METADATA: bool = false;

/// Directories are not flushed here.
pub(crate) const SYNCS_DIRECTORIES: bool = false;

/// No flag to add.
pub(crate) fn no_follow(_opts: &mut OpenOptions) {}

/// No flag to add.
pub(crate) fn no_follow_no_block(_opts: &mut OpenOptions) {}

/// No mode to set.
pub(crate) fn file_mode(_opts: &mut OpenOptions) {}

/// A builder of lock directories.
pub(crate) fn dir_builder() -> DirBuilder {
    DirBuilder::new()
}

/// Unknown here.
pub(crate) fn is_symlink_refusal(_err: &io::Error) -> bool {
    false
}

/// Only the portable kinds count here.
pub(crate) fn is_transient_os(_err: &io::Error) -> bool {
    false
}

/// No inode numbers here.
pub(crate) fn ino(_meta: &Metadata) -> u64 {
    0
}

/// No device numbers here.
pub(crate) fn dev(_meta: &Metadata) -> Option<u64> {
    None
}

/// No identity in metadata here.
pub(crate) fn meta_id(_meta: &Metadata) -> Option<FileId> {
    None
}

/// No inode numbers in a listing here.
pub(crate) fn entry_ino(_entry: &DirEntry) -> Option<u64> {
    None
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
