//! The torture suite, run by `cargo test` (a harness-less test binary that
//! prints its figures):
//!
//! - mutual exclusion: 8 processes with 4 threads each (one handle per
//!   thread), 500 acquisitions per thread, per strategy; inside the
//!   critical section an occupancy marker (created with `O_EXCL`) finds any
//!   overlap, and a read-modify-write counter must end exact;
//! - chaos: 3 processes cycle on one lock while this harness kills one at a
//!   random moment (`SIGKILL`, `TerminateProcess` on Windows), 70 rounds
//!   per strategy; each kill's moment is known from the phases the victim
//!   reported (waiting/taking, holding, releasing, between), the lock must
//!   be taken again after every kill, and a log of critical sections must
//!   never show two holders at once.
//!
//! `PORTALOCK_TORTURE_SCALE` (a factor, default 1) scales the work; under
//! Windows (Wine in CI) the default is a tenth. `PORTALOCK_TORTURE_DIR`
//! puts the locks in that directory (CI: on each network file system)
//! instead of a temporary one. `PORTALOCK_TORTURE_CHAOS_SKIP` (a comma
//! list of strategies) leaves their chaos rounds out, saying so;
//! `PORTALOCK_TORTURE_EXCLUSION_SKIP` their exclusion rounds. A
//! strategy that the file system refuses (`Link` on an SMB share) is left
//! out, saying so.
//!
//! Every wait of the harness is bounded; a failure exits non-zero with the
//! reason.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use portalock::{LockOptions, LockStrategy};

const ROLE: &str = "PORTALOCK_TORTURE_ROLE";
/// The longest the harness waits for any one thing.
const BOUND: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(child(&role, &args));
    }
    // `cargo test` passes harness flags (`--quiet`, filters); a filter that
    // names another test skips this one.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "torture".contains(f.as_str())) {
        return;
    }
    let scale: f64 = std::env::var("PORTALOCK_TORTURE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(windows) { 0.1 } else { 1.0 });
    if let Err(e) = check_log_self_test() {
        eprintln!("torture: FAILED: the log check: {e}");
        std::process::exit(1);
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = Totals::default();
    // Strategies the file system refuses when a handle is opened (`Link`
    // on an SMB share), as the README's table says: left out, saying so.
    let mut strategies = Vec::new();
    for strategy in LockStrategy::ALL {
        match refusal(strategy) {
            Ok(None) => strategies.push(strategy),
            Ok(Some(why)) => println!("torture: {strategy} left out: refused here ({why})"),
            Err(e) => failures.push(format!("{strategy}: {e}")),
        }
    }
    // Strategies whose exclusion rounds a run leaves out (to repeat the
    // chaos rounds alone, when chasing a rare failure).
    let skip_exclusion = std::env::var("PORTALOCK_TORTURE_EXCLUSION_SKIP").unwrap_or_default();
    for &strategy in &strategies {
        if skip_exclusion
            .split(',')
            .any(|s| s.trim() == strategy.as_str())
        {
            println!(
                "torture: mutual exclusion {strategy} left out (PORTALOCK_TORTURE_EXCLUSION_SKIP)"
            );
            continue;
        }
        match mutual_exclusion(strategy, scale) {
            Ok(figures) => {
                totals.acquisitions += figures.acquisitions;
                totals.overlaps += figures.overlaps;
                println!("torture: {figures}");
            }
            Err(e) => failures.push(format!("mutual exclusion, {strategy}: {e}")),
        }
    }
    // Strategies whose chaos rounds a lane leaves out, each for a reason
    // the README gives (CI: the Os lock on NFSv3, an open problem there).
    let skip = std::env::var("PORTALOCK_TORTURE_CHAOS_SKIP").unwrap_or_default();
    for &strategy in &strategies {
        if skip.split(',').any(|s| s.trim() == strategy.as_str()) {
            println!("torture: chaos {strategy} left out (PORTALOCK_TORTURE_CHAOS_SKIP)");
            continue;
        }
        match chaos(strategy, scale) {
            Ok(figures) => {
                totals.acquisitions += figures.acquisitions;
                totals.kills += figures.kills;
                totals.recoveries += figures.recoveries;
                totals.overlaps += figures.held_twice;
                println!("torture: {figures}");
            }
            Err(e) => failures.push(format!("chaos, {strategy}: {e}")),
        }
    }
    println!(
        "torture: total {} acquisitions, {} kills, {} recoveries, overlaps {}, in {:.1} s",
        totals.acquisitions,
        totals.kills,
        totals.recoveries,
        totals.overlaps,
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("torture: FAILED: {f}");
        }
        std::process::exit(1);
    }
}

