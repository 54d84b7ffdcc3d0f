//! A lock in Redis, for processes on machines that share no file system
//! (feature `redis`).
//!
//! # Design: a lease, renewed; not a subscription
//!
//! portalocker's `RedisLock` keeps the lock alive in a pub/sub
//! subscription that vanishes with its connection. portalock keeps the
//! lock as a key with a time to live (a *lease*):
//!
//! - `SET portalock:<name> <owner record> NX PX <lease>` takes it; the
//!   value is the same JSON [`OwnerRecord`] as in a lock file (strategy
//!   `redis`), so anyone can `GET` who holds it.
//! - A renewal thread rewrites the record (its `beat`) three times per
//!   lease, through a Lua script that first checks the token, so it can
//!   never extend someone else's lock. When a renewal finds the key gone or
//!   replaced (deleted by an operator, Redis restarted without it), the
//!   holder counts the lock as lost ([`Error::LockLost`] from
//!   [`ensure_held`](RedisLock::ensure_held) and
//!   [`release`](RedisLock::release)). A renewal that gets no answer (a
//!   connection closed by an idle timeout, killed, refused, or silent) is
//!   tried again on a new connection until the lease has run out since the
//!   last renewal Redis confirmed; then the lock is lost too, and its key
//!   deleted if it is still the holder's, so that waiters do not wait out
//!   the lease. An operator takes a lock away by deleting its key.
//! - Release is a compare-and-delete script, which then publishes on
//!   `portalock:<name>:released`: waiters subscribe and wake at once; they
//!   also wake when the key's time to live runs out (a dead holder), never
//!   later than the fallback poll interval. No busy loop against Redis.
//! - Every grant gets a fencing token larger than every earlier grant's
//!   ([`fence`](RedisLock::fence)): the server's clock in microseconds,
//!   raised above the last grant if needed, so it keeps growing across a
//!   restart of a Redis without persistence. A resource that remembers the
//!   largest fence it saw refuses a holder that lost the lock.
//!
//! The trade-off: with a subscription, a dead holder's lock goes the moment
//! its connection drops, but a holder cannot tell whether it still holds
//! the lock without a working connection, and a network partition frees
//! the lock while the holder runs on. With a lease, a holder killed without
//! a goodbye keeps the lock until the lease runs out (pick a lease as short
//! as a pause you tolerate: the default is 10 s), but the lock has a
//! bounded life on the server whatever the network does, and a paused
//! holder learns of its loss and is fenced off.
//!
//! One Redis server is one point of failure: a restart without persistence
//! forgets the lock (the holder finds out at its next renewal). This is not
//! Redlock.
//!
//! # Timeouts: a partition never hangs a holder
//!
//! Every call to Redis (connect, write, read) is bounded by the command
//! timeout, a quarter of the lease unless
//! [`RedisLockOptions::command_timeout`] says otherwise (never more than a
//! third of it). Behind a silent network partition (connections open,
//! every byte dropped) a holder therefore never blocks for long, and it
//! knows how long its lock is safe without asking: Redis counts the lease
//! from when it receives a renewal, which is after the holder sent it, so
//! the lock is the holder's at least until one lease after the last renewal
//! Redis confirmed, counted on the holder's own monotonic clock. A renewal
//! that fails is tried again (on a new connection) until that moment; then
//! the lock counts as lost: [`ensure_held`](RedisLock::ensure_held) returns
//! [`Error::LockLost`] within about one lease of the partition, without
//! needing the network, and [`release`](RedisLock::release) and drop return
//! within a few command timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use redis::{Client, Connection, Script};

use crate::error::{Error, LockName, Op, Result};
use crate::holding::lock;
use crate::owner::OwnerRecord;
use crate::sys;
use crate::vocab::Mechanism;
use crate::wait::Deadline;

mod guard;
mod options;
mod renewer;

pub use guard::RedisGuard;
pub use options::RedisLockOptions;
use renewer::Renewer;

const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local f = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if f <= last then f = last + 1 end
  redis.call('SET', KEYS[2], string.format('%.0f', f))
  return f
end
return 0";

const OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, rec = pcall(cjson.decode, v)
return ok and type(rec) == 'table' and rec['token'] == ARGV[1]";

fn renew_script() -> String {
    format!(
        "local function owned() {OWNED} end
if owned() then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0"
    )
}

fn release_script() -> String {
    format!(
        "local function owned() {OWNED} end
if owned() then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0"
    )
}

