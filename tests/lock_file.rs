//! The contract of `LockFile` (its docs, and the crate docs), for every strategy.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use portalock::{Error, FileKind, LockFile, LockOptions, LockStatus, LockStrategy, OwnerRecord};
use rstest::rstest;
use rstest_reuse::apply;

use common::fixture::{every_strategy, lasting_strategies, open, scratch};
use common::{assert_would_block_by, spawn, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

#[apply(every_strategy)]
fn two_handles_in_one_process_exclude_each_other(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let a = open(&path, strategy);
    let b = open(&path, strategy);
    a.acquire().expect("a acquires");
    assert_would_block_by(b.try_acquire(), std::process::id());
    assert!(!b.is_held());
    a.release().expect("a releases");
    b.try_acquire().expect("b acquires once a released");
    assert_would_block_by(a.try_acquire(), std::process::id());
    b.release().expect("b releases");
}

#[apply(every_strategy)]
fn handles_on_two_spellings_of_one_path_exclude_each_other(strategy: LockStrategy) {
    let (dir, path) = scratch();
    let other = format!(
        "{}//./{}",
        dir.path().display(),
        path.file_name().expect("name")
    );
    let a = open(&path, strategy);
    let b = open(&Utf8PathBuf::from(other), strategy);
    assert_eq!(a.path(), b.path());
    a.acquire().expect("a acquires");
    assert_would_block_by(b.try_acquire(), std::process::id());
    a.release().expect("a releases");
    b.try_acquire().expect("b acquires once a released");
    b.release().expect("b releases");
}

#[apply(every_strategy)]
fn acquire_is_not_reentrant(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    lock.acquire().expect("first acquire");
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(30)),
        Err(Error::Timeout { .. })
    ));
    // The failed attempts left the first acquisition intact.
    assert!(lock.is_held());
    lock.release().expect("release");
    assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));
}

#[apply(every_strategy)]
fn another_thread_may_release(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = Arc::new(open(&path, strategy));
    lock.acquire().expect("acquire on the main thread");
    let releaser = Arc::clone(&lock);
    std::thread::spawn(move || releaser.release())
        .join()
        .expect("releasing thread")
        .expect("release from another thread");
    assert!(!lock.is_held());
    assert!(!lock.is_locked().expect("is_locked"));
    open(&path, strategy).try_acquire().expect("free again");
}

#[apply(every_strategy)]
fn release_of_an_unlocked_handle_is_an_error(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    match lock.release() {
        Err(Error::NotLocked { lock, .. }) => assert_eq!(lock, path),
        other => panic!("expected NotLocked, got {other:?}"),
    }
    // Releasing a handle that is unlocked must not release another's lock.
    let holder = open(&path, strategy);
    holder.acquire().expect("holder acquires");
    assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));
    assert!(holder.is_held());
    assert!(lock.is_locked().expect("is_locked"));
}

#[apply(every_strategy)]
fn try_once_names_the_holder_in_another_process(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = child.expect("ACQUIRED").parse().expect("pid");
    assert_eq!(pid, child.pid());
    let lock = open(&path, strategy);
    assert_would_block_by(lock.try_acquire(), pid);
    assert!(lock.is_locked().expect("is_locked"));
    assert!(!lock.is_held());
    let owner = lock.owner().expect("owner").expect("a readable record");
    assert_eq!(owner.pid, pid);
    assert_eq!(owner.strategy, strategy);
    assert_eq!(owner.token.len(), 32);
    child.send("release");
    assert_eq!(child.expect("RELEASED"), "Ok");
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
    lock.try_acquire().expect("free after the child released");
    lock.release().expect("release");
    assert!(child.wait().success());
}

