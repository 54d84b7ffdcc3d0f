//! The fault-point matrix: every named step of the protocols (the
//! `failpoints` feature, `portalock::fault::STEPS`), in every role that
//! reaches it, stopped there while other processes act around it, then
//! resumed, killed, or failed with an I/O error.
//!
//! A scenario puts actor A (a child process with one `LockFile`) in its
//! role (taking the lock, releasing it, breaking a stale lock as a waiter
//! or with `break_lock`, forcing a live one, refreshing a lease, handing
//! the lock to a command), and stops it at the step. While A is stopped,
//! actors B and C try to take the lock, check it, break it and take it
//! again. Then A is resumed, or killed (SIGKILL), or (third outcome) the
//! step fails with EIO instead of stopping. Last, C force-breaks whoever
//! holds the lock, another actor takes it, the victim releases, and a
//! fresh actor must take the lock within the grace period and a margin.
//!
//! At every point the harness asserts:
//! - never two holders: of the actors whose acquisition succeeded, at most
//!   one finds it still its own (`ensure_held`);
//! - no fresh lock removed: a holder finds its lock lost only where the
//!   contract says so (a forced break of it, its lease run out);
//! - the documented exception behaves: a force-broken holder learns it
//!   (`LockLost`), and its release removes nothing of the new holder's;
//! - nothing left blocks the next acquirer beyond the grace period;
//! - status names the holder whenever there is one.
//!
//! The same is done for `portalock run`'s steps, with the wrapper killed
//! or resumed and a second `run` trying the lock meanwhile: the command
//! never runs while another run holds the lock.
//!
//! It prints the matrix (steps x roles x outcomes) and the number of
//! assertions, and exits non-zero on any failure. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use portalock::{Error, LockOptions, LockStatus, LockStrategy};

const ROLE: &str = "PORTALOCK_MATRIX_ROLE";
/// The longest the harness waits for any one answer.
const BOUND: Duration = Duration::from_secs(30);
/// The grace period of every actor: a lock directory without a record is
/// stale after this long.
const GRACE_MS: u64 = 200;
/// The lease of the refresher role.
const LEASE_MS: u64 = 600;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(match role.as_str() {
            "actor" => actor(&args),
            "two-leases" => two_leases(&args),
            "sleeper" => sleeper(),
            "marker" => marker(&args),
            other => {
                eprintln!("unknown role {other}");
                2
            }
        });
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "fault_matrix".contains(f.as_str())) {
        return;
    }
    if cfg!(not(unix)) {
        // Processes are stopped and killed with Unix tools (a FIFO,
        // /proc, /dev/shm); Windows has its own suite under Wine.
        println!("faults: the matrix runs on Unix only");
        return;
    }
    let started = Instant::now();
    // `PORTALOCK_MATRIX_ONLY=<text>` runs the scenarios whose name holds it.
    let only = std::env::var("PORTALOCK_MATRIX_ONLY").unwrap_or_default();
    let mut scenarios = scenarios();
    scenarios.retain(|s| s.name().contains(&only));
    let results = run_all(&scenarios);
    let mut run_results = run_wrapper_matrix(&only);
    run_results.extend(targeted_scenarios());
    run_results.retain(|(name, _)| name.contains(&only));
    // Every result by its name, `<step> <role> <strategy> <outcome>`.
    let mut named: Vec<(String, Result<String, String>)> =
        scenarios.iter().map(Scenario::name).zip(results).collect();
    named.extend(run_results);
    let mut failed = 0;
    let mut passed = 0;
    let mut table: BTreeMap<(String, String, String), BTreeMap<&'static str, String>> =
        BTreeMap::new();
    for (name, result) in &named {
        let cell = match result {
            Ok(summary) => {
                passed += 1;
                summary.clone()
            }
            Err(e) => {
                failed += 1;
                eprintln!("faults: FAILED {name}: {e}");
                "FAILED".to_owned()
            }
        };
        let mut parts = name.splitn(4, ' ');
        let mut part = || parts.next().unwrap_or_default().to_owned();
        let (step, role, strategy, outcome) = (part(), part(), part(), part());
        let outcome = match outcome.as_str() {
            "resume" => "resume",
            "fail" => "fail",
            _ => "kill",
        };
        table
            .entry((step, role, strategy))
            .or_default()
            .insert(outcome, cell);
    }
    println!("faults: step x role x strategy: resume | kill | fail (EIO)");
    for ((step, role, strategy), cells) in &table {
        let cell = |o| cells.get(o).map_or("-", String::as_str);
        println!(
            "faults: {step:<24} {role:<13} {strategy:<5} | {} | {} | {}",
            cell("resume"),
            cell("kill"),
            cell("fail")
        );
    }
    let steps_covered: std::collections::BTreeSet<&str> =
        table.keys().map(|(s, _, _)| s.as_str()).collect();
    let missing: Vec<&&str> = portalock::fault::STEPS
        .iter()
        .filter(|s| !steps_covered.contains(**s))
        .collect();
    if !missing.is_empty() && only.is_empty() {
        failed += 1;
        eprintln!("faults: FAILED: steps no scenario reaches: {missing:?}");
    }
    println!(
        "faults: {} steps, {} scenarios, {} assertions, {:.1} s",
        steps_covered.len(),
        passed + failed,
        ASSERTIONS.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    println!("faults: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// How many assertions the scenarios made.
static ASSERTIONS: AtomicUsize = AtomicUsize::new(0);

/// Asserts `condition`; the error names what failed.
fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    ASSERTIONS.fetch_add(1, Ordering::Relaxed);
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// What actor A is doing when it reaches the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Taking a free lock (`try_acquire`).
    Acquirer,
    /// Releasing the lock it holds.
    Releaser,
    /// Breaking the stale lock of a killed holder with `break_lock`.
    Breaker,
    /// Waiting for the stale lock of a killed holder (`acquire_timeout`),
    /// which breaks it.
    Waiter,
    /// Force-breaking a live holder's lock.
    Forcer,
    /// Refreshing its lease (the heartbeat thread).
    Refresher,
    /// Handing its lock to a command (`LockFile::spawn`).
    Spawner,
    /// Breaking a `Mkdir` directory left without a record.
    EmptyBreaker,
    /// Breaking a `Link` orphan whose remover was killed.
    OrphanBreaker,
    /// Force-breaking a `Link` orphan without any taken name.
    OrphanForcer,
    /// Dropping a guard (nobody to see an error or to retry).
    GuardDropper,
    /// Waiting at the head of the queue (the turnstile's gate taken) for a
    /// live holder's lock (`acquire_timeout`).
    HeadWaiter,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Acquirer => "acquirer",
            Role::Releaser => "releaser",
            Role::Breaker => "breaker",
            Role::Waiter => "waiter",
            Role::Forcer => "forcer",
            Role::Refresher => "refresher",
            Role::Spawner => "spawner",
            Role::EmptyBreaker => "empty-breaker",
            Role::OrphanBreaker => "orphan-breaker",
            Role::OrphanForcer => "orphan-forcer",
            Role::GuardDropper => "guard-dropper",
            Role::HeadWaiter => "head-waiter",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Resume,
    Kill,
    Fail,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Resume => "resume",
            Outcome::Kill => "kill",
            Outcome::Fail => "fail",
        }
    }
}

