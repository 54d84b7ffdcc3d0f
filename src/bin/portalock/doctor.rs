//! `portalock doctor [DIR]`: what file system DIR is on, what works there,
//! what a lock cycle of each strategy costs there, and which strategy to
//! use.
//!
//! What it measures and what it only reads:
//!
//! - **Measured** in DIR: an exclusive create (`O_EXCL`), a hard link, a
//!   `mkdir`, an OS lock between two open files of one file
//!   ([`probes`]), and the cost of uncontended acquire + release cycles
//!   of each strategy ([`cycles`]).
//! - **Read**, not measured: the file system's type and [`Auto`]'s pick
//!   ([`FileSystem::detect`]), and whether OS locks reach the file
//!   system's other clients ([`FileSystem::os_locks_shared`], from the
//!   type and the mount options): one machine cannot see another
//!   client's locks.
//!
//! Everything it tries happens in a scratch directory it makes in DIR
//! (`.portalock-doctor.<pid>.<random>`) and removes afterwards, whatever
//! the probes found ([`Scratch`]). Each step runs on a thread of its own
//! and is waited for at most [`STEP_LIMIT`] ([`bounded`]): a file system
//! that stops answering (an NFS server gone away) is reported as such
//! instead of hanging the command.
//!
//! [`Auto`]: LockStrategy::Auto

mod cycles;
mod probes;
mod report;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use portalock::{FileSystem, Locality, LockStrategy};

use crate::{Failure, Outcome, EXIT_LOCK_ERROR};
use cycles::{Cycle, Cycles};
use probes::{Probes, Verdict};

/// How long one step (a probe, one strategy's cycles, making or removing
/// the scratch directory) may take before it counts as hung.
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Examples and exit codes of `doctor`, for its help.
pub(crate) const HELP: &str = "\
Examples:
  portalock doctor                  # the current directory's file system
  portalock doctor /mnt/share --json

Exit codes:
  0   the probes ran (a feature that fails there is an answer, not an
      error)
  2   usage error
  74  DIR is missing, is not a directory or cannot be written in; or the
      scratch directory could not be removed (its path is printed)";

/// `portalock doctor`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Print one JSON object instead of the report (its fields are in the
    /// README).
    #[arg(long)]
    json: bool,
    /// Time at most N acquire + release cycles of each strategy (each also
    /// stops after 300 ms); 0 times none.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    cycles: u32,
    /// The directory to examine [default: the current directory].
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What `doctor` found, ready to print.
#[derive(Debug)]
pub(crate) struct Findings {
    /// DIR, absolute.
    dir: PathBuf,
    /// The file system that holds DIR.
    fs: FileSystem,
    /// Whether each feature works there.
    probes: Probes,
    /// What a cycle of each strategy costs there.
    cycles: Cycles,
    /// Which strategy to use there.
    advice: Advice,
    /// Whether the scratch directory is gone.
    scratch_removed: bool,
}

/// Which strategy to use, and what to know.
#[derive(Debug)]
pub(crate) struct Advice {
    /// What to ask for (`Auto` when its pick works here); `None` when no
    /// strategy works here.
    strategy: Option<LockStrategy>,
    /// What that resolves to here.
    resolves_to: Option<LockStrategy>,
    /// Warnings and hints, one sentence each.
    notes: Vec<String>,
}

