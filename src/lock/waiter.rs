//! The wait for a lock: try, and while another process holds it, judge
//! the holder, break the lock if it is stale, and sleep until the next try
//! or until a watch on the lock's directory sees a change; go on through
//! errors that may pass on a network file system.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Op, Result};
use crate::files;
use crate::holding::{self, Holding};
use crate::owner::OwnerRecord;
use crate::registry::registry;
use crate::stale::LastSeen;
use crate::strategy::{self, Hold};
use crate::sys::{Armed, LockWatch, Wait};
use crate::vocab::{Concrete, Writers};
use crate::wait::{Backoff, CancelToken, Deadline};

use super::fence;
#[cfg(feature = "tokio")]
use super::guard::LockGuard;
use super::release::Keep;
use super::report;
use super::turnstile::{AtGate, Turnstile};
use super::LockFile;

/// How long a wait goes on through errors of a network server out of
/// reach (see [`LockFile::acquire`]): longer than a server restart with
/// its grace period.
const SERVER_PATIENCE: Duration = Duration::from_secs(120);

/// Breaks in a row, without a sleep between them, after which a wait
/// sleeps anyway: a lock that keeps looking breakable without giving way
/// (a claim that is not the lock's own, say) must not make it spin.
const QUICK_BREAKS: u32 = 3;

/// Errors that may pass, retried in a row after a short pause (2, 4 and
/// 8 ms), even by a try-once acquire: such an error says nothing about
/// the lock.
const QUICK_RETRIES: u32 = 3;

impl LockFile {
    /// Takes the lock and returns the token of its owner record.
    pub(super) fn acquire_token(&self, timeout: Option<Duration>) -> Result<String> {
        self.acquire_token_until(timeout, None)
    }

    /// As [`acquire_token`](LockFile::acquire_token), and the wait also
    /// ends when `cancel` (or the handle's token) is cancelled.
    pub(super) fn acquire_token_until(
        &self,
        timeout: Option<Duration>,
        cancel: Option<&CancelToken>,
    ) -> Result<String> {
        self.acquire_token_as(timeout, cancel, true)
    }

    /// As [`acquire_token_until`](LockFile::acquire_token_until); a
    /// writer (`writer`) then also waits, holding the lock, until no reader
    /// holds it (see [`super::readers`]), while a reader about to register
    /// does not.
    pub(super) fn acquire_token_as(
        &self,
        timeout: Option<Duration>,
        cancel: Option<&CancelToken>,
        writer: bool,
    ) -> Result<String> {
        let deadline = Deadline::after(timeout)
            .or_cancelled(self.cancel.as_ref())
            .or_cancelled(cancel);
        if deadline.cancelled() {
            return Err(self.cancelled());
        }
        // A handle that holds the lock waits for itself, as a
        // non-reentrant lock does; but one whose lock was lost meanwhile
        // (broken, or its lease ran out) holds nothing: it says so, once,
        // and lets the acquisition go, so that the next acquire takes the
        // lock as any would.
        let holds = self.state().is_some();
        if holds {
            if let Err(lost @ Error::LockLost { .. }) = self.ensure_held() {
                let _ = self.release();
                return Err(lost);
            }
        }
        let reported = self.report_wait(timeout);
        loop {
            if !registry().enter(&self.path, self.id, &deadline) {
                return Err(self.contended_or_cancelled(timeout, &deadline));
            }
            let acquired = self.acquire_in_fs(timeout, &deadline);
            let (held, record) = match acquired {
                Ok(taken) => taken,
                Err(e) if e.is_contended() && deadline.cancelled() => {
                    registry().leave(&self.path, self.id);
                    return Err(self.cancelled());
                }
                Err(e) => {
                    registry().leave(&self.path, self.id);
                    return Err(e);
                }
            };
            let breakable = self.strategy != Concrete::Os;
            let holding = Holding::start(&self.path, held, record, self.on_lost.clone(), breakable);
            let token = holding.token().to_owned();
            *self.state() = Some(Arc::clone(&holding));
            if writer && self.readers {
                match self.drain_readers(timeout, &deadline) {
                    Ok(()) => {}
                    // Broken while it waited for the readers (its lease ran
                    // out, a forced break): not this writer's any more. It
                    // starts again while its wait lasts.
                    Err(Error::LockLost { .. }) => {
                        let _ = self.release_token(&token, Keep::Background);
                        if deadline.expired() {
                            return Err(self.contended_or_cancelled(timeout, &deadline));
                        }
                        continue;
                    }
                    Err(e) => {
                        // (a release that fails for a moment is finished in
                        // the background: the caller holds nothing)
                        let _ = self.release_token(&token, Keep::Background);
                        return Err(e);
                    }
                }
            }
            // The wait is over: no report starts from here on.
            drop(reported);
            if self.fencing && writer {
                self.give_fence(&holding)?;
            }
            return Ok(token);
        }
    }

