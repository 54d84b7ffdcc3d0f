//! Whether the process a record names still runs: its identity (PID,
//! start, boot, machine, PID namespace) and the liveness rule.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::sys::{self, ProcessState};
use crate::vocab::Writers;

use super::token::{fnv32, fnv64};

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
    pub(super) fn or(self, other: Liveness) -> Liveness {
        match (self, other) {
            (Liveness::Alive, _) | (_, Liveness::Alive) => Liveness::Alive,
            (Liveness::Dead, Liveness::Dead) => Liveness::Dead,
            _ => Liveness::Unknown,
        }
    }
}

/// The start stamp of `pid`, which must run; `NotFound` if it does not.
pub(super) fn running(pid: u32) -> io::Result<Option<String>> {
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
pub(super) fn process_liveness(pid: u32, recorded: Option<&str>) -> Liveness {
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
pub(super) fn same_start(a: &str, b: &str) -> Option<bool> {
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
        let pid = crate::sys::pid();
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
pub(super) fn boot_tag_of(boot: Option<&str>) -> String {
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
pub(super) fn same_boot_tag(a: &str, b: &str) -> Option<(bool, bool)> {
    let time = |t: &str| t.strip_prefix('t')?.parse::<i64>().ok();
    match (a.chars().next()?, b.chars().next()?) {
        ('h', 'h') => Some((a == b, true)),
        ('t', 't') => Some(((time(a)? - time(b)?).abs() <= 2, false)),
        _ => None,
    }
}

/// Whether the process `pid` of this machine (boot and PID namespace)
/// may still run: `false` only on proof that it has exited (see
/// [`sys::process_state`]); this process runs.
pub(crate) fn pid_runs(pid: u32) -> bool {
    pid == crate::sys::pid() || sys::process_state(pid) != ProcessState::Exited
}

/// Whether the process `pid` of this machine (boot and PID namespace) has
/// been proved gone although its PID runs: a process that started at
/// `recorded` and whose PID another process has taken since.
pub(crate) fn pid_reused(pid: u32, recorded: Option<&str>) -> bool {
    recorded.is_some() && process_liveness(pid, recorded) == Liveness::Dead
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
pub(super) fn is_exact_boot_id(boot: Option<&str>) -> bool {
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
pub(super) fn same_boot(a: Option<&str>, b: Option<&str>) -> bool {
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
