//! Deadlines and backoff for waiting on a lock held by another process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often at most a wait that can be cancelled looks at its
/// [`CancelToken`]: a cancelled wait ends within this long.
pub(crate) const CANCEL_CHECK: Duration = Duration::from_millis(10);

/// Cancels waits for locks from another thread (or a signal handler's
/// flag-setting thread): a wait watching a cancelled token ends with
/// [`Error::Cancelled`](crate::Error::Cancelled) and holds nothing.
///
/// Give it to one call ([`LockFile::lock_cancellable`],
/// [`LockFile::acquire_cancellable`]) or to every wait of a handle
/// ([`LockOptions::cancel_token`]); clones share one state, and a token
/// once cancelled stays cancelled (make a new one for the next waits).
///
/// A wait that watches a token looks at it at least every 10 ms (between
/// two file-system steps; a step of an unwell network file system can take
/// longer), and otherwise tries the lock as often as a wait without a token
/// does: it ends within that long of [`cancel`]. Such a wait never sleeps
/// in the kernel for an `Os` lock (as an unbounded wait without a token
/// does, where nothing but the release can wake it): it tries again at its
/// poll interval, as a bounded wait does. An async wait that sleeps on a
/// lock's watch sees the cancel when it wakes (at most the poll interval
/// later); dropping its future ends it at once. (An async wait for an
/// `Os` lock on Unix is woken by a thread that does wait in the kernel for
/// the release; the wait itself looks at its token every 10 ms.) A cancelled token also
/// refuses a try-once acquire, which then does not try.
///
/// [`LockFile::lock_cancellable`]: crate::LockFile::lock_cancellable
/// [`LockFile::acquire_cancellable`]: crate::LockFile::acquire_cancellable
/// [`LockOptions::cancel_token`]: crate::LockOptions::cancel_token
/// [`cancel`]: CancelToken::cancel
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use portalock::{CancelToken, Error, LockFile};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("job.lock");
/// let (holder, waiter) = (LockFile::new(&path)?, LockFile::new(&path)?);
/// let _held = holder.lock()?;
///
/// let token = CancelToken::new();
/// let canceller = token.clone();
/// let stop = std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_millis(50));
///     canceller.cancel(); // e.g. on Ctrl-C, or when the user gives up
/// });
/// // Would wait forever; ends when the token is cancelled.
/// assert!(matches!(waiter.lock_cancellable(&token), Err(Error::Cancelled { .. })));
/// assert!(!waiter.is_held());
/// stop.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        CancelToken::default()
    }

    /// Cancels every wait that watches this token (or a clone of it), now
    /// and later.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](CancelToken::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// When a wait ends: never (`None`) or at an instant, or when one of its
/// cancel tokens is cancelled.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    end: Option<Instant>,
    cancel: Vec<CancelToken>,
}

impl Deadline {
    /// A deadline `timeout` from now; `None` waits forever.
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Deadline {
            // A timeout too large to represent is a wait forever.
            end: timeout.and_then(|t| now.checked_add(t)),
            cancel: Vec::new(),
        }
    }

    /// This deadline, which also passes once `token` is cancelled.
    pub(crate) fn or_cancelled(mut self, token: Option<&CancelToken>) -> Self {
        self.cancel.extend(token.cloned());
        self
    }

    /// Whether one of this deadline's tokens is cancelled.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.iter().any(CancelToken::is_cancelled)
    }

    /// Whether this deadline waits forever (and nothing can cancel it).
    pub(crate) fn is_unbounded(&self) -> bool {
        self.end.is_none() && self.cancel.is_empty()
    }

    /// Time left, `None` when unbounded; zero once passed or cancelled.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        if self.cancelled() {
            return Some(Duration::ZERO);
        }
        self.end
            .map(|end| end.saturating_duration_since(Instant::now()))
    }

    /// How long one sleep of a wait that wants to sleep `want` (`None`:
    /// until woken) may last: at most [`CANCEL_CHECK`] where a token can
    /// cancel the wait, so that it looks at its tokens that often. A wait
    /// sleeps again, without trying the lock, until its `want` is over.
    pub(crate) fn slice(&self, want: Option<Duration>) -> Option<Duration> {
        if self.cancel.is_empty() {
            want
        } else {
            Some(want.map_or(CANCEL_CHECK, |want| want.min(CANCEL_CHECK)))
        }
    }

    /// Sleeps `nap`, or less if the deadline is cancelled meanwhile (seen
    /// within [`CANCEL_CHECK`]).
    pub(crate) fn sleep(&self, nap: Duration) {
        self.wait_for(nap, |slice| {
            std::thread::sleep(slice);
            false
        });
    }

    /// Waits `nap` through `wait`, called with slices of it (as
    /// [`slice`](Deadline::slice) cuts them) until it says that what it
    /// waits for happened, `nap` has passed, or the deadline is cancelled.
    pub(crate) fn wait_for(&self, nap: Duration, mut wait: impl FnMut(Duration) -> bool) {
        let end = Instant::now() + nap;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.cancelled() {
                return;
            }
            if wait(self.slice(Some(left)).unwrap_or(left)) {
                return;
            }
        }
    }

    /// As [`sleep`](Deadline::sleep), in async code.
    #[cfg(feature = "tokio")]
    pub(crate) async fn sleep_async(&self, nap: Duration) {
        let end = Instant::now() + nap;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || self.cancelled() {
                return;
            }
            tokio::time::sleep(self.slice(Some(left)).unwrap_or(left)).await;
        }
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.remaining() == Some(Duration::ZERO)
    }
}