    /// Moves the lock's fencing counter for the acquisition `holding`, just
    /// taken, then checks that the lock is still its own (see
    /// `lock::fence`); if not, or if the counter cannot move, the
    /// acquisition is let go and the error returned.
    fn give_fence(&self, holding: &Holding) -> Result<()> {
        let given = fence::next(&self.path, holding.token(), self.sync).and_then(|n| {
            self.ensure_held()?;
            Ok(n)
        });
        match given {
            Ok(n) => {
                let _ = holding.fence.set(n);
                Ok(())
            }
            Err(e) => {
                let _ = self.release();
                Err(e)
            }
        }
    }

    /// The error of a wait whose token was cancelled.
    fn cancelled(&self) -> Error {
        Error::Cancelled {
            lock: self.path.clone().into(),
        }
    }

    /// The error of a wait that ended with the lock held: cancelled, or
    /// busy.
    fn contended_or_cancelled(&self, timeout: Option<Duration>, deadline: &Deadline) -> Error {
        if deadline.cancelled() {
            self.cancelled()
        } else {
            self.contended(timeout)
        }
    }

    /// The handle's own cancel token, if its options gave one.
    pub(crate) fn cancel_token(&self) -> Option<&CancelToken> {
        self.cancel.as_ref()
    }

    /// The wait proper: tries, and between tries judges the holder,
    /// breaks a stale lock and sleeps, as its [`Waiter`] says.
    fn acquire_in_fs(
        &self,
        timeout: Option<Duration>,
        deadline: &Deadline,
    ) -> Result<(Hold, OwnerRecord)> {
        let mut record = OwnerRecord::for_process(self.strategy.into(), self.owner_pid)
            .map_err(|e| Error::io(&self.path, Op::MakeRecord, e))?;
        record.lease_ms = self.lease.map(|l| l.as_millis().max(1) as u64);
        let wait = if deadline.is_unbounded() && strategy::can_block(self.strategy) {
            Wait::Block
        } else {
            Wait::Try
        };
        // Taken out for the whole attempt (the registry lets one thread of
        // this process at a time take the lock) and put back on every exit.
        let mut cached = CachedFile {
            slot: &self.os_file,
            file: holding::lock(&self.os_file).take(),
        };
        let how = strategy::os::How {
            sync: self.sync,
            remove: self.remove_on_release,
            look: self.look(),
            mode: self.permissions,
        };
        let mut kept = KeptClaim::default();
        let mut waiter = Waiter::new(self, timeout, deadline);
        let mut gate = Turnstile::new(self);
        loop {
            if let AtGate::Held = gate.enter(deadline) {
                return Err(self.contended(timeout));
            }
            // Only the head of the queue blocks in the kernel: an
            // acquisition that would wait without the gate would not be
            // seen waiting.
            let wait_now = if gate.is_on() && !gate.holds() {
                Wait::Try
            } else {
                wait
            };
            match strategy::try_acquire(
                self.strategy,
                &self.path,
                &record,
                wait_now,
                how,
                &mut cached.file,
                &mut kept.0,
            ) {
                Ok(Some(held)) => {
                    gate.pass();
                    return Ok((held, record));
                }
                // Held: wait at the head of the queue (try again at once,
                // holding the gate), or behind whoever took the gate first.
                Ok(None) if gate.is_on() && !gate.holds() && !deadline.expired() => {
                    gate.claim();
                    continue;
                }
                Ok(None) => {
                    if waiter.busy(kept.0.is_some())? == Then::Slept {
                        record.touch();
                    }
                }
                Err(e) => waiter.failed(e)?,
            }
            // A new token for the next try, unless a kept claim bears this
            // one.
            if kept.0.as_ref().is_none_or(|k| k.token() != record.token) {
                record
                    .renew()
                    .map_err(|e| Error::io(&self.path, Op::MakeRecord, e))?;
            }
        }
    }

