//! A lock in Redis, for processes on machines that share no file system
//! (feature `redis`).
//!
//! # Design: a lease, renewed, and a presence
//!
//! portalocker's `RedisLock` keeps the lock alive in a pub/sub
//! subscription that vanishes with its connection. portalock keeps the
//! lock as a key with a time to live (a *lease*), and adds the
//! subscription as a *presence*:
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
//! - Before it tries the lock, an acquisition subscribes a connection of
//!   its own to `portalock:<name>:present:<token>` (its *presence*),
//!   checks that Redis counts it (`PUBSUB NUMSUB`) and answers a `PING`
//!   there, and keeps it while it holds. The grant script refuses the lock
//!   unless Redis counts that subscriber, and marks the grant with a key of
//!   the same name (renewed and deleted with the lock).
//! - A waiter that finds the lock marked so and no subscriber of its
//!   presence (the holder died, and the kernel closed its connection; or
//!   the connection was closed) takes the lock over once that has lasted
//!   the holder's *presence window* (half its lease, at most 750 ms) and a
//!   tenth more: a script deletes the key only if it still names that
//!   holder, still marked, still without a subscriber. A lock that no
//!   presence marks is never taken over; its lease frees it.
//! - The holder trusts its presence for one window after the sending of
//!   the last `PING` (three per window) or grant that Redis answered on
//!   it, or the last check in which Redis still counted its subscriber. A
//!   ping that fails (a closed connection) counts the lock as lost at once.
//!   [`ensure_held`](RedisLock::ensure_held) asks Redis whether the lock is
//!   still this acquisition's and its presence still counted, and says
//!   `Ok` only while both the lease and the presence window surely hold;
//!   when the window lapsed unanswered (a stalled Redis, a slow or cut
//!   network) it asks again until Redis confirms or the lease runs out.
//!   So by the time a waiter takes over, the holder no longer vouches for
//!   the lock, and a stall alone never costs a holder its lock. A ping
//!   that fails because the connection closed is a loss: the holder gives
//!   the key up at once. An acquisition whose grant was answered late is
//!   checked the same way before `acquire` says `Ok`; while it waits, it
//!   pings on its presence too, and subscribes anew if that went.
//! - A Redis that refuses the subscription (an ACL without `SUBSCRIBE`,
//!   `PUBSUB`, `PING` or the channels `portalock:*`) refuses the
//!   acquisition, with [`Error::Redis`] saying so.
//!
//! The trade-off: a subscription alone frees a dead holder's lock the
//! moment its connection drops, but a holder cannot tell whether it still
//! holds the lock without a working connection, and a network partition
//! frees the lock while the holder runs on. A lease alone keeps a killed
//! holder's lock until it runs out. Both: a killed holder's lock goes
//! within about a second (measured: 0.9 s after the SIGKILL of a holder
//! with a 30 s lease), a holder that is merely slow (stopped, in a long
//! pause) keeps its connection and its lock until its lease runs out, and
//! behind a silent partition (connections open, every byte dropped) Redis
//! still counts the presence, so the lease decides, as before.
//!
//! What remains: the presence is a connection to one Redis server. After a
//! failover (Sentinel) the new primary counts no subscriber, and waiters
//! take over once the window has passed, while a holder cut off together
//! with the old primary may still get answers from it: its
//! [fencing token](RedisLock::fence) is what refuses its late writes.
//! Operations that close pub/sub clients (`CLIENT KILL TYPE pubsub`, a
//! restart) free every lock after its window. Redis Cluster is not
//! supported (`PUBSUB NUMSUB` counts one node's subscribers).
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
use std::time::{Duration, Instant};

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

// KEYS: the lock, the fence counter, the acquisition's presence (a key
// that marks the record as one with a presence, and the name of its
// channel). Refused (-1) unless Redis counts the presence's subscriber:
// a grant never names an acquisition a waiter could take over at once.
const ACQUIRE: &str = r"
if redis.call('PUBSUB', 'NUMSUB', KEYS[3])[2] == 0 then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
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

