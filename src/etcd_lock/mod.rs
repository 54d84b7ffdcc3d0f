//! A lock in an etcd cluster, for processes on machines that share no file
//! system and want a lock that outlives the loss of a server (feature
//! `etcd`).
//!
//! # Design: a line of keys, each on its holder's lease
//!
//! The protocol is that of etcd's own `concurrency.Mutex`:
//!
//! - An acquisition gets a *lease* from etcd (a time to live that its
//!   keep-alive task renews three times per lease) and puts the key
//!   `portalock/<name>/<lease id>` on it, holding the JSON
//!   [`OwnerRecord`] (strategy `etcd`), in a transaction that only creates
//!   it (`%` and `/` in the name are written `%25` and `%2F`, so that no
//!   lock's keys fall under another's prefix). etcd numbers every change
//!   with a cluster-wide *revision*; the key's create revision is the
//!   acquisition's place in the line.
//! - The key with the smallest create revision under the prefix holds the
//!   lock. Every other acquisition watches the key just before its own (its
//!   predecessor) and looks again when that key is deleted: a release wakes
//!   exactly the next waiter, at once, and waiters are served first come,
//!   first served. No polling.
//! - The create revision is the fencing token ([`fence`](EtcdLock::fence)):
//!   revisions only grow, across holders, crashes and leader elections
//!   (not across a restore of the cluster from a snapshot, which takes
//!   them back to the snapshot's).
//! - Release deletes the key (only if it is still this acquisition's) and
//!   revokes the lease. A holder that dies without a goodbye keeps the lock
//!   until its lease runs out; then etcd deletes the key, and the next
//!   waiter, watching it, takes the lock.
//! - A holder cut off from the cluster stops being able to renew: it counts
//!   the lock as lost one lease after the sending of the last keep-alive
//!   that etcd confirmed, on its own monotonic clock. etcd counts the lease
//!   from when it receives a keep-alive, which is later, and a new leader
//!   renews every lease in full, so etcd never frees the lock before the
//!   holder knows it lost it (2% is kept back for the rates of two clocks).
//!   [`ensure_held`](EtcdLock::ensure_held) says [`Error::LockLost`] from
//!   then on without needing the network, and never vouches with an answer
//!   that came after that moment; an acquisition that first in line finds
//!   its lease may have run out is not granted.
//!
//! That reasoning holds for an etcd that keeps its own lease rules. Older
//! etcd releases could revoke a lease a new leader had just renewed when
//! an old leader, stalled on its disk, came back (etcd issue 15247,
//! mitigated in the 3.4 and 3.5 releases of 2024 on): run a release with
//! the mitigation (Debian 12's 3.4.23, which the tests use, predates it).
//!
//! A waiter that dies keeps its place in the line until its lease runs out
//! (etcd's `concurrency.Mutex` behaves the same): the acquisitions behind
//! it wait that long once the lock is free.
//!
//! A handle takes one acquisition at a time: a second one through the same
//! handle while it holds or waits is refused at once
//! ([`Error::WouldBlock`]), as it would wait for itself.
//!
//! # Files, Redis, etcd
//!
//! | | [`LockFile`](crate::LockFile) | [`RedisLock`](crate::RedisLock) | [`EtcdLock`] |
//! | --- | --- | --- | --- |
//! | shared by | processes of one file system (local, NFS, SMB) | machines that reach one Redis server | machines that reach a majority of an etcd cluster |
//! | survives the loss of | the holder (the OS, or a stale-lock check, frees it) | the holder (after its lease) | the holder (after its lease), a minority of the servers, a leader |
//! | a holder cut off or stalled | keeps the lock, unless it took a lease (`LockOptions::lease`): then others break it after the lease, and the holder learns it from `ensure_held` | learns of the loss within a lease | learns of the loss within a lease |
//! | order of waiters | a turnstile by default (`LockOptions::fair`): a waiter that asked before a release goes before the releaser | none (whoever asks first after a release) | first come, first served |
//! | fencing token | [`fence`](crate::LockFile::fence) (a counter file) | the server's clock, kept rising | etcd's revision |
//! | hand-off, median (`BENCHMARKS.md`, loopback) | tens to hundreds of microseconds | 0.7 ms | 3.2 ms (p99: the server's `fsync`) |
//!
//! # Timeouts: no call hangs
//!
//! Every request to etcd is bounded by the command timeout (a quarter of
//! the lease unless [`EtcdLockOptions::command_timeout`] says otherwise),
//! the connection by the connect timeout, and a wait by the acquisition's
//! timeout. The client asks for a leader on every request (etcd's
//! `require-leader`), so a member cut off from the others answers at once
//! with an error instead of leaving a request hanging.
//!
//! # Blocking and async
//!
//! The handle keeps a small tokio runtime of its own (one worker thread,
//! which also runs the keep-alive). The blocking methods run on the
//! caller's thread; called inside async code (a handle opened, or a guard
//! dropped, in a task) they wait on a thread of their own rather than
//! panic, but block the task's thread meanwhile (a few command timeouts at
//! most): prefer [`release_async`](EtcdLock::release_async) there. The
//! `_async` methods run on the handle's runtime and can be awaited from any
//! executor; dropping one of their futures gives its place in the line
//! back, and releases the lock if it had just been granted. The
//! [`on_wait`](EtcdLockOptions::on_wait) hook runs on a blocking thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::error::{Error, LockName, Op, Result};
use crate::holding::lock;
use crate::owner::OwnerRecord;
use crate::sys;
use crate::vocab::Mechanism;
use crate::wait::Deadline;