    /// Waits for the lock without blocking an async runtime: tries once,
    /// then sleeps between tries (backoff with jitter, at most the poll
    /// interval), until `timeout`. A `Mkdir` or `Link` wait on Linux
    /// sleeps on a watch of the lock registered with the runtime
    /// (`sys::AsyncLockWatch`), and so wakes when the lock is released; a
    /// wait for an `Os` lock on Unix has a thread of its own (one per
    /// lock file and process) wait in the kernel for the release
    /// (`sys::OsReleaseWake`), within the same backoff; elsewhere it
    /// wakes at the next poll. Dropping the
    /// future between two tries leaves nothing held. As the blocking wait
    /// does, it goes on through errors that may pass on a network file
    /// system (for `SERVER_PATIENCE` at most), and says the last of them if
    /// it ends while they last.
    #[cfg(feature = "tokio")]
    pub(super) async fn guard_within_async(
        &self,
        timeout: Option<Duration>,
    ) -> Result<LockGuard<'_>> {
        let _reported = self.report_wait(timeout);
        let deadline = Deadline::after(timeout).or_cancelled(self.cancel.as_ref());
        let mut backoff = Backoff::new(self.poll_interval);
        let mut failing: Option<(Instant, Error)> = None;
        // Made at the first sleep (an inotify instance is a per-user
        // resource): `None` until then, `Some(None)` where there is none.
        let mut watch: Option<Option<crate::sys::AsyncLockWatch>> = None;
        let mut absent = 0;
        #[cfg(unix)]
        let mut os_wake = crate::sys::OsReleaseWake::default();
        // Wake-ups in a row that found the lock free of an exclusive
        // holder but the try still busy (shared holders): after a few,
        // the backoff's sleep, so that readers do not make it spin.
        #[cfg(unix)]
        let mut quick_wakes = 0;
        loop {
            match self.acquire_token(Some(Duration::ZERO)) {
                Ok(token) => return Ok(LockGuard { lock: self, token }),
                Err(e) if e.is_contended() => failing = None,
                Err(e)
                    if (self.writers() == Writers::AnyMachine)
                        && e.io_error().is_some_and(files::is_transient) =>
                {
                    let since = failing
                        .as_ref()
                        .map_or_else(Instant::now, |(since, _)| *since);
                    if since.elapsed() >= SERVER_PATIENCE {
                        return Err(e);
                    }
                    failing = Some((since, e));
                }
                Err(e) => return Err(e),
            }
            let nap = backoff.next(&deadline);
            #[cfg(unix)]
            if let (Some(short), Concrete::Os, None) = (nap, self.strategy, &failing) {
                if quick_wakes < QUICK_BREAKS {
                    // Until the holder releases, or the backoff's nap
                    // passes (a wake-up that does not come, say for a file
                    // replaced under its holder, costs no more than the
                    // polling it replaces), in slices a token can cut.
                    let end = Instant::now().checked_add(short);
                    let mut free = false;
                    loop {
                        let left =
                            end.map_or(short, |end| end.saturating_duration_since(Instant::now()));
                        if left.is_zero() || deadline.cancelled() {
                            break;
                        }
                        let slice = deadline.slice(Some(left)).unwrap_or(left);
                        match os_wake.wait(&self.path, slice).await {
                            crate::sys::OsWoke::Waiting => {}
                            crate::sys::OsWoke::Released => break,
                            crate::sys::OsWoke::Free => {
                                free = true;
                                break;
                            }
                            crate::sys::OsWoke::Failed => {
                                deadline.sleep_async(short.min(left)).await;
                                break;
                            }
                        }
                    }
                    quick_wakes = if free { quick_wakes + 1 } else { 0 };
                } else {
                    quick_wakes = 0;
                    deadline.sleep_async(short).await;
                }
                continue;
            }
            if nap.is_some() && watch.is_none() {
                watch = Some(match self.strategy {
                    Concrete::Os => None,
                    Concrete::Mkdir | Concrete::Link => crate::sys::AsyncLockWatch::new(),
                });
            }
            match (nap, watch.as_mut().and_then(Option::as_mut)) {
                (Some(nap), Some(watch)) if failing.is_none() => {
                    match watch.arm(&self.path, self.strategy == Concrete::Mkdir) {
                        // As the blocking wait (see `Waiter::busy`): a
                        // `Link` lock's watch sees every release on a local
                        // file system; a `Mkdir` one's keeps the backoff.
                        Armed::Watching => {
                            let nap = if self.strategy == Concrete::Link
                                && self.writers() == Writers::ThisMachine
                            {
                                deadline
                                    .remaining()
                                    .map_or(self.poll_interval, |left| left.min(self.poll_interval))
                                    .max(nap)
                            } else {
                                nap
                            };
                            absent = 0;
                            watch.wait(nap).await;
                        }
                        // Just released: try again at once, a few times.
                        Armed::Absent if absent < QUICK_BREAKS => absent += 1,
                        Armed::Absent | Armed::Failed => deadline.sleep_async(nap).await,
                    }
                }
                (Some(nap), _) => deadline.sleep_async(nap).await,
                (None, _) => {
                    return Err(match failing {
                        Some((_, e)) => e,
                        None => self.contended_or_cancelled(timeout, &deadline),
                    })
                }
            }
        }
    }
}

