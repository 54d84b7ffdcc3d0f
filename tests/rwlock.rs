//! The readers-writer lock (`LockFile::lock_shared` beside `lock`), on
//! every strategy, across processes: readers overlap, a writer excludes
//! readers and writers, a crashed reader does not keep a writer out past
//! the stale rules, and a writer behind a stream of readers gets in.

mod common;

use std::time::{Duration, Instant};

use portalock::{Error, LockFile, LockOptions, LockStatus, LockStrategy};
use rstest::rstest;
use rstest_reuse::apply;

use common::fixture::{every_strategy, lasting_strategies, scratch_root};
use common::{spawn, Proc, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

fn reader(strategy: LockStrategy, path: &str, lease_ms: Option<u64>) -> (Proc, u32) {
    let lease = lease_ms.map(|ms| ms.to_string());
    let mut args = vec![strategy.as_str(), path];
    if let Some(lease) = &lease {
        args.push(lease);
    }
    let mut proc = spawn("reader", &args);
    let pid = proc.expect("SHARED").parse().expect("a pid");
    (proc, pid)
}

/// Two reader processes hold the lock at once; a writer (this process)
/// is refused, named the holder; when both have gone it gets in, and
/// then a reader is refused, naming it.
#[apply(every_strategy)]
fn readers_overlap_and_a_writer_excludes_them(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("rw.lock");
    let (mut first, first_pid) = reader(strategy, path.as_str(), None);
    let (mut second, _) = reader(strategy, path.as_str(), None);
    let writer = LockFile::with_strategy(&path, strategy).expect("open");
    match writer.try_acquire() {
        Err(Error::WouldBlock { holder, .. }) => {
            if strategy != LockStrategy::Os {
                assert!(holder.is_some(), "{strategy}: a reader is named");
            }
        }
        other => panic!("{strategy}: a writer beside readers: {other:?}"),
    }
    if strategy != LockStrategy::Os {
        match writer.status().expect("status") {
            LockStatus::Shared(readers) => {
                assert_eq!(readers.len(), 2, "{strategy}");
                assert!(readers.iter().flatten().any(|r| r.pid == first_pid));
            }
            other => panic!("{strategy}: status beside readers: {other:?}"),
        }
    }
    first.send("release");
    assert_eq!(first.expect("RELEASED"), "Ok");
    assert!(
        matches!(writer.try_acquire(), Err(Error::WouldBlock { .. })),
        "{strategy}: the second reader still reads"
    );
    second.send("release");
    assert_eq!(second.expect("RELEASED"), "Ok");
    writer.try_acquire().expect("no reader left");
    let late = LockFile::with_strategy(&path, strategy).expect("open");
    match late.try_lock_shared() {
        Err(Error::WouldBlock {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.pid, std::process::id()),
        other => panic!("{strategy}: a reader beside a writer: {other:?}"),
    }
    writer.release().expect("release");
    late.try_lock_shared()
        .expect("free again")
        .release()
        .expect("release");
    for p in [first, second] {
        assert!(p.wait().success());
    }
    if strategy != LockStrategy::Os {
        assert_eq!(late.status().expect("status"), LockStatus::Free);
    }
}

/// Six processes mix writes (a third of their acquisitions) and reads:
/// no writer is ever inside beside a reader or another writer, the
/// writers' counter is exact, and readers were inside together (each
/// process's first read is held with all the others at once, through
/// marker files; then as it happens).
#[apply(every_strategy)]
fn mixed_readers_and_writers_across_processes(strategy: LockStrategy) {
    const PROCS: usize = 6;
    const EACH: u32 = 45;
    let (_dir, root) = scratch_root();
    let path = root.join("mix.lock");
    let markers = root.join("markers");
    std::fs::create_dir(&markers).expect("markers dir");
    std::fs::write(markers.join("counter"), "0\n").expect("counter");
    let mut procs: Vec<Proc> = (0..PROCS)
        .map(|_| {
            spawn(
                "rw-mix",
                &[
                    strategy.as_str(),
                    path.as_str(),
                    markers.as_str(),
                    &EACH.to_string(),
                    &PROCS.to_string(),
                ],
            )
        })
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    let mut overlapped = 0u32;
    for p in &mut procs {
        let (event, data) = p.next_event();
        assert_eq!(event, "DONE", "{strategy}: {event} {data}");
        overlapped += data.parse::<u32>().expect("a count");
    }
    for p in procs {
        assert!(p.wait().success(), "{strategy}");
    }
    let counter: u32 = std::fs::read_to_string(markers.join("counter"))
        .expect("counter")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(counter, PROCS as u32 * EACH.div_ceil(3), "{strategy}");
    // (each process's first read is held with all the others at once)
    assert!(
        overlapped >= PROCS as u32,
        "{strategy}: readers overlapped {overlapped} times"
    );
}

/// A reader killed with SIGKILL leaves its registration (`Mkdir`,
/// `Link`); the next writer judges its owner dead, breaks it and gets in
/// at once; an `Os` reader's lock goes with its process.
#[apply(every_strategy)]
fn a_killed_reader_does_not_keep_a_writer_out(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("k.lock");
    let (proc, pid) = reader(strategy, path.as_str(), None);
    proc.kill();
    let writer = LockFile::with_strategy(&path, strategy).expect("open");
    if strategy != LockStrategy::Os {
        match writer.status().expect("status") {
            LockStatus::Shared(readers) => {
                assert_eq!(
                    readers.iter().flatten().map(|r| r.pid).collect::<Vec<_>>(),
                    [pid]
                );
            }
            other => panic!("{strategy}: a dead reader's registration: {other:?}"),
        }
    }
    let started = Instant::now();
    writer
        .acquire_timeout(EVENT_TIMEOUT)
        .expect("a dead reader is broken");
    // Its owner is dead on this host: broken at the first look, not after
    // a poll or a grace period.
    assert!(
        started.elapsed() < EVENT_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
    writer.release().expect("release");
    assert_eq!(writer.status().expect("status"), LockStatus::Free);
}

/// A reader with a lease, stopped (SIGSTOP) while it reads: a writer gets
/// in once the lease has run out, not before, and the reader, resumed, is
/// told it lost the lock.
#[cfg(unix)]
#[apply(lasting_strategies)]
fn a_stopped_reader_with_a_lease_gives_way_after_its_lease(strategy: LockStrategy) {
    const LEASE: Duration = Duration::from_millis(600);
    let (_dir, root) = scratch_root();
    let path = root.join("lease.lock");
    let (mut proc, _) = reader(strategy, path.as_str(), Some(LEASE.as_millis() as u64));
    proc.signal("STOP");
    let stopped = Instant::now();
    let writer = LockFile::with_strategy(&path, strategy).expect("open");
    assert!(matches!(
        writer.try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    writer
        .acquire_timeout(EVENT_TIMEOUT)
        .expect("the lease ran out");
    assert!(
        stopped.elapsed() >= LEASE,
        "{strategy}: the writer got in {:?} after the stop, before the lease ran out",
        stopped.elapsed()
    );
    proc.signal("CONT");
    proc.send("check");
    assert_eq!(proc.expect("CHECKED"), "LockLost", "{strategy}");
    proc.send("release");
    assert_eq!(proc.expect("RELEASED"), "LockLost", "{strategy}");
    writer.release().expect("release");
    assert!(proc.wait().success());
}

/// Three processes read without a gap (each takes its next read before it
/// lets the last go), so that the lock is never free of readers. A writer
/// still gets in, within a bound, while they go on reading, and readers
/// read again after it.
#[apply(every_strategy)]
fn a_writer_behind_a_stream_of_readers_gets_in(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("stream.lock");
    let mut readers: Vec<Proc> = (0..3)
        .map(|_| spawn("read-loop", &[strategy.as_str(), path.as_str(), "20"]))
        .collect();
    for r in &mut readers {
        r.expect("READING");
    }
    let writer = LockOptions::new()
        .strategy(strategy)
        .poll_interval(Duration::from_millis(5))
        .open(&path)
        .expect("open");
    let started = Instant::now();
    writer
        .acquire_timeout(EVENT_TIMEOUT)
        .expect("a writer gets in behind the readers");
    let waited = started.elapsed();
    // The bound: the readers that were in when it came (20 ms holds).
    assert!(waited < EVENT_TIMEOUT / 2, "{strategy}: waited {waited:?}");
    writer.release().expect("release");
    // Readers go on after it: each reads again.
    for mut r in readers {
        r.close_stdin();
        let reads: u64 = r.expect("READS").parse().expect("a count");
        assert!(reads >= 2, "{strategy}: {reads} reads");
        assert!(r.wait().success());
    }
}

/// A reader's guard can hand its lock to a command, as an exclusive one
/// can: the registration names the command while it runs.
#[cfg(unix)]
#[apply(lasting_strategies)]
fn a_shared_guard_hands_its_lock_to_a_command(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("cmd.lock");
    let lock = LockFile::with_strategy(&path, strategy).expect("open");
    let guard = lock.lock_shared().expect("shared");
    let mut child = guard
        .spawn(std::process::Command::new("sleep").arg("30"))
        .expect("spawn");
    let named = match lock.status().expect("status") {
        LockStatus::Shared(readers) => readers
            .into_iter()
            .flatten()
            .any(|r| r.command.is_some_and(|c| c.pid == child.id())),
        _ => false,
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(named, "{strategy}: the registration names the command");
    guard.release().expect("release");
}

/// Bad things in the readers directory: a foreign file is a typed error
/// for a writer, and loses nothing.
#[apply(lasting_strategies)]
fn a_foreign_file_among_the_readers_is_refused(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("f.lock");
    let readers = root.join(".f.lock.readers");
    std::fs::create_dir(&readers).expect("readers dir");
    std::fs::write(readers.join("notes.txt"), "mine").expect("a foreign file");
    let writer = LockFile::with_strategy(&path, strategy).expect("open");
    let err = writer.try_acquire().expect_err("refused");
    assert!(
        matches!(err, Error::Foreign { .. } | Error::WrongFileType { .. }),
        "{strategy}: {err:?}"
    );
    assert!(!writer.is_held());
    assert_eq!(
        std::fs::read_to_string(readers.join("notes.txt")).expect("kept"),
        "mine"
    );
}

#[test]
fn the_readers_directory_is_named_after_the_lock() {
    let (_dir, root) = scratch_root();
    let path = root.join("named.lock");
    let lock = LockFile::with_strategy(&path, LockStrategy::Mkdir).expect("open");
    let guard = lock.lock_shared().expect("shared");
    assert!(root.join(".named.lock.readers").is_dir());
    guard.release().expect("release");
    // A writer removes it; only the turnstile's gate is left.
    lock.acquire().expect("acquire");
    lock.release().expect("release");
    assert_eq!(common::names(root.as_std_path()), [".named.lock.gate"]);
}

/// Waits (bounded) until the lock at `path` is held by `pid`.
#[cfg(unix)]
fn until_held_by(path: &camino::Utf8Path, strategy: LockStrategy, pid: u32) {
    let look = LockFile::with_strategy(path, strategy).expect("open");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Ok(Some(owner)) = look.owner() {
            if owner.pid == pid {
                return;
            }
        }
        assert!(Instant::now() < deadline, "pid {pid} never held {path}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A writer that lost the lock (stopped, and an operator's forced break)
/// while it waited for a reader does not go on to hold it beside the writer that
/// took it next: it starts its wait again, and gets in after that one.
#[cfg(unix)]
#[apply(lasting_strategies)]
fn a_writer_broken_while_it_waits_for_readers_does_not_hold_beside_the_next(
    strategy: LockStrategy,
) {
    let (_dir, root) = scratch_root();
    let path = root.join("drain.lock");
    let (mut reader_proc, _) = reader(strategy, path.as_str(), None);
    let mut first = spawn("race", &[strategy.as_str(), path.as_str()]);
    first.expect("READY");
    first.send("wait 25000");
    until_held_by(&path, strategy, first.pid());
    // Stopped while it waits, its lock force-broken and taken by a second
    // writer, which waits for the reader too.
    first.signal("STOP");
    let operator = LockFile::with_strategy(&path, strategy).expect("open");
    operator.force_break().expect("forced");
    let mut second = spawn("race", &[strategy.as_str(), path.as_str()]);
    second.expect("READY");
    second.send("wait 25000");
    until_held_by(&path, strategy, second.pid());
    first.signal("CONT");
    reader_proc.send("release");
    assert_eq!(reader_proc.expect("RELEASED"), "Ok");
    assert_eq!(second.expect("WAITED"), "Ok", "{strategy}");
    second.send("check");
    assert_eq!(second.expect("CHECKED"), "Ok", "{strategy}");
    // While the second holds, the first must not say it got in.
    if let Some((event, data)) = first.poll_event(Duration::from_millis(1500)) {
        panic!("{strategy}: the broken writer said {event} {data} beside the holder");
    }
    second.send("release");
    assert_eq!(second.expect("RELEASED"), "Ok");
    assert_eq!(first.expect("WAITED"), "Ok", "{strategy}");
    first.send("check");
    assert_eq!(first.expect("CHECKED"), "Ok", "{strategy}");
    first.send("release");
    assert_eq!(first.expect("RELEASED"), "Ok");
    for p in [first, second, reader_proc] {
        assert!(p.wait().success());
    }
}

/// A registration without a record whose directory a client keeps from
/// being removed (an NFS `.nfs*` file held open) is broken in vain every
/// time: a writer's bounded wait still ends at its deadline, without
/// spinning past it.
#[apply(lasting_strategies)]
fn a_writer_waits_no_longer_than_its_timeout_for_an_unremovable_registration(
    strategy: LockStrategy,
) {
    let (_dir, root) = scratch_root();
    let path = root.join("stuck.lock");
    let stuck = root.join(".stuck.lock.readers").join("0123456789abcdef");
    std::fs::create_dir_all(&stuck).expect("registration dir");
    // (a directory: nothing can remove it as a file, as a client keeps a
    // silly-renamed file that is still open)
    std::fs::create_dir(stuck.join(".nfs000000001")).expect("a silly-renamed name");
    let writer = LockOptions::new()
        .strategy(strategy)
        .grace(Duration::from_millis(50))
        .open(&path)
        .expect("open");
    let started = Instant::now();
    let waited = writer.acquire_timeout(Duration::from_millis(500));
    assert!(
        matches!(waited, Err(Error::Timeout { .. })),
        "{strategy}: {waited:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{strategy}: waited {:?} for a 500 ms timeout",
        started.elapsed()
    );
    assert!(!writer.is_held());
}

/// The last reader to leave removes the readers directory; `break_lock`
/// on a lock held only by a killed reader breaks its registration, and
/// refuses (naming it) a live one's.
#[apply(lasting_strategies)]
fn readers_leave_nothing_and_break_lock_sees_them(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("b.lock");
    let lock = LockFile::with_strategy(&path, strategy).expect("open");
    lock.lock_shared()
        .expect("shared")
        .release()
        .expect("release");
    assert!(!root.join(".b.lock.readers").exists(), "{strategy}");
    let (mut live, live_pid) = reader(strategy, path.as_str(), None);
    match lock.break_lock() {
        Err(Error::NotStale {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.pid, live_pid),
        other => panic!("{strategy}: break_lock beside a live reader: {other:?}"),
    }
    live.send("release");
    assert_eq!(live.expect("RELEASED"), "Ok");
    assert!(live.wait().success());
    let (dead, dead_pid) = reader(strategy, path.as_str(), None);
    dead.kill();
    let removed = lock.break_lock().expect("a dead reader's registration");
    assert_eq!(removed.map(|r| r.pid), Some(dead_pid), "{strategy}");
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
}
