//! The owner record that every lock carries.
//!
//! A record is a small JSON object (format version 2):
//!
//! ```json
//! {"v":2,"token":"5f0c…","pid":4242,"hostname":"build-7",
//!  "machine":"9b1f…","boot":"aef3770f-…","pidns":"pid:[4026531836]",
//!  "start":"linux-ticks:81234","acquired_at":"2026-11-22T10:00:00Z",
//!  "strategy":"mkdir","lease_ms":null}
//! ```
//!
//! A holder with a lease adds `"beat":N`, the number of times it has
//! refreshed the record; a lock taken for a command (`portalock run`,
//! [`LockFile::spawn`](crate::LockFile::spawn)) adds
//! `"command":{"pid":4243,"start":"linux-ticks:81240"}`.
//!
//! It is written so that a reader never sees half of it (a private file
//! linked or renamed into place, or, for the `Os` strategy, one write into a
//! file the writer has locked), and it is read with a size cap: anything
//! larger than [`MAX_RECORD_LEN`], not UTF-8, not JSON, or with fields this
//! version does not know is an *unknown owner* (`None`), never a panic and
//! never an unbounded read.
//!
//! # Format versions
//!
//! The version `v` changes whenever a field is added or its meaning
//! changes. A reader judges only records of its own version. A record of
//! another version (recognised by its `v` and its token) is an owner that
//! this reader cannot judge: it is shown as unknown and is never broken
//! as stale (only a forced break removes it), so that an older portalock
//! never breaks a newer one's live lock. Version 1 was never published.
//!
//! # Which process a record names
//!
//! `pid` alone does not name a process: PIDs are reused, and a PID means
//! something only on its own machine, boot and PID namespace. A record
//! therefore carries the host name, a hash of the machine id, the boot id,
//! the PID namespace and the process's start stamp, and liveness is judged
//! only where they match this process's (see [`Liveness`]).
//!
//! The start stamp never depends on the wall clock, which NTP, chrony or
//! `date -s` may step at any time:
//!
//! - Linux: `linux-ticks:N`, the start time in clock ticks since boot
//!   (`/proc/<pid>/stat`, field 22). It never changes for a process, and
//!   the boot id beside it makes it exact.
//! - macOS: `darwin-created:N`, the creation time in seconds that the
//!   kernel stored when the process was made; a later clock step does not
//!   change it.
//! - Windows: `windows-created:N`, likewise (`GetProcessTimes`).
//! - FreeBSD and the other BSDs: `bsd-since-boot:N`, the start minus the
//!   boot time. The kernel derives both from the boot time, which moves
//!   with the clock, so their difference does not; the two readings may
//!   differ by a second, so stamps a second apart count as equal.
//!
//! Two stamps of one scheme are compared for equality; stamps of two
//! schemes (a record written on another platform) are not compared at all,
//! and the process is then judged by whether its PID exists.

use std::io::{self, Read};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::vocab::{Mechanism, Writers};

mod liveness;
#[cfg(test)]
mod tests;
mod token;

#[cfg(test)]
pub(crate) use liveness::host_tag;
pub use liveness::Liveness;
use liveness::{is_exact_boot_id, process_liveness, running, same_boot};
pub(crate) use liveness::{
    pid_reused, pid_runs, process_tags, start_of, tagged_process_runs, Identity,
};
pub(crate) use token::{fnv64, is_token, new_token, token_maker};

/// The largest owner record portalock reads, in bytes. Readers never read
/// more than this (plus one byte to notice the excess).
pub const MAX_RECORD_LEN: usize = 4096;

/// The format version written by this release.
pub const RECORD_VERSION: u32 = 2;

