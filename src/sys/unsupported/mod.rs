//! Platforms portalock knows nothing of: every question has no answer.

use std::fs::File;
use std::io;
use std::process::{Child, Command};

use super::ProcessState;

mod file;
pub(crate) use file::*;

/// No OS advisory locks here: a look says so.
pub(crate) fn try_shared_for_a_moment(file: File) -> (File, io::Result<()>) {
    (
        file,
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "OS advisory locks are not supported on this platform",
        )),
    )
}

pub(crate) fn process_state(_pid: u32) -> ProcessState {
    ProcessState::Unknown
}

pub(crate) fn boot_id() -> Option<String> {
    None
}

pub(crate) fn name_max(_dir: &std::path::Path) -> Option<usize> {
    None
}

/// The monotonic clock (see `unix::since_boot`).
pub(crate) fn since_boot() -> std::time::Duration {
    super::monotonic_since_start()
}

pub(crate) fn pid_namespace() -> Option<String> {
    None
}

pub(crate) fn machine_id() -> Option<String> {
    None
}

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
