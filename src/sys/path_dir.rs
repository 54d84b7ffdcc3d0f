//! A lock directory worked in by its path, where directories cannot be
//! opened as handles to work through (Windows, and the platforms of
//! `unsupported`). It would remember the directory's inode number to tell
//! when the path comes to name another, but neither platform gives one in
//! metadata (`portable::ino` is 0): there the listing alone decides.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::imp::{file_mode, ino, no_follow, SYNCS_DIRECTORIES};
use super::Create;

/// A directory, by its path.
#[derive(Debug)]
pub(crate) struct DirHandle {
    path: PathBuf,
    ino: Option<u64>,
}

impl DirHandle {
    /// Looks at the directory `path`: `NotADirectory` if something else
    /// is there (a symbolic link included).
    pub(crate) fn open(path: &Path) -> io::Result<DirHandle> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.is_dir() {
            return Err(io::ErrorKind::NotADirectory.into());
        }
        Ok(DirHandle {
            path: path.to_owned(),
            ino: Some(ino(&meta)).filter(|&ino| ino != 0),
        })
    }

    /// No permission bits here (see `set_mode`).
    pub(crate) fn set_mode(&self, _mode: u32) -> io::Result<()> {
        Ok(())
    }

    /// Creates (or, with [`Create::Truncate`], opens and empties) the file
    /// `name` in the directory, for writing.
    pub(crate) fn create(&self, name: &str, how: Create) -> io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        match how {
            Create::New => opts.create_new(true),
            Create::Truncate => opts.truncate(true),
        };
        no_follow(&mut opts);
        file_mode(&mut opts);
        opts.open(self.path.join(name))
    }

    /// Flushes the directory where that can be done (not on Windows, whose
    /// file systems journal their metadata).
    pub(crate) fn sync(&self) -> io::Result<()> {
        if SYNCS_DIRECTORIES {
            File::open(&self.path)?.sync_all()
        } else {
            Ok(())
        }
    }

    /// Removes the file `name` from the directory.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    /// The names in the directory now: a fresh listing on each call.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(&self.path)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    /// Whether `path` still names this directory, as far as its inode
    /// number tells (inode numbers are reused at once on some file
    /// systems: a caller decides by the listing too).
    pub(crate) fn still_at(&self, path: &Path) -> bool {
        match self.ino {
            None => true,
            Some(made) => std::fs::symlink_metadata(path).is_ok_and(|meta| ino(&meta) == made),
        }
    }
}
