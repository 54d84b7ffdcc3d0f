//! [`RedisLockOptions`]: the builder that opens a [`RedisLock`].

use std::sync::Mutex;
use std::time::Duration;

use redis::Client;

use crate::error::{Op, Result};

use super::{redis_error, RedisLock};

/// Options for a [`RedisLock`]; [`RedisLock::options`] makes one.
///
/// # Examples
///
/// Opening a handle sends nothing to Redis: it only reads the URL.
///
/// ```
/// use std::time::Duration;
/// use portalock::{Error, RedisLock};
///
/// let lock = RedisLock::options()
///     .lease(Duration::from_secs(30)) // a holder may stall this long
///     .timeout(Some(Duration::from_secs(5)))
///     .open("redis://127.0.0.1:6379/0", "nightly-report")?;
/// assert_eq!(lock.name(), "nightly-report");
/// assert!(!lock.is_held());
/// assert_eq!(lock.fence(), None);
///
/// let bad = RedisLock::options().open("http://127.0.0.1/", "nightly-report");
/// assert!(matches!(bad, Err(Error::Redis { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisLockOptions {
    pub(super) lease: Duration,
    pub(super) timeout: Option<Duration>,
    pub(super) poll_interval: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Option<Duration>,
}

impl Default for RedisLockOptions {
    fn default() -> Self {
        RedisLockOptions {
            lease: Duration::from_secs(10),
            timeout: None,
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            command_timeout: None,
        }
    }
}

impl RedisLockOptions {
    /// How long the lock outlives its holder's last renewal. Default 10 s;
    /// at least 30 ms, at most 30 days.
    pub fn lease(&mut self, lease: Duration) -> &mut Self {
        self.lease = lease.clamp(
            Duration::from_millis(30),
            Duration::from_secs(30 * 24 * 3600),
        );
        self
    }

    /// How long [`RedisLock::acquire`] waits; `None` (the default) forever.
    pub fn timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The longest a waiter sleeps without looking at the lock again, in
    /// case a release notification was lost (a release wakes waiters at
    /// once). Default 500 ms.
    pub fn poll_interval(&mut self, interval: Duration) -> &mut Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long to wait for a connection to Redis: at most this, and never
    /// more than the [command timeout](RedisLockOptions::command_timeout).
    /// Default 5 s.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call to Redis (a write, a read) may take before it
    /// fails. Default: a quarter of the lease; never more than a third of
    /// it, so that a holder behind a partition tries a renewal again before
    /// its lease runs out, and learns of the loss within about one lease.
    pub fn command_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// The bound on one call to Redis, as the options say.
    pub(super) fn io_timeout(&self) -> Duration {
        let cap = self.lease / 3;
        self.command_timeout
            .map_or(self.lease / 4, |t| t.min(cap))
            .max(Duration::from_millis(1))
    }

    /// A handle on the lock `name` in the Redis at `url`
    /// (`redis://host:port/db`). Nothing is sent to Redis until the lock
    /// is taken or inspected.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`](crate::Error::Redis) if `url` is not a Redis URL.
    pub fn open(&self, url: &str, name: &str) -> Result<RedisLock> {
        let client = Client::open(url).map_err(|e| redis_error(name, Op::OpenRedis, &e))?;
        Ok(RedisLock {
            client,
            name: name.to_owned(),
            key: format!("portalock:{name}"),
            fence_key: format!("portalock:{name}:fence"),
            channel: format!("portalock:{name}:released"),
            options: self.clone(),
            held: Mutex::new(None),
        })
    }
}
