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
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, Script};

use crate::error::{Error, LockName, Op, Result};
use crate::holding::lock;
use crate::owner::OwnerRecord;
use crate::sys;
use crate::vocab::Mechanism;
use crate::wait::Deadline;

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

/// Options for a [`RedisLock`]; [`RedisLock::options`] makes one.
#[derive(Debug, Clone)]
pub struct RedisLockOptions {
    lease: Duration,
    timeout: Option<Duration>,
    poll_interval: Duration,
    connect_timeout: Duration,
    command_timeout: Option<Duration>,
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
    /// at least 30 ms.
    pub fn lease(&mut self, lease: Duration) -> &mut Self {
        self.lease = lease.max(Duration::from_millis(30));
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
    fn io_timeout(&self) -> Duration {
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
    /// [`Error::Redis`] if `url` is not a Redis URL.
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

/// The renewal thread of one acquisition.
struct Renewer {
    client: Client,
    key: String,
    channel: String,
    every: Duration,
    lease: Duration,
    lease_ms: u64,
    connect_timeout: Duration,
    io_timeout: Duration,
    holding: Arc<RedisHolding>,
    record: OwnerRecord,
}

impl Renewer {
    fn run(mut self) {
        let script = Script::new(&renew_script());
        let mut con: Option<Connection> = None;
        let mut next = Instant::now() + self.every;
        loop {
            {
                let mut stop = lock(&self.holding.stop);
                while !*stop {
                    let left = next.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    stop = self
                        .holding
                        .wake
                        .wait_timeout(stop, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if *stop {
                    return;
                }
            }
            self.record.beat += 1;
            let sent = sys::since_boot();
            let sent_at = Instant::now();
            let renewed = match con.take() {
                Some(c) => Ok(c),
                None => self.connect_named(),
            }
            .and_then(|mut c| {
                let renewed = script
                    .key(&self.key)
                    .arg(&self.holding.token)
                    .arg(self.record.to_json())
                    .arg(self.lease_ms)
                    .invoke::<i64>(&mut c);
                con = Some(c);
                renewed
            });
            match renewed {
                Ok(1) => {
                    *lock(&self.holding.safe_until) = sent + self.lease;
                    next = sent_at + self.every;
                }
                // Gone or someone else's: lost for good.
                Ok(_) => return self.lose(),
                // No answer (a partition, a server that stalls, a
                // connection closed or refused: an idle timeout of the
                // server, a proxy or the server restarting): the key may
                // still be ours. Try again on a new connection until the
                // lease has run out since the last renewal Redis confirmed.
                Err(_) if !self.holding.lease_ran_out() => {
                    con = None;
                    next = Instant::now() + self.every / 4;
                }
                Err(_) => return self.lose(),
            }
        }
    }

    /// A bounded connection, named after the holder, so that an operator
    /// can see (and kill) the lock's lifeline.
    fn connect_named(&self) -> redis::RedisResult<Connection> {
        let mut con = connect(&self.client, self.connect_timeout, self.io_timeout)?;
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("portalock-holder-{}", self.record.pid))
            .query(&mut con);
        Ok(con)
    }

    /// The lock is lost (its key is gone or someone else's, or its lease
    /// ran out unconfirmed): say so, and delete it if it is still ours (a
    /// bounded try) so that waiters need not wait out the lease.
    fn lose(&self) {
        self.holding.lost.store(true, Ordering::Release);
        if let Ok(mut con) = connect(&self.client, self.connect_timeout, self.io_timeout) {
            let _: redis::RedisResult<i64> = Script::new(&release_script())
                .key(&self.key)
                .key(&self.channel)
                .arg(&self.holding.token)
                .invoke(&mut con);
        }
    }
}

/// Proof that a [`RedisLock`] holds its lock; dropping it releases the
/// lock.
///
/// The guard releases only the acquisition that created it, as
/// [`LockGuard`](crate::LockGuard) does: if the lock was released through
/// the handle meanwhile and taken again, dropping the old guard leaves the
/// new acquisition alone.
#[derive(Debug)]
#[must_use = "if unused the lock is released at once"]
pub struct RedisGuard<'a> {
    lock: &'a RedisLock,
    token: String,
}

impl RedisGuard<'_> {
    /// The lock.
    pub fn lock(&self) -> &RedisLock {
        self.lock
    }

    /// Releases the lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// As [`RedisLock::release`].
    pub fn release(mut self) -> Result<()> {
        // An empty token matches no acquisition: `Drop` then does nothing.
        let token = std::mem::take(&mut self.token);
        self.lock.release_token(&token)
    }
}

impl Drop for RedisGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release_token(&self.token);
    }
}

fn redis_error(name: &str, op: Op, e: &redis::RedisError) -> Error {
    Error::Redis {
        name: name.to_owned(),
        op: op.into(),
        message: e.to_string(),
    }
}