#[apply(every_strategy)]
fn bounded_wait_times_out_after_its_duration(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = child.expect("ACQUIRED").parse().expect("pid");
    let lock = open(&path, strategy);
    let wanted = Duration::from_millis(300);
    let started = Instant::now();
    let result = lock.acquire_timeout(wanted);
    let waited = started.elapsed();
    match result {
        Err(Error::Timeout {
            timeout,
            holder: Some(holder),
            ..
        }) => {
            assert_eq!(timeout, wanted);
            assert_eq!(holder.pid, pid);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(waited >= wanted, "gave up early, after {waited:?}");
    assert!(
        waited < wanted + Duration::from_secs(10),
        "waited {waited:?}"
    );
    assert!(!lock.is_held());
}

#[apply(every_strategy)]
fn a_waiter_gets_the_lock_when_another_process_releases(
    strategy: LockStrategy,
    #[values(true, false)] bounded: bool,
) {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    child.expect("ACQUIRED");
    let lock = Arc::new(open(&path, strategy));
    let waiter = Arc::clone(&lock);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = if bounded {
            waiter.acquire_timeout(EVENT_TIMEOUT)
        } else {
            waiter.acquire()
        };
        let _ = tx.send(result);
    });
    // The waiter cannot get the lock before the child lets go of it.
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    child.send("release");
    child.expect("RELEASED");
    rx.recv_timeout(EVENT_TIMEOUT)
        .expect("the waiter finished in time")
        .expect("the waiter got the lock");
    assert!(lock.is_held());
    lock.release().expect("release");
}

#[apply(every_strategy)]
fn a_waiter_in_the_same_process_wakes_on_release(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let holder = open(&path, strategy);
    holder.acquire().expect("acquire");
    let waiter = Arc::new(open(&path, strategy));
    let (tx, rx) = mpsc::channel();
    let w = Arc::clone(&waiter);
    std::thread::spawn(move || {
        let _ = tx.send(w.acquire());
    });
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    holder.release().expect("release");
    rx.recv_timeout(EVENT_TIMEOUT)
        .expect("the waiter woke in time")
        .expect("the waiter got the lock");
    assert!(waiter.is_held());
    waiter.release().expect("release");
}

#[apply(every_strategy)]
fn dropping_a_guard_or_a_handle_releases(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let other = open(&path, strategy);
    let lock = open(&path, strategy);
    {
        let guard = lock.lock().expect("lock");
        assert_eq!(guard.lock_file().path(), path.as_path());
        assert!(lock.is_held());
        assert!(matches!(other.try_acquire(), Err(Error::WouldBlock { .. })));
    }
    assert!(!lock.is_held());
    other.try_acquire().expect("free after the guard dropped");
    other.release().expect("release");

    lock.acquire().expect("acquire");
    drop(lock);
    other.try_acquire().expect("free after the handle dropped");
    other.release().expect("release");
}

#[apply(every_strategy)]
fn a_process_that_drops_its_lock_frees_it_for_others(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    child.expect("ACQUIRED");
    // Closing the child's input ends its loop; the handle is dropped on exit.
    assert!(child.wait().success());
    let lock = open(&path, strategy);
    lock.try_acquire().expect("free after the holder exited");
    lock.release().expect("release");
}

#[apply(every_strategy)]
fn an_old_guard_does_not_release_a_newer_acquisition(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    let guard = lock.lock().expect("lock");
    lock.release().expect("release through the handle");
    lock.acquire().expect("acquire again");
    drop(guard);
    assert!(lock.is_held(), "the old guard released the new acquisition");
    let guard = lock.try_lock().expect_err("still held");
    assert!(guard.is_contended());
    lock.release().expect("release");
}

#[apply(every_strategy)]
fn guard_release_reports_errors(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    let guard = lock.lock_timeout(Duration::from_secs(1)).expect("lock");
    assert_eq!(guard.token().len(), 32);
    guard.release().expect("explicit release");
    assert!(!lock.is_held());
    let guard = lock.lock().expect("lock again");
    lock.release().expect("release through the handle");
    assert!(matches!(guard.release(), Err(Error::NotLocked { .. })));
}