/// Who holds a lock: the JSON owner record stored in every lock artifact.
///
/// Read one with [`LockFile::owner`](crate::LockFile::owner) or parse one
/// with [`OwnerRecord::parse`].
///
/// The struct is `#[non_exhaustive]`: a record comes from a lock or from
/// [`parse`](OwnerRecord::parse), never from a struct literal outside
/// portalock.
///
/// # Examples
///
/// ```
/// use portalock::{LockFile, LockStrategy, Mechanism, OwnerRecord};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("x.lock");
/// let lock = LockFile::with_strategy(&path, LockStrategy::Link)?;
/// let guard = lock.lock()?;
/// let owner = lock.owner()?.expect("a record");
/// assert_eq!(owner.pid, std::process::id());
/// assert_eq!(owner.token, guard.token()); // this acquisition's, no other's
/// assert_eq!(owner.strategy, Mechanism::Link);
/// assert_eq!(owner.lease(), None);
/// println!("held by pid {} on {} since {:?}", owner.pid, owner.hostname, owner.acquired_at);
///
/// // A `Link` lock file is the record itself: anyone may parse it.
/// let json = std::fs::read(&path)?;
/// assert_eq!(OwnerRecord::parse(&json), Some(owner));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OwnerRecord {
    /// Format version; always [`RECORD_VERSION`] for a parsed record.
    pub v: u32,
    /// 32 hex digits unique to one acquisition (the maker's machine tag and
    /// PID, then 64 bits from a per-process random key). A holder
    /// releases only an artifact that still carries its token.
    pub token: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder's machine.
    pub hostname: String,
    /// A hash of the holder's machine id (Linux `/etc/machine-id`), when
    /// known: with the host name it tells an earlier boot of this machine
    /// from another machine.
    pub machine: Option<String>,
    /// Boot id of the holder's machine (Linux `boot_id`; elsewhere the boot
    /// time), when known.
    pub boot: Option<String>,
    /// PID namespace of the holder (Linux), when known.
    pub pidns: Option<String>,
    /// Start stamp of the holder's process (see the module docs), when
    /// known. A PID reused by a later process has another start stamp.
    pub start: Option<String>,
    /// When the lock was taken, by the holder's wall clock, to the second
    /// (RFC 3339 in UTC in the record, as `"2026-11-22T10:00:00Z"`; a
    /// text this version cannot read as such a time is read as the
    /// epoch). For people and logs only: no rule of portalock reads it,
    /// since clocks of other hosts differ and a clock can be stepped.
    #[serde(with = "rfc3339")]
    pub acquired_at: SystemTime,
    /// The strategy that took the lock.
    pub strategy: Mechanism,
    /// Lease length in milliseconds, when the holder keeps a lease.
    pub lease_ms: Option<u64>,
    /// How many times a holder with a lease has refreshed this record. A
    /// contender that sees it change knows the holder is still there.
    /// Absent (0) in records without a lease.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beat: u64,
    /// The command the lock was taken for (`portalock run`,
    /// [`LockFile::spawn`](crate::LockFile::spawn)): the lock counts as
    /// alive while the holder or its command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<RecordedProcess>,
}