mod guard;
mod options;

pub use guard::EtcdGuard;
pub use options::EtcdLockOptions;

/// A lock named `name` in an etcd cluster, with the contract of
/// [`LockFile`](crate::LockFile): acquire, try once, bounded wait,
/// release, a guard, release on drop, the owner record, a fencing token and
/// [`Error::LockLost`] when it was taken away. Waiters are served in the
/// order they asked. See the module docs for the design.
///
/// # Examples
///
/// ```no_run
/// use portalock::EtcdLock;
///
/// let lock = EtcdLock::new(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "nightly-report")?;
/// let guard = lock.lock()?;
/// let fence = guard.fence(); // hand it to the resource you write
/// // ... the critical section ...
/// guard.release()?;
/// # Ok::<(), portalock::Error>(())
/// ```
#[derive(Debug)]
pub struct EtcdLock {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    inner: Arc<Inner>,
}

/// What the handle's tasks share.
struct Inner {
    client: Client,
    name: String,
    prefix: String,
    options: EtcdLockOptions,
    held: Mutex<Option<Arc<Holding>>>,
    /// An acquisition through this handle is under way (it is not
    /// reentrant: a second one at the same time is refused).
    acquiring: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLock")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("held", &self.state().as_ref().map(|h| h.fence))
            .finish_non_exhaustive()
    }
}

/// One acquisition that holds the lock.
#[derive(Debug)]
struct Holding {
    key: String,
    fence: u64,
    lease: Arc<LeaseState>,
}

/// A lease and its keep-alive task.
#[derive(Debug)]
struct LeaseState {
    id: i64,
    /// The time to live etcd granted.
    ttl: Duration,
    lost: AtomicBool,
    /// Until when the lease surely lives: one time to live after the
    /// sending of the last grant or keep-alive that etcd confirmed, on a
    /// clock that counts on through a suspend ([`sys::since_boot`]).
    safe_until: Mutex<Duration>,
    stop: Notify,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LeaseState {
    fn ran_out(&self) -> bool {
        sys::since_boot() >= *lock(&self.safe_until)
    }

    fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::Acquire) || self.ran_out() {
            self.lost.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Stops the keep-alive task (it ends at its next step).
    fn stop(&self) {
        self.stop.notify_one();
        if let Some(task) = lock(&self.keeper).take() {
            task.abort();
        }
    }
}

impl EtcdLock {
    /// A handle with the default options.
    ///
    /// # Errors
    ///
    /// As [`EtcdLockOptions::open`].
    pub fn new<E: AsRef<str>>(endpoints: &[E], name: &str) -> Result<EtcdLock> {
        EtcdLockOptions::default().open(endpoints, name)
    }

    /// Options with the defaults.
    pub fn options() -> EtcdLockOptions {
        EtcdLockOptions::default()
    }