#[apply(every_strategy)]
fn status_and_owner_follow_the_lock(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
    assert!(lock.owner().expect("owner").is_none());
    assert!(!lock.is_locked().expect("is_locked"));
    let guard = lock.lock().expect("lock");
    let owner = lock.owner().expect("owner").expect("a record");
    assert_eq!(owner.pid, std::process::id());
    assert_eq!(owner.token, guard.token());
    assert_eq!(owner.strategy, strategy);
    assert_eq!(owner.v, portalock::RECORD_VERSION);
    assert!(owner.start.is_some());
    assert!(!owner.hostname.is_empty());
    let age = std::time::SystemTime::now()
        .duration_since(owner.acquired_at)
        .expect("taken in the past");
    assert!(age < Duration::from_secs(600), "taken {age:?} ago");
    assert!(owner.to_json().contains(&format!(
        r#""acquired_at":"{}""#,
        humantime::format_rfc3339_seconds(owner.acquired_at)
    )));
    drop(guard);
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
}

#[apply(every_strategy)]
fn release_leaves_the_documented_artifacts(strategy: LockStrategy) {
    let (dir, path) = scratch();
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    lock.release().expect("release");
    match strategy {
        // The Os lock file stays, so that later waiters all lock the same
        // inode, and on a local file system it keeps the last holder's
        // record: free is what the kernel's lock says, and nobody is
        // named the owner.
        LockStrategy::Os => {
            let left = std::fs::read(&path).expect("lock file stays");
            let last = OwnerRecord::parse(&left).expect("the last holder's record");
            assert_eq!(last.pid, std::process::id());
            assert_eq!(lock.owner().expect("owner"), None);
            assert_eq!(lock.status().expect("status"), LockStatus::Free);
        }
        _ => assert!(!path.exists(), "{strategy} left {path}"),
    }
    // No private record files are left behind either: only the
    // turnstile's gate, `.<name>.gate`, stays (and the Os lock file).
    let gate = format!(".{}.gate", path.file_name().expect("name"));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_str() != Some(gate.as_str()))
        .collect();
    let expected = usize::from(strategy == LockStrategy::Os);
    assert_eq!(names.len(), expected, "left behind: {names:?}");
    assert!(dir.path().join(&gate).is_file(), "no gate {gate}");
}

/// A lock broken and taken by another holder is lost: its release says so
/// and touches nothing of the new holder's. An `Os` lock is the kernel's,
/// which nobody can take over: on a local file system a record written
/// into its file by something that ignores the lock changes nothing, and
/// the release neither reports a loss nor touches that record.
#[apply(every_strategy)]
fn release_after_the_lock_was_taken_over_is_lock_lost(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    let mut theirs = lock.owner().expect("owner").expect("record");
    theirs.token = "f".repeat(32);
    theirs.pid = 1;
    let ours = lock.owner().expect("owner").expect("record").token;
    // Take the lock over the way a breaker and a new holder would.
    let record_path = match strategy {
        // The kernel lock cannot be taken; only the record can change.
        LockStrategy::Os => path.clone(),
        LockStrategy::Mkdir => {
            std::fs::remove_file(path.join(format!("{ours}.json"))).expect("break");
            path.join(format!("{}.json", theirs.token))
        }
        _ => {
            let claim = path.with_file_name(format!(".test.lock.{ours}.owner"));
            std::fs::remove_file(claim).expect("break the claim");
            std::fs::remove_file(&path).expect("break the lock");
            path.clone()
        }
    };
    std::fs::write(&record_path, theirs.to_json()).expect("replace the record");
    match lock.release() {
        Ok(()) if strategy == LockStrategy::Os => {}
        Err(Error::LockLost {
            holder: Some(holder),
            ..
        }) if strategy != LockStrategy::Os => assert_eq!(holder.token, theirs.token),
        other => panic!("{strategy}: unexpected {other:?}"),
    }
    assert!(!lock.is_held());
    // Nothing of the new holder's was touched.
    assert_eq!(
        std::fs::read_to_string(&record_path).expect("record stays"),
        theirs.to_json()
    );
}