/// KEYS: the lock, the presence; ARGV: the token, the record, the lease.
fn renew_script() -> String {
    format!(
        "local function owned() {OWNED} end
if owned() then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return 1
end
return 0"
    )
}

/// KEYS: the lock, the release channel, the presence; ARGV: the token.
fn release_script() -> String {
    format!(
        "local function owned() {OWNED} end
if owned() then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0"
    )
}

/// Runs the release script of the lock `key` for the acquisition `token`:
/// deletes the lock (and its presence key) only if it still names that
/// acquisition, and announces the release on `channel`. 1 if it did.
fn release_of(
    con: &mut Connection,
    key: &str,
    channel: &str,
    token: &str,
) -> redis::RedisResult<i64> {
    Script::new(&release_script())
        .key(key)
        .key(channel)
        .key(presence_channel(key, token))
        .arg(token)
        .invoke(con)
}

/// The holder's check. KEYS: the lock, the presence; ARGV: the token.
/// 1: ours, and Redis counts our presence; 0: not ours; -1: ours, but no
/// presence (a waiter may take it over).
fn check_script() -> String {
    format!(
        "local function owned() {OWNED} end
if not owned() then return 0 end
if redis.call('PUBSUB', 'NUMSUB', KEYS[2])[2] == 0 then return -1 end
return 1"
    )
}

/// A waiter's look. KEYS: the lock. The record, the subscribers of its
/// presence channel, and whether its presence key marks it as a holder
/// with a presence; nil when free.
const LOOK: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, rec = pcall(cjson.decode, v)
if not ok or type(rec) ~= 'table' or type(rec['token']) ~= 'string' then
  return {v, -1, 0}
end
local p = KEYS[1] .. ':present:' .. rec['token']
return {v, redis.call('PUBSUB', 'NUMSUB', p)[2], redis.call('EXISTS', p)}";

