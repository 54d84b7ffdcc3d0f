//! A lock directory opened once, and worked in through that handle
//! (`openat`, `unlinkat`, `fsync`, a listing of the same directory).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags};

use super::super::Create;
use super::file::FILE_MODE;

/// An open directory. Names created and listed through it are in this
/// directory even if its path comes to name another one meanwhile.
#[derive(Debug)]
pub(crate) struct DirHandle {
    fd: OwnedFd,
}

impl DirHandle {
    /// Opens the directory `path`, not following a final symbolic link
    /// (`ELOOP`) and refusing anything but a directory (`ENOTDIR`).
    pub(crate) fn open(path: &Path) -> io::Result<DirHandle> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirHandle { fd })
    }

    /// Gives the directory the permission bits `mode` exactly (`fchmod`).
    pub(crate) fn set_mode(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(
            &self.fd,
            Mode::from_raw_mode(mode as _),
        )?)
    }

    /// Creates (or, with [`Create::Truncate`], opens and empties) the file
    /// `name` in this directory, for writing, not following a symbolic link.
    pub(crate) fn create(&self, name: &str, how: Create) -> io::Result<File> {
        let flags = match how {
            Create::New => OFlags::CREATE | OFlags::EXCL,
            Create::Truncate => OFlags::TRUNC,
        };
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE as _),
        )?;
        Ok(File::from(fd))
    }

    /// Flushes the directory's entries to stable storage.
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// Removes the file `name` from this directory.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// The names in this directory now (without `.` and `..`): a fresh
    /// listing on each call.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        Ok(names)
    }

    /// Whether `path` still names this directory: always, as far as a
    /// lock is concerned. Names are made and listed through the handle,
    /// and a directory that holds a record cannot be removed.
    pub(crate) fn still_at(&self, _path: &Path) -> bool {
        true
    }
}
