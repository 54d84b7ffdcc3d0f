//! `Link`: an atomic `link()` of a fully written private file onto the lock
//! path.
//!
//! The record is written to a private file beside the lock path, then hard
//! linked to the lock path. `link()` fails with `EEXIST` if the lock path
//! exists, atomically, also on NFS. A successful `link()` means the lock is
//! ours; only after an ambiguous error (an NFS reply lost and retried, say)
//! does the link count of the private file decide (2 means the link was
//! made). Some file systems (sshfs) report a link count of 1 after a
//! successful `link()`, so the count is never a condition on success. The
//! private file is removed in every case; the lock file is the record, so a
//! reader sees no lock or a whole record.

use std::io::{self, Write};

use camino::Utf8Path;

use crate::error::{Error, FileKind, Result};
use crate::fs;
use crate::owner::{read_record, OwnerRecord};
use crate::strategy::{lost, LockStrategy, Probe};

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) token: String,
}

pub(crate) fn try_acquire(path: &Utf8Path, record: &OwnerRecord) -> Result<Option<Held>> {
    let (dir, name) = split(path)?;
    let prefix = format!(".{name}.");
    let mut tmp = fs::private_file_builder(&prefix)
        .tempfile_in(dir)
        .map_err(|e| fs::io_error(path, "create a private record file beside", e))?;
    tmp.write_all(record.to_json().as_bytes())
        .map_err(|e| Error::io(path, "write a private record file beside", e))?;
    let linked = match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return match fs::lkind(path) {
                Ok(Some(FileKind::File)) | Ok(None) => Ok(None),
                Ok(Some(found)) => Err(fs::wrong_kind(
                    path,
                    LockStrategy::Link,
                    FileKind::File,
                    found,
                )),
                Err(e) => Err(Error::io(path, "inspect lock file", e)),
            };
        }
        Err(e) => {
            if link_count(&tmp) == Some(2) {
                true
            } else {
                return Err(fs::io_error(path, "link lock file", e));
            }
        }
    };
    // Dropping `tmp` removes the private name; the lock path keeps the data.
    drop(tmp);
    Ok(linked.then(|| Held {
        token: record.token.clone(),
    }))
}

fn split(path: &Utf8Path) -> Result<(&Utf8Path, &str)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(Error::io(
            path,
            "use as a lock path",
            io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        )),
    }
}

#[cfg(unix)]
fn link_count(tmp: &tempfile::NamedTempFile) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    tmp.as_file().metadata().ok().map(|m| m.nlink())
}

#[cfg(not(unix))]
fn link_count(_tmp: &tempfile::NamedTempFile) -> Option<u64> {
    None
}

fn read_current(path: &Utf8Path) -> Result<Option<Option<OwnerRecord>>> {
    match fs::open_read(path) {
        Ok(file) => {
            let meta = file
                .metadata()
                .map_err(|e| Error::io(path, "inspect lock file", e))?;
            fs::expect_kind(path, LockStrategy::Link, FileKind::File, fs::kind(&meta))?;
            let rec = read_record(file).map_err(|e| Error::io(path, "read lock file", e))?;
            Ok(Some(rec))
        }
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && path.parent().is_some_and(|p| p.is_dir()) =>
        {
            Ok(None)
        }
        Err(e) => Err(fs::io_error(path, "open lock file", e)),
    }
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<()> {
    match read_current(path)? {
        Some(Some(rec)) if rec.token == held.token => {
            std::fs::remove_file(path).map_err(|e| Error::io(path, "remove lock file", e))
        }
        Some(other) => Err(lost(path, other)),
        None => Err(lost(path, None)),
    }
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    Ok(match read_current(path)? {
        None => Probe::Free,
        Some(rec) => Probe::Held(rec),
    })
}
