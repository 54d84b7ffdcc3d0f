//! Fair hand-off across processes: a process that releases the lock and
//! asks for it again at once does not overtake a process that was already
//! waiting.
//!
//! Each round: process R holds the lock; process W starts waiting for it
//! (the harness waits until W's thread sleeps in the kernel); then R
//! releases and asks again at once, three times, with no work in between.
//! Every holder appends its letter to a log while it holds the lock. W must
//! be the first or the second holder after R's first release: "within two
//! hand-offs". Without a fair hand-off R takes the lock back before W wakes.

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use portalock::{LockFile, LockOptions, LockStrategy};
use rstest::rstest;

use common::spawn;

const ROUNDS: usize = 20;
/// R's release-and-ask-again cycles per round.
const CYCLES: usize = 3;

#[test]
fn child() {
    match std::env::var("PORTALOCK_TEST_ROLE").as_deref() {
        Ok("fair-reasker") => reasker(),
        Ok("fair-waiter") => waiter(),
        Ok("fair-holder") => holder(),
        Ok("fair-dead-holder") => dead_holder(),
        _ => common::child_entry(),
    }
}

/// The child's lock and log; a fourth argument `nobreak` opens the lock
/// with `break_stale(false)`.
fn args() -> (LockFile, std::path::PathBuf) {
    let args = std::env::var("PORTALOCK_TEST_ARGS").expect("args");
    let mut parts = args.split('\u{1f}');
    let strategy: LockStrategy = parts.next().expect("strategy").parse().expect("strategy");
    let lock = parts.next().expect("lock path");
    let log = parts.next().expect("log path");
    let nobreak = parts.next() == Some("nobreak");
    let lock = LockOptions::new()
        .strategy(strategy)
        .break_stale(!nobreak)
        .open(lock)
        .expect("open lock");
    (lock, log.into())
}

/// D: takes the lock, says `HELD`, and waits to be killed.
fn dead_holder() {
    let (lock, _) = args();
    lock.acquire().expect("acquire");
    say("HELD");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    std::process::exit(0);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PL:{line}");
    let _ = out.flush();
}

/// Appends `who` to the log; called while holding the lock.
fn mark(log: &std::path::Path, who: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .expect("open log");
    file.write_all(who.as_bytes()).expect("append to log");
}

/// R: takes the lock; on `cycle`, releases and takes it again at once,
/// [`CYCLES`] times, and says `DONE` (holding it).
fn reasker() {
    let (lock, log) = args();
    lock.acquire().expect("acquire");
    mark(&log, "R");
    say("HELD");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "cycle" {
            for _ in 0..CYCLES {
                lock.release().expect("release");
                lock.acquire().expect("acquire again");
                mark(&log, "R");
            }
            say("DONE");
        }
    }
    std::process::exit(0);
}

/// W: on `wait`, says `WAITING <thread id>`, waits for the lock, marks
/// the log, releases and says `GOT`.
fn waiter() {
    let (lock, log) = args();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "wait" {
            // `/proc/thread-self` names `<pid>/task/<tid>`.
            let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
            let tid = me
                .file_name()
                .expect("thread id")
                .to_string_lossy()
                .into_owned();
            say(&format!("WAITING {tid}"));
            lock.acquire().expect("acquire");
            mark(&log, "W");
            lock.release().expect("release");
            say("GOT");
        }
    }
    std::process::exit(0);
}

/// H: takes the lock, says `HELD`; on `release`, releases it and says
/// `RELEASED`.
fn holder() {
    let (lock, _) = args();
    lock.acquire().expect("acquire");
    say("HELD");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "release" {
            lock.release().expect("release");
            say("RELEASED");
        }
    }
    std::process::exit(0);
}

