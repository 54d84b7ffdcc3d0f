//! The `portalock` command-line tool, run as separate processes.
#![cfg(feature = "cli")]

mod common;

#[cfg(target_os = "linux")]
use std::io::Read;
#[cfg(target_os = "linux")]
use std::process::Stdio;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use camino::Utf8Path;
use portalock::{Error, LockFile, LockStrategy};
use rstest::rstest;
use serde_json::Value;

use common::fixture::scratch_root as scratch;
#[cfg(target_os = "linux")]
use common::spawn_retrying;
use common::{child_command_line, run_to_end, spawn, spawn_command, Proc, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

const TOOL: &str = env!("CARGO_BIN_EXE_portalock");

/// What one run of the tool did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn code(&self) -> i32 {
        self.status.code().expect("exited, not killed")
    }
}

/// Runs the tool with `args` (and `role` in the environment of a child it
/// starts) to completion, bounded.
fn tool(args: &[&str], role: Option<(&str, &[&str])>) -> Ran {
    let mut cmd = Command::new(TOOL);
    cmd.args(args);
    if let Some((role, role_args)) = role {
        cmd.env("PORTALOCK_TEST_ROLE", role)
            .env("PORTALOCK_TEST_ARGS", role_args.join("\u{1f}"));
    }
    let (status, stdout, stderr) = run_to_end(&mut cmd, &format!("portalock {args:?}"));
    Ran {
        status,
        stdout,
        stderr,
    }
}

/// `portalock run [OPTIONS] LOCK -- <this test executable as a child>`.
fn run_args<'a>(options: &[&'a str], lock: &'a str, child: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.push(lock);
    args.push("--");
    args.extend(child.iter().map(String::as_str));
    args
}

/// Starts `portalock run OPTIONS LOCK -- <child that waits>` and waits
/// until the command runs (so the lock is held).
fn hold_with_run(options: &[&str], lock: &Utf8Path) -> (Proc, u32) {
    let (proc, pid, _) = hold_with_run_command(options, lock);
    (proc, pid)
}

/// As [`hold_with_run`], also returning the command's PID.
fn hold_with_run_command(options: &[&str], lock: &Utf8Path) -> (Proc, u32, u32) {
    let line = child_command_line();
    let mut cmd = Command::new(TOOL);
    cmd.args(run_args(options, lock.as_str(), &line));
    let mut proc = spawn_command(cmd, "wait", &[]);
    let command = proc.expect("STARTED").parse().expect("the command's pid");
    let pid = proc.pid();
    (proc, pid, command)
}

fn status_json(strategy: &str, lock: &Utf8Path) -> (i32, Value) {
    let ran = tool(
        &["status", "--strategy", strategy, "--json", lock.as_str()],
        None,
    );
    let json: Value = serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json printed {:?}: {e}", ran.stdout));
    (ran.code(), json)
}

#[rstest]
fn run_excludes_across_concurrent_invocations(
    #[values("auto", "os", "mkdir", "link")] strategy: &str,
) {
    const LOOPS: usize = 4;
    const RUNS: usize = 8;
    let (_dir, root) = scratch();
    let lock = root.join("counter.lock");
    let counter = root.join("counter");
    std::fs::write(&counter, "0\n").expect("counter");
    let line = child_command_line();
    std::thread::scope(|scope| {
        for _ in 0..LOOPS {
            scope.spawn(|| {
                for _ in 0..RUNS {
                    let args = run_args(&["--strategy", strategy], lock.as_str(), &line);
                    let ran = tool(&args, Some(("bump", &[counter.as_str()])));
                    assert_eq!(ran.code(), 0, "{strategy}: {}", ran.stderr);
                }
            });
        }
    });
    let total: usize = std::fs::read_to_string(&counter)
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(total, LOOPS * RUNS, "{strategy}");
}

#[rstest]
fn try_once_exits_with_the_conflict_code_and_names_the_holder(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("busy.lock");
    let mut holder = spawn("hold", &[strategy, lock.as_str()]);
    let pid = holder.expect("ACQUIRED");
    let line = child_command_line();

    let args = run_args(
        &["--strategy", strategy, "--timeout", "0"],
        lock.as_str(),
        &line,
    );
    let ran = tool(&args, Some(("exit", &["0"])));
    assert_eq!(ran.code(), 75, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("pid {pid}")) && ran.stderr.contains(lock.as_str()),
        "{}",
        ran.stderr
    );
    assert_eq!(
        ran.stderr.trim().lines().count(),
        1,
        "one line: {}",
        ran.stderr
    );

    let args = run_args(
        &[
            "--strategy",
            strategy,
            "--timeout",
            "0.2",
            "--conflict-exit-code",
            "9",
        ],
        lock.as_str(),
        &line,
    );
    assert_eq!(tool(&args, Some(("exit", &["0"]))).code(), 9);
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
}

#[rstest]
fn status_json_reports_the_state_before_during_and_after_a_hold(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");

    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (0, &Value::from("free")));
    assert!(json["owner"].is_null());
    assert_eq!(json["path"], Value::from(lock.as_str()));
    assert_eq!(json["strategy"], Value::from(strategy));

    let (running, pid) = hold_with_run(&["--strategy", strategy], &lock);
    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (1, &Value::from("held")), "{json}");
    assert_eq!(json["owner"]["pid"], Value::from(pid));
    assert_eq!(json["owner"]["strategy"], Value::from(strategy));
    assert_eq!(json["liveness"], Value::from("alive"));

    assert!(running.wait().success());
    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (0, &Value::from("free")), "{json}");
}