#[apply(every_strategy)]
fn a_missing_parent_directory_is_a_typed_error(strategy: LockStrategy) {
    let (dir, _) = scratch();
    let path = dir.path().join("no-such-dir").join("x.lock");
    let lock = open(
        &Utf8PathBuf::try_from(path.clone()).expect("utf-8"),
        strategy,
    );
    for result in [lock.try_acquire(), lock.status().map(drop)] {
        match result {
            Err(Error::MissingParent { path: p, .. }) => assert_eq!(p.as_std_path(), path),
            other => panic!("expected MissingParent, got {other:?}"),
        }
    }
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "created the parent"
    );
}

#[rstest]
#[case::os_on_a_directory(LockStrategy::Os, FileKind::Directory)]
#[case::link_on_a_directory(LockStrategy::Link, FileKind::Directory)]
#[case::mkdir_on_a_file(LockStrategy::Mkdir, FileKind::File)]
fn a_lock_path_of_the_wrong_kind_is_a_typed_error(
    #[case] strategy: LockStrategy,
    #[case] found: FileKind,
) {
    let (_dir, path) = scratch();
    match found {
        FileKind::Directory => std::fs::create_dir(&path).expect("mkdir"),
        _ => std::fs::write(&path, "precious").expect("write"),
    }
    let lock = open(&path, strategy);
    for result in [
        lock.try_acquire(),
        lock.acquire_timeout(Duration::from_millis(20)),
        lock.status().map(drop),
    ] {
        match result {
            Err(Error::WrongFileType {
                found: f,
                strategy: s,
                ..
            }) => {
                assert_eq!(f, found);
                assert_eq!(s, strategy);
            }
            other => panic!("expected WrongFileType, got {other:?}"),
        }
    }
    // Nothing was lost.
    match found {
        FileKind::Directory => assert_eq!(std::fs::read_dir(&path).expect("dir").count(), 0),
        _ => assert_eq!(std::fs::read_to_string(&path).expect("file"), "precious"),
    }
}

#[cfg(unix)]
#[apply(every_strategy)]
fn a_symlink_at_the_lock_path_is_refused_and_not_followed(
    strategy: LockStrategy,
    #[values(true, false)] dangling: bool,
) {
    let (dir, path) = scratch();
    let victim = dir.path().join("victim");
    if !dangling {
        std::fs::write(&victim, "precious").expect("victim");
    }
    std::os::unix::fs::symlink(&victim, &path).expect("symlink");
    let lock = open(&path, strategy);
    for result in [lock.try_acquire(), lock.status().map(drop)] {
        assert!(
            matches!(result, Err(Error::Symlink { .. })),
            "expected Symlink, got {result:?}"
        );
    }
    if dangling {
        assert!(!victim.exists(), "created the symlink's target");
    } else {
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
    }
    assert!(path.is_symlink());
}

#[test]
fn a_foreign_file_is_never_overwritten_by_an_os_lock() {
    let (_dir, path) = scratch();
    std::fs::write(&path, "important data\n").expect("write");
    let lock = open(&path, LockStrategy::Os);
    assert!(matches!(lock.try_acquire(), Err(Error::Foreign { .. })));
    assert!(!lock.is_held());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "important data\n"
    );
    // The failed attempt left nothing locked.
    assert!(!lock.is_locked().expect("is_locked"));
}

#[rstest]
#[case::link(LockStrategy::Link)]
#[case::mkdir(LockStrategy::Mkdir)]
fn a_foreign_artifact_is_a_lock_with_an_unknown_holder(#[case] strategy: LockStrategy) {
    let (_dir, path) = scratch();
    match strategy {
        LockStrategy::Mkdir => std::fs::create_dir(&path).expect("mkdir"),
        _ => std::fs::write(&path, "not a record").expect("write"),
    }
    let lock = open(&path, strategy);
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::WouldBlock { holder: None, .. })
    ));
    assert_eq!(lock.status().expect("status"), LockStatus::Held(None));
    assert!(path.exists());
}

