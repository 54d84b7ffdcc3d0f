//! Multi-process figures: hand-off latency, throughput and fairness, the
//! CPU a waiter burns, and the cost of a liveness check with many
//! processes on the machine.
//!
//! ```sh
//! cargo bench --bench handoff            # all of it (about a minute)
//! cargo bench --bench handoff -- quick   # fewer rounds
//! cargo bench --bench handoff --features tokio   # and the async API's hand-off
//! cargo bench --bench handoff --features redis,etcd -- net   # the network locks only
//! ```
//!
//! With `redis` or `etcd`, the harness also starts a `redis-server` and a
//! single-member `etcd` of its own (on free loopback ports, data in a
//! temporary directory) and times the hand-off of `RedisLock` and
//! `EtcdLock` beside one request's round trip to the same server.
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

/// CPU time of this process's live threads so far (Linux: nanoseconds
/// from each thread's schedstat).
fn cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .sum()
}

/// A lock of the ping-pong: a `LockFile` (fair or not), or the bare system
/// calls of a strategy (its floor).
enum Pong {
    Lock(Box<portalock::LockFile>),
    /// `flock` on a file kept open, blocking; `polite`: the releaser
    /// pauses 500 us before it asks again, so that the waiter always wins
    /// (the kernel's wake-up alone, without the race it loses half the
    /// time).
    Flock(std::fs::File, bool),
    /// `mkdir` and a record in it; a waiter sleeps on an inotify watch of
    /// the directory.
    Mkdir(std::path::PathBuf),
    /// A claim file with the record, `link`ed to the lock path; a waiter
    /// sleeps on an inotify watch of the lock file.
    Link(std::path::PathBuf),
    /// A `LockFile` taken through its async API (feature `tokio`), on a
    /// current-thread runtime with its time driver only.
    #[cfg(feature = "tokio")]
    Async(Box<portalock::LockFile>, tokio::runtime::Runtime),
    /// A `RedisLock` (feature `redis`); the path is the server's URL.
    #[cfg(feature = "redis")]
    Redis(Box<portalock::RedisLock>),
    /// An `EtcdLock` (feature `etcd`); the path is the member's URL.
    #[cfg(feature = "etcd")]
    Etcd(Box<portalock::EtcdLock>),
}

impl Pong {
    fn open(kind: &str, path: &str) -> Pong {
        match kind {
            "floor-flock" | "floor-flock-polite" => Pong::Flock(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .expect("open"),
                kind.ends_with("polite"),
            ),
            "floor-mkdir" => Pong::Mkdir(path.into()),
            #[cfg(feature = "redis")]
            "redis" => Pong::Redis(Box::new(
                portalock::RedisLock::new(path, "bench").expect("redis lock"),
            )),
            #[cfg(feature = "etcd")]
            "etcd" => Pong::Etcd(Box::new(
                portalock::EtcdLock::new(&[path], "bench").expect("etcd lock"),
            )),
            "floor-link" => Pong::Link(path.into()),
            #[cfg(feature = "tokio")]
            _ if kind.starts_with("async-") => {
                let strategy: LockStrategy = kind["async-".len()..].parse().expect("strategy");
                Pong::Async(
                    Box::new(open(strategy, path)),
                    tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("runtime"),
                )
            }
            _ => {
                let (strategy, fair) = match kind.strip_suffix("-unfair") {
                    Some(s) => (s, false),
                    None => (kind, true),
                };
                let strategy: LockStrategy = strategy.parse().expect("strategy");
                Pong::Lock(Box::new(
                    LockOptions::new()
                        .strategy(strategy)
                        .fair(fair)
                        .open(path)
                        .expect("open"),
                ))
            }
        }
    }