/// A process named by an [`OwnerRecord`] beside its holder: the command a
/// lock was taken for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RecordedProcess {
    /// Its process id, on the holder's machine.
    pub pid: u32,
    /// Its start stamp, as [`OwnerRecord::start`].
    pub start: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OwnerRecord {
    /// Parses a record from raw bytes.
    ///
    /// Returns `None` for anything that is not a complete record of
    /// [`RECORD_VERSION`]: empty input, more than [`MAX_RECORD_LEN`] bytes,
    /// invalid UTF-8, malformed or truncated JSON, wrong field types,
    /// unknown fields or another format version.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::OwnerRecord;
    ///
    /// assert!(OwnerRecord::parse(b"not json").is_none());
    /// let json = br#"{"v":2,"token":"ab","pid":7,"hostname":"h","machine":null,
    ///   "boot":null,"pidns":null,"start":null,
    ///   "acquired_at":"2026-11-22T10:00:00Z","strategy":"link","lease_ms":null}"#;
    /// assert_eq!(OwnerRecord::parse(json).map(|r| r.pid), Some(7));
    /// ```
    pub fn parse(bytes: &[u8]) -> Option<OwnerRecord> {
        if bytes.is_empty() || bytes.len() > MAX_RECORD_LEN {
            return None;
        }
        let record: OwnerRecord = serde_json::from_slice(bytes).ok()?;
        // A record names what took the lock, never `auto` (which is no
        // `Mechanism`).
        (record.v == RECORD_VERSION).then_some(record)
    }

    /// Serializes the record as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A fresh record for the calling process, with a new token.
    #[cfg(test)]
    pub(crate) fn for_this_process(strategy: Mechanism) -> io::Result<OwnerRecord> {
        OwnerRecord::for_process(strategy, None)
    }

    /// A fresh record for the process `pid` of this machine (the calling
    /// process if `None`), with a new token. Fails with `NotFound`
    /// if `pid` does not run.
    pub(crate) fn for_process(strategy: Mechanism, pid: Option<u32>) -> io::Result<OwnerRecord> {
        let me = Identity::get();
        let (pid, start) = match pid {
            None => (me.pid, me.start.clone()),
            Some(pid) if pid == me.pid => (me.pid, me.start.clone()),
            Some(pid) => (pid, running(pid)?),
        };
        Ok(OwnerRecord {
            v: RECORD_VERSION,
            token: new_token()?,
            pid,
            hostname: me.hostname.clone(),
            machine: me.machine.clone(),
            boot: me.boot.clone(),
            pidns: me.pidns.clone(),
            start,
            acquired_at: now_to_the_second(),
            strategy,
            lease_ms: None,
            beat: 0,
            command: None,
        })
    }

    /// Whether the holder named by this record (or the command it took the
    /// lock for) still runs, judged only where its PID means something to
    /// the caller (see [`Liveness`]).
    ///
    /// Looks up the one or two PIDs (Linux: `/proc/<pid>/stat`, then
    /// `kill(pid, 0)` if that cannot be read), never the whole process
    /// table. A clock step cannot change the answer: the start stamps
    /// compared do not depend on the wall clock.
    ///
    /// A waiter judges the lock it waits for with
    /// [`LockFile::owner_liveness`](crate::LockFile::owner_liveness), which
    /// also knows where the lock lives.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::{LockFile, Liveness};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let lock = LockFile::new(dir.path().join("x.lock"))?;
    /// let _guard = lock.lock()?;
    /// let owner = lock.owner()?.expect("our own record");
    /// assert_eq!(owner.liveness(), Liveness::Alive);
    ///
    /// // A holder on another machine: its PID means nothing here, so it
    /// // is never judged dead (its lock needs a lease to expire).
    /// let mut elsewhere = owner.clone();
    /// elsewhere.hostname = format!("not-{}", owner.hostname);
    /// assert_eq!(elsewhere.liveness(), Liveness::Unknown);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn liveness(&self) -> Liveness {
        let me = Identity::get();
        if self.hostname != me.hostname {
            return Liveness::Unknown;
        }
        if !same_boot(self.boot.as_deref(), me.boot.as_deref()) {
            return Liveness::Unknown;
        }
        if self.pidns != me.pidns {
            return Liveness::Unknown;
        }
        let holder = process_liveness(self.pid, self.start.as_deref());
        match &self.command {
            Some(command) => holder.or(process_liveness(command.pid, command.start.as_deref())),
            None => holder,
        }
    }

    /// The liveness of the owner of a lock whose directory `writers` write
    /// to: as [`liveness`](OwnerRecord::liveness), and an owner from an
    /// earlier boot of this very machine is dead where only this machine
    /// writes (a disk, tmpfs; not a network file system). There a
    /// record with this machine's host name and machine id and another
    /// (Linux) boot id was written before this boot: every process of that
    /// boot has ended. On a network file system the same record may be a
    /// clone's (same host name and machine id), alive: `Unknown` there.
    pub(crate) fn liveness_here(&self, writers: Writers) -> Liveness {
        match self.liveness() {
            Liveness::Unknown
                if writers == Writers::ThisMachine && self.is_from_an_earlier_boot() =>
            {
                Liveness::Dead
            }
            liveness => liveness,
        }
    }

    /// Whether this record was written by this machine (host name and
    /// machine id) in an earlier boot (another exact boot id).
    fn is_from_an_earlier_boot(&self) -> bool {
        let me = Identity::get();
        self.hostname == me.hostname
            && self.machine.is_some()
            && self.machine == me.machine
            && is_exact_boot_id(self.boot.as_deref())
            && is_exact_boot_id(me.boot.as_deref())
            && self.boot != me.boot
    }

    /// Whether this record names the process `pid` of this machine as its
    /// holder: the same PID, host, boot and PID namespace as the caller's,
    /// and `pid` runs with the recorded start stamp (or one that cannot be
    /// compared).
    pub(crate) fn is_held_for(&self, pid: u32) -> bool {
        let me = Identity::get();
        self.pid == pid
            && self.hostname == me.hostname
            && same_boot(self.boot.as_deref(), me.boot.as_deref())
            && self.pidns == me.pidns
            && process_liveness(pid, self.start.as_deref()) == Liveness::Alive
    }

    /// The lease of this record, if its holder keeps one.
    pub fn lease(&self) -> Option<Duration> {
        self.lease_ms.map(Duration::from_millis)
    }
}