    pub(super) fn open<E: AsRef<str>>(
        options: EtcdLockOptions,
        endpoints: &[E],
        name: &str,
    ) -> Result<EtcdLock> {
        let fail = |op: Op, message: String| Error::Etcd {
            name: name.to_owned(),
            op: op.into(),
            message,
        };
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        if endpoints.is_empty() {
            return Err(fail(Op::EtcdConnect, "no endpoint given".to_owned()));
        }
        for endpoint in &endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(fail(
                    Op::EtcdConnect,
                    format!("`{endpoint}` is not an endpoint URL (http://host:port)"),
                ));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portalock-etcd")
            .enable_all()
            .build()
            .map_err(|e| fail(Op::EtcdRuntime, e.to_string()))?;
        let lease = options.lease;
        let io = options.io_timeout(lease);
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_require_leader(true)
            // A silent connection is found out by HTTP/2 pings while a
            // request or a watch is open on it; etcd refuses pings more
            // often than every 5 s (and any while no stream is open).
            .with_keep_alive(io.max(Duration::from_secs(5)), io)
            .with_keep_alive_while_idle(false);
        if let Some((user, password)) = &options.user {
            // etcd's tokens expire (simple tokens after 5 minutes): a
            // holder's keep-alive must log in again rather than fail.
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let bound = options.connect_timeout.saturating_add(io);
        let connected = block_on_anywhere(&runtime, async {
            tokio::time::timeout(bound, Client::connect(&endpoints, Some(connect))).await
        });
        let client = match connected {
            Some(Ok(Ok(client))) => client,
            failed => {
                // (dropping a runtime inside async code is refused too)
                runtime.shutdown_background();
                return Err(match failed {
                    Some(Ok(Err(e))) => fail(Op::EtcdConnect, e.to_string()),
                    Some(Err(_)) => fail(Op::EtcdConnect, format!("no answer within {bound:?}")),
                    _ => fail(Op::EtcdRuntime, "the connecting thread panicked".to_owned()),
                });
            }
        };
        Ok(EtcdLock {
            runtime: Some(runtime),
            inner: Arc::new(Inner {
                client,
                name: name.to_owned(),
                prefix: key_prefix(name),
                options,
                held: Mutex::new(None),
                acquiring: AtomicBool::new(false),
            }),
        })
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Takes the lock, waiting as long as the options' timeout says.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] / [`Error::Timeout`] naming the holder;
    /// [`Error::Etcd`] if etcd cannot be reached or answers an error.
    pub fn acquire(&self) -> Result<()> {
        self.block_on(self.inner.options.timeout)
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub fn try_acquire(&self) -> Result<()> {
        self.block_on(Some(Duration::ZERO))
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
        self.block_on(Some(timeout))
    }

    /// Takes the lock and returns a guard that releases it when dropped.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub fn lock(&self) -> Result<EtcdGuard<'_>> {
        self.acquire()?;
        Ok(self.guard())
    }

    /// [`try_acquire`](EtcdLock::try_acquire) with a guard.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub fn try_lock(&self) -> Result<EtcdGuard<'_>> {
        self.try_acquire()?;
        Ok(self.guard())
    }

    /// [`acquire_timeout`](EtcdLock::acquire_timeout) with a guard.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<EtcdGuard<'_>> {
        self.acquire_timeout(timeout)?;
        Ok(self.guard())
    }

    /// [`acquire`](EtcdLock::acquire) as a future, for async code on any
    /// executor (it runs on the handle's runtime). Dropping the future
    /// gives the place in the line back.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub async fn acquire_async(&self) -> Result<()> {
        self.run_async(self.inner.options.timeout).await
    }

