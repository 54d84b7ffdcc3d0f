//! `portalock run`: take the lock, run the command under it, pass
//! signals on, release, and exit with the command's status.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use portalock::{Error, LockFile, LockOptions};

#[cfg(any(feature = "redis", feature = "etcd"))]
use crate::waiting::describe_holder;
use crate::waiting::{secs, wait_visibly, waiting_line};
use crate::{
    acquire_within, faults, lock_error, options, signals, within, Failure, Outcome, RunArgs,
};
use crate::{EXIT_CANNOT_RUN, EXIT_LOCK_ERROR, EXIT_NOT_FOUND};

pub(crate) fn run(args: RunArgs) -> Outcome {
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis {
        return run_redis(&args, url);
    }
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = &args.etcd {
        return run_etcd(&args, endpoints);
    }
    let strategy = match args.slots {
        1 => crate::inspect::infer(&args.lock, args.strategy),
        _ => args.strategy.unwrap_or_default(),
    };
    let mut options = options(strategy, &args.wait);
    if let Some(lease) = args.lease {
        options.lease(lease);
    }
    options.fencing(args.fence);
    if args.slots > 1 {
        return run_in_slot(&args, &options);
    }
    let lock = options.open(&args.lock).map_err(lock_error)?;
    if args.shared {
        return run_shared(&lock, &args);
    }
    let started = Instant::now();
    // A free lock is taken at once, without the thread that reports a
    // long wait.
    let taken = match acquire_within(&lock, Some(Duration::ZERO)) {
        Err(e) if e.is_contended() && args.wait.timeout() != Some(Duration::ZERO) => wait_visibly(
            &args.wait,
            |waited| waiting_line(&lock, waited),
            || acquire_within(&lock, args.wait.timeout()),
        ),
        other => other,
    };
    verbose(&args, &lock, started, &taken);
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict()))?;
    let status = run_under(&lock, &args);
    faults::step("run.exited");
    finish_run_with(status, lock.release())
}

