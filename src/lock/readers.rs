//! Readers of a `Mkdir` or `Link` lock ([`LockFile::lock_shared`]): a
//! readers-writer lock built of the lock itself and one registration per
//! reader, safe on network file systems and when readers crash.
//!
//! # The protocol
//!
//! Beside the lock, the directory `.<name>.readers` holds one registration
//! per reader: a `Mkdir` lock of its own, `.<name>.readers/<token>`, with
//! the reader's owner record inside.
//!
//! - **A reader** takes the lock itself (as a writer would, through its
//!   queue, breaking it if stale), makes the readers directory if needed,
//!   takes its registration (try-once: the name is new), checks that it
//!   still holds the lock, and releases the lock. It is a reader until its
//!   registration is released or broken.
//! - **A writer** takes the lock and, holding it, removes the readers
//!   directory with `rmdir`. That succeeds (or finds no directory) only
//!   when no registration is in it; then the writer holds the lock alone.
//!   While registrations remain, it judges each by the stale rules of any
//!   holder (dead PID, expired lease, a registration without a record past
//!   the grace period), breaks the stale ones, and waits for the rest to
//!   go, still holding the lock.
//!
//! # Why it is safe
//!
//! A reader registers only while it holds the lock, and checks that it
//! still does after its registration is complete. A writer's `rmdir`
//! happens while it holds the lock, after it took it: so after the
//! reader's check, whose success means nobody had taken the lock from it
//! yet. Every registration made by a reader that returned is therefore in
//! the directory when a later writer's `rmdir` runs, and the `rmdir`
//! fails. The emptiness test is the server's own: `rmdir` is answered by
//! the file server on NFS and SMB, never from a client's cache, unlike a
//! listing (which a writer uses only to find whom to judge). A reader
//! whose lock was broken while it registered (it was paused past its
//! lease) removes its registration and starts again.
//!
//! A registration is broken by exactly the rules, and the code, that break
//! a stale holder, with the same safety under races: a reader that
//! crashed does not keep a writer out past those rules, and a live one is
//! never broken. A reader with a lease refreshes its registration as a
//! holder refreshes its lock; losing it (broken) makes its guard's
//! [`ensure_held`](super::SharedGuard::ensure_held) and release say
//! [`Error::LockLost`].
//!
//! # Order
//!
//! A writer waits holding the lock, so readers that come after it wait
//! behind it in the lock's queue: writers are not starved by a stream of
//! readers (writer preference); a writer waits at most for the readers
//! that were in when it came. Readers and writers otherwise pass in the
//! order of the lock's queue.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::owner::OwnerRecord;
use crate::stale::LastSeen;
use crate::strategy::{self, Probe};
use crate::sys::{Armed, LockWatch};
use crate::vocab::{Breaking, LockStrategy};
use crate::wait::{Backoff, Deadline};

use super::release::Keep;
use super::LockFile;

/// The readers directory beside the lock at `path`.
pub(crate) fn readers_dir(path: &Utf8Path) -> Option<Utf8PathBuf> {
    let dir = path.parent()?;
    let prefix = strategy::private_prefix(path)?;
    Some(dir.join(format!("{prefix}readers")))
}

/// Whether the readers directory `dir` holds anything but what a network
/// client leaves of unlinked files.
pub(crate) fn any_registered(dir: &Utf8Path) -> bool {
    files::read_dir(dir).is_ok_and(|mut entries| {
        entries.any(|entry| {
            entry.is_ok_and(|e| !e.file_name().to_str().is_some_and(files::is_silly_renamed))
        })
    })
}

