//! Recovering a lock whose holder died without releasing it.
//!
//! An `Os` lock needs no recovery: the kernel releases it with its holder.
//! A `Mkdir` or `Link` lock (the strategies for network file systems)
//! stays behind, and its owner record names the process that took it. When
//! that process is gone (on this host, boot and PID namespace), the lock
//! is stale, and portalock breaks it safely, even when many waiters try at
//! once.
//!
//! ```text
//! cargo run --example stale_lock
//! ```
//!
//! It starts itself twice as a child process (`stale_lock hold PATH`) that
//! takes a `Mkdir` lock and never releases it. The first child is killed;
//! the parent sees the dead owner with `owner()` and `owner_liveness()`,
//! breaks the lock with `break_lock()` and says whose lock it broke. The
//! second child exits without releasing; the parent's plain `try_lock()`
//! breaks it by itself. It checks each step and exits non-zero if one
//! fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portalock::{Error, Liveness, LockFile, LockStrategy};

const STRATEGY: LockStrategy = LockStrategy::Mkdir;

/// The child: takes the lock, says so, and then never releases it.
fn hold(path: &str, how: &str) -> Result<(), Box<dyn std::error::Error>> {
    let lock = LockFile::with_strategy(path, STRATEGY)?;
    lock.acquire()?;
    println!("held");
    match how {
        // Exits at once: `process::exit` runs no destructor, so the handle
        // never releases (as after a crash).
        "exit" => std::process::exit(0),
        // Waits to be killed.
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

/// Starts a child that holds the lock at `path`, and waits until it does.
fn start_holder(path: &Path, how: &str) -> Result<Child, Box<dyn std::error::Error>> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("hold")
        .arg(path)
        .arg(how)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if line.trim() != "held" {
        let _ = child.kill();
        return Err(format!("the holder did not take the lock: {:?}", child.wait()?).into());
    }
    Ok(child)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, path, how] = args.as_slice() {
        if cmd == "hold" {
            return hold(path, how);
        }
    }

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("backup.lock");
    let lock = LockFile::with_strategy(&path, STRATEGY)?;

    // 1. A holder that is killed (kill -9, the OOM killer, a power cut of
    //    one container...).
    let mut child = start_holder(&path, "wait")?;
    let owner = lock.owner()?.ok_or("a held lock names its owner")?;
    assert_eq!(owner.pid, child.id());
    assert_eq!(lock.owner_liveness(&owner), Liveness::Alive);
    // While the holder lives, the lock is busy and cannot be broken.
    assert!(matches!(lock.try_lock(), Err(Error::WouldBlock { .. })));
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    println!("pid {} holds {}: alive, not stale", owner.pid, lock.path());

    child.kill()?;
    child.wait()?;
    let owner = lock.owner()?.ok_or("the dead holder's record stays")?;
    let liveness = lock.owner_liveness(&owner);
    println!(
        "pid {} was killed; the lock is still there, its owner {liveness}",
        owner.pid
    );
    assert_eq!(liveness, Liveness::Dead);

    // `break_lock` removes a stale lock only, and returns the record it removed.
    let broken = lock.break_lock()?.ok_or("break_lock removed a record")?;
    assert_eq!(broken.pid, owner.pid);
    println!(
        "broke the lock of pid {} on {} ({} strategy); its record: {}",
        broken.pid,
        broken.hostname,
        broken.strategy,
        broken.to_json()
    );
    let guard = lock.try_lock()?;
    assert_eq!(lock.owner()?.map(|o| o.pid), Some(std::process::id()));
    guard.release()?;

    // 2. A holder that exits without releasing. Waiting (and trying)
    //    breaks a dead owner's lock by itself (`LockOptions::break_stale`,
    //    on by default).
    let mut child = start_holder(&path, "exit")?;
    let status = child.wait()?;
    assert!(status.success(), "the holder exited with {status}");
    let owner = lock.owner()?.ok_or("the exited holder's record stays")?;
    assert_eq!(owner.pid, child.id());
    assert_eq!(lock.owner_liveness(&owner), Liveness::Dead);
    let guard = lock.try_lock()?;
    println!(
        "pid {} on {} exited holding the lock; try_lock broke it and took it",
        owner.pid, owner.hostname
    );
    guard.release()?;

    println!("ok: both dead holders' locks were detected and recovered");
    Ok(())
}
