//! The tools beside `LockFile`: low-level `flock`, `LockedFile`, shared
//! locks, the reentrant lock and temporary lock files.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portalock::flock::{lock, unlock, LockFlags};
use portalock::{Error, LockFile, LockOptions, LockStrategy, LockedFile, Mode, ReentrantLockFile};

use common::fixture::scratch_root as scratch;
use common::{run_counters, spawn};

#[test]
fn child() {
    common::child_entry();
}

#[test]
fn flock_excludes_another_process_until_it_unlocks() {
    let (_dir, root) = scratch();
    let path = root.join("data");
    std::fs::write(&path, "x").expect("file");
    let mut holder = spawn("flock", &[path.as_str()]);
    holder.expect("LOCKED");
    let file = std::fs::File::open(&path).expect("open");
    let e = lock(&file, LockFlags::SHARED | LockFlags::NON_BLOCKING).expect_err("excluded");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert!(holder.wait().success());
    lock(&file, LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING).expect("free after exit");
    unlock(&file).expect("unlock");
}

#[test]
fn locked_files_serialise_read_modify_write_across_processes() {
    const PROCESSES: usize = 4;
    const N: u32 = 50;
    let (_dir, root) = scratch();
    let path = root.join("counter");
    let n = N.to_string();
    let procs = (0..PROCESSES)
        .map(|_| spawn("file-count", &[path.as_str(), &n]))
        .collect();
    let total = run_counters(procs, path.as_std_path());
    assert_eq!(total, PROCESSES as u64 * u64::from(N));
}

#[test]
fn locked_file_timeouts_and_fail_when_locked() {
    let (_dir, root) = scratch();
    let path = root.join("f");
    let held = LockedFile::open(&path).expect("first");
    let started = Instant::now();
    match LockedFile::options()
        .timeout(Some(Duration::from_millis(100)))
        .open(&path)
    {
        Err(Error::Timeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(100)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    // fail_when_locked gives up on the first look, whatever the timeout.
    match LockedFile::options()
        .timeout(None)
        .fail_when_locked(true)
        .open(&path)
    {
        Err(Error::WouldBlock { .. }) => {}
        other => panic!("expected WouldBlock, got {other:?}"),
    }
    held.release().expect("release");
    let free = LockedFile::options()
        .timeout(Some(Duration::ZERO))
        .open(&path)
        .expect("free");
    free.release().expect("release");
}

#[test]
fn truncate_mode_truncates_only_once_the_lock_is_held() {
    let (_dir, root) = scratch();
    let path = root.join("f");
    std::fs::write(&path, "precious").expect("file");
    let mut holder = LockedFile::options()
        .mode(Mode::ReadWrite)
        .open(&path)
        .expect("hold");
    // A waiter in Truncate mode gives up without destroying the data.
    assert!(matches!(
        LockedFile::options()
            .mode(Mode::Truncate)
            .timeout(Some(Duration::from_millis(20)))
            .open(&path),
        Err(Error::Timeout { .. })
    ));
    let mut text = String::new();
    holder.read_to_string(&mut text).expect("read");
    assert_eq!(text, "precious");
    drop(holder);
    let mut w = LockedFile::options()
        .mode(Mode::Truncate)
        .open(&path)
        .expect("truncate");
    w.write_all(b"new").expect("write");
    drop(w);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
}

#[test]
fn locked_file_refuses_what_is_not_a_regular_file() {
    let (_dir, root) = scratch();
    let dir = root.join("d");
    std::fs::create_dir(&dir).expect("dir");
    assert!(matches!(
        LockedFile::open(&dir),
        Err(Error::WrongFileType { .. })
    ));
    assert!(matches!(
        LockedFile::options()
            .mode(Mode::Read)
            .open(root.join("missing")),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        LockedFile::open(root.join("no/parent")),
        Err(Error::MissingParent { .. })
    ));
}

#[test]
fn a_removed_locked_file_is_not_handed_to_a_waiter() {
    let (_dir, root) = scratch();
    let path = root.join("temp");
    let holder = LockedFile::options()
        .remove_on_release(true)
        .open(&path)
        .expect("hold");
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || {
            LockedFile::options()
                .timeout(Some(Duration::from_secs(10)))
                .poll_interval(Duration::from_millis(2))
                .open(&path)
        })
    };
    // The waiter has opened (or will open) the file; the holder removes it
    // on release, so whatever the waiter gets must be what the path names.
    std::thread::sleep(Duration::from_millis(20));
    holder.release().expect("release");
    let got = waiter.join().expect("waiter").expect("lock");
    let named = std::fs::metadata(&path).expect("the path names a file again");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = got.metadata().expect("meta");
        assert_eq!((named.dev(), named.ino()), (held.dev(), held.ino()));
    }
    assert_eq!(named.len(), got.metadata().expect("meta").len());
    // Two distinct files cannot both be called `temp`: another opener
    // is excluded by the waiter's lock.
    assert!(matches!(
        LockedFile::options()
            .timeout(Some(Duration::ZERO))
            .open(&path),
        Err(Error::WouldBlock { .. })
    ));
}