/// Exponential backoff with jitter, capped at the poll interval, never
/// sleeping past a deadline.
#[derive(Debug)]
pub(crate) struct Backoff {
    current: Duration,
    cap: Duration,
}

/// The first sleep of a wait, before doubling.
const FIRST_SLEEP: Duration = Duration::from_micros(500);

impl Backoff {
    pub(crate) fn new(cap: Duration) -> Self {
        let cap = cap.max(Duration::from_micros(1));
        Backoff {
            current: FIRST_SLEEP.min(cap),
            cap,
        }
    }

    /// Sleeps for the next interval, or returns `false` without sleeping
    /// if the deadline has passed.
    pub(crate) fn sleep(&mut self, deadline: &Deadline) -> bool {
        match self.next(deadline) {
            Some(nap) => {
                deadline.sleep(nap);
                true
            }
            None => false,
        }
    }

    /// The next interval to wait (for waiters that sleep themselves, such
    /// as async ones), or `None` if the deadline has passed.
    pub(crate) fn next(&mut self, deadline: &Deadline) -> Option<Duration> {
        if deadline.expired() {
            return None;
        }
        // Jitter in [current/2, current) keeps waiters of several processes
        // from polling in lock step.
        let jittered = self.current.mul_f64(0.5 + fastrand::f64() / 2.0);
        let nap = match deadline.remaining() {
            Some(left) => jittered.min(left),
            None => jittered,
        };
        self.current = (self.current * 2).min(self.cap);
        Some(nap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_deadline_has_passed_and_one_that_can_be_wakes_often() {
        let token = CancelToken::new();
        let d = Deadline::after(None).or_cancelled(Some(&token));
        assert!(!d.is_unbounded());
        assert_eq!(d.remaining(), None, "the time left is the wait's own");
        assert_eq!(d.slice(None), Some(CANCEL_CHECK));
        assert_eq!(d.slice(Some(Duration::from_secs(1))), Some(CANCEL_CHECK));
        assert_eq!(Deadline::after(None).slice(None), None);
        token.clone().cancel();
        assert!(d.cancelled() && d.expired());
        assert_eq!(Backoff::new(Duration::from_secs(1)).next(&d), None);
        let started = Instant::now();
        d.sleep(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn zero_timeout_is_expired_at_once() {
        let d = Deadline::after(Some(Duration::ZERO));
        assert!(d.expired());
        assert!(!Backoff::new(Duration::from_millis(10)).sleep(&d));
    }

    #[test]
    fn unbounded_never_expires() {
        let d = Deadline::after(None);
        assert!(d.is_unbounded());
        assert!(!d.expired());
        assert_eq!(d.remaining(), None);
    }

    #[test]
    fn huge_timeout_is_unbounded() {
        assert!(Deadline::after(Some(Duration::MAX)).is_unbounded());
    }

    #[test]
    fn backoff_grows_to_cap() {
        let mut b = Backoff::new(Duration::from_millis(2));
        let d = Deadline::after(Some(Duration::from_secs(5)));
        for _ in 0..4 {
            assert!(b.sleep(&d));
        }
        assert_eq!(b.current, Duration::from_millis(2));
    }
}