/// Where a waiting thread sleeps.
#[derive(Clone, Copy)]
enum Asleep {
    /// At the head of the queue, waiting for the lock itself: in `flock`
    /// (`Os`) or in `poll` on its watch (`Mkdir`, `Link`).
    AtTheHead(LockStrategy),
    /// Behind the head, waiting for the gate: on a condition variable
    /// (`futex`), while its helper thread blocks on the gate.
    BehindTheHead,
}

/// Waits (bounded) until thread `tid` of `pid` sleeps where `how` says: a
/// thread merely asleep (on a lock of the standard library's, say) is not
/// yet waiting in the queue. On x86-64 the system call it sleeps in is
/// read from `/proc`; elsewhere, any sleep counts.
fn until_asleep(pid: u32, tid: &str, how: Asleep) {
    let task = format!("/proc/{pid}/task/{tid}");
    // x86-64 system call numbers: flock 73, poll 7, ppoll 271, futex 202.
    let expected: &[&str] = match how {
        Asleep::AtTheHead(LockStrategy::Os) => &["73"],
        Asleep::AtTheHead(_) => &["7", "271"],
        Asleep::BehindTheHead => &["202"],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(format!("{task}/stat")).expect("read the waiter's stat");
        // The state follows the command name in parentheses.
        let state = text.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        let call = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
        let number = call.split_whitespace().next().unwrap_or_default();
        let there = !cfg!(target_arch = "x86_64") || expected.contains(&number);
        if state == Some("S") && there {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never slept where expected: {text} (system call: {call})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `SIGSTOP` to `p` and waits (bounded) until its thread `tid` has
/// stopped: until then it may still take a lock released meanwhile (the
/// signal is queued when `kill` returns, not yet acted on).
fn stop(p: &common::Proc, tid: &str) {
    p.signal("STOP");
    let stat = format!("/proc/{}/task/{tid}/stat", p.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&stat).expect("read the waiter's stat");
        if text.rsplit_once(") ").map(|(_, rest)| &rest[..1]) == Some("T") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waiter never stopped: {text}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A lock in a directory of its own, and the log its holders mark.
struct Scene {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    lock: String,
    log: String,
    strategy: LockStrategy,
}

impl Scene {
    fn new(strategy: LockStrategy, name: &str) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |file: &str| dir.path().join(file).to_str().expect("utf-8").to_owned();
        Scene {
            lock: at(name),
            log: at("log"),
            dir: dir.path().to_owned(),
            _dir: dir,
            strategy,
        }
    }

    /// A child in `role` on this lock; `extra` arguments after the log.
    fn spawn(&self, role: &str, extra: &[&str]) -> common::Proc {
        let mut args = vec![self.strategy.as_str(), &self.lock, &self.log];
        args.extend_from_slice(extra);
        spawn(role, &args)
    }

    /// A holder (role `fair-holder`) that has taken the lock.
    fn holder(&self) -> common::Proc {
        let mut h = self.spawn("fair-holder", &[]);
        h.expect("HELD");
        h
    }

    /// A waiter (role `fair-waiter`, with `extra` arguments) that waits for
    /// the lock, asleep where `how` says; and its waiting thread's id.
    fn waiter(&self, extra: &[&str], how: Asleep) -> (common::Proc, String) {
        let mut w = self.spawn("fair-waiter", extra);
        let tid = wait_in(&mut w, how);
        (w, tid)
    }

    /// What the holders marked in the log so far.
    fn marks(&self) -> String {
        std::fs::read_to_string(&self.log).expect("log")
    }
}

/// Tells the waiter `w` to wait for the lock and waits (bounded) until it
/// sleeps where `how` says; its waiting thread's id.
fn wait_in(w: &mut common::Proc, how: Asleep) -> String {
    w.send("wait");
    let tid = w.expect("WAITING");
    until_asleep(w.pid(), &tid, how);
    tid
}

#[rstest]
fn a_waiting_process_gets_the_lock_within_two_hand_offs(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let scene = Scene::new(strategy, "fair.lock");
    let mut r = scene.spawn("fair-reasker", &[]);
    let mut w = scene.spawn("fair-waiter", &[]);
    r.expect("HELD");
    for round in 0..ROUNDS {
        let before = scene.marks().len();
        wait_in(&mut w, Asleep::AtTheHead(strategy));
        r.send("cycle");
        r.expect("DONE");
        let after = scene.marks();
        let turns = &after[before..];
        let position = turns.find('W');
        assert!(
            position.is_some_and(|p| p <= 1),
            "{strategy}, round {round}: the holders after R's first release were {turns:?} \
             (R took the lock back {} times before the waiting process got it)",
            position.unwrap_or(turns.len()),
        );
        w.expect("GOT");
    }
    w.close_stdin();
    r.close_stdin();
    assert!(w.wait().success());
    assert!(r.wait().success());
}

/// The head of the queue (the first waiter) dies, or stops; the waiter
/// behind it must not be held up: at once when the head died (the kernel
/// drops its gate), within the turnstile's patience when it stopped.
#[rstest]
fn a_dead_or_stopped_head_of_the_queue_holds_nobody_up(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
    #[values("kill", "stop")] fate: &str,
) {
    let scene = Scene::new(strategy, "head.lock");
    let mut h = scene.holder();
    let (mut head, head_tid) = scene.waiter(&[], Asleep::AtTheHead(strategy));
    let (mut next, _) = scene.waiter(&[], Asleep::BehindTheHead);
    match fate {
        "kill" => head.signal("KILL"),
        _ => stop(&head, &head_tid),
    }
    let released = Instant::now();
    h.send("release");
    h.expect("RELEASED");
    // Dead: at once. Stopped: after two looks at a free lock, half a
    // second apart (the default poll interval's patience), and a margin.
    let bound = Duration::from_secs(if fate == "kill" { 5 } else { 10 });
    match next.poll_event(bound) {
        Some((event, _)) => assert_eq!(event, "GOT"),
        None => panic!(
            "{strategy}: the waiter behind a {fate} head did not get the free lock within {bound:?}"
        ),
    }
    let waited = released.elapsed();
    assert_eq!(
        scene.marks(),
        "W",
        "{strategy}: only the second waiter held the lock"
    );
    eprintln!("{strategy} {fate}: the next waiter got the lock {waited:?} after the release");
    // A stopped head, resumed, takes the lock in its turn.
    if fate == "stop" {
        head.signal("CONT");
        head.expect("GOT");
        assert_eq!(scene.marks(), "WW");
        head.close_stdin();
        assert!(head.wait().success());
    }
}

/// A holder dies with a `Mkdir` or `Link` lock; the head of the queue is
/// a process that does not break stale locks. The process waiting behind
/// it breaks the dead holder's lock itself (so the head takes it), and
/// then gets its turn: the queue never stands behind a dead holder.
#[rstest]
fn a_waiter_behind_the_head_breaks_a_dead_holders_lock(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let scene = Scene::new(strategy, "dead.lock");
    let mut dead = scene.spawn("fair-dead-holder", &[]);
    dead.expect("HELD");
    dead.signal("KILL");
    let (mut head, _) = scene.waiter(&["nobreak"], Asleep::AtTheHead(strategy));
    let mut next = scene.spawn("fair-waiter", &[]);
    next.send("wait");
    next.expect("WAITING");
    // The head takes the lock once the waiter behind it broke it; then
    // the waiter gets it. Bounded: the patience (half a second) and a
    // margin.
    for (who, p) in [("head", &mut head), ("next", &mut next)] {
        match p.poll_event(Duration::from_secs(15)) {
            Some((event, _)) => assert_eq!(event, "GOT", "{strategy}: {who}"),
            None => panic!("{strategy}: the {who} waiter never got the lock"),
        }
    }
    assert_eq!(scene.marks(), "WW");
}

/// A free lock whose head of the queue is stopped (`SIGSTOP`, after it
/// took the gate to wait for a holder that then released), and a handle
/// of this process on it. The scene, the stopped head (resume it with
/// `CONT`; it then says `GOT`) and the handle.
fn behind_a_stopped_head(strategy: LockStrategy) -> (Scene, common::Proc, LockFile) {
    let scene = Scene::new(strategy, "stopped.lock");
    let mut h = scene.holder();
    let (head, tid) = scene.waiter(&[], Asleep::AtTheHead(strategy));
    stop(&head, &tid);
    h.send("release");
    h.expect("RELEASED");
    let ours = LockOptions::new()
        .strategy(strategy)
        .open(&scene.lock)
        .expect("open");
    (scene, head, ours)
}

/// A head of the queue that stopped (`SIGSTOP`) while it waits does not
/// keep try-once acquires away from a free lock for ever: once they have
/// seen it free for twice the patience, they take it.
#[rstest]
fn try_once_acquires_pass_a_stopped_head(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, mut head, ours) = behind_a_stopped_head(strategy);
    let start = Instant::now();
    let bound = Duration::from_secs(15);
    let mut tries = 0;
    loop {
        tries += 1;
        match ours.try_acquire() {
            Ok(()) => break,
            Err(e) if e.is_contended() => {}
            Err(e) => panic!("{strategy}: {e}"),
        }
        assert!(
            start.elapsed() < bound,
            "{strategy}: {tries} try-once acquires over {bound:?} never passed a stopped head"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ours.release().expect("release");
    head.signal("CONT");
    head.expect("GOT");
}

/// CPU time of the calling thread so far (`/proc/thread-self/schedstat`).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// A timed acquire behind a stopped head succeeds once the lock has been
/// seen free for twice the patience, and a later one, right after, passes
/// the same stuck head at once instead of learning it again.
#[rstest]
fn timed_acquires_pass_a_stopped_head_and_remember_it(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, mut head, ours) = behind_a_stopped_head(strategy);
    ours.acquire_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{strategy}: a wait behind a stopped head: {e}"));
    ours.release().expect("release");
    // Shorter than the two patiences it took to learn that the head is
    // stuck: it passes on what this handle saw.
    ours.acquire_timeout(Duration::from_millis(400))
        .unwrap_or_else(|e| panic!("{strategy}: a short wait behind a known stuck head: {e}"));
    ours.release().expect("release");
    head.signal("CONT");
    head.expect("GOT");
}

/// The gate file is removed (a cleaner of old files in /tmp) while a
/// handle keeps its look at the old one; a new head waits at the new gate.
/// The handle's wait sleeps rather than spins: it learns from its failed
/// claim that the gate it looks at is not the path's.
#[rstest]
fn a_removed_gate_file_makes_no_waiter_spin(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let scene = Scene::new(strategy, "gone.lock");
    let ours = LockOptions::new()
        .strategy(strategy)
        .open(&scene.lock)
        .expect("open");
    // One acquisition opens (and keeps) this handle's look at the gate.
    ours.acquire().expect("acquire");
    ours.release().expect("release");
    std::fs::remove_file(scene.dir.join(".gone.lock.gate")).expect("remove the gate");
    let mut h = scene.holder();
    let (mut head, _) = scene.waiter(&[], Asleep::AtTheHead(strategy));
    let (cpu, start) = (thread_cpu(), Instant::now());
    let waited = ours.acquire_timeout(Duration::from_secs(2));
    let (cpu, wall) = (thread_cpu() - cpu, start.elapsed());
    assert!(
        matches!(waited, Err(ref e) if e.is_contended()),
        "{strategy}: {waited:?}"
    );
    assert!(
        cpu < wall / 4,
        "{strategy}: the wait burnt {cpu:?} of CPU in {wall:?}"
    );
    h.send("release");
    h.expect("RELEASED");
    head.expect("GOT");
}