impl LockFile {
    /// Reports a wait of `timeout` to the `on_wait` hook until dropped
    /// (not a try-once).
    pub(super) fn report_wait(&self, timeout: Option<Duration>) -> Option<report::Reported> {
        match &self.on_wait {
            Some(on_wait) if timeout != Some(Duration::ZERO) => {
                Some(report::start(&self.path, self.strategy, on_wait))
            }
            _ => None,
        }
    }
}

/// How often at most a handle's waits look for the claims that killed
/// `Link` waiters left (a directory listing).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl LockFile {
    /// A wait that keeps its `Link` claim while it sleeps (so that a
    /// waiter killed meanwhile leaves it) removes those that killed waiters
    /// left: before it goes to sleep (never between a release and its
    /// next try), once per [`SWEEP_EVERY`] per handle.
    fn sweep_killed_waiters(&self) {
        {
            let mut swept = holding::lock(&self.swept);
            if swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            *swept = Some(Instant::now());
        }
        strategy::sweep(self.strategy, &self.path, self.writers());
    }
}

/// What one wait remembers between two tries.
struct Waiter<'a> {
    lock: &'a LockFile,
    timeout: Option<Duration>,
    deadline: &'a Deadline,
    /// Whether a held lock is judged, and broken if stale (not for `Os`,
    /// which the kernel releases).
    may_break: bool,
    backoff: Backoff,
    /// What the stale judge has seen of the holder, and since when.
    seen: LastSeen,
    /// Breaks in a row without a sleep (see [`QUICK_BREAKS`]).
    quick_breaks: u32,
    /// Errors that may pass, in a row (see [`QUICK_RETRIES`]).
    retries: u32,
    /// Since when such errors have lasted past those retries.
    failing_since: Option<Instant>,
    wake: Wake,
    /// Tries in a row right after a watch found the lock's path empty.
    absent: u32,
}

/// How a waiter sleeps until the next try.
enum Wake {
    /// Not set up yet: the first sleep sets up a watch if it can.
    Unset,
    /// Until the lock is removed (a release), or the next poll.
    Watch(LockWatch),
    /// Until the next poll (an `Os` lock, or no watch to be had).
    Poll,
}

/// What a waiter did before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing: try again at once (after a break, or a release seen).
    TryNow,
    /// Slept until the next poll or a wake-up.
    Slept,
}

impl<'a> Waiter<'a> {
    fn new(lock: &'a LockFile, timeout: Option<Duration>, deadline: &'a Deadline) -> Self {
        Waiter {
            lock,
            timeout,
            deadline,
            may_break: lock.break_stale && !strategy::can_block(lock.strategy),
            backoff: Backoff::new(lock.poll_interval),
            seen: LastSeen::default(),
            quick_breaks: 0,
            retries: 0,
            failing_since: None,
            wake: Wake::Unset,
            absent: 0,
        }
    }

