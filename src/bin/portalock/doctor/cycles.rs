//! What an uncontended acquire + release cycle of each strategy costs in a
//! directory: a [`LockFile`] of that strategy in the scratch directory,
//! one cycle to warm up, then up to N timed cycles or [`BUDGET`],
//! whichever ends first.
//!
//! A strategy whose primitive a probe found failing is not timed (the
//! report says why). An `Os` lock that portalock refuses here (OS locks
//! do not reach other clients) is timed with
//! [`LockOptions::trust_os_locks`], and labelled so.

use std::path::Path;
use std::time::{Duration, Instant};

use portalock::{Error, LockFile, LockOptions, LockStrategy};

use super::probes::{Probe, Probes, Verdict};
use super::{bounded, STEP_LIMIT};

/// How long each strategy's cycles may take, at most.
pub(crate) const BUDGET: Duration = Duration::from_millis(300);

/// The strategies that are timed, in the report's order.
pub(crate) const STRATEGIES: [LockStrategy; 3] =
    [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link];

/// One strategy's cost, or why there is none.
#[derive(Debug, Clone)]
pub(crate) enum Cycle {
    /// Timed.
    Measured {
        /// How many cycles were timed.
        cycles: usize,
        /// The median cycle.
        median: Duration,
        /// The mean cycle.
        mean: Duration,
        /// Whether the lock needed [`LockOptions::trust_os_locks`]: the
        /// strategy is refused here without it.
        trusted: bool,
    },
    /// Not timed, and why.
    Skipped(String),
    /// Portalock refuses the strategy here, and why.
    Unsupported(String),
    /// A cycle failed: the error.
    Failed(String),
}

/// Every timed strategy's [`Cycle`].
#[derive(Debug, Clone)]
pub(crate) struct Cycles(Vec<(LockStrategy, Cycle)>);

impl Cycles {
    /// None timed, for `why`.
    pub(crate) fn skipped(why: &str) -> Cycles {
        Cycles(
            STRATEGIES
                .iter()
                .map(|s| (*s, Cycle::Skipped(why.to_owned())))
                .collect(),
        )
    }

    /// `strategy`'s cycle.
    pub(crate) fn of(&self, strategy: LockStrategy) -> Option<&Cycle> {
        self.0.iter().find(|(s, _)| *s == strategy).map(|(_, c)| c)
    }

    /// `strategy`'s median cycle, if it was timed.
    pub(crate) fn median(&self, strategy: LockStrategy) -> Option<Duration> {
        match self.of(strategy)? {
            Cycle::Measured { median, .. } => Some(*median),
            _ => None,
        }
    }

    /// Each strategy and its cycle, in [`STRATEGIES`]'s order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(LockStrategy, Cycle)> {
        self.0.iter()
    }
}

/// Times each strategy in `dir` (the scratch directory), at most `max`
/// cycles each.
pub(crate) fn run(dir: &Path, probes: &Probes, max: u32) -> Cycles {
    if max == 0 {
        return Cycles::skipped("--cycles 0");
    }
    let mut all = Vec::new();
    let mut hung = false;
    for strategy in STRATEGIES {
        let cycle = if hung {
            Cycle::Skipped("the file system stopped answering".to_owned())
        } else if let Some(why) = not_working(strategy, probes) {
            Cycle::Skipped(why)
        } else {
            let path = dir.join(format!("cycle-{strategy}.lock"));
            bounded(BUDGET + STEP_LIMIT, move || time(&path, strategy, max)).unwrap_or_else(|why| {
                hung = true;
                Cycle::Failed(why)
            })
        };
        all.push((strategy, cycle));
    }
    Cycles(all)
}

/// Why `strategy` cannot work here, from the probes (`None`: nothing
/// says it cannot).
pub(crate) fn not_working(strategy: LockStrategy, probes: &Probes) -> Option<String> {
    let needs: &[(&str, &Probe)] = match strategy {
        LockStrategy::Os => &[("OS locks", &probes.os_lock)],
        LockStrategy::Mkdir => &[("mkdir", &probes.mkdir), ("O_EXCL", &probes.o_excl)],
        _ => &[
            ("hard links", &probes.hard_link),
            ("O_EXCL", &probes.o_excl),
        ],
    };
    needs
        .iter()
        .find(|(_, p)| p.verdict != Verdict::Works)
        .map(|(what, p)| format!("{what}: {}", p.verdict.as_str()))
}

/// Times up to `max` cycles of a `strategy` lock at `path`, within
/// [`BUDGET`].
fn time(path: &Path, strategy: LockStrategy, max: u32) -> Cycle {
    let open = |trust: bool| {
        LockOptions::new()
            .strategy(strategy)
            .trust_os_locks(trust)
            .open(path)
    };
    let (lock, trusted) = match open(false) {
        Ok(lock) => (lock, false),
        Err(Error::OsLocksNotShared { .. }) => match open(true) {
            Ok(lock) => (lock, true),
            Err(e) => return Cycle::Failed(e.to_string()),
        },
        Err(Error::Unsupported { reason, .. }) => return Cycle::Unsupported(reason),
        Err(e) => return Cycle::Failed(e.to_string()),
    };
    if let Err(e) = cycle(&lock) {
        return failed(e);
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < max as usize && start.elapsed() < BUDGET {
        let at = Instant::now();
        if let Err(e) = cycle(&lock) {
            return failed(e);
        }
        samples.push(at.elapsed());
    }
    samples.sort_unstable();
    let Some(median) = samples.get(samples.len() / 2).copied() else {
        return Cycle::Failed("no cycle was timed".to_owned());
    };
    let total: Duration = samples.iter().sum();
    Cycle::Measured {
        cycles: samples.len(),
        median,
        mean: total / samples.len().max(1) as u32,
        trusted,
    }
}

fn failed(e: Error) -> Cycle {
    match e {
        Error::Unsupported { reason, .. } => Cycle::Unsupported(reason),
        e => Cycle::Failed(e.to_string()),
    }
}

/// One try-acquire (nobody else holds this lock) and release.
fn cycle(lock: &LockFile) -> portalock::Result<()> {
    lock.try_acquire()?;
    lock.release()
}
