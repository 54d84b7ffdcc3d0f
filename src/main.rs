//! `portalock`: cross-process file locks from the shell, for scripts, cron
//! jobs and CI pipelines.
//!
//! Built with the `cli` feature. See `portalock --help` and the README for
//! the subcommands and exit codes.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};
use portalock::{Error, Liveness, LockFile, LockOptions, LockStatus, LockStrategy, OwnerRecord};

/// Exit status: the lock is held (`status`), a live lock was not broken
/// (`break`), or the lock is not held for that process (`release`).
const EXIT_NO: u8 = 1;
/// Exit status of `status` for a stale lock.
const EXIT_STALE: u8 = 3;
/// Exit status for an error of the lock itself (I/O, a bad lock path, a
/// foreign file at the lock path, a lost lock): EX_IOERR.
const EXIT_LOCK_ERROR: u8 = 74;
/// Default exit status when the lock is busy: EX_TEMPFAIL.
const EXIT_CONFLICT: u8 = 75;
/// Exit status when the command cannot be run.
const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command is not found.
const EXIT_NOT_FOUND: u8 = 127;

const EXIT_CODES: &str = "\
Exit codes:
  0        success (run: the command's own status)
  1        status: the lock is held; break: the lock is live (not broken);
           release: the lock is free or held for another process
  2        usage error
  3        status: the lock is stale (its owner on this host has exited)
  74       a lock error: I/O, a bad lock path, a foreign file at the lock
           path, a lock lost while the command ran
  75       the lock is busy: --timeout ran out (or 0 and held); change it
           with --conflict-exit-code
  126/127  run: the command cannot be run / was not found
  128+N    run: the command was killed by signal N";

/// Cross-process locks that live in the file system.
///
/// A lock is named by its path. Every subcommand takes --strategy (auto,
/// os, mkdir, link): use the same one everywhere a lock is shared.
#[derive(Debug, Parser)]
#[command(name = "portalock", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Take the lock, run COMMAND, release the lock; exit with COMMAND's
    /// status.
    ///
    /// While it waits for more than a second, it says on stderr whom it
    /// waits for. The lock lasts as long as COMMAND runs, even if portalock
    /// itself is killed (see --close); it is released when COMMAND has
    /// exited. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to portalock are
    /// passed to COMMAND, except those COMMAND gets by itself: a terminal's
    /// Ctrl-C or Ctrl-\ reaches every process of its foreground group.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Say whether the lock is free, held (and by whom) or stale.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Remove a stale lock and say whose it was; a live one only with
    /// --force.
    #[command(after_help = EXIT_CODES)]
    Break(BreakArgs),
    /// Take the lock for a longer-lived process (by default the parent
    /// shell) and leave it held after this command exits.
    ///
    /// The lock is released by `portalock release`, or breaks as stale
    /// once that process has exited. An OS lock cannot outlive the command
    /// that took it, so the default strategy is auto with mkdir where auto
    /// would pick os; --strategy os is refused.
    #[command(after_help = EXIT_CODES)]
    Acquire(AcquireArgs),
    /// Release a lock that `portalock acquire` took for a process (by
    /// default the parent shell).
    #[command(after_help = EXIT_CODES)]
    Release(ReleaseArgs),
}

