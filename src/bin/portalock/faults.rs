//! Fault points of `run` for the protocol tests (feature `failpoints`):
//! `PORTALOCK_PAUSE_AT=<step>` makes portalock say `PL:AT <step>` on its
//! standard output at that step and wait for a line on the FIFO
//! `PORTALOCK_RESUME_FIFO` (or be killed there). Without the feature,
//! nothing.

/// The steps of `run`: the lock taken, the command not yet started; the
/// command exited, the lock not yet released.
#[cfg(feature = "failpoints")]
pub(crate) const STEPS: &[&str] = &["run.locked", "run.exited"];

#[cfg(feature = "failpoints")]
pub(crate) fn setup() {
    if let Ok(step) = std::env::var("PORTALOCK_PAUSE_AT") {
        let fifo = std::env::var("PORTALOCK_RESUME_FIFO").unwrap_or_default();
        let at = step.clone();
        let _ = fail::cfg_callback(step, move || {
            use std::io::{BufRead, Write};
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "PL:AT {at}");
            let _ = out.flush();
            if let Ok(file) = std::fs::File::open(&fifo) {
                let _ = std::io::BufReader::new(file).read_line(&mut String::new());
            }
        });
    }
}

#[cfg(feature = "failpoints")]
pub(crate) fn step(name: &'static str) {
    debug_assert!(
        STEPS.contains(&name) || portalock::fault::STEPS.contains(&name),
        "unlisted step {name}"
    );
    fail::fail_point!(name);
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn setup() {}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn step(_name: &'static str) {}
