//! Deadlines and backoff for waiting on a lock held by another process.

use std::time::{Duration, Instant};

/// When a wait ends: never (`None`) or at an instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    end: Option<Instant>,
}

impl Deadline {
    /// A deadline `timeout` from now; `None` waits forever.
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Deadline {
            // A timeout too large to represent is a wait forever.
            end: timeout.and_then(|t| now.checked_add(t)),
        }
    }

    /// Whether this deadline waits forever.
    pub(crate) fn is_unbounded(&self) -> bool {
        self.end.is_none()
    }

    /// Time left, `None` when unbounded; zero once passed.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.end
            .map(|end| end.saturating_duration_since(Instant::now()))
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
                std::thread::sleep(nap);
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