#[derive(Debug, Args)]
struct Wait {
    /// Seconds to wait for the lock: 0 tries once; absent waits forever.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    timeout: Option<Duration>,
    /// Never break a stale lock (one whose owner has exited, or whose lease
    /// ran out).
    #[arg(long)]
    no_break: bool,
    /// Exit status when the lock stays busy.
    #[arg(long, value_name = "N", default_value_t = EXIT_CONFLICT)]
    conflict_exit_code: u8,
    /// Say nothing while waiting.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// How the lock is taken: auto, os, mkdir or link.
    #[arg(long, default_value = "auto")]
    strategy: LockStrategy,
    #[command(flatten)]
    wait: Wait,
    /// Hold the lock with a lease of this many seconds, refreshed while
    /// COMMAND runs: if portalock stops (is paused, or its host is cut
    /// off), others may break the lock once the lease runs out.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    lease: Option<Duration>,
    /// Admit up to N commands at once instead of one: a semaphore of N
    /// slot locks named LOCK.0 ... LOCK.<N-1>.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
    /// Take the lock in the Redis server at URL (redis://host:port/db)
    /// instead of the file system: LOCK is then the lock's name (feature
    /// `redis`). The lock is a lease of --lease seconds (default 10),
    /// renewed while COMMAND runs.
    #[cfg(feature = "redis")]
    #[arg(long, value_name = "URL", conflicts_with = "slots")]
    redis: Option<String>,
    /// Do not hand the lock to COMMAND: by default the lock lasts as long
    /// as COMMAND runs, even if portalock is killed (COMMAND inherits an os
    /// lock's open file, as with flock(1); a mkdir or link lock's record
    /// names COMMAND); with --close it lasts only as long as portalock.
    #[arg(long, short = 'o')]
    close: bool,
    /// The lock's path.
    lock: PathBuf,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// How the lock is taken: auto, os, mkdir or link [default: what the
    /// lock at LOCK is: mkdir for a directory, the strategy its owner
    /// record names for a file, else auto].
    #[arg(long)]
    strategy: Option<LockStrategy>,
    /// Print one JSON object: {"path", "strategy", "state", "owner",
    /// "liveness"} (see the README).
    #[arg(long)]
    json: bool,
    /// The lock's path.
    lock: PathBuf,
}

#[derive(Debug, Args)]
struct BreakArgs {
    /// How the lock is taken: auto, os, mkdir or link [default: what the
    /// lock at LOCK is: mkdir for a directory, the strategy its owner
    /// record names for a file, else auto].
    #[arg(long)]
    strategy: Option<LockStrategy>,
    /// Remove the lock even if its owner looks alive.
    #[arg(long)]
    force: bool,
    /// The lock's path.
    lock: PathBuf,
}

#[derive(Debug, Args)]
struct AcquireArgs {
    /// How the lock is taken: auto, mkdir or link [default: auto, with
    /// mkdir where auto would pick os].
    #[arg(long)]
    strategy: Option<LockStrategy>,
    #[command(flatten)]
    wait: Wait,
    /// The process the lock is held for [default: the parent process].
    #[arg(long)]
    pid: Option<u32>,
    /// The lock's path.
    lock: PathBuf,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    /// How the lock was taken: auto, mkdir or link [default: as for
    /// acquire].
    #[arg(long)]
    strategy: Option<LockStrategy>,
    /// The process the lock is held for [default: the parent process].
    #[arg(long)]
    pid: Option<u32>,
    /// The lock's path.
    lock: PathBuf,
}

/// Parses a non-negative number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{s}` is not a non-negative, finite number of seconds"))
}

fn main() -> ExitCode {
    faults::setup();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Status(args) => status(args),
        Cmd::Break(args) => break_lock(args),
        Cmd::Acquire(args) => acquire(args),
        Cmd::Release(args) => release(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("portalock: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// A failed subcommand: one line for stderr and an exit status.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>, code: u8) -> Failure {
        Failure {
            message: message.into(),
            code,
        }
    }

    /// The exit status for a lock error; `conflict` when the lock is busy.
    fn from_lock(err: &Error, conflict: u8) -> Failure {
        let code = match err {
            e if e.is_contended() => conflict,
            Error::NotStale { .. } | Error::NotOwner { .. } | Error::NotLocked { .. } => EXIT_NO,
            _ => EXIT_LOCK_ERROR,
        };
        Failure::new(err.to_string(), code)
    }
}

type Outcome = Result<u8, Failure>;

fn lock_error(err: Error) -> Failure {
    Failure::from_lock(&err, EXIT_CONFLICT)
}

fn run(args: RunArgs) -> Outcome {
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis {
        return run_redis(&args, url);
    }
    let mut options = options(args.strategy, &args.wait);
    options.lease(args.lease);
    if args.slots > 1 {
        return run_in_slot(&args, &options);
    }
    let lock = options.open(&args.lock).map_err(lock_error)?;
    let taken = wait_visibly(
        &args.wait,
        |waited| waiting_line(&lock, waited),
        || acquire_within(&lock, args.wait.timeout),
    );
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict_exit_code))?;
    let status = run_under(&lock, &args);
    faults::step("run.exited");
    finish_run_with(status, lock.release())
}

