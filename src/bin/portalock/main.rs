//! `portalock`: cross-process file locks from the shell, for scripts, cron
//! jobs and CI pipelines.
//!
//! Built with the `cli` feature. See `portalock --help` and the README for
//! the subcommands and exit codes.

#![deny(unsafe_code)]

mod descriptor;
mod doctor;
mod faults;
mod flock_form;
mod generated;
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

use clap::{Args, CommandFactory, Parser, Subcommand};
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
/// Exit status of the flock(1) form when the lock stays busy (flock(1)'s).
const EXIT_FLOCK_CONFLICT: u8 = 1;
/// Exit status of the flock(1) form on a usage error: EX_USAGE, as
/// flock(1).
const EXIT_USAGE: u8 = 64;
/// Exit status of fd mode for a descriptor that is not open: EX_DATAERR,
/// as flock(1).
#[cfg(unix)]
const EXIT_BAD_DESCRIPTOR: u8 = 65;

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
  portalock run -s /var/lock/db.lock ./read-only-report   # shared
  portalock run --slots 4 /tmp/build.lock make -j2        # at most 4 at once

",
    exit_codes!()
);

/// The top-level help's usage lines: the subcommands, then the flock(1)
/// form.
const USAGE: &str = "\
portalock <COMMAND> [ARGS]...
       portalock [RUN OPTIONS] [-u] LOCK COMMAND [ARGS]...   (flock(1) form)
       portalock [RUN OPTIONS] [-u] FD                       (flock(1) form, fd mode)";

/// The top-level help after the options: the flock(1) form, then the exit
/// codes.
const TOP_HELP: &str = concat!(
    "\
The flock(1) form: with no subcommand, portalock takes flock(1)'s
arguments and answers with its exit codes. The first argument decides:
  - a subcommand's name is that subcommand (a lock file called `run` is
    written `./run`);
  - otherwise it is the flock(1) form: `portalock [OPTIONS] LOCK COMMAND...`
    is `portalock run [OPTIONS] LOCK COMMAND...` (the options are run's),
    except that a busy lock exits 1 (not 75) unless -E says otherwise, and
    a usage error exits 64 (not 2);
  - a number and no command is fd mode: `portalock [-s|-x] [-n|-w T] [-E N] FD`
    locks the open descriptor FD (an os lock; the lock lasts as long as
    the descriptor stays open, in the shell that opened it), and
    `portalock -u FD` unlocks it; a descriptor that is not open exits 65.
    A bounded wait (-w) in fd mode tries again at growing intervals
    (1 ms up to 50 ms) instead of queueing in the kernel.

Examples:
  portalock -n /var/lock/job.lock ./job.sh        # as `flock -n`
  (
    portalock -w 10 9 || exit 1                   # as `flock -w 10 9`
    ./critical-section
  ) 9>/var/lock/job.lock

",
    exit_codes!(),
    "
  1, 64    flock(1) form: the lock stays busy (unless -E) / a usage error
  65       flock(1) form, fd mode: FD is not an open descriptor"
);

/// Cross-process locks that live in the file system.
///
/// A lock is named by its path. Every subcommand takes --strategy (auto,
/// os, mkdir, link): use the same one everywhere a lock is shared. Without
/// a subcommand, portalock is a drop-in for flock(1) (below).
#[derive(Debug, Parser)]
#[command(name = "portalock", version, override_usage = USAGE, after_help = TOP_HELP)]
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
    /// Print the completion script of a shell for portalock.
    ///
    /// Install it where the shell looks, for example:
    ///   bash: portalock completions bash > ~/.local/share/bash-completion/completions/portalock
    ///   zsh:  portalock completions zsh > ~/.zfunc/_portalock   (with ~/.zfunc in $fpath)
    ///   fish: portalock completions fish > ~/.config/fish/completions/portalock.fish
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Print portalock's man page (roff), or write one page per subcommand
    /// into a directory.
    ///
    /// Install them, for example:
    ///   portalock man --dir ~/.local/share/man/man1
    ///   man portalock-run
    #[command(verbatim_doc_comment)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// Write portalock.1 and portalock-SUBCOMMAND.1 into DIR instead of
    /// printing portalock.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct Wait {
    /// How long to wait for the lock: seconds (`2.5`) or a duration
    /// (`500ms`, `1m 30s`); 0 tries once; absent waits forever (flock(1)'s
    /// -w/--wait).
    #[arg(long, short = 'w', visible_alias = "wait", value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
    /// Try once: fail at once if the lock is busy (--timeout 0, whatever
    /// --timeout says; flock(1)'s -n).
    #[arg(long, short = 'n')]
    nonblock: bool,
    /// Never break a stale lock (one whose owner has exited, or whose lease
    /// ran out).
    #[arg(long)]
    no_break: bool,
    /// Exit status when the lock stays busy (flock(1)'s -E) [default: 75;
    /// 1 in the flock(1) form].
    #[arg(long, short = 'E', value_name = "N")]
    conflict_exit_code: Option<u8>,
    /// Say nothing while waiting.
    #[arg(long, short)]
    quiet: bool,
    /// Say on stderr how long the lock took to take, or why it could not be
    /// taken (flock(1)'s --verbose).
    #[arg(long, conflicts_with = "quiet")]
    verbose: bool,
}