/// A lock named `name` in one Redis server, with the contract of
/// [`LockFile`](crate::LockFile): acquire, try once, bounded wait,
/// release, a guard, release on drop, the owner record, and
/// [`Error::LockLost`] when it was taken away. See the module docs for the
/// design.
///
/// # Examples
///
/// ```no_run
/// use portalock::RedisLock;
///
/// let lock = RedisLock::new("redis://127.0.0.1:6379", "nightly-report")?;
/// let guard = lock.lock()?;
/// let fence = lock.fence().unwrap_or(0); // hand it to the resource you write
/// // ... the critical section ...
/// guard.release()?;
/// # Ok::<(), portalock::Error>(())
/// ```
#[derive(Debug)]
pub struct RedisLock {
    client: Client,
    name: String,
    key: String,
    fence_key: String,
    channel: String,
    options: RedisLockOptions,
    held: Mutex<Option<Arc<RedisHolding>>>,
}

/// One acquisition: its token, fence, and renewal thread.
#[derive(Debug)]
struct RedisHolding {
    token: String,
    fence: u64,
    lost: AtomicBool,
    /// Until when the lock is surely ours: one lease after the sending of
    /// the last grant or renewal that Redis confirmed, on a clock that
    /// counts on through a suspend ([`sys::since_boot`]).
    safe_until: Mutex<Duration>,
    stop: Mutex<bool>,
    wake: Condvar,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

impl RedisHolding {
    /// Whether the lock may have expired in Redis: the lease ran out since
    /// the last renewal that Redis confirmed.
    fn lease_ran_out(&self) -> bool {
        sys::since_boot() >= *lock(&self.safe_until)
    }
}

impl RedisLock {
    /// A handle with the default options.
    ///
    /// # Errors
    ///
    /// As [`RedisLockOptions::open`].
    pub fn new(url: &str, name: &str) -> Result<RedisLock> {
        RedisLockOptions::default().open(url, name)
    }

    /// Options with the defaults.
    pub fn options() -> RedisLockOptions {
        RedisLockOptions::default()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the lock, waiting as long as the options' timeout says.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] / [`Error::Timeout`] naming the holder;
    /// [`Error::Redis`] if Redis cannot be reached or answers an error.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_within(self.options.timeout)
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    ///
    /// As [`acquire`](RedisLock::acquire).
    pub fn try_acquire(&self) -> Result<()> {
        self.acquire_within(Some(Duration::ZERO))
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](RedisLock::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
        self.acquire_within(Some(timeout))
    }

    /// Takes the lock and returns a guard that releases it when dropped.
    ///
    /// # Errors
    ///
    /// As [`acquire`](RedisLock::acquire).
    pub fn lock(&self) -> Result<RedisGuard<'_>> {
        self.acquire()?;
        Ok(self.guard())
    }

    /// [`try_acquire`](RedisLock::try_acquire) with a guard.
    ///
    /// # Errors
    ///
    /// As [`acquire`](RedisLock::acquire).
    pub fn try_lock(&self) -> Result<RedisGuard<'_>> {
        self.try_acquire()?;
        Ok(self.guard())
    }

