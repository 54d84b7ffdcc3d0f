//! `Mkdir`: an atomic `mkdir` of the lock path.
//!
//! `mkdir` either creates the directory or fails with `EEXIST`, atomically,
//! on every file system that portalock knows of, network ones included. The
//! owner record is then written to a private file inside the new directory
//! and renamed to `owner.json`, so a reader sees no record or a whole one.
//! A directory without a record is a lock whose holder is unknown (it may be
//! about to write it, or it crashed first).

use std::io::{self, Write};

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, FileKind, Result};
use crate::fs;
use crate::owner::{read_record, OwnerRecord};
use crate::strategy::{lost, LockStrategy, Probe};

/// The name of the owner record inside the lock directory.
pub(crate) const RECORD_NAME: &str = "owner.json";

#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) token: String,
}

fn record_path(path: &Utf8Path) -> Utf8PathBuf {
    path.join(RECORD_NAME)
}

pub(crate) fn try_acquire(path: &Utf8Path, record: &OwnerRecord) -> Result<Option<Held>> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return match fs::lkind(path) {
                Ok(Some(FileKind::Directory)) | Ok(None) => Ok(None),
                Ok(Some(found)) => Err(fs::wrong_kind(
                    path,
                    LockStrategy::Mkdir,
                    FileKind::Directory,
                    found,
                )),
                Err(e) => Err(Error::io(path, "inspect lock directory", e)),
            };
        }
        Err(e) => return Err(fs::io_error(path, "create lock directory", e)),
    }
    // The directory is ours: a failure to write the record must not leave
    // a lock behind that nobody will release.
    match write_record(path, record) {
        Ok(()) => Ok(Some(Held {
            token: record.token.clone(),
        })),
        Err(e) => {
            let _ = std::fs::remove_dir(path);
            Err(e)
        }
    }
}

fn write_record(path: &Utf8Path, record: &OwnerRecord) -> Result<()> {
    let target = record_path(path);
    let mut tmp = fs::private_file_builder(".owner.")
        .tempfile_in(path)
        .map_err(|e| Error::io(path, "create the owner record in", e))?;
    tmp.write_all(record.to_json().as_bytes())
        .map_err(|e| Error::io(&target, "write owner record", e))?;
    tmp.persist(&target)
        .map_err(|e| Error::io(&target, "move owner record into place at", e.error))?;
    Ok(())
}

fn read_current(path: &Utf8Path) -> Result<Option<OwnerRecord>> {
    let target = record_path(path);
    match fs::open_read(&target) {
        Ok(file) => read_record(file).map_err(|e| Error::io(&target, "read owner record", e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fs::io_error(&target, "open owner record", e)),
    }
}

pub(crate) fn release(path: &Utf8Path, held: Held) -> Result<()> {
    let current = match fs::lkind(path) {
        Ok(Some(FileKind::Directory)) => read_current(path)?,
        Ok(_) => return Err(lost(path, None)),
        Err(e) => return Err(Error::io(path, "inspect lock directory", e)),
    };
    match current {
        Some(rec) if rec.token == held.token => {}
        other => return Err(lost(path, other)),
    }
    let target = record_path(path);
    std::fs::remove_file(&target).map_err(|e| Error::io(&target, "remove owner record", e))?;
    std::fs::remove_dir(path).map_err(|e| Error::io(path, "remove lock directory", e))
}

pub(crate) fn probe(path: &Utf8Path) -> Result<Probe> {
    match fs::lkind(path) {
        Ok(None) => {
            if path.parent().is_some_and(|p| !p.is_dir()) {
                Err(Error::MissingParent {
                    path: path.to_owned(),
                })
            } else {
                Ok(Probe::Free)
            }
        }
        Ok(Some(FileKind::Directory)) => Ok(Probe::Held(read_current(path)?)),
        Ok(Some(found)) => Err(fs::wrong_kind(
            path,
            LockStrategy::Mkdir,
            FileKind::Directory,
            found,
        )),
        Err(e) => Err(Error::io(path, "inspect lock directory", e)),
    }
}