impl Wait {
    /// The exit status when the lock stays busy.
    fn conflict(&self) -> u8 {
        self.conflict_exit_code.unwrap_or(EXIT_CONFLICT)
    }

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
    /// Give the acquisition a fencing token and pass it to COMMAND in the
    /// environment as PORTALOCK_FENCE: larger than every earlier holder's
    /// (see the README, "Fencing tokens"). Every command that shares the
    /// lock should use it.
    #[arg(long)]
    fence: bool,
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
    /// Take the lock in the etcd cluster at URL[,URL...]
    /// (http://host:2379, one or more members) instead of the file system:
    /// LOCK is then the lock's name (feature `etcd`). Waiters are served in
    /// the order they came; the lock is a lease of --lease seconds (default
    /// 10, whole seconds), kept alive while COMMAND runs. With --fence, the
    /// lock's fencing token (etcd's revision) is passed to COMMAND as
    /// PORTALOCK_FENCE. A user and password come from PORTALOCK_ETCD_USER
    /// and PORTALOCK_ETCD_PASSWORD.
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "URL[,URL...]", conflicts_with_all = ["slots", "shared"])]
    etcd: Option<String>,
    /// Do not hand the lock to COMMAND: by default the lock lasts as long
    /// as COMMAND runs, even if portalock is killed (COMMAND inherits an os
    /// lock's open file, as with flock(1); a mkdir or link lock's record
    /// names COMMAND); with --close it lasts only as long as portalock.
    #[arg(long, short = 'o')]
    close: bool,
    /// Take the lock exclusively (the default; flock(1)'s -x). The last of
    /// -x and -s counts.
    #[arg(long, short = 'x', overrides_with = "shared")]
    exclusive: bool,
    /// Take the lock shared: many shared holders at once, none while an
    /// exclusive one holds it (flock(1)'s -s; every strategy: a mkdir or
    /// link lock's readers register beside it, each with its own record).
    /// An exclusive holder waits for the readers that were in when it came,
    /// and later readers wait behind it.
    #[arg(long, short = 's', overrides_with = "exclusive")]
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
        id = COMMAND,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

/// The id of `RunArgs::command`, which the flock(1) form makes optional.
const COMMAND: &str = "command";

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
    /// Ask the etcd cluster at URL[,URL...] about the lock named LOCK
    /// (feature `etcd`): held (with its owner record) or free.
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "URL[,URL...]", conflicts_with = "strategy")]
    etcd: Option<String>,
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

/// The library's log lines (who broke whose lock, a lock lost) on stderr,
/// warnings and errors only.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("portalock: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Sends the library's warnings and errors (a stale lock broken while
/// waiting, a lock lost) to stderr.
fn log_to_stderr() {
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

fn main() -> ExitCode {
    faults::setup();
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = match args.get(1) {
        // (no argument at all: flock(1)'s usage error)
        None => flock_form::main(args),
        Some(first) if !names_a_subcommand(first) => {
            log_to_stderr();
            flock_form::main(args)
        }
        _ => match Cli::parse_from(args).command {
            Cmd::Run(args) => {
                log_to_stderr();
                run(args)
            }
            Cmd::Status(args) => status(args),
            // (break says itself what it removed)
            Cmd::Break(args) => break_lock(args),
            Cmd::Acquire(args) => {
                log_to_stderr();
                acquire(args)
            }
            Cmd::Release(args) => release(args),
            Cmd::Doctor(args) => doctor::doctor(args),
            Cmd::Completions(args) => generated::completions(args),
            Cmd::Man(args) => generated::man(args),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("portalock: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Whether the first argument makes the subcommand form: a subcommand's
/// name, `help`, or a request for the help or the version. Anything else
/// is the flock(1) form (`portalock [OPTIONS] LOCK COMMAND...` or
/// `portalock [OPTIONS] FD`).
fn names_a_subcommand(first: &std::ffi::OsStr) -> bool {
    let Some(first) = first.to_str() else {
        return false;
    };
    ["help", "-h", "--help", "-V", "--version"].contains(&first)
        || Cli::command()
            .get_subcommands()
            .any(|sub| sub.get_name() == first || sub.get_all_aliases().any(|a| a == first))
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
    within(
        timeout,
        || lock.try_acquire(),
        |t| lock.acquire_timeout(t),
        || lock.acquire(),
    )
}

/// Calls the acquire of a wait of `timeout`: `once` for 0 (try once),
/// `bounded` for a duration, `forever` for `None`.
fn within<T>(
    timeout: Option<Duration>,
    once: impl FnOnce() -> T,
    bounded: impl FnOnce(Duration) -> T,
    forever: impl FnOnce() -> T,
) -> T {
    match timeout {
        None => forever(),
        Some(t) if t.is_zero() => once(),
        Some(t) => bounded(t),
    }
}