#[rstest]
fn break_refuses_a_live_lock_and_removes_one_left_by_a_killed_run(
    #[values("mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");
    let (running, pid, command) = hold_with_run_command(&["--strategy", strategy], &lock);

    let ran = tool(&["break", "--strategy", strategy, lock.as_str()], None);
    assert_eq!(ran.code(), 1, "{}", ran.stderr);
    assert!(ran.stderr.contains(&format!("pid {pid}")), "{}", ran.stderr);
    let (_, json) = status_json(strategy, &lock);
    assert_eq!(json["state"], Value::from("held"));

    // portalock dies with the lock; its command ends when its input does
    // (the lock lasts as long as the command: see
    // `a_killed_run_keeps_the_lock_while_its_command_runs`). Once both
    // are gone, the lock is stale.
    running.kill();
    wait_until_gone(command);
    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (3, &Value::from("stale")), "{json}");
    assert_eq!(json["liveness"], Value::from("dead"));

    let ran = tool(&["break", "--strategy", strategy, lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(ran.stdout.contains(&format!("pid {pid}")), "{}", ran.stdout);
    let (code, _) = status_json(strategy, &lock);
    assert_eq!(code, 0);
}

#[test]
fn break_force_removes_a_live_lock() {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");
    let holder = LockFile::with_strategy(&lock, LockStrategy::Mkdir).expect("open");
    holder.acquire().expect("acquire");
    let ran = tool(
        &["break", "--strategy", "mkdir", "--force", lock.as_str()],
        None,
    );
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
}

#[rstest]
fn acquire_and_release_hold_a_lock_across_commands(#[values("mkdir", "link")] strategy: &str) {
    let (_dir, root) = scratch();
    let lock = root.join("script.lock");
    let me = std::process::id().to_string();

    // Without --pid, the lock is held for the parent: this test process.
    let ran = tool(&["acquire", "--strategy", strategy, lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (1, &Value::from("held")));
    assert_eq!(json["owner"]["pid"].to_string(), me);
    // Without --strategy, status reads the lock as what it is.
    let ran = tool(&["status", lock.as_str()], None);
    assert_eq!(ran.code(), 1, "{}", ran.stderr);
    assert!(ran.stdout.starts_with("held:"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(&format!("({strategy}) by pid {me}")),
        "{}",
        ran.stdout
    );
    let other = LockFile::with_strategy(&lock, strategy.parse().expect("strategy")).expect("open");
    assert!(matches!(other.try_acquire(), Err(Error::WouldBlock { .. })));

    // A second acquire waits: try once.
    let ran = tool(
        &[
            "acquire",
            "--strategy",
            strategy,
            "--timeout",
            "0",
            lock.as_str(),
        ],
        None,
    );
    assert_eq!(ran.code(), 75);

    // Only for the process it is held for.
    let ran = tool(
        &[
            "release",
            "--strategy",
            strategy,
            "--pid",
            "1",
            lock.as_str(),
        ],
        None,
    );
    assert_eq!(ran.code(), 1, "{}", ran.stderr);
    let ran = tool(&["release", "--strategy", strategy, lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let (code, _) = status_json(strategy, &lock);
    assert_eq!(code, 0);
    let ran = tool(&["release", "--strategy", strategy, lock.as_str()], None);
    assert_eq!(ran.code(), 1, "releasing a free lock: {}", ran.stderr);
    other.try_acquire().expect("free again");
}

#[test]
fn acquire_refuses_os_and_a_pid_that_does_not_run() {
    let (_dir, root) = scratch();
    let lock = root.join("x.lock");
    let ran = tool(&["acquire", "--strategy", "os", lock.as_str()], None);
    assert_eq!(ran.code(), 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("mkdir or link"), "{}", ran.stderr);
    let ran = tool(
        &[
            "acquire",
            "--strategy",
            "mkdir",
            "--pid",
            "4000000000",
            lock.as_str(),
        ],
        None,
    );
    assert_eq!(ran.code(), 74, "{}", ran.stderr);
    assert!(!lock.exists());
}

#[rstest]
#[case(0)]
#[case(7)]
#[case(42)]
fn the_commands_exit_status_is_passed_through(#[case] code: i32) {
    let (_dir, root) = scratch();
    let lock = root.join("x.lock");
    let line = child_command_line();
    let args = run_args(&[], lock.as_str(), &line);
    let ran = tool(&args, Some(("exit", &[&code.to_string()])));
    assert_eq!(ran.code(), code, "{}", ran.stderr);
    // Released afterwards.
    let after = LockFile::new(&lock).expect("open");
    after.try_acquire().expect("free after the run");
}

#[test]
fn a_command_that_does_not_exist_is_127_and_releases_the_lock() {
    let (_dir, root) = scratch();
    let lock = root.join("x.lock");
    let ran = tool(
        &["run", lock.as_str(), "--", "portalock-no-such-command"],
        None,
    );
    assert_eq!(ran.code(), 127, "{}", ran.stderr);
    assert!(ran.stderr.contains("portalock-no-such-command"));
    LockFile::new(&lock)
        .expect("open")
        .try_acquire()
        .expect("free");
}

#[test]
fn bad_input_is_one_clear_line_naming_the_path() {
    let (_dir, root) = scratch();
    let missing = root.join("no").join("such").join("dir").join("x.lock");
    let ran = tool(&["run", missing.as_str(), "--", "true"], None);
    assert_eq!(ran.code(), 74);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    assert!(ran.stderr.contains(missing.as_str()), "{}", ran.stderr);
    // A directory where a file lock would be.
    let dir = root.join("adir");
    std::fs::create_dir(&dir).expect("dir");
    let ran = tool(&["status", "--strategy", "link", dir.as_str()], None);
    assert_eq!(ran.code(), 74);
    assert!(ran.stderr.contains("directory"), "{}", ran.stderr);
    // Usage errors.
    assert_eq!(tool(&["run", "x.lock"], None).code(), 2);
    assert_eq!(
        tool(&["run", "--timeout", "soon", "x.lock", "--", "true"], None).code(),
        2
    );
}

#[cfg(unix)]
#[rstest]
fn sigterm_goes_to_the_command_and_the_lock_is_released_after_it(
    #[values("os", "mkdir")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");
    let (mut running, _) = hold_with_run(&["--strategy", strategy], &lock);
    running.signal("TERM");
    // The command's input stays open: only the signal can end it.
    let status = running.wait_open();
    // portalock itself survived the signal and exited with the command's
    // status: killed by SIGTERM (15), 128 + 15.
    assert_eq!(status.code(), Some(143), "{status:?}");
    let (code, _) = status_json(strategy, &lock);
    assert_eq!(code, 0, "released");
}

#[test]
fn the_wait_is_reported_with_the_holder() {
    let (_dir, root) = scratch();
    let lock = root.join("slow.lock");
    let mut holder = spawn("hold", &["mkdir", lock.as_str()]);
    let pid = holder.expect("ACQUIRED");
    let line = child_command_line();
    let args = run_args(
        &["--strategy", "mkdir", "--timeout", "1.5"],
        lock.as_str(),
        &line,
    );
    let ran = tool(&args, Some(("exit", &["0"])));
    assert_eq!(ran.code(), 75);
    assert!(
        ran.stderr.contains("portalock: waiting 1s for")
            && ran.stderr.contains(&format!("held by pid {pid}")),
        "{}",
        ran.stderr
    );
    let args = run_args(
        &["--strategy", "mkdir", "--timeout", "1.5", "--quiet"],
        lock.as_str(),
        &line,
    );
    let ran = tool(&args, Some(("exit", &["0"])));
    assert!(!ran.stderr.contains("portalock: waiting"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
}

#[test]
fn slots_admit_n_commands_at_once() {
    let (_dir, root) = scratch();
    let prefix = root.join("slots");
    let options = portalock::LockOptions::new();
    let sem = portalock::BoundedSemaphore::new(&prefix, 2, &options).expect("semaphore");
    let line = child_command_line();
    let args = run_args(&["--slots", "2", "--timeout", "0"], prefix.as_str(), &line);
    let a = sem.try_acquire().expect("a");
    // One slot of two is free: the command runs.
    assert_eq!(tool(&args, Some(("exit", &["5"]))).code(), 5);
    let b = sem.try_acquire().expect("b");
    // None is free: busy, and the message names the slot locks (not the
    // prefix alone, which is no file), as `status` of the prefix does.
    let ran = tool(&args, Some(("exit", &["5"])));
    assert_eq!(ran.code(), 75, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("all 2 slots") && ran.stderr.contains(&format!("{prefix}.1")),
        "{}",
        ran.stderr
    );
    let status = tool(&["status", prefix.as_str()], None);
    assert_eq!(status.code(), 1, "{}", status.stdout);
    let me = format!("by pid {}", std::process::id());
    for i in 0..2 {
        let line = format!("held: {prefix}.{i} {me}");
        assert!(
            status.stdout.contains(&line),
            "no {line:?} in {}",
            status.stdout
        );
    }
    drop((a, b));
    assert_eq!(tool(&["status", prefix.as_str()], None).code(), 0);
    assert_eq!(tool(&args, Some(("exit", &["5"]))).code(), 5);
    assert_eq!(
        tool(&["run", "--slots", "0", "x", "--", "true"], None).code(),
        2
    );
}

/// Waits (bounded) until the process `pid` has exited.
fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while runs(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn runs(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let mut sys = System::new();
    let pid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing(),
    );
    sys.process(pid)
        .is_some_and(|p| !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead))
}

/// `portalock run` killed (the OOM killer, `timeout -s KILL`) while its
/// command runs: the lock lasts as long as the command, as with flock(1).
#[cfg(target_os = "linux")]
#[rstest]
fn a_killed_run_keeps_the_lock_while_its_command_runs(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");
    let line = child_command_line();
    let mut cmd = Command::new(TOOL);
    cmd.args(run_args(&["--strategy", strategy], lock.as_str(), &line));
    let mut running = spawn_command(cmd, "wait", &[]);
    let command: u32 = running.expect("STARTED").parse().expect("pid");
    running.signal("KILL");
    let status = running.wait_open();
    assert_eq!(status.code(), None, "portalock was killed");
    assert!(runs(command), "the command goes on");

    let ran = tool(
        &[
            "run",
            "--strategy",
            strategy,
            "--timeout",
            "0",
            lock.as_str(),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(
        ran.code(),
        75,
        "taken while the command ran: {}",
        ran.stderr
    );
    let (code, json) = status_json(strategy, &lock);
    assert_eq!((code, &json["state"]), (1, &Value::from("held")), "{json}");

    // The command ends: the lock is free (os) or stale and broken, which
    // the taker says.
    running.close_stdin();
    wait_until_gone(command);
    let ran = tool(
        &[
            "run",
            "--strategy",
            strategy,
            "--timeout",
            "10",
            lock.as_str(),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(
        ran.stderr.contains("portalock: broke the stale lock"),
        strategy != "os",
        "{}",
        ran.stderr
    );
}

/// Ctrl-C at a terminal sends SIGINT to the whole foreground process
/// group, portalock and its command alike: portalock must not pass on a
/// second one (programs take a second Ctrl-C as "quit now"). A signal sent
/// to portalock alone is passed on.
#[cfg(target_os = "linux")]
#[rstest]
fn ctrl_c_at_a_terminal_reaches_the_command_once(#[values("os", "mkdir", "link")] strategy: &str) {
    let (_dir, root) = scratch();
    let lock = root.join("job.lock");
    let line = child_command_line();
    let words: Vec<String> = std::iter::once(TOOL)
        .chain(run_args(&["--strategy", strategy], lock.as_str(), &line))
        .map(|word| format!("'{word}'"))
        .collect();
    // script(1) runs portalock on a terminal of its own, in the terminal's
    // foreground process group; what we write is typed at that terminal.
    let mut cmd = Command::new("script");
    cmd.args([
        "-q",
        "-e",
        "-c",
        &format!("exec {}", words.join(" ")),
        "/dev/null",
    ]);
    let mut terminal = spawn_command(cmd, "sigint-count", &[]);
    let portalock: u32 = terminal.expect("READY").parse().expect("parent pid");
    terminal.send("\u{3}"); // Ctrl-C
    assert_eq!(terminal.expect("GOT"), "1");
    // SIGTERM to portalock alone: passed on after any SIGINT it passed on.
    let status = Command::new("kill")
        .args(["-s", "TERM", &portalock.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(terminal.expect("COUNT"), "1", "SIGINTs the command got");
    assert!(terminal.wait().success());
}

/// The children of process `pid`, from `/proc`.
#[cfg(all(feature = "failpoints", target_os = "linux"))]
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .to_owned();
                    rest.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A SIGINT that reaches the command while it waits at its gate (forked,
/// not yet started: portalock is naming it in the lock's record) ends it
/// there, as it would end the command: the signal handlers portalock set
/// up for itself are not the waiting child's. The command never runs.
#[cfg(all(feature = "failpoints", target_os = "linux"))]
#[test]
fn a_sigint_at_the_gate_ends_the_command_before_it_runs() {
    let (dir, root) = scratch();
    let lock = root.join("job.lock");
    let fifo = dir.path().join("resume");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let line = child_command_line();
    let mut cmd = Command::new(TOOL);
    cmd.args(run_args(&["--strategy", "mkdir"], lock.as_str(), &line))
        .env("PORTALOCK_PAUSE_AT", "spawn.gate")
        .env("PORTALOCK_RESUME_FIFO", &fifo);
    let mut running = spawn_command(cmd, "wait", &[]);
    assert_eq!(running.expect("AT"), "spawn.gate");
    let gated = children_of(running.pid());
    assert_eq!(gated.len(), 1, "one child at the gate: {gated:?}");
    let status = Command::new("kill")
        .args(["-s", "INT", &gated[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // It is gone before the gate opens (a zombie until portalock reaps it).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while runs(gated[0]) {
        assert!(
            Instant::now() < deadline,
            "the child at the gate survived SIGINT"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(&fifo, "go\n").expect("resume");
    let status = running.wait_open();
    assert_eq!(status.code(), Some(130), "killed by SIGINT: {status:?}");
    assert!(
        running.poll_event(Duration::ZERO).is_none(),
        "the command ran"
    );
    let (code, _) = status_json("mkdir", &lock);
    assert_eq!(code, 0, "released");
}

/// Runs util-linux `flock(1)` with `args` to completion, bounded: its exit
/// code and standard output.
#[cfg(target_os = "linux")]
fn flock_tool(args: &[&str]) -> (i32, String) {
    let mut child = Command::new("flock")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run flock(1) (util-linux)");
    let status = wait_bounded(&mut child, &format!("flock {args:?}"));
    let mut out = String::new();
    let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
    (status.code().expect("exited"), out)
}

/// A process holding `lock` through `flock(1)` (`-s` for shared), until
/// it is dropped; returned once it holds the lock.
#[cfg(target_os = "linux")]
struct FlockHolder(std::process::Child);

#[cfg(target_os = "linux")]
impl FlockHolder {
    fn start(mode: &str, lock: &str) -> FlockHolder {
        let mut child = Command::new("flock")
            .args([mode, lock, "sh", "-c", "echo held; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run flock(1)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("flock(1) said it holds the lock");
        assert_eq!(line.trim(), "held");
        FlockHolder(child)
    }
}

#[cfg(target_os = "linux")]
impl Drop for FlockHolder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// `run` takes flock(1)'s flags (and its command without `--`): the same
/// invocations through `flock(1)` and `portalock run`, against one lock,
/// exclude each other and end with the same exit codes. Where the lock
/// stays busy without `-E`, each keeps its own code (flock(1): 1;
/// `portalock run`: 75).
#[cfg(target_os = "linux")]
#[test]
fn run_takes_flocks_flags_and_answers_as_flock_does() {
    let (_dir, root) = scratch();
    let lock = root.join("flock.lock");
    let l = lock.as_str();
    let both = |flock_args: &[&str], run_args: &[&str]| -> ((i32, String), Ran) {
        let mut args = vec!["run"];
        args.extend_from_slice(run_args);
        (flock_tool(flock_args), tool(&args, None))
    };
    // Free: the command runs (no `--` needed), `-c` goes through `sh -c`.
    let ((code, out), ran) = both(&["-n", l, "echo", "hi"], &["-n", l, "echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"));
    assert_eq!(
        (ran.code(), ran.stdout.as_str()),
        (0, "hi\n"),
        "{}",
        ran.stderr
    );
    let ((code, _), ran) = both(&[l, "-c", "exit 3"], &[l, "-c", "exit 3"]);
    assert_eq!((code, ran.code()), (3, 3), "{}", ran.stderr);
    // (flock(1) takes -c only after the lock; portalock before it too.)
    let ran = tool(&["run", "-c", "exit 4", l], None);
    assert_eq!(ran.code(), 4, "{}", ran.stderr);
    let ((code, _), ran) = both(&["-x", l, "true"], &["-x", l, "true"]);
    assert_eq!((code, ran.code()), (0, 0), "{}", ran.stderr);

    // Held exclusively by flock(1).
    let holder = FlockHolder::start("-x", l);
    let ((code, _), ran) = both(&["-n", "-E", "9", l, "true"], &["-n", "-E", "9", l, "true"]);
    assert_eq!((code, ran.code()), (9, 9), "{}", ran.stderr);
    let ((code, _), ran) = both(&["-n", l, "true"], &["-n", l, "true"]);
    assert_eq!((code, ran.code()), (1, 75), "{}", ran.stderr);
    for wait in ["0.2", "200ms"] {
        let started = Instant::now();
        let ran = tool(&["run", "-w", wait, "-E", "7", l, "true"], None);
        assert_eq!(ran.code(), 7, "-w {wait}: {}", ran.stderr);
        assert!(started.elapsed() >= Duration::from_millis(200), "-w {wait}");
    }
    let (code, _) = flock_tool(&["-w", "0.2", "-E", "7", l, "true"]);
    assert_eq!(code, 7);
    let ((code, _), ran) = both(&["-s", "-n", l, "true"], &["-s", "-n", l, "true"]);
    assert_eq!((code, ran.code()), (1, 75), "{}", ran.stderr);
    drop(holder);

    // Held shared by flock(1): shared takers get in, exclusive ones do not.
    let holder = FlockHolder::start("-s", l);
    let ((code, _), ran) = both(&["-s", "-n", l, "true"], &["-s", "-n", l, "true"]);
    assert_eq!((code, ran.code()), (0, 0), "{}", ran.stderr);
    let ((code, _), ran) = both(
        &["-x", "-n", "-E", "5", l, "true"],
        &["-x", "-n", "-E", "5", l, "true"],
    );
    assert_eq!((code, ran.code()), (5, 5), "{}", ran.stderr);
    drop(holder);

    // Held by `portalock run`: flock(1) is kept out too.
    let (run, _pid) = hold_with_run(&[], &lock);
    let (code, _) = flock_tool(&["-n", l, "true"]);
    assert_eq!(code, 1, "flock(1) got a lock that `portalock run` holds");
    drop(run);
}

/// Durations and leases: seconds or units, and leases within their
/// bounds; anything else is a usage error (2) that says why.
#[test]
fn durations_take_seconds_or_units_and_leases_their_bounds() {
    let (_dir, root) = scratch();
    let lock = root.join("d.lock");
    let line = child_command_line();
    let exit0 = Some(("exit", &["0"][..]));
    for timeout in ["1", "1.5", "1s", "500ms", "1m 30s"] {
        let ran = tool(
            &run_args(&["--timeout", timeout], lock.as_str(), &line),
            exit0,
        );
        assert_eq!(ran.code(), 0, "--timeout {timeout}: {}", ran.stderr);
    }
    for (flag, value) in [
        ("--timeout", "soon"),
        ("--timeout", "-1"),
        ("--lease", "0.001"),
        ("--lease", "400d"),
    ] {
        let ran = tool(&run_args(&[flag, value], lock.as_str(), &line), exit0);
        assert_eq!(ran.code(), 2, "{flag} {value}: {}", ran.stderr);
        assert!(ran.stderr.contains(value), "{flag} {value}: {}", ran.stderr);
    }
    let ran = tool(&run_args(&["--lease", "30s"], lock.as_str(), &line), exit0);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
}

/// `run` without `--strategy` on a lock that `acquire` took (a directory,
/// where auto would pick os) takes it as what it is: busy while held (it
/// was "is a directory, but the os strategy needs a regular file").
/// `acquire` says whom it holds the lock for.
#[test]
fn run_uses_the_strategy_of_a_lock_that_acquire_took() {
    let (_dir, root) = scratch();
    let lock = root.join("script.lock");
    let me = std::process::id();
    let ran = tool(&["acquire", lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!("held for pid {me}")) && ran.stderr.contains("--pid"),
        "acquire did not say whom it holds the lock for: {}",
        ran.stderr
    );
    let line = child_command_line();
    let ran = tool(
        &run_args(&["-n"], lock.as_str(), &line),
        Some(("exit", &["0"])),
    );
    assert_eq!(ran.code(), 75, "{}", ran.stderr);
    assert!(ran.stderr.contains(&format!("pid {me}")), "{}", ran.stderr);
    let ran = tool(&["release", lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let ran = tool(
        &run_args(&["-n"], lock.as_str(), &line),
        Some(("exit", &["0"])),
    );
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
}

/// `acquire --lease`: nobody refreshes the lease once acquire has exited,
/// so a waiter breaks the lock one lease after it was taken, although the
/// process it is held for runs.
#[test]
fn acquire_with_a_lease_expires_after_it() {
    let (_dir, root) = scratch();
    let lock = root.join("lease.lock");
    let ran = tool(&["acquire", "--lease", "1s", lock.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(ran.stderr.contains("its lease"), "{}", ran.stderr);
    let started = Instant::now();
    let line = child_command_line();
    let ran = tool(
        &run_args(&["--timeout", "20s", "--quiet"], lock.as_str(), &line),
        Some(("exit", &["0"])),
    );
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "broken before its lease ran out: {:?}",
        started.elapsed()
    );
}

/// A file at the lock path that portalock did not write is no lock:
/// `status` says so with its own exit code (it said "free"), and `break
/// --force` leaves it alone and says how to remove it (it said "is free").
#[test]
fn a_foreign_file_at_the_lock_path_is_neither_free_nor_broken() {
    let (_dir, root) = scratch();
    let lock = root.join("data.lock");
    std::fs::write(&lock, "precious data\n").expect("write");
    let ran = tool(&["status", lock.as_str()], None);
    assert_eq!(ran.code(), 4, "{} {}", ran.stdout, ran.stderr);
    assert!(ran.stdout.starts_with("foreign:"), "{}", ran.stdout);
    let (code, json) = {
        let ran = tool(&["status", "--json", lock.as_str()], None);
        let json: Value = serde_json::from_str(ran.stdout.trim()).expect("json");
        (ran.code(), json)
    };
    assert_eq!((code, &json["state"]), (4, &Value::from("foreign")));
    for args in [
        &["break", lock.as_str()][..],
        &["break", "--force", lock.as_str()],
    ] {
        let ran = tool(args, None);
        assert_eq!(ran.code(), 4, "{args:?}: {}", ran.stderr);
        assert!(ran.stderr.contains("remove it by hand"), "{}", ran.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(&lock).expect("read"),
        "precious data\n"
    );
}

/// Runs `script` with `sh -c`, the lock file open on descriptor 9 (as a
/// script does with `exec 9>>LOCK`), `$TOOL` naming the tool under test
/// (`flock` or `portalock`) and `$L` the lock: its exit code, bounded.
#[cfg(target_os = "linux")]
fn on_descriptor_9(tool_path: &str, lock: &str, script: &str) -> i32 {
    let mut child = Command::new("sh")
        .args(["-c", &format!("exec 9>>\"$L\"; {script}")])
        .env("TOOL", tool_path)
        .env("L", lock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sh");
    let status = wait_bounded(&mut child, &format!("sh -c {script:?}"));
    status.code().expect("exited")
}

/// Waits for `child` to exit, at most [`EVENT_TIMEOUT`].
#[cfg(target_os = "linux")]
fn wait_bounded(child: &mut std::process::Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The flock(1) form, `portalock [OPTIONS] LOCK COMMAND...` with no
/// subcommand, answers with flock(1)'s exit codes: 1 when the lock stays
/// busy (unless -E), 64 on a usage error; the same invocations through
/// both tools end alike. A first argument that names a subcommand is one
/// (a lock file called `run` is `./run`).
#[cfg(target_os = "linux")]
#[test]
fn the_flock_form_answers_with_flocks_exit_codes() {
    let (_dir, root) = scratch();
    let lock = root.join("form.lock");
    let l = lock.as_str();
    let both = |args: &[&str]| -> (i32, Ran) { (flock_tool(args).0, tool(args, None)) };
    let (code, ran) = both(&["-n", l, "echo", "hi"]);
    assert_eq!((code, ran.code()), (0, 0), "{}", ran.stderr);
    assert_eq!(ran.stdout, "hi\n");
    let (code, ran) = both(&[l, "-c", "exit 3"]);
    assert_eq!((code, ran.code()), (3, 3), "{}", ran.stderr);
    let (code, ran) = both(&["--verbose", "-n", l, "true"]);
    assert_eq!((code, ran.code()), (0, 0), "{}", ran.stderr);
    assert!(ran.stderr.contains("got the lock"), "{}", ran.stderr);
    // Options flock(1) takes together: the last of -s and -x counts, -n
    // wins over -w.
    for args in [&["-s", "-x", l, "true"][..], &["-n", "-w", "1", l, "true"]] {
        let (code, ran) = both(args);
        assert_eq!((code, ran.code()), (0, 0), "{args:?}: {}", ran.stderr);
    }
    // Usage errors: 64, as flock(1).
    for args in [
        &[][..],
        &["-n"],
        &["-w", "soon", l, "true"],
        &[l],
        &["--no-such-flag", l, "true"],
    ] {
        let (code, ran) = both(args);
        assert_eq!((code, ran.code()), (64, 64), "{args:?}: {}", ran.stderr);
        assert!(!ran.stderr.is_empty(), "{args:?}: no word on stderr");
    }

    let holder = FlockHolder::start("-x", l);
    for args in [
        &["-n", l, "true"][..],
        &["-w", "0.2", l, "true"],
        &["-s", "-n", l, "true"],
    ] {
        let (code, ran) = both(args);
        assert_eq!((code, ran.code()), (1, 1), "{args:?}: {}", ran.stderr);
    }
    let (code, ran) = both(&["-n", "-E", "9", l, "true"]);
    assert_eq!((code, ran.code()), (9, 9), "{}", ran.stderr);
    // The subcommands keep their own codes.
    let ran = tool(&["run", "-n", l, "true"], None);
    assert_eq!(ran.code(), 75, "{}", ran.stderr);
    drop(holder);

    // A lock file called `run`: `./run` in the flock form.
    let dir = root.as_std_path();
    let ran = {
        let mut cmd = Command::new(TOOL);
        cmd.args(["-n", "./run", "true"]).current_dir(dir);
        spawn_retrying(&mut cmd)
            .expect("run portalock")
            .wait()
            .expect("wait")
    };
    assert_eq!(ran.code(), Some(0));
    assert!(dir.join("run").exists(), "no lock file ./run");
    let ran = tool(&["run"], None);
    assert_eq!(
        ran.code(),
        2,
        "`run` alone is the subcommand: {}",
        ran.stderr
    );
    // A subcommand's options before its name: not a lock file `status`.
    let ran = tool(&["-n", "status", l], None);
    assert_eq!(ran.code(), 64, "{}", ran.stderr);
    assert!(ran.stderr.contains("./status"), "{}", ran.stderr);
}

/// fd mode: `portalock 9` locks descriptor 9 that the shell opened, as
/// `flock 9` does, so the lock lasts as long as the shell keeps it open;
/// `-u` unlocks it; -n, -w, -s, -x and -E as in the lock-path form; a
/// descriptor that is not open is 65. Each script runs through both tools.
#[cfg(target_os = "linux")]
#[test]
fn fd_mode_locks_the_shells_descriptor_as_flock_does() {
    let (_dir, root) = scratch();
    let lock = root.join("fd.lock");
    let l = lock.as_str();
    let scripts: &[(&str, i32)] = &[
        // Taken, it stays taken after the tool exits (the shell holds the
        // open file), until -u.
        (
            r#""$TOOL" -n 9 || exit 20; flock -n "$L" true && exit 21; "$TOOL" -u 9 || exit 22; flock -n "$L" true || exit 23; exit 0"#,
            0,
        ),
        (
            r#""$TOOL" -x 9 && "$TOOL" -s 9 && flock -s -n "$L" true"#,
            0,
        ),
        (r#"exec 7>&-; "$TOOL" 7"#, 65),
    ];
    for flock_or_portalock in ["flock", TOOL] {
        for (script, expected) in scripts {
            assert_eq!(
                on_descriptor_9(flock_or_portalock, l, script),
                *expected,
                "{flock_or_portalock}: {script}"
            );
        }
    }
    // A wait too long to have an end waits forever (flock(1) refuses it:
    // "cannot set up timer"); free, it takes the lock.
    assert_eq!(on_descriptor_9(TOOL, l, r#""$TOOL" -w 1e19 9"#), 0);
    let holder = FlockHolder::start("-x", l);
    for flock_or_portalock in ["flock", TOOL] {
        for (script, expected) in [
            (r#""$TOOL" -n 9"#, 1),
            (r#""$TOOL" -n -E 7 9"#, 7),
            (r#""$TOOL" -s -n 9"#, 1),
        ] {
            assert_eq!(
                on_descriptor_9(flock_or_portalock, l, script),
                expected,
                "{flock_or_portalock}: {script}"
            );
        }
        let started = Instant::now();
        assert_eq!(
            on_descriptor_9(flock_or_portalock, l, r#""$TOOL" -w 0.2 9"#),
            1,
            "{flock_or_portalock} -w 0.2"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
    drop(holder);
    // A shared holder lets a shared taker in.
    let holder = FlockHolder::start("-s", l);
    for flock_or_portalock in ["flock", TOOL] {
        assert_eq!(
            on_descriptor_9(flock_or_portalock, l, r#""$TOOL" -s -n 9"#),
            0,
            "{flock_or_portalock}"
        );
    }
    drop(holder);
}

/// `-o`/`--close`, through flock(1) and portalock alike: the command does
/// not hold the lock, so it ends with the tool (here killed by its own
/// command); without `-o` the command keeps it while it runs.
#[cfg(target_os = "linux")]
#[test]
fn close_leaves_the_lock_to_the_tool_alone_as_flocks() {
    let (_dir, root) = scratch();
    let lock = root.join("close.lock");
    let out = root.join("close.out");
    for flock_or_portalock in ["flock", TOOL] {
        // (taken within 5 s once the tool is gone; not taken within 1 s
        // while the command holds it)
        for (close, wait, expected) in [(true, "5", "0"), (false, "1", "1")] {
            let _ = std::fs::remove_file(&out);
            let command = format!(
                r#"kill -KILL $PPID; flock -w {wait} "$L" true; echo $? > "$OUT.tmp"; mv "$OUT.tmp" "$OUT""#
            );
            let mut tool_args = vec![];
            if close {
                tool_args.push("-o");
            }
            tool_args.extend([lock.as_str(), "sh", "-c", &command]);
            let mut child = Command::new(flock_or_portalock)
                .args(&tool_args)
                .env("L", lock.as_str())
                .env("OUT", out.as_str())
                .stdin(Stdio::null())
                .spawn()
                .expect("run the tool");
            let status = wait_bounded(&mut child, flock_or_portalock);
            assert_eq!(status.code(), None, "{flock_or_portalock}: killed");
            let deadline = Instant::now() + EVENT_TIMEOUT;
            let code = loop {
                if let Ok(code) = std::fs::read_to_string(&out) {
                    break code;
                }
                assert!(Instant::now() < deadline, "the command did not finish");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(
                code.trim(),
                expected,
                "{flock_or_portalock} close={close}: flock -w {wait} said {code}"
            );
        }
    }
}

/// Shell completions and man pages come from the command line's own
/// definition: every shell gets a script naming the subcommands and
/// flags (bash's parses), and the man pages document the flock(1) form
/// and every subcommand.
#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let ran = tool(&["completions", shell], None);
        assert_eq!(ran.code(), 0, "{shell}: {}", ran.stderr);
        for word in ["portalock", "status", "nonblock", "conflict-exit-code"] {
            assert!(ran.stdout.contains(word), "{shell}: no {word}");
        }
        #[cfg(unix)]
        if shell == "bash" {
            let (_dir, root) = scratch();
            let script = root.join("portalock.bash");
            std::fs::write(&script, &ran.stdout).expect("write the script");
            let status = Command::new("bash")
                .args(["-n", script.as_str()])
                .status()
                .expect("run bash");
            assert!(status.success(), "bash -n rejects the completion script");
        }
    }
    let ran = tool(&["completions", "tcsh"], None);
    assert_eq!(ran.code(), 2, "{}", ran.stderr);

    let ran = tool(&["man"], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert!(ran.stdout.contains(".TH portalock 1"), "{}", ran.stdout);
    assert!(ran.stdout.contains("fd mode"), "no flock(1) form");
    let (_dir, root) = scratch();
    let ran = tool(&["man", "--dir", root.as_str()], None);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    for sub in ["run", "status", "break", "acquire", "release"] {
        let page = std::fs::read_to_string(root.join(format!("portalock-{sub}.1")))
            .unwrap_or_else(|e| panic!("no page for {sub}: {e}"));
        assert!(page.contains(&format!(".TH portalock-{sub} 1")), "{page}");
    }
    let run = std::fs::read_to_string(root.join("portalock-run.1")).expect("run's page");
    assert!(run.contains("nonblock"), "{run}");
    let ran = tool(&["man", "--dir", root.join("missing").as_str()], None);
    assert_eq!(ran.code(), 74, "{}", ran.stderr);
    assert!(ran.stderr.contains("missing"), "{}", ran.stderr);
}

/// `run --fence` passes the acquisition's fencing token to the command
/// (`PORTALOCK_FENCE`), larger at each run; without it, none.
#[cfg(unix)]
#[test]
fn run_fence_passes_a_growing_token_to_the_command() {
    let (_dir, root) = scratch();
    let lock = root.join("fenced.lock");
    let mut last = 0u64;
    for _ in 0..3 {
        let ran = tool(
            &[
                "run",
                "--fence",
                lock.as_str(),
                "sh",
                "-c",
                "echo $PORTALOCK_FENCE",
            ],
            None,
        );
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        let fence: u64 = ran.stdout.trim().parse().expect("a token");
        assert!(fence > last, "{fence} after {last}");
        last = fence;
    }
    let ran = tool(
        &[
            "run",
            lock.as_str(),
            "sh",
            "-c",
            "echo \"[$PORTALOCK_FENCE]\"",
        ],
        None,
    );
    assert_eq!(ran.stdout.trim(), "[]");
}

/// `run -s` on every strategy: two shared runs hold the lock at once, an
/// exclusive try is refused with the conflict code, `status` lists the
/// readers (mkdir, link), and when they are gone an exclusive run gets in.
#[rstest]
fn shared_runs_overlap_and_keep_exclusive_runs_out(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let lock = root.join("shared.lock");
    let (mut first, first_pid) = hold_with_run(&["-s", "--strategy", strategy], &lock);
    let (mut second, _) = hold_with_run(&["-s", "-n", "--strategy", strategy], &lock);
    let line = child_command_line();
    let exclusive = tool(
        &run_args(&["-n", "--strategy", strategy], lock.as_str(), &line),
        Some(("exit", &["0"])),
    );
    assert_eq!(exclusive.code(), 75, "{strategy}: {}", exclusive.stderr);
    if strategy != "os" {
        let (code, json) = status_json(strategy, &lock);
        assert_eq!(code, 1, "{strategy}: {json}");
        assert_eq!(json["state"], "shared", "{strategy}: {json}");
        let readers = json["readers"].as_array().expect("readers");
        assert_eq!(readers.len(), 2, "{strategy}: {json}");
        // Each registration names the command that `run` started.
        assert!(
            readers
                .iter()
                .any(|r| r["pid"] == first_pid && r["command"]["pid"].is_u64()),
            "{strategy}: {json}"
        );
        let human = tool(&["status", lock.as_str()], None);
        assert!(
            human.stdout.starts_with("shared:"),
            "{strategy}: {}",
            human.stdout
        );
    }
    first.close_stdin();
    second.close_stdin();
    assert!(first.wait().success());
    assert!(second.wait().success());
    // (the command: this test's own program, which exists everywhere)
    let line = child_command_line();
    let after = tool(
        &run_args(&["-n", "--strategy", strategy], lock.as_str(), &line),
        Some(("exit", &["0"])),
    );
    assert_eq!(after.code(), 0, "{strategy}: {}", after.stderr);
}
