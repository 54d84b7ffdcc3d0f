//! Faults of the file system under a lock: a read-only file system (also
//! one turned read-only under a holder), a full one, a permission denied,
//! the lock's directory removed under its holder. Each gives a typed error
//! naming the path, loses nothing, and leaves the lock's state consistent.
//!
//! The mount tests need root (they mount a small tmpfs): they are ignored
//! in a plain `cargo test` and run by `.ci/run` (as root) with
//! `cargo test --all-features --test faults -- --include-ignored`.

#![cfg(unix)]

mod common;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use portalock::{Error, LockOptions, LockStatus, LockStrategy};
use rstest::rstest;
use rstest_reuse::apply;
use tempfile::TempDir;

use common::fixture::{every_strategy, lasting_strategies, open};
use common::{spawn_command, CHILD_ARGS};

#[test]
fn child() {
    common::child_entry();
}

fn io_kind(result: &Result<(), Error>) -> Option<io::ErrorKind> {
    match result {
        Err(e @ Error::Io { .. }) => e.io_error().map(io::Error::kind),
        _ => None,
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Mount {
    _dir: TempDir,
    path: Utf8PathBuf,
}

impl Mount {
    fn new(options: &str) -> Mount {
        let dir = tempfile::tempdir().expect("mount point");
        let path = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
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
        Mount { _dir: dir, path }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}"), self.path.as_str()])
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path.as_str()).status();
    }
}

/// The names in `dir`, but the turnstiles' gates (`.<name>.gate`), which
/// stay by design.
fn names(dir: &Utf8Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with('.') && n.ends_with(".gate")))
        .collect();
    names.sort();
    names
}

#[apply(every_strategy)]
#[ignore = "needs root: mounts a tmpfs (run by .ci/run)"]
fn a_read_only_file_system_is_a_typed_error_and_changes_nothing(strategy: LockStrategy) {
    let mount = Mount::new("size=1m,ro");
    let path = mount.path.join("x.lock");
    let lock = open(&path, strategy);
    let result = lock.try_acquire();
    assert_eq!(
        io_kind(&result),
        Some(io::ErrorKind::ReadOnlyFilesystem),
        "{result:?}"
    );
    let message = result.expect_err("refused").to_string();
    assert!(message.contains(path.as_str()), "{message}");
    assert!(!lock.is_held());
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
    assert!(names(&mount.path).is_empty());
}

// Not `Os`: its holder keeps the lock file open for writing, and the kernel
// refuses to make such a file system read-only ("busy").
#[apply(lasting_strategies)]
#[ignore = "needs root: mounts a tmpfs (run by .ci/run)"]
fn a_file_system_turned_read_only_under_a_holder_keeps_the_lock_consistent(strategy: LockStrategy) {
    let mount = Mount::new("size=1m");
    let path = mount.path.join("x.lock");
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    let token = lock.owner().expect("owner").expect("record").token;
    mount.remount("ro");
    // Nothing could be removed: the lock is still held by this handle, and
    // the release can be retried once the file system is writable.
    let result = lock.release();
    assert_eq!(
        io_kind(&result),
        Some(io::ErrorKind::ReadOnlyFilesystem),
        "{result:?}"
    );
    assert!(lock.is_held(), "the handle still holds the lock");
    assert_eq!(
        lock.owner().expect("owner").map(|r| r.token),
        Some(token),
        "the lock on disk is still ours"
    );
    lock.ensure_held().expect("still ours");
    mount.remount("rw");
    lock.release().expect("release once writable");
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
    assert!(names(&mount.path).is_empty(), "{:?}", names(&mount.path));
    lock.acquire().expect("acquire again");
    lock.release().expect("release");
}

#[apply(every_strategy)]
#[ignore = "needs root: mounts a tmpfs (run by .ci/run)"]
fn a_full_file_system_is_a_typed_error_and_leaves_no_lock(strategy: LockStrategy) {
    let mount = Mount::new("size=256k");
    let filler = mount.path.join("filler");
    // Fill every block: the write stops at ENOSPC.
    let chunk = vec![0u8; 64 * 1024];
    let mut file = std::fs::File::create(&filler).expect("filler");
    loop {
        match io::Write::write(&mut file, &chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::StorageFull => break,
            Err(e) => panic!("fill: {e}"),
        }
    }
    drop(file);
    let path = mount.path.join("x.lock");
    let lock = open(&path, strategy);
    let result = lock.try_acquire();
    assert_eq!(
        io_kind(&result),
        Some(io::ErrorKind::StorageFull),
        "{result:?}"
    );
    assert!(!lock.is_held());
    assert!(
        !lock.is_locked().expect("is_locked"),
        "no lock was left behind"
    );
    // Nothing but the filler and, for Os, the (empty) lock file.
    let mut expected = vec!["filler".to_owned()];
    if strategy == LockStrategy::Os {
        expected.push("x.lock".to_owned());
        assert_eq!(std::fs::read(&path).expect("lock file").len(), 0);
    }
    assert_eq!(names(&mount.path), expected);
    // With room again, the lock works. Truncated, not just unlinked: a
    // child another test forked while the filler was open may hold its
    // descriptor until it execs, and an unlinked file keeps its blocks
    // while anyone has it open.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .and_then(|f| f.set_len(0))
        .expect("free space");
    std::fs::remove_file(&filler).expect("remove the filler");
    lock.acquire().expect("acquire");
    lock.release().expect("release");
}