    /// After a try found the lock held: breaks it if stale, or sleeps.
    /// Fails with `WouldBlock` or `Timeout` once the deadline has passed.
    /// A wait that keeps its `Link` claim (`keeps_claim`) sweeps before it
    /// sleeps (see [`LockFile::sweep_killed_waiters`]).
    fn busy(&mut self, keeps_claim: bool) -> Result<Then> {
        let lock = self.lock;
        let sweep = || {
            if keeps_claim {
                lock.sweep_killed_waiters();
            }
        };
        self.retries = 0;
        self.failing_since = None;
        if self.may_break
            && self.quick_breaks < QUICK_BREAKS
            && self.lock.break_if_stale(&mut self.seen)?
        {
            self.quick_breaks += 1;
            return Ok(Then::TryNow);
        }
        let Some(nap) = self.backoff.next(self.deadline) else {
            return Err(self.lock.contended(self.timeout));
        };
        if let Wake::Unset = self.wake {
            // Wake on the release rather than at the next poll: watch the
            // lock itself.
            self.wake = match self.lock.strategy {
                Concrete::Os => Wake::Poll,
                Concrete::Mkdir | Concrete::Link => {
                    LockWatch::new().map_or(Wake::Poll, Wake::Watch)
                }
            };
        }
        match &mut self.wake {
            Wake::Watch(watch) => {
                // Armed on what the path names now: if that is the lock
                // that was just found held, its release wakes this waiter;
                // if it is a newer holder's, so does that one's; if nothing
                // is there, the lock was just released.
                match watch.arm(&self.lock.path, self.lock.strategy == Concrete::Mkdir) {
                    Armed::Watching => {
                        // A `Link` lock's watch sees every release on a
                        // local file system: no need to look before the
                        // next poll (the short first pauses of the backoff
                        // serve waits that cannot watch). A `Mkdir` lock
                        // directory's removal is told only once nobody
                        // has it open (a prober listing it), so those
                        // waits keep the backoff.
                        let nap = if self.lock.strategy == Concrete::Link
                            && self.lock.writers() == Writers::ThisMachine
                        {
                            self.deadline
                                .remaining()
                                .map_or(self.lock.poll_interval, |left| {
                                    left.min(self.lock.poll_interval)
                                })
                                .max(nap)
                        } else {
                            nap
                        };
                        // Armed first: a release meanwhile is not missed.
                        sweep();
                        // (in slices where a token can cancel the wait)
                        self.deadline.wait_for(nap, |slice| watch.wait(slice));
                    }
                    Armed::Absent if self.absent < QUICK_BREAKS => {
                        self.absent += 1;
                        return Ok(Then::TryNow);
                    }
                    Armed::Absent | Armed::Failed => {
                        sweep();
                        self.deadline.sleep(nap)
                    }
                }
            }
            Wake::Unset | Wake::Poll => {
                sweep();
                self.deadline.sleep(nap)
            }
        }
        self.absent = 0;
        self.quick_breaks = 0;
        Ok(Then::Slept)
    }

    /// After a try failed with `e`: pauses and returns `Ok` to try again if
    /// the error may pass, or returns it.
    fn failed(&mut self, e: Error) -> Result<()> {
        if !e.io_error().is_some_and(files::is_transient) {
            return Err(e);
        }
        // (a wait cancelled while the file system erred says so)
        if self.deadline.cancelled() {
            return Err(self.lock.cancelled());
        }
        if self.retries < QUICK_RETRIES {
            self.retries += 1;
            std::thread::sleep(Duration::from_millis(1 << self.retries));
            return Ok(());
        }
        // Still failing, on a network file system: a server restarting or
        // out of reach. A wait goes on through it, polling, until its
        // deadline or for `SERVER_PATIENCE` at most, and then says why it
        // could not look. (On a local disk such an error stays.)
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if self.lock.writers() == Writers::ThisMachine || since.elapsed() >= SERVER_PATIENCE {
            return Err(e);
        }
        let Some(nap) = self.backoff.next(self.deadline) else {
            return Err(e);
        };
        self.deadline.sleep(nap);
        Ok(())
    }
}

/// A handle's open `Os` lock file while an acquisition uses it; returned to
/// the handle when dropped.
struct CachedFile<'a> {
    slot: &'a Mutex<Option<strategy::os::Open>>,
    file: Option<strategy::os::Open>,
}

impl Drop for CachedFile<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            *holding::lock(self.slot) = Some(file);
        }
    }
}

/// A `Link` wait's claim, kept from one try to the next; removed when the
/// wait ends without linking it (taken, timed out, failed, or unwound).
#[derive(Default)]
struct KeptClaim(Option<strategy::KeptClaim>);

impl Drop for KeptClaim {
    fn drop(&mut self) {
        if let Some(kept) = self.0.take() {
            kept.remove();
        }
    }
}