/// `run --verbose`: says how long the lock took (why it was not taken is
/// the error line that follows).
fn verbose<T>(args: &RunArgs, lock: &LockFile, started: Instant, taken: &portalock::Result<T>) {
    if args.wait.verbose && taken.is_ok() {
        eprintln!(
            "portalock: got the lock {} after {:.3}s",
            lock.path(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// `run --shared`: takes the lock shared (any strategy), runs the command
/// under it (handed to the command unless `--close`, as for an exclusive
/// lock), and lets it go.
fn run_shared(lock: &LockFile, args: &RunArgs) -> Outcome {
    let started = Instant::now();
    let taken = wait_visibly(
        &args.wait,
        |waited| waiting_line(lock, waited),
        || {
            within(
                args.wait.timeout(),
                || lock.try_lock_shared(),
                |t| lock.lock_shared_timeout(t),
                || lock.lock_shared(),
            )
        },
    );
    verbose(args, lock, started, &taken);
    let guard = taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict()))?;
    faults::step("run.locked");
    let status = if args.close {
        run_command(&args.command(), |command| command.spawn())
    } else {
        run_command(&args.command(), |command| {
            guard.spawn(command).map_err(std::io::Error::from)
        })
    };
    faults::step("run.exited");
    finish_run_with(status, guard.release())
}

/// Runs the command of `args` under `lock`, which this process holds:
/// handed to the command unless `--close`.
pub(crate) fn run_under(lock: &LockFile, args: &RunArgs) -> Outcome {
    faults::step("run.locked");
    let fence = lock.fence();
    let with_fence = |command: &mut std::process::Command| {
        if let Some(fence) = fence {
            command.env("PORTALOCK_FENCE", fence.to_string());
        }
    };
    if args.close {
        run_command(&args.command(), |command| {
            with_fence(command);
            command.spawn()
        })
    } else {
        run_command(&args.command(), |command| {
            with_fence(command);
            lock.spawn(command).map_err(std::io::Error::from)
        })
    }
}

/// A lock in a server (Redis, etcd), as `run` uses it.
#[cfg(any(feature = "redis", feature = "etcd"))]
trait ServerLock: Sync {
    /// "Redis lock", "etcd lock".
    const WHAT: &'static str;
    fn name(&self) -> &str;
    fn owner(&self) -> portalock::Result<Option<portalock::OwnerRecord>>;
    fn try_acquire(&self) -> portalock::Result<()>;
    fn acquire_timeout(&self, timeout: Duration) -> portalock::Result<()>;
    fn acquire(&self) -> portalock::Result<()>;
    fn fence(&self) -> Option<u64>;
    fn release(&self) -> portalock::Result<()>;
}

/// `ServerLock` for a lock type whose inherent methods have its names.
#[cfg(any(feature = "redis", feature = "etcd"))]
macro_rules! server_lock {
    ($lock:ty, $what:literal) => {
        impl ServerLock for $lock {
            const WHAT: &'static str = $what;
            fn name(&self) -> &str {
                <$lock>::name(self)
            }
            fn owner(&self) -> portalock::Result<Option<portalock::OwnerRecord>> {
                <$lock>::owner(self)
            }
            fn try_acquire(&self) -> portalock::Result<()> {
                <$lock>::try_acquire(self)
            }
            fn acquire_timeout(&self, timeout: Duration) -> portalock::Result<()> {
                <$lock>::acquire_timeout(self, timeout)
            }
            fn acquire(&self) -> portalock::Result<()> {
                <$lock>::acquire(self)
            }
            fn fence(&self) -> Option<u64> {
                <$lock>::fence(self)
            }
            fn release(&self) -> portalock::Result<()> {
                <$lock>::release(self)
            }
        }
    };
}

#[cfg(feature = "redis")]
server_lock!(portalock::RedisLock, "Redis lock");
#[cfg(feature = "etcd")]
server_lock!(portalock::EtcdLock, "etcd lock");

/// `run` under a lock in a server: waits as the options say (reporting
/// the holder), runs the command (with `--fence`, the lock's fencing token
/// in `PORTALOCK_FENCE`), releases. The lease governs such a lock: nothing
/// is handed to the command.
#[cfg(any(feature = "redis", feature = "etcd"))]
fn run_under_server<L: ServerLock>(args: &RunArgs, lock: &L) -> Outcome {
    let line = |waited: Duration| {
        let holder = describe_holder(lock.owner());
        format!(
            "portalock: waiting {} for {} {}, held by {holder}",
            secs(waited),
            L::WHAT,
            lock.name()
        )
    };
    let taken = wait_visibly(&args.wait, line, || {
        within(
            args.wait.timeout(),
            || lock.try_acquire(),
            |t| lock.acquire_timeout(t),
            || lock.acquire(),
        )
    });
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict()))?;
    let fence = lock.fence().filter(|_| args.fence);
    let status = run_command(&args.command(), |command| {
        if let Some(fence) = fence {
            command.env("PORTALOCK_FENCE", fence.to_string());
        }
        command.spawn()
    });
    finish_run_with(status, lock.release())
}

/// `run --redis URL NAME`: the lock lives in Redis.
#[cfg(feature = "redis")]
pub(crate) fn run_redis(args: &RunArgs, url: &str) -> Outcome {
    let name = args.lock.to_string_lossy();
    let mut options = portalock::RedisLock::options();
    if let Some(lease) = args.lease {
        options.lease(lease);
    }
    let lock = options.open(url, &name).map_err(lock_error)?;
    run_under_server(args, &lock)
}

/// An etcd lock for the tool: the endpoints (comma-separated), the user
/// and password from the environment.
#[cfg(feature = "etcd")]
pub(crate) fn open_etcd(
    endpoints: &str,
    name: &str,
    lease: Option<Duration>,
) -> Result<portalock::EtcdLock, Failure> {
    let endpoints: Vec<&str> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut options = portalock::EtcdLock::options();
    if let Some(lease) = lease {
        options.lease(lease);
    }
    if let Ok(user) = std::env::var("PORTALOCK_ETCD_USER") {
        let password = std::env::var("PORTALOCK_ETCD_PASSWORD").unwrap_or_default();
        options.user(&user, &password);
    }
    options.open(&endpoints, name).map_err(lock_error)
}

/// `run --etcd URL[,URL...] NAME`: the lock lives in etcd.
#[cfg(feature = "etcd")]
pub(crate) fn run_etcd(args: &RunArgs, endpoints: &str) -> Outcome {
    let name = args.lock.to_string_lossy();
    let lock = open_etcd(endpoints, &name, args.lease)?;
    run_under_server(args, &lock)
}

