//! The owner record that every lock carries.
//!
//! A record is a small JSON object (format version 1):
//!
//! ```json
//! {"v":1,"token":"5f0c…","pid":4242,"hostname":"build-7",
//!  "boot":"aef3770f-…","pidns":"pid:[4026531836]","start":1732280000,
//!  "acquired_at":"2026-11-22T10:00:00Z","strategy":"mkdir","lease_ms":null}
//! ```
//!
//! A holder with a lease adds `"beat":N`, the number of times it has
//! refreshed the record.
//!
//! It is written so that a reader never sees half of it (a private file
//! linked or renamed into place, or, for the `Os` strategy, one write into a
//! file the writer has locked), and it is read with a size cap: anything
//! larger than [`MAX_RECORD_LEN`], not UTF-8, not JSON, of another version or
//! with fields this version does not know is an *unknown owner*
//! (`None`), never a panic and never an unbounded read.

use std::fmt;
use std::io::{self, Read};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::strategy::LockStrategy;

/// The largest owner record portalock reads, in bytes. Readers never read
/// more than this (plus one byte to notice the excess).
pub const MAX_RECORD_LEN: usize = 4096;

/// The format version written by this release.
pub const RECORD_VERSION: u32 = 1;

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
    /// Boot id of the holder's machine (Linux `boot_id`; elsewhere the boot
    /// time), when known.
    pub boot: Option<String>,
    /// PID namespace of the holder (Linux), when known.
    pub pidns: Option<String>,
    /// Start time of the holder's process, in seconds since the Unix epoch,
    /// when known. A PID reused by a later process has another start time.
    pub start: Option<u64>,
    /// When the lock was taken, RFC 3339 in UTC.
    pub acquired_at: String,
    /// The strategy that took the lock.
    pub strategy: LockStrategy,
    /// Lease length in milliseconds, when the holder keeps a lease.
    pub lease_ms: Option<u64>,
    /// How many times a holder with a lease has refreshed this record. A
    /// contender that sees it change knows the holder is still there.
    /// Absent (0) in records without a lease.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub beat: u64,
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
    /// Same host, same boot, same PID namespace, and a process with the
    /// record's PID and start time runs.
    Alive,
    /// Same host, same boot, same PID namespace, and no process with that
    /// PID runs, or the PID now belongs to a process with another start
    /// time (the PID was reused), or the process is a zombie.
    Dead,
    /// The record names another host, another boot or another PID
    /// namespace (a container sharing the volume): its PID means nothing
    /// here. An unknown owner is never judged dead.
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

impl OwnerRecord {
    /// Parses a record from raw bytes.
    ///
    /// Returns `None` for anything that is not a complete version-1 record:
    /// empty input, more than [`MAX_RECORD_LEN`] bytes, invalid UTF-8,
    /// malformed or truncated JSON, wrong field types, unknown fields or
    /// another format version.
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::OwnerRecord;
    ///
    /// assert!(OwnerRecord::parse(b"not json").is_none());
    /// let json = br#"{"v":1,"token":"ab","pid":7,"hostname":"h","boot":null,
    ///   "pidns":null,"start":null,"acquired_at":"2026-11-22T10:00:00Z",
    ///   "strategy":"link","lease_ms":null}"#;
    /// assert_eq!(OwnerRecord::parse(json).map(|r| r.pid), Some(7));
    /// ```
    pub fn parse(bytes: &[u8]) -> Option<OwnerRecord> {
        if bytes.is_empty() || bytes.len() > MAX_RECORD_LEN {
            return None;
        }
        let record: OwnerRecord = serde_json::from_slice(bytes).ok()?;
        // A record names the strategy that took the lock, never `auto`.
        (record.v == RECORD_VERSION && record.strategy != LockStrategy::Auto).then_some(record)
    }

    /// Serializes the record as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A fresh record for the calling process, with a new token.
    #[cfg(test)]
    pub(crate) fn for_this_process(strategy: LockStrategy) -> io::Result<OwnerRecord> {
        OwnerRecord::for_process(strategy, None)
    }

    /// A fresh record for the process `pid` of this machine (the calling
    /// process if `None`), with a new token. Fails with `NotFound`
    /// if `pid` does not run.
    pub(crate) fn for_process(strategy: LockStrategy, pid: Option<u32>) -> io::Result<OwnerRecord> {
        let me = Identity::get();
        let (pid, start) = match pid {
            None => (me.pid, me.start),
            Some(pid) if pid == me.pid => (me.pid, me.start),
            Some(pid) => match process_state(pid) {
                Some((start, false)) => (pid, start),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no process with pid {pid} runs on this machine"),
                    ))
                }
            },
        };
        Ok(OwnerRecord {
            v: RECORD_VERSION,
            token: new_token()?,
            pid,
            hostname: me.hostname.clone(),
            boot: me.boot.clone(),
            pidns: me.pidns.clone(),
            start,
            acquired_at: now_rfc3339(),
            strategy,
            lease_ms: None,
            beat: 0,
        })
    }

    /// Whether the holder named by this record still runs, judged only
    /// where its PID means something to the caller (see [`Liveness`]).
    ///
    /// Looks up the one PID (through `sysinfo`, refreshing only that
    /// process), never the whole process table.
    pub fn liveness(&self) -> Liveness {
        let me = Identity::get();
        if self.hostname != me.hostname
            || !same_boot(self.boot.as_deref(), me.boot.as_deref())
            || self.pidns != me.pidns
        {
            return Liveness::Unknown;
        }
        match process_state(self.pid) {
            None => Liveness::Dead,
            Some((_, true)) => Liveness::Dead,
            Some((start, false)) => match (self.start, start) {
                (Some(recorded), Some(now)) if recorded != now => Liveness::Dead,
                _ => Liveness::Alive,
            },
        }
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
    token.push_str(host_tag());
    for (word, digits) in [(hi, 8), (lo, 16)] {
        for shift in (0..digits).rev() {
            let digit = ((word >> (shift * 4)) & 0xf) as u8;
            token.push(char::from(b"0123456789abcdef"[usize::from(digit)]));
        }
    }
    Ok(token)
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

/// What identifies the calling process to a reader of its records; computed
/// once per process.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    pub(crate) hostname: String,
    pub(crate) boot: Option<String>,
    pub(crate) pidns: Option<String>,
    pub(crate) start: Option<u64>,
}