struct Scenario {
    strategy: LockStrategy,
    step: &'static str,
    role: Role,
    outcome: Outcome,
}

impl Scenario {
    fn name(&self) -> String {
        format!(
            "{} {} {} {}",
            self.step,
            self.role.name(),
            self.strategy,
            self.outcome.name()
        )
    }
}

/// Every (strategy, step, role) that the protocols reach, with every
/// outcome.
fn scenarios() -> Vec<Scenario> {
    use LockStrategy::{Link, Mkdir, Os};
    use Role::*;
    let breakers = [Releaser, Breaker, Waiter, Forcer, GuardDropper];
    let mut cells: Vec<(LockStrategy, &'static str, Role)> = vec![
        (Os, "os.acquire.locked", Acquirer),
        (Os, "os.release.unlocking", Releaser),
        (Mkdir, "mkdir.acquire.mkdir", Acquirer),
        (Mkdir, "mkdir.acquire.record", Acquirer),
        (Mkdir, "mkdir.acquire.alone", Acquirer),
        (Mkdir, "mkdir.break_empty.rmdir", EmptyBreaker),
        (Mkdir, "mkdir.refresh.write", Refresher),
        (Link, "link.acquire.claim", Acquirer),
        (Link, "link.acquire.link", Acquirer),
        (Link, "link.recover.take_over", OrphanBreaker),
        (Link, "link.force.relink", OrphanForcer),
        (Link, "link.refresh.write", Refresher),
    ];
    for step in ["mkdir.remove.record", "mkdir.remove.dir"] {
        cells.extend(breakers.iter().map(|&r| (Mkdir, step, r)));
    }
    for step in [
        "link.remove.take",
        "link.remove.check",
        "link.remove.unlink",
        "link.remove.taken",
    ] {
        cells.extend(breakers.iter().map(|&r| (Link, step, r)));
    }
    for strategy in [Mkdir, Link] {
        cells.push((strategy, "break.judged", Breaker));
        cells.push((strategy, "break.judged", Waiter));
        cells.push((strategy, "force.judged", Forcer));
    }
    for strategy in [Os, Mkdir, Link] {
        // The turnstile: waiting at the head of the queue, for a lock that
        // a dead holder left (it is broken, then taken), or (`Os`, which
        // the kernel releases) for a live holder's.
        if strategy == Os {
            cells.push((strategy, "gate.taken", HeadWaiter));
        } else {
            cells.push((strategy, "gate.taken", Waiter));
            cells.push((strategy, "gate.passed", Waiter));
        }
        cells.push((strategy, "spawn.gate", Spawner));
        cells.push((strategy, "spawn.named", Spawner));
    }
    let mut all = Vec::new();
    for (strategy, step, role) in cells {
        for outcome in [Outcome::Resume, Outcome::Kill, Outcome::Fail] {
            all.push(Scenario {
                strategy,
                step,
                role,
                outcome,
            });
        }
    }
    all
}

