//! Processes and machines on Windows.
//!
//! A process's start stamp is its creation time, which the kernel stored
//! when the process was made (`GetProcessTimes`, read through sysinfo): a
//! later step of the clock does not change it. The boot id is the boot
//! time, derived from the uptime, so two readers may see it a second or
//! two apart (see `owner::same_boot`).

use std::fs::File;
use std::io;
use std::process::{Child, Command};

use super::ProcessState;

mod file;
pub(crate) use file::*;

/// The state of process `pid`: sysinfo lists every process of the
/// machine, whoever owns it, so a PID that is not listed has exited.
pub(crate) fn process_state(pid: u32) -> ProcessState {
    match super::sysinfo_process(pid) {
        None => ProcessState::Exited,
        Some((_, start)) => ProcessState::Running {
            start: start.map(|s| format!("windows-created:{s}")),
        },
    }
}

pub(crate) fn boot_id() -> Option<String> {
    Some(format!("boot-time:{}", sysinfo::System::boot_time()))
}

/// NTFS, FAT and SMB shares accept names of 255 UTF-16 units.
pub(crate) fn name_max(_dir: &std::path::Path) -> Option<usize> {
    Some(255)
}

/// The monotonic clock (see `unix::since_boot`); whether it counts the
/// time the machine sleeps is Windows' own matter.
pub(crate) fn since_boot() -> std::time::Duration {
    super::monotonic_since_start()
}

pub(crate) fn pid_namespace() -> Option<String> {
    None
}

pub(crate) fn machine_id() -> Option<String> {
    None
}

/// Spawns `command`, then names it. A Windows lock (`LockFileEx`) belongs
/// to the handle that took it and is not carried by an inherited handle,
/// so nothing is passed: an `Os` lock lasts as long as the process that
/// holds it. There is no gate either: the command runs before it is named.
pub(crate) fn spawn_gated(
    command: &mut Command,
    _keep: &[&File],
    name_it: &mut (dyn FnMut(u32) -> io::Result<()> + Send),
) -> io::Result<Child> {
    super::spawn_then_name(command, name_it)
}

/// This process's PID (no `fork()` here: asked each time, cheaply).
pub(crate) fn pid() -> u32 {
    std::process::id()
}
