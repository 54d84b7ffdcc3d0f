//! `portalock`: cross-process file locks from the shell, for scripts, cron
//! jobs and CI pipelines.
//!
//! Built with the `cli` feature. See `portalock --help` and the README for
//! the subcommands and exit codes.

mod doctor;
mod faults;
mod inspect;
mod persistent;
mod run;
mod signals;
mod waiting;

use inspect::{break_lock, status};
use persistent::{acquire, release};
use run::run;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use portalock::{Error, LockFile, LockOptions, LockStrategy};

/// Exit status: the lock is held (`status`), a live lock was not broken
/// (`break`), or the lock is not held for that process (`release`).
const EXIT_NO: u8 = 1;
/// Exit status of `status` for a stale lock.
const EXIT_STALE: u8 = 3;
/// Exit status of `status` and `break` for a file at the lock path that
/// holds data portalock did not write.
const EXIT_FOREIGN: u8 = 4;
/// Exit status for an error of the lock itself (I/O, a bad lock path, a
/// foreign file at the lock path, a lost lock): EX_IOERR.
const EXIT_LOCK_ERROR: u8 = 74;
/// Default exit status when the lock is busy: EX_TEMPFAIL.
const EXIT_CONFLICT: u8 = 75;
/// Exit status when the command cannot be run.
const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command is not found.
const EXIT_NOT_FOUND: u8 = 127;

/// The exit codes, for every subcommand's help.
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0        success (run: the command's own status)
  1        status: the lock is held; break: the lock is live (not broken);
           release: the lock is free or held for another process
  2        usage error
  3        status: the lock is stale (its owner on this host has exited)
  4        status, break: the lock path holds a file portalock did not
           write (not a lock: left alone)
  74       a lock error: I/O, a bad lock path, a foreign file at the lock
           path, a lock lost while the command ran
  75       the lock is busy: --timeout ran out (or 0 and held); change it
           with --conflict-exit-code
  126/127  run: the command cannot be run / was not found
  128+N    run: the command was killed by signal N"
    };
}

const EXIT_CODES: &str = exit_codes!();

/// `run --help`: examples, then the exit codes.
const RUN_HELP: &str = concat!(
    "\
Examples:
  portalock run /var/lock/backup.lock rsync -a /src /dst
  portalock run -n /var/lock/backup.lock ./backup.sh       # busy: give up at once (75)
  portalock run -w 30s -E 1 /var/lock/backup.lock ./backup.sh
  portalock run /var/lock/backup.lock -c 'make && make install'
  portalock run -s /var/lock/db.lock ./read-only-report   # shared (os)
  portalock run --slots 4 /tmp/build.lock make -j2        # at most 4 at once

",
    exit_codes!()
);

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
    #[command(after_help = RUN_HELP)]
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
    /// Say what file system DIR is on, what `auto` picks there and why,
    /// whether hard links, mkdir, OS locks and O_EXCL work there, what a
    /// lock cycle of each strategy costs there, and what to use.
    ///
    /// The probes run in a scratch directory made in DIR and removed
    /// afterwards.
    #[command(after_help = doctor::HELP)]
    Doctor(doctor::DoctorArgs),
}

#[derive(Debug, Args)]
struct Wait {
    /// How long to wait for the lock: seconds (`2.5`) or a duration
    /// (`500ms`, `1m 30s`); 0 tries once; absent waits forever (flock(1)'s
    /// -w/--wait).
    #[arg(long, short = 'w', visible_alias = "wait", value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// Try once: fail at once if the lock is busy (--timeout 0; flock(1)'s
    /// -n).
    #[arg(long, short = 'n', conflicts_with = "timeout")]
    nonblock: bool,
    /// Never break a stale lock (one whose owner has exited, or whose lease
    /// ran out).
    #[arg(long)]
    no_break: bool,
    /// Exit status when the lock stays busy (flock(1)'s -E).
    #[arg(long, short = 'E', value_name = "N", default_value_t = EXIT_CONFLICT)]
    conflict_exit_code: u8,
    /// Say nothing while waiting.
    #[arg(long, short)]
    quiet: bool,
    /// Say on stderr how long the lock took to take, or why it could not be
    /// taken (flock(1)'s --verbose).
    #[arg(long, conflicts_with = "quiet")]
    verbose: bool,
}

impl Wait {
    /// How long to wait: 0 tries once; `None` waits forever.
    fn timeout(&self) -> Option<Duration> {
        if self.nonblock {
            Some(Duration::ZERO)
        } else {
            self.timeout
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// How the lock is taken: auto, os, mkdir or link [default: what the
    /// lock at LOCK is, if something is there (a lock `portalock acquire`
    /// took is a mkdir or link lock), else auto].
    #[arg(long)]
    strategy: Option<LockStrategy>,
    #[command(flatten)]
    wait: Wait,
    /// Hold the lock with a lease (seconds, or a duration such as `30s`;
    /// 0.003 s to 30 days), refreshed while COMMAND runs: if portalock
    /// stops (is paused, or its host is cut off), others may break the lock
    /// once the lease runs out.
    #[arg(long, value_name = "DURATION", value_parser = lease)]
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
    /// Take the lock exclusively (the default; flock(1)'s -x).
    #[arg(long, short = 'x', conflicts_with = "shared")]
    exclusive: bool,
    /// Take the lock shared: many shared holders at once, none while an
    /// exclusive one holds it (flock(1)'s -s; the os strategy). The lock
    /// lasts as long as portalock (as with --close).
    #[arg(long, short = 's')]
    shared: bool,
    /// Run STRING with `sh -c` instead of COMMAND (flock(1)'s -c).
    #[arg(
        long = "command",
        short = 'c',
        value_name = "STRING",
        conflicts_with = "command"
    )]
    shell: Option<OsString>,
    /// The lock's path.
    lock: PathBuf,
    /// The command and its arguments (a `--` before them is allowed, and
    /// needed only if COMMAND starts with `-`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

impl RunArgs {
    /// The command to run: COMMAND, or `sh -c STRING`.
    fn command(&self) -> Vec<OsString> {
        match &self.shell {
            Some(string) => vec!["sh".into(), "-c".into(), string.clone()],
            None => self.command.clone(),
        }
    }
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
    /// Give the lock a lease (seconds, or a duration such as `10m`): nobody
    /// refreshes it once acquire has exited, so others may break the lock
    /// that long after it was taken, even while its process runs.
    #[arg(long, value_name = "DURATION", value_parser = lease)]
    lease: Option<Duration>,
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

/// Parses a duration: a non-negative number of seconds (`2.5`) or a
/// duration with units (`500ms`, `1m 30s`).
fn duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{s}` is not a non-negative, finite number of seconds")),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| {
            format!("`{s}` is not a duration: {e} (give seconds, as `2.5`, or units, as `500ms`)")
        }),
    }
}

/// Parses a lease (as [`duration`]) within the bounds the library keeps.
fn lease(s: &str) -> Result<Duration, String> {
    const MIN: Duration = Duration::from_millis(3);
    const MAX: Duration = Duration::from_secs(30 * 24 * 3600);
    let lease = duration(s)?;
    if !(MIN..=MAX).contains(&lease) {
        return Err(format!(
            "a lease of {} is out of bounds: 3ms to 30 days",
            humantime::format_duration(lease)
        ));
    }
    Ok(lease)
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
        Cmd::Doctor(args) => doctor::doctor(args),
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
