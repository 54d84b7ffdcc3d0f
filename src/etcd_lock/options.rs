//! [`EtcdLockOptions`]: the builder that opens an [`EtcdLock`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::owner::OwnerRecord;

use super::EtcdLock;

/// A hook called when an acquisition starts to wait.
pub(super) type WaitHook = Arc<dyn Fn(Option<&OwnerRecord>) + Send + Sync>;

/// Options for an [`EtcdLock`]; [`EtcdLock::options`] makes one.
///
/// # Examples
///
/// Opening a handle sends nothing to etcd: it checks the endpoints and
/// starts the client's runtime.
///
/// ```
/// use std::time::Duration;
/// use portalock::{EtcdLock, Error};
///
/// let lock = EtcdLock::options()
///     .lease(Duration::from_secs(15)) // a holder may stall this long
///     .timeout(Some(Duration::from_secs(5)))
///     .open(&["http://127.0.0.1:2379"], "nightly-report")?;
/// assert_eq!(lock.name(), "nightly-report");
/// assert!(!lock.is_held());
/// assert_eq!(lock.fence(), None);
///
/// let bad = EtcdLock::options().open(&["not a url"], "nightly-report");
/// assert!(matches!(bad, Err(Error::Etcd { .. })));
/// let none = EtcdLock::options().open(&[] as &[&str], "nightly-report");
/// assert!(matches!(none, Err(Error::Etcd { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EtcdLockOptions {
    pub(super) lease: Duration,
    pub(super) timeout: Option<Duration>,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Option<Duration>,
    pub(super) user: Option<(String, String)>,
    pub(super) on_wait: Option<WaitHook>,
}

impl fmt::Debug for EtcdLockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLockOptions")
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("on_wait", &self.on_wait.is_some())
            .finish()
    }
}

impl Default for EtcdLockOptions {
    fn default() -> Self {
        EtcdLockOptions {
            lease: Duration::from_secs(10),
            timeout: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: None,
            user: None,
            on_wait: None,
        }
    }
}

impl EtcdLockOptions {
    /// How long the lock outlives its holder's last keep-alive: the time to
    /// live of the holder's etcd lease, in whole seconds (rounded up; at
    /// least 1 s, at most etcd's longest, 9e9 s). Default 10 s. etcd raises a shorter one to its minimum
    /// (1.5 election timeouts, rounded up to a second: 2 s with etcd's
    /// defaults); the owner record and the loss detection use the lease
    /// etcd granted.
    pub fn lease(&mut self, lease: Duration) -> &mut Self {
        // (etcd's longest lease is 9e9 s)
        self.lease = lease.clamp(Duration::from_secs(1), Duration::from_secs(9_000_000_000));
        self
    }

    /// How long [`EtcdLock::acquire`] waits; `None` (the default) forever.
    pub fn timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for a connection to etcd. Default 5 s; at least
    /// 1 ms, at most a day.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout =
            timeout.clamp(Duration::from_millis(1), Duration::from_secs(24 * 3600));
        self
    }

    /// How long one request to etcd may take before it fails. Default: a
    /// quarter of the lease; never more than a third of it, so that a
    /// holder behind a partition tries its keep-alive again before the
    /// lease runs out, and learns of the loss within about one lease.
    pub fn command_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// Authenticates as `name` with `password` (etcd's authentication,
    /// enabled with `etcdctl auth enable`).
    pub fn user(&mut self, name: &str, password: &str) -> &mut Self {
        self.user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Calls `hook` once per acquisition that has to wait, after it has
    /// taken its place in the line (so that any later acquisition is served
    /// after it), with the holder's owner record when it could be read.
    pub fn on_wait(
        &mut self,
        hook: impl Fn(Option<&OwnerRecord>) + Send + Sync + 'static,
    ) -> &mut Self {
        self.on_wait = Some(Arc::new(hook));
        self
    }

    /// The bound on one request, for a lease of `lease`.
    pub(super) fn io_timeout(&self, lease: Duration) -> Duration {
        let cap = lease / 3;
        self.command_timeout
            .map_or(lease / 4, |t| t.min(cap))
            .max(Duration::from_millis(1))
    }

    /// A handle on the lock `name` in the etcd cluster at `endpoints`
    /// (`http://host:port`, one or more members). Nothing is sent to etcd
    /// until the lock is taken or inspected.
    ///
    /// The lock lives under the key prefix `portalock/<name>/`: one key per
    /// acquisition that holds or waits, named by its lease.
    ///
    /// # Errors
    ///
    /// [`Error::Etcd`](crate::Error::Etcd) if there is no endpoint, an
    /// endpoint is not a URL, or the client's runtime cannot start.
    pub fn open<E: AsRef<str>>(&self, endpoints: &[E], name: &str) -> Result<EtcdLock> {
        EtcdLock::open(self.clone(), endpoints, name)
    }
}
