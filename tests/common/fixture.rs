//! The one scratch fixture of the integration tests, and the strategy
//! lists they iterate over.

// Every test binary compiles this module; each applies the templates it
// needs (a template is a macro, and `rstest` is named where it expands).
#![allow(unused_macros, unused_imports)]

use std::path::Path;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use portalock::{LockFile, LockOptions, LockStrategy};
use rstest::rstest;
use rstest_reuse::template;

/// The name of the lock that [`scratch`] makes a path for.
pub const LOCK_NAME: &str = "test.lock";

/// A fresh directory for one test, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    root: Utf8PathBuf,
}

impl Scratch {
    /// A fresh directory (UTF-8, as lock paths must be).
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("scratch directory");
        let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("a UTF-8 temp dir");
        Scratch { dir, root }
    }

    /// The directory.
    pub fn root(&self) -> &Utf8Path {
        &self.root
    }

    /// The directory, as `tempfile::TempDir::path` gives it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The lock path of this scratch directory ([`LOCK_NAME`]).
    pub fn lock(&self) -> Utf8PathBuf {
        self.root.join(LOCK_NAME)
    }

    /// A handle on [`lock`](Scratch::lock) taken with `strategy`.
    pub fn open(&self, strategy: LockStrategy) -> LockFile {
        open(&self.lock(), strategy)
    }
}

/// A fresh directory and the lock path in it: the usual start of a test.
pub fn scratch() -> (Scratch, Utf8PathBuf) {
    let scratch = Scratch::new();
    let lock = scratch.lock();
    (scratch, lock)
}

/// A fresh directory and its root, for tests that name their own files.
pub fn scratch_root() -> (Scratch, Utf8PathBuf) {
    let scratch = Scratch::new();
    let root = scratch.root().to_owned();
    (scratch, root)
}

/// A handle on `path` taken with `strategy`, polling every 5 ms at most
/// while it waits for another process.
pub fn open(path: &Utf8Path, strategy: LockStrategy) -> LockFile {
    LockOptions::new()
        .strategy(strategy)
        .poll_interval(Duration::from_millis(5))
        .open(path)
        .expect("open the lock")
}

/// A PID that ran on this machine and does not any more: this test
/// binary, asked to run no test, exits at once on every platform.
pub fn dead_pid() -> u32 {
    let exe = std::env::current_exe().expect("test executable");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "no such test", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

/// Every strategy that takes a lock itself: `#[apply(every_strategy)]` on
/// a test with an argument `strategy: LockStrategy`.
#[template]
#[rstest]
pub fn every_strategy(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
}

/// The strategies whose lock outlives a crashed holder (its artifact stays
/// until broken): `#[apply(lasting_strategies)]`.
#[template]
#[rstest]
pub fn lasting_strategies(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
}
