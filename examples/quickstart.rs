//! A quick tour of portalock: take a lock, see who holds it, fail fast when
//! it is taken, wait with a timeout, release.
//!
//! Run it with `cargo run --example quickstart [LOCK_PATH]`. Start two at
//! once on the same path to see them exclude each other across processes.

use std::time::Duration;

use portalock::{Error, LockFile, LockStrategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let base = match std::env::args_os().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => dir.path().join("quickstart.lock"),
    };

    for strategy in LockStrategy::ALL {
        // Each strategy leaves its own kind of artifact: one path each.
        let path = base.with_extension(format!("{strategy}.lock"));
        let lock = LockFile::with_strategy(&path, strategy)?;
        let guard = lock.lock_timeout(Duration::from_secs(10))?;
        println!("[{strategy}] locked {}", lock.path());
        if let Some(owner) = lock.owner()? {
            println!("[{strategy}] owner record: {}", owner.to_json());
        }

        // A second handle, as another process would see it.
        let other = LockFile::with_strategy(&path, strategy)?;
        match other.try_acquire() {
            Err(e @ Error::WouldBlock { .. }) => println!("[{strategy}] try once: {e}"),
            other => println!("[{strategy}] unexpected: {other:?}"),
        }
        match other.acquire_timeout(Duration::from_millis(100)) {
            Err(e @ Error::Timeout { .. }) => println!("[{strategy}] bounded wait: {e}"),
            other => println!("[{strategy}] unexpected: {other:?}"),
        }

        guard.release()?;
        other.try_acquire()?;
        println!("[{strategy}] released; the second handle got the lock");
        other.release()?;
        if let Err(e) = other.release() {
            println!("[{strategy}] releasing twice: {e}");
        }
    }
    Ok(())
}