#[derive(Default)]
struct Totals {
    acquisitions: u64,
    kills: u64,
    recoveries: u64,
    overlaps: u64,
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

/// Why opening a handle with `strategy` is refused in the suite's
/// directory (`Unsupported`, `OsLocksNotShared`), if it is.
fn refusal(strategy: LockStrategy) -> Result<Option<String>, String> {
    let dir = scratch()?;
    match LockOptions::new()
        .strategy(strategy)
        .trust_os_locks(true)
        .open(dir.path().join("probe.lock"))
    {
        Ok(_) => Ok(None),
        Err(
            e @ (portalock::Error::Unsupported { .. } | portalock::Error::OsLocksNotShared { .. }),
        ) => Ok(Some(e.to_string())),
        Err(e) => Err(format!("open: {e}")),
    }
}

/// A fresh directory for one run: under `PORTALOCK_TORTURE_DIR` where it
/// is set (CI points it at a network file system), else a temporary one.
fn scratch() -> Result<tempfile::TempDir, String> {
    match std::env::var_os("PORTALOCK_TORTURE_DIR") {
        Some(dir) => tempfile::Builder::new()
            .prefix("torture-")
            .tempdir_in(&dir)
            .map_err(|e| format!("a directory in {}: {e}", Path::new(&dir).display())),
        None => tempfile::tempdir().map_err(|e| format!("temp dir: {e}")),
    }
}

fn spawn(role: &str, args: &[String]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    common::spawn_retrying(&mut cmd).map_err(|e| format!("spawn {role}: {e}"))
}

/// Lines of a child's standard output, each sent with the child's index;
/// `None` once it is closed.
fn forward(index: usize, child: &mut Child, tx: Sender<(usize, Option<String>)>) {
    let Some(out) = child.stdout.take() else {
        let _ = tx.send((index, None));
        return;
    };
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((index, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((index, None));
    });
}

// ------------------------------------------------------- mutual exclusion

struct Exclusion {
    strategy: LockStrategy,
    processes: usize,
    threads: usize,
    each: usize,
    acquisitions: u64,
    counter: u64,
    overlaps: u64,
    took: Duration,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mutual exclusion {:<5} {} processes x {} threads x {} = {} acquisitions, counter {}, overlaps {}, {:.1} s",
            self.strategy.as_str(),
            self.processes,
            self.threads,
            self.each,
            self.acquisitions,
            self.counter,
            self.overlaps,
            self.took.as_secs_f64()
        )
    }
}

fn mutual_exclusion(strategy: LockStrategy, scale: f64) -> Result<Exclusion, String> {
    let dir = scratch()?;
    let processes = scaled(8, scale.sqrt().min(1.0));
    let threads = 4;
    let each = scaled(500, scale);
    let lock = dir.path().join("x.lock");
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut children = Children(Vec::new());
    for i in 0..processes {
        let args = vec![
            strategy.as_str().to_owned(),
            path_arg(&lock)?,
            path_arg(dir.path())?,
            threads.to_string(),
            each.to_string(),
        ];
        let mut child = spawn("exclusion", &args)?;
        forward(i, &mut child, tx.clone());
        children.0.push(child);
    }
    drop(tx);
    let mut acquisitions = 0;
    let mut overlaps = 0;
    let mut reported = 0;
    let deadline = Instant::now() + BOUND * 4;
    while reported < processes {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, line) = rx
            .recv_timeout(left)
            .map_err(|_| format!("{reported} of {processes} processes reported in time"))?;
        match line
            .as_deref()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            Some(words) if words.first() == Some(&"DONE") => {
                acquisitions += words
                    .get(1)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0);
                overlaps += words
                    .get(2)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0);
                reported += 1;
            }
            Some(_) => {}
            None => {
                if reported < processes {
                    // A child that closed its output without reporting.
                    let status = children.0[i].wait().map_err(|e| e.to_string())?;
                    if !status.success() {
                        return Err(format!("process {i} failed: {status}"));
                    }
                }
            }
        }
    }
    for child in &mut children.0 {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a process failed: {status}"));
        }
    }
    let counter: u64 = std::fs::read_to_string(dir.path().join("counter"))
        .map_err(|e| format!("counter: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("counter: {e}"))?;
    let expected = (processes * threads * each) as u64;
    let figures = Exclusion {
        strategy,
        processes,
        threads,
        each,
        acquisitions,
        counter,
        overlaps,
        took: started.elapsed(),
    };
    if overlaps != 0 || counter != expected || acquisitions != expected {
        return Err(format!("expected {expected} and no overlap: {figures}"));
    }
    Ok(figures)
}

fn path_arg(p: &Path) -> Result<String, String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("not UTF-8: {}", p.display()))
}