#[cfg(unix)]
#[test]
fn a_non_utf8_path_is_a_typed_error() {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/lock-\xff.lock"));
    match LockFile::new(path) {
        Err(Error::NonUtf8Path { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected NonUtf8Path, got {other:?}"),
    }
    assert!(matches!(
        portalock::lock_file(path),
        Err(Error::NonUtf8Path { .. })
    ));
}

#[test]
fn paths_without_a_file_name_are_refused() {
    for bad in ["", "/", "..", "/tmp/.."] {
        assert!(
            matches!(LockFile::new(bad), Err(Error::Io { .. })),
            "{bad:?} was accepted"
        );
    }
}

#[test]
fn a_relative_path_is_made_absolute_at_open() {
    let lock = LockFile::new("relative.lock").expect("open");
    assert!(lock.path().is_absolute());
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(lock.path().as_std_path(), cwd.join("relative.lock"));
}

#[test]
fn lock_file_shortcut_returns_a_held_lock() {
    let (_dir, path) = scratch();
    let lock = portalock::lock_file(&path).expect("lock_file");
    assert!(lock.is_held());
    // The default, Auto, resolved for the scratch directory's file system.
    assert_eq!(LockStrategy::default(), LockStrategy::Auto);
    let fs = lock.file_system().expect("file system");
    assert_eq!(lock.strategy(), fs.auto_strategy());
    assert!(matches!(
        portalock::LockFile::new(&path).expect("open").try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    drop(lock);
    portalock::lock_file(&path)
        .expect("free after drop")
        .release()
        .expect("release");
}

#[test]
fn the_os_lock_is_freed_by_the_kernel_when_its_holder_is_killed() {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &["os", path.as_str()]);
    child.expect("ACQUIRED");
    let lock = open(&path, LockStrategy::Os);
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    child.kill();
    lock.acquire_timeout(EVENT_TIMEOUT)
        .expect("freed by the kernel");
    // The dead holder's record was replaced by ours.
    assert_eq!(
        lock.owner().expect("owner").map(|o| o.pid),
        Some(std::process::id())
    );
}

#[test]
fn errors_name_the_path_and_convert_to_io_errors() {
    let (_dir, path) = scratch();
    let holder = open(&path, LockStrategy::Link);
    holder.acquire().expect("acquire");
    let err = open(&path, LockStrategy::Link)
        .try_acquire()
        .expect_err("held");
    let text = err.to_string();
    assert!(text.contains(path.as_str()), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert_eq!(err.path(), Some(path.as_path()));
    assert_eq!(err.holder().map(|h| h.pid), Some(std::process::id()));
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock);
}

#[apply(every_strategy)]
fn a_synced_lock_is_taken_refreshed_and_released_like_any_other(strategy: LockStrategy) {
    let (dir, path) = scratch();
    let lock = LockOptions::new()
        .strategy(strategy)
        .sync(true)
        .lease(Duration::from_millis(30))
        .open(&path)
        .expect("open");
    lock.acquire().expect("acquire");
    let first = lock.owner().expect("owner").expect("record");
    assert_eq!(first.pid, std::process::id());
    // The heartbeat rewrites the record through its private name.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lock.owner().expect("owner").expect("record").beat == 0 {
        assert!(std::time::Instant::now() < deadline, "no heartbeat");
        std::thread::sleep(Duration::from_millis(5));
    }
    lock.ensure_held().expect("held");
    lock.release().expect("release");
    assert!(!lock.is_locked().expect("probe"));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".gate"))
        .collect();
    match strategy {
        // The Os lock file stays, emptied (and the turnstile's gate).
        LockStrategy::Os => assert_eq!(left.len(), 1),
        _ => assert!(left.is_empty(), "left behind: {left:?}"),
    }
}