impl OwnerRecord {
    /// Sets `acquired_at` to now, for a record about to be written again
    /// after a wait.
    pub(crate) fn touch(&mut self) {
        self.acquired_at = now_to_the_second();
    }

    /// A new token for another attempt: every attempt's private names are
    /// its own, so none can meet a name an earlier attempt removed that
    /// still lingers (Windows keeps a deleted file's name while anyone has
    /// it open).
    pub(crate) fn renew(&mut self) -> io::Result<()> {
        self.token = new_token()?;
        Ok(())
    }
}

/// Whether `bytes` is the record of the acquisition with `token`: records
/// written by this version start with their token, so the common case
/// needs no parsing.
pub(crate) fn record_has_token(bytes: &[u8], token: &str) -> bool {
    const PREFIX: &[u8] = b"{\"v\":2,\"token\":\"";
    match bytes.strip_prefix(PREFIX) {
        Some(rest) if rest.len() > token.len() => {
            rest.starts_with(token.as_bytes()) && rest[token.len()] == b'"'
        }
        _ => OwnerRecord::parse(bytes).is_some_and(|rec| rec.token == token),
    }
}

/// The format version of `bytes` if they hold a record of another version
/// than this one's (a JSON object with a numeric `v` and a token): an
/// owner this reader cannot judge.
pub(crate) fn other_version(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u64,
        token: String,
    }
    if bytes.len() > MAX_RECORD_LEN {
        return None;
    }
    let versioned: Versioned = serde_json::from_slice(bytes).ok()?;
    (versioned.v != u64::from(RECORD_VERSION) && is_token(&versioned.token)).then_some(versioned.v)
}

/// Reads at most [`MAX_RECORD_LEN`] + 1 bytes. The buffer holds them all
/// from the start: a record is read with one `read`, and one more that
/// finds the end (a smaller start would cost a read per growth).
pub(crate) fn read_capped(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(MAX_RECORD_LEN + 1);
    reader
        .take(MAX_RECORD_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Now, to the second: what a record says (and what it keeps after a
/// round trip through its JSON).
fn now_to_the_second() -> SystemTime {
    let now = SystemTime::now();
    match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// `acquired_at` in a record: RFC 3339 in UTC, to the second unless the
/// time has a fraction (a record parsed from one keeps it).
mod rfc3339 {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Deserializer, Serializer};

    /// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
    const LAST: Duration = Duration::from_secs(253_402_300_799);

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // (humantime formats only 1970 to 9999: clamp what a caller set)
        let since = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .min(LAST);
        let t = SystemTime::UNIX_EPOCH + since;
        if since.subsec_nanos() == 0 {
            s.collect_str(&humantime::format_rfc3339_seconds(t))
        } else {
            s.collect_str(&humantime::format_rfc3339_nanos(t))
        }
    }

    /// Any string: a time this version cannot read (another offset than
    /// `Z`, another format) is the epoch rather than no record at all, for
    /// no rule reads it, and a record that does not parse would be judged
    /// as no record (broken after the grace period, or never).
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        Ok(humantime::parse_rfc3339(&text).unwrap_or(SystemTime::UNIX_EPOCH))
    }
}
