//! The thread that renews a held Redis lock's lease, and notices when it
//! was lost.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use redis::{Client, Connection, Script};

use crate::holding::lock;
use crate::owner::OwnerRecord;
use crate::sys;

use super::{connect, release_of, renew_script, RedisHolding};

/// The renewal thread of one acquisition.
pub(super) struct Renewer {
    pub(super) client: Client,
    pub(super) key: String,
    pub(super) channel: String,
    pub(super) every: Duration,
    pub(super) lease: Duration,
    pub(super) lease_ms: u64,
    pub(super) connect_timeout: Duration,
    pub(super) io_timeout: Duration,
    pub(super) holding: Arc<RedisHolding>,
    pub(super) record: OwnerRecord,
}

impl Renewer {
    pub(super) fn run(mut self) {
        let script = Script::new(&renew_script());
        let mut con: Option<Connection> = None;
        let mut next = Instant::now() + self.every;
        loop {
            {
                let mut stop = lock(&self.holding.stop);
                while !*stop && !self.holding.lost.load(Ordering::Acquire) {
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
            // Lost as the holder sees it (its presence closed): give the
            // lock up rather than keep it from waiters.
            if self.holding.lost.load(Ordering::Acquire) {
                return self.lose();
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
                    .key(super::presence_channel(&self.key, &self.holding.token))
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
    pub(super) fn connect_named(&self) -> redis::RedisResult<Connection> {
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
    pub(super) fn lose(&self) {
        self.holding.lost.store(true, Ordering::Release);
        self.holding.presence_done.store(true, Ordering::Release);
        if let Ok(mut con) = connect(&self.client, self.connect_timeout, self.io_timeout) {
            let _ = release_of(&mut con, &self.key, &self.channel, &self.holding.token);
        }
    }
}
