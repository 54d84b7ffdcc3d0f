//! `portalock status` and `portalock break`: look at a lock this process
//! did not take.

use std::io::Read;
use std::path::Path;

use portalock::{
    Liveness, LockFile, LockOptions, LockStatus, LockStrategy, OwnerRecord, MAX_RECORD_LEN,
};

use crate::waiting::{describe, since};
use crate::{
    lock_error, BreakArgs, Failure, Outcome, StatusArgs, EXIT_FOREIGN, EXIT_NO, EXIT_STALE,
};

/// Whether `path` is a regular file that holds data portalock did not
/// write: not empty, not blank (a released `Os` lock's, on a network file
/// system), not an owner record, nor one being written (`{"v":` and no
/// longer than a record). Such a file is no lock, held or free.
fn foreign_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|file| file.take(MAX_RECORD_LEN as u64 + 1).read_to_end(&mut bytes));
    if read.is_err() {
        // Unreadable (another user's lock, say): nothing to tell.
        return false;
    }
    let trimmed = bytes.trim_ascii();
    !(trimmed.is_empty()
        || OwnerRecord::parse(&bytes).is_some()
        || (bytes.len() <= MAX_RECORD_LEN && trimmed.starts_with(b"{\"v\":")))
}

/// The answer for a foreign file at the lock path: its own state, and a
/// way out.
fn foreign(path: &Path, json: bool) -> Outcome {
    if json {
        let json = serde_json::json!({
            "path": path.to_string_lossy(),
            "strategy": null,
            "state": "foreign",
            "owner": null,
            "liveness": null,
        });
        println!("{json}");
    } else {
        println!(
            "foreign: {} holds data portalock did not write: it is no lock (held or free)",
            path.display()
        );
    }
    Ok(EXIT_FOREIGN)
}

/// The slot locks `<lock>.0`, `<lock>.1`, ... that `run --slots` made,
/// when nothing is at `lock` itself.
fn slot_locks(lock: &Path) -> Vec<std::path::PathBuf> {
    if std::fs::symlink_metadata(lock).is_ok() {
        return Vec::new();
    }
    let mut slots = Vec::new();
    loop {
        let mut name = lock.as_os_str().to_owned();
        name.push(format!(".{}", slots.len()));
        let slot = std::path::PathBuf::from(name);
        if std::fs::symlink_metadata(&slot).is_err() {
            return slots;
        }
        slots.push(slot);
    }
}

pub(crate) fn status(args: StatusArgs) -> Outcome {
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = &args.etcd {
        return etcd_status(endpoints, &args);
    }
    if args.strategy.is_none() && foreign_file(&args.lock) {
        return foreign(&args.lock, args.json);
    }
    let slots = slot_locks(&args.lock);
    if !slots.is_empty() {
        return slots_status(&args, &slots);
    }
    let lock = LockOptions::new()
        .strategy(infer(&args.lock, args.strategy))
        .open(&args.lock)
        .map_err(lock_error)?;
    let status = lock.status().map_err(lock_error)?;
    if let LockStatus::Shared(readers) = &status {
        return shared_status(&lock, readers, args.json);
    }
    let (state, owner, liveness) = match status {
        LockStatus::Held(Some(owner)) => {
            let liveness = lock.owner_liveness(&owner);
            // An OS lock is held only by a live process.
            let stale = liveness == Liveness::Dead && lock.strategy() != LockStrategy::Os;
            (
                if stale { "stale" } else { "held" },
                Some(owner),
                Some(liveness),
            )
        }
        LockStatus::Held(None) => ("held", None, None),
        _ => ("free", None, None),
    };
    if args.json {
        let json = serde_json::json!({
            "path": lock.path().as_str(),
            "strategy": lock.strategy(),
            "state": state,
            "owner": owner,
            "liveness": liveness,
        });
        println!("{json}");
    } else {
        match (&owner, liveness) {
            (Some(owner), Some(liveness)) => println!(
                "{state}: {} ({}) by {}, {liveness}, since {}",
                lock.path(),
                lock.strategy(),
                describe(owner),
                since(owner)
            ),
            _ => println!("{state}: {} ({})", lock.path(), lock.strategy()),
        }
    }
    Ok(match state {
        "free" => 0,
        "stale" => EXIT_STALE,
        _ => EXIT_NO,
    })
}

