//! Mutual exclusion across real processes: an exact counter.

mod common;

use portalock::LockStrategy;
use rstest::rstest;

use common::spawn;

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
    let mut procs: Vec<_> = (0..PROCESSES)
        .map(|_| spawn("count", &[strategy.as_str(), &lock, &counter, &n]))
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    for p in &mut procs {
        p.expect("DONE");
    }
    for p in procs {
        assert!(p.wait().success());
    }
    let total: u64 = std::fs::read_to_string(&counter)
        .expect("read counter")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(total, PROCESSES as u64 * u64::from(ITERATIONS));
}