// ------------------------------------------------------------------ chaos

/// What a worker last said before it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Inside `acquire`: waiting, or taking the lock.
    Acquiring,
    /// Holding the lock, in the critical section.
    Holding,
    /// Inside `release`.
    Releasing,
    /// Between a release and the next acquire.
    Between,
}

struct Chaos {
    strategy: LockStrategy,
    rounds: usize,
    kills: u64,
    by_phase: HashMap<Phase, u64>,
    recoveries: u64,
    slowest: Duration,
    acquisitions: u64,
    held_twice: u64,
    took: Duration,
}

impl std::fmt::Display for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |p| self.by_phase.get(&p).copied().unwrap_or(0);
        write!(
            f,
            "chaos {:<5} {} rounds, {} kills (inside acquire {}, holding {}, inside release {}, between {}), \
             {} recoveries (slowest {} ms), {} acquisitions, held twice {}, {:.1} s",
            self.strategy.as_str(),
            self.rounds,
            self.kills,
            n(Phase::Acquiring),
            n(Phase::Holding),
            n(Phase::Releasing),
            n(Phase::Between),
            self.recoveries,
            self.slowest.as_millis(),
            self.acquisitions,
            self.held_twice,
            self.took.as_secs_f64()
        )
    }
}

/// A kill of the chaos run: the length of the log of critical sections
/// when it was decided, and the victim's PID.
type Kill = (u64, u32);

struct Worker {
    child: Child,
    phase: Phase,
}