/// A directory that others may read but only root may write.
fn root_only_dir() -> (TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
    (dir, root)
}

/// The outcome of one `try_acquire` by a process running as `nobody`.
fn try_as_nobody(strategy: LockStrategy, path: &Utf8Path) -> String {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args(CHILD_ARGS).uid(65534).gid(65534);
    let mut child = spawn_command(cmd, "race", &[strategy.as_str(), path.as_str()]);
    child.expect("READY");
    child.send("try");
    let outcome = child.expect("TRIED");
    child.close_stdin();
    assert!(child.wait().success());
    outcome
}

#[apply(every_strategy)]
#[ignore = "needs root: runs a process as nobody (run by .ci/run)"]
fn permission_denied_is_a_typed_error_and_changes_nothing(strategy: LockStrategy) {
    let (_dir, root) = root_only_dir();
    let path = root.join("x.lock");
    // A free lock in a directory nobody may not write to.
    assert_eq!(try_as_nobody(strategy, &path), "Io");
    assert!(names(&root).is_empty(), "{:?}", names(&root));
    // A lock held by root: it stays held and untouched.
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    let token = lock.owner().expect("owner").expect("record").token;
    let outcome = try_as_nobody(strategy, &path);
    match strategy {
        // Seen as held: the directory exists.
        LockStrategy::Mkdir => assert_eq!(outcome, "WouldBlock"),
        // The lock file (0644) cannot be opened for writing, nor a claim made.
        _ => assert_eq!(outcome, "Io"),
    }
    assert_eq!(lock.owner().expect("owner").map(|r| r.token), Some(token));
    lock.ensure_held().expect("still ours");
    lock.release().expect("release");
}

#[apply(every_strategy)]
fn the_lock_directory_removed_under_its_holder_is_lock_lost(strategy: LockStrategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let parent = Utf8PathBuf::from_path_buf(dir.path().join("locks")).expect("utf-8");
    std::fs::create_dir(&parent).expect("locks dir");
    let path = parent.join("x.lock");
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    std::fs::remove_dir_all(&parent).expect("remove the directory");
    assert!(matches!(lock.ensure_held(), Err(Error::LockLost { .. })));
    assert!(matches!(lock.release(), Err(Error::LockLost { .. })));
    assert!(!lock.is_held());
    // Nothing was made again.
    assert!(!parent.exists());
    // A later acquire names the missing directory.
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::MissingParent { .. })
    ));
    // With the directory back, the lock works.
    std::fs::create_dir(&parent).expect("locks dir again");
    lock.acquire().expect("acquire");
    lock.release().expect("release");
}

#[test]
fn a_mkdir_lock_removed_under_its_holder_is_lock_lost_and_free_for_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = Utf8PathBuf::from_path_buf(dir.path().join("x.lock")).expect("utf-8");
    let lock = open(&path, LockStrategy::Mkdir);
    lock.acquire().expect("acquire");
    std::fs::remove_dir_all(&path).expect("remove the lock directory");
    assert!(matches!(lock.ensure_held(), Err(Error::LockLost { .. })));
    let other = open(&path, LockStrategy::Mkdir);
    // The first handle's claim on the path in this process is released by
    // its (failing) release; then another handle gets the lock.
    assert!(matches!(lock.release(), Err(Error::LockLost { .. })));
    other.try_acquire().expect("free for others");
    // The old holder's release did not touch the new lock.
    assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));
    other.ensure_held().expect("the new holder's");
    other.release().expect("release");
}

/// A child process in `role`, running as `nobody`.
fn spawn_as_nobody(role: &str, args: &[&str]) -> common::Proc {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args(CHILD_ARGS).uid(65534).gid(65534);
    spawn_command(cmd, role, args)
}

/// A directory where everybody may create files (as `/tmp`).
fn shared_dir() -> (TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
    (dir, root)
}

/// A holder under umask 077 (or another user) leaves a record that a
/// waiter cannot read. The lock is simply busy: the waiter waits and times
/// out with the busy error, and never breaks it after the grace period.
#[apply(lasting_strategies)]
#[ignore = "needs root: runs a process as nobody (run by .ci/run)"]
fn a_record_the_waiter_cannot_read_is_a_busy_lock(strategy: LockStrategy) {
    let (_dir, root) = shared_dir();
    let path = root.join("x.lock");
    let mut holder = common::spawn("umask-hold", &["077", strategy.as_str(), path.as_str()]);
    holder.expect("ACQUIRED");
    let mut waiter = spawn_as_nobody("waiter", &[strategy.as_str(), path.as_str(), "50"]);
    waiter.expect("READY");
    let mut waits = |what: &str| {
        waiter.send("try");
        assert_eq!(waiter.expect("TRIED"), "WouldBlock", "{what}");
        waiter.send("wait 300");
        assert_eq!(waiter.expect("WAITED"), "Timeout", "{what}");
    };
    waits("nothing readable");
    if strategy == LockStrategy::Mkdir {
        // The directory listable, the record in it still not readable.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        waits("the record not readable");
    }
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "Ok");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    waiter.send("wait 5000");
    assert_eq!(waiter.expect("WAITED"), "Ok", "free after the release");
    waiter.send("release");
    assert_eq!(waiter.expect("RELEASED"), "Ok");
}