#[test]
fn readers_share_an_os_lock_across_processes_and_a_writer_is_excluded() {
    let (_dir, root) = scratch();
    let path = root.join("rw.lock");
    let mut reader = spawn("shared", &[path.as_str()]);
    reader.expect("SHARED");
    let mine = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    let shared = mine.try_lock_shared().expect("a second reader");
    let writer = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    assert!(matches!(
        writer.try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    drop(shared);
    assert!(
        matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })),
        "the other process still reads"
    );
    assert!(reader.wait().success());
    writer.try_acquire().expect("no reader left");
    assert!(matches!(
        mine.try_lock_shared(),
        Err(Error::WouldBlock {
            holder: Some(_),
            ..
        })
    ));
    writer.release().expect("release");
}

#[test]
fn a_reentrant_lock_counts_its_owners_acquisitions() {
    let (_dir, root) = scratch();
    let path = root.join("r.lock");
    let lock = Arc::new(ReentrantLockFile::new(
        LockOptions::new()
            .strategy(LockStrategy::Mkdir)
            .open(&path)
            .expect("open"),
    ));
    lock.acquire().expect("first");
    lock.try_acquire().expect("again, same thread");
    assert_eq!(lock.count(), 2);

    // Another thread can neither take it nor release it.
    let other = Arc::clone(&lock);
    let (taken, released) = std::thread::spawn(move || {
        (
            other.acquire_timeout(Duration::from_millis(30)),
            other.release(),
        )
    })
    .join()
    .expect("thread");
    assert!(matches!(taken, Err(Error::Timeout { .. })), "{taken:?}");
    assert!(
        matches!(released, Err(Error::WrongThread { .. })),
        "{released:?}"
    );

    // Another process sees it held until the count returns to zero.
    let probe = LockFile::with_strategy(&path, LockStrategy::Mkdir).expect("open");
    lock.release().expect("one");
    assert!(matches!(probe.try_acquire(), Err(Error::WouldBlock { .. })));
    lock.release().expect("two");
    assert_eq!(lock.count(), 0);
    probe.try_acquire().expect("free at zero");
    probe.release().expect("release");
    assert!(matches!(lock.release(), Err(Error::NotLocked { .. })));

    // A thread waiting in this process gets it when the owner lets go.
    lock.acquire().expect("again");
    let waiter = Arc::clone(&lock);
    let handle = std::thread::spawn(move || {
        waiter.acquire_timeout(Duration::from_secs(10))?;
        let count = waiter.count();
        waiter.release()?;
        Ok::<usize, Error>(count)
    });
    std::thread::sleep(Duration::from_millis(20));
    lock.release().expect("release");
    assert_eq!(handle.join().expect("thread").expect("waiter"), 1);
}

#[test]
fn temporary_os_lock_files_exclude_processes_and_vanish() {
    let (_dir, root) = scratch();
    let lock = root.join("temp.lock");
    let counter = root.join("counter");
    std::fs::write(&counter, "0\n").expect("counter");
    let procs = (0..4)
        .map(|_| {
            spawn(
                "count",
                &["temp-os", lock.as_str(), counter.as_str(), "100"],
            )
        })
        .collect();
    assert_eq!(run_counters(procs, counter.as_std_path()), 400);
    assert!(!lock.exists(), "the lock file exists only while held");
}

#[rstest::rstest]
fn a_semaphore_admits_exactly_n_processes_and_the_next_when_one_leaves(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    const N: usize = 3;
    let (_dir, root) = scratch();
    let prefix = root.join("jobs");
    let n = N.to_string();
    let mut procs: Vec<_> = (0..=N)
        .map(|_| spawn("slot", &[prefix.as_str(), &n, strategy]))
        .collect();
    // N of the N+1 get a slot (bounded wait for each announcement).
    let mut holding = Vec::new();
    let deadline = Instant::now() + common::EVENT_TIMEOUT;
    while holding.len() < N {
        assert!(Instant::now() < deadline, "only {holding:?} got a slot");
        for (i, p) in procs.iter_mut().enumerate() {
            if holding.iter().any(|(j, _)| *j == i) {
                continue;
            }
            if let Some((event, slot)) = p.poll_event(Duration::from_millis(10)) {
                assert_eq!(event, "SLOT");
                holding.push((i, slot));
            }
        }
    }
    let mut slots: Vec<_> = holding.iter().map(|(_, s)| s.clone()).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), N, "distinct slots: {holding:?}");
    // All N slots are taken: a try from here finds none, and the last
    // process is still waiting.
    let sem = portalock::BoundedSemaphore::new(
        &prefix,
        N,
        LockOptions::new().strategy(strategy.parse().expect("strategy")),
    )
    .expect("semaphore");
    assert!(matches!(sem.try_acquire(), Err(Error::WouldBlock { .. })));
    let waiting = (0..=N)
        .find(|i| !holding.iter().any(|(j, _)| j == i))
        .expect("one waits");
    assert!(procs[waiting].poll_event(Duration::ZERO).is_none());
    // One leaves; the waiting one gets its slot.
    let (leaver, freed) = holding[0].clone();
    procs[leaver].close_stdin();
    let (event, slot) = procs[waiting].next_event();
    assert_eq!((event.as_str(), slot), ("SLOT", freed));
    for p in procs {
        assert!(p.wait().success());
    }
}