    /// [`acquire_timeout`](EtcdLock::acquire_timeout) as a future.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub async fn acquire_timeout_async(&self, timeout: Duration) -> Result<()> {
        self.run_async(Some(timeout)).await
    }

    /// [`lock`](EtcdLock::lock) as a future.
    ///
    /// # Errors
    ///
    /// As [`acquire`](EtcdLock::acquire).
    pub async fn lock_async(&self) -> Result<EtcdGuard<'_>> {
        self.acquire_async().await?;
        Ok(self.guard())
    }

    /// The fencing token of this handle's current acquisition: etcd's
    /// revision at which it joined the line, larger than that of every
    /// earlier holder of this lock.
    pub fn fence(&self) -> Option<u64> {
        self.inner.state().as_ref().map(|h| h.fence)
    }

    /// Whether this handle holds the lock (as far as it knows: see
    /// [`ensure_held`](EtcdLock::ensure_held)).
    pub fn is_held(&self) -> bool {
        self.inner.state().is_some()
    }

    /// Checks that this handle still holds the lock: that its lease has not
    /// run out since the last keep-alive etcd confirmed, and, when etcd
    /// answers (within the command timeout), that its key is still there.
    /// If etcd cannot be reached the lease answers.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if it holds nothing; [`Error::LockLost`] if the
    /// lock was taken away (lease run out, key deleted by an operator, a
    /// partition longer than the lease).
    pub fn ensure_held(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        self.run(inner.ensure_held())
    }

    /// Releases the lock: deletes its key and revokes its lease.
    ///
    /// Returns within a few command timeouts, whatever the network does.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle holds nothing;
    /// [`Error::LockLost`] if it was taken away meanwhile (nothing is
    /// removed then); [`Error::Etcd`] if etcd could not be reached (the
    /// lock then goes at the end of its lease).
    pub fn release(&self) -> Result<()> {
        self.release_fence(None)
    }

    /// [`release`](EtcdLock::release) as a future.
    ///
    /// # Errors
    ///
    /// As [`release`](EtcdLock::release).
    pub async fn release_async(&self) -> Result<()> {
        let holding = self.inner.take_holding(None)?;
        let inner = Arc::clone(&self.inner);
        let task = self
            .runtime()?
            .spawn(async move { inner.finish_release(&holding).await });
        task.await
            .unwrap_or_else(|e| Err(self.inner.task_failed(&e)))
    }

    /// Releases the lock: the acquisition of `fence` only, if given.
    fn release_fence(&self, fence: Option<u64>) -> Result<()> {
        let holding = self.inner.take_holding(fence)?;
        let inner = Arc::clone(&self.inner);
        self.run(async move { inner.finish_release(&holding).await })
    }

    /// The holder's owner record, if the lock is held (and the value is a
    /// record).
    ///
    /// # Errors
    ///
    /// [`Error::Etcd`].
    pub fn owner(&self) -> Result<Option<OwnerRecord>> {
        let inner = Arc::clone(&self.inner);
        self.run(async move { inner.owner().await })
    }

    /// A guard of the acquisition this handle holds now.
    fn guard(&self) -> EtcdGuard<'_> {
        let fence = self.fence().unwrap_or(0);
        EtcdGuard { lock: self, fence }
    }

    fn runtime(&self) -> Result<&Runtime> {
        self.runtime.as_ref().ok_or_else(|| Error::Etcd {
            name: self.inner.name.clone(),
            op: Op::EtcdRuntime.into(),
            message: "the handle is being dropped".to_owned(),
        })
    }

    fn block_on(&self, timeout: Option<Duration>) -> Result<()> {
        let reservation = self.inner.reserve(timeout)?;
        let inner = Arc::clone(&self.inner);
        let holding = self.run(inner.acquire(timeout))?;
        reservation.install(holding);
        Ok(())
    }

    /// Runs `request` on the handle's runtime and waits for it (see
    /// [`block_on_anywhere`]).
    fn run<T: Send>(
        &self,
        request: impl std::future::Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        block_on_anywhere(self.runtime()?, request).unwrap_or_else(|| {
            Err(self
                .inner
                .error(Op::EtcdRuntime, "the request's thread panicked"))
        })
    }

    async fn run_async(&self, timeout: Option<Duration>) -> Result<()> {
        let reservation = self.inner.reserve(timeout)?;
        let inner = Arc::clone(&self.inner);
        let runtime = self.runtime()?.handle().clone();
        let task = runtime.spawn(inner.acquire(timeout));
        let mut pending = Pending {
            task: Some(task),
            runtime,
            reservation: Some(reservation),
        };
        let result = match pending.task.as_mut() {
            Some(task) => task.await,
            None => return Err(self.inner.error(Op::EtcdRuntime, "no acquisition task")),
        };
        // Consumed: dropping `pending` now gives nothing back.
        pending.task = None;
        let holding = result.unwrap_or_else(|e| Err(self.inner.task_failed(&e)))?;
        if let Some(reservation) = pending.reservation.take() {
            reservation.install(holding);
        }
        Ok(())
    }
}

/// Runs `future` on `runtime` and waits for it. Called from inside async
/// code (a handle opened, or a guard dropped, in a task), where blocking on
/// a runtime is refused, it waits on a thread of its own instead; `None`
/// if that thread panicked.
fn block_on_anywhere<T: Send>(
    runtime: &Runtime,
    future: impl std::future::Future<Output = T> + Send,
) -> Option<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Some(runtime.block_on(future));
    }
    std::thread::scope(|scope| scope.spawn(|| runtime.block_on(future)).join()).ok()
}

/// An async acquisition on the handle's runtime whose outcome the caller
/// has not taken yet. Dropped before (the caller's future cancelled), it
/// aborts the task, and releases the lock if the task had already taken
/// it: a cancelled wait never leaves the handle holding a lock nobody
/// knows of.
struct Pending {
    task: Option<tokio::task::JoinHandle<Result<Arc<Holding>>>>,
    runtime: tokio::runtime::Handle,
    reservation: Option<Reservation>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        // The handle may acquire again at once: what the task may have
        // taken is released in the background, and is not the handle's.
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let inner = Arc::clone(&reservation.inner);
        drop(reservation);
        self.runtime.spawn(async move {
            if let Ok(Ok(holding)) = task.await {
                let _ = inner.finish_release(&holding).await;
            }
        });
    }
}

