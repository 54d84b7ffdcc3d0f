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

/// A builder of lock directories.
pub(crate) fn dir_builder() -> DirBuilder {
    DirBuilder::new()
}

/// Opens never refuse a symbolic link here.
pub(crate) fn is_symlink_refusal(_err: &io::Error) -> bool {
    false
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
