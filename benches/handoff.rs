//! Multi-process figures: hand-off latency, throughput and fairness, the
//! CPU a waiter burns, and the cost of a liveness check with many
//! processes on the machine.
//!
//! ```sh
//! cargo bench --bench handoff            # all of it (about a minute)
//! cargo bench --bench handoff -- quick   # fewer rounds
//! ```
//!
//! The harness re-runs its own executable as the contending processes
//! (the role is in `PORTALOCK_BENCH_ROLE`) and talks to them over pipes.
//! Times across processes are wall-clock nanoseconds (`SystemTime`), read
//! on one machine.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portalock::{LockOptions, LockStrategy, OwnerRecord};

const ROLE: &str = "PORTALOCK_BENCH_ROLE";
const WAIT: Duration = Duration::from_secs(60);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn open(strategy: LockStrategy, path: &str) -> portalock::LockFile {
    LockOptions::new()
        .strategy(strategy)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

/// CPU time of this process so far (Linux: nanoseconds from schedstat).
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

// ---------------------------------------------------------------- children

fn child(role: &str, args: &[String]) {
    let strategy: LockStrategy = args[0].parse().expect("strategy");
    let path = &args[1];
    match role {
        // Ping-pong: acquire, say GOT <t>; on "release" say REL <t> and
        // release; on "again" wait for the lock again; until input ends.
        "pingpong" => {
            let lock = open(strategy, path);
            let mut input = std::io::stdin().lock().lines();
            loop {
                lock.acquire().expect("acquire");
                say(&format!("GOT {}", now_ns()));
                if !matches!(input.next(), Some(Ok(_))) {
                    return;
                }
                say(&format!("REL {}", now_ns()));
                lock.release().expect("release");
                if !matches!(input.next(), Some(Ok(_))) {
                    return;
                }
            }
        }
        // Throughput: on "go", cycle for the given milliseconds, say the
        // count.
        "cycle" => {
            let lock = open(strategy, path);
            let ms: u64 = args[2].parse().expect("ms");
            say("READY");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let end = Instant::now() + Duration::from_millis(ms);
            let mut n = 0u64;
            while Instant::now() < end {
                lock.acquire().expect("acquire");
                n += 1;
                lock.release().expect("release");
            }
            say(&format!("COUNT {n}"));
        }
        // A waiter: wait for the lock (held elsewhere), say the CPU burnt.
        "waiter" => {
            let lock = open(strategy, path);
            say("READY");
            let before = cpu_time();
            let started = Instant::now();
            lock.acquire().expect("acquire");
            let waited = started.elapsed();
            let cpu = cpu_time().saturating_sub(before);
            say(&format!("CPU {} {}", cpu.as_nanos(), waited.as_nanos()));
            lock.release().expect("release");
        }
        other => panic!("unknown role {other}"),
    }
}

// ------------------------------------------------------------------ parent

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(role: &str, args: &[&str]) -> Proc {
        let exe = std::env::current_exe().expect("exe");
        let mut child = Command::new(exe)
            .args(args)
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            stdin,
            lines,
        }
    }

    fn expect(&self, word: &str) -> String {
        let line = self.lines.recv_timeout(WAIT).expect("child answered");
        let (w, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        assert_eq!(w, word, "{line}");
        rest.to_owned()
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    fn finish(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Hand-off latency: one process releases, the other was waiting.
fn handoff(strategy: LockStrategy, dir: &str, rounds: usize) -> (f64, f64) {
    let path = format!("{dir}/handoff-{strategy}.lock");
    let s = strategy.as_str();
    let mut a = Proc::spawn("pingpong", &[s, &path]);
    a.expect("GOT");
    let mut b = Proc::spawn("pingpong", &[s, &path]);
    // Let b reach its wait (it cannot get the lock before a releases).
    std::thread::sleep(Duration::from_millis(50));
    let mut lat = Vec::with_capacity(rounds);
    let (mut holder, mut waiter) = (&mut a, &mut b);
    for _ in 0..rounds {
        holder.send("release");
        let t0: u128 = holder.expect("REL").parse().expect("t0");
        let t1: u128 = waiter.expect("GOT").parse().expect("t1");
        lat.push(t1.saturating_sub(t0) as f64 / 1000.0);
        // The old holder waits for the lock again; give it time to get
        // into its wait before the next release is timed.
        holder.send("again");
        std::thread::sleep(Duration::from_millis(5));
        std::mem::swap(&mut holder, &mut waiter);
    }
    a.finish();
    b.finish();
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Throughput and fairness of `n` processes cycling for `ms`.
fn throughput(strategy: LockStrategy, dir: &str, n: usize, ms: u64) -> (f64, u64, u64) {
    let path = format!("{dir}/tp-{strategy}-{n}.lock");
    let s = strategy.as_str();
    let ms_s = ms.to_string();
    let mut procs: Vec<Proc> = (0..n)
        .map(|_| Proc::spawn("cycle", &[s, &path, &ms_s]))
        .collect();
    for p in &procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    let counts: Vec<u64> = procs
        .iter()
        .map(|p| p.expect("COUNT").parse().expect("count"))
        .collect();
    for p in procs {
        p.finish();
    }
    let total: u64 = counts.iter().sum();
    let per_sec = total as f64 * 1000.0 / ms as f64;
    (
        per_sec,
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

/// CPU a waiter burns while the lock is held elsewhere for `hold`.
fn waiter_cpu(strategy: LockStrategy, dir: &str, hold: Duration) -> f64 {
    let path = format!("{dir}/cpu-{strategy}.lock");
    let holder = open(strategy, &path);
    holder.acquire().expect("hold");
    let w = Proc::spawn("waiter", &[strategy.as_str(), &path]);
    w.expect("READY");
    std::thread::sleep(hold);
    holder.release().expect("release");
    let line = w.expect("CPU");
    w.finish();
    let mut it = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    let (cpu_ns, waited_ns) = (it.next().unwrap_or(0.0), it.next().unwrap_or(1.0));
    // Milliseconds of CPU per second of waiting.
    cpu_ns / 1e6 / (waited_ns / 1e9)
}

/// Mean time of one liveness check, with `extra` idle processes running.
fn liveness(extra: usize) -> f64 {
    let sleepers: Vec<Child> = (0..extra)
        .filter_map(|_| {
            Command::new("sleep")
                .arg("120")
                .stdin(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    let probe = tempfile::tempdir().expect("tempdir");
    let lock = open(
        LockStrategy::Mkdir,
        &format!("{}/l", probe.path().display()),
    );
    lock.acquire().expect("acquire");
    let record: OwnerRecord = lock.owner().expect("owner").expect("record");
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(record.liveness());
    }
    let each = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    each
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        child(&role, &args);
        return;
    }
    // `cargo bench` passes `--bench`; anything else is ours.
    let quick = std::env::args().any(|a| a == "quick");
    let rounds = if quick { 50 } else { 300 };
    let ms = if quick { 300 } else { 1000 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 temp dir").to_owned();
    let strategies = [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link];

    println!("## Hand-off latency ({rounds} hand-offs, {dir})\n");
    println!("| strategy | median | p99 |\n| --- | --- | --- |");
    for s in strategies {
        let (med, p99) = handoff(s, &dir, rounds);
        println!("| {s} | {med:.1} us | {p99:.1} us |");
    }

    println!("\n## Throughput and fairness ({ms} ms per run)\n");
    println!("| strategy | processes | acquisitions/s | fewest per process | most per process |");
    println!("| --- | --- | --- | --- | --- |");
    for s in strategies {
        for n in [2, 4, 8] {
            let (rate, min, max) = throughput(s, &dir, n, ms);
            println!("| {s} | {n} | {rate:.0} | {min} | {max} |");
        }
    }

    println!("\n## CPU burnt by a waiter (lock held elsewhere for 1 s)\n");
    println!("| strategy | CPU per second of waiting |\n| --- | --- |");
    for s in strategies {
        let ms_per_s = waiter_cpu(s, &dir, Duration::from_secs(1));
        println!("| {s} | {ms_per_s:.2} ms |");
    }

    println!("\n## Liveness check of an owner record\n");
    println!("| extra processes | time per check |\n| --- | --- |");
    for extra in [0, 2000] {
        println!("| {extra} | {:.1} us |", liveness(extra));
    }
}