/// Runs the command of `args` under `lock`, which this process holds:
/// handed to the command unless `--close`.
fn run_under(lock: &LockFile, args: &RunArgs) -> Outcome {
    faults::step("run.locked");
    if args.close {
        run_command(&args.command, |command| command.spawn())
    } else {
        run_command(&args.command, |command| {
            lock.spawn(command).map_err(std::io::Error::from)
        })
    }
}

/// `run --redis URL NAME`: the lock lives in Redis.
#[cfg(feature = "redis")]
fn run_redis(args: &RunArgs, url: &str) -> Outcome {
    let name = args.lock.to_string_lossy();
    let mut options = portalock::RedisLock::options();
    if let Some(lease) = args.lease {
        options.lease(lease);
    }
    let lock = options.open(url, &name).map_err(lock_error)?;
    let line = |waited: Duration| {
        let holder = describe_holder(lock.owner());
        format!(
            "portalock: waiting {} for Redis lock {}, held by {holder}",
            secs(waited),
            lock.name()
        )
    };
    let taken = wait_visibly(&args.wait, line, || match args.wait.timeout {
        None => lock.acquire(),
        Some(t) if t.is_zero() => lock.try_acquire(),
        Some(t) => lock.acquire_timeout(t),
    });
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict_exit_code))?;
    // The lease governs a Redis lock: nothing to hand to the command.
    let status = run_command(&args.command, |command| command.spawn());
    finish_run_with(status, lock.release())
}

/// `run --slots N`: takes one of N slots, runs the command, frees it.
fn run_in_slot(args: &RunArgs, options: &LockOptions) -> Outcome {
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
    let taken = wait_visibly(&args.wait, line, || match args.wait.timeout {
        None => semaphore.acquire(),
        Some(t) if t.is_zero() => semaphore.try_acquire(),
        Some(t) => semaphore.acquire_timeout(t),
    });
    let slot = taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict_exit_code))?;
    let status = run_under(slot.lock_file(), args);
    faults::step("run.exited");
    finish_run_with(status, slot.release())
}

/// The exit status of `run`: the command's `status`, unless the lock
/// (`released`) was lost while it ran.
fn finish_run_with(status: Outcome, released: portalock::Result<()>) -> Outcome {
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
fn run_command(
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
fn cause(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(err) => err
            .io_error()
            .map_or_else(|| err.to_string(), ToString::to_string),
        None => e.to_string(),
    }
}

/// The shell's exit status for a child's `status`: its code, or 128 + the
/// signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        // Windows codes can exceed a byte; keep "failed" failed.
        return u8::try_from(code).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(255);
        }
    }
    1
}

/// Passing signals on to the command.
///
/// The rule: pass on what the command would not get by itself. A
/// terminal's Ctrl-C (SIGINT), Ctrl-\\ (SIGQUIT) and hang-up (SIGHUP) are
/// sent by the kernel to every process of the terminal's foreground
/// process group; when the command is in portalock's group it gets them
/// already, and a second SIGINT would make many programs quit without
/// cleaning up. Signals sent to portalock alone (`kill PID`, a job
/// scheduler, `timeout`) are passed on. Linux tells the two apart (the
/// signal's `si_code`); elsewhere every caught signal is passed on.
/// A signal sent with `kill` to the whole process group (a negative PID)
/// reaches the command twice: send it to portalock alone.
#[cfg(unix)]
mod signals {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    use signal_hook::iterator::Handle;

    const CAUGHT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

    #[cfg(target_os = "linux")]
    type Signals =
        signal_hook::iterator::SignalsInfo<signal_hook::iterator::exfiltrator::WithOrigin>;
    #[cfg(not(target_os = "linux"))]
    type Signals = signal_hook::iterator::Signals;

    pub(crate) struct Caught(Signals);

    pub(crate) struct Forwarding {
        handle: Handle,
        thread: std::thread::JoinHandle<()>,
    }

    /// Starts catching the signals that ask a job to stop; they wait until
    /// [`forward`] passes them on. portalock itself keeps running, so that
    /// it releases the lock once the command has exited.
    pub(crate) fn catch() -> Option<Caught> {
        match Signals::new(CAUGHT) {
            Ok(signals) => Some(Caught(signals)),
            Err(e) => {
                eprintln!("portalock: cannot pass signals on to the command: {e}");
                None
            }
        }
    }