/// `status --etcd URL NAME`: held (1) with the holder's record, or free
/// (0). An etcd lock is never stale: its lease ends it.
#[cfg(feature = "etcd")]
fn etcd_status(endpoints: &str, args: &StatusArgs) -> Outcome {
    let name = args.lock.to_string_lossy();
    let lock = crate::run::open_etcd(endpoints, &name, None)?;
    let owner = lock.owner().map_err(lock_error)?;
    let state = if owner.is_some() { "held" } else { "free" };
    if args.json {
        let json = serde_json::json!({
            "name": lock.name(),
            "strategy": "etcd",
            "state": state,
            "owner": owner,
        });
        println!("{json}");
    } else {
        match &owner {
            Some(owner) => println!(
                "held: {} (etcd) by {}, since {}",
                lock.name(),
                describe(owner),
                since(owner)
            ),
            None => println!("free: {} (etcd)", lock.name()),
        }
    }
    Ok(if owner.is_some() { EXIT_NO } else { 0 })
}

/// `status` of a lock held by readers (`run --shared` on a mkdir or link
/// lock): each reader; held (1).
fn shared_status(lock: &LockFile, readers: &[Option<OwnerRecord>], json: bool) -> Outcome {
    if json {
        let json = serde_json::json!({
            "path": lock.path().as_str(),
            "strategy": lock.strategy(),
            "state": "shared",
            "readers": readers,
        });
        println!("{json}");
    } else {
        println!(
            "shared: {} ({}) by {} reader{}",
            lock.path(),
            lock.strategy(),
            readers.len(),
            if readers.len() == 1 { "" } else { "s" }
        );
        for reader in readers {
            match reader {
                Some(owner) => println!(
                    "  {}, {}, since {}",
                    describe(owner),
                    lock.owner_liveness(owner),
                    since(owner)
                ),
                None => println!("  a reader whose record cannot be read"),
            }
        }
    }
    Ok(EXIT_NO)
}

/// `status` of a `run --slots` lock: each slot's state; held (1) when
/// every slot is, free (0) when one is free.
fn slots_status(args: &StatusArgs, slots: &[std::path::PathBuf]) -> Outcome {
    let mut held = 0;
    let mut seen = Vec::new();
    for slot in slots {
        let lock = LockOptions::new()
            .strategy(infer(slot, args.strategy))
            .open(slot)
            .map_err(lock_error)?;
        let owner = match lock.status().map_err(lock_error)? {
            LockStatus::Held(owner) => {
                held += 1;
                Some(owner)
            }
            _ => None,
        };
        seen.push((lock.path().to_string(), owner));
    }
    let state = if held == slots.len() { "held" } else { "free" };
    if args.json {
        let slots: Vec<_> = seen
            .iter()
            .map(|(path, owner)| {
                serde_json::json!({
                    "path": path,
                    "state": if owner.is_some() { "held" } else { "free" },
                    "owner": owner.clone().flatten(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "path": args.lock.to_string_lossy(),
                "state": state,
                "slots": slots,
            })
        );
    } else {
        println!(
            "{state}: {} has {} slot locks, {held} held",
            args.lock.display(),
            slots.len()
        );
        for (path, owner) in &seen {
            match owner {
                Some(Some(owner)) => println!("  held: {path} by {}", describe(owner)),
                Some(None) => println!("  held: {path}"),
                None => println!("  free: {path}"),
            }
        }
    }
    Ok(if state == "held" { EXIT_NO } else { 0 })
}

pub(crate) fn break_lock(args: BreakArgs) -> Outcome {
    if foreign_file(&args.lock) {
        return Err(Failure::new(
            format!(
                "{} holds data portalock did not write: not broken, even with --force; \
                 if it is not needed, remove it by hand (rm {0})",
                args.lock.display()
            ),
            EXIT_FOREIGN,
        ));
    }
    let lock = LockOptions::new()
        .strategy(infer(&args.lock, args.strategy))
        .open(&args.lock)
        .map_err(lock_error)?;
    let removed = if args.force {
        lock.force_break()
    } else {
        lock.break_lock()
    };
    match removed.map_err(lock_error)? {
        Some(owner) => println!(
            "removed {}: it was held by {} since {}",
            lock.path(),
            describe(&owner),
            since(&owner)
        ),
        None => println!("{} is free", lock.path()),
    }
    Ok(0)
}

/// The strategy to look at the lock at `lock` with: `asked`, else the one
/// that took the lock there ([`LockStrategy::found_at`]), else auto.
pub(crate) fn infer(lock: &std::path::Path, asked: Option<LockStrategy>) -> LockStrategy {
    asked
        .or_else(|| LockStrategy::found_at(lock).ok().flatten())
        .unwrap_or(LockStrategy::Auto)
}
