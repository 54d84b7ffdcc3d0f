//! The file answers of platforms without Unix's open flags, modes and
//! inode numbers (Windows and the platforms of `unsupported`): nothing to
//! add to an open, and no identity in metadata or listings.

use std::fs::{DirBuilder, DirEntry, Metadata, OpenOptions};
use std::io;

use super::FileId;

/// Whether `meta_id` gives a file's identity from its metadata: not here.
pub(crate) const ID_FROM_METADATA: bool = false;

/// No flag to add (an open that reached something other than a regular
/// file is refused afterwards, by the kind check of what was opened).
pub(crate) fn no_follow(_opts: &mut OpenOptions) {}

/// No flag to add (no FIFOs to block on).
pub(crate) fn no_follow_no_block(_opts: &mut OpenOptions) {}

/// No mode to set: files get the directory's permissions.
pub(crate) fn file_mode(_opts: &mut OpenOptions) {}

/// No permission bits here: files and directories get the permissions
/// their directory passes on.
pub(crate) fn set_mode(_file: &std::fs::File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// A builder of lock directories.
pub(crate) fn dir_builder() -> DirBuilder {
    DirBuilder::new()
}

/// Opens never refuse a symbolic link here.
pub(crate) fn is_symlink_refusal(_err: &io::Error) -> bool {
    false
}

/// No `EPERM` here.
pub(crate) fn is_eperm(_err: &io::Error) -> bool {
    false
}

/// No `EBADF` here.
pub(crate) fn is_bad_handle(_err: &io::Error) -> bool {
    false
}

/// `EACCES` is never a lock conflict here.
pub(crate) fn may_be_smb_conflict(_err: &io::Error) -> bool {
    false
}

/// Whether a lock file stays open after release: not here. The handle is
/// closed, which releases any lock it holds whatever its range; the next
/// acquisition opens the file again.
pub(crate) const KEEPS_RELEASED_FILES: bool = false;

/// Whether the open file is on a Linux SMB mount: not here.
pub(crate) fn file_is_smb(_file: &std::fs::File) -> bool {
    false
}

/// No link counts in metadata here.
pub(crate) fn link_count(_meta: &Metadata) -> Option<u64> {
    None
}

/// No inode numbers in metadata here.
pub(crate) fn ino(_meta: &Metadata) -> u64 {
    0
}

/// No device numbers in metadata here.
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