/// A worker left when a round fails half way is killed, not left running
/// beside the next strategy's processes (on a slow server, it would starve
/// them).
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes of one mutual-exclusion run, killed if the run ends early.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn chaos(strategy: LockStrategy, scale: f64) -> Result<Chaos, String> {
    const WORKERS: usize = 3;
    let dir = scratch()?;
    let lock = dir.path().join("x.lock");
    let log = dir.path().join("log");
    let rounds = scaled(70, scale);
    let args = vec![
        strategy.as_str().to_owned(),
        path_arg(&lock)?,
        path_arg(&log)?,
    ];
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut workers: HashMap<usize, Worker> = HashMap::new();
    let mut next = 0;
    let mut start_worker = |workers: &mut HashMap<usize, Worker>| -> Result<(), String> {
        let mut child = spawn("chaos", &args)?;
        forward(next, &mut child, tx.clone());
        workers.insert(
            next,
            Worker {
                child,
                phase: Phase::Between,
            },
        );
        next += 1;
        Ok(())
    };
    for _ in 0..WORKERS {
        start_worker(&mut workers)?;
    }
    let mut figures = Chaos {
        strategy,
        rounds,
        kills: 0,
        by_phase: HashMap::new(),
        recoveries: 0,
        slowest: Duration::ZERO,
        acquisitions: 0,
        held_twice: 0,
        took: Duration::ZERO,
    };
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ strategy.as_str().len() as u64);
    // Each kill: the length of the log when it was decided, and the victim.
    let mut kills: Vec<Kill> = Vec::new();
    // Progress before the first kill.
    await_acquisition(&rx, &mut workers, &mut figures, None)?;
    for _ in 0..rounds {
        // A random moment: mostly the worker that holds or just held the
        // lock (to land in its critical section, release or next acquire),
        // else anyone.
        let holder = workers
            .iter()
            .find(|(_, w)| matches!(w.phase, Phase::Holding | Phase::Releasing))
            .map(|(i, _)| *i);
        let ids: Vec<usize> = workers.keys().copied().collect();
        let victim = match holder {
            Some(h) if rng.bool() => h,
            _ => ids[rng.usize(..ids.len())],
        };
        std::thread::sleep(Duration::from_micros(rng.u64(0..1500)));
        let mut worker = workers
            .remove(&victim)
            .ok_or_else(|| "victim vanished".to_owned())?;
        // Where the kill falls in the log of critical sections: its length
        // now. The harness does not append to the log itself: under Wine
        // an append is a look at the end and a write there, and a line of
        // the harness could overwrite the victim's `ENTER` written at the
        // same moment (only holders, one at a time, write to the log).
        let at = match std::fs::metadata(&log) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("log: {e}")),
        };
        kills.push((at, worker.child.id()));
        let killed_at = Instant::now();
        worker.child.kill().map_err(|e| format!("kill: {e}"))?;
        worker.child.wait().map_err(|e| format!("wait: {e}"))?;
        // Its last words: every line it wrote before it died, up to the
        // end of its output.
        let mut phase = worker.phase;
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, line) = rx
                .recv_timeout(left)
                .map_err(|_| "a killed worker's output did not end".to_owned())?;
            match (i == victim, line) {
                (true, Some(line)) => phase = parse_phase(&line).unwrap_or(phase),
                (true, None) => break,
                (false, Some(line)) => note(&mut workers, &mut figures, i, &line),
                (false, None) => {}
            }
        }
        figures.kills += 1;
        *figures.by_phase.entry(phase).or_default() += 1;
        start_worker(&mut workers)?;
        // The lock must be taken again after every kill.
        let recovered = await_acquisition(&rx, &mut workers, &mut figures, Some(killed_at))?;
        figures.recoveries += 1;
        figures.slowest = figures.slowest.max(recovered);
    }
    // Killed and reaped (`Worker`'s drop).
    workers.clear();
    // Recovered at the end too: a fresh handle gets the lock, and breaking
    // afterwards leaves nothing of the killed processes behind.
    let last = LockOptions::new()
        .strategy(strategy)
        .trust_os_locks(true)
        .poll_interval(Duration::from_millis(5))
        .grace(Duration::from_millis(200))
        .open(&lock)
        .map_err(|e| format!("open: {e}"))?;
    last.lock_timeout(BOUND)
        .map_err(|e| format!("not recovered after the last kill: {e}"))?
        .release()
        .map_err(|e| format!("release: {e}"))?;
    last.break_lock().map_err(|e| format!("break: {e}"))?;
    // What is left: nothing but the log, the turnstile's gate (and an `Os`
    // lock file), once the
    // hidden renames of files unlinked while open (`.nfs*`, `.fuse_hidden*`),
    // which the client removes on its own after the last close, are gone;
    // looked at again for 5 s at most while only those remain.
    let list = || -> Result<Vec<String>, String> {
        Ok(std::fs::read_dir(dir.path())
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "log" && n != ".x.lock.gate")
            .filter(|n| !(strategy == LockStrategy::Os && n == "x.lock"))
            .collect())
    };
    let hidden = |n: &String| n.starts_with(".nfs") || n.starts_with(".fuse_hidden");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = list()?;
    while !left.is_empty() && left.iter().all(hidden) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = list()?;
    }
    figures.held_twice = check_log(&log, &kills, true)?;
    figures.took = started.elapsed();
    if figures.held_twice != 0 {
        // The whole story, for the one who looks into it: the log of
        // critical sections with the kills where the harness decided them.
        let written = std::fs::read_to_string(&log).map_err(|e| format!("log: {e}"))?;
        eprintln!(
            "torture: the chaos log, kills inserted:\n{}",
            with_kills(&written, &kills)
        );
        return Err(format!("held twice: {figures}"));
    }
    if !left.is_empty() {
        let shown: Vec<String> = left
            .iter()
            .map(|n| {
                let text = std::fs::read(dir.path().join(n))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                format!("{n}: {text:?}")
            })
            .collect();
        return Err(format!("left behind: {shown:?}"));
    }
    Ok(figures)
}

fn parse_phase(line: &str) -> Option<Phase> {
    match line {
        "A" => Some(Phase::Acquiring),
        "H" => Some(Phase::Holding),
        "R" => Some(Phase::Releasing),
        "D" => Some(Phase::Between),
        _ => None,
    }
}

fn note(workers: &mut HashMap<usize, Worker>, figures: &mut Chaos, i: usize, line: &str) {
    if let Some(phase) = parse_phase(line) {
        if phase == Phase::Holding {
            figures.acquisitions += 1;
        }
        if let Some(w) = workers.get_mut(&i) {
            w.phase = phase;
        }
    } else if let Some(e) = line.strip_prefix("ERROR ") {
        eprintln!("torture: worker {i}: {e}");
    }
}

