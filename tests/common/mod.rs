//! Helpers shared by the integration tests: child processes that take locks.
//!
//! A test binary re-runs itself as a child: `spawn` starts the current test
//! executable with the role in an environment variable and asks the test
//! harness to run only the test named `child`, which every test file that
//! spawns children defines as `fn child() { common::child_entry() }`. In a
//! normal test run that test does nothing.
//!
//! Children talk to the parent in lines: they print `PL:<EVENT> <data>` on
//! standard output and read commands from standard input. Every wait of the
//! parent is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use portalock::{Error, LockFile, LockOptions, LockStrategy};

pub mod fixture;
pub mod proxy;

const ROLE_ENV: &str = "PORTALOCK_TEST_ROLE";
const ARGS_ENV: &str = "PORTALOCK_TEST_ARGS";
const SEP: char = '\u{1f}';

/// How long the parent waits for any one event from a child.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Proc`] waits for one event from its child: [`EVENT_TIMEOUT`],
/// or `PORTALOCK_TEST_EVENT_TIMEOUT` seconds where the environment says
/// (the SMB lanes: a client there can wait half a minute for the other
/// client to give up its lease on a file).
fn child_timeout() -> Duration {
    std::env::var("PORTALOCK_TEST_EVENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(EVENT_TIMEOUT, Duration::from_secs)
}

/// A child test process.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    role: String,
}

/// Starts a child in `role` with `args`.
pub fn spawn(role: &str, args: &[&str]) -> Proc {
    let exe = std::env::current_exe().expect("test executable path");
    let mut cmd = Command::new(exe);
    cmd.args(CHILD_ARGS);
    spawn_command(cmd, role, args)
}

/// The arguments that make this test executable run as a child.
pub const CHILD_ARGS: [&str; 4] = ["--exact", "child", "--nocapture", "--test-threads=1"];

/// The command line of a child in `role`, for a program that runs it (the
/// `portalock run` tool): this test executable and [`CHILD_ARGS`]. The
/// role itself travels in the environment: pass the command to
/// [`spawn_command`] with the role.
pub fn child_command_line() -> Vec<String> {
    let exe = std::env::current_exe().expect("test executable path");
    let mut line = vec![exe.to_str().expect("utf-8 test path").to_owned()];
    line.extend(CHILD_ARGS.iter().map(|a| (*a).to_owned()));
    line
}