/// `run --slots N`: takes one of N slots, runs the command, frees it.
pub(crate) fn run_in_slot(args: &RunArgs, options: &LockOptions) -> Outcome {
    let slots = usize::try_from(args.slots).unwrap_or(usize::MAX);
    let semaphore =
        portalock::BoundedSemaphore::new(&args.lock, slots, options).map_err(lock_error)?;
    let line = |waited: Duration| {
        format!(
            "portalock: waiting {} for one of the {} slots of {}",
            secs(waited),
            semaphore.slots(),
            semaphore.prefix()
        )
    };
    let taken = wait_visibly(&args.wait, line, || {
        within(
            args.wait.timeout(),
            || semaphore.try_acquire(),
            |t| semaphore.acquire_timeout(t),
            || semaphore.acquire(),
        )
    });
    let slot = taken.map_err(|e| {
        if e.is_contended() {
            // The error names the first slot's path, or the prefix, which
            // is no file: say what is held.
            Failure::new(
                format!(
                    "all {n} slots of {p} are held: its slot locks {p}.0 to {p}.{last} \
                     (`portalock status {p}` says by whom)",
                    n = semaphore.slots(),
                    p = semaphore.prefix(),
                    last = semaphore.slots().saturating_sub(1),
                ),
                args.wait.conflict(),
            )
        } else {
            Failure::from_lock(&e, args.wait.conflict())
        }
    })?;
    let status = run_under(slot.lock_file(), args);
    faults::step("run.exited");
    finish_run_with(status, slot.release())
}

/// The exit status of `run`: the command's `status`, unless the lock
/// (`released`) was lost while it ran.
pub(crate) fn finish_run_with(status: Outcome, released: portalock::Result<()>) -> Outcome {
    let code = status?;
    match released {
        Ok(()) => Ok(code),
        Err(e) => {
            // The command ran, but the lock was lost (broken as stale, or
            // removed) before it finished: say so, and fail if it did not.
            eprintln!("portalock: {e}");
            Ok(if code == 0 { EXIT_LOCK_ERROR } else { code })
        }
    }
}

/// Runs `command`, started by `spawn`, with signals passed on to it; its
/// exit status.
pub(crate) fn run_command(
    command: &[OsString],
    spawn: impl FnOnce(&mut Command) -> std::io::Result<std::process::Child>,
) -> Outcome {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| Failure::new("no command to run", 2))?;
    // Caught from before the command starts: a signal that comes in
    // between is passed on once it runs, and never ends portalock while
    // it holds the lock.
    let mut caught = signals::catch();
    // Asked to stop before the command started (a Ctrl-C while the lock was
    // being taken, say): it does not start.
    if let Some(signal) = signals::arrived(&mut caught) {
        signals::stop(caught, None);
        return Err(Failure::new(
            format!(
                "stopped by signal {signal} before `{}` started",
                program.to_string_lossy()
            ),
            u8::try_from(128 + signal).unwrap_or(255),
        ));
    }
    let mut child = match spawn(Command::new(program).args(rest)) {
        Ok(child) => child,
        Err(e) => {
            signals::stop(caught, None);
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
            return Err(Failure::new(
                format!("cannot run `{}`: {}", program.to_string_lossy(), cause(&e)),
                code,
            ));
        }
    };
    let forwarding = signals::forward(caught, child.id());
    let status = child.wait();
    signals::stop(None, forwarding);
    match status {
        Ok(status) => Ok(exit_code(status)),
        Err(e) => Err(Failure::new(
            format!("cannot wait for `{}`: {e}", program.to_string_lossy()),
            EXIT_LOCK_ERROR,
        )),
    }
}

/// The innermost cause of a spawn error, for one line: "No such file or
/// directory (os error 2)" rather than the lock's wording around it.
pub(crate) fn cause(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(err) => err
            .io_error()
            .map_or_else(|| err.to_string(), ToString::to_string),
        None => e.to_string(),
    }
}

/// The shell's exit status for a child's `status`: its code, or 128 + the
/// signal that killed it.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        // Windows codes can exceed a byte; keep "failed" failed.
        return u8::try_from(code).unwrap_or(1);
    }
    match signals::killed_by(status) {
        Some(signal) => u8::try_from(128 + signal).unwrap_or(255),
        None => 1,
    }
}
