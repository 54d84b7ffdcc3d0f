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

use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::sys::{self, ProcessState};
use crate::vocab::{Mechanism, Writers};

/// The largest owner record portalock reads, in bytes. Readers never read
/// more than this (plus one byte to notice the excess).
pub const MAX_RECORD_LEN: usize = 4096;

/// The format version written by this release.
pub const RECORD_VERSION: u32 = 2;

/// Who holds a lock: the JSON owner record stored in every lock artifact.
///
/// Read one with [`LockFile::owner`](crate::LockFile::owner) or parse one
/// with [`OwnerRecord::parse`].
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
    /// When the lock was taken, RFC 3339 in UTC.
    pub acquired_at: String,
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

/// Whether the process named by an owner record still runs, as far as the
/// calling process can tell.
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
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Same host, same boot, same PID namespace, and the holder (or the
    /// command it took the lock for) runs: a process with its PID runs,
    /// and its start stamp is the recorded one or cannot be compared.
    Alive,
    /// The holder cannot release the lock any more, on proof: same host,
    /// boot and PID namespace, and neither the holder nor its command runs
    /// (no process with the PID exists, or a zombie, or one with another
    /// start stamp: the PID was reused).
    ///
    /// A lock's waiters also count as dead an owner from an earlier boot
    /// of this very machine, when the lock lives on a file system only
    /// this machine writes to (see [`LockFile::break_lock`]).
    ///
    /// [`LockFile::break_lock`]: crate::LockFile::break_lock
    Dead,
    /// Nothing can be proved: the record names another host, boot or PID
    /// namespace (a container sharing the volume), or the process table
    /// could not be read. An unknown owner is never judged dead.
    Unknown,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        })
    }
}

impl Liveness {
    /// The liveness of a lock held by two processes: alive while either
    /// is, dead when both are.
    fn or(self, other: Liveness) -> Liveness {
        match (self, other) {
            (Liveness::Alive, _) | (_, Liveness::Alive) => Liveness::Alive,
            (Liveness::Dead, Liveness::Dead) => Liveness::Dead,
            _ => Liveness::Unknown,
        }
    }
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
            acquired_at: now_rfc3339(),
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

/// The start stamp of `pid`, which must run; `NotFound` if it does not.
fn running(pid: u32) -> io::Result<Option<String>> {
    match sys::process_state(pid) {
        ProcessState::Running { start } => Ok(start),
        ProcessState::Exited | ProcessState::Unknown => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with pid {pid} runs on this machine"),
        )),
    }
}

/// The stamp of `pid`, if it runs (for naming a command in a record).
pub(crate) fn start_of(pid: u32) -> Option<String> {
    match sys::process_state(pid) {
        ProcessState::Running { start } => start,
        _ => None,
    }
}

/// Whether the process `pid` of this machine and PID namespace, which
/// started at `recorded` (when known), still runs.
fn process_liveness(pid: u32, recorded: Option<&str>) -> Liveness {
    match sys::process_state(pid) {
        ProcessState::Exited => Liveness::Dead,
        ProcessState::Unknown => Liveness::Unknown,
        ProcessState::Running { start } => match (recorded, start.as_deref()) {
            (Some(recorded), Some(now)) if same_start(recorded, now) == Some(false) => {
                Liveness::Dead
            }
            _ => Liveness::Alive,
        },
    }
}

/// Whether two start stamps name one process start: `None` if they cannot
/// be compared (two schemes, or one not understood).
fn same_start(a: &str, b: &str) -> Option<bool> {
    let (scheme_a, value_a) = a.split_once(':')?;
    let (scheme_b, value_b) = b.split_once(':')?;
    if scheme_a != scheme_b {
        return None;
    }
    let (x, y): (u64, u64) = (value_a.parse().ok()?, value_b.parse().ok()?);
    Some(match scheme_a {
        "linux-ticks" | "darwin-created" | "windows-created" => x == y,
        // Start and boot time read apart: a second either way.
        "bsd-since-boot" => x.abs_diff(y) <= 1,
        _ => return None,
    })
}