/// Starts `cmd`, with the role `role` and `args` in its environment (so
/// that a child of this test executable that it starts plays the role),
/// its standard input and output piped to the returned `Proc`.
pub fn spawn_command(mut cmd: Command, role: &str, args: &[&str]) -> Proc {
    cmd.env(ROLE_ENV, role)
        .env(ARGS_ENV, args.join(&SEP.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_retrying(&mut cmd).expect("spawn child process");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness may have written "test child ... " on this line
            // before the child's first event.
            // (A child behind a terminal ends its lines with "\r\n".)
            if let Some(at) = line.find("PL:") {
                if tx
                    .send(line[at + 3..].trim_end_matches('\r').to_owned())
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    Proc {
        child,
        stdin,
        lines,
        role: role.to_owned(),
    }
}

/// Starts `cmd`. Wine, under load, sometimes fails to start a process
/// ("internal error"): a few tries, then the error.
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if attempt < 3 && e.kind() != std::io::ErrorKind::NotFound => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Proc {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the event `name` and returns its data; fails the test if
    /// the child says something else, exits, or stays silent too long.
    pub fn expect(&mut self, name: &str) -> String {
        let timeout = child_timeout();
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let (event, data) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                assert_eq!(event, name, "child {} said {line:?}", self.role);
                data.to_owned()
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} did not say {name} within {timeout:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                panic!(
                    "child {} exited ({status:?}) before saying {name}",
                    self.role
                )
            }
        }
    }

    /// Waits for the next event, whatever it is, and returns its name and
    /// data; fails the test if the child exits or stays silent too long.
    pub fn next_event(&mut self) -> (String, String) {
        match self.lines.recv_timeout(child_timeout()) {
            Ok(line) => {
                let (event, data) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                (event.to_owned(), data.to_owned())
            }
            Err(e) => panic!("child {} said nothing more: {e:?}", self.role),
        }
    }

    /// The next event if the child says one within `within`, else `None`.
    pub fn poll_event(&mut self, within: Duration) -> Option<(String, String)> {
        let line = self.lines.recv_timeout(within).ok()?;
        let (event, data) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        Some((event.to_owned(), data.to_owned()))
    }

    /// Closes the child's standard input (many roles end then).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Sends one command line to the child.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin is open");
        writeln!(stdin, "{command}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// Waits (bounded) for the child to exit and returns its status.
    pub fn wait(mut self) -> ExitStatus {
        self.stdin.take();
        self.wait_open()
    }

    /// Waits (bounded) for the child to exit on its own, with its standard
    /// input still open, and returns its status.
    pub fn wait_open(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not exit within {EVENT_TIMEOUT:?}",
                self.role
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends signal `name` (`STOP`, `CONT`, ...) to the child, through
    /// `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A test that failed half way must not leave children behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The entry point of child processes; does nothing in a normal test run.
pub fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let args = std::env::var(ARGS_ENV).unwrap_or_default();
    let args: Vec<&str> = args.split(SEP).collect();
    let code = match role.as_str() {
        "hold" => hold(&args),
        "count" => count(&args),
        "fence-log" => fence_log(&args),
        "count-loose" => count_loose(&args),
        "run-count" => run_count(&args),
        "race" => race(&args),
        "waiter" => waiter(&args),
        "bump" => bump(&args),
        "exit" => args[0].parse().expect("exit code"),
        "wait" => wait_for_eof(),
        "flock" => flock_hold(&args),
        "shared" => shared_hold(&args),
        "reader" => reader(&args),
        "rw-mix" => rw_mix(&args),
        "read-loop" => read_loop(&args),
        "file-count" => file_count(&args),
        "slot" => slot(&args),
        #[cfg(feature = "redis")]
        "redis-hold" => redis_roles::hold(&args),
        #[cfg(feature = "redis")]
        "redis-count" => redis_roles::count(&args),
        #[cfg(feature = "etcd")]
        "etcd-hold" => etcd_roles::hold(&args),
        #[cfg(feature = "etcd")]
        "etcd-count" => etcd_roles::count(&args),
        #[cfg(feature = "etcd")]
        "etcd-queue" => etcd_roles::queue(&args),
        #[cfg(all(feature = "etcd", feature = "failpoints"))]
        "etcd-pause" => etcd_roles::pause(&args),
        "pidfile" => pidfile(&args),
        "liveness-starved" => liveness_starved(&args),
        #[cfg(unix)]
        "fork-drop" => fork_drop(&args),
        #[cfg(unix)]
        "fork-after-release" => fork_after_release(&args),
        #[cfg(target_os = "linux")]
        "spawn-on-fd0" => spawn_on_fd0(&args),
        #[cfg(all(unix, feature = "cli"))]
        "sigint-count" => sigint_count(),
        #[cfg(unix)]
        "umask-hold" => {
            // `umask-hold MASK STRATEGY PATH`: `hold` under that umask.
            let mask = u32::from_str_radix(args[0], 8).expect("octal umask");
            rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask as _));
            hold(&args[1..])
        }
        other => {
            eprintln!("unknown child role {other}");
            2
        }
    };
    std::process::exit(code);
}

/// Says `READY` and waits for the line `go`; false if input ends or says
/// something else.
fn ready_then_go() -> bool {
    say("READY");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim() == "go"
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PL:{line}");
    let _ = out.flush();
}

/// The options a child's `STRATEGY` argument names: a strategy, then
/// optional `+` flags: `trust` (`trust_os_locks(true)`), `sync`
/// (`sync(true)`), `temp` (`remove_on_release(true)`), `unfair`
/// (`fair(false)`), `fence` (`fencing(true)`), `modeNNN` (`permissions(0oNNN)`). `temp-os` is
/// `os+temp`.
pub fn options_for(spec: &str) -> LockOptions {
    let spec = if spec == "temp-os" { "os+temp" } else { spec };
    let mut parts = spec.split('+');
    let strategy: LockStrategy = parts.next().unwrap_or_default().parse().expect("strategy");
    let mut options = LockOptions::new();
    options
        .strategy(strategy)
        .poll_interval(Duration::from_millis(5));
    for flag in parts {
        match flag {
            "trust" => options.trust_os_locks(true),
            "sync" => options.sync(true),
            "temp" => options.remove_on_release(true),
            "unfair" => options.fair(false),
            "fence" => options.fencing(true),
            // `mode664`: `permissions(0o664)`
            mode if mode.starts_with("mode") => {
                options.permissions(u32::from_str_radix(&mode[4..], 8).expect("octal mode"))
            }
            other => panic!("unknown strategy flag {other:?} in {spec:?}"),
        };
    }
    options
}

fn open(strategy: &str, path: &str) -> LockFile {
    options_for(strategy).open(path).expect("open lock")
}

/// `hold STRATEGY PATH [LEASE_MS]`: takes the lock (with a lease if given;
/// the `on_lost` callback says `ONLOST`), says `ACQUIRED <pid>`, then
/// serves commands until end of input: `check` says `CHECKED <result of
/// ensure_held>`, `release` says `RELEASED <result>`.
fn hold(args: &[&str]) -> i32 {
    let mut options = options_for(args[0]);
    options.on_lost(|_| say("ONLOST"));
    if let Some(ms) = args.get(2) {
        let ms: u64 = ms.parse().expect("lease in ms");
        options.lease(Duration::from_millis(ms));
    }
    let lock = options.open(args[1]).expect("open lock");
    if let Err(e) = lock.acquire() {
        say(&format!("ERROR {e}"));
        return 1;
    }
    say(&format!("ACQUIRED {}", std::process::id()));
    serve(&lock);
    0
}

/// Answers `check`, `try`, `tryshared` (a shared try, let go at once),
/// `release`, `wait MS` (`acquire_timeout`,
/// saying `WAITED <result>`) and `owner` (`OWNER <pid> <liveness>` of the
/// holder as this process judges it, or `OWNER none`) on `lock` until end
/// of input.
fn serve(lock: &LockFile) {
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("owner") => match lock.owner() {
                Ok(Some(owner)) => say(&format!(
                    "OWNER {} {:?}",
                    owner.pid,
                    lock.owner_liveness(&owner)
                )),
                Ok(None) => say("OWNER none"),
                Err(e) => say(&format!("OWNER error {e}")),
            },
            Ok("check") => say(&format!("CHECKED {}", outcome(lock.ensure_held()))),
            Ok("fence") => say(&format!("FENCE {}", lock.fence().unwrap_or(0))),
            Ok("try") => say(&format!("TRIED {}", outcome(lock.try_acquire()))),
            Ok("tryshared") => say(&format!(
                "TRIEDSHARED {}",
                outcome(lock.try_lock_shared().and_then(|g| g.release()))
            )),
            Ok("release") => say(&format!("RELEASED {}", outcome(lock.release()))),
            Ok(line) if line.starts_with("wait ") => {
                let ms: u64 = line[5..].parse().expect("wait MS");
                let waited = lock.acquire_timeout(Duration::from_millis(ms));
                say(&format!("WAITED {}", outcome(waited)));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// `waiter STRATEGY PATH GRACE_MS`: as `race`, with that grace period.
fn waiter(args: &[&str]) -> i32 {
    let grace: u64 = args[2].parse().expect("grace in ms");
    let lock = options_for(args[0])
        .grace(Duration::from_millis(grace))
        .open(args[1])
        .expect("open lock");
    say("READY");
    serve(&lock);
    0
}

/// `Ok`, or the error's variant name (`LockLost`, `WouldBlock`, ...).
fn outcome(result: Result<(), Error>) -> String {
    match result {
        Ok(()) => "Ok".to_owned(),
        Err(e) => {
            if !e.is_contended() {
                // The whole error, for the log of a failing test.
                eprintln!("child {}: {e}", std::process::id());
            }
            let debug = format!("{e:?}");
            debug
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}

/// `race STRATEGY PATH`: says `READY`, then serves `try`, `check` and
/// `release` (see `serve`).
fn race(args: &[&str]) -> i32 {
    let lock = open(args[0], args[1]);
    say("READY");
    serve(&lock);
    0
}

/// `count STRATEGY LOCK COUNTER N`: says `READY`, waits for `go`, then N
/// times under the lock: marks the critical section occupied (failing if it
/// already is), reads the counter, yields, writes it plus one. Says `DONE`.
fn count(args: &[&str]) -> i32 {
    let lock = open(args[0], args[1]);
    let n: u32 = args[3].parse().expect("iterations");
    count_under(
        n,
        Path::new(args[2]),
        || lock.lock().map_err(|e| e.to_string()),
        |guard| {
            // A failed release names the acquisition and the moment, to
            // be found in a server's trace.
            let token = guard.token().to_owned();
            guard.release().map_err(|e| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!(
                    "{e} (token {token}, at {:.3} s since the epoch)",
                    now.as_secs_f64()
                )
            })
        },
    )
}

/// `fence-log STRATEGY LOCK LOG N`: N times takes the lock with a
/// fencing token, and appends the token to LOG (one line) if it is larger
/// than the last one there, as a fenced resource accepts it; otherwise
/// says `REGRESSED <last> <token>` and exits 3. Says `DONE` at the end.
fn fence_log(args: &[&str]) -> i32 {
    let mut options = options_for(args[0]);
    options.fencing(true);
    let lock = options.open(args[1]).expect("open lock");
    let log = Path::new(args[2]);
    let n: u32 = args[3].parse().expect("iterations");
    for _ in 0..n {
        let guard = match lock.lock() {
            Ok(guard) => guard,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        let token = guard.fence().expect("a fencing token");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let last: u64 = text
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if token <= last {
            say(&format!("REGRESSED {last} {token}"));
            return 3;
        }
        if std::env::var_os("PORTALOCK_TEST_COUNTER_BY_RENAME").is_some() {
            // (see `write_counter`: a whole new log renamed over the old)
            let new = log.with_extension(format!("new.{}", std::process::id()));
            std::fs::write(&new, format!("{text}{token}\n")).expect("write the new log");
            std::fs::rename(&new, log).expect("rename the new log over the old");
        } else {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(log)
                .expect("open the log");
            file.write_all(format!("{token}\n").as_bytes())
                .expect("append");
        }
        if let Err(e) = guard.release() {
            say(&format!("ERROR release: {e}"));
            return 1;
        }
    }
    say("DONE");
    0
}

/// `count-loose STRATEGY LOCK COUNTER N`: as `count`, but an overlap does
/// not stop it: it counts them and increments anyway, as a program would
/// that trusts its lock. Says `OVERLAPS <n>` (the times it found another
/// process inside, or was told at release that another took the lock
/// meanwhile), then `DONE`. For negative controls: a lock that does not
/// exclude must show here.
fn count_loose(args: &[&str]) -> i32 {
    let lock = open(args[0], args[1]);
    let counter = Path::new(args[2]);
    let n: u32 = args[3].parse().expect("iterations");
    if !ready_then_go() {
        return 2;
    }
    let occupied = counter.with_extension("occupied");
    let mut overlaps = 0u32;
    for _ in 0..n {
        let guard = match lock.lock() {
            Ok(guard) => guard,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        let mine = std::fs::File::create_new(&occupied).is_ok();
        if !mine {
            overlaps += 1;
        }
        // Another writer may be half way through: what cannot be read
        // counts as nothing (an update lost, as it would be).
        let value: u64 = std::fs::read_to_string(counter)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        std::thread::yield_now();
        write_counter(counter, value + 1);
        if mine {
            let _ = std::fs::remove_file(&occupied);
        }
        match guard.release() {
            Ok(()) => {}
            Err(Error::LockLost { .. }) => overlaps += 1,
            Err(e) => {
                eprintln!("count-loose {}: release: {e}", std::process::id());
                say(&format!("ERROR {e}"));
                return 1;
            }
        }
    }
    say(&format!("OVERLAPS {overlaps}"));
    say("DONE");
    0
}

/// `run-count TOOL STRATEGY LOCK COUNTER N`: says `READY`, waits for
/// `go`, then N times runs `TOOL run --strategy STRATEGY LOCK -- <this
/// test executable as a bump child>`, failing if one does not exit 0.
/// Says `DONE`. The CLI's counter, from wherever this child runs.
fn run_count(args: &[&str]) -> i32 {
    let [tool, strategy, lock, counter, n] = args else {
        eprintln!("run-count: bad arguments {args:?}");
        return 2;
    };
    let n: u32 = n.parse().expect("iterations");
    if !ready_then_go() {
        return 2;
    }
    let command = child_command_line();
    for _ in 0..n {
        let status = Command::new(tool)
            .args(["run", "--strategy", strategy, lock, "--"])
            .args(&command)
            .env(ROLE_ENV, "bump")
            .env(ARGS_ENV, counter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            other => {
                say(&format!("ERROR portalock run: {other:?}"));
                return 1;
            }
        }
    }
    say("DONE");
    0
}

/// Drives `count` children: waits until all are ready, starts them
/// together, waits until all are done and exited successfully. Returns the
/// number in the counter file `counter` then.
pub fn run_counters(mut procs: Vec<Proc>, counter: &Path) -> u64 {
    for p in &mut procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    for p in &mut procs {
        p.expect("DONE");
    }
    for p in procs {
        assert!(p.wait().success());
    }
    std::fs::read_to_string(counter)
        .expect("read counter")
        .trim()
        .parse()
        .expect("the counter holds a number")
}

/// The body of the counting roles: says `READY`, waits for `go`, then N
/// times takes the lock (`take`), increments the counter file and lets go
/// (`give`); says `DONE`. Exit status 0, 1 (a lock error, said as
/// `ERROR`), 2 (no `go`) or 3 (an overlap).
fn count_under<G, E: std::fmt::Display>(
    n: u32,
    counter: &Path,
    mut take: impl FnMut() -> Result<G, E>,
    mut give: impl FnMut(G) -> Result<(), E>,
) -> i32 {
    if !ready_then_go() {
        return 2;
    }
    for _ in 0..n {
        let guard = match take() {
            Ok(guard) => guard,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        if !increment(counter) {
            return 3;
        }
        if let Err(e) = give(guard) {
            say(&format!("ERROR {e}"));
            return 1;
        }
    }
    say("DONE");
    0
}

/// `bump COUNTER`: one increment of the counter file, failing (exit 3) if
/// another process is inside the critical section: the command that
/// `portalock run` runs under the lock.
fn bump(args: &[&str]) -> i32 {
    if increment(Path::new(args[0])) {
        0
    } else {
        3
    }
}

/// One read-modify-write increment of the counter file, which loses
/// updates unless callers exclude each other; an occupancy marker beside it
/// catches two callers inside at once (says `OVERLAP`, returns false).
fn increment(counter: &Path) -> bool {
    let occupied = counter.with_extension("occupied");
    let mine = format!("{} {:?}", std::process::id(), std::time::SystemTime::now());
    match std::fs::File::create_new(&occupied) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(mine.as_bytes())
                .expect("write occupancy marker");
        }
        Err(e) => {
            // Say what the marker holds, to tell two callers inside (the
            // marker names the other one) from a client that answered
            // from its cache.
            let held = std::fs::read_to_string(&occupied);
            say(&format!(
                "OVERLAP create: {e} (kind {:?}); marker holds: {held:?}; me: {mine}",
                e.kind()
            ));
            return false;
        }
    }
    let value: u64 = std::fs::read_to_string(counter)
        .expect("read counter")
        .trim()
        .parse()
        .expect("counter holds a number");
    std::thread::yield_now();
    write_counter(counter, value + 1);
    std::fs::remove_file(&occupied).expect("clear occupancy marker");
    true
}

/// Writes `value` to the counter file: in place, or, where
/// `PORTALOCK_TEST_COUNTER_BY_RENAME` is set, as a new file renamed over
/// it (what the README asks of data kept under a lock on NFSv3, whose
/// clients tell a changed file by a time stamp as coarse as the server's
/// clock tick).
pub fn write_counter(counter: &Path, value: u64) {
    let text = format!("{value}\n");
    if std::env::var_os("PORTALOCK_TEST_COUNTER_BY_RENAME").is_some() {
        let new = counter.with_extension(format!("new.{}", std::process::id()));
        std::fs::write(&new, text).expect("write the new counter");
        std::fs::rename(&new, counter).expect("rename the new counter over the old");
    } else {
        std::fs::write(counter, text).expect("write counter");
    }
}

/// `flock PATH`: locks the open file PATH exclusively with
/// `portalock::flock`, says `LOCKED`, holds it until its input ends.
fn flock_hold(args: &[&str]) -> i32 {
    use portalock::flock::{lock, LockFlags};
    let file = std::fs::File::open(args[0]).expect("open");
    lock(&file, LockFlags::EXCLUSIVE).expect("lock");
    say("LOCKED");
    wait_for_eof()
}

/// `shared PATH`: takes the Os lock at PATH shared, says `SHARED`, holds
/// it until its input ends.
fn shared_hold(args: &[&str]) -> i32 {
    let lock = open("os", args[0]);
    let _guard = lock.lock_shared().expect("lock shared");
    say("SHARED");
    wait_for_eof()
}

/// `reader STRATEGY PATH [LEASE_MS]`: takes the lock at PATH shared (with
/// a lease if given), says `SHARED <pid>`, then serves `check` (`CHECKED
/// <result of ensure_held>`) and `release` (`RELEASED <result>`) until its
/// input ends.
fn reader(args: &[&str]) -> i32 {
    let mut options = options_for(args[0]);
    if let Some(ms) = args.get(2) {
        options.lease(Duration::from_millis(ms.parse().expect("lease in ms")));
    }
    let lock = options.open(args[1]).expect("open lock");
    let mut guard = match lock.lock_shared() {
        Ok(guard) => Some(guard),
        Err(e) => {
            say(&format!("ERROR {e}"));
            return 1;
        }
    };
    say(&format!("SHARED {}", std::process::id()));
    for line in std::io::stdin().lock().lines() {
        match (line.as_deref(), guard.as_ref()) {
            (Ok("check"), Some(g)) => say(&format!("CHECKED {}", outcome(g.ensure_held()))),
            (Ok("release"), Some(_)) => {
                let released = guard.take().map_or(Ok(()), |g| g.release());
                say(&format!("RELEASED {}", outcome(released)));
            }
            (Ok(_), _) => {}
            (Err(_), _) => break,
        }
    }
    0
}

/// `rw-mix STRATEGY LOCK DIR N [PROCS]`: says `READY`, waits for `go`,
/// (with PROCS, first holds a read with all PROCS processes at once,
/// see below), then N
/// times takes the lock, every third time exclusively and otherwise
/// shared. A writer makes the marker `DIR/w` (failing if it exists), finds
/// no reader's marker, increments the counter `DIR/counter` and removes
/// its marker; a reader makes `DIR/r.<pid>`, finds no `DIR/w`, counts the
/// other readers' markers, yields, and removes its marker. Exit 3 (saying
/// `OVERLAP ...`) on a marker where none may be; says `DONE <times another
/// reader was seen inside>` at the end.
fn rw_mix(args: &[&str]) -> i32 {
    let lock = open(args[0], args[1]);
    let dir = Path::new(args[2]);
    let n: u32 = args[3].parse().expect("iterations");
    if !ready_then_go() {
        return 2;
    }
    let readers_in = |dir: &Path, me: &str| {
        std::fs::read_dir(dir)
            .expect("list markers")
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("r.") && name != me
            })
            .count()
    };
    // First a read that every process holds at once (PROCS of them, from
    // the optional fifth argument): each makes its marker, waits until it
    // sees all of them, says so with a file `DIR/seen.<pid>`, and lets go
    // once every process has said so. Readers then overlap by
    // construction, not by chance; every wait is bounded.
    let mut overlapped = 0u32;
    if let Some(procs) = args.get(4) {
        let procs: usize = procs.parse().expect("process count");
        let count = |prefix: &str| {
            std::fs::read_dir(dir)
                .expect("list markers")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        };
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
            while !done() {
                if std::time::Instant::now() > deadline {
                    say(&format!("ERROR {what} did not happen"));
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            true
        };
        let guard = match lock.lock_shared() {
            Ok(guard) => guard,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        let me = format!("r.{}", std::process::id());
        std::fs::File::create_new(dir.join(&me)).expect("reader marker");
        if !until("all readers in", &|| count("r.") >= procs) {
            return 1;
        }
        overlapped += 1;
        std::fs::File::create_new(dir.join(format!("seen.{}", std::process::id())))
            .expect("seen marker");
        if !until("all readers seen", &|| count("seen.") >= procs) {
            return 1;
        }
        std::fs::remove_file(dir.join(&me)).expect("remove reader marker");
        if let Err(e) = guard.release() {
            say(&format!("ERROR {e}"));
            return 1;
        }
    }
    for i in 0..n {
        if i % 3 == 0 {
            let guard = match lock.lock() {
                Ok(guard) => guard,
                Err(e) => {
                    say(&format!("ERROR {e}"));
                    return 1;
                }
            };
            if let Err(e) = std::fs::File::create_new(dir.join("w")) {
                say(&format!("OVERLAP writer beside a writer: {e}"));
                return 3;
            }
            let readers = readers_in(dir, "");
            if readers > 0 {
                say(&format!("OVERLAP writer beside {readers} readers"));
                return 3;
            }
            if !increment(&dir.join("counter")) {
                return 3;
            }
            std::fs::remove_file(dir.join("w")).expect("remove writer marker");
            if let Err(e) = guard.release() {
                say(&format!("ERROR {e}"));
                return 1;
            }
        } else {
            let guard = match lock.lock_shared() {
                Ok(guard) => guard,
                Err(e) => {
                    say(&format!("ERROR {e}"));
                    return 1;
                }
            };
            let me = format!("r.{}", std::process::id());
            std::fs::File::create_new(dir.join(&me)).expect("reader marker");
            if dir.join("w").exists() {
                say("OVERLAP reader beside a writer");
                return 3;
            }
            if readers_in(dir, &me) > 0 {
                overlapped += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
            std::fs::remove_file(dir.join(&me)).expect("remove reader marker");
            if let Err(e) = guard.release() {
                say(&format!("ERROR {e}"));
                return 1;
            }
        }
    }
    say(&format!("DONE {overlapped}"));
    0
}

/// `read-loop STRATEGY LOCK HOLD_MS`: takes the lock shared, holds it
/// HOLD_MS, takes it shared again from a second handle before letting the
/// first go (so that this process alone keeps readers in without a gap),
/// and so on until its input ends; says `READING` once it first holds it,
/// and `READS <n>` at the end.
fn read_loop(args: &[&str]) -> i32 {
    let (a, b) = (open(args[0], args[1]), open(args[0], args[1]));
    let hold = Duration::from_millis(args[2].parse().expect("hold in ms"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().lines().count();
        stopper.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut held = match a.lock_shared() {
        Ok(guard) => guard,
        Err(e) => {
            say(&format!("ERROR {e}"));
            return 1;
        }
    };
    say("READING");
    let mut reads = 1u64;
    let mut next_is_b = true;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(hold);
        // The next read before this one ends: while no writer waits, the
        // readers never all leave at once.
        let next = if next_is_b {
            b.try_lock_shared()
        } else {
            a.try_lock_shared()
        };
        match next {
            Ok(guard) => {
                let old = std::mem::replace(&mut held, guard);
                drop(old);
                next_is_b = !next_is_b;
                reads += 1;
            }
            // A writer waits (or holds): let it in, then read again.
            Err(e) if e.is_contended() => {
                drop(held);
                held = match a.lock_shared() {
                    Ok(guard) => guard,
                    Err(e) => {
                        say(&format!("ERROR {e}"));
                        return 1;
                    }
                };
                next_is_b = true;
                reads += 1;
            }
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        }
    }
    drop(held);
    say(&format!("READS {reads}"));
    0
}

/// `file-count PATH N`: says `READY`, waits for `go`, then N times opens
/// PATH as a `LockedFile` and increments the number in it; says `DONE`.
fn file_count(args: &[&str]) -> i32 {
    use std::io::{Read, Seek, Write};
    let n: u32 = args[1].parse().expect("iterations");
    if !ready_then_go() {
        return 2;
    }
    for _ in 0..n {
        let mut file = portalock::LockedFile::options()
            .poll_interval(Duration::from_millis(5))
            .open(args[0])
            .expect("locked file");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        let value: u64 = text.trim().parse().unwrap_or(0);
        std::thread::yield_now();
        file.rewind().expect("rewind");
        file.set_len(0).expect("truncate");
        write!(file, "{}", value + 1).expect("write");
        file.release().expect("release");
    }
    say("DONE");
    0
}

/// `slot PREFIX N STRATEGY`: takes a slot of the semaphore of N slots at
/// PREFIX (waiting as long as it takes), says `SLOT <i>`, holds it until
/// its input ends.
fn slot(args: &[&str]) -> i32 {
    let n: usize = args[1].parse().expect("slots");
    let strategy: LockStrategy = args[2].parse().expect("strategy");
    let sem = portalock::BoundedSemaphore::new(
        args[0],
        n,
        LockOptions::new()
            .strategy(strategy)
            .poll_interval(Duration::from_millis(5)),
    )
    .expect("semaphore");
    let guard = sem.acquire().expect("slot");
    say(&format!("SLOT {}", guard.slot()));
    wait_for_eof();
    guard.release().expect("release slot");
    0
}

/// `pidfile PATH`: takes the PID file, says `PIDFILE`, holds it until its
/// input ends.
fn pidfile(args: &[&str]) -> i32 {
    let pidfile = portalock::PidFileLock::acquire(args[0]).expect("pid file");
    say("PIDFILE");
    wait_for_eof();
    pidfile.release().expect("release pid file");
    0
}

/// `wait`: says `STARTED <pid>`, then waits until its standard input ends.
fn wait_for_eof() -> i32 {
    say(&format!("STARTED {}", std::process::id()));
    let mut sink = String::new();
    while matches!(std::io::stdin().read_line(&mut sink), Ok(n) if n > 0) {
        sink.clear();
    }
    0
}

/// `liveness-starved RECORD...`: judges each owner record (JSON) once,
/// then again after opening files until none is left (`EMFILE`), and says
/// `LIVENESS <before> <after>` for each, in order.
fn liveness_starved(args: &[&str]) -> i32 {
    let records: Vec<portalock::OwnerRecord> = args
        .iter()
        .map(|json| portalock::OwnerRecord::parse(json.as_bytes()).expect("a record"))
        .collect();
    let before: Vec<_> = records.iter().map(|r| r.liveness()).collect();
    let mut hoard = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hoard.push(file),
            Err(e) => break e,
        }
        assert!(hoard.len() < 100_000, "no file descriptor limit");
    };
    assert_eq!(exhausted.raw_os_error(), Some(24), "EMFILE: {exhausted}");
    for (record, before) in records.iter().zip(before) {
        say(&format!("LIVENESS {before} {}", record.liveness()));
    }
    drop(hoard);
    0
}

/// `fork-drop STRATEGY PATH`: takes the lock, says `ACQUIRED <pid>`,
/// forks; the forked child drops its copy of the handle and exits at once.
/// Once it has exited, says `FORKED` and serves commands (see `serve`).
#[cfg(unix)]
fn fork_drop(args: &[&str]) -> i32 {
    let lock = open(args[0], args[1]);
    lock.acquire().expect("acquire");
    say(&format!("ACQUIRED {}", std::process::id()));
    // SAFETY: this process runs one test thread (`--test-threads=1`) and
    // the harness's main thread, which only waits for it; no lock of
    // portalock's is held by another thread at the fork. The child only
    // drops the handle and leaves with `_exit`, running no destructor or
    // handler of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(lock);
        // SAFETY: `_exit` ends the forked child without unwinding.
        unsafe { libc::_exit(0) };
    }
    let child = rustix::process::Pid::from_raw(pid).expect("child pid");
    let status = rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty())
        .expect("waitpid")
        .expect("a status");
    assert_eq!(status.1.exit_status(), Some(0), "the forked child failed");
    say("FORKED");
    serve(&lock);
    0
}

/// `fork-after-release STRATEGY PATH`: takes the lock and forks; the
/// parent releases the lock, then lets the child go on (a pipe); the child
/// takes the lock through a handle of its own, within a bound. Says `CHILD
/// <exit code>` (0 if the child got the lock).
#[cfg(unix)]
fn fork_after_release(args: &[&str]) -> i32 {
    use std::io::{Read, Write as _};
    let lock = open(args[0], args[1]);
    lock.acquire().expect("acquire");
    let (mut released, mut told) = std::io::pipe().expect("pipe");
    // SAFETY: as in `fork_drop`; the child reads a pipe, takes a lock and
    // leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(told);
        let mut byte = [0u8];
        let code = match released.read_exact(&mut byte) {
            Ok(()) => {
                let own = open(args[0], args[1]);
                match own.acquire_timeout(Duration::from_secs(5)) {
                    Ok(()) => 0,
                    Err(_) => 42,
                }
            }
            Err(_) => 43,
        };
        // SAFETY: `_exit` ends the forked child without unwinding.
        unsafe { libc::_exit(code) };
    }
    drop(released);
    lock.release().expect("release");
    told.write_all(b"x").expect("tell the child");
    let child = rustix::process::Pid::from_raw(pid).expect("child pid");
    let status = rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty())
        .expect("waitpid")
        .expect("a status");
    say(&format!("CHILD {}", status.1.exit_status().unwrap_or(-1)));
    0
}

/// `spawn-on-fd0 PATH`: with its standard input closed, takes an `Os` lock
/// (whose file then gets descriptor 0), hands it to a command started with
/// its input from /dev/null, and says `INHERITED yes` if the command has
/// the lock file open, else `INHERITED no`.
#[cfg(target_os = "linux")]
fn spawn_on_fd0(args: &[&str]) -> i32 {
    // SAFETY: this child process uses nothing that reads its standard
    // input; closing descriptor 0 makes the next open file take it.
    unsafe { libc::close(0) };
    let lock = open("os", args[0]);
    lock.acquire().expect("acquire");
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    let mut child = lock.spawn(&mut cmd).expect("spawn");
    let path = std::path::Path::new(args[0]);
    let inherited = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .expect("the command's descriptors")
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path));
    let _ = child.kill();
    let _ = child.wait();
    say(&format!(
        "INHERITED {}",
        if inherited { "yes" } else { "no" }
    ));
    0
}

