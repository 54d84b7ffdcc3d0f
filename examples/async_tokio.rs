//! Waiting for a lock in async code (feature `tokio`): the wait sleeps on
//! the runtime's timer instead of blocking a worker thread, so other tasks
//! run meanwhile, and a wait that is cancelled (dropped, or ended by
//! `tokio::time::timeout`) leaves nothing held.
//!
//! ```text
//! cargo run --example async_tokio --features tokio
//! ```
//!
//! Two tasks on a single-threaded runtime share one lock path: the first
//! holds the lock across an `.await`, the second waits for it meanwhile,
//! and a third task's ticks show the thread was never blocked. It checks
//! the order of events and exits non-zero if it is wrong.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use portalock::LockFile;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("index.lock");
    // Two handles on one path exclude each other, in one process as in two.
    let first = LockFile::new(&path)?;
    let second = LockFile::new(&path)?;
    let events = RefCell::new(Vec::new());
    let log = |event: &'static str| {
        println!("{event}");
        events.borrow_mut().push(event);
    };

    let holder = async {
        let guard = first.lock_async().await?;
        log("first: locked");
        // Held across an await: other tasks run meanwhile.
        tokio::time::sleep(Duration::from_millis(150)).await;
        log("first: releasing");
        guard.release()
    };
    let waiter = async {
        // Let `first` lock first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A wait cut short by `timeout` is cancelled and holds nothing.
        let cut = tokio::time::timeout(Duration::from_millis(30), second.lock_async()).await;
        assert!(
            cut.is_err(),
            "the lock is held: the short wait must time out"
        );
        assert!(!second.is_held(), "a cancelled wait holds nothing");
        log("second: a 30 ms wait timed out, nothing held");
        // A bounded wait, long enough for `first` to finish.
        let started = Instant::now();
        let guard = second.lock_timeout_async(Duration::from_secs(10)).await?;
        log("second: locked");
        println!("second: waited {} ms", started.elapsed().as_millis());
        guard.release()
    };
    let ticker = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log("ticker: tick");
        }
    };

    let (held, waited, ()) = tokio::join!(holder, waiter, ticker);
    held?;
    waited?;

    let events = events.into_inner();
    let at = |event| events.iter().position(|e| *e == event).expect(event);
    assert!(at("first: locked") < at("second: a 30 ms wait timed out, nothing held"));
    assert!(
        at("first: releasing") < at("second: locked"),
        "second got the lock while first held it: {events:?}"
    );
    assert!(
        at("ticker: tick") < at("first: releasing"),
        "the runtime's only thread was blocked while waiting: {events:?}"
    );
    println!("ok: one holder at a time, and the thread was never blocked");
    Ok(())
}