impl OwnerRecord {
    /// Sets `acquired_at` to now, for a record about to be written again
    /// after a wait.
    pub(crate) fn touch(&mut self) {
        self.acquired_at = now_rfc3339();
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

/// Reads at most [`MAX_RECORD_LEN`] + 1 bytes.
pub(crate) fn read_capped(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(256);
    reader
        .take(MAX_RECORD_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// A new token: 32 lower-case hex digits, unique for as long as records
/// live: this machine's [`host_tag`] (8 digits), the creating process's
/// PID (8), and 64 bits derived from a per-process random key and a
/// counter (16).
///
/// The first half tells who made any artifact named after the token (a
/// claim, a record file) even when the artifact is empty, so that what a
/// killed process left can be told from what a live one is writing.
/// The random key is drawn from the OS once per process (again after a
/// `fork`, seen as a change of PID); the counter goes through a bijective
/// mix, so no two tokens of one process are equal, and tokens of two
/// processes differ in their PID or, across restarts that reuse a PID,
/// collide only as two random keys would. Tokens are not secrets (every
/// reader of a lock sees them); this saves a `getrandom` call per
/// acquisition.
pub(crate) fn new_token() -> io::Result<String> {
    struct Source {
        pid: u32,
        key: [u64; 2],
        counter: u64,
    }
    static SOURCE: Mutex<Option<Source>> = Mutex::new(None);
    let pid = std::process::id();
    let (hi, lo) = {
        let mut source = SOURCE.lock().unwrap_or_else(PoisonError::into_inner);
        let source = match source.as_mut() {
            Some(s) if s.pid == pid => s,
            _ => {
                let mut raw = [0u8; 16];
                getrandom::fill(&mut raw).map_err(io::Error::other)?;
                let (a, b) = raw.split_at(8);
                let word = |half: &[u8]| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(half);
                    u64::from_le_bytes(bytes)
                };
                source.insert(Source {
                    pid,
                    key: [word(a), word(b)],
                    counter: 0,
                })
            }
        };
        source.counter = source.counter.wrapping_add(1);
        (
            u64::from(pid),
            mix(source.key[0].wrapping_add(source.counter) ^ source.key[1]),
        )
    };
    let mut token = String::with_capacity(32);
    token.push_str(&host_tag());
    for (word, digits) in [(hi, 8), (lo, 16)] {
        for shift in (0..digits).rev() {
            let digit = ((word >> (shift * 4)) & 0xf) as u8;
            token.push(char::from(b"0123456789abcdef"[usize::from(digit)]));
        }
    }
    Ok(token)
}

/// Whether `token` has the shape of the tokens portalock writes, so that it
/// can be part of a file name.
pub(crate) fn is_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The process that made `token`, if it was made by a process of this
/// machine (see [`new_token`]): its PID.
pub(crate) fn token_maker(token: &str) -> Option<u32> {
    let (tag, rest) = (token.get(..8)?, token.get(8..16)?);
    if tag != host_tag() || token.len() != 32 {
        return None;
    }
    u32::from_str_radix(rest, 16).ok()
}

/// A bijection of `u64` that scatters its input (the splitmix64 finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What identifies the calling process to a reader of its records;
/// computed once per process (again in a child after `fork`, which has
/// another PID, and may have another PID namespace).
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    pub(crate) hostname: String,
    /// A hash of the machine id, never the id itself (systemd asks that it
    /// not be shown to others).
    pub(crate) machine: Option<String>,
    pub(crate) boot: Option<String>,
    pub(crate) pidns: Option<String>,
    pub(crate) start: Option<String>,
    /// This machine, boot and PID namespace, 8 hex digits (see
    /// [`host_tag`]).
    host_tag: String,
    /// This host, machine and PID namespace (16 hex digits), and this boot
    /// (see [`process_tags`]).
    machine_tag: String,
    boot_tag: String,
}

impl Identity {
    pub(crate) fn get() -> Arc<Identity> {
        static ME: Mutex<Option<Arc<Identity>>> = Mutex::new(None);
        let pid = std::process::id();
        let mut me = ME.lock().unwrap_or_else(PoisonError::into_inner);
        match me.as_ref() {
            Some(id) if id.pid == pid => Arc::clone(id),
            _ => {
                let id = Arc::new(Identity::of_this_process(pid));
                *me = Some(Arc::clone(&id));
                id
            }
        }
    }

    fn of_this_process(pid: u32) -> Identity {
        let hostname = sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_owned());
        let machine = sys::machine_id().map(|id| format!("{:016x}", fnv64(&["portalock", &id])));
        let boot = sys::boot_id();
        let pidns = sys::pid_namespace();
        let start = match sys::process_state(pid) {
            ProcessState::Running { start } => start,
            _ => None,
        };
        let or_empty = |s: &Option<String>| s.clone().unwrap_or_default();
        // A boot time (not a boot id) is seen a second or two apart by two
        // processes: it cannot go into a hash that must match exactly.
        let exact_boot = boot.clone().filter(|b| is_exact_boot_id(Some(b)));
        let host_tag = format!(
            "{:08x}",
            fnv32(&[&hostname, &or_empty(&exact_boot), &or_empty(&pidns)])
        );
        let machine_tag = format!(
            "{:016x}",
            fnv64(&[&hostname, &or_empty(&machine), &or_empty(&pidns)])
        );
        let boot_tag = boot_tag_of(boot.as_deref());
        Identity {
            pid,
            hostname,
            machine,
            boot,
            pidns,
            start,
            host_tag,
            machine_tag,
            boot_tag,
        }
    }
}

/// A boot as taken names carry it: `h<16 hex digits>`, a hash of a Linux
/// boot id (exact), or `t<seconds>`, a boot time (compared within two
/// seconds, as [`same_boot`] does); `u` when unknown.
fn boot_tag_of(boot: Option<&str>) -> String {
    match boot {
        Some(b) if is_exact_boot_id(Some(b)) => format!("h{:016x}", fnv64(&[b])),
        Some(b) => match b
            .strip_prefix("boot-time:")
            .and_then(|t| t.parse::<u64>().ok())
        {
            Some(t) => format!("t{t}"),
            None => format!("h{:016x}", fnv64(&[b])),
        },
        None => "u".to_owned(),
    }
}

/// Whether two boot tags name one boot (`None`: cannot be told), and
/// whether both are exact.
fn same_boot_tag(a: &str, b: &str) -> Option<(bool, bool)> {
    let time = |t: &str| t.strip_prefix('t')?.parse::<i64>().ok();
    match (a.chars().next()?, b.chars().next()?) {
        ('h', 'h') => Some((a == b, true)),
        ('t', 't') => Some(((time(a)? - time(b)?).abs() <= 2, false)),
        _ => None,
    }
}

/// FNV-1a over `parts`, each followed by a zero byte: stable across
/// processes, platforms and versions, unlike std's hasher.
fn fnv32(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parts
        .iter()
        .flat_map(|p| p.bytes().chain(std::iter::once(0)))
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// FNV-1a, 64 bits (see [`fnv32`]).
pub(crate) fn fnv64(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts
        .iter()
        .flat_map(|p| p.bytes().chain(std::iter::once(0)))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether the process `pid` of this machine (boot and PID namespace)
/// may still run: `false` only on proof that it has exited (see
/// [`sys::process_state`]); this process runs.
pub(crate) fn pid_runs(pid: u32) -> bool {
    pid == std::process::id() || sys::process_state(pid) != ProcessState::Exited
}

/// This machine and boot (and PID namespace) as 8 hex digits: tokens carry
/// it before their maker's PID, so that a reader can tell whether the PID
/// is one of its own machine's.
pub(crate) fn host_tag() -> String {
    Identity::get().host_tag.clone()
}

/// What names carrying a PID of this process put around it, so that a
/// reader can judge that PID: `<machine>.<boot>.<pid>.<start>` (see
/// [`tagged_process_runs`]): the machine tag (host name, machine id, PID
/// namespace), the boot tag, the PID and the number of its start stamp
/// (`x` when unknown), so that a reused PID is not taken for it.
pub(crate) fn process_tags() -> String {
    let me = Identity::get();
    let start = me
        .start
        .as_deref()
        .and_then(|s| s.split_once(':'))
        .map_or("x", |(_, number)| number);
    format!("{}.{}.{}.{start}", me.machine_tag, me.boot_tag, me.pid)
}

/// Whether the process named by `tags` (from [`process_tags`]) may still
/// run: judged by its PID and start when it is of this machine, boot and
/// PID namespace; `Some(false)` when it is of an earlier boot of this
/// machine and only this machine writes where the name lives (`writers`);
/// `None` when it cannot be judged.
pub(crate) fn tagged_process_runs(tags: &str, writers: Writers) -> Option<bool> {
    let me = Identity::get();
    let mut parts = tags.split('.');
    let (machine, boot) = (parts.next()?, parts.next()?);
    let pid: u32 = parts.next()?.parse().ok()?;
    let start = parts.next()?;
    if machine != me.machine_tag {
        return None;
    }
    match same_boot_tag(boot, &me.boot_tag)? {
        (true, _) => {
            // The stamp's scheme is this machine's own.
            let recorded = me
                .start
                .as_deref()
                .and_then(|s| s.split_once(':'))
                .filter(|_| start != "x")
                .map(|(scheme, _)| format!("{scheme}:{start}"));
            Some(process_liveness(pid, recorded.as_deref()) != Liveness::Dead)
        }
        // Another boot of this machine (the machine tag covers the host
        // name and the machine id), on a file system it alone writes to.
        (false, true) if writers == Writers::ThisMachine && me.machine.is_some() => Some(false),
        (false, _) => None,
    }
}

/// Whether `boot` is a Linux boot id (a UUID, new at every boot), as
/// opposed to a boot time, which two readers may see apart.
fn is_exact_boot_id(boot: Option<&str>) -> bool {
    boot.is_some_and(|b| {
        b.len() == 36
            && b.bytes().enumerate().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            })
    })
}

/// Whether two boot ids name the same boot. Where there is no boot id,
/// the boot time stands for one (`boot-time:<unix seconds>`); Windows
/// derives it from the uptime, so two processes may see it a second or two
/// apart.
fn same_boot(a: Option<&str>, b: Option<&str>) -> bool {
    const PREFIX: &str = "boot-time:";
    let time = |id: &str| id.strip_prefix(PREFIX)?.parse::<i64>().ok();
    match (a, b) {
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => match (time(a), time(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= 2,
            _ => false,
        },
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_a_second_apart_are_one_boot() {
        assert!(same_boot(Some("boot-time:1000"), Some("boot-time:1001")));
        assert!(same_boot(Some("boot-time:1000"), Some("boot-time:998")));
        assert!(!same_boot(Some("boot-time:1000"), Some("boot-time:1010")));
        assert!(same_boot(Some("abc"), Some("abc")));
        assert!(!same_boot(Some("abc"), Some("abd")));
        assert!(!same_boot(Some("boot-time:1"), None));
        assert!(same_boot(None, None));
    }

    #[test]
    fn tokens_are_distinct_hex() {
        let tokens: std::collections::HashSet<String> =
            (0..20_000).map(|_| new_token().expect("token")).collect();
        assert_eq!(tokens.len(), 20_000);
        assert!(tokens.iter().all(|t| t.len() == 32
            && t.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
    }

    #[test]
    fn a_token_names_its_maker() {
        let token = new_token().expect("token");
        assert_eq!(token_maker(&token), Some(std::process::id()));
        assert_eq!(
            token_maker(&"0".repeat(32)).is_some(),
            host_tag() == "00000000"
        );
    }

    #[test]
    fn a_record_never_names_auto() {
        let record = OwnerRecord::for_this_process(Mechanism::Mkdir).expect("record");
        let json = record.to_json();
        assert!(OwnerRecord::parse(json.as_bytes()).is_some());
        let auto = json.replace(r#""strategy":"mkdir""#, r#""strategy":"auto""#);
        assert_ne!(auto, json);
        assert_eq!(OwnerRecord::parse(auto.as_bytes()), None);
    }

    #[test]
    fn round_trip() {
        let rec = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
        assert_eq!(rec.token.len(), 32);
        assert_eq!(rec.pid, std::process::id());
        assert!(rec.start.is_some(), "own start time is known");
        let parsed = OwnerRecord::parse(rec.to_json().as_bytes()).expect("parses");
        assert_eq!(parsed, rec);
    }

    #[test]
    fn tokens_differ() {
        let a = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
        let b = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn trailing_whitespace_is_accepted() {
        let rec = OwnerRecord::for_this_process(Mechanism::Os).expect("record");
        let padded = format!("{}\n      ", rec.to_json());
        assert_eq!(OwnerRecord::parse(padded.as_bytes()), Some(rec));
    }
}
