//! `portalock status` and `portalock break`: look at a lock this process
//! did not take.

use portalock::{Liveness, LockOptions, LockStatus, LockStrategy};

use crate::waiting::describe;
use crate::{lock_error, BreakArgs, Outcome, StatusArgs, EXIT_NO, EXIT_STALE};

pub(crate) fn status(args: StatusArgs) -> Outcome {
    let lock = LockOptions::new()
        .strategy(infer(&args.lock, args.strategy))
        .open(&args.lock)
        .map_err(lock_error)?;
    let (state, owner, liveness) = match lock.status().map_err(lock_error)? {
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
                owner.acquired_at
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

pub(crate) fn break_lock(args: BreakArgs) -> Outcome {
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
            owner.acquired_at
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