/// `sigint-count`: says `READY <parent pid>`, then counts the `SIGINT`s it gets (saying
/// `GOT <n>` at each) until a `SIGTERM`, then says `COUNT <n>` and exits.
#[cfg(all(unix, feature = "cli"))]
fn sigint_count() -> i32 {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).expect("signals");
    say(&format!("READY {}", std::os::unix::process::parent_id()));
    let mut count = 0;
    for signal in signals.forever() {
        if signal == SIGINT {
            count += 1;
            say(&format!("GOT {count}"));
        } else {
            say(&format!("COUNT {count}"));
            return 0;
        }
    }
    1
}

/// Asserts that `result` is `Err(WouldBlock)` naming `pid` as the holder.
pub fn assert_would_block_by(result: Result<(), Error>, pid: u32) {
    match result {
        Err(Error::WouldBlock {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.pid, pid),
        other => panic!("expected WouldBlock naming pid {pid}, got {other:?}"),
    }
}

#[cfg(feature = "redis")]
mod redis_roles {
    use std::path::Path;
    use std::time::Duration;

    use super::{count_under, say};

    fn open(url: &str, name: &str, lease_ms: &str) -> portalock::RedisLock {
        let lease: u64 = lease_ms.parse().expect("lease in ms");
        portalock::RedisLock::options()
            .lease(Duration::from_millis(lease))
            .poll_interval(Duration::from_millis(50))
            .open(url, name)
            .expect("redis lock")
    }

    /// `redis-hold URL NAME LEASE_MS`: takes the lock, says `ACQUIRED <pid>
    /// <fence>`, then serves `check` (`CHECKED <ensure_held>`) and
    /// `release` (`RELEASED <result>`) until its input ends.
    pub(super) fn hold(args: &[&str]) -> i32 {
        let lock = open(args[0], args[1], args[2]);
        if let Err(e) = lock.acquire() {
            say(&format!("ERROR {e}"));
            return 1;
        }
        say(&format!(
            "ACQUIRED {} {}",
            std::process::id(),
            lock.fence().unwrap_or(0)
        ));
        super::serve_checks(|| lock.ensure_held(), || lock.release());
        0
    }

    /// `redis-count URL NAME COUNTER N`: says `READY`, waits for `go`, then
    /// N increments of the counter file under the lock; says `DONE`.
    pub(super) fn count(args: &[&str]) -> i32 {
        let lock = open(args[0], args[1], "5000");
        let n: u32 = args[3].parse().expect("iterations");
        count_under(
            n,
            Path::new(args[2]),
            || lock.lock(),
            |guard| guard.release(),
        )
    }
}

#[cfg(feature = "etcd")]
mod etcd_roles {
    use std::io::Write;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use portalock::{Error, EtcdLock};

    use super::{increment, outcome, ready_then_go, say, EVENT_TIMEOUT};

    fn open(endpoints: &str, name: &str, lease_s: &str) -> EtcdLock {
        let lease: u64 = lease_s.parse().expect("lease in s");
        let endpoints: Vec<&str> = endpoints.split(',').collect();
        EtcdLock::options()
            .lease(Duration::from_secs(lease))
            .open(&endpoints, name)
            .expect("etcd lock")
    }

    /// `etcd-hold ENDPOINTS NAME LEASE_S`: takes the lock, says `ACQUIRED
    /// <pid> <fence>`, then serves `check` (`CHECKED <ensure_held>`) and
    /// `release` (`RELEASED <result>`) until its input ends.
    pub(super) fn hold(args: &[&str]) -> i32 {
        let lock = open(args[0], args[1], args[2]);
        if let Err(e) = lock.acquire() {
            say(&format!("ERROR {e}"));
            return 1;
        }
        say(&format!(
            "ACQUIRED {} {}",
            std::process::id(),
            lock.fence().unwrap_or(0)
        ));
        super::serve_checks(|| lock.ensure_held(), || lock.release());
        0
    }

    /// `etcd-count ENDPOINTS NAME COUNTER N FENCES`: says `READY`, waits
    /// for `go`, then N times: takes the lock (an etcd error, as while the
    /// cluster elects a leader, is tried again, within a bound), increments
    /// the counter file, appends its fence to FENCES, and releases. Says
    /// `DONE`. Exit 0, 1 (a lock error, said as `ERROR`), 2 (no `go`) or 3
    /// (an overlap).
    pub(super) fn count(args: &[&str]) -> i32 {
        let lock = open(args[0], args[1], "4");
        let counter = Path::new(args[2]);
        let n: u32 = args[3].parse().expect("iterations");
        let fences = Path::new(args[4]);
        if !ready_then_go() {
            return 2;
        }
        for _ in 0..n {
            let until = Instant::now() + EVENT_TIMEOUT;
            let guard = loop {
                match lock.lock() {
                    Ok(guard) => break guard,
                    Err(Error::Etcd { .. }) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        say(&format!("ERROR {e}"));
                        return 1;
                    }
                }
            };
            if !increment(counter) {
                return 3;
            }
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(fences)
                .expect("open the fence log");
            writeln!(log, "{} {}", guard.fence(), std::process::id()).expect("log the fence");
            drop(log);
            match guard.release() {
                // Not reachable now: the lock goes with its lease.
                Ok(()) | Err(Error::Etcd { .. }) => {}
                Err(e) => {
                    say(&format!("ERROR {e}"));
                    return 1;
                }
            }
        }
        say("DONE");
        0
    }

    /// `etcd-pause ENDPOINTS NAME LEASE_S POINT RESUME`: stops the handle's
    /// runtime at the fault point POINT once (saying `PAUSED`) until the
    /// file RESUME exists, its keep-alive stalled with it. At
    /// `etcd.check.answered` it first takes the lock (`ACQUIRED <fence>`),
    /// then checks it; at `etcd.acquire.first` it takes a free lock. Says
    /// `RESULT <outcome>` of the call that paused.
    #[cfg(feature = "failpoints")]
    pub(super) fn pause(args: &[&str]) -> i32 {
        use std::sync::atomic::{AtomicBool, Ordering};
        let lock = open(args[0], args[1], args[2]);
        let point = args[3];
        let resume = std::path::PathBuf::from(args[4]);
        let checking = point == "etcd.check.answered";
        if checking {
            if let Err(e) = lock.acquire() {
                say(&format!("ERROR {e}"));
                return 1;
            }
            say(&format!("ACQUIRED {}", lock.fence().unwrap_or(0)));
        }
        let once = AtomicBool::new(false);
        fail::cfg_callback(point, move || {
            if once.swap(true, Ordering::SeqCst) {
                return;
            }
            say("PAUSED");
            let until = Instant::now() + EVENT_TIMEOUT * 2;
            while !resume.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .expect("configure the fault point");
        let result = if checking {
            lock.ensure_held()
        } else {
            lock.acquire_timeout(Duration::from_secs(30))
        };
        say(&format!("RESULT {}", outcome(result)));
        0
    }

    /// `etcd-queue ENDPOINTS NAME ORDER ID`: takes the lock, saying
    /// `WAITING` once it stands in the line; under the lock appends ID to
    /// ORDER; releases; says `DONE`.
    pub(super) fn queue(args: &[&str]) -> i32 {
        let endpoints: Vec<&str> = args[0].split(',').collect();
        let lock = EtcdLock::options()
            .lease(Duration::from_secs(10))
            .on_wait(|_| say("WAITING"))
            .open(&endpoints, args[1])
            .expect("etcd lock");
        let guard = match lock.lock() {
            Ok(guard) => guard,
            Err(e) => {
                say(&format!("ERROR {e}"));
                return 1;
            }
        };
        let mut order = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(args[2])
            .expect("open the order file");
        writeln!(order, "{}", args[3]).expect("append");
        drop(order);
        if let Err(e) = guard.release() {
            say(&format!("ERROR {e}"));
            return 1;
        }
        say("DONE");
        0
    }
}

/// Runs `cmd` to completion, its standard input empty and its outputs
/// read: (status, stdout, stderr). Bounded: a command still running after
/// [`EVENT_TIMEOUT`] is killed, and the test fails naming `what`.
pub fn run_to_end(cmd: &mut Command, what: &str) -> (ExitStatus, String, String) {
    use std::io::Read;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying(cmd).unwrap_or_else(|e| panic!("run {what}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {EVENT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// Serves `check` (says `CHECKED <outcome of check()>`) and `release`
/// (`RELEASED <outcome of release()>`) until standard input ends: the
/// network locks' holder roles.
#[cfg(any(feature = "redis", feature = "etcd"))]
fn serve_checks(check: impl Fn() -> Result<(), Error>, release: impl Fn() -> Result<(), Error>) {
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("check") => say(&format!("CHECKED {}", outcome(check()))),
            Ok("release") => say(&format!("RELEASED {}", outcome(release()))),
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
