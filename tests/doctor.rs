//! `portalock doctor`, run as a separate process: what it says of a local
//! directory, its JSON, its errors, and that it leaves the directory as it
//! found it.
//!
//! The tmpfs tests need root (they mount one): they are ignored in a plain
//! `cargo test` and run by `.ci/run` (as root) with
//! `cargo test --all-features --test doctor -- --include-ignored`.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus};

use serde_json::Value;

use common::fixture::scratch_root as scratch;

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

    /// The JSON object on standard output.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("doctor --json printed {:?}: {e}", self.stdout))
    }

    /// The value of the report line labelled `label`.
    fn line(&self, label: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix(label)
                    .filter(|rest| rest.starts_with("  "))
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("no line {label:?} in {}", self.stdout))
    }
}

/// Runs `portalock ARGS` in `cwd` (or this process's current directory)
/// to completion, bounded.
fn tool_in(args: &[&str], cwd: Option<&Path>) -> Ran {
    let mut cmd = Command::new(TOOL);
    cmd.args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let (status, stdout, stderr) = common::run_to_end(&mut cmd, &format!("portalock {args:?}"));
    Ran {
        status,
        stdout,
        stderr,
    }
}

fn tool(args: &[&str]) -> Ran {
    tool_in(args, None)
}

use common::names;

const PROBES: [&str; 4] = ["o_excl", "hard_link", "mkdir", "os_lock"];
const STRATEGIES: [&str; 3] = ["os", "mkdir", "link"];