/// A waiter's takeover. KEYS: the lock, the release channel, the holder's
/// presence; ARGV: the holder's token. Deletes the lock only if it still
/// names that holder, marked as one with a presence, and Redis counts no
/// subscriber of its presence.
fn takeover_script() -> String {
    format!(
        "local function owned() {OWNED} end
if owned() and redis.call('EXISTS', KEYS[3]) == 1
    and redis.call('PUBSUB', 'NUMSUB', KEYS[3])[2] == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
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
    /// Tells the presence thread (see [`Presence`]) that the acquisition
    /// is over: its connection then goes, without counting as a loss.
    presence_done: Arc<AtomicBool>,
    /// Until when the holder trusts that Redis sees its presence (on the
    /// [`sys::since_boot`] clock): [`presence_window`] after the last
    /// `PING` Redis answered on it.
    present_until: Mutex<Duration>,
}

impl RedisHolding {
    /// Whether the lock may have expired in Redis: the lease ran out since
    /// the last renewal that Redis confirmed.
    fn lease_ran_out(&self) -> bool {
        sys::since_boot() >= *lock(&self.safe_until)
    }

    /// Whether a waiter may have taken the lock over: Redis has not
    /// answered the holder's presence for [`presence_window`].
    fn presence_lapsed(&self) -> bool {
        sys::since_boot() >= *lock(&self.present_until)
    }

    /// Whether the lock is lost for good: the loss seen, or the lease run
    /// out. Remembered. (A lapsed presence alone is not a loss: Redis may
    /// still count it; see `RedisLock::ensure_held`.)
    fn surely_lost(&self) -> bool {
        if self.lost.load(Ordering::Acquire) || self.lease_ran_out() {
            self.lose();
            return true;
        }
        false
    }

    /// Marks the acquisition lost, and wakes its renewal thread (which then
    /// gives the key up).
    fn lose(&self) {
        self.lost.store(true, Ordering::Release);
        let _stop = lock(&self.stop);
        self.wake.notify_all();
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
    /// run out since the last renewal Redis confirmed, that Redis has
    /// answered its presence within its window (see the module docs),
    /// and, when Redis answers
    /// (within the command timeout), that Redis still holds this
    /// acquisition's record. If Redis cannot be reached the lease and the
    /// presence answer. When the presence went unanswered for its window
    /// (a stalled Redis, a slow or cut network), it asks again until Redis
    /// confirms or the lease runs out: it returns within the lease at
    /// most.
    ///
    /// # Errors
    ///
    /// [`Error::NotLocked`] if it holds nothing; [`Error::LockLost`] if the
    /// lock was taken away or may have been (lease run out, presence
    /// connection closed or unanswered, Redis restarted, a partition).
    pub fn ensure_held(&self) -> Result<()> {
        let holding = self.state().clone().ok_or_else(|| self.not_locked())?;
        loop {
            if holding.surely_lost() {
                return Err(self.lost_without_asking());
            }
            let sent = sys::since_boot();
            let checked: Result<i64> = self.connect().and_then(|mut con| {
                Script::new(&check_script())
                    .key(&self.key)
                    .key(presence_channel(&self.key, &holding.token))
                    .arg(&holding.token)
                    .invoke(&mut con)
                    .map_err(|e| redis_error(&self.name, Op::Check, &e))
            });
            match checked {
                // Ours, with Redis counting our presence when it answered:
                // no waiter can have taken it over before then, whatever
                // the presence thread last heard (a stalled Redis, a
                // paused holder), so the presence is trusted anew.
                Ok(1) => {
                    let until = sent + presence_window(self.options.lease);
                    let mut trusted = lock(&holding.present_until);
                    if until > *trusted {
                        *trusted = until;
                    }
                }
                // Not ours, or ours without a presence (a waiter may take
                // it over at any moment).
                Ok(_) => {
                    holding.lose();
                    return Err(self.lost());
                }
                // Not reachable (asking may take a command timeout or
                // two): the clock after asking decides, below.
                Err(_) => {}
            }
            // Ok only while the lease and the presence surely hold now (an
            // answer may come late). A lapsed presence is asked about
            // again: Redis may still count it (a stall, a slow network);
            // past the lease, the lock is lost.
            if holding.surely_lost() {
                return Err(self.lost_without_asking());
            }
            if !holding.presence_lapsed() {
                return Ok(());
            }
            std::thread::sleep(ping_every(self.options.lease));
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
            release_of(&mut con, &self.key, &self.channel, &holding.token)
                .map_err(|e| redis_error(&self.name, Op::Release, &e))
        });
        // Present until the key is gone: a waiter must not take the key
        // of a holder that is releasing it.
        holding.presence_done.store(true, Ordering::Release);
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
        let token = record.token.clone();
        let present_key = presence_channel(&self.key, &token);
        let mut attempt = |con: &mut Connection| -> Result<i64> {
            sent = sys::since_boot();
            Script::new(ACQUIRE)
                .key(&self.key)
                .key(&self.fence_key)
                .key(&present_key)
                .arg(record.to_json())
                .arg(lease_ms)
                .invoke(con)
                .map_err(|e| redis_error(&self.name, Op::Acquire, &e))
        };
        // Present before the key can name this acquisition: a waiter that
        // finds the key and no subscriber knows the holder's connection
        // is gone, never that it has not subscribed yet.
        let mut presence = Presence::subscribe(self, &token, &mut con)?;
        // A grant whose reply was lost (the call timed out after Redis
        // had taken it) would keep the lock from everyone for a lease: give
        // it back, if it is ours, before reporting the error.
        let give_back = |e: Error| {
            self.release_quietly(&token);
            e
        };
        let mut gone = Gone::default();
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
                if fence < 0 {
                    // The presence went while waiting (no pings then: a
                    // middlebox's idle timeout): a new one, once.
                    presence = Presence::subscribe(self, &token, &mut con)?;
                    fence = attempt(&mut con).map_err(give_back)?;
                }
                if fence != 0 || deadline.expired() {
                    break;
                }
                // The presence, idle while waiting: a ping each round; a
                // new one if it went.
                if !presence.ping() {
                    presence = Presence::subscribe(self, &token, &mut con)?;
                }
                // Sleep until a release is announced, the holder's lease
                // runs out, a takeover of a holder without a presence is
                // due, the fallback poll, or the deadline.
                let mut nap = self.options.poll_interval;
                match self.take_over_if_gone(&mut con, &mut gone) {
                    Some(Duration::ZERO) => continue,
                    Some(due) => nap = nap.min(due),
                    None => {}
                }
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&self.key)
                    .query(&mut con)
                    .map_err(|e| redis_error(&self.name, Op::Inspect, &e))?;
                if ttl == -2 {
                    continue; // gone already
                }
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
                    Err(e) if read_may_pass(&e) => {}
                    Err(e) => return Err(redis_error(&self.name, Op::Wait, &e)),
                }
            }
        }
        if fence > 0 {
            self.start(record, fence.unsigned_abs(), lease_ms, sent, presence)?;
            // A grant whose answer came late (a slow network, a stopped
            // process) may already be past the presence window: vouch for
            // it before saying Ok, or give it back.
            let late = self
                .state()
                .as_ref()
                .is_some_and(|h| h.presence_lapsed() || h.lease_ran_out());
            if late {
                if let Err(e) = self.ensure_held() {
                    let _ = self.release();
                    return Err(e);
                }
            }
            return Ok(());
        }
        if fence < 0 {
            return Err(Error::Redis {
                name: self.name.clone(),
                op: Op::Subscribe.into(),
                message: "Redis no longer counts this acquisition's presence subscriber".to_owned(),
            });
        }
        Err(self.busy(timeout, self.owner().ok().flatten()))
    }

    /// A waiter's look at the holder's presence (see [`Presence`]). If the
    /// key names an acquisition marked as one with a presence, and Redis
    /// counts no subscriber of it (its connection is gone: the holder
    /// died, or lost its connection), the waiter takes the lock over once
    /// that has lasted the holder's presence window and a margin: by then
    /// the holder's own trust in its presence has run out, so it already
    /// says `LockLost`. The takeover deletes the key only if all of that
    /// still holds. Returns `Some(ZERO)` after a takeover, `Some(wait)`
    /// while one is due later, `None` otherwise (also when Redis does not
    /// answer: the wait goes on).
    fn take_over_if_gone(&self, con: &mut Connection, gone: &mut Gone) -> Option<Duration> {
        let looked: redis::RedisResult<Option<(Vec<u8>, i64, i64)>> =
            Script::new(LOOK).key(&self.key).invoke(con);
        let Ok(Some((value, subscribers, marked))) = looked else {
            *gone = Gone::default();
            return None;
        };
        let holder = OwnerRecord::parse(&value)?;
        if marked != 1 || subscribers != 0 {
            *gone = Gone::default();
            return None;
        }
        let lease = Duration::from_millis(holder.lease_ms.unwrap_or(0));
        let window = presence_window(lease);
        let wait = window + window / 10 + Duration::from_millis(50);
        let since = match &gone.token {
            Some(token) if *token == holder.token => gone.since,
            _ => {
                *gone = Gone {
                    token: Some(holder.token.clone()),
                    since: Instant::now(),
                };
                gone.since
            }
        };
        let left = (since + wait).saturating_duration_since(Instant::now());
        if !left.is_zero() {
            return Some(left);
        }
        let taken: redis::RedisResult<i64> = Script::new(&takeover_script())
            .key(&self.key)
            .key(&self.channel)
            .key(presence_channel(&self.key, &holder.token))
            .arg(&holder.token)
            .invoke(con);
        *gone = Gone::default();
        if taken.ok() != Some(1) {
            return None;
        }
        log::warn!(
            target: "portalock",
            "took over the Redis lock {} held{}: the holder's presence connection is gone",
            self.key,
            crate::error::holder_suffix(Some(&holder))
        );
        Some(Duration::ZERO)
    }

    /// Records the acquisition, granted by a request sent at `sent`, and
    /// starts its renewal thread.
    fn start(
        &self,
        record: OwnerRecord,
        fence: u64,
        lease_ms: u64,
        sent: Duration,
        presence: Presence,
    ) -> Result<()> {
        let holding = Arc::new(RedisHolding {
            token: record.token.clone(),
            fence,
            lost: AtomicBool::new(false),
            safe_until: Mutex::new(sent + self.options.lease),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            renewer: Mutex::new(None),
            presence_done: Arc::clone(&presence.done),
            // The grant itself saw Redis count the presence (the script
            // checks it first).
            present_until: Mutex::new(sent + presence_window(self.options.lease)),
        });
        presence.watch(
            Arc::clone(&holding),
            self.options.lease,
            self.options.io_timeout(),
        );
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
        let started = match thread {
            Ok(thread) => {
                *lock(&holding.renewer) = Some(thread);
                !holding.lost.load(Ordering::Acquire)
            }
            Err(_) => false,
        };
        if !started {
            // No renewal or no presence thread: give the lock back.
            holding.presence_done.store(true, Ordering::Release);
            holding.stop_renewing();
            self.release_quietly(&holding.token);
            return Err(Error::Redis {
                name: self.name.clone(),
                op: Op::Acquire.into(),
                message: "could not start the threads that keep the lock".to_owned(),
            });
        }
        *self.state() = Some(holding);
        Ok(())
    }

    /// Runs the release script for `token` (a bounded try, errors
    /// ignored): deletes the lock only if it holds that token.
    fn release_quietly(&self, token: &str) {
        if let Ok(mut con) = self.connect() {
            let _ = release_of(&mut con, &self.key, &self.channel, token);
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

/// A holder whose presence a waiter found gone, and since when (see
/// `RedisLock::take_over_if_gone`).
#[derive(Debug)]
struct Gone {
    token: Option<String>,
    since: Instant,
}

impl Default for Gone {
    fn default() -> Self {
        Gone {
            token: None,
            since: Instant::now(),
        }
    }
}

/// The channel an acquisition of `key` whose token is `token` subscribes
/// to while it holds the lock.
fn presence_channel(key: &str, token: &str) -> String {
    format!("{key}:present:{token}")
}

/// How long a holder trusts its presence after sending a `PING` (or the
/// grant) that Redis answered: half the lease, at most 750 ms. A waiter
/// that finds the presence gone takes the lock over only once this (and a
/// margin) has passed since it first saw it gone, so by then the holder
/// no longer vouches for the lock.
fn presence_window(lease: Duration) -> Duration {
    (lease / 2).min(Duration::from_millis(750))
}

/// How often a holder's presence thread sends a `PING` on its presence
/// connection: three times per window (every 250 ms for leases of 1.5 s
/// and more). The pings keep the connection from looking idle (to proxies
/// and firewalls), tell the holder that Redis still sees it, and find a
/// closed connection out.
fn ping_every(lease: Duration) -> Duration {
    (presence_window(lease) / 3).max(Duration::from_millis(1))
}

/// An acquisition's presence: a connection of its own subscribed to the
/// channel `<key>:present:<token>`, made (and seen by Redis, through
/// `PUBSUB NUMSUB`) before the acquisition is tried. While the
/// acquisition holds, a thread pings on it and reads from it: a read that
/// fails (the holder's connection killed, Redis restarted or gone) counts
/// the lock as lost at once, and so does a presence that Redis has not
/// answered for [`presence_window`]. A waiter that finds the key of an
/// acquisition whose channel has no subscriber deletes it: the holder died
/// (its connection closed with it), or lost its connection and knows it.
/// A holder that is merely slow (stopped, paused) keeps its connection,
/// and its lock until the lease runs out.
struct Presence {
    con: Connection,
    done: Arc<AtomicBool>,
    /// The number of the last `PING` sent on it.
    pinged: u64,
}

impl Presence {
    /// Subscribes a new connection to the presence channel of `token`,
    /// and checks through `con` (another connection) that Redis counts the
    /// subscriber.
    fn subscribe(lock: &RedisLock, token: &str, con: &mut Connection) -> Result<Presence> {
        let channel = presence_channel(&lock.key, token);
        let refused = |message: String| Error::Redis {
            name: lock.name.clone(),
            op: Op::Subscribe.into(),
            message,
        };
        let mut presence = lock.connect()?;
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(format!("portalock-present-{}", std::process::id()))
            .query(&mut presence);
        // Not a client Redis may evict to save memory (Redis 7; refused
        // by older servers and by ACLs without it, which changes nothing).
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("NO-EVICT")
            .arg("on")
            .query(&mut presence);
        presence
            .send_packed_command(&redis::cmd("SUBSCRIBE").arg(&channel).get_packed_command())
            .and_then(|()| presence.recv_response())
            .map_err(|e| redis_error(&lock.name, Op::Subscribe, &e))
            .and_then(|reply| {
                // A refused subscription (an ACL without the channel or the
                // command) is an error reply, not an error of the call.
                if reply_kind(&reply) == Some("subscribe") {
                    Ok(())
                } else {
                    Err(refused(format!(
                        "Redis refused the subscription to {channel} ({reply:?}): a RedisLock \
                         needs SUBSCRIBE and PUBSUB on the channels portalock:*"
                    )))
                }
            })?;
        // The pings of the presence thread must be answered (an ACL may
        // allow SUBSCRIBE and not PING).
        presence
            .send_packed_command(&redis::cmd("PING").arg(0).get_packed_command())
            .and_then(|()| presence.recv_response())
            .map_err(|e| redis_error(&lock.name, Op::Subscribe, &e))
            .and_then(|reply| match pong_number(&reply) {
                Some(0) => Ok(()),
                _ => Err(refused(format!(
                    "Redis did not answer a PING on the presence connection ({reply:?})"
                ))),
            })?;
        let counted: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(con)
            .map_err(|e| redis_error(&lock.name, Op::Subscribe, &e))?;
        if !counted.iter().any(|(_, n)| *n > 0) {
            return Err(refused(format!(
                "Redis does not count the subscriber of {channel} (PUBSUB NUMSUB says none: a \
                 proxy or a cluster that answers from another node?)"
            )));
        }
        Ok(Presence {
            con: presence,
            done: Arc::new(AtomicBool::new(false)),
            pinged: 0,
        })
    }

    /// Pings on the presence while its acquisition waits (so that no
    /// middlebox takes the connection for idle): whether Redis answered.
    fn ping(&mut self) -> bool {
        self.pinged += 1;
        let n = self.pinged;
        if self
            .con
            .send_packed_command(&redis::cmd("PING").arg(n).get_packed_command())
            .is_err()
        {
            return false;
        }
        loop {
            match self.con.recv_response() {
                Ok(reply) => match pong_number(&reply) {
                    Some(k) if k == n => return true,
                    _ => {}
                },
                Err(_) => return false,
            }
        }
    }

    /// Watches the connection for `holding` until its acquisition is over,
    /// on a thread of its own; a watch that cannot start counts the lock
    /// as lost (its presence would end unseen).
    fn watch(self, holding: Arc<RedisHolding>, lease: Duration, io: Duration) {
        let Presence {
            mut con,
            done,
            pinged,
        } = self;
        let theirs = Arc::clone(&holding);
        let watching = std::thread::Builder::new()
            .name("portalock-redis-present".to_owned())
            .spawn(move || {
                if !present(&mut con, &done, &theirs, lease, io, pinged)
                    && !done.load(Ordering::Acquire)
                {
                    theirs.lose();
                }
            })
            .is_ok();
        if !watching {
            holding.lost.store(true, Ordering::Release);
        }
    }
}

/// The presence thread's loop: a `PING <n>` every [`ping_every`], each
/// answer extending the holder's trust ([`presence_window`] after that
/// ping was sent); a failed write or read (a closed connection) ends it.
/// Returns false when the connection failed, true when the acquisition is
/// over.
///
/// (No read waits between pings. A read that times out makes the client
/// skip the next reply, which it takes for the late answer: the numbers
/// tell which ping a pong answers, whatever was skipped.)
fn present(
    con: &mut Connection,
    done: &AtomicBool,
    holding: &RedisHolding,
    lease: Duration,
    io: Duration,
    pinged: u64,
) -> bool {
    let every = ping_every(lease);
    let window = presence_window(lease);
    if con.set_read_timeout(Some(io)).is_err() {
        return false;
    }
    // The sending time of the pings not yet answered, by number.
    let mut waiting: std::collections::VecDeque<(u64, Duration)> = Default::default();
    let mut n: u64 = pinged;
    loop {
        if done.load(Ordering::Acquire) {
            return true;
        }
        n += 1;
        let next = Instant::now() + every;
        waiting.push_back((n, sys::since_boot()));
        if waiting.len() > 64 {
            waiting.pop_front();
        }
        if con
            .send_packed_command(&redis::cmd("PING").arg(n).get_packed_command())
            .is_err()
        {
            return false;
        }
        loop {
            match con.recv_response() {
                Ok(reply) => {
                    let Some(answered) = pong_number(&reply) else {
                        // (nothing is published on the channel; a stray
                        // message changes nothing)
                        continue;
                    };
                    if let Some(&(_, sent)) = waiting.iter().find(|(k, _)| *k == answered) {
                        let until = sent + window;
                        let mut trusted = lock(&holding.present_until);
                        if until > *trusted {
                            *trusted = until;
                        }
                    }
                    waiting.retain(|(k, _)| *k > answered);
                    if answered == n {
                        break;
                    }
                }
                // Unanswered within the command timeout, or a read that a
                // stop interrupted: no trust gained, the next ping tries
                // again.
                Err(e) if read_may_pass(&e) => break,
                Err(_) => return false,
            }
        }
        while !done.load(Ordering::Acquire) {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(PRESENCE_LOOK));
        }
    }
}

/// The number a pub/sub `PING <n>` reply carries: `["pong", "<n>"]`
/// (RESP2), or the bare number (RESP3).
fn pong_number(reply: &redis::Value) -> Option<u64> {
    let number = match reply {
        redis::Value::Array(items) if reply_kind(reply) == Some("pong") => items.get(1)?,
        redis::Value::BulkString(_) => reply,
        _ => return None,
    };
    match number {
        redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

/// How long the presence thread sleeps between two looks at whether its
/// acquisition is over.
const PRESENCE_LOOK: Duration = Duration::from_millis(50);

/// Whether a failed read leaves the connection usable: it timed out, or a
/// stop (SIGSTOP and SIGCONT) interrupted it; the connection did not close.
fn read_may_pass(e: &redis::RedisError) -> bool {
    e.is_timeout() || (e.is_io_error() && !e.is_connection_dropped())
}

/// The kind of a pub/sub reply this client waits for (`subscribe`,
/// `pong`): its first element, lower-case; `None` for any other.
fn reply_kind(reply: &redis::Value) -> Option<&'static str> {
    if let redis::Value::Push { kind, .. } = reply {
        // RESP3
        return match kind {
            redis::PushKind::Subscribe => Some("subscribe"),
            _ => None,
        };
    }
    let redis::Value::Array(items) = reply else {
        return None;
    };
    let Some(redis::Value::BulkString(kind)) = items.first() else {
        return None;
    };
    ["subscribe", "pong"]
        .into_iter()
        .find(|k| kind.eq_ignore_ascii_case(k.as_bytes()))
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}