#[test]
fn a_pid_file_names_its_holder_and_a_crashed_holders_file_is_no_obstacle() {
    let (_dir, root) = scratch();
    let path = root.join("daemon.pid");
    let mut holder = spawn("pidfile", &[path.as_str()]);
    holder.expect("PIDFILE");
    let pid = holder.pid();
    assert_eq!(
        portalock::PidFileLock::read(&path).expect("read"),
        Some(pid)
    );
    #[cfg(unix)]
    assert_eq!(
        portalock::PidFileLock::holder(&path).expect("holder"),
        Some(pid)
    );
    assert!(matches!(
        portalock::PidFileLock::try_acquire(&path),
        Err(Error::WouldBlock { .. })
    ));
    // Killed: the file stays, with its PID, but nobody holds it.
    holder.kill();
    assert_eq!(
        portalock::PidFileLock::read(&path).expect("read"),
        Some(pid)
    );
    assert_eq!(portalock::PidFileLock::holder(&path).expect("holder"), None);
    let mine = portalock::PidFileLock::try_acquire(&path).expect("take over");
    assert_eq!(
        portalock::PidFileLock::read(&path).expect("read"),
        Some(std::process::id())
    );
    mine.release().expect("release");
    assert!(!path.exists());
}

/// An async wait for an `Os` lock wakes when the holder (another
/// process) releases it, not at its next poll: with a poll interval of a
/// minute, after two seconds of waiting (when the backoff's naps are
/// about as long), the lock is taken within a quarter of a second of the
/// release, three times in a row. (A wait that polls would wake a nap's
/// random part later: on average a second.)
#[cfg(all(unix, feature = "tokio"))]
#[test]
fn an_async_wait_for_an_os_lock_wakes_at_the_release() {
    let (_dir, root) = scratch();
    let path = root.join("async-os.lock");
    let lock = std::sync::Arc::new(
        LockOptions::new()
            .strategy(LockStrategy::Os)
            .poll_interval(Duration::from_secs(60))
            .open(&path)
            .expect("open"),
    );
    for round in 0..3 {
        let mut holder = spawn("hold", &["os", path.as_str()]);
        holder.expect("ACQUIRED");
        let waiter = std::sync::Arc::clone(&lock);
        let waited = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let guard = waiter
                    .lock_timeout_async(Duration::from_secs(60))
                    .await
                    .expect("the lock, once released");
                let got = std::time::Instant::now();
                guard.release().expect("release");
                got
            })
        });
        // (paces the round: the waiter's naps grow meanwhile)
        std::thread::sleep(Duration::from_secs(2));
        let released = std::time::Instant::now();
        holder.send("release");
        assert_eq!(holder.expect("RELEASED"), "Ok");
        let got = waited.join().expect("the waiter");
        let late = got.saturating_duration_since(released);
        assert!(
            late < Duration::from_millis(250),
            "round {round}: woke {late:?} after the release"
        );
        assert!(holder.wait().success());
    }
}

/// Async waits for an `Os` lock cancelled while another process holds it
/// (fifty `timeout`s in a row) leave one thread waiting for the release,
/// not one each: they share it.
#[cfg(all(target_os = "linux", feature = "tokio"))]
#[test]
fn cancelled_async_waits_for_an_os_lock_share_one_waiting_thread() {
    let threads = || std::fs::read_dir("/proc/self/task").expect("tasks").count();
    let (_dir, root) = scratch();
    let path = root.join("many.lock");
    let mut holder = spawn("hold", &["os", path.as_str()]);
    holder.expect("ACQUIRED");
    let lock = LockOptions::new()
        .strategy(LockStrategy::Os)
        .poll_interval(Duration::from_millis(5))
        .open(&path)
        .expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let before = threads();
    runtime.block_on(async {
        for _ in 0..50 {
            let waited = tokio::time::timeout(Duration::from_millis(10), lock.lock_async()).await;
            assert!(waited.is_err(), "the other process holds it");
            assert!(!lock.is_held());
        }
    });
    let during = threads();
    assert!(
        during <= before + 3,
        "{before} threads before fifty cancelled waits, {during} after"
    );
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    runtime.block_on(async {
        lock.lock_async()
            .await
            .expect("free now")
            .release()
            .expect("release");
    });
    assert!(holder.wait().success());
}