    /// A signal caught so far (taken out), if any.
    pub(crate) fn arrived(caught: &mut Option<Caught>) -> Option<i32> {
        let Caught(signals) = caught.as_mut()?;
        let first = signals.pending().next();
        #[cfg(target_os = "linux")]
        return first.map(|origin| origin.signal);
        #[cfg(not(target_os = "linux"))]
        return first;
    }

    /// Passes what was caught, and what comes, on to `pid` (by the rule in
    /// the module docs), until [`stop`].
    pub(crate) fn forward(caught: Option<Caught>, pid: u32) -> Option<Forwarding> {
        let Caught(mut signals) = caught?;
        let child = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for info in signals.forever() {
                #[cfg(target_os = "linux")]
                let (signal, pass) = {
                    let from_kernel =
                        matches!(info.cause, signal_hook::low_level::siginfo::Cause::Kernel);
                    (
                        info.signal,
                        forward_from_kernel(info.signal, from_kernel, child),
                    )
                };
                #[cfg(not(target_os = "linux"))]
                let (signal, pass) = (info, true);
                if pass {
                    if let Some(signal) = rustix::process::Signal::from_named_raw(signal) {
                        let _ = rustix::process::kill_process(child, signal);
                    }
                }
            }
        });
        Some(Forwarding { handle, thread })
    }

    /// Whether a signal the kernel sent (`from_kernel`: a terminal's) or a
    /// process sent must be passed on to `child`.
    #[cfg(target_os = "linux")]
    fn forward_from_kernel(signal: i32, from_kernel: bool, child: rustix::process::Pid) -> bool {
        // `/proc` speaks of the PID namespace that mounted it: one that
        // does not know this process by its own PID (a PID namespace made
        // without a `/proc` of its own) cannot say; then the signal is
        // passed on (the command may get a terminal's signal twice).
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let own_proc = std::fs::read_to_string("/proc/self/stat").is_ok_and(|stat| {
            stat.split_ascii_whitespace().next() == Some(me.to_string().as_str())
        });
        if !own_proc {
            return true;
        }
        let ours = group_and_session("self");
        let theirs = group_and_session(&child.as_raw_nonzero().to_string());
        let same_group = matches!((ours, theirs), (Some((a, _)), Some((b, _))) if a == b);
        // A hang-up reaches the session leader alone: if portalock leads
        // its session, the command did not get it.
        let leads_session = ours.is_some_and(|(_, sid)| sid == i64::from(me));
        should_forward(signal, from_kernel, same_group, leads_session)
    }

    /// The process group and session (fields 5 and 6 of
    /// `/proc/<pid>/stat`, counted after the command name's last `)`).
    ///
    /// Read from `/proc` rather than asked with `getpgid`/`getsid`: in a
    /// PID namespace whose group or session leader lives outside (a
    /// container started from a shell, `unshare --pid`), the kernel answers
    /// 0, which rustix's `Pid` cannot hold. Here 0 is a value: a command
    /// that stayed in portalock's group shows the same 0, and a command
    /// that made its own group shows its own PID.
    #[cfg(target_os = "linux")]
    fn group_and_session(pid: &str) -> Option<(i64, i64)> {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        parse_group_and_session(&stat)
    }

    /// The parsing half of [`group_and_session`].
    #[cfg(target_os = "linux")]
    pub(crate) fn parse_group_and_session(stat: &[u8]) -> Option<(i64, i64)> {
        let after = stat.iter().rposition(|&b| b == b')')? + 1;
        let text = std::str::from_utf8(stat.get(after..)?).ok()?;
        // State, parent, group, session.
        let mut fields = text.split_ascii_whitespace().skip(2);
        let group = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        Some((group, session))
    }

    /// The rule, for the unit test.
    #[cfg(target_os = "linux")]
    pub(crate) fn should_forward(
        signal: i32,
        from_kernel: bool,
        same_group: bool,
        leads_session: bool,
    ) -> bool {
        !(from_kernel && same_group && !(signal == SIGHUP && leads_session))
    }

    /// Stops catching: what was caught and not forwarded is dropped.
    pub(crate) fn stop(caught: Option<Caught>, forwarding: Option<Forwarding>) {
        drop(caught);
        if let Some(Forwarding { handle, thread }) = forwarding {
            handle.close();
            let _ = thread.join();
        }
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[test]
        fn group_and_session_are_read_after_the_command_name() {
            let stat = b"42 (a) b (c)) S 1 0 0 0 -1 4194560";
            assert_eq!(parse_group_and_session(stat), Some((0, 0)));
            let stat = b"42 (sh) S 1 42 7 34816 42 4194560";
            assert_eq!(parse_group_and_session(stat), Some((42, 7)));
            assert_eq!(parse_group_and_session(b"42 (sh"), None);
            assert_eq!(parse_group_and_session(b"42 (sh) S 1"), None);
            // This process: a group and a session, whatever their numbers.
            assert!(group_and_session("self").is_some());
        }

        #[test]
        fn a_terminals_signals_are_not_passed_on_to_a_command_that_got_them() {
            // Ctrl-C at the terminal, the command in our group: it has it.
            assert!(!should_forward(SIGINT, true, true, false));
            assert!(!should_forward(SIGQUIT, true, true, false));
            assert!(!should_forward(SIGHUP, true, true, false));
            // `kill -INT <portalock>`: only portalock got it.
            assert!(should_forward(SIGINT, false, true, false));
            assert!(should_forward(SIGTERM, false, true, false));
            // The command left our group: nothing reaches it by itself.
            assert!(should_forward(SIGINT, true, false, false));
            // A hang-up of the terminal that portalock's session leads.
            assert!(should_forward(SIGHUP, true, true, true));
        }
    }
}