#[test]
fn auto_resolves_when_the_handle_is_opened_and_records_name_the_result() {
    let (_dir, path) = scratch();
    let lock = LockFile::with_strategy(&path, LockStrategy::Auto).expect("open");
    let fs = lock.file_system().expect("file system");
    // The scratch directory is on a local disk (or tmpfs).
    assert!(fs.is_local(), "{fs}");
    assert_eq!(lock.strategy(), LockStrategy::Os);
    lock.acquire().expect("acquire");
    assert_eq!(
        lock.owner().expect("owner").expect("record").strategy,
        LockStrategy::Os
    );
    // An explicit Os handle takes the same lock.
    let os = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    assert!(matches!(os.try_acquire(), Err(Error::WouldBlock { .. })));
    lock.release().expect("release");
    assert_eq!("auto".parse::<LockStrategy>(), Ok(LockStrategy::Auto));
}

/// Any lock that can be taken can be released and broken, whatever the
/// length of its name (up to the file system's limit).
#[apply(every_strategy)]
fn long_names_lock_release_and_break(strategy: LockStrategy, #[values(120, 180, 240)] len: usize) {
    let (_dir, default_path) = scratch();
    let dir = default_path.parent().expect("dir").to_owned();
    let name = format!("{}.lock", "n".repeat(len - 5));
    let path = dir.join(&name);
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    lock.release().expect("release");
    if strategy != LockStrategy::Os {
        lock.acquire().expect("acquire again");
        let other = open(&path, strategy);
        other.force_break().expect("force break").expect("a record");
        assert!(matches!(lock.release(), Err(Error::LockLost { .. })));
        other.acquire().expect("acquire after the break");
        other.release().expect("release");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_str() != Some(name.as_str()))
        .collect();
    // The turnstile's gate stays, its name shortened as the private
    // names of a long lock name are (at most 64 bytes of the name).
    let gates: Vec<_> = left
        .iter()
        .filter(|n| n.to_string_lossy().ends_with(".gate"))
        .collect();
    assert_eq!(gates.len(), 1, "left behind: {left:?}");
    assert!(gates[0].len() <= 1 + 64 + 6, "{gates:?}");
    assert_eq!(left.len(), 1, "left behind: {left:?}");
}

/// One path taken through two strategies (a script with `--strategy link`,
/// a library user with `Auto` on a local disk) never has two holders, and
/// the other strategy's artifact is left as it was.
#[rstest]
#[case(LockStrategy::Link, LockStrategy::Os)]
#[case(LockStrategy::Os, LockStrategy::Link)]
#[case(LockStrategy::Mkdir, LockStrategy::Os)]
#[case(LockStrategy::Os, LockStrategy::Mkdir)]
#[case(LockStrategy::Mkdir, LockStrategy::Link)]
#[case(LockStrategy::Link, LockStrategy::Mkdir)]
fn one_path_through_two_strategies_never_has_two_holders(
    #[case] held_with: LockStrategy,
    #[case] tried_with: LockStrategy,
) {
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &[held_with.as_str(), path.as_str()]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    let record = open(&path, held_with)
        .owner()
        .expect("owner")
        .expect("record");
    assert_eq!(record.pid, pid);

    let other = open(&path, tried_with);
    let tried = other.try_acquire();
    assert!(tried.is_err(), "{held_with} held, {tried_with} got it too");
    let message = tried.expect_err("refused").to_string();
    assert!(
        message.contains(held_with.as_str()) && message.contains(tried_with.as_str()),
        "the error names both strategies: {message}"
    );
    // Nor does a forced break through the other strategy remove it.
    let _ = other.force_break();
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "Ok");
    let now = open(&path, held_with)
        .owner()
        .expect("owner")
        .expect("record");
    assert_eq!(now, record, "the holder's record was changed");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
}