/// The right of one acquisition at a time through a handle; the handle is
/// free to acquire again when it is dropped.
struct Reservation {
    inner: Arc<Inner>,
}

impl Reservation {
    /// Records the acquisition as the handle's.
    fn install(self, holding: Arc<Holding>) {
        *self.inner.state() = Some(holding);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.acquiring.store(false, Ordering::Release);
    }
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        if self.is_held() {
            let _ = self.release();
        }
        if let Some(runtime) = self.runtime.take() {
            // Never blocks (a handle dropped inside async code must not).
            runtime.shutdown_background();
        }
    }
}

/// A place in the line that is given back (its lease revoked, which
/// deletes its key) unless it became the lock: a timeout, an error or a
/// cancelled future leaves no key behind for a lease.
struct Place {
    client: Client,
    lease: Arc<LeaseState>,
    io: Duration,
    armed: bool,
}

impl Place {
    /// Disarms the place: stops its keep-alive and returns the revocation
    /// of its lease (bounded), unless it was disarmed already.
    fn take_back(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !std::mem::take(&mut self.armed) {
            return None;
        }
        self.lease.stop();
        let mut client = self.client.clone();
        let (id, io) = (self.lease.id, self.io);
        Some(async move {
            let _ = tokio::time::timeout(io, client.lease_revoke(id)).await;
        })
    }