    fn acquire(&self) {
        match self {
            Pong::Lock(lock) => lock.acquire().expect("acquire"),
            #[cfg(feature = "tokio")]
            Pong::Async(lock, runtime) => runtime
                .block_on(lock.acquire_async())
                .expect("acquire_async"),
            #[cfg(feature = "redis")]
            Pong::Redis(lock) => lock.acquire().expect("acquire"),
            #[cfg(feature = "etcd")]
            Pong::Etcd(lock) => lock.acquire().expect("acquire"),
            Pong::Flock(file, _) => file.lock().expect("flock"),
            Pong::Mkdir(path) => loop {
                match std::fs::create_dir(path) {
                    Ok(()) => {
                        std::fs::write(path.join("r.json"), RECORD).expect("record");
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => wait_gone(path),
                    Err(e) => panic!("mkdir: {e}"),
                }
            },
            Pong::Link(path) => {
                let claim = path.with_extension(format!("{}.claim", std::process::id()));
                std::fs::write(&claim, RECORD).expect("claim");
                loop {
                    match std::fs::hard_link(&claim, path) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => wait_gone(path),
                        Err(e) => panic!("link: {e}"),
                    }
                }
                std::fs::remove_file(&claim).expect("unlink claim");
            }
        }
    }

    fn release(&self) {
        match self {
            Pong::Lock(lock) => lock.release().expect("release"),
            #[cfg(feature = "tokio")]
            Pong::Async(lock, _) => lock.release().expect("release"),
            #[cfg(feature = "redis")]
            Pong::Redis(lock) => lock.release().expect("release"),
            #[cfg(feature = "etcd")]
            Pong::Etcd(lock) => lock.release().expect("release"),
            Pong::Flock(file, polite) => {
                file.unlock().expect("unlock");
                if *polite {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Pong::Mkdir(path) => {
                std::fs::remove_file(path.join("r.json")).expect("unlink record");
                std::fs::remove_dir(path).expect("rmdir");
            }
            Pong::Link(path) => std::fs::remove_file(path).expect("unlink"),
        }
    }
}

const RECORD: &[u8] = br#"{"v":1,"token":"0123456789abcdef0123456789abcdef","pid":4242,"hostname":"build-7","strategy":"mkdir"}"#;

/// Sleeps until what `path` names is removed (at most 100 ms): an inotify
/// watch on it, as a waiter of the strategy does.
#[cfg(target_os = "linux")]
fn wait_gone(path: &std::path::Path) {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    thread_local! {
        static FD: std::os::fd::OwnedFd =
            inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).expect("inotify");
    }
    FD.with(|fd| {
        let flags = WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ATTRIB
            | WatchFlags::DONT_FOLLOW;
        let Ok(wd) = inotify::add_watch(fd, path, flags) else {
            return;
        };
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&ts));
        let _ = inotify::remove_watch(fd, wd);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut reader = inotify::Reader::new(fd, &mut buf);
        while reader.next().is_ok() {}
    });
}

#[cfg(not(target_os = "linux"))]
fn wait_gone(_path: &std::path::Path) {
    std::thread::sleep(Duration::from_millis(1));
}

// ---------------------------------------------------------------- children