#[cfg(not(unix))]
mod signals {
    /// On Windows, Ctrl-C reaches every process of the console, the
    /// command included: nothing to pass on.
    pub(crate) fn catch() -> Option<()> {
        None
    }

    pub(crate) fn arrived(_caught: &mut Option<()>) -> Option<i32> {
        None
    }

    pub(crate) fn forward(_caught: Option<()>, _pid: u32) -> Option<()> {
        None
    }

    pub(crate) fn stop(_caught: Option<()>, _forwarding: Option<()>) {}
}

/// Fault points of `run` for the protocol tests (feature `failpoints`):
/// `PORTALOCK_PAUSE_AT=<step>` makes portalock say `PL:AT <step>` on its
/// standard output at that step and wait for a line on the FIFO
/// `PORTALOCK_RESUME_FIFO` (or be killed there). Without the feature,
/// nothing.
mod faults {
    /// The steps of `run`: the lock taken, the command not yet started; the
    /// command exited, the lock not yet released.
    #[cfg(feature = "failpoints")]
    pub(crate) const STEPS: &[&str] = &["run.locked", "run.exited"];

    #[cfg(feature = "failpoints")]
    pub(crate) fn setup() {
        if let Ok(step) = std::env::var("PORTALOCK_PAUSE_AT") {
            let fifo = std::env::var("PORTALOCK_RESUME_FIFO").unwrap_or_default();
            let at = step.clone();
            let _ = fail::cfg_callback(step, move || {
                use std::io::{BufRead, Write};
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "PL:AT {at}");
                let _ = out.flush();
                if let Ok(file) = std::fs::File::open(&fifo) {
                    let _ = std::io::BufReader::new(file).read_line(&mut String::new());
                }
            });
        }
    }

    #[cfg(feature = "failpoints")]
    pub(crate) fn step(name: &'static str) {
        debug_assert!(
            STEPS.contains(&name) || portalock::fault::STEPS.contains(&name),
            "unlisted step {name}"
        );
        fail::fail_point!(name);
    }

    #[cfg(not(feature = "failpoints"))]
    pub(crate) fn setup() {}

    #[cfg(not(feature = "failpoints"))]
    pub(crate) fn step(_name: &'static str) {}
}

/// Options shared by the subcommands that take a lock.
fn options(strategy: LockStrategy, wait: &Wait) -> LockOptions {
    let mut options = LockOptions::new();
    options.strategy(strategy).break_stale(!wait.no_break);
    options
}

/// Takes `lock` within `timeout` (0: try once; `None`: forever).
fn acquire_within(lock: &LockFile, timeout: Option<Duration>) -> portalock::Result<()> {
    match timeout {
        None => lock.acquire(),
        Some(t) if t.is_zero() => lock.try_acquire(),
        Some(t) => lock.acquire_timeout(t),
    }
}

