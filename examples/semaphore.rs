//! At most N holders at once: a `BoundedSemaphore` of N slot locks
//! (`<prefix>.0` ... `<prefix>.<N-1>`), for instance to let no more than
//! two jobs on a machine download at the same time.
//!
//! ```text
//! cargo run --example semaphore
//! ```
//!
//! Six workers share a semaphore of two slots. Each opens its own handle on
//! the semaphore, as a separate process would (two handles on one path
//! exclude each other in one process as in two), takes a slot, counts the
//! workers inside, works a little, and leaves. It checks that never more
//! than two were inside and that every worker got in, and exits non-zero
//! otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portalock::{BoundedSemaphore, LockOptions};

const SLOTS: usize = 2;
const WORKERS: usize = 6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("downloads");
    let inside = AtomicUsize::new(0);
    let most_inside = AtomicUsize::new(0);

    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (prefix, inside, most_inside) = (&prefix, &inside, &most_inside);
                s.spawn(move || -> portalock::Result<usize> {
                    // Every process must use the same prefix, slot count and
                    // strategy. A short poll interval suits short holds.
                    let mut options = LockOptions::new();
                    options.poll_interval(Duration::from_millis(10));
                    let semaphore = BoundedSemaphore::new(prefix, SLOTS, &options)?;

                    // Waits for a free slot, for ten seconds at most.
                    let slot = semaphore.acquire_timeout(Duration::from_secs(10))?;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    println!("worker {worker}: in slot {} ({now} inside)", slot.slot());
                    // The download.
                    std::thread::sleep(Duration::from_millis(50));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    let taken = slot.slot();
                    slot.release()?;
                    Ok(taken)
                })
            })
            .collect();
        for worker in workers {
            let slot = worker.join().expect("a worker panicked")?;
            assert!(slot < SLOTS, "slot {slot} of a {SLOTS}-slot semaphore");
        }
        Ok::<(), portalock::Error>(())
    })?;

    let most = most_inside.load(Ordering::SeqCst);
    assert!(
        most <= SLOTS,
        "{most} workers were inside a {SLOTS}-slot semaphore"
    );
    assert!(most >= 1);
    println!("ok: {WORKERS} workers got in, never more than {most} at once ({SLOTS} slots)");
    Ok(())
}