    /// [`acquire_timeout`](RedisLock::acquire_timeout) with a guard.
    ///
    /// # Errors
    ///
    /// As [`acquire`](RedisLock::acquire).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<RedisGuard<'_>> {
        self.acquire_timeout(timeout)?;
        Ok(self.guard())
    }

    /// A guard of the acquisition this handle holds now.
    fn guard(&self) -> RedisGuard<'_> {
        let token = self
            .state()
            .as_ref()
            .map(|h| h.token.clone())
            .unwrap_or_default();
        RedisGuard { lock: self, token }
    }

    /// The fencing token of this handle's current acquisition: larger than
    /// that of every earlier grant of this lock.
    pub fn fence(&self) -> Option<u64> {
        self.state().as_ref().map(|h| h.fence)
    }

    /// Whether this handle holds the lock (as far as it knows: see
    /// [`ensure_held`](RedisLock::ensure_held)).
    pub fn is_held(&self) -> bool {
        self.state().is_some()
    }

    /// Checks that this handle still holds the lock: that its lease has not
    /// run out since the last renewal Redis confirmed, and, when Redis
    /// answers (within the command timeout), that Redis still holds this
    /// acquisition's record. If Redis cannot be reached the lease answers:
    /// the lock is still this handle's until it runs out.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if it holds nothing; [`Error::LockLost`] if the
    /// lock was taken away (lease run out, connection killed, Redis
    /// restarted, a partition longer than the lease).
    pub fn ensure_held(&self) -> Result<()> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        if holding.lost.load(Ordering::Acquire) || holding.lease_ran_out() {
            holding.lost.store(true, Ordering::Release);
            return Err(self.lost());
        }
        match self.owner() {
            Ok(Some(record)) if record.token == holding.token => Ok(()),
            Ok(_) => {
                holding.lost.store(true, Ordering::Release);
                Err(self.lost())
            }
            // Not reachable (asking may take a command timeout or two):
            // within the lease, as the clock says after asking, the lock is
            // still ours; past it, it may be someone else's.
            Err(_) if !holding.lease_ran_out() => Ok(()),
            Err(_) => {
                holding.lost.store(true, Ordering::Release);
                Err(self.lost_without_asking())
            }
        }
    }

    /// Releases the lock.
    ///
    /// Returns within a few command timeouts, whatever the network does.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if this handle holds nothing;
    /// [`Error::LockLost`] if it was taken away meanwhile (nothing is
    /// removed then); [`Error::Redis`] if Redis could not be reached (the
    /// lock then expires at the end of its lease).
    pub fn release(&self) -> Result<()> {
        let holding = self.state().take().ok_or_else(|| self.not_locked())?;
        self.finish_release(&holding)
    }

    /// Releases the lock if it is still the acquisition of `token`.
    fn release_token(&self, token: &str) -> Result<()> {
        let holding = {
            let mut state = self.state();
            match state.as_ref() {
                Some(h) if h.token == token => state.take(),
                _ => None,
            }
        };
        let holding = holding.ok_or_else(|| self.not_locked())?;
        self.finish_release(&holding)
    }

    fn finish_release(&self, holding: &RedisHolding) -> Result<()> {
        holding.stop_renewing();
        let ran_out = holding.lease_ran_out();
        // Compare-and-delete: removes the key only if it is still ours, so
        // it is safe even after the lease ran out.
        let released: Result<i64> = self.connect().and_then(|mut con| {
            Script::new(&release_script())
                .key(&self.key)
                .key(&self.channel)
                .arg(&holding.token)
                .invoke(&mut con)
                .map_err(|e| redis_error(&self.name, Op::Release, &e))
        });
        if ran_out || holding.lost.load(Ordering::Acquire) {
            return Err(self.lost_without_asking());
        }
        match released? {
            1 => Ok(()),
            _ => Err(self.lost()),
        }
    }

    /// The holder's owner record, if the lock is held (and the value is a
    /// record).
    ///
    /// # Errors
    ///
    /// [`Error::Redis`].
    pub fn owner(&self) -> Result<Option<OwnerRecord>> {
        let mut con = self.connect()?;
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&self.key)
            .query(&mut con)
            .map_err(|e| redis_error(&self.name, Op::Read, &e))?;
        Ok(value.and_then(|v| OwnerRecord::parse(&v)))
    }

    fn acquire_within(&self, timeout: Option<Duration>) -> Result<()> {
        if self.is_held() {
            // Not reentrant: a second acquire through one handle waits for
            // itself, as `LockFile` does, and so times out.
            return Err(self.busy(timeout, None));
        }
        let deadline = Deadline::after(timeout);
        let mut record =
            OwnerRecord::for_process(Mechanism::Redis, None).map_err(|e| Error::Redis {
                name: self.name.clone(),
                op: Op::MakeRecord.into(),
                message: e.to_string(),
            })?;
        let lease_ms = self.options.lease.as_millis().min(u128::from(u64::MAX)) as u64;
        record.lease_ms = Some(lease_ms);
        let mut con = self.connect()?;
        let mut sent = sys::since_boot();
        let mut attempt = |con: &mut Connection| -> Result<u64> {
            sent = sys::since_boot();
            Script::new(ACQUIRE)
                .key(&self.key)
                .key(&self.fence_key)
                .arg(record.to_json())
                .arg(lease_ms)
                .invoke(con)
                .map_err(|e| redis_error(&self.name, Op::Acquire, &e))
        };
        let token = record.token.clone();
        // A grant whose reply was lost (the call timed out after Redis
        // had taken it) would keep the lock from everyone for a lease: give
        // it back, if it is ours, before reporting the error.
        let give_back = |e: Error| {
            self.release_quietly(&token);
            e
        };
        let mut fence = attempt(&mut con).map_err(give_back)?;
        if fence == 0 && !deadline.expired() {
            // Subscribe, then look again, so that a release between the
            // first look and the wait is not missed.
            let mut sub = self.connect()?;
            let mut pubsub = sub.as_pubsub();
            pubsub
                .subscribe(&self.channel)
                .map_err(|e| redis_error(&self.name, Op::Subscribe, &e))?;
            loop {
                fence = attempt(&mut con).map_err(give_back)?;
                if fence > 0 || deadline.expired() {
                    break;
                }
                // Sleep until a release is announced, the holder's lease
                // runs out, the fallback poll, or the deadline.
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&self.key)
                    .query(&mut con)
                    .map_err(|e| redis_error(&self.name, Op::Inspect, &e))?;
                if ttl == -2 {
                    continue; // gone already
                }
                let mut nap = self.options.poll_interval;
                if ttl >= 0 {
                    nap = nap.min(Duration::from_millis(ttl.unsigned_abs() + 1));
                }
                if let Some(left) = deadline.remaining() {
                    nap = nap.min(left);
                }
                pubsub
                    .set_read_timeout(Some(nap.max(Duration::from_millis(1))))
                    .map_err(|e| redis_error(&self.name, Op::Wait, &e))?;
                match pubsub.get_message() {
                    Ok(_) => {}
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(redis_error(&self.name, Op::Wait, &e)),
                }
            }
        }
        if fence > 0 {
            self.start(record, fence, lease_ms, sent);
            return Ok(());
        }
        Err(self.busy(timeout, self.owner().ok().flatten()))
    }

    /// Records the acquisition, granted by a request sent at `sent`, and
    /// starts its renewal thread.
    fn start(&self, record: OwnerRecord, fence: u64, lease_ms: u64, sent: Duration) {
        let holding = Arc::new(RedisHolding {
            token: record.token.clone(),
            fence,
            lost: AtomicBool::new(false),
            safe_until: Mutex::new(sent + self.options.lease),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            renewer: Mutex::new(None),
        });
        let renewer = Renewer {
            client: self.client.clone(),
            key: self.key.clone(),
            channel: self.channel.clone(),
            every: Duration::from_millis((lease_ms / 3).max(1)),
            lease: self.options.lease,
            lease_ms,
            connect_timeout: self.options.connect_timeout,
            io_timeout: self.options.io_timeout(),
            holding: Arc::clone(&holding),
            record,
        };
        let thread = std::thread::Builder::new()
            .name("portalock-redis-renew".to_owned())
            .spawn(move || renewer.run());
        match thread {
            Ok(thread) => *lock(&holding.renewer) = Some(thread),
            // No renewal: the lease runs out; the holder finds out through
            // `ensure_held`.
            Err(_) => holding.lost.store(true, Ordering::Release),
        }
        *self.state() = Some(holding);
    }

    /// Runs the release script for `token` (a bounded try, errors
    /// ignored): deletes the lock only if it holds that token.
    fn release_quietly(&self, token: &str) {
        if let Ok(mut con) = self.connect() {
            let _: redis::RedisResult<i64> = Script::new(&release_script())
                .key(&self.key)
                .key(&self.channel)
                .arg(token)
                .invoke(&mut con);
        }
    }

    fn connect(&self) -> Result<Connection> {
        connect(
            &self.client,
            self.options.connect_timeout,
            self.options.io_timeout(),
        )
        .map_err(|e| redis_error(&self.name, Op::Connect, &e))
    }

    fn state(&self) -> MutexGuard<'_, Option<Arc<RedisHolding>>> {
        lock(&self.held)
    }

    /// The lock's name in errors: its key.
    fn lock_name(&self) -> LockName {
        LockName::RedisKey(self.key.clone())
    }

    fn not_locked(&self) -> Error {
        Error::NotLocked {
            lock: self.lock_name(),
        }
    }

    fn lost(&self) -> Error {
        Error::LockLost {
            lock: self.lock_name(),
            holder: self.owner().ok().flatten().map(Box::new),
        }
    }

    /// `LockLost` without asking Redis who holds the lock now.
    fn lost_without_asking(&self) -> Error {
        Error::LockLost {
            lock: self.lock_name(),
            holder: None,
        }
    }

    fn busy(&self, timeout: Option<Duration>, holder: Option<OwnerRecord>) -> Error {
        Error::contended(self.lock_name(), timeout, holder.map(Box::new))
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        if self.is_held() {
            let _ = self.release();
        }
    }
}

impl RedisHolding {
    fn stop_renewing(&self) {
        *lock(&self.stop) = true;
        self.wake.notify_all();
        if let Some(thread) = lock(&self.renewer).take() {
            let _ = thread.join();
        }
    }
}

/// A connection whose connect, writes and reads are all bounded.
fn connect(
    client: &Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(connect_timeout.min(io_timeout))?;
    con.set_read_timeout(Some(io_timeout))?;
    con.set_write_timeout(Some(io_timeout))?;
    Ok(con)
}

fn redis_error(name: &str, op: Op, e: &redis::RedisError) -> Error {
    Error::Redis {
        name: name.to_owned(),
        op: op.into(),
        message: e.to_string(),
    }
}