/// Five tasks of one runtime wait for an `Os` lock another process holds,
/// each through a handle of its own: once it is released, each gets it in
/// turn (woken by the one thread they share, or by each other's releases),
/// and all are done within a bound though their poll interval is a minute.
#[cfg(all(unix, feature = "tokio"))]
#[test]
fn several_async_tasks_take_an_os_lock_in_turn() {
    let (_dir, root) = scratch();
    let path = root.join("tasks.lock");
    let mut holder = spawn("hold", &["os", path.as_str()]);
    holder.expect("ACQUIRED");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let handles: Vec<std::sync::Arc<portalock::LockFile>> = (0..5)
        .map(|_| {
            std::sync::Arc::new(
                LockOptions::new()
                    .strategy(LockStrategy::Os)
                    .poll_interval(Duration::from_secs(60))
                    .open(&path)
                    .expect("open"),
            )
        })
        .collect();
    let tasks: Vec<_> = handles
        .iter()
        .map(|lock| {
            let lock = std::sync::Arc::clone(lock);
            runtime.spawn(async move {
                let guard = lock
                    .lock_timeout_async(Duration::from_secs(60))
                    .await
                    .expect("the lock");
                tokio::time::sleep(Duration::from_millis(5)).await;
                guard.release().expect("release");
            })
        })
        .collect();
    // (the tasks start waiting meanwhile)
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    let released = std::time::Instant::now();
    runtime.block_on(async {
        for task in tasks {
            task.await.expect("a task");
        }
    });
    assert!(
        released.elapsed() < Duration::from_secs(20),
        "five hand-offs took {:?}",
        released.elapsed()
    );
    assert!(holder.wait().success());
}

/// A runtime dropped after an async wait for an `Os` lock was cancelled,
/// the lock still held by another process, shuts down at once: the thread
/// that waits for the release is not one of its blocking tasks, which it
/// would wait for.
#[cfg(all(unix, feature = "tokio"))]
#[test]
fn a_runtime_with_a_cancelled_os_wait_shuts_down_while_the_lock_is_held() {
    let (_dir, root) = scratch();
    let path = root.join("shutdown.lock");
    let mut holder = spawn("hold", &["os", path.as_str()]);
    holder.expect("ACQUIRED");
    let (done, dropped) = std::sync::mpsc::channel();
    let path_owned = path.clone();
    std::thread::spawn(move || {
        let lock = LockOptions::new()
            .strategy(LockStrategy::Os)
            .open(&path_owned)
            .expect("open");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let waited = tokio::time::timeout(Duration::from_millis(50), lock.lock_async()).await;
            assert!(waited.is_err(), "the other process holds it");
        });
        drop(runtime);
        let _ = done.send(());
    });
    let shut_down = dropped.recv_timeout(Duration::from_secs(10));
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    assert!(
        shut_down.is_ok(),
        "the runtime waited for the lock's release"
    );
    assert!(holder.wait().success());
}

#[cfg(feature = "tokio")]
#[test]
fn an_async_wait_ends_when_another_process_releases_and_a_cancelled_one_holds_nothing() {
    let (_dir, root) = scratch();
    let path = root.join("async.lock");
    let mut holder = spawn("hold", &["mkdir", path.as_str()]);
    holder.expect("ACQUIRED");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let lock = LockOptions::new()
        .strategy(LockStrategy::Mkdir)
        .poll_interval(Duration::from_millis(5))
        .open(&path)
        .expect("open");
    runtime.block_on(async {
        // Cancelled while the other process holds it: nothing held after.
        let cancelled = tokio::time::timeout(Duration::from_millis(50), lock.lock_async()).await;
        assert!(cancelled.is_err());
        assert!(!lock.is_held());
        // A timeout of its own says whom it waited for.
        match lock.lock_timeout_async(Duration::from_millis(30)).await {
            Err(Error::Timeout {
                holder: Some(h), ..
            }) => assert_eq!(h.pid, holder.pid()),
            other => panic!("expected Timeout, got {other:?}"),
        }
    });
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    runtime.block_on(async {
        let guard = lock.lock_async().await.expect("free now");
        guard.release().expect("release");
        lock.acquire_async().await.expect("state-machine form");
        assert!(lock.is_held());
    });
    lock.release().expect("release");
}