/// Runs the scenarios on two threads (each in a directory of its own).
fn run_all(scenarios: &[Scenario]) -> Vec<Result<String, String>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<String, String>>>> =
        Mutex::new((0..scenarios.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(scenario) = scenarios.get(i) else {
                    break;
                };
                let result = run(scenario);
                results.lock().expect("results")[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not run".to_owned())))
        .collect()
}

/// One scenario; its summary for the matrix.
fn run(scenario: &Scenario) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("m.lock");
    let mut world = World::new(scenario.strategy, &path);
    let result = world.play(scenario);
    world.end();
    result.map_err(|e| {
        format!(
            "{e}\n    what happened: {}\n    left in the directory: {:?}",
            world.log.join(" "),
            leftovers(&path)
        )
    })
}

/// The actors of one scenario and what each believes.
struct World {
    strategy: LockStrategy,
    path: PathBuf,
    actors: Vec<Actor>,
    /// Who may find its lock lost without that being a removed fresh
    /// lock: the victim of a forced break, a holder paused past its lease.
    may_lose: Vec<usize>,
    log: Vec<String>,
    /// A guard was dropped: its handle must hold nothing afterwards.
    guard_dropped: bool,
}

impl World {
    fn new(strategy: LockStrategy, path: &Path) -> World {
        World {
            strategy,
            path: path.to_owned(),
            actors: Vec::new(),
            may_lose: Vec::new(),
            log: Vec::new(),
            guard_dropped: false,
        }
    }

    fn spawn(&mut self, name: &str, lease_ms: u64) -> Result<usize, String> {
        let actor = Actor::spawn(name, self.strategy, &self.path, lease_ms)?;
        self.actors.push(actor);
        Ok(self.actors.len() - 1)
    }

    /// `cmd` to actor `i`, its answer (logged).
    fn call(&mut self, i: usize, cmd: &str) -> Result<String, String> {
        let answer = self.actors[i].call(cmd)?;
        self.log
            .push(format!("{}:{cmd}={answer}", self.actors[i].name));
        if (cmd == "acquire" || cmd.starts_with("wait ")) && answer == "ok" {
            self.actors[i].holds = true;
        }
        Ok(answer)
    }

    /// Takes the lock for actor `i`, which must get it.
    fn take(&mut self, i: usize) -> Result<(), String> {
        let answer = self.call(i, "acquire")?;
        check(answer == "ok", || {
            format!(
                "{} could not take a free lock: {answer}",
                self.actors[i].name
            )
        })
    }

    /// Never two holders; no fresh lock removed; status names the holder.
    fn invariant(&mut self, when: &str) -> Result<(), String> {
        let mut holding = Vec::new();
        for i in 0..self.actors.len() {
            let actor = &self.actors[i];
            if !actor.holds || !actor.alive || actor.stopped {
                continue;
            }
            let answer = self.call(i, "check")?;
            match answer.as_str() {
                "ok" => holding.push(i),
                "lost" => {
                    self.actors[i].holds = false;
                    let allowed = self.may_lose.contains(&i);
                    check(allowed, || {
                        format!(
                            "{when}: {}'s lock was removed under it (a fresh lock removed)",
                            self.actors[i].name
                        )
                    })?;
                }
                other => {
                    return Err(format!(
                        "{when}: {} cannot check its lock: {other}",
                        self.actors[i].name
                    ))
                }
            }
        }
        let names: Vec<&str> = holding
            .iter()
            .map(|&i| self.actors[i].name.as_str())
            .collect();
        check(holding.len() <= 1, || {
            format!("{when}: two holders: {names:?}")
        })?;
        if let Some(&holder) = holding.first() {
            let status = status_of(self.strategy, &self.path)?;
            let pid = self.actors[holder].pid;
            check(status == format!("held:{pid}"), || {
                format!(
                    "{when}: status says {status}, but {} (pid {pid}) holds the lock",
                    self.actors[holder].name
                )
            })?;
        }
        Ok(())
    }

    /// The scenario.
    fn play(&mut self, s: &Scenario) -> Result<String, String> {
        let lease = if s.role == Role::Refresher {
            LEASE_MS
        } else {
            0
        };
        // Set-up: the lock as the role needs it.
        match s.role {
            Role::Breaker | Role::Waiter => {
                let d = self.spawn("D", 0)?;
                self.take(d)?;
                self.actors[d].kill();
            }
            Role::HeadWaiter => {
                // A live holder, which the turnover below releases.
                let h = self.spawn("H", 0)?;
                self.take(h)?;
            }
            Role::Forcer => {
                let h = self.spawn("H", 0)?;
                self.take(h)?;
                // A forced break takes the lock from its live holder: the
                // documented exception.
                self.may_lose.push(h);
            }
            Role::EmptyBreaker => {
                std::fs::create_dir(&self.path).map_err(|e| format!("mkdir: {e}"))?;
            }
            Role::OrphanBreaker => {
                // A holder D, and a remover R killed after it took D's
                // claim: the lock file stays without a claim; then D dies.
                let d = self.spawn("D", 0)?;
                self.take(d)?;
                self.may_lose.push(d);
                let r = self.spawn("R", 0)?;
                self.call(r, "pause link.remove.check")?;
                self.actors[r].send("force")?;
                self.actors[r].expect_at("link.remove.check")?;
                self.actors[r].kill();
                self.actors[d].kill();
            }
            Role::OrphanForcer => {
                // A live holder whose claim something removed: only a
                // forced break recovers the lock.
                let d = self.spawn("D", 0)?;
                self.take(d)?;
                self.may_lose.push(d);
                remove_claims(&self.path)?;
            }
            Role::Acquirer
            | Role::Releaser
            | Role::Refresher
            | Role::Spawner
            | Role::GuardDropper => {}
        }
        let a = self.spawn("A", lease)?;
        if matches!(s.role, Role::Releaser | Role::Refresher | Role::Spawner) {
            self.take(a)?;
        }
        if s.role == Role::GuardDropper {
            let got = self.call(a, "guard")?;
            check(got == "ok", || {
                format!("A could not take a free lock: {got}")
            })?;
            self.actors[a].holds = true;
        }
        if s.role == Role::Refresher && s.outcome != Outcome::Fail {
            // Paused past its lease, its lock may be broken.
            self.may_lose.push(a);
        }
        let op = match s.role {
            Role::Acquirer => Some("acquire"),
            Role::Releaser => Some("release"),
            Role::Breaker | Role::EmptyBreaker | Role::OrphanBreaker => Some("break"),
            Role::Waiter | Role::HeadWaiter => Some("wait 5000"),
            Role::Forcer | Role::OrphanForcer => Some("force"),
            Role::Refresher => None,
            Role::Spawner => Some("spawn"),
            Role::GuardDropper => Some("dropguard"),
        };
        let mut a_answer = None;
        if s.outcome == Outcome::Fail {
            self.call(a, &format!("fail {}", s.step))?;
            match op {
                Some(op) => {
                    let answer = self.call(a, op)?;
                    self.after_op(a, s.role, &answer);
                    a_answer = Some(answer);
                }
                // The next refresh fails once and is tried again: once
                // the record shows a later beat, it failed and recovered.
                None => wait_for_beat(self.strategy, &self.path, 2)?,
            }
        } else {
            self.call(a, &format!("pause {}", s.step))?;
            if let Some(op) = op {
                self.actors[a].send(op)?;
                self.actors[a].stopped = true;
            }
            self.actors[a].expect_at(s.step)?;
        }

        // While A is stopped (or after its step failed), B and C act.
        let b = self.spawn("B", 0)?;
        let c = self.spawn("C", 0)?;
        self.call(b, "acquire")?;
        self.call(c, "acquire")?;
        self.invariant("A stopped, B and C tried")?;
        for i in [b, c] {
            if !self.actors[i].holds {
                self.call(i, "break")?;
                self.call(i, "acquire")?;
            }
        }
        self.invariant("A stopped, B and C broke and tried again")?;
        // A turnover while A is stopped: the holder (not A) releases and
        // another actor takes the lock afresh (on ext4, likely in the inode
        // the old lock file had). Whatever A judged before, it must leave
        // the new lock alone.
        let holder = (0..self.actors.len()).find(|&i| {
            i != a && self.actors[i].holds && self.actors[i].alive && !self.actors[i].stopped
        });
        if let Some(old) = holder {
            let released = self.call(old, "release")?;
            check(released == "ok", || {
                format!("a holder's release said {released}")
            })?;
            self.actors[old].holds = false;
            let next = if old == b { c } else { b };
            self.call(next, "acquire")?;
            self.invariant("A stopped, after a turnover")?;
        }

        // A goes on, or dies where it stopped.
        match s.outcome {
            Outcome::Resume => {
                self.actors[a].send("go")?;
                self.actors[a].stopped = false;
                if op.is_some() {
                    let answer = self.actors[a].reply()?;
                    self.log.push(format!("A:resumed={answer}"));
                    self.after_op(a, s.role, &answer);
                    a_answer = Some(answer);
                }
            }
            Outcome::Kill => {
                self.actors[a].kill();
                a_answer = Some("killed".to_owned());
            }
            Outcome::Fail => {}
        }
        self.invariant("after A")?;

        // The documented exception: a forced break of the live holder (not
        // for `Os`, which only the kernel releases). The holder finds out,
        // and its release removes nothing of the next holder's.
        let holder = (0..self.actors.len())
            .find(|&i| self.actors[i].holds && self.actors[i].alive && !self.actors[i].stopped);
        if let (Some(victim), false) = (holder, self.strategy == LockStrategy::Os) {
            let others: Vec<usize> = [b, c].into_iter().filter(|&i| i != victim).collect();
            let (forcer, next) = match others.as_slice() {
                [one, two] => (*one, *two),
                [one] => (*one, *one),
                _ => return Err("no actor to force the lock".to_owned()),
            };
            let forced = self.call(forcer, "force")?;
            check(forced.starts_with("removed:"), || {
                format!("the forced break of a held lock said {forced}")
            })?;
            self.may_lose.push(victim);
            let told = self.call(victim, "check")?;
            check(told == "lost", || {
                format!("a force-broken holder was not told: {told}")
            })?;
            self.actors[victim].holds = false;
            let got = self.call(next, "wait 3000")?;
            check(got == "ok", || {
                format!("the lock was not free after a forced break: {got}")
            })?;
            let released = self.call(victim, "release")?;
            check(released == "lost", || {
                format!("a force-broken holder's release said {released}")
            })?;
            self.invariant("after the forced break and the victim's release")?;
        }

        // Everyone lets go; the lock is free for a newcomer within the
        // grace period and a margin.
        for i in 0..self.actors.len() {
            if self.actors[i].holds && self.actors[i].alive {
                let released = self.call(i, "release")?;
                check(released == "ok", || {
                    format!("{} could not release: {released}", self.actors[i].name)
                })?;
                self.actors[i].holds = false;
            }
        }
        if s.role == Role::Spawner {
            // The command A may have started ends; so does A.
            if self.actors[a].alive {
                self.call(a, "endcmd")?;
            }
        }
        let f = self.spawn("F", 0)?;
        if s.role == Role::OrphanForcer && s.outcome != Outcome::Resume {
            // The orphan that the set-up made (a claim removed by a
            // cleaner, its owner alive) needs a forced break: documented.
            self.call(f, "force")?;
        }
        let got = self.call(f, &format!("wait {}", GRACE_MS + 4000))?;
        check(got == "ok", || {
            format!("a newcomer could not take the lock within the grace period: {got}")
        })?;
        let released = self.call(f, "release")?;
        check(released == "ok", || {
            format!("the newcomer's release: {released}")
        })?;
        if self.guard_dropped && self.actors[a].alive {
            // The handle whose guard was dropped takes the lock again.
            let again = self.call(a, "wait 3000")?;
            check(again == "ok", || {
                format!("the handle of a dropped guard cannot take the lock again: {again}")
            })?;
            let released = self.call(a, "release")?;
            check(released == "ok", || format!("its release: {released}"))?;
        }
        // An `Os` lock file stays after release (blanked); the others go.
        check(
            self.strategy == LockStrategy::Os || !exists(&self.path),
            || "the lock path is still there".to_owned(),
        )?;
        let left = leftovers(&self.path);
        let mut summary = a_answer.unwrap_or_else(|| "-".to_owned());
        if !left.is_empty() {
            summary.push_str(&format!(" (+{} left)", left.len()));
        }
        Ok(summary)
    }

    /// What A's answer to its operation means for what A holds.
    fn after_op(&mut self, a: usize, role: Role, answer: &str) {
        match role {
            Role::Acquirer | Role::Waiter | Role::HeadWaiter => {
                self.actors[a].holds = answer == "ok"
            }
            // A dropped guard lets go whatever happens: a release that
            // failed is tried again in the background, never left to a
            // handle that no guard can release any more.
            Role::GuardDropper => {
                self.actors[a].holds = false;
                self.guard_dropped = true;
            }
            // Released, lost, or (a `Mkdir` or `Link` release that failed
            // before it changed anything) still held; an `Os` lock is
            // unlocked even when its release fails.
            Role::Releaser => {
                self.actors[a].holds =
                    answer.starts_with("err") && self.strategy != LockStrategy::Os
            }
            _ => {}
        }
    }

    fn end(&mut self) {
        for actor in &mut self.actors {
            actor.kill();
        }
    }
}

/// `status` of the lock at `path`: `free`, `held:<pid>` or `held:?`.
fn status_of(strategy: LockStrategy, path: &Path) -> Result<String, String> {
    let lock = LockOptions::new()
        .strategy(strategy)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    Ok(match lock.status().map_err(|e| format!("status: {e}"))? {
        LockStatus::Free => "free".to_owned(),
        LockStatus::Held(Some(record)) => format!("held:{}", record.pid),
        LockStatus::Held(None) => "held:?".to_owned(),
        _ => "other".to_owned(),
    })
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Files beside the lock that are not the lock (claims and taken names of
/// killed processes a later break sweeps).
fn leftovers(path: &Path) -> Vec<String> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    // The turnstile's gate stays by design, as an `Os` lock file does.
    let gate = path
        .file_name()
        .map(|n| format!(".{}.gate", n.to_string_lossy()))
        .unwrap_or_default();
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| *name != gate)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the `Link` claims beside `path`, as a cleaner of hidden files
/// would.
fn remove_claims(path: &Path) -> Result<(), String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("file name")?;
    for file in leftovers(path) {
        if file.starts_with(&format!(".{name}.")) && file.ends_with(".owner") {
            let claim = path.with_file_name(&file);
            std::fs::remove_file(&claim).map_err(|e| format!("remove {file}: {e}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The harness's view of an actor
// ---------------------------------------------------------------------------

struct Actor {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pid: u32,
    holds: bool,
    alive: bool,
    /// Stopped inside an operation: it answers nothing until resumed.
    stopped: bool,
}

impl Actor {
    fn spawn(
        name: &str,
        strategy: LockStrategy,
        path: &Path,
        lease_ms: u64,
    ) -> Result<Actor, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg(strategy.as_str())
            .arg(path)
            .arg(GRACE_MS.to_string())
            .arg(lease_ms.to_string())
            .env(ROLE, "actor")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("PL:") {
                    if tx.send(line[at + 3..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let pid = child.id();
        let mut actor = Actor {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            pid,
            holds: false,
            alive: true,
            stopped: false,
        };
        let ready = actor.next()?;
        if ready != "READY" {
            return Err(format!("{name} said {ready} first"));
        }
        Ok(actor)
    }

    fn send(&mut self, cmd: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("write to {}: {e}", self.name))
    }

    fn next(&mut self) -> Result<String, String> {
        self.lines
            .recv_timeout(BOUND)
            .map_err(|e| format!("{} said nothing within {BOUND:?}: {e:?}", self.name))
    }

    /// The next answer (`R <answer>`).
    fn reply(&mut self) -> Result<String, String> {
        loop {
            let line = self.next()?;
            if let Some(answer) = line.strip_prefix("R ") {
                return Ok(answer.to_owned());
            }
            if line.starts_with("AT ") {
                return Err(format!("{} stopped unexpectedly: {line}", self.name));
            }
        }
    }

    fn call(&mut self, cmd: &str) -> Result<String, String> {
        self.send(cmd)?;
        self.reply()
    }

    fn expect_at(&mut self, step: &str) -> Result<(), String> {
        let line = self.next()?;
        if line == format!("AT {step}") {
            Ok(())
        } else {
            Err(format!("{} said {line}, not AT {step}", self.name))
        }
    }

    fn kill(&mut self) {
        if self.alive {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.alive = false;
            self.holds = false;
        }
    }
}

// ---------------------------------------------------------------------------
// The actor process
// ---------------------------------------------------------------------------

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PL:{line}");
    let _ = out.flush();
}

/// Whether a stopped step may go on (a `go` came).
static RESUME: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// `actor STRATEGY PATH GRACE_MS LEASE_MS`: one handle on the lock,
/// serving commands (one answer line `R <answer>` each): `acquire`,
/// `wait MS`, `release`, `check`, `break`, `force`, `spawn` (a command
/// that waits until `endcmd`), `pause STEP` (stop at STEP the first time
/// and say `AT STEP`, until a `go` line), `fail STEP` (STEP fails once
/// with EIO).
fn actor(args: &[String]) -> i32 {
    let strategy: LockStrategy = args[0].parse().expect("strategy");
    let lease: u64 = args[3].parse().expect("lease");
    let mut options = LockOptions::new();
    options
        .strategy(strategy)
        .poll_interval(Duration::from_millis(5))
        .grace(Duration::from_millis(args[2].parse().expect("grace")));
    if lease > 0 {
        options.lease(Duration::from_millis(lease));
    }
    let lock = options.open(&args[1]).expect("open");
    let (tx, commands) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line == "go" {
                let (go, wake) = &RESUME;
                *go.lock().expect("resume") = true;
                wake.notify_all();
            } else if tx.send(line).is_err() {
                break;
            }
        }
    });
    say("READY");
    let mut command: Option<Child> = None;
    let mut guard: Option<portalock::LockGuard<'_>> = None;
    let mut reading: Option<portalock::SharedGuard> = None;
    while let Ok(line) = commands.recv() {
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let answer = match verb {
            "acquire" => outcome(lock.try_acquire()),
            "wait" => {
                outcome(lock.acquire_timeout(Duration::from_millis(arg.parse().expect("wait MS"))))
            }
            "release" => outcome(lock.release()),
            "check" => outcome(lock.ensure_held()),
            "break" => broke(lock.break_lock()),
            "force" => broke(lock.force_break()),
            "spawn" => {
                let exe = std::env::current_exe().expect("own executable");
                let mut cmd = Command::new(exe);
                cmd.env(ROLE, "sleeper").stdin(Stdio::piped());
                match lock.spawn(&mut cmd) {
                    Ok(child) => {
                        command = Some(child);
                        "ok".to_owned()
                    }
                    Err(e) => kind(&e),
                }
            }
            "guard" => match lock.try_lock() {
                Ok(g) => {
                    guard = Some(g);
                    "ok".to_owned()
                }
                Err(e) => kind(&e),
            },
            "shared" | "wshared" => {
                let taken = if verb == "shared" {
                    lock.try_lock_shared()
                } else {
                    lock.lock_shared_timeout(Duration::from_millis(arg.parse().expect("MS")))
                };
                match taken {
                    Ok(g) => {
                        reading = Some(g);
                        "ok".to_owned()
                    }
                    Err(e) => kind(&e),
                }
            }
            "sheck" => match &reading {
                Some(g) => outcome(g.ensure_held()),
                None => "notlocked".to_owned(),
            },
            "unshare" => match reading.take() {
                Some(g) => outcome(g.release()),
                None => "notlocked".to_owned(),
            },
            "dropguard" => {
                drop(guard.take());
                if lock.is_held() { "held" } else { "ok" }.to_owned()
            }
            "endcmd" => {
                if let Some(mut child) = command.take() {
                    drop(child.stdin.take());
                    let _ = child.wait();
                }
                "ok".to_owned()
            }
            "pause" => {
                let step = arg.to_owned();
                let fired = Arc::new(AtomicBool::new(false));
                fail::cfg_callback(arg, move || {
                    if fired.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    say(&format!("AT {step}"));
                    let (go, wake) = &RESUME;
                    let mut go = go.lock().expect("resume");
                    while !*go {
                        go = wake.wait(go).expect("resume");
                    }
                })
                .expect("configure the fault point");
                "ok".to_owned()
            }
            "fail" => {
                // The step fails once (or the given number of times) with
                // EIO.
                let (step, times) = arg.split_once(' ').unwrap_or((arg, "1"));
                fail::cfg(step, &format!("{times}*return(5)")).expect("configure the fault point");
                "ok".to_owned()
            }
            other => format!("unknown command {other}"),
        };
        say(&format!("R {answer}"));
    }
    0
}

/// `ok`, or what kind of error.
fn outcome(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => kind(&e),
    }
}

fn kind(e: &Error) -> String {
    match e {
        e if e.is_contended() => "busy".to_owned(),
        Error::LockLost { .. } => "lost".to_owned(),
        Error::NotLocked { .. } => "notlocked".to_owned(),
        Error::NotStale { .. } => "notstale".to_owned(),
        e => {
            eprintln!("actor {}: {e}", std::process::id());
            match e.io_error() {
                Some(io) => format!("err:io:{:?}", io.kind()),
                None => format!(
                    "err:{}",
                    format!("{e:?}").split([' ', '{']).next().unwrap_or("")
                ),
            }
        }
    }
}

fn broke(result: Result<Option<portalock::OwnerRecord>, Error>) -> String {
    match result {
        Ok(Some(record)) => format!("removed:{}", record.pid),
        Ok(None) => "free".to_owned(),
        Err(e) => kind(&e),
    }
}

/// `sleeper`: waits until its input ends.
fn sleeper() -> i32 {
    let mut sink = String::new();
    while matches!(std::io::stdin().read_line(&mut sink), Ok(n) if n > 0) {
        sink.clear();
    }
    0
}

// ---------------------------------------------------------------------------
// `portalock run`, stopped at its steps
// ---------------------------------------------------------------------------

/// `marker LOG`: appends `START <pid>` to LOG, says `STARTED <pid>`, waits
/// until its input ends, appends `END <pid>`.
fn marker(args: &[String]) -> i32 {
    let append = |line: String| {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args[0])
            .expect("log");
        writeln!(log, "{line}").expect("log");
    };
    let pid = std::process::id();
    append(format!("START {pid}"));
    say(&format!("STARTED {pid}"));
    let quick = args.get(1).is_some_and(|a| a == "quick");
    if !quick {
        sleeper();
    }
    append(format!("END {pid}"));
    0
}

const TOOL: &str = env!("CARGO_BIN_EXE_portalock");

/// Every step of `portalock run` (and of the lock handed to its command),
/// per strategy, with the wrapper resumed or killed there.
fn run_wrapper_matrix(only: &str) -> Vec<(String, Result<String, String>)> {
    let mut results = Vec::new();
    for strategy in LockStrategy::ALL {
        for step in ["run.locked", "spawn.gate", "spawn.named", "run.exited"] {
            for kill in [false, true] {
                let name = format!(
                    "{step} run-wrapper {strategy} {}",
                    if kill { "kill" } else { "resume" }
                );
                if name.contains(only) {
                    results.push((name, wrapper_scenario(strategy, step, kill)));
                }
            }
        }
    }
    results
}

fn wrapper_scenario(strategy: LockStrategy, step: &str, kill: bool) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let lock = dir.path().join("run.lock");
    let log = dir.path().join("log");
    let fifo = dir.path().join("resume");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .map_err(|e| format!("mkfifo: {e}"))?;
    check(made.success(), || "mkfifo failed".to_owned())?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut wrapper = Command::new(TOOL);
    wrapper
        .args(["run", "--strategy", strategy.as_str()])
        .arg(&lock)
        .arg("--")
        .arg(&exe)
        .arg(&log)
        .env(ROLE, "marker")
        .env("PORTALOCK_PAUSE_AT", step)
        .env("PORTALOCK_RESUME_FIFO", &fifo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut w = wrapper.spawn().map_err(|e| format!("run: {e}"))?;
    let stdout = w.stdout.take().ok_or("stdout")?;
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("PL:") {
                let _ = tx.send(line[at + 3..].to_owned());
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(BOUND)
            .map_err(|e| format!("waiting for {what}: {e:?}"))
    };
    let mut command: Option<u32> = None;
    // `run.exited` comes after the command ran: start and end it first.
    if step == "run.exited" {
        let started = next("STARTED")?;
        command = started
            .strip_prefix("STARTED ")
            .and_then(|p| p.parse().ok());
        drop(w.stdin.take());
    }
    let at = next("AT")?;
    check(at == format!("AT {step}"), || {
        format!("the wrapper said {at}")
    })?;

    // A second run tries the lock while the wrapper is stopped.
    let try_run = || -> Result<i32, String> {
        let status = Command::new(TOOL)
            .args(["run", "--strategy", strategy.as_str(), "--timeout", "0"])
            .arg(&lock)
            .arg("--")
            .arg(&exe)
            .arg(&log)
            .arg("quick")
            .env(ROLE, "marker")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("second run: {e}"))?;
        status.code().ok_or_else(|| "second run killed".to_owned())
    };
    let first = try_run()?;
    check(first == 75, || {
        format!("a second run got the lock while the first held it: exit {first}")
    })?;
    let summary = if kill {
        // (`Child::wait` would close the command's input, which is the
        // wrapper's: kept open, the command runs on.)
        let input = w.stdin.take();
        let _ = w.kill();
        let _ = w.wait();
        // Stopped before its command started (at its gate, the command
        // never starts when the wrapper dies), or after it ended: the lock
        // is free or stale now, and the second run takes it, while the
        // command log shows no overlap.
        let second = try_run()?;
        check(second == 0, || {
            format!("the lock of a killed wrapper without a running command stayed taken: exit {second}")
        })?;
        drop(input);
        if let Some(pid) = command {
            let deadline = Instant::now() + BOUND;
            while runs(pid) {
                check(Instant::now() < deadline, || {
                    "the command did not end".to_owned()
                })?;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        format!("second run {second}")
    } else {
        std::fs::write(&fifo, "go\n").map_err(|e| format!("resume: {e}"))?;
        if step != "run.exited" {
            next("STARTED")?;
            let during = try_run()?;
            check(during == 75, || {
                format!("a second run got the lock while the command ran: exit {during}")
            })?;
            drop(w.stdin.take());
        }
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(status) = w.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            check(Instant::now() < deadline, || {
                "the wrapper did not exit".to_owned()
            })?;
            std::thread::sleep(Duration::from_millis(5));
        };
        check(status.code() == Some(0), || {
            format!("the wrapper exited {status}")
        })?;
        "exit 0".to_owned()
    };
    // Afterwards the lock is free (or stale, and broken) within a bound.
    let last = Command::new(TOOL)
        .args(["run", "--strategy", strategy.as_str(), "--timeout", "10"])
        .arg(&lock)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("last run: {e}"))?;
    check(last.code() == Some(0), || {
        format!("the lock stayed taken: {last}")
    })?;
    check_log(&log)?;
    Ok(summary)
}