/// Checks what `doctor --json` says of a local directory where everything
/// works: every probe works, `auto` is `os`, every strategy timed (at most
/// `max` cycles), nothing left behind.
fn assert_local_and_working(json: &Value, max: u64) {
    assert_eq!(json["file_system"]["locality"], "local", "{json:#}");
    assert_eq!(json["file_system"]["os_locks_shared"], true, "{json:#}");
    assert!(
        json["file_system"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "{json:#}"
    );
    assert_eq!(json["auto"]["strategy"], "os", "{json:#}");
    assert!(json["auto"]["why"].as_str().is_some_and(|w| !w.is_empty()));
    for probe in PROBES {
        assert_eq!(
            json["probes"][probe]["result"], "works",
            "{probe}: {json:#}"
        );
        assert!(json["probes"][probe]["detail"].is_string(), "{probe}");
    }
    // A local file system counts links (sshfs does not; Windows' std does
    // not tell).
    let link_count = &json["probes"]["hard_link"]["link_count"];
    if cfg!(unix) {
        assert_eq!(*link_count, 2, "{json:#}");
    } else {
        assert!(link_count.is_null(), "{json:#}");
    }
    let reach = &json["os_locks_reach_other_clients"];
    assert_eq!(reach["answer"], "n/a", "{json:#}");
    assert_eq!(reach["measured"], false, "{json:#}");
    for strategy in STRATEGIES {
        let cycle = &json["cycles"][strategy];
        assert_eq!(cycle["result"], "measured", "{strategy}: {json:#}");
        let cycles = cycle["cycles"].as_u64().expect("a count of cycles");
        assert!((1..=max).contains(&cycles), "{strategy}: {cycles} cycles");
        let median = cycle["median_us"].as_f64().expect("a median");
        let mean = cycle["mean_us"].as_f64().expect("a mean");
        assert!(median > 0.0 && mean > 0.0, "{strategy}: {cycle}");
        assert_eq!(cycle["trust_os_locks"], false, "{strategy}");
    }
    assert_eq!(json["use"]["strategy"], "auto", "{json:#}");
    assert_eq!(json["use"]["resolves_to"], "os", "{json:#}");
    assert!(json["use"]["notes"].is_array());
    assert_eq!(json["scratch_removed"], true);
    assert!(json["build"] == "debug" || json["build"] == "release");
}

#[test]
fn a_local_directory_answers_that_everything_works_and_auto_picks_os() {
    let (_dir, root) = scratch();
    let ran = tool(&["doctor", root.as_str()]);
    assert_eq!(ran.code(), 0, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.line("directory"), root.as_str());
    assert!(
        ran.line("file system").ends_with("(local)"),
        "{}",
        ran.stdout
    );
    assert!(ran.line("auto picks").starts_with("os: "), "{}", ran.stdout);
    for label in ["O_EXCL create", "hard link", "mkdir", "OS lock"] {
        assert!(
            ran.line(label).starts_with("works: "),
            "{label}: {}",
            ran.stdout
        );
    }
    assert!(ran.line("OS locks shared").starts_with("n/a: "));
    for strategy in STRATEGIES {
        let cost = ran.line(&format!("  {strategy}"));
        assert!(cost.contains(" us median, "), "{strategy}: {cost}");
    }
    assert_eq!(ran.line("use"), "auto (os here)");
    assert!(names(root.as_std_path()).is_empty(), "left behind");
}

#[test]
fn json_has_the_documented_fields() {
    let (_dir, root) = scratch();
    let ran = tool(&["doctor", "--json", root.as_str()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let json = ran.json();
    assert_eq!(json["dir"], root.as_str());
    assert_local_and_working(&json, 200);
    assert!(names(root.as_std_path()).is_empty(), "left behind");
}

#[test]
fn cycles_caps_the_timed_cycles_and_0_times_none() {
    let (_dir, root) = scratch();
    let ran = tool(&["doctor", "--json", "--cycles", "3", root.as_str()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_local_and_working(&ran.json(), 3);

    let ran = tool(&["doctor", "--json", "--cycles", "0", root.as_str()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let json = ran.json();
    for strategy in STRATEGIES {
        let cycle = &json["cycles"][strategy];
        assert_eq!(cycle["result"], "skipped", "{strategy}: {json:#}");
        assert_eq!(cycle["cycles"], 0);
        assert!(cycle["median_us"].is_null());
    }
    // The probes still ran.
    assert_eq!(json["probes"]["os_lock"]["result"], "works");
    assert!(names(root.as_std_path()).is_empty(), "left behind");
}

#[test]
fn concurrent_runs_leave_the_directory_as_they_found_it() {
    let (_dir, root) = scratch();
    std::fs::write(root.join("keep"), "data\n").expect("a file");
    std::fs::create_dir(root.join("sub")).expect("a directory");
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| tool(&["doctor", "--json", "--cycles", "20", root.as_str()])))
            .collect();
        for run in runs {
            let ran = run.join().expect("a run");
            assert_eq!(ran.code(), 0, "{}", ran.stderr);
            assert_eq!(ran.json()["scratch_removed"], true);
        }
    });
    assert_eq!(names(root.as_std_path()), ["keep", "sub"]);
    assert_eq!(
        std::fs::read_to_string(root.join("keep")).expect("read"),
        "data\n"
    );
    assert!(names(&root.join("sub").into_std_path_buf()).is_empty());
}

#[test]
fn the_current_directory_is_the_default() {
    let (_dir, root) = scratch();
    let ran = tool_in(
        &["doctor", "--json", "--cycles", "1"],
        Some(root.as_std_path()),
    );
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let said = ran.json()["dir"]
        .as_str()
        .expect("dir is a string")
        .to_owned();
    assert_eq!(
        std::fs::canonicalize(&said).expect("canonical dir"),
        std::fs::canonicalize(&root).expect("canonical root"),
        "doctor looked at {said}"
    );
    assert!(names(root.as_std_path()).is_empty(), "left behind");
}

#[test]
fn a_missing_directory_is_exit_74_and_named() {
    let (_dir, root) = scratch();
    let missing = root.join("no such dir");
    let ran = tool(&["doctor", missing.as_str()]);
    assert_eq!(ran.code(), 74, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    assert!(
        ran.stderr.contains(missing.as_str()) && ran.stderr.contains("does not exist"),
        "{}",
        ran.stderr
    );
    assert!(names(root.as_std_path()).is_empty());
}

#[test]
fn a_file_is_not_a_directory() {
    let (_dir, root) = scratch();
    let file = root.join("file");
    std::fs::write(&file, "x").expect("a file");
    let ran = tool(&["doctor", "--json", file.as_str()]);
    assert_eq!(ran.code(), 74, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    assert!(
        ran.stderr.contains(file.as_str()) && ran.stderr.contains("is not a directory"),
        "{}",
        ran.stderr
    );
    assert_eq!(names(root.as_std_path()), ["file"]);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
#[cfg(target_os = "linux")]
struct Tmpfs {
    _dir: tempfile::TempDir,
    path: camino::Utf8PathBuf,
}

#[cfg(target_os = "linux")]
impl Tmpfs {
    fn new(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        let path = camino::Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                options,
                "portalock-test",
                path.as_str(),
            ])
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs (needs root): {status}");
        Tmpfs { _dir: dir, path }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path.as_str()).status();
    }
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs root: mounts a tmpfs (run by .ci/run)"]
fn a_fresh_tmpfs_says_tmpfs() {
    let mount = Tmpfs::new("size=4m");
    let ran = tool(&["doctor", mount.path.as_str()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    assert_eq!(ran.line("file system"), "tmpfs (local)", "{}", ran.stdout);
    let ran = tool(&["doctor", "--json", mount.path.as_str()]);
    assert_eq!(ran.code(), 0, "{}", ran.stderr);
    let json = ran.json();
    assert_eq!(json["file_system"]["name"], "tmpfs", "{json:#}");
    assert_local_and_working(&json, 200);
    assert!(names(mount.path.as_std_path()).is_empty(), "left behind");
}

#[cfg(target_os = "linux")]
#[test]
#[ignore = "needs root: mounts a tmpfs (run by .ci/run)"]
fn a_read_only_file_system_is_exit_74_with_a_clear_message() {
    let mount = Tmpfs::new("size=1m,ro");
    let ran = tool(&["doctor", mount.path.as_str()]);
    assert_eq!(ran.code(), 74, "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    assert!(
        ran.stderr.contains(&format!(
            "cannot make a scratch directory in `{}`",
            mount.path
        )) && ran.stderr.contains("Read-only file system"),
        "{}",
        ran.stderr
    );
}
