//! What portalock says through the `log` facade: who broke whose lock,
//! and which lock a holder lost, so that an application's logs show it.

mod common;

use std::sync::{Mutex, OnceLock};

use portalock::{Error, LockStrategy};
use rstest::rstest;

use common::fixture::{open, scratch};
use common::spawn;

#[test]
fn child() {
    common::child_entry();
}

/// Every record logged, as "LEVEL target: message".
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Collect;

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGGED.lock().expect("log").push(format!(
            "{} {}: {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

fn install() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        log::set_logger(&Collect).expect("the only logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// The lines logged about `path`.
fn logged_about(path: &str) -> Vec<String> {
    LOGGED
        .lock()
        .expect("log")
        .iter()
        .filter(|line| line.contains(path))
        .cloned()
        .collect()
}

/// A waiter that breaks the lock of a killed holder logs a warning that
/// names the lock, the holder and why it was stale.
#[rstest]
fn breaking_a_killed_holders_lock_is_a_warning(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    install();
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = child.expect("ACQUIRED").parse().expect("pid");
    child.kill();
    let lock = open(&path, strategy);
    lock.try_acquire()
        .expect("the dead holder's lock is broken");
    let lines = logged_about(path.as_str());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN portalock: broke the stale lock")
            && lines[0].contains(&format!("by pid {pid} on "))
            && lines[0].contains("its owner has exited"),
        "{lines:?}"
    );
    lock.release().expect("release");
}

/// A forced break is a warning; the holder that finds its lock gone logs
/// an error, once.
#[rstest]
fn a_forced_break_and_the_lost_lock_are_logged(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    install();
    let (_dir, path) = scratch();
    let (holder, breaker) = (open(&path, strategy), open(&path, strategy));
    holder.acquire().expect("acquire");
    breaker.force_break().expect("force").expect("a record");
    assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    let lines = logged_about(path.as_str());
    assert_eq!(lines.len(), 2, "{lines:?}");
    let me = std::process::id();
    assert!(
        lines[0].starts_with("WARN portalock: force-broke the lock")
            && lines[0].contains(&format!("by pid {me} on ")),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("ERROR portalock: lost the lock"),
        "{lines:?}"
    );
}
