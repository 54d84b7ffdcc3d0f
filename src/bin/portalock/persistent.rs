//! `portalock acquire` and `portalock release`: a lock that outlives the
//! command, held on behalf of another process (the calling shell).

use portalock::{Error, LockFile, LockOptions, LockStrategy};

use crate::waiting::{describe, wait_visibly, waiting_line};
use crate::{acquire_within, lock_error, options, AcquireArgs, Failure, Outcome, ReleaseArgs};
use crate::{EXIT_LOCK_ERROR, EXIT_NO};

/// The strategy of `acquire` and `release`: one whose artifact outlives
/// the command.
pub(crate) fn persistent(
    lock: &std::path::Path,
    asked: Option<LockStrategy>,
) -> Result<LockStrategy, Failure> {
    match asked {
        Some(LockStrategy::Os) => Err(Failure::new(
            format!(
                "an os lock cannot outlive the command that takes it; use --strategy mkdir or link \
                 for `{}`",
                lock.display()
            ),
            2,
        )),
        Some(strategy) => Ok(strategy),
        None => {
            let auto = LockFile::new(lock).map_err(lock_error)?.strategy();
            Ok(if auto == LockStrategy::Os {
                LockStrategy::Mkdir
            } else {
                auto
            })
        }
    }
}

/// The process a lock is held for: `pid`, or this command's parent.
pub(crate) fn owner_pid(pid: Option<u32>) -> Result<u32, Failure> {
    if let Some(pid) = pid {
        return Ok(pid);
    }
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let me = Pid::from_u32(std::process::id());
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[me]),
        false,
        ProcessRefreshKind::nothing(),
    );
    sys.process(me)
        .and_then(|p| p.parent())
        .map(|p| p.as_u32())
        .ok_or_else(|| {
            Failure::new(
                "cannot find the parent process; pass --pid",
                EXIT_LOCK_ERROR,
            )
        })
}

pub(crate) fn acquire(args: AcquireArgs) -> Outcome {
    let strategy = persistent(&args.lock, args.strategy)?;
    let pid = owner_pid(args.pid)?;
    let mut options = options(strategy, &args.wait);
    options.on_behalf_of(pid);
    if let Some(lease) = args.lease {
        options.lease(lease);
    }
    let lock = options.open(&args.lock).map_err(lock_error)?;
    let taken = wait_visibly(
        &args.wait,
        |waited| waiting_line(&lock, waited),
        || acquire_within(&lock, args.wait.timeout()),
    );
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict()))?;
    let owner = lock.owner().ok().flatten();
    lock.detach().map_err(lock_error)?;
    if !args.wait.quiet {
        // A lock held for a process that ends at once (a `sh -c` around
        // this command, say) would be stale at once, without a word.
        let whom = owner
            .as_ref()
            .map_or_else(|| format!("pid {pid}"), describe);
        let until = match args.lease {
            Some(lease) => format!(
                "until `portalock release`, until that process exits, or for {} (its lease)",
                humantime::format_duration(lease)
            ),
            None => "until `portalock release` or until that process exits".to_owned(),
        };
        eprintln!(
            "portalock: {} is held for {whom}, {until}; --pid names another process",
            lock.path()
        );
    }
    Ok(0)
}

pub(crate) fn release(args: ReleaseArgs) -> Outcome {
    let strategy = persistent(&args.lock, args.strategy)?;
    let pid = owner_pid(args.pid)?;
    let lock = LockOptions::new()
        .strategy(strategy)
        .open(&args.lock)
        .map_err(lock_error)?;
    match lock.release_for(pid) {
        Ok(_) => Ok(0),
        Err(Error::NotLocked { .. }) => Err(Failure::new(
            format!("lock `{}` is free", lock.path()),
            EXIT_NO,
        )),
        Err(e) => Err(lock_error(e)),
    }
}