/// Runs `acquire` while telling on stderr (unless `--quiet`) what it waits
/// for, in the words of `line`.
fn wait_visibly<T>(
    wait: &Wait,
    line: impl Fn(Duration) -> String + Sync,
    acquire: impl FnOnce() -> portalock::Result<T>,
) -> portalock::Result<T> {
    std::thread::scope(|scope| {
        let (done, waiting) = mpsc::channel::<()>();
        if !wait.quiet {
            let line = &line;
            scope.spawn(move || report_wait(line, &waiting));
        }
        let result = acquire();
        drop(done);
        result
    })
}

/// Says what we wait for, after a second and then every second on a
/// terminal (rewriting one line) or every ten seconds otherwise, until
/// `done` is dropped.
fn report_wait(line: &(impl Fn(Duration) -> String + Sync), done: &mpsc::Receiver<()>) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let start = Instant::now();
    let mut next = Duration::from_secs(1);
    let mut shown = false;
    while let Err(RecvTimeoutError::Timeout) =
        done.recv_timeout(next.saturating_sub(start.elapsed()))
    {
        let text = line(start.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r\x1b[2K{text}")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
        shown = true;
        next += every;
    }
    if terminal && shown {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
}

/// Who holds a lock, for a waiting message, from a look at its owner.
fn describe_holder(owner: Result<Option<OwnerRecord>, Error>) -> String {
    match owner {
        Ok(Some(owner)) => describe(&owner),
        Ok(None) => "an owner whose record cannot be read".to_owned(),
        Err(e) => format!("an unknown owner ({e})"),
    }
}

fn waiting_line(lock: &LockFile, waited: Duration) -> String {
    let holder = describe_holder(lock.owner());
    format!(
        "portalock: waiting {} for {}, held by {holder}",
        secs(waited),
        lock.path()
    )
}

/// "pid 42 on build-7 for 3m 5s".
fn describe(owner: &OwnerRecord) -> String {
    let held = humantime::parse_rfc3339(&owner.acquired_at)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map(|d| format!(" for {}", secs(d)))
        .unwrap_or_default();
    format!("pid {} on {}{held}", owner.pid, owner.hostname)
}

/// A duration to the second: "1m 5s".
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn status(args: StatusArgs) -> Outcome {
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

fn break_lock(args: BreakArgs) -> Outcome {
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

/// The strategy to look at the lock at `lock` with: `asked`, else what the
/// artifact there is (a directory: mkdir; a file: the strategy its owner
/// record names), else auto.
fn infer(lock: &std::path::Path, asked: Option<LockStrategy>) -> LockStrategy {
    if let Some(strategy) = asked {
        return strategy;
    }
    match std::fs::symlink_metadata(lock) {
        Ok(meta) if meta.is_dir() => LockStrategy::Mkdir,
        Ok(meta) if meta.is_file() => open_nonblocking(lock)
            .ok()
            .and_then(|file| {
                let mut bytes = Vec::new();
                let cap = portalock::MAX_RECORD_LEN as u64 + 1;
                std::io::Read::read_to_end(&mut std::io::Read::take(file, cap), &mut bytes).ok()?;
                OwnerRecord::parse(&bytes)
            })
            .map_or(LockStrategy::Auto, |record| record.strategy),
        _ => LockStrategy::Auto,
    }
}

/// Opens `path` for reading without blocking on a FIFO put there meanwhile.
fn open_nonblocking(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// The strategy of `acquire` and `release`: one whose artifact outlives
/// the command.
fn persistent(
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
fn owner_pid(pid: Option<u32>) -> Result<u32, Failure> {
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

fn acquire(args: AcquireArgs) -> Outcome {
    let strategy = persistent(&args.lock, args.strategy)?;
    let pid = owner_pid(args.pid)?;
    let lock = options(strategy, &args.wait)
        .on_behalf_of(pid)
        .open(&args.lock)
        .map_err(lock_error)?;
    let taken = wait_visibly(
        &args.wait,
        |waited| waiting_line(&lock, waited),
        || acquire_within(&lock, args.wait.timeout),
    );
    taken.map_err(|e| Failure::from_lock(&e, args.wait.conflict_exit_code))?;
    lock.detach().map_err(lock_error)?;
    Ok(0)
}

fn release(args: ReleaseArgs) -> Outcome {
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
