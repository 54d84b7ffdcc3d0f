//! Breaking a lock: a stale one while waiting or on request
//! ([`LockFile::break_lock`]), any one on an operator's word
//! ([`LockFile::force_break`]), and letting go without releasing
//! ([`LockFile::detach`], [`LockFile::release_for`]). The rules that judge
//! a lock stale live in [`crate::stale`].

use crate::error::{Error, Op, Result};
use crate::fault;
use crate::files;
use crate::owner::OwnerRecord;
use crate::registry::registry;
use crate::stale::{judge, LastSeen, Verdict};
use crate::strategy::{self, Broken, Claim, Probe, Seen};
use crate::vocab::{Breaking, Concrete, LockStrategy};

use super::LockFile;

/// Why a `Link` lock whose claim a remover of another machine took is not
/// broken.
const UNJUDGED: &str = "its claim was taken by a remover of another machine (or PID \
     namespace), which may still be removing it; once it is known to have stopped, \
     remove its file `.<name>.<token>.owner.taken.*` beside the lock and break again";

impl LockFile {
    /// Breaks the lock if it is stale, and returns the owner record it
    /// removed (`None` if the lock was free, or the artifact had no
    /// readable record).
    ///
    /// Stale means: the owner is dead (same host, boot and PID namespace;
    /// PID gone or reused); or its lease went unrefreshed for a whole lease;
    /// or a `Mkdir` directory has no readable record for the grace period.
    /// To judge a lease or a grace period this call watches the lock, on
    /// this process's clock, for up to that long. Breaking is safe when
    /// many processes try at once: exactly one removes the stale lock, and
    /// a lock taken afresh meanwhile is never removed (the protocol is
    /// argued in [`stale`](crate::stale)).
    ///
    /// A lock that only readers hold ([`lock_shared`](LockFile::lock_shared)
    /// on `Mkdir` or `Link`) has its stale readers' registrations broken
    /// (by the same rules), and is [`Error::NotStale`] if live readers
    /// remain; [`force_break`](LockFile::force_break) removes every
    /// reader's.
    ///
    /// For `Link`, breaking (or finding the lock free) also removes the
    /// private files that killed processes of this machine left beside the
    /// lock: claims never linked and taken names never removed.
    ///
    /// # Errors
    ///
    /// [`Error::NotStale`] if the lock is held by a live owner, by an owner
    /// of another host without a lease, or is an `Os` lock (which the
    /// kernel releases); [`Error::Foreign`] for an artifact portalock cannot
    /// identify as its own; the typed path errors and [`Error::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("x.lock");
    /// let holder = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// holder.acquire()?;
    ///
    /// // Its owner (this process) is alive: not broken.
    /// let other = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// assert!(matches!(other.break_lock(), Err(Error::NotStale { .. })));
    ///
    /// // Forced, it goes; the holder finds out.
    /// let removed = other.force_break()?.expect("the holder's record");
    /// assert_eq!(removed.pid, std::process::id());
    /// assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    /// assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn break_lock(&self) -> Result<Option<OwnerRecord>> {
        self.break_with(Breaking::IfStale)
    }

    /// Breaks the lock whatever its owner's state, and returns the owner
    /// record it removed, as [`break_lock`](LockFile::break_lock) does.
    ///
    /// This is for an operator who knows the holder is gone when portalock
    /// cannot tell (another host without a lease). A live holder loses its
    /// lock and finds out only when it next checks. The removal is as safe
    /// under races as `break_lock`'s.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for an `Os` lock held by a process (only the
    /// kernel releases it); [`Error::Foreign`] for an artifact portalock
    /// cannot identify as its own; the typed path errors and [`Error::Io`].
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockStatus, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("x.lock");
    /// let operator = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// assert_eq!(operator.force_break()?, None); // free: nothing to break
    ///
    /// let holder = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// holder.acquire()?;
    /// let removed = operator.force_break()?.expect("the holder's record");
    /// assert_eq!(removed.pid, std::process::id());
    /// assert_eq!(operator.status()?, LockStatus::Free);
    /// assert!(holder.is_held()); // it learns of the loss when it checks
    /// assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    ///
    /// // Only the kernel releases an `Os` lock.
    /// let os_path = dir.path().join("os.lock");
    /// let os_holder = LockFile::with_strategy(&os_path, LockStrategy::Os)?;
    /// let _guard = os_holder.lock()?;
    /// let os_operator = LockFile::with_strategy(&os_path, LockStrategy::Os)?;
    /// assert!(matches!(os_operator.force_break(), Err(Error::Unsupported { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn force_break(&self) -> Result<Option<OwnerRecord>> {
        self.break_with(Breaking::Forced)
    }

    /// Lets go of the lock this handle holds without releasing it: the lock
    /// stays held after the handle (and the process) is gone, until it is
    /// released with [`release_for`](LockFile::release_for) or broken as
    /// stale once its owner ([`LockOptions::on_behalf_of`](super::LockOptions::on_behalf_of)) has exited.
    /// Returns the lock's owner record. A lease is no longer refreshed.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if the handle holds nothing;
    /// [`Error::Unsupported`] for an [`Os`](LockStrategy::Os) lock, which
    /// the kernel releases when this process exits (the handle keeps it).
    ///
    /// # Examples
    ///
    /// What `portalock acquire` does: take a lock for its parent (a shell
    /// script) and exit, leaving the lock held.
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("script.lock");
    /// // The process the lock is for; here this one (`portalock acquire`
    /// // names its parent).
    /// let script = std::process::id();
    /// let lock = LockOptions::new()
    ///     .strategy(LockStrategy::Mkdir)
    ///     .on_behalf_of(script)
    ///     .open(&path)?;
    /// lock.acquire()?;
    /// let record = lock.detach()?;
    /// assert_eq!(record.pid, script);
    /// assert!(!lock.is_held()); // the handle lets go ...
    /// drop(lock);
    ///
    /// // ... but the lock stays, held for `script` while it runs.
    /// let other = LockFile::with_strategy(&path, LockStrategy::Mkdir)?;
    /// assert!(matches!(other.try_acquire(), Err(Error::WouldBlock { .. })));
    /// assert!(matches!(other.break_lock(), Err(Error::NotStale { .. })));
    /// other.release_for(script)?;
    /// other.try_acquire()?;
    /// # other.release()?;
    ///
    /// // An `Os` lock (what `Auto` picks on a local disk) cannot outlive its
    /// // process: refused, and still held.
    /// let os_lock = LockFile::with_strategy(dir.path().join("os.lock"), LockStrategy::Os)?;
    /// os_lock.acquire()?;
    /// assert!(matches!(os_lock.detach(), Err(Error::Unsupported { .. })));
    /// assert!(os_lock.is_held());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detach(&self) -> Result<OwnerRecord> {
        let mut state = self.state();
        if state.is_none() {
            return Err(self.not_locked());
        }
        if self.strategy == Concrete::Os {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                strategy: LockStrategy::Os,
                reason: "an OS lock cannot outlive the process that holds it; use mkdir or link"
                    .to_owned(),
            });
        }
        let holding = state.take().ok_or_else(|| self.not_locked())?;
        drop(state);
        // Mkdir and Link artifacts stay until removed: dropping the proof
        // of holding releases nothing.
        drop(holding.take());
        registry().leave(&self.path, self.id);
        Ok(holding.record())
    }

    /// Releases a lock held on behalf of the process `pid` of this machine
    /// (see [`LockOptions::on_behalf_of`](super::LockOptions::on_behalf_of) and [`detach`](LockFile::detach)),
    /// whichever process took it. Returns the removed owner record.
    ///
    /// Removes exactly the lock it looked at, and only if its record names
    /// `pid` on this host: a lock taken afresh meanwhile by anyone else is
    /// left alone.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if the lock is free; [`Error::NotOwner`] if it
    /// is held for another process (or its record is unreadable);
    /// [`Error::Unsupported`] for an [`Os`](LockStrategy::Os) lock.
    ///
    /// # Examples
    ///
    /// What `portalock release` does for a lock that `portalock acquire`
    /// took for a script (see [`detach`](LockFile::detach)):
    ///
    /// ```
    /// use portalock::{Error, LockFile, LockOptions, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("script.lock");
    /// let script = std::process::id();
    /// let taker = LockOptions::new()
    ///     .strategy(LockStrategy::Link)
    ///     .on_behalf_of(script)
    ///     .open(&path)?;
    /// taker.acquire()?;
    /// let taken = taker.detach()?;
    ///
    /// let releaser = LockFile::with_strategy(&path, LockStrategy::Link)?;
    /// // Held for `script`, not for another process: left alone.
    /// assert!(matches!(
    ///     releaser.release_for(script.wrapping_add(1)),
    ///     Err(Error::NotOwner { .. })
    /// ));
    /// assert_eq!(releaser.release_for(script)?.token, taken.token);
    /// assert!(matches!(releaser.release_for(script), Err(Error::NotLocked { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_for(&self, pid: u32) -> Result<OwnerRecord> {
        // A lock taken afresh each time we look is plainly not ours.
        for _ in 0..64 {
            let seen = match strategy::probe(self.strategy, &self.path)? {
                Probe::Free => return Err(self.not_locked()),
                Probe::Held(seen) => *seen,
            };
            // The whole identity, not the PID alone: a PID of another PID
            // namespace (a container), of another boot, or of an earlier
            // process that had the same PID is another process.
            let record = match &seen.record {
                Some(r) if r.is_held_for(pid) => r.clone(),
                other => {
                    return Err(Error::NotOwner {
                        path: self.path.clone(),
                        pid,
                        holder: other.clone().map(Box::new),
                    })
                }
            };
            match self.break_seen(&seen, Breaking::IfStale)? {
                Broken::Removed => return Ok(record),
                Broken::Raced => std::thread::yield_now(),
                Broken::Unjudged => {
                    return Err(Error::NotStale {
                        path: self.path.clone(),
                        why: UNJUDGED,
                        holder: Some(Box::new(record)),
                    })
                }
                Broken::Orphan => {
                    return Err(Error::NotStale {
                        path: self.path.clone(),
                        why: "its claim file is missing; only force_break recovers it",
                        holder: Some(Box::new(record)),
                    })
                }
            }
        }
        Err(Error::NotOwner {
            path: self.path.clone(),
            pid,
            holder: strategy::probe(self.strategy, &self.path)
                .ok()
                .and_then(Probe::into_record)
                .map(Box::new),
        })
    }

    /// One look at a held lock while waiting: breaks it if it is stale.
    /// Returns whether to try again at once (broken, or free meanwhile).
    pub(super) fn break_if_stale(&self, last_seen: &mut LastSeen) -> Result<bool> {
        let seen = match strategy::probe(self.strategy, &self.path) {
            Ok(Probe::Held(seen)) => seen,
            Ok(Probe::Free) => return Ok(true),
            // The lock changed under the look (a stale NFS handle, say):
            // look again at the next poll.
            Err(e) if e.io_error().is_some_and(files::is_transient) => return Ok(false),
            Err(e) => return Err(e),
        };
        let unchanged = last_seen.observe(&seen);
        let verdict = judge(&seen, unchanged, self.grace, self.writers());
        if !verdict.is_stale() {
            return Ok(false);
        }
        if let Err(e) = fault::point("break.judged") {
            return Err(Error::io(&self.path, Op::Break, e));
        }
        // An orphan (a Link lock whose claim is gone) is recovered only
        // through the taken name of its dead remover; without one, only
        // `force_break` recovers it (concurrent recoverers could collide).
        match self.break_seen(&seen, Breaking::IfStale) {
            Ok(Broken::Removed) => {
                self.log_break(&seen, Breaking::IfStale, verdict);
                Ok(true)
            }
            Ok(Broken::Raced) => Ok(true),
            Ok(Broken::Orphan | Broken::Unjudged) => Ok(false),
            // Something in the way for a moment (on Windows, a name another
            // process has open): look again at the next poll.
            Err(e) if e.io_error().is_some_and(files::is_transient) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn break_with(&self, breaking: Breaking) -> Result<Option<OwnerRecord>> {
        // Each race lost means the lock changed under us; after this many
        // the lock is plainly busy, and taken afresh each time.
        const MAX_RACES: u32 = 64;
        let mut last_seen = LastSeen::default();
        let mut races = 0;
        let mut watching = false;
        // A forced break removes the acquisition it looked at first and no
        // other: if that one goes away meanwhile, a new holder's lock is
        // left alone (its owner was never shown to the caller).
        let mut judged: Option<Claim> = None;
        loop {
            let seen = match strategy::probe(self.strategy, &self.path)? {
                Probe::Free => {
                    strategy::sweep(self.strategy, &self.path, self.writers());
                    // Held by readers only: theirs are the registrations
                    // to break.
                    return self.break_readers(breaking);
                }
                Probe::Held(seen) => *seen,
            };
            let not_stale = |why| Error::NotStale {
                path: self.path.clone(),
                why,
                holder: seen.record.clone().map(Box::new),
            };
            if breaking == Breaking::Forced {
                match &judged {
                    None => judged = Some(seen.claim.clone()),
                    Some(first) if *first != seen.claim => {
                        return Err(not_stale(
                            "the lock it looked at was released and taken afresh while it was \
                             being broken; the new holder's lock was left alone",
                        ))
                    }
                    Some(_) => {}
                }
            }
            let unchanged = last_seen.observe(&seen);
            if watching && unchanged.is_zero() {
                // A lease refreshed, a record written, or a new holder: the
                // lock showed life while we watched it.
                return Err(not_stale("it changed while it was watched"));
            }
            let verdict = if breaking == Breaking::Forced {
                Verdict::Dead
            } else {
                judge(&seen, unchanged, self.grace, self.writers())
            };
            match verdict {
                Verdict::Live(why) => return Err(not_stale(why)),
                Verdict::Pending(left) => {
                    watching = true;
                    std::thread::sleep(left.min(self.poll_interval));
                    continue;
                }
                _ => {}
            }
            let step = if breaking == Breaking::Forced {
                "force.judged"
            } else {
                "break.judged"
            };
            fault::point(step).map_err(|e| Error::io(&self.path, Op::Break, e))?;
            match self.break_seen(&seen, breaking)? {
                Broken::Removed => {
                    self.log_break(&seen, breaking, verdict);
                    return Ok(seen.record);
                }
                Broken::Raced if races < MAX_RACES => {
                    races += 1;
                    watching = false;
                    last_seen = LastSeen::default();
                    std::thread::yield_now();
                }
                Broken::Raced => {
                    return Err(not_stale("it was taken afresh each time it was broken"))
                }
                Broken::Orphan => {
                    return Err(not_stale(
                        "its claim file is missing; only force_break recovers it",
                    ))
                }
                Broken::Unjudged => return Err(not_stale(UNJUDGED)),
            }
        }
    }

    /// Says through the `log` facade that this process broke `seen`: a
    /// warning, since another process's lock was removed.
    fn log_break(&self, seen: &Seen, breaking: Breaking, verdict: Verdict) {
        let holder = crate::error::holder_suffix(seen.record.as_ref());
        match breaking {
            Breaking::Forced => log::warn!(
                target: "portalock",
                "force-broke the lock {} held{holder} ({} lock)",
                self.path,
                crate::LockStrategy::from(self.strategy)
            ),
            Breaking::IfStale => log::warn!(
                target: "portalock",
                "broke the stale lock {} held{holder}: {} ({} lock)",
                self.path,
                verdict.why(),
                crate::LockStrategy::from(self.strategy)
            ),
        }
    }

    /// Removes the acquisition `seen` (judged stale, or `breaking` says
    /// forced) if it is still the lock, with the rules of this lock's
    /// strategy and file system.
    fn break_seen(&self, seen: &Seen, breaking: Breaking) -> Result<Broken> {
        strategy::break_claim(self.strategy, &self.path, seen, breaking, self.writers())
    }
}