/// Waits (bounded) until some worker reports a new acquisition; returns
/// the time since `since`.
fn await_acquisition(
    rx: &Receiver<(usize, Option<String>)>,
    workers: &mut HashMap<usize, Worker>,
    figures: &mut Chaos,
    since: Option<Instant>,
) -> Result<Duration, String> {
    let start = since.unwrap_or_else(Instant::now);
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, line) = rx
            .recv_timeout(left)
            .map_err(|_| format!("the lock was not taken again within {BOUND:?}"))?;
        let Some(line) = line else {
            if workers.contains_key(&i) {
                return Err(format!("worker {i} exited by itself"));
            }
            continue;
        };
        let live = workers.contains_key(&i);
        note(workers, figures, i, &line);
        if live && line == "H" {
            return Ok(start.elapsed());
        }
    }
}

fn append(log: &Path, line: &str) -> Result<(), String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("log: {e}"))
}

/// Replays the log of critical sections: returns how many times a process
/// entered while another held the lock. A holder that was being killed
/// (`KILLING`, a line of the log or one of `kills`: the log's length when
/// the kill was decided, and the victim) may be followed by another holder
/// once it is dead; if it ever writes again after that, it was not dead,
/// and that counts too.
fn check_log(log: &Path, kills: &[Kill], report: bool) -> Result<u64, String> {
    let written = std::fs::read_to_string(log).map_err(|e| format!("log: {e}"))?;
    let text = with_kills(&written, kills);
    let mut holder: Option<u32> = None;
    let mut doomed = HashSet::new();
    let mut must_be_dead = HashSet::new();
    let mut violations = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(what), Some(pid)) = (words.next(), words.next().and_then(|p| p.parse().ok()))
        else {
            return Err(format!("bad log line {line:?}"));
        };
        match what {
            "KILLING" => {
                doomed.insert(pid);
            }
            "ENTER" | "EXIT" if must_be_dead.contains(&pid) => {
                if report {
                    eprintln!("torture: {pid} wrote {what} after another process took its lock");
                }
                violations += 1;
            }
            "ENTER" => {
                if let Some(q) = holder {
                    if doomed.contains(&q) && q != pid {
                        must_be_dead.insert(q);
                    } else {
                        if report {
                            eprintln!("torture: {pid} entered while {q} held the lock");
                        }
                        violations += 1;
                    }
                }
                holder = Some(pid);
            }
            "EXIT" => {
                if holder != Some(pid) {
                    if report {
                        eprintln!("torture: {pid} left a critical section it was not in");
                    }
                    violations += 1;
                }
                holder = None;
            }
            other => return Err(format!("bad log line {other:?}")),
        }
    }
    Ok(violations)
}

/// The log with a `KILLING` line for each kill, before the first line that
/// starts at or after the log's length when the kill was decided.
fn with_kills(written: &str, kills: &[Kill]) -> String {
    let mut kills = kills.iter().peekable();
    let mut text = String::with_capacity(written.len() + 16 * kills.len());
    let mut offset = 0u64;
    for line in written.split_inclusive('\n') {
        while let Some((_, pid)) = kills.next_if(|(at, _)| *at <= offset) {
            text.push_str(&format!("KILLING {pid}\n"));
        }
        text.push_str(line);
        offset += line.len() as u64;
    }
    for (_, pid) in kills {
        text.push_str(&format!("KILLING {pid}\n"));
    }
    text
}

/// The log check must be able to fail: known logs and their verdicts.
fn check_log_self_test() -> Result<(), String> {
    let cases = [
        ("ENTER 1\nEXIT 1\nENTER 2\nEXIT 2\n", 0),
        ("ENTER 1\nENTER 2\nEXIT 2\n", 1),
        // Killed while holding; the next holder after it is fine.
        ("ENTER 1\nKILLING 1\nENTER 2\nEXIT 2\n", 0),
        // ... unless the killed one writes again: it was alive.
        ("ENTER 1\nKILLING 1\nENTER 2\nEXIT 1\nEXIT 2\n", 1),
        ("ENTER 1\nKILLING 3\nENTER 2\n", 1),
    ];
    let dir = scratch()?;
    for (text, expected) in cases {
        let log = dir.path().join("log");
        std::fs::write(&log, text).map_err(|e| e.to_string())?;
        let got = check_log(&log, &[], false)?;
        if (got == 0) != (expected == 0) {
            return Err(format!("{text:?}: {got} violations, expected {expected}"));
        }
    }
    // Kills kept beside the log land where they were decided.
    let cases: [(&str, &[Kill], u64); 4] = [
        ("ENTER 1\nENTER 2\nEXIT 2\n", &[(8, 1)], 0),
        ("ENTER 1\nENTER 2\nEXIT 2\n", &[(0, 1)], 0),
        ("ENTER 1\nENTER 2\nEXIT 2\n", &[(16, 1)], 1),
        ("ENTER 1\nENTER 2\nEXIT 1\nEXIT 2\n", &[(8, 1)], 1),
    ];
    for (text, kills, expected) in cases {
        let log = dir.path().join("log");
        std::fs::write(&log, text).map_err(|e| e.to_string())?;
        let got = check_log(&log, kills, false)?;
        if (got == 0) != (expected == 0) {
            return Err(format!(
                "{text:?} with kills {kills:?}: {got} violations, expected {expected}"
            ));
        }
    }
    Ok(())
}