impl Identity {
    pub(crate) fn get() -> &'static Identity {
        static ME: OnceLock<Identity> = OnceLock::new();
        ME.get_or_init(|| {
            let pid = std::process::id();
            Identity {
                pid,
                hostname: sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_owned()),
                boot: boot_id(),
                pidns: pid_namespace(),
                start: process_start(pid),
            }
        })
    }
}

/// Whether the process `pid` of this machine still runs (a zombie does
/// not; this process does), refreshing only that one process.
///
/// Errs on the side of "runs": on Unix a process that exists for the kernel
/// (`kill(pid, 0)` succeeds or is refused with `EPERM`) counts as running
/// unless the process table shows it a zombie, so that a process hidden
/// from this user (`hidepid`) is never taken for dead.
pub(crate) fn pid_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        match rustix::process::test_kill_process(raw) {
            Ok(()) | Err(rustix::io::Errno::PERM) => {}
            Err(_) => return false,
        }
        !matches!(process_state(pid), Some((_, true)))
    }
    #[cfg(not(unix))]
    {
        matches!(process_state(pid), Some((_, false)))
    }
}

/// This machine and boot (and PID namespace) as 8 hex digits: names that
/// carry a PID carry this beside it, so that a reader can tell whether the
/// PID is one of its own machine's.
pub(crate) fn host_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let me = Identity::get();
        // FNV-1a: stable across processes and versions, unlike std's hasher.
        let mut hash: u32 = 0x811c_9dc5;
        let parts = [
            me.hostname.as_str(),
            me.boot.as_deref().unwrap_or(""),
            me.pidns.as_deref().unwrap_or(""),
        ];
        for part in parts {
            for byte in part.bytes().chain(std::iter::once(0)) {
                hash ^= u32::from(byte);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        }
        format!("{hash:08x}")
    })
}

/// Start time of `pid` in seconds since the Unix epoch, refreshing only that
/// one process.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    process_state(pid).and_then(|(start, _)| start)
}

/// Whether `pid` exists: its start time (when known) and whether it is a
/// zombie. Refreshes only that one process.
fn process_state(pid: u32) -> Option<(Option<u64>, bool)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let pid = Pid::from_u32(pid);
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing(),
    );
    let process = sys.process(pid)?;
    let start = Some(process.start_time()).filter(|&s| s != 0);
    Some((start, process.status() == ProcessStatus::Zombie))
}

#[cfg(target_os = "linux")]
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(not(target_os = "linux"))]
fn boot_id() -> Option<String> {
    Some(format!("boot-time:{}", sysinfo::System::boot_time()))
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

#[cfg(target_os = "linux")]
fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    link.to_str().map(str::to_owned)
}

#[cfg(not(target_os = "linux"))]
fn pid_namespace() -> Option<String> {
    None
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
        let mut record = OwnerRecord::for_this_process(LockStrategy::Mkdir).expect("record");
        assert!(OwnerRecord::parse(record.to_json().as_bytes()).is_some());
        record.strategy = LockStrategy::Auto;
        assert_eq!(OwnerRecord::parse(record.to_json().as_bytes()), None);
    }

    #[test]
    fn round_trip() {
        let rec = OwnerRecord::for_this_process(LockStrategy::Link).expect("record");
        assert_eq!(rec.token.len(), 32);
        assert_eq!(rec.pid, std::process::id());
        assert!(rec.start.is_some(), "own start time is known");
        let parsed = OwnerRecord::parse(rec.to_json().as_bytes()).expect("parses");
        assert_eq!(parsed, rec);
    }

    #[test]
    fn tokens_differ() {
        let a = OwnerRecord::for_this_process(LockStrategy::Os).expect("record");
        let b = OwnerRecord::for_this_process(LockStrategy::Os).expect("record");
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn trailing_whitespace_is_accepted() {
        let rec = OwnerRecord::for_this_process(LockStrategy::Os).expect("record");
        let padded = format!("{}\n      ", rec.to_json());
        assert_eq!(OwnerRecord::parse(padded.as_bytes()), Some(rec));
    }
}