/// A release that fails before it changed anything keeps the lock held,
/// and its lease refreshed: nobody breaks it meanwhile.
#[apply(lasting_strategies)]
#[ignore = "needs root: runs a process as nobody (run by .ci/run)"]
fn a_failed_release_keeps_refreshing_the_lease(strategy: LockStrategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).expect("chown");
    let path = root.join("x.lock");
    let mut holder = spawn_as_nobody("hold", &[strategy.as_str(), path.as_str(), "200"]);
    holder.expect("ACQUIRED");
    // The holder may no longer remove names where its lock lives; it may
    // still write its record.
    let names_in = if strategy == LockStrategy::Mkdir {
        &path
    } else {
        &root
    };
    let mode = |m| std::fs::set_permissions(names_in, std::fs::Permissions::from_mode(m));
    mode(0o555).expect("chmod");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Io");
    mode(0o755).expect("chmod");
    // Five leases: a lease left unrefreshed would be broken.
    let contender = LockOptions::new()
        .strategy(strategy)
        .poll_interval(std::time::Duration::from_millis(5))
        .open(&path)
        .expect("open");
    assert!(
        matches!(
            contender.acquire_timeout(std::time::Duration::from_millis(1000)),
            Err(Error::Timeout { .. })
        ),
        "the lease of a held lock went unrefreshed"
    );
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "Ok");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    contender.try_acquire().expect("free");
    contender.release().expect("release");
}

/// Two containers with one host name each have a PID 1: `portalock
/// release --pid 1` in one must not free the other's live lock. Container
/// A (a new PID namespace, `unshare --pid --fork --mount-proc`) takes the
/// lock for its PID 1; this process, in another PID namespace, asks to
/// release the lock held for pid 1.
#[cfg(all(target_os = "linux", feature = "cli"))]
#[apply(lasting_strategies)]
#[ignore = "needs root: makes a PID namespace (run by .ci/run)"]
fn release_for_pid_1_of_another_pid_namespace_is_refused(strategy: LockStrategy) {
    const TOOL: &str = env!("CARGO_BIN_EXE_portalock");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.lock");
    let path = path.to_str().expect("utf-8");
    let ready = dir.path().join("ready");
    // In the container, PID 1 is this shell: it takes the lock for itself
    // and waits until its input ends.
    let script = format!(
        "'{TOOL}' acquire --strategy {strategy} --pid 1 '{path}' && touch '{}' && {{ read _ || true; }}",
        ready.display()
    );
    let mut container = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let deadline = std::time::Instant::now() + common::EVENT_TIMEOUT;
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container took no lock"
        );
        assert!(
            container.try_wait().expect("try_wait").is_none(),
            "the container ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let lock = open(Utf8Path::new(path), strategy);
    let token = lock.owner().expect("owner").expect("record").token;
    let released = Command::new(TOOL)
        .args([
            "release",
            "--strategy",
            strategy.as_str(),
            "--pid",
            "1",
            path,
        ])
        .output()
        .expect("release");
    assert_eq!(released.status.code(), Some(1), "{released:?}");
    assert_eq!(
        lock.owner().expect("owner").map(|r| r.token),
        Some(token),
        "the container's lock was released from outside it"
    );
    drop(container.stdin.take());
    assert!(container.wait().expect("wait").success());
}

/// A lock shared by several users: an `Os` lock file that one user made
/// under the usual umask (022) cannot be opened for writing by another,
/// whose try fails with an error; made with `permissions(0o666)` it can,
/// and the other user takes the lock once it is free.
#[rstest]
#[ignore = "needs root: runs a process as nobody (run by .ci/run)"]
fn permissions_let_another_user_take_an_os_lock_file(#[values(false, true)] shared: bool) {
    let (_dir, root) = shared_dir();
    let path = root.join("x.lock");
    let spec = if shared { "os+mode666" } else { "os" };
    let mut holder = common::spawn("umask-hold", &["022", spec, path.as_str()]);
    holder.expect("ACQUIRED");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    holder.close_stdin();
    assert!(holder.wait().success());
    let mut other = spawn_as_nobody("waiter", &["os", path.as_str(), "50"]);
    other.expect("READY");
    other.send("try");
    let tried = other.expect("TRIED");
    if shared {
        assert_eq!(tried, "Ok", "another user takes the lock file made 0666");
    } else {
        assert_eq!(
            tried, "Io",
            "0644 less umask 022: not writable by another user"
        );
    }
    other.close_stdin();
}