/// The commands' log never shows two of them running at once.
fn check_log(log: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut running: Option<&str> = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("START", pid)) => {
                check(running.is_none(), || {
                    format!("two commands ran at once ({running:?} and {pid}): {text}")
                })?;
                running = Some(pid);
            }
            Some(("END", pid)) if running == Some(pid) => running = None,
            _ => {}
        }
    }
    Ok(())
}

/// Whether process `pid` runs (a zombie does not).
fn runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
}

/// Waits (bounded) until the record of the lock at `path` shows at least
/// `beat` refreshes.
fn wait_for_beat(strategy: LockStrategy, path: &Path, beat: u64) -> Result<(), String> {
    let lock = LockOptions::new()
        .strategy(strategy)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(Some(record)) = lock.owner() {
            if record.beat >= beat {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return check(false, || format!("no beat {beat} within {BOUND:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Targeted scenarios: a failed release, a stalled file system, a release
// that fails half way
// ---------------------------------------------------------------------------

/// The lease of the lease scenarios: refreshed every 100 ms.
const SHORT_LEASE_MS: u64 = 300;

fn targeted_scenarios() -> Vec<(String, Result<String, String>)> {
    vec![
        (
            "link.remove.check failed-release link fail".to_owned(),
            failed_release_keeps_its_lease(),
        ),
        (
            "mkdir.refresh.write other-file-system mkdir resume".to_owned(),
            a_stalled_file_system_stalls_no_other(),
        ),
        (
            "link.remove.restore stranded-release link fail".to_owned(),
            a_release_failing_half_way_is_finished_later(),
        ),
    ]
    .into_iter()
    .chain(reader_scenarios())
    .collect()
}

/// The readers' steps (`LockFile::lock_shared` on `Mkdir` and `Link`),
/// each resumed, killed and failed: a reader stopped between its
/// registration and its check of the lock (`readers.registered`, role
/// `reader`), and a writer stopped holding the lock with a reader
/// registered (`readers.draining`, role `drainer`). At every point no
/// writer holds beside a reader or another writer.
fn reader_scenarios() -> Vec<(String, Result<String, String>)> {
    let mut all = Vec::new();
    for strategy in [LockStrategy::Mkdir, LockStrategy::Link] {
        for outcome in [Outcome::Resume, Outcome::Kill, Outcome::Fail] {
            for (step, role) in [
                ("readers.registered", "reader"),
                ("readers.draining", "drainer"),
            ] {
                let name = format!("{step} {role} {strategy} {}", outcome.name());
                let result = reader_scenario(strategy, step, outcome);
                all.push((name, result));
            }
        }
    }
    all
}

/// `cmd` to actor `i`, which must answer `want`.
fn expect(world: &mut World, i: usize, cmd: &str, want: &str) -> Result<(), String> {
    let got = world.call(i, cmd)?;
    check(got == want, || {
        format!("{}: {cmd} said {got}, not {want}", world.actors[i].name)
    })
}

fn reader_scenario(strategy: LockStrategy, step: &str, outcome: Outcome) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("m.lock");
    let mut world = World::new(strategy, &path);
    let result = (|| -> Result<String, String> {
        let summary = if step == "readers.registered" {
            let a = world.spawn("A", 0)?;
            match outcome {
                Outcome::Fail => {
                    world.call(a, &format!("fail {step}"))?;
                    let got = world.call(a, "shared")?;
                    check(got.starts_with("err"), || {
                        format!("A's failed registration said {got}")
                    })?;
                    // It holds nothing, as a reader or a writer.
                    let b = world.spawn("B", 0)?;
                    expect(&mut world, b, "acquire", "ok")?;
                    expect(&mut world, b, "release", "ok")?;
                    got
                }
                Outcome::Kill => {
                    world.call(a, &format!("pause {step}"))?;
                    world.actors[a].send("shared")?;
                    world.actors[a].expect_at(step)?;
                    let b = world.spawn("B", 0)?;
                    expect(&mut world, b, "acquire", "busy")?;
                    world.actors[a].kill();
                    // Its lock and its registration are a dead process's.
                    expect(&mut world, b, "wait 5000", "ok")?;
                    expect(&mut world, b, "release", "ok")?;
                    "killed".to_owned()
                }
                Outcome::Resume => {
                    // Stopped with its registration made, A loses the lock
                    // to an operator's forced break, and a writer B takes
                    // it: B must wait for A's registration, and A, resumed,
                    // must not count as a reader.
                    world.call(a, &format!("pause {step}"))?;
                    world.actors[a].send("shared")?;
                    world.actors[a].expect_at(step)?;
                    let c = world.spawn("C", 0)?;
                    let forced = world.call(c, "force")?;
                    check(forced.starts_with("removed:"), || {
                        format!("C's force said {forced}")
                    })?;
                    let b = world.spawn("B", 0)?;
                    world.actors[b].send("wait 5000")?;
                    // B has the lock, and waits for A's registration.
                    let waited = world.call(c, "acquire")?;
                    check(waited == "busy", || format!("C beside B's wait: {waited}"))?;
                    world.actors[a].send("go")?;
                    let got = world.actors[a].reply()?;
                    check(got == "busy", || {
                        format!("A, its lock broken while it registered, said {got}")
                    })?;
                    let b_got = world.actors[b].reply()?;
                    check(b_got == "ok", || format!("B's wait said {b_got}"))?;
                    expect(&mut world, a, "sheck", "notlocked")?;
                    expect(&mut world, a, "shared", "busy")?;
                    expect(&mut world, b, "release", "ok")?;
                    expect(&mut world, a, "shared", "ok")?;
                    expect(&mut world, b, "acquire", "busy")?;
                    expect(&mut world, a, "unshare", "ok")?;
                    expect(&mut world, b, "acquire", "ok")?;
                    expect(&mut world, b, "release", "ok")?;
                    got
                }
            }
        } else {
            let r = world.spawn("R", 0)?;
            expect(&mut world, r, "shared", "ok")?;
            let a = world.spawn("A", 0)?;
            match outcome {
                Outcome::Fail => {
                    world.call(a, &format!("fail {step}"))?;
                    let got = world.call(a, "wait 5000")?;
                    check(got.starts_with("err"), || {
                        format!("A's failed drain said {got}")
                    })?;
                    expect(&mut world, a, "check", "notlocked")?;
                    let b = world.spawn("B", 0)?;
                    expect(&mut world, b, "shared", "ok")?;
                    expect(&mut world, b, "unshare", "ok")?;
                    expect(&mut world, r, "unshare", "ok")?;
                    expect(&mut world, a, "acquire", "ok")?;
                    expect(&mut world, a, "release", "ok")?;
                    got
                }
                Outcome::Kill => {
                    world.call(a, &format!("pause {step}"))?;
                    world.actors[a].send("wait 5000")?;
                    world.actors[a].expect_at(step)?;
                    world.actors[a].kill();
                    // A dead writer's lock is broken; the reader stays.
                    let b = world.spawn("B", 0)?;
                    expect(&mut world, b, "wshared 5000", "ok")?;
                    expect(&mut world, r, "sheck", "ok")?;
                    let c = world.spawn("C", 0)?;
                    expect(&mut world, c, "acquire", "busy")?;
                    expect(&mut world, b, "unshare", "ok")?;
                    expect(&mut world, r, "unshare", "ok")?;
                    expect(&mut world, c, "acquire", "ok")?;
                    expect(&mut world, c, "release", "ok")?;
                    "killed".to_owned()
                }
                Outcome::Resume => {
                    world.call(a, &format!("pause {step}"))?;
                    world.actors[a].send("wait 5000")?;
                    world.actors[a].expect_at(step)?;
                    // A waiting writer holds the lock: no new reader.
                    let b = world.spawn("B", 0)?;
                    expect(&mut world, b, "shared", "busy")?;
                    expect(&mut world, r, "sheck", "ok")?;
                    expect(&mut world, r, "unshare", "ok")?;
                    world.actors[a].send("go")?;
                    let got = world.actors[a].reply()?;
                    check(got == "ok", || format!("A's wait said {got}"))?;
                    expect(&mut world, a, "check", "ok")?;
                    expect(&mut world, b, "shared", "busy")?;
                    expect(&mut world, a, "release", "ok")?;
                    expect(&mut world, b, "shared", "ok")?;
                    expect(&mut world, b, "unshare", "ok")?;
                    got
                }
            }
        };
        // A writer comes last: it gets in, and leaves nothing behind.
        let f = world.spawn("F", 0)?;
        expect(&mut world, f, &format!("wait {}", GRACE_MS + 4000), "ok")?;
        expect(&mut world, f, "release", "ok")?;
        let left = leftovers(&path);
        check(left.is_empty(), || format!("left behind: {left:?}"))?;
        Ok(summary)
    })();
    world.end();
    result.map_err(|e| format!("{e}\n    what happened: {}", world.log.join(" ")))
}

/// A `Link` release that fails after taking its claim (the lock path
/// cannot be removed) and cannot put the claim back either: the handle
/// keeps the lock through its taken name (which nobody else may take: it
/// names this live process), and a second release finishes the removal.
fn a_release_failing_half_way_is_finished_later() -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("m.lock");
    let mut world = World::new(LockStrategy::Link, &path);
    let result = (|| {
        let a = world.spawn("A", 0)?;
        world.take(a)?;
        world.call(a, "fail link.remove.unlink")?;
        world.call(a, "fail link.remove.restore 4")?;
        let first = world.call(a, "release")?;
        check(first.starts_with("err"), || {
            format!("the release did not fail: {first}")
        })?;
        let checked = world.call(a, "check")?;
        check(checked == "ok", || {
            format!("the handle gave up a lock it could not release: {checked}")
        })?;
        let b = world.spawn("B", 0)?;
        let tried = world.call(b, "acquire")?;
        check(tried == "busy", || {
            format!("B took a lock A still holds: {tried}")
        })?;
        let second = world.call(a, "release")?;
        check(second == "ok", || format!("the second release: {second}"))?;
        let got = world.call(b, "acquire")?;
        check(got == "ok", || format!("B after A's release: {got}"))?;
        let released = world.call(b, "release")?;
        check(released == "ok", || format!("B's release: {released}"))?;
        let left = leftovers(&path);
        check(left.is_empty(), || format!("left behind: {left:?}"))?;
        Ok("kept, released later".to_owned())
    })();
    world.end();
    result
}

/// A release that fails before it changes anything gives the lock back to
/// its handle, and its lease goes on being refreshed: A's release waits
/// (stopped after taking its claim) for longer than a refresh period, then
/// fails; for four leases afterwards nobody may break the lock.
fn failed_release_keeps_its_lease() -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("m.lock");
    let mut world = World::new(LockStrategy::Link, &path);
    let result = (|| {
        const LEASE_MS: u64 = 900;
        let a = world.spawn("A", LEASE_MS)?;
        world.take(a)?;
        // Just refreshed: the release starts with most of the lease ahead.
        wait_for_beat(LockStrategy::Link, &path, 1)?;
        world.call(a, "pause link.remove.take")?;
        world.call(a, "fail link.remove.check")?;
        world.actors[a].send("release")?;
        world.actors[a].expect_at("link.remove.take")?;
        // More than a refresh period (a third of the lease) passes while
        // the release is under way, and the heartbeat finds nothing to
        // refresh; less than the lease since the last refresh (a release
        // that takes longer than that may find the lock broken, rightly).
        std::thread::sleep(Duration::from_millis(LEASE_MS / 2));
        world.actors[a].send("go")?;
        let released = world.actors[a].reply()?;
        check(released.starts_with("err"), || {
            format!("the release did not fail where it was made to: {released}")
        })?;
        let before = beat_of(LockStrategy::Link, &path)?;
        let b = world.spawn("B", 0)?;
        let waited = world.call(b, &format!("wait {}", 4 * LEASE_MS))?;
        check(waited == "busy", || {
            format!("the lease of a lock kept after a failed release ran out: B {waited}")
        })?;
        let after = beat_of(LockStrategy::Link, &path)?;
        check(after > before, || {
            format!("no refresh after the failed release: beat {before} then {after}")
        })?;
        let checked = world.call(a, "check")?;
        check(checked == "ok", || format!("A's lock: {checked}"))?;
        let released = world.call(a, "release")?;
        check(released == "ok", || {
            format!("A's second release: {released}")
        })?;
        Ok(format!("kept, beat {before} -> {after}"))
    })();
    world.end();
    result
}

/// Two leases of one process on two file systems (the temporary directory
/// and `/dev/shm`): the refresh of the first stopped as on a mount that
/// hangs, the second goes on being refreshed and is not broken.
fn a_stalled_file_system_stalls_no_other() -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let shm = tempfile::tempdir_in("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))?;
    let stalled = dir.path().join("stalled.lock");
    let other = shm.path().join("other.lock");
    #[cfg(unix)]
    let dev = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| e.to_string())
    };
    #[cfg(not(unix))]
    let dev = |p: &Path| Ok::<_, String>(p.to_string_lossy().len() as u64);
    check(dev(dir.path())? != dev(shm.path())?, || {
        "the temporary directory and /dev/shm are one file system here".to_owned()
    })?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg(&stalled)
        .arg(&other)
        .env(ROLE, "two-leases")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let result = (|| {
        let stdout = child.stdout.take().ok_or("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut next = || -> Result<String, String> {
            let line = lines
                .next()
                .ok_or("the process ended")?
                .map_err(|e| e.to_string())?;
            Ok(line
                .split_once("PL:")
                .map_or(line.clone(), |(_, l)| l.to_owned()))
        };
        check(next()? == "AT mkdir.refresh.write", || {
            "not stopped".to_owned()
        })?;
        let before = beat_of(LockStrategy::Link, &other)?;
        let frozen = beat_of(LockStrategy::Mkdir, &stalled)?;
        // Four leases of the other lock: it must be refreshed, not broken.
        let contender = LockOptions::new()
            .strategy(LockStrategy::Link)
            .poll_interval(Duration::from_millis(5))
            .open(&other)
            .map_err(|e| e.to_string())?;
        let waited = contender.acquire_timeout(Duration::from_millis(4 * SHORT_LEASE_MS));
        check(matches!(waited, Err(Error::Timeout { .. })), || {
            format!("the lease on the other file system ran out: {waited:?}")
        })?;
        let after = beat_of(LockStrategy::Link, &other)?;
        check(after >= before + 4, || {
            format!(
                "the other lease was refreshed {} times in four leases",
                after - before
            )
        })?;
        Ok(format!(
            "other refreshed {} times, stalled one at beat {frozen}",
            after - before
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `two-leases STALLED OTHER`: a `Mkdir` lock at STALLED and a `Link` lock
/// at OTHER, both with a short lease; the refresh of the `Mkdir` one stops
/// (says `AT mkdir.refresh.write`) until the process is killed.
fn two_leases(args: &[String]) -> i32 {
    let open = |strategy: LockStrategy, path: &str| {
        let lock = LockOptions::new()
            .strategy(strategy)
            .lease(Duration::from_millis(SHORT_LEASE_MS))
            .open(path)
            .expect("open");
        lock.acquire().expect("acquire");
        lock
    };
    let _other = open(LockStrategy::Link, &args[1]);
    let _stalled = open(LockStrategy::Mkdir, &args[0]);
    let fired = Arc::new(AtomicBool::new(false));
    fail::cfg_callback("mkdir.refresh.write", move || {
        if !fired.swap(true, Ordering::SeqCst) {
            say("AT mkdir.refresh.write");
        }
        // As a mount that hangs: never returns.
        loop {
            std::thread::park();
        }
    })
    .expect("configure the fault point");
    // Waits until killed.
    sleeper()
}

/// The beat of the record of the lock at `path`.
fn beat_of(strategy: LockStrategy, path: &Path) -> Result<u64, String> {
    let lock = LockOptions::new()
        .strategy(strategy)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    match lock.owner() {
        Ok(Some(record)) => Ok(record.beat),
        other => Err(format!("no record at {}: {other:?}", path.display())),
    }
}
