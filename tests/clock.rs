//! A step of the wall clock (NTP or chrony correcting it, `date -s`, a VM
//! resumed and resynchronised) never makes a live holder look dead, and
//! never lets a second process take its lock.
//!
//! These tests step the clock of the machine they run on: they are ignored
//! in a plain `cargo test`, refuse to run outside a throwaway guest, and
//! `.ci/run` runs them inside one (`.ci/guest.sh`, User-Mode Linux, whose
//! clock is its own):
//!
//! ```sh
//! cargo test --all-features --test clock --no-run   # prints the binary
//! bash .ci/guest.sh run -- target/debug/deps/clock-<hash> --ignored --test-threads=1
//! ```
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use camino::Utf8PathBuf;
use portalock::{Error, Liveness, LockStatus, LockStrategy};
use rstest::rstest;
use rstest_reuse::apply;

use common::fixture::{every_strategy, open};
use common::{assert_would_block_by, spawn};

#[test]
fn child() {
    common::child_entry();
}

/// Steps the wall clock by `seconds` (forward or back), inside the guest
/// only.
fn step_clock(seconds: i64) {
    assert_eq!(
        std::env::var("PORTALOCK_IN_GUEST").as_deref(),
        Ok("1"),
        "refusing to step the clock outside a throwaway guest (.ci/guest.sh)"
    );
    use rustix::time::{clock_gettime, clock_settime, ClockId, Timespec};
    let now = clock_gettime(ClockId::Realtime);
    let then = Timespec {
        tv_sec: now.tv_sec + seconds,
        tv_nsec: now.tv_nsec,
    };
    clock_settime(ClockId::Realtime, then).expect("set the clock (root, in the guest)");
}

/// `/proc/stat`'s `btime`: the wall clock minus the uptime, which a step
/// moves. (sysinfo computed start times from it; portalock no longer does.)
fn btime() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .expect("btime")
}

/// The steps: a few seconds either way (an NTP step), an hour either way
/// (a VM resumed, a wrong time zone fixed); the clock ends where it began.
const STEPS: [i64; 6] = [3, -7, 4, 3600, -7200, 3600];

#[apply(every_strategy)]
#[ignore = "steps the clock: run inside .ci/guest.sh (see the module docs)"]
fn a_clock_step_never_makes_a_live_holder_dead(strategy: LockStrategy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Utf8PathBuf::from_path_buf(dir.path().join("clock.lock")).expect("utf-8");
    let mut holder = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    let other = open(&path, strategy);
    for step in STEPS {
        let before = btime();
        step_clock(step);
        assert!(
            (btime() - before - step).abs() <= 1,
            "btime did not move with the step: the test would prove nothing"
        );
        let owner = other.owner().expect("owner").expect("the holder's record");
        assert_eq!(owner.pid, pid);
        assert_eq!(
            owner.liveness(),
            Liveness::Alive,
            "{strategy}: after a step of {step} s the live holder looks {}",
            owner.liveness()
        );
        assert_would_block_by(other.try_acquire(), pid);
        assert!(
            matches!(
                other.acquire_timeout(Duration::from_millis(200)),
                Err(Error::Timeout { .. })
            ),
            "{strategy}: taken after a step of {step} s"
        );
        if strategy != LockStrategy::Os {
            assert!(
                matches!(other.break_lock(), Err(Error::NotStale { .. })),
                "{strategy}: broken after a step of {step} s"
            );
        }
        holder.send("check");
        assert_eq!(holder.expect("CHECKED"), "Ok", "after a step of {step} s");
    }
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    assert_eq!(other.status().expect("status"), LockStatus::Free);
}

/// The issue's reproduction, with the tool: `portalock run` holds a lock
/// while its command runs; the clock is stepped; `status` still says held
/// by a live owner and a second `run --timeout 0` is refused.
#[cfg(feature = "cli")]
#[rstest]
#[ignore = "steps the clock: run inside .ci/guest.sh (see the module docs)"]
fn a_clock_step_never_lets_a_second_run_in(#[values("mkdir", "link")] strategy: &str) {
    use std::process::{Command, Stdio};
    const TOOL: &str = env!("CARGO_BIN_EXE_portalock");
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("run.lock");
    let lock = lock.to_str().expect("utf-8");
    let mut cmd = Command::new(TOOL);
    cmd.args(["run", "--strategy", strategy, lock, "--"])
        .args(common::child_command_line());
    let mut running = common::spawn_command(cmd, "wait", &[]);
    running.expect("STARTED");
    for step in [3, -5, 3600, -3598] {
        step_clock(step);
        let status = Command::new(TOOL)
            .args(["status", "--strategy", strategy, "--json", lock])
            .stderr(Stdio::inherit())
            .output()
            .expect("status");
        let json: serde_json::Value =
            serde_json::from_slice(&status.stdout).expect("status --json");
        assert_eq!(json["state"], "held", "after a step of {step} s: {json}");
        assert_eq!(
            json["liveness"], "alive",
            "after a step of {step} s: {json}"
        );
        let second = Command::new(TOOL)
            .args([
                "run",
                "--strategy",
                strategy,
                "--timeout",
                "0",
                lock,
                "--",
                "true",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("second run");
        assert_eq!(
            second.code(),
            Some(75),
            "a second run got in after a step of {step} s"
        );
    }
    running.close_stdin();
    assert!(running.wait().success());
}