/// The UTF-8 names in the readers directory `dir` but what a network
/// client leaves of unlinked files; none if there is no directory.
fn registered_names(dir: &Utf8Path) -> Result<Vec<String>> {
    let entries = match files::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, Op::List, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, Op::List, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if !files::is_silly_renamed(name) {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// Whether `e` says a directory is not empty (`ENOTEMPTY`, or `EEXIST`,
/// which POSIX allows for it).
fn not_empty(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::DirectoryNotEmpty || e.kind() == io::ErrorKind::AlreadyExists
}

impl LockFile {
    /// The readers directory of this lock.
    fn readers_path(&self) -> Result<Utf8PathBuf> {
        readers_dir(&self.path).ok_or_else(|| {
            Error::io(
                &self.path,
                Op::UseAsLockPath,
                io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
            )
        })
    }

    /// A handle on the registration at `path`: a `Mkdir` lock judged by
    /// this lock's rules, that waits for no readers of its own.
    fn registration(&self, path: &Utf8Path) -> Result<LockFile> {
        let mut options = LockFile::options();
        options
            .strategy(LockStrategy::Mkdir)
            .timeout(Some(Duration::ZERO))
            .poll_interval(self.poll_interval)
            .fair(false)
            .break_stale(self.break_stale)
            .grace(self.grace)
            .sync(self.sync);
        if let Some(lease) = self.lease {
            options.lease(lease);
        }
        if let Some(pid) = self.owner_pid {
            options.on_behalf_of(pid);
        }
        if let Some(mode) = self.permissions {
            options.permissions(mode);
        }
        if let Some(on_lost) = self.on_lost.clone() {
            let lock = self.path.clone();
            options.on_lost(move |_| on_lost(&lock));
        }
        let mut handle = options.open(path)?;
        handle.readers = false;
        // Judged as the lock is: by this lock's file system.
        let _ = handle.look.set(self.look());
        Ok(handle)
    }

    /// Takes the lock as a reader: the lock itself, a registration, the
    /// lock let go (see the module docs). Returns the registration, held.
    pub(super) fn register_reader(&self, timeout: Option<Duration>) -> Result<LockFile> {
        let deadline = Deadline::after(timeout).or_cancelled(self.cancel.as_ref());
        let dir = self.readers_path()?;
        loop {
            let token = self.acquire_token_as(deadline.remaining(), None, false)?;
            let registered = self.make_registration(&dir).and_then(|registration| {
                fault::point("readers.registered")
                    .map_err(|e| Error::io(&self.path, Op::Register, e))?;
                // Still ours after the registration is complete: every
                // writer after this moment finds it.
                self.ensure_held()?;
                Ok(registration)
            });
            // Let go in any case; a release that fails for a moment is
            // finished in the background (the registration stands: it was
            // made while the lock was this handle's).
            let released = self.release_token(&token, Keep::Background);
            match registered {
                Ok(registration) => {
                    if let Err(e) = released {
                        log::debug!(target: "portalock", "{e}");
                    }
                    // Stopped after its check for longer than its leases,
                    // its registration may have been broken meanwhile.
                    match registration.ensure_held() {
                        Err(Error::LockLost { .. }) if !deadline.expired() => continue,
                        Err(Error::LockLost { .. }) => return Err(self.contended(timeout)),
                        _ => return Ok(registration),
                    }
                }
                // Broken while registering (paused past its lease): the
                // registration is dropped (released), and the reader starts
                // again while its wait lasts.
                Err(Error::LockLost { .. }) if !deadline.expired() => continue,
                Err(Error::LockLost { .. }) => return Err(self.contended(timeout)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the readers directory if needed and takes a new registration
    /// in it.
    fn make_registration(&self, dir: &Utf8Path) -> Result<LockFile> {
        let token = crate::owner::new_token().map_err(|e| Error::io(dir, Op::MakeRecord, e))?;
        let registration = self.registration(&dir.join(&token))?;
        // A reader that leaves removes the directory if it is empty (see
        // `SharedGuard`'s release), without the lock: it may go between
        // this `mkdir` and the registration's. Made again then.
        let mut tries = 0;
        loop {
            match files::create_dir(dir) {
                Ok(()) => {
                    if let Some(mode) = self.permissions {
                        files::set_dir_mode(dir, mode);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(dir, Op::Register, e)),
            }
            match registration.try_acquire() {
                Err(Error::MissingParent { .. }) if tries < 16 => tries += 1,
                // On NFS the same race can read as a plain ENOENT from the
                // registration's `mkdir` (the parent looked up from a
                // cache that still had it): made again, the same way.
                Err(Error::Io { cause, .. })
                    if cause.kind() == io::ErrorKind::NotFound && tries < 16 =>
                {
                    tries += 1;
                }
                other => return other.map(|()| registration),
            }
        }
    }

    /// Holding the lock as a writer, waits until no reader is registered
    /// (the readers directory removed), breaking stale registrations, until
    /// `deadline`. Returns the contended error (naming a reader) if
    /// readers remain when it passes.
    pub(super) fn drain_readers(
        &self,
        timeout: Option<Duration>,
        deadline: &Deadline,
    ) -> Result<()> {
        let dir = self.readers_path()?;
        let mut judged: HashMap<String, (LockFile, LastSeen)> = HashMap::new();
        let mut backoff = Backoff::new(self.poll_interval);
        let mut watch: Option<Option<LockWatch>> = None;
        let mut quick = 0;
        let mut first = true;
        loop {
            if !first {
                // Waiting for readers may outlast this writer's lease: it
                // goes on only while the lock is still its own.
                self.ensure_held()?;
            }
            match files::remove_dir(&dir) {
                Ok(()) if first => return Ok(()),
                // (and still its own once the readers are gone)
                Ok(()) => return self.ensure_held(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if not_empty(&e) || files::is_transient(&e) => {}
                // A directory another user made, in a directory with the
                // sticky bit (`/tmp`, `/var/lock`): on a local disk its
                // listing is the truth.
                Err(e)
                    if e.kind() == io::ErrorKind::PermissionDenied || crate::sys::is_eperm(&e) =>
                {
                    if self.writers() != crate::vocab::Writers::ThisMachine {
                        return Err(Error::io(&dir, Op::Readers, e));
                    }
                    if !any_registered(&dir) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(Error::io(&dir, Op::Readers, e)),
            }
            first = false;
            fault::point("readers.draining").map_err(|e| Error::io(&self.path, Op::Readers, e))?;
            let live = match self.judge_readers(&dir, &mut judged)? {
                // One was broken, or went: look again at once, a few times
                // (a network client's listing may show what is gone).
                None if quick < 3 => {
                    quick += 1;
                    continue;
                }
                None => None,
                Some(live) => live,
            };
            let Some(nap) = backoff.next(deadline) else {
                if deadline.cancelled() {
                    return Err(Error::Cancelled {
                        lock: self.path.clone().into(),
                    });
                }
                let holder = live.and_then(|reader| reader.owner().ok().flatten());
                return Err(Error::contended(
                    self.path.clone(),
                    timeout,
                    holder.map(Box::new),
                ));
            };
            // Wake when a reader leaves (its registration removed), or at
            // the next poll.
            let watch = watch.get_or_insert_with(LockWatch::new);
            let armed = match (watch.as_mut(), live) {
                (Some(watch), Some(reader)) => watch.arm(&reader.path, true),
                _ => Armed::Failed,
            };
            match (armed, watch.as_ref()) {
                (Armed::Watching, Some(watch)) => deadline.wait_for(nap, |slice| watch.wait(slice)),
                (Armed::Absent, _) => {}
                _ => deadline.sleep(nap),
            }
            quick = 0;
        }
    }

    /// Judges the registrations listed in `dir`, breaking stale ones.
    /// `None` if one was broken or is gone (look again at once); else the
    /// first live one, if the listing showed any (a network client's
    /// listing may lag behind the server's `rmdir`).
    fn judge_readers<'a>(
        &self,
        dir: &Utf8Path,
        judged: &'a mut HashMap<String, (LockFile, LastSeen)>,
    ) -> Result<Option<Option<&'a LockFile>>> {
        let entries = match files::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if files::is_transient(&e) => return Ok(Some(None)),
            Err(e) => return Err(Error::io(dir, Op::List, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                // As for the open: a directory made again by another client
                // meanwhile (`ESTALE`) is looked at again at the next poll.
                Err(e) if files::is_transient(&e) => return Ok(Some(None)),
                Err(e) => return Err(Error::io(dir, Op::List, e)),
            };
            // A name that is not UTF-8 is no reader's registration.
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(Error::Foreign {
                    path: dir.to_owned(),
                });
            };
            if files::is_silly_renamed(&name) {
                // What a client left of a record unlinked while open: a
                // stale record, never a registration. Removing it can only
                // fail (in use on this client), never harm.
                let _ = files::remove_file(dir.join(&name));
                continue;
            }
            names.push(name);
        }
        judged.retain(|name, _| names.contains(name));
        let mut first_live = None;
        for name in names {
            if !judged.contains_key(&name) {
                let handle = self.registration(&dir.join(&name))?;
                judged.insert(name.clone(), (handle, LastSeen::default()));
            }
            let Some((handle, seen)) = judged.get_mut(&name) else {
                continue;
            };
            let gone = if self.break_stale {
                handle.break_if_stale(seen)
            } else {
                strategy::probe(handle.strategy, &handle.path).map(|p| matches!(p, Probe::Free))
            };
            match gone {
                Ok(false) => {}
                Ok(true) => return Ok(None),
                // The last reader left and removed the directory.
                Err(Error::MissingParent { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
            first_live.get_or_insert(name);
        }
        Ok(Some(
            first_live.and_then(|name| judged.get(&name).map(|(h, _)| h)),
        ))
    }

    /// Breaks the registrations of this lock's readers (a lock that only
    /// readers hold): the stale ones, or, `Forced`, all. Returns the first
    /// record removed; `NotStale`, naming a reader, if live readers remain
    /// and none was removed.
    pub(super) fn break_readers(&self, breaking: Breaking) -> Result<Option<OwnerRecord>> {
        if !self.readers {
            return Ok(None);
        }
        let dir = self.readers_path()?;
        let mut removed = None;
        let mut live = None;
        for name in registered_names(&dir)? {
            let registration = self.registration(&dir.join(&name))?;
            let broke = match breaking {
                Breaking::IfStale => registration.break_lock(),
                Breaking::Forced => registration.force_break(),
            };
            match broke {
                Ok(Some(record)) => {
                    removed.get_or_insert(record);
                }
                Ok(None) => {}
                Err(Error::NotStale { holder, .. }) => {
                    live.get_or_insert(holder);
                }
                // Gone meanwhile, with the directory.
                Err(Error::MissingParent { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // (an empty directory only)
        let _ = files::remove_dir(&dir);
        match (removed, live) {
            (Some(record), _) => Ok(Some(record)),
            (None, Some(holder)) => Err(Error::NotStale {
                path: self.path.clone(),
                why: "readers hold it, and none of them is stale",
                holder,
            }),
            (None, None) => Ok(None),
        }
    }

    /// The owner records of this lock's registered readers (`Mkdir` and
    /// `Link` locks; `None` for a registration whose record cannot be
    /// read).
    pub(super) fn reader_records(&self) -> Result<Vec<Option<OwnerRecord>>> {
        if !self.readers {
            return Ok(Vec::new());
        }
        let dir = self.readers_path()?;
        let mut records = Vec::new();
        for name in registered_names(&dir)? {
            match strategy::probe(crate::vocab::Concrete::Mkdir, &dir.join(&name)) {
                Ok(Probe::Held(seen)) => records.push(seen.record),
                // Gone meanwhile, or not a registration: not a reader.
                Ok(Probe::Free) | Err(_) => {}
            }
        }
        Ok(records)
    }
}