/// A handle inherited through `fork()` never releases the parent's lock
/// when the child drops it.
#[cfg(unix)]
#[apply(every_strategy)]
fn a_handle_dropped_in_a_forked_child_leaves_the_lock_to_its_parent(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut parent = spawn("fork-drop", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = parent.expect("ACQUIRED").parse().expect("pid");
    parent.expect("FORKED");
    assert_would_block_by(open(&path, strategy).try_acquire(), pid);
    parent.send("check");
    assert_eq!(parent.expect("CHECKED"), "Ok");
    parent.send("release");
    assert_eq!(parent.expect("RELEASED"), "Ok");
    open(&path, strategy)
        .try_acquire()
        .expect("free after the release");
}

/// A child of `fork()` inherits the parent's table of held locks too: a
/// lock its parent held at the fork and released since must be free for
/// the child's own handles.
#[cfg(unix)]
#[apply(every_strategy)]
fn a_forked_child_takes_a_lock_its_parent_released(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut parent = spawn("fork-after-release", &[strategy.as_str(), path.as_str()]);
    assert_eq!(
        parent.expect("CHILD"),
        "0",
        "the child could not take the lock"
    );
    assert!(parent.wait().success());
}

/// An owned guard (`lock_owned` on an `Arc<LockFile>`) holds the lock
/// wherever it is moved, here into another thread, against another
/// process, until it is dropped there.
#[apply(every_strategy)]
fn an_owned_guard_holds_the_lock_in_another_thread_until_dropped(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let lock = Arc::new(open(&path, strategy));
    let guard = Arc::clone(&lock).lock_owned().expect("lock_owned");
    let mut other = spawn("race", &[strategy.as_str(), path.as_str()]);
    other.expect("READY");
    let (moved_tx, moved_rx) = mpsc::channel();
    let (drop_tx, drop_rx) = mpsc::channel::<()>();
    let keeper = std::thread::spawn(move || {
        let _ = moved_tx.send(guard.token().to_owned());
        let _ = drop_rx.recv_timeout(EVENT_TIMEOUT);
        drop(guard);
    });
    let token = moved_rx.recv_timeout(EVENT_TIMEOUT).expect("moved");
    assert_eq!(lock.owner().expect("owner").map(|r| r.token), Some(token));
    other.send("try");
    assert_eq!(other.expect("TRIED"), "WouldBlock");
    drop_tx.send(()).expect("tell the keeper");
    keeper.join().expect("keeper");
    assert!(!lock.is_held());
    other.send("try");
    assert_eq!(other.expect("TRIED"), "Ok");
    other.send("release");
    assert_eq!(other.expect("RELEASED"), "Ok");
}

/// The wait hook: a wait on a lock another process holds is reported once
/// after the first delay and then at the interval, naming the holder, with
/// a growing wait time; no report comes once the wait has ended, and none
/// for a try-once or a lock that is free.
#[apply(every_strategy)]
fn the_wait_hook_names_the_holder_while_the_wait_lasts(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut child = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = child.expect("ACQUIRED").parse().expect("pid");
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (second, seen_twice) = mpsc::channel();
    let lock = {
        let reports = Arc::clone(&reports);
        LockOptions::new()
            .strategy(strategy)
            .on_wait(move |w| {
                let mut reports = reports.lock().expect("reports");
                reports.push((
                    w.holder.map(|h| h.pid),
                    w.waited,
                    w.reports,
                    w.path.to_owned(),
                ));
                if reports.len() == 2 {
                    let _ = second.send(());
                }
            })
            .on_wait_timing(Duration::from_millis(50), Duration::from_millis(50))
            .open(&path)
            .expect("open")
    };
    // The holder lets go once the waiter has been told twice.
    let releaser = std::thread::spawn(move || {
        seen_twice
            .recv_timeout(EVENT_TIMEOUT)
            .expect("two reports of the wait");
        child.send("release");
        assert_eq!(child.expect("RELEASED"), "Ok");
        child
    });
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    let guard = lock
        .lock_timeout(EVENT_TIMEOUT)
        .expect("taken after the release");
    let after = reports.lock().expect("reports").clone();
    let child = releaser.join().expect("releaser");
    assert!(after.len() >= 2, "{after:?}");
    for (n, (holder, waited, count, at)) in after.iter().enumerate() {
        assert_eq!(*count as usize, n, "{after:?}");
        assert_eq!(at, &path);
        assert!(*waited >= Duration::from_millis(50), "{after:?}");
        if n < 2 {
            assert_eq!(*holder, Some(pid), "report {n} names the holder: {after:?}");
        }
    }
    assert!(after[1].1 > after[0].1, "{after:?}");
    drop(guard);
    assert!(child.wait().success());
    // Free, and try-once: no report.
    lock.lock_timeout(EVENT_TIMEOUT)
        .expect("free")
        .release()
        .expect("release");
    lock.try_lock().expect("free").release().expect("release");
    assert_eq!(reports.lock().expect("reports").len(), after.len());
}

/// A hook that blocks delays other reports, never a wait: a bounded wait
/// whose hook never returns still ends at its deadline. Timings too long
/// to add to an `Instant` mean "never" rather than a panic, and leave the
/// reporting thread serving other waits. No report starts for a try-once,
/// nor once a wait has ended.
#[test]
fn a_blocking_or_never_due_hook_does_not_hold_up_a_wait() {
    let (_dir, path) = scratch();
    let strategy = LockStrategy::Mkdir;
    let holder = open(&path, strategy);
    holder.acquire().expect("holder");

    // Never due: no report, no panic.
    let never = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lock = {
        let never = Arc::clone(&never);
        LockOptions::new()
            .strategy(strategy)
            .on_wait(move |_| {
                never.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .on_wait_timing(Duration::MAX, Duration::MAX)
            .open(&path)
            .expect("open")
    };
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(100)),
        Err(Error::Timeout { .. })
    ));

    // A hook that blocks until the test lets it go.
    let (release_hook, blocked) = mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let (entered, hook_entered) = mpsc::channel();
    let lock = {
        let blocked = Arc::clone(&blocked);
        LockOptions::new()
            .strategy(strategy)
            .on_wait(move |_| {
                let _ = entered.send(());
                let _ = blocked.lock().map(|rx| rx.recv_timeout(EVENT_TIMEOUT));
            })
            .on_wait_timing(Duration::ZERO, Duration::from_millis(10))
            .open(&path)
            .expect("open")
    };
    let started = Instant::now();
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(200)),
        Err(Error::Timeout { .. })
    ));
    hook_entered
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the hook was called");
    assert!(
        started.elapsed() < EVENT_TIMEOUT,
        "the wait waited for its hook"
    );
    drop(release_hook);

    // The reporting thread still serves: a counting hook is called, and
    // not for a try-once or after its wait ended.
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lock = {
        let count = Arc::clone(&count);
        LockOptions::new()
            .strategy(strategy)
            .on_wait(move |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .on_wait_timing(Duration::from_millis(20), Duration::from_millis(20))
            .open(&path)
            .expect("open")
    };
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(300)),
        Err(Error::Timeout { .. })
    ));
    let after = count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after >= 2, "{after} reports of a 300 ms wait every 20 ms");
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    // (ten report intervals without a wait)
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), after);
    assert_eq!(never.load(std::sync::atomic::Ordering::SeqCst), 0);
    holder.release().expect("release");
}

/// A handle whose lock was broken by force meanwhile does not go on
/// counting as its holder: its next acquire says the lock was lost (once),
/// and the one after that takes the lock as any. (It said `WouldBlock`,
/// "is held", with no holder, until `release` was called.)
#[apply(lasting_strategies)]
fn acquiring_again_on_a_handle_whose_lock_was_lost_says_so_once(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let (holder, breaker) = (open(&path, strategy), open(&path, strategy));
    holder.acquire().expect("acquire");
    breaker.force_break().expect("force").expect("a record");
    assert!(matches!(holder.try_acquire(), Err(Error::LockLost { .. })));
    assert!(!holder.is_held());
    holder.try_acquire().expect("free: taken");
    holder.release().expect("release");
    // Held and not lost: acquiring again is refused, as ever.
    holder.acquire().expect("acquire");
    assert!(matches!(
        holder.try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    holder.release().expect("release");
}