    /// Gives the place back and waits (bounded) until etcd confirms.
    async fn give_back(&mut self) {
        if let Some(revoke) = self.take_back() {
            revoke.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // An error or a cancelled future: detached (a drop cannot wait).
        if let (Some(revoke), Ok(handle)) =
            (self.take_back(), tokio::runtime::Handle::try_current())
        {
            handle.spawn(revoke);
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, Option<Arc<Holding>>> {
        lock(&self.held)
    }

    /// Takes the handle's acquisition (the one of `fence` only, if given)
    /// for a release.
    fn take_holding(&self, fence: Option<u64>) -> Result<Arc<Holding>> {
        let mut state = self.state();
        match state.as_ref() {
            Some(h) if fence.is_none_or(|f| f == h.fence) => state.take(),
            _ => None,
        }
        .ok_or_else(|| self.not_locked())
    }

    /// Reserves the handle for one acquisition. Not reentrant: while it
    /// holds the lock or another acquisition is under way, a second one
    /// would wait for itself; it says so at once, as `RedisLock` does.
    fn reserve(self: &Arc<Self>, timeout: Option<Duration>) -> Result<Reservation> {
        let state = self.state();
        if state.is_some() || self.acquiring.swap(true, Ordering::AcqRel) {
            return Err(self.busy(timeout, None));
        }
        Ok(Reservation {
            inner: Arc::clone(self),
        })
    }

    fn error(&self, op: Op, message: impl ToString) -> Error {
        Error::Etcd {
            name: self.name.clone(),
            op: op.into(),
            message: message.to_string(),
        }
    }

    fn task_failed(&self, e: &tokio::task::JoinError) -> Error {
        self.error(Op::EtcdRuntime, e)
    }

    /// Runs one request, bounded by `bound`: one that could not reach a
    /// member that answers (a member down, a connection refused, no leader
    /// during an election) is sent again, to any member, until the bound.
    /// A repeat of a request etcd had applied is harmless: a lease granted
    /// twice leaves one without a key, which expires; the join and the
    /// release compare before they write (the release tells a repeat, see
    /// [`finish_release`](Inner::finish_release)); a repeated revoke or
    /// read changes nothing.
    async fn io<T, F>(&self, op: Op, bound: Duration, request: impl FnMut(Client) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.io_counted(op, bound, request).await.0
    }

    /// [`io`](Inner::io), also saying whether the request was sent again
    /// after an error that may have come after etcd applied it (etcd says
    /// "unavailable" for a request that timed out in its log, too).
    async fn io_counted<T, F>(
        &self,
        op: Op,
        bound: Duration,
        mut request: impl FnMut(Client) -> F,
    ) -> (Result<T>, bool)
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let start = tokio::time::Instant::now();
        let until = start.checked_add(bound).unwrap_or(start + MAX_BOUND);
        let mut last = None;
        let mut again = false;
        loop {
            match tokio::time::timeout_at(until, request(self.client.clone())).await {
                Ok(Ok(value)) => return (Ok(value), again),
                Ok(Err(e)) if passing(&e) => last = Some(e),
                Ok(Err(e)) => return (Err(self.error(op, e)), again),
                Err(_) => {
                    let message = match last {
                        Some(e) => format!("no answer within {bound:?} (last: {e})"),
                        None => format!("no answer within {bound:?}"),
                    };
                    return (Err(self.error(op, message)), again);
                }
            }
            let nap = Duration::from_millis(fastrand::u64(20..60));
            if tokio::time::Instant::now() + nap >= until {
                let e = last.map_or_else(String::new, |e| e.to_string());
                return (Err(self.error(op, e)), again);
            }
            tokio::time::sleep(nap).await;
            again = true;
        }
    }

    /// One acquisition, run on the handle's runtime; the caller records the
    /// holding it returns (see [`Reservation`]).
    async fn acquire(self: Arc<Self>, timeout: Option<Duration>) -> Result<Arc<Holding>> {
        let deadline = Deadline::after(timeout);
        let mut record = OwnerRecord::for_process(Mechanism::Etcd, None)
            .map_err(|e| self.error(Op::MakeRecord, e))?;
        let asked = self.options.lease;
        let io = self.options.io_timeout(asked);

        // The lease, kept alive from now on (a waiter's place in the line
        // lives on it too).
        let ttl_secs = i64::try_from(asked.as_secs() + u64::from(asked.subsec_nanos() > 0))
            .unwrap_or(i64::MAX);
        let sent = sys::since_boot();
        let grant = self
            .io(Op::EtcdLease, io, |mut c| async move {
                c.lease_grant(ttl_secs, None).await
            })
            .await?;
        let ttl = Duration::from_secs(grant.ttl().clamp(1, MAX_TTL_SECS).unsigned_abs());
        let lease = Arc::new(LeaseState {
            id: grant.id(),
            ttl,
            lost: AtomicBool::new(false),
            safe_until: Mutex::new(sent + surely(ttl)),
            stop: Notify::new(),
            keeper: Mutex::new(None),
        });
        let io = self.options.io_timeout(ttl);
        let mut place = Place {
            client: self.client.clone(),
            lease: Arc::clone(&lease),
            io,
            armed: true,
        };
        let keeper = tokio::spawn(keep_alive(self.client.clone(), Arc::clone(&lease), io));
        *lock(&lease.keeper) = Some(keeper);

        record.lease_ms = Some(ttl.as_millis().min(u128::from(u64::MAX)) as u64);
        let key = format!("{}{:016x}", self.prefix, lease.id);
        let join = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                record.to_json(),
                Some(PutOptions::new().with_lease(lease.id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let joined = self
            .io(Op::Acquire, io, |mut c| {
                let join = join.clone();
                async move { c.txn(join).await }
            })
            .await?;
        let revision = if joined.succeeded() {
            joined.header().map_or(0, |h| h.revision())
        } else {
            // (A fresh lease's key exists only if this very request was
            // applied twice.)
            first_kv(&joined.op_responses()).map_or(0, |kv| kv.create_revision())
        };
        if revision <= 0 {
            return Err(self.error(Op::Acquire, "etcd gave no revision for the lock key"));
        }
        let mut told = false;
        loop {
            if lease.is_lost() {
                return Err(self.error(
                    Op::EtcdLease,
                    "the lease of the waiting acquisition ran out (a pause or a partition longer than the lease)",
                ));
            }
            // Still in the line? And who is just before us?
            let look = Txn::new()
                .when([Compare::create_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::get(
                    self.prefix.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_max_create_revision(revision - 1)
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(1),
                    ),
                )]);
            // Through an election, as long as the deadline allows (the
            // lease survives one: a new leader renews every lease).
            let bound = deadline
                .remaining()
                .map_or(ttl, |left| left.min(ttl))
                .max(io);
            let looked = self
                .io(Op::Acquire, bound, |mut c| {
                    let look = look.clone();
                    async move { c.txn(look).await }
                })
                .await?;
            if !looked.succeeded() {
                lease.lost.store(true, Ordering::Release);
                return Err(self.error(
                    Op::Acquire,
                    "the key of the waiting acquisition was deleted (its lease ran out, or an operator removed it)",
                ));
            }
            let at = looked.header().map_or(0, |h| h.revision());
            let Some(before) = first_kv(&looked.op_responses()) else {
                let _ = crate::fault::point("etcd.acquire.first");
                // First in line: the lock is ours, if the lease still
                // surely lives (the look may have taken long, or this
                // process may have stopped meanwhile).
                if lease.is_lost() {
                    place.give_back().await;
                    return Err(self.error(
                        Op::EtcdLease,
                        "the lease ran out while the acquisition looked at the line (a pause or a partition longer than the lease)",
                    ));
                }
                place.armed = false;
                return Ok(Arc::new(Holding {
                    key,
                    fence: revision.unsigned_abs(),
                    lease,
                }));
            };
            if deadline.expired() || !told {
                let holder = self.owner().await.ok().flatten();
                if deadline.expired() {
                    place.give_back().await;
                    return Err(self.busy(timeout, holder));
                }
                told = true;
                if let Some(hook) = self.options.on_wait.clone() {
                    // Off the runtime's one worker: the hook may block, or
                    // call this very handle.
                    let _ = tokio::task::spawn_blocking(move || hook(holder.as_ref())).await;
                }
            }
            // Wait for the predecessor's key to go: a watch from the
            // revision we looked at, so that a deletion in between is seen.
            let before_key = before.key().to_vec();
            let mut watch = self
                .io(Op::Wait, bound, |mut c| {
                    let before_key = before_key.clone();
                    async move {
                        c.watch(
                            before_key,
                            Some(WatchOptions::new().with_start_revision(at + 1)),
                        )
                        .await
                    }
                })
                .await?;
            // Look again at least once per time to live: the watch may have
            // died silently with its connection (the lease says so first).
            let mut nap = ttl;
            if let Some(left) = deadline.remaining() {
                nap = nap.min(left);
            }
            let deleted = async {
                loop {
                    match watch.message().await {
                        Ok(Some(answer)) => {
                            if answer.canceled()
                                || answer
                                    .events()
                                    .iter()
                                    .any(|e| e.event_type() == EventType::Delete)
                            {
                                return;
                            }
                        }
                        // The stream ended or failed: look again.
                        Ok(None) | Err(_) => return,
                    }
                }
            };
            let waited = tokio::time::Instant::now();
            let _ = tokio::time::timeout(nap, deleted).await;
            if waited.elapsed() < Duration::from_millis(20) {
                // A watch that ended at once (refused, compacted): no busy
                // loop of looks.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(20..60))).await;
            }
        }
    }

    async fn owner(&self) -> Result<Option<OwnerRecord>> {
        let io = self.options.io_timeout(self.options.lease);
        let first = self
            .io(Op::Read, io, |mut c| async move {
                let first = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1);
                c.get(self.prefix.as_str(), Some(first)).await
            })
            .await?;
        Ok(first
            .kvs()
            .first()
            .and_then(|kv| OwnerRecord::parse(kv.value())))
    }

    async fn ensure_held(self: Arc<Self>) -> Result<()> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        if holding.lease.is_lost() {
            return Err(self.lost(None));
        }
        let io = self.options.io_timeout(holding.lease.ttl);
        let got = self
            .io(Op::Check, io, |mut c| {
                let key = holding.key.clone();
                async move { c.get(key, None).await }
            })
            .await;
        let _ = crate::fault::point("etcd.check.answered");
        match got {
            Ok(got) => match got.kvs().first() {
                // The key was there when etcd answered; the lease must
                // also surely live now (the answer may have come late).
                Some(kv) if kv.create_revision().unsigned_abs() == holding.fence => {
                    if holding.lease.is_lost() {
                        Err(self.lost(None))
                    } else {
                        Ok(())
                    }
                }
                _ => {
                    holding.lease.lost.store(true, Ordering::Release);
                    Err(self.lost(self.owner().await.ok().flatten()))
                }
            },
            // Not reachable: within the lease, as the clock says after
            // asking, the lock is still ours.
            Err(_) if !holding.lease.is_lost() => Ok(()),
            Err(_) => Err(self.lost(None)),
        }
    }

    async fn finish_release(self: Arc<Self>, holding: &Holding) -> Result<()> {
        holding.lease.stop();
        let lost = holding.lease.is_lost();
        let io = self.options.io_timeout(holding.lease.ttl);
        let fence = i64::try_from(holding.fence).unwrap_or(i64::MAX);
        let remove = Txn::new()
            .when([Compare::create_revision(
                holding.key.as_str(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::delete(holding.key.as_str(), None)]);
        let (removed, again) = self
            .io_counted(Op::Release, io, |mut c| {
                let remove = remove.clone();
                async move { c.txn(remove).await }
            })
            .await;
        // The lease goes too (it holds nothing else), bounded, errors aside.
        let _ = self
            .io(Op::Release, io, |mut c| {
                let id = holding.lease.id;
                async move { c.lease_revoke(id).await }
            })
            .await;
        if lost {
            return Err(self.lost(None));
        }
        if removed?.succeeded() {
            return Ok(());
        }
        // The key was not there. Sent again after an error that may have
        // come after etcd applied it, the first try may have deleted it;
        // with the lease surely alive, nothing else did but an operator.
        if again && !holding.lease.is_lost() {
            return Ok(());
        }
        Err(self.lost(None))
    }

    fn lock_name(&self) -> LockName {
        LockName::EtcdKey(self.prefix.clone())
    }

    fn not_locked(&self) -> Error {
        Error::NotLocked {
            lock: self.lock_name(),
        }
    }

    fn lost(&self, holder: Option<OwnerRecord>) -> Error {
        Error::LockLost {
            lock: self.lock_name(),
            holder: holder.map(Box::new),
        }
    }

    fn busy(&self, timeout: Option<Duration>, holder: Option<OwnerRecord>) -> Error {
        Error::contended(self.lock_name(), timeout, holder.map(Box::new))
    }
}

/// etcd's longest lease, in seconds (`MaxLeaseTTL`).
const MAX_TTL_SECS: i64 = 9_000_000_000;

/// The longest bound on a request (a far future).
const MAX_BOUND: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a lease of `ttl` surely lives after the sending of a keep-alive
/// etcd confirmed: the time to live, less 2% for a difference in the rate
/// of this machine's clock and the etcd leader's.
fn surely(ttl: Duration) -> Duration {
    ttl - ttl / 50
}

/// The key prefix of the lock `name`: `portalock/<name>/`, with `%` and
/// `/` in the name written as `%25` and `%2F`, so that no lock's keys fall
/// under another's prefix (`reports` and `reports/daily`).
fn key_prefix(name: &str) -> String {
    let escaped = name.replace('%', "%25").replace('/', "%2F");
    format!("portalock/{escaped}/")
}

/// Whether a request failed for a reason that passes: it reached no member
/// that could answer (refused, reset, unreachable, no leader now). Another
/// try may reach another member, or the new leader.
fn passing(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            // gRPC's UNAVAILABLE
            i32::from(status.code()) == 14
        }
        _ => false,
    }
}

/// The first key-value of a transaction's first (get) answer.
fn first_kv(answers: &[TxnOpResponse]) -> Option<etcd_client::KeyValue> {
    match answers.first() {
        Some(TxnOpResponse::Get(got)) => got.kvs().first().cloned(),
        _ => None,
    }
}

/// What one keep-alive attempt learnt.
enum Renewal {
    /// etcd renewed the lease.
    Alive,
    /// etcd says the lease is gone (expired, or revoked).
    Gone,
    /// No answer: the stream ended or failed.
    Failed,
}

/// The keep-alive task of a lease: renews it three times per time to live,
/// each attempt bounded by one command timeout in all, on a new stream at
/// once after any failure (to any member), until stopped or until the
/// lease may have run out in etcd (then the lease counts as lost).
async fn keep_alive(mut client: Client, lease: Arc<LeaseState>, io: Duration) {
    let every = (lease.ttl / 3).max(Duration::from_millis(100));
    let mut stream = None;
    let mut pause = every;
    loop {
        tokio::select! {
            () = lease.stop.notified() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if lease.is_lost() {
            return;
        }
        let sent = sys::since_boot();
        let attempt = tokio::time::timeout(io, async {
            match stream.as_mut() {
                Some((keeper, answers)) => {
                    let keeper: &mut etcd_client::LeaseKeeper = keeper;
                    let answers: &mut etcd_client::LeaseKeepAliveStream = answers;
                    keeper.keep_alive().await?;
                    Ok(match answers.message().await? {
                        Some(answer) if answer.ttl() > 0 => Renewal::Alive,
                        Some(_) => Renewal::Gone,
                        None => Renewal::Failed,
                    })
                }
                // Opening a stream sends a keep-alive and reads its answer.
                None => match client.lease_keep_alive(lease.id).await {
                    Ok(opened) => {
                        stream = Some(opened);
                        Ok(Renewal::Alive)
                    }
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                        Ok(Renewal::Gone)
                    }
                    Err(e) => Err(e),
                },
            }
        })
        .await;
        match attempt {
            Ok(Ok(Renewal::Alive)) => {
                let until = sent + surely(lease.ttl);
                let mut safe = lock(&lease.safe_until);
                if until > *safe {
                    *safe = until;
                }
                pause = every;
            }
            Ok(Ok(Renewal::Gone)) => {
                lease.lost.store(true, Ordering::Release);
                return;
            }
            Ok(Ok(Renewal::Failed) | Err(_)) | Err(_) => {
                stream = None;
                pause = Duration::from_millis(fastrand::u64(20..60));
            }
        }
    }
}