fn child(role: &str, args: &[String]) {
    if role == "ping" {
        return child_ping(args);
    }
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
            let lock = match args[3].as_str() {
                "unfair" => LockOptions::new()
                    .strategy(strategy)
                    .fair(false)
                    .open(path)
                    .expect("open"),
                _ => open(strategy, path),
            };
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

/// Ping-pong: on "go", take the lock, hold it for the given microseconds,
/// release it and ask again at once, the given number of times; then say
/// the times asked, taken and released.
fn child_ping(args: &[String]) {
    let lock = Pong::open(&args[0], &args[1]);
    let n: usize = args[2].parse().expect("n");
    let hold = Duration::from_micros(args[3].parse().expect("hold us"));
    say("READY");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let ask = now_ns();
        lock.acquire();
        let got = now_ns();
        std::thread::sleep(hold);
        let rel = now_ns();
        lock.release();
        events.push(format!("{ask},{got},{rel}"));
    }
    say(&format!("EVENTS {}", events.join(" ")));
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

/// What a ping-pong of two processes showed.
struct PingPong {
    median: f64,
    p99: f64,
    handoffs: usize,
    barges: usize,
}

/// Two processes ping-pong one lock: each takes it, holds it for `hold_us`,
/// releases it and asks again at once, `n` times. After a release, either
/// the other process (which was waiting) gets the lock, a hand-off timed
/// from just before the release to just after the acquisition, or the
/// releaser takes it back: a barge.
fn pingpong(kind: &str, dir: &str, n: usize, hold_us: u64) -> PingPong {
    pingpong_at(kind, &format!("{dir}/ping-{kind}.lock"), n, hold_us)
}

/// [`pingpong`] of the lock at `path` (a server's URL for a network lock).
fn pingpong_at(kind: &str, path: &str, n: usize, hold_us: u64) -> PingPong {
    let (n_s, hold_s) = (n.to_string(), hold_us.to_string());
    let mut procs: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn("ping", &[kind, path, &n_s, &hold_s]))
        .collect();
    for p in &procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    // (time, is a release, who); and each process's waits (asked, got).
    let mut events: Vec<(u128, bool, usize)> = Vec::new();
    let mut waits: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
    for (who, p) in procs.iter().enumerate() {
        for triple in p.expect("EVENTS").split_whitespace() {
            let t: Vec<u128> = triple
                .split(',')
                .map(|x| x.parse().expect("time"))
                .collect();
            let (ask, got, rel) = (t[0], t[1], t[2]);
            events.push((got, false, who));
            events.push((rel, true, who));
            waits[who].push((ask, got));
        }
    }
    for p in procs {
        p.finish();
    }
    events.sort();
    let mut lat = Vec::new();
    let mut barges = 0;
    for (i, &(t, release, who)) in events.iter().enumerate() {
        if !release {
            continue;
        }
        // Only releases while the other process was waiting (it had asked
        // and not yet got the lock): the others are no contest.
        let other = 1 - who;
        if !waits[other].iter().any(|&(ask, got)| ask < t && t < got) {
            continue;
        }
        if let Some(&(t1, _, next)) = events[i + 1..].iter().find(|e| !e.1) {
            if next == who {
                barges += 1;
            } else {
                lat.push(t1.saturating_sub(t) as f64 / 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    PingPong {
        median: if lat.is_empty() {
            f64::NAN
        } else {
            percentile(&lat, 0.5)
        },
        p99: if lat.is_empty() {
            f64::NAN
        } else {
            percentile(&lat, 0.99)
        },
        handoffs: lat.len(),
        barges,
    }
}

/// Throughput and fairness of `n` processes cycling for `ms`.
fn throughput(kind: &str, dir: &str, n: usize, ms: u64) -> (f64, u64, u64) {
    let path = format!("{dir}/tp-{kind}-{n}.lock");
    let s = kind;
    let ms_s = ms.to_string();
    let mut procs: Vec<Proc> = (0..n)
        .map(|_| {
            let (strategy, fairness) = match s.strip_suffix("-unfair") {
                Some(strategy) => (strategy, "unfair"),
                None => (s, "fair"),
            };
            Proc::spawn("cycle", &[strategy, &path, &ms_s, fairness])
        })
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

/// CPU a waiter burns while the lock is held elsewhere for `hold`, with
/// `churn` a thread of this process creating and removing files in the
/// lock's directory meanwhile, as fast as it can. Milliseconds of CPU per
/// second of waiting, and the files churned per second.
fn waiter_cpu(strategy: LockStrategy, dir: &str, hold: Duration, churn: bool) -> (f64, f64) {
    let path = format!("{dir}/cpu-{strategy}-{churn}.lock");
    let holder = open(strategy, &path);
    holder.acquire().expect("hold");
    let w = Proc::spawn("waiter", &[strategy.as_str(), &path]);
    w.expect("READY");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let churned = std::thread::scope(|scope| {
        let churner = churn.then(|| {
            scope.spawn(|| {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = format!("{dir}/churn-{}", n % 64);
                    let _ = std::fs::write(&f, b"x");
                    let _ = std::fs::remove_file(&f);
                    n += 1;
                }
                n
            })
        });
        std::thread::sleep(hold);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churner.map_or(0, |c| c.join().expect("churner"))
    });
    holder.release().expect("release");
    let line = w.expect("CPU");
    w.finish();
    let mut it = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    let (cpu_ns, waited_ns) = (it.next().unwrap_or(0.0), it.next().unwrap_or(1.0));
    (
        cpu_ns / 1e6 / (waited_ns / 1e9),
        churned as f64 / hold.as_secs_f64(),
    )
}

/// `portalock run LOCK -- true` against util-linux `flock LOCK true`:
/// milliseconds per invocation, the medians of `rounds` rounds of `n`
/// invocations each, alternating.
fn run_against_flock(dir: &str, rounds: usize, n: usize) -> Option<(f64, f64)> {
    let portalock = option_env!("CARGO_BIN_EXE_portalock")?;
    let lock = format!("{dir}/run.lock");
    let time = |program: &str, args: &[&str]| -> Option<f64> {
        let start = Instant::now();
        for _ in 0..n {
            let status = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .status()
                .ok()?;
            if !status.success() {
                return None;
            }
        }
        Some(start.elapsed().as_secs_f64() * 1000.0 / n as f64)
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        theirs.push(time("flock", &[&lock, "true"])?);
        ours.push(time(portalock, &["run", &lock, "--", "true"])?);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    Some((percentile(&ours, 0.5), percentile(&theirs, 0.5)))
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
    // `pingpong=KIND,KIND`: only those ping-pongs (to profile one).
    if let Some(kinds) =
        std::env::args().find_map(|a| a.strip_prefix("pingpong=").map(str::to_owned))
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_str().expect("utf-8 temp dir").to_owned();
        for kind in kinds.split(',') {
            let p = pingpong(kind, &dir, if quick { 100 } else { 300 }, 2000);
            println!(
                "{kind}: median {:.1} us, p99 {:.1} us, barges {} of {}",
                p.median,
                p.p99,
                p.barges,
                p.barges + p.handoffs
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "net") {
        network_locks(quick);
        return;
    }
    let rounds = if quick { 100 } else { 300 };
    let ms = if quick { 300 } else { 1000 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 temp dir").to_owned();
    let strategies = [LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link];

    println!("## Ping-pong hand-off ({rounds} acquisitions per process, hold 2 ms, {dir})\n");
    println!("| lock | median | p99 | barges |\n| --- | --- | --- | --- |");
    for kind in [
        "floor-flock",
        "floor-flock-polite",
        "os",
        "os-unfair",
        "floor-mkdir",
        "mkdir",
        "mkdir-unfair",
        "floor-link",
        "link",
        "link-unfair",
        #[cfg(feature = "tokio")]
        "async-os",
        #[cfg(feature = "tokio")]
        "async-mkdir",
        #[cfg(feature = "tokio")]
        "async-link",
    ] {
        let p = pingpong(kind, &dir, rounds, 2000);
        let share = 100.0 * p.barges as f64 / (p.barges + p.handoffs).max(1) as f64;
        println!(
            "| {kind} | {:.1} us | {:.1} us | {share:.1} % ({} of {}) |",
            p.median,
            p.p99,
            p.barges,
            p.barges + p.handoffs
        );
    }

    println!("\n## Throughput and fairness ({ms} ms per run)\n");
    println!("| lock | processes | acquisitions/s | fewest per process | most per process |");
    println!("| --- | --- | --- | --- | --- |");
    for s in strategies {
        for kind in [s.as_str().to_owned(), format!("{s}-unfair")] {
            for n in [2, 4, 8] {
                let (rate, min, max) = throughput(&kind, &dir, n, ms);
                println!("| {kind} | {n} | {rate:.0} | {min} | {max} |");
            }
        }
    }

    println!("\n## CPU burnt by a waiter (lock held elsewhere for 1 s)\n");
    println!(
        "| strategy | idle directory | busy directory (files created and removed per second) |"
    );
    println!("| --- | --- | --- |");
    for s in strategies {
        let (idle, _) = waiter_cpu(s, &dir, Duration::from_secs(1), false);
        let (busy, rate) = waiter_cpu(s, &dir, Duration::from_secs(1), true);
        println!("| {s} | {idle:.2} ms/s | {busy:.2} ms/s ({rate:.0}/s) |");
    }

    println!("\n## `portalock run` against `flock(1)`\n");
    match run_against_flock(&dir, 4, if quick { 50 } else { 200 }) {
        Some((ours, theirs)) => println!(
            "| `portalock run L -- true` | `flock L true` | ratio |\n| --- | --- | --- |\n\
             | {ours:.3} ms | {theirs:.3} ms | {:.2}x |",
            ours / theirs
        ),
        None => println!("(skipped: build with `--features cli`, and util-linux `flock` on PATH)"),
    }

    network_locks(quick);

    println!("\n## Liveness check of an owner record\n");
    println!("| extra processes | time per check |\n| --- | --- |");
    for extra in [0, 2000] {
        println!("| {extra} | {:.1} us |", liveness(extra));
    }
}

// ------------------------------------------------------- network locks

/// A server process of the harness, killed when dropped.
#[cfg(any(feature = "redis", feature = "etcd"))]
struct Server(Child);

#[cfg(any(feature = "redis", feature = "etcd"))]
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(any(feature = "redis", feature = "etcd"))]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Median of `n` timings of `f`, in microseconds.
#[cfg(any(feature = "redis", feature = "etcd"))]
fn median_us(n: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

/// The hand-off of `RedisLock` and `EtcdLock` between two processes, each
/// beside the round trip of one request to its server (for etcd, a write:
/// one commit through its log).
fn network_locks(quick: bool) {
    #[cfg(any(feature = "redis", feature = "etcd"))]
    {
        let rounds = if quick { 50 } else { 200 };
        let tmp = tempfile::tempdir().expect("tempdir");
        println!("\n## Network locks: ping-pong hand-off ({rounds} acquisitions per process, hold 2 ms, servers on loopback)\n");
        println!("| lock | median | p99 | barges | one request (floor) |\n| --- | --- | --- | --- | --- |");
        #[cfg(feature = "redis")]
        redis_figures(rounds);
        #[cfg(feature = "etcd")]
        etcd_figures(rounds, tmp.path());
        drop(tmp);
    }
    #[cfg(not(any(feature = "redis", feature = "etcd")))]
    let _ = quick;
}

#[cfg(any(feature = "redis", feature = "etcd"))]
fn print_row(kind: &str, p: &PingPong, floor: f64) {
    println!(
        "| {kind} | {:.1} us | {:.1} us | {} of {} | {floor:.1} us |",
        p.median,
        p.p99,
        p.barges,
        p.barges + p.handoffs
    );
}

#[cfg(feature = "redis")]
fn redis_figures(rounds: usize) {
    let port = free_port();
    let Ok(child) = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    else {
        println!("| redis | (skipped: no redis-server on PATH) | | | |");
        return;
    };
    let _server = Server(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).expect("url");
    let deadline = Instant::now() + WAIT;
    let mut con = loop {
        if let Ok(con) = client.get_connection_with_timeout(Duration::from_millis(200)) {
            break con;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    };
    let floor = median_us(200, || {
        let _: String = redis::cmd("PING").query(&mut con).expect("PING");
    });
    print_row("redis", &pingpong_at("redis", &url, rounds, 2000), floor);
}

#[cfg(feature = "etcd")]
fn etcd_figures(rounds: usize, dir: &std::path::Path) {
    let (client_port, peer_port) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let Ok(child) = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!("| etcd | (skipped: no etcd on PATH) | | | |");
        return;
    };
    let _server = Server(child);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime.block_on(async {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await {
                if c.put("bench-ready", "1", None).await.is_ok() {
                    break c;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let floor = median_us(200, || {
        runtime
            .block_on(client.put("bench-floor", "1", None))
            .expect("put");
    });
    print_row("etcd", &pingpong_at("etcd", &endpoint, rounds, 2000), floor);
}