pub(crate) fn doctor(args: DoctorArgs) -> Outcome {
    let dir = directory(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let fs = FileSystem::detect(&dir).map_err(|e| {
        fail(format!(
            "cannot tell which file system holds `{}`: {e}",
            dir.display()
        ))
    })?;
    let scratch = Scratch::make(&dir)?;
    let probes = probes::run(scratch.path());
    let cycles = if probes.hung() {
        Cycles::skipped("the file system stopped answering a probe")
    } else {
        cycles::run(scratch.path(), &probes, args.cycles)
    };
    let scratch_path = scratch.path().to_owned();
    let removed = scratch.remove();
    let advice = advise(&fs, &probes, &cycles);
    let findings = Findings {
        dir,
        fs,
        probes,
        cycles,
        advice,
        scratch_removed: removed.is_ok(),
    };
    if args.json {
        println!("{}", report::json(&findings));
    } else {
        print!("{}", report::text(&findings));
    }
    match removed {
        Ok(()) => Ok(0),
        Err(e) => Err(fail(format!(
            "could not remove the scratch directory `{}`: {e}; remove it by hand",
            scratch_path.display()
        ))),
    }
}

fn fail(message: String) -> Failure {
    Failure::new(message, EXIT_LOCK_ERROR)
}

/// `dir`, absolute, if it is an existing directory.
fn directory(dir: &Path) -> Result<PathBuf, Failure> {
    let dir = std::path::absolute(dir)
        .map_err(|e| fail(format!("cannot make `{}` absolute: {e}", dir.display())))?;
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        Ok(_) => Err(fail(format!("`{}` is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(fail(format!("`{}` does not exist", dir.display())))
        }
        Err(e) => Err(fail(format!("cannot look at `{}`: {e}", dir.display()))),
    }
}

/// The scratch directory in DIR where the probes run; removed by
/// [`Scratch::remove`], or when dropped (a panic on the way).
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    /// Whether removal was tried already (and must not be again: it may
    /// still be hanging on a thread).
    removed: bool,
}

impl Scratch {
    /// Makes a fresh, uniquely named directory in `dir`.
    fn make(dir: &Path) -> Result<Scratch, Failure> {
        let mut last = None;
        for _ in 0..8 {
            let name = format!(
                ".portalock-doctor.{}.{:08x}",
                std::process::id(),
                fastrand::u32(..)
            );
            let path = dir.join(name);
            let made = {
                let path = path.clone();
                bounded(STEP_LIMIT, move || std::fs::create_dir(path))
            };
            match made {
                Ok(Ok(())) => {
                    return Ok(Scratch {
                        path,
                        removed: false,
                    })
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Ok(Err(e)) => {
                    return Err(fail(format!(
                        "cannot make a scratch directory in `{}`: {e}",
                        dir.display()
                    )))
                }
                Err(hung) => {
                    return Err(fail(format!(
                        "cannot make a scratch directory in `{}`: {hung}",
                        dir.display()
                    )))
                }
            }
        }
        let last = last.map_or_else(String::new, |e| format!(": {e}"));
        Err(fail(format!(
            "cannot make a fresh scratch directory in `{}`{last}",
            dir.display()
        )))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it, bounded.
    fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        let path = self.path.clone();
        bounded(STEP_LIMIT, move || std::fs::remove_dir_all(path))
            .unwrap_or_else(|hung| Err(io::Error::new(io::ErrorKind::TimedOut, hung)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.removed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `f` on a thread of its own and waits at most `limit` for its
/// answer. `Err` says why there is none: it did not answer in time (it is
/// left running: a file-system call cannot be interrupted, and the
/// process exits soon), it panicked, or no thread could be started.
pub(crate) fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("portalock-doctor".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.recv_timeout(limit).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => format!(
            "the file system did not answer within {}",
            humantime::format_duration(limit)
        ),
        mpsc::RecvTimeoutError::Disconnected => "the probe panicked".to_owned(),
    })
}

/// Why `Auto` picks what it picks on `fs`.
fn auto_reason(fs: &FileSystem) -> String {
    match (fs.locality(), fs.auto_strategy()) {
        (Locality::Local, LockStrategy::Os) => "a local file system, where an OS lock costs \
                                                least and the kernel releases it when its \
                                                holder dies"
            .to_owned(),
        (Locality::Local, _) => "this platform has no OS locks".to_owned(),
        (Locality::Network, LockStrategy::Link) => format!(
            "a network file system ({}) that makes hard links, where link() is atomic on \
             the server and needs no lock manager",
            fs.name()
        ),
        (Locality::Network, _) => format!(
            "a network file system ({}), where mkdir is atomic on the server and needs no \
             lock manager",
            fs.name()
        ),
        (Locality::Fuse, _) => "a FUSE mount, where OS locks stay on this client and mkdir \
                                lets portalock remove the .fuse_hidden files that an unlink \
                                of an open file leaves"
            .to_owned(),
        (_, _) => format!("what portalock picks on {}", fs.name()),
    }
}

/// Whether OS locks taken here exclude processes on the file system's
/// other clients: `yes`, `no` or `n/a` (a local file system), and why.
/// Read from the file system's type and mount options, not measured.
fn reach(fs: &FileSystem) -> (&'static str, String) {
    match (fs.locality(), fs.os_locks_shared()) {
        (Locality::Local, _) => ("n/a", "a local file system has no other clients".to_owned()),
        (Locality::Fuse, _) => ("no", "a FUSE mount keeps them on this client".to_owned()),
        (_, true) => (
            "yes",
            format!("the {} client sends them to the server", fs.name()),
        ),
        (_, false) => (
            "no",
            format!("this {} mount keeps them on this client", fs.name()),
        ),
    }
}

/// Whether `strategy` works here, as far as the probes and the cycles
/// tell.
fn works(strategy: LockStrategy, probes: &Probes, cycles: &Cycles) -> bool {
    cycles::not_working(strategy, probes).is_none()
        && !matches!(
            cycles.of(strategy),
            Some(Cycle::Failed(_) | Cycle::Unsupported(_))
        )
}

/// Which strategy to use on `fs`, from what the probes found.
fn advise(fs: &FileSystem, probes: &Probes, cycles: &Cycles) -> Advice {
    let auto = fs.auto_strategy();
    let mut notes = Vec::new();
    if probes.hung() {
        notes.push(
            "the file system stopped answering during a probe: locks there would hang too"
                .to_owned(),
        );
    }
    let (strategy, resolves_to) = if works(auto, probes, cycles) {
        (Some(LockStrategy::Auto), Some(auto))
    } else {
        // The cheapest that works, of those that need no OS lock manager.
        let mut others: Vec<LockStrategy> = [LockStrategy::Link, LockStrategy::Mkdir]
            .into_iter()
            .filter(|s| *s != auto && works(*s, probes, cycles))
            .collect();
        others.sort_by_key(|s| cycles.median(*s).unwrap_or(Duration::MAX));
        let pick = others.first().copied();
        match pick {
            Some(pick) => notes.push(format!(
                "auto picks {auto} here, which fails: give every process that shares a lock \
                 here --strategy {pick}"
            )),
            None if !probes.hung() => notes.push(format!(
                "auto picks {auto} here, which fails, and so does every other strategy"
            )),
            None => {}
        }
        (pick, pick)
    };
    if !fs.is_local() && !fs.os_locks_shared() {
        let mount = if fs.locality() == Locality::Fuse {
            ", through this one mount"
        } else {
            ""
        };
        notes.push(format!(
            "OS locks here do not reach other clients: --strategy os is refused \
             (LockOptions::trust_os_locks overrides that, for locks that only this \
             machine's processes take{mount})"
        ));
    }
    if matches!(probes.o_excl.verdict, Verdict::Fails | Verdict::Unsupported) {
        notes.push(format!(
            "exclusive creates fail here, and the link and mkdir strategies need them: {}",
            probes.o_excl.detail
        ));
    }
    for (strategy, probe) in [
        (LockStrategy::Link, &probes.hard_link),
        (LockStrategy::Mkdir, &probes.mkdir),
        (LockStrategy::Os, &probes.os_lock),
    ] {
        if matches!(probe.verdict, Verdict::Fails | Verdict::Unsupported) {
            notes.push(format!(
                "the {strategy} strategy cannot be used here: {}",
                probe.detail
            ));
        }
    }
    for (strategy, cycle) in cycles.iter() {
        match cycle {
            Cycle::Unsupported(why) => notes.push(format!(
                "portalock refuses the {strategy} strategy here: {why}"
            )),
            Cycle::Failed(why) => notes.push(format!("a {strategy} lock cycle failed here: {why}")),
            _ => {}
        }
    }
    if fs.is_local() && auto == LockStrategy::Os {
        notes.push(
            "if other machines reach this directory (an NFS or SMB export), processes here \
             see a local disk and auto picks os for them: give every process the same \
             explicit --strategy (link or mkdir)"
                .to_owned(),
        );
    }
    Advice {
        strategy,
        resolves_to,
        notes,
    }
}
