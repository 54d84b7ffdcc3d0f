//! Mutual exclusion across real processes: an exact counter.

mod common;

use portalock::LockStrategy;
use rstest::rstest;

use std::path::Path;

use common::{run_counters, spawn};

#[test]
fn child() {
    common::child_entry();
}

const PROCESSES: usize = 4;
const ITERATIONS: u32 = 200;

/// Each process increments a counter file with a read-modify-write that
/// loses updates without the lock, and checks that nobody else is inside the
/// critical section. The final count is exact only if the lock excluded.
#[rstest]
fn processes_increment_a_counter_under_the_lock(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("counter.lock");
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0\n").expect("counter");
    let (lock, counter) = (
        lock.to_str().expect("utf-8").to_owned(),
        counter.to_str().expect("utf-8").to_owned(),
    );
    let n = ITERATIONS.to_string();
    let procs: Vec<_> = (0..PROCESSES)
        .map(|_| spawn("count", &[strategy.as_str(), &lock, &counter, &n]))
        .collect();
    let total = run_counters(procs, Path::new(&counter));
    assert_eq!(total, PROCESSES as u64 * u64::from(ITERATIONS));
}