// --------------------------------------------------------------- children

fn child(role: &str, args: &[String]) -> i32 {
    let result = match role {
        "exclusion" => exclusion_child(args),
        "chaos" => chaos_child(args),
        other => Err(format!("unknown role {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            // The harness may be gone already (it failed): no panic then.
            let _ = writeln!(std::io::stdout(), "ERROR {e}");
            1
        }
    }
}

fn options(strategy: &str) -> Result<LockOptions, String> {
    let strategy: LockStrategy = strategy.parse().map_err(|e| format!("{e}"))?;
    let mut options = LockOptions::new();
    // Every process of the suite runs on this machine: an Os lock on a
    // network file system whose OS locks stay on each client excludes
    // them all the same.
    options
        .strategy(strategy)
        .trust_os_locks(true)
        .poll_interval(Duration::from_millis(5))
        .grace(Duration::from_millis(200));
    Ok(options)
}

/// `exclusion STRATEGY LOCK DIR THREADS EACH`: says `DONE <acquisitions>
/// <overlaps>`.
fn exclusion_child(args: &[String]) -> Result<(), String> {
    let [strategy, lock, dir, threads, each] = args else {
        return Err(format!("bad arguments {args:?}"));
    };
    let options = options(strategy)?;
    let threads: usize = threads.parse().map_err(|_| "threads".to_owned())?;
    let each: usize = each.parse().map_err(|_| "each".to_owned())?;
    let marker = PathBuf::from(dir).join("inside");
    let counter = PathBuf::from(dir).join("counter");
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(u64, u64), String> {
                    let lock = options.open(lock).map_err(|e| format!("open: {e}"))?;
                    let (mut done, mut overlaps) = (0, 0);
                    for _ in 0..each {
                        let guard = lock.lock().map_err(|e| format!("acquire: {e}"))?;
                        let mine = match OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&marker)
                        {
                            Ok(_) => true,
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                overlaps += 1;
                                false
                            }
                            Err(e) => return Err(format!("marker: {e}")),
                        };
                        let n: u64 = match std::fs::read_to_string(&counter) {
                            Ok(s) => s.trim().parse().map_err(|_| "corrupt counter")?,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                            Err(e) => return Err(format!("counter: {e}")),
                        };
                        std::fs::write(&counter, format!("{}\n", n + 1))
                            .map_err(|e| format!("counter: {e}"))?;
                        if mine {
                            std::fs::remove_file(&marker).map_err(|e| format!("marker: {e}"))?;
                        }
                        guard.release().map_err(|e| format!("release: {e}"))?;
                        done += 1;
                    }
                    Ok((done, overlaps))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a thread panicked".to_owned()))
            })
            .collect()
    });
    let (mut done, mut overlaps) = (0, 0);
    for r in results {
        let (d, o) = r?;
        done += d;
        overlaps += o;
    }
    writeln!(std::io::stdout(), "DONE {done} {overlaps}").map_err(|e| format!("stdout: {e}"))
}

/// `chaos STRATEGY LOCK LOG`: cycles until killed, saying its phase before
/// each step (`A` acquire, `H` holding, `R` release, `D` done) and logging
/// `ENTER`/`EXIT` around its critical section.
fn chaos_child(args: &[String]) -> Result<(), String> {
    let [strategy, lock, log] = args else {
        return Err(format!("bad arguments {args:?}"));
    };
    let lock = options(strategy)?
        .open(lock)
        .map_err(|e| format!("open: {e}"))?;
    let mut out = std::io::stdout();
    let mut say = |what: &str| -> Result<(), String> {
        out.write_all(what.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    let me = std::process::id();
    let log = Path::new(log);
    loop {
        say("A")?;
        lock.acquire().map_err(|e| format!("acquire: {e}"))?;
        say("H")?;
        append(log, &format!("ENTER {me}\n"))?;
        append(log, &format!("EXIT {me}\n"))?;
        say("R")?;
        lock.release().map_err(|e| format!("release: {e}"))?;
        say("D")?;
    }
}
