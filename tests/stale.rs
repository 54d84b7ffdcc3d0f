//! Stale locks across processes: dead holders, races to break, leases and
//! records of other hosts (the rules argued in the `stale` module).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use portalock::{Error, Liveness, LockFile, LockOptions, LockStrategy, OwnerRecord};
use rstest::rstest;

use common::fixture::{dead_pid, scratch};
use common::{assert_would_block_by, spawn, Proc, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

fn open(path: &Utf8Path, strategy: LockStrategy) -> LockFile {
    options(strategy).open(path).expect("open")
}

fn options(strategy: LockStrategy) -> LockOptions {
    let mut options = LockOptions::new();
    options
        .strategy(strategy)
        .poll_interval(Duration::from_millis(10));
    options
}

/// A real record of this process, taken by `strategy`, to edit.
fn template(strategy: LockStrategy) -> OwnerRecord {
    let (_dir, path) = scratch();
    let lock = open(&path, strategy);
    lock.acquire().expect("acquire");
    let record = lock.owner().expect("owner").expect("record");
    lock.release().expect("release");
    record
}

/// A token no acquisition has used.
fn fresh_token() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!(
        "{:016x}{:016x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Leaves `record` at `path` as a holder taking the lock with `strategy`
/// would have left it.
fn plant(strategy: LockStrategy, path: &Utf8Path, record: &OwnerRecord) {
    match strategy {
        LockStrategy::Mkdir => {
            std::fs::create_dir(path).expect("mkdir");
            let file = path.join(format!("{}.json", record.token));
            std::fs::write(file, record.to_json()).expect("write record");
        }
        LockStrategy::Link => {
            let claim = claim_of(path, &record.token);
            std::fs::write(&claim, record.to_json()).expect("write claim");
            std::fs::hard_link(&claim, path).expect("link");
        }
        other => panic!("cannot plant an {other} lock"),
    }
}

fn claim_of(path: &Utf8Path, token: &str) -> Utf8PathBuf {
    let name = path.file_name().expect("file name");
    path.with_file_name(format!(".{name}.{token}.owner"))
}

/// A record of this process for `strategy` with a fresh token, edited by
/// `edit`.
fn record(strategy: LockStrategy, edit: impl FnOnce(&mut OwnerRecord)) -> OwnerRecord {
    let mut record = template(strategy);
    record.token = fresh_token();
    edit(&mut record);
    record
}

#[rstest]
fn a_killed_holder_is_replaced_within_two_poll_intervals(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let poll = Duration::from_millis(300);
    let mut holder = spawn("hold", &[strategy.as_str(), path.as_str()]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    let waiter = options(strategy)
        .poll_interval(poll)
        .open(&path)
        .expect("open");
    assert_eq!(waiter.owner().expect("owner").map(|o| o.pid), Some(pid));
    assert_would_block_by(waiter.try_acquire(), pid);

    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(Instant::now());
        let result = waiter.acquire_timeout(EVENT_TIMEOUT);
        let _ = tx.send(Instant::now());
        (waiter, result)
    });
    rx.recv_timeout(EVENT_TIMEOUT).expect("the waiter started");
    // Not a synchronisation: the waiter's pauses grow to the poll interval
    // within a few polls, and the bound must hold in that worst case.
    std::thread::sleep(4 * poll);
    holder.kill();
    let died = Instant::now();
    let acquired = rx.recv_timeout(EVENT_TIMEOUT).expect("the waiter finished");
    let (waiter, result) = thread.join().expect("waiter thread");
    result.expect("the waiter got the lock");
    let latency = acquired.saturating_duration_since(died);
    eprintln!("{strategy}: lock of a killed holder taken {latency:?} after its death");
    assert!(
        latency <= 2 * poll,
        "{strategy}: took {latency:?}, more than two poll intervals"
    );
    let owner = waiter.owner().expect("owner").expect("record");
    assert_eq!(owner.pid, std::process::id());
}

#[rstest]
fn sixteen_processes_race_to_break_one_stale_lock(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    const RACERS: usize = 16;
    const ROUNDS: usize = 20;
    let (_dir, path) = scratch();
    let observer = open(&path, strategy);
    let mut racers: Vec<Proc> = (0..RACERS)
        .map(|_| spawn("race", &[strategy.as_str(), path.as_str()]))
        .collect();
    for racer in &mut racers {
        racer.expect("READY");
    }
    for round in 0..ROUNDS {
        // A holder dies with the lock: the lock is stale.
        let mut holder = spawn("hold", &[strategy.as_str(), path.as_str()]);
        let dead: u32 = holder.expect("ACQUIRED").parse().expect("pid");
        holder.kill();
        let stale = observer.owner().expect("owner").expect("record");
        assert_eq!(stale.pid, dead);
        assert_eq!(stale.liveness(), Liveness::Dead);

        // Every racer tries once at the same time. On Linux the first
        // volley has a winner; on Windows a broken lock's name can stay
        // taken for a moment while another racer still has the file open
        // ("delete pending"), so a volley may find it busy: volleys go on
        // until somebody wins (bounded), and never more than one may.
        let mut winners: Vec<usize> = Vec::new();
        for volley in 0..50 {
            for racer in &mut racers {
                racer.send("try");
            }
            let results: Vec<String> = racers.iter_mut().map(|r| r.expect("TRIED")).collect();
            assert!(
                results.iter().all(|r| r == "Ok" || r == "WouldBlock"),
                "round {round}, volley {volley}: {results:?}"
            );
            winners.extend((0..RACERS).filter(|&i| results[i] == "Ok"));
            if !winners.is_empty() {
                break;
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        // Nobody removed the winner's fresh lock after it took it.
        let winner = &mut racers[winners[0]];
        winner.send("check");
        assert_eq!(winner.expect("CHECKED"), "Ok", "round {round}");
        let owner = observer.owner().expect("owner").expect("record");
        assert_eq!(owner.pid, winner.pid(), "round {round}");
        winner.send("release");
        assert_eq!(winner.expect("RELEASED"), "Ok", "round {round}");
    }
    assert!(!path.exists());
    // Nothing but the turnstile's gate.
    let gate = format!(".{}.gate", path.file_name().expect("name"));
    let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_str() != Some(gate.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[rstest]
fn another_hosts_lock_without_a_lease_is_never_broken(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let theirs = record(strategy, |r| {
        r.hostname = "elsewhere.invalid".to_owned();
        r.pid = dead_pid();
    });
    plant(strategy, &path, &theirs);
    let lock = options(strategy)
        .grace(Duration::from_millis(50))
        .open(&path)
        .expect("open");
    assert_eq!(theirs.liveness(), Liveness::Unknown);
    match lock.acquire_timeout(Duration::from_millis(300)) {
        Err(Error::Timeout {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.hostname, "elsewhere.invalid"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    let owner = lock.owner().expect("owner").expect("record");
    assert_eq!(owner.token, theirs.token, "the lock is intact");
    // Only an explicit, forced break removes it.
    let removed = lock.force_break().expect("force").expect("record");
    assert_eq!(removed.token, theirs.token);
    lock.try_acquire().expect("free after the forced break");
}

#[rstest]
fn another_hosts_unrefreshed_lease_is_broken_after_the_lease(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let lease = Duration::from_millis(400);
    let theirs = record(strategy, |r| {
        r.hostname = "elsewhere.invalid".to_owned();
        r.lease_ms = Some(lease.as_millis() as u64);
    });
    plant(strategy, &path, &theirs);
    let lock = open(&path, strategy);
    let started = Instant::now();
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    lock.acquire_timeout(EVENT_TIMEOUT)
        .expect("broken after the lease");
    assert!(
        started.elapsed() >= lease,
        "broken after {:?}, before the lease ran out",
        started.elapsed()
    );
    assert_eq!(
        lock.owner().expect("owner").map(|o| o.pid),
        Some(std::process::id())
    );
}

#[rstest]
fn a_live_pid_with_another_start_time_is_stale(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    // This process's PID, alive, with its true start time: not stale.
    let live = record(strategy, |_| {});
    plant(strategy, &path, &live);
    let lock = open(&path, strategy);
    assert_eq!(live.liveness(), Liveness::Alive);
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    lock.force_break().expect("clean up");

    // The same PID with another start time: the PID was reused.
    let reused = record(strategy, other_start);
    assert_eq!(reused.liveness(), Liveness::Dead);
    plant(strategy, &path, &reused);
    lock.try_acquire().expect("a reused PID's lock is stale");
    assert_ne!(
        lock.owner().expect("owner").expect("record").token,
        reused.token
    );
}

// Pausing a process needs SIGSTOP; Windows has no safe equivalent.
#[cfg(unix)]
#[rstest]
fn a_holder_paused_past_its_lease_loses_the_lock(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let lease = Duration::from_millis(300);
    let lease_ms = lease.as_millis().to_string();
    let mut holder = spawn("hold", &[strategy.as_str(), path.as_str(), &lease_ms]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    holder.signal("STOP");
    let stopped = Instant::now();

    let waiter = open(&path, strategy);
    assert_would_block_by(waiter.try_acquire(), pid);
    waiter
        .acquire_timeout(EVENT_TIMEOUT)
        .expect("the paused holder's lease ran out");
    assert!(
        stopped.elapsed() >= lease,
        "broken before the lease ran out"
    );
    let mine = waiter.owner().expect("owner").expect("record");
    assert_eq!(mine.pid, std::process::id());

    holder.signal("CONT");
    holder.send("check");
    holder.send("release");
    let mut events = Vec::new();
    while events.last().map(|(e, _): &(String, String)| e.as_str()) != Some("RELEASED") {
        events.push(holder.next_event());
    }
    let said = |name: &str| {
        events
            .iter()
            .filter(|(e, _)| e == name)
            .map(|(_, d)| d.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(said("CHECKED"), ["LockLost"], "{events:?}");
    assert_eq!(said("RELEASED"), ["LockLost"], "{events:?}");
    assert_eq!(said("ONLOST").len(), 1, "on_lost fires once: {events:?}");

    // The new holder's lock is intact.
    waiter.ensure_held().expect("still held");
    assert_eq!(
        waiter.owner().expect("owner").expect("record").token,
        mine.token
    );
    waiter.release().expect("release");
    drop(holder);
}

#[rstest]
fn break_lock_returns_the_dead_owners_record(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (dir, path) = scratch();
    let dead = record(strategy, |r| r.pid = dead_pid());
    plant(strategy, &path, &dead);
    let lock = open(&path, strategy);
    let removed = lock.break_lock().expect("break").expect("record");
    assert_eq!(removed, dead);
    assert!(!path.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Nothing left to break.
    assert_eq!(lock.break_lock().expect("free"), None);
}

#[test]
fn an_os_lock_is_never_broken() {
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &["os", path.as_str()]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    let lock = open(&path, LockStrategy::Os);
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    assert!(matches!(lock.force_break(), Err(Error::Unsupported { .. })));
    assert_would_block_by(lock.try_acquire(), pid);
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
}

#[rstest]
#[case::link_garbage(LockStrategy::Link)]
#[case::mkdir_other_files(LockStrategy::Mkdir)]
fn a_foreign_artifact_is_not_broken_even_by_force(#[case] strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let inside = path.join("notes.txt");
    match strategy {
        LockStrategy::Link => std::fs::write(&path, "not a record").expect("write"),
        _ => {
            std::fs::create_dir(&path).expect("mkdir");
            std::fs::write(&inside, "keep me").expect("write");
        }
    }
    let lock = options(strategy)
        .grace(Duration::ZERO)
        .open(&path)
        .expect("open");
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    assert!(matches!(lock.force_break(), Err(Error::Foreign { .. })));
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    match strategy {
        LockStrategy::Link => {
            assert_eq!(
                std::fs::read_to_string(&path).expect("kept"),
                "not a record"
            )
        }
        _ => assert_eq!(std::fs::read_to_string(&inside).expect("kept"), "keep me"),
    }
}

#[test]
fn an_empty_lock_directory_is_broken_after_the_grace_period() {
    let (_dir, path) = scratch();
    let grace = Duration::from_millis(300);
    std::fs::create_dir(&path).expect("mkdir");
    let patient = options(LockStrategy::Mkdir)
        .grace(grace)
        .break_stale(false)
        .open(&path)
        .expect("open");
    assert!(matches!(
        patient.acquire_timeout(grace + Duration::from_millis(100)),
        Err(Error::Timeout { holder: None, .. })
    ));
    let lock = options(LockStrategy::Mkdir)
        .grace(grace)
        .open(&path)
        .expect("open");
    let started = Instant::now();
    assert!(matches!(lock.try_acquire(), Err(Error::WouldBlock { .. })));
    lock.acquire_timeout(EVENT_TIMEOUT)
        .expect("broken after the grace period");
    assert!(started.elapsed() >= grace);
}

#[test]
fn a_link_lock_whose_claim_vanished_is_recovered_only_by_force() {
    let (_dir, path) = scratch();
    let dead = record(LockStrategy::Link, |r| r.pid = dead_pid());
    plant(LockStrategy::Link, &path, &dead);
    std::fs::remove_file(claim_of(&path, &dead.token)).expect("remove the claim");
    let lock = options(LockStrategy::Link)
        .grace(Duration::from_millis(50))
        .open(&path)
        .expect("open");
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(200)),
        Err(Error::Timeout { .. })
    ));
    assert!(matches!(lock.break_lock(), Err(Error::NotStale { .. })));
    let removed = lock.force_break().expect("force").expect("record");
    assert_eq!(removed.token, dead.token);
    lock.try_acquire().expect("free after the forced break");
    assert_ne!(
        lock.owner().expect("owner").expect("record").token,
        dead.token
    );
}

#[test]
fn liveness_is_judged_only_where_the_pid_means_something() {
    let mine = template(LockStrategy::Mkdir);
    assert_eq!(mine.liveness(), Liveness::Alive);
    let mut gone = mine.clone();
    gone.pid = dead_pid();
    assert_eq!(gone.liveness(), Liveness::Dead);
    let mut other_host = gone.clone();
    other_host.hostname = "elsewhere.invalid".to_owned();
    assert_eq!(other_host.liveness(), Liveness::Unknown);
    let mut other_boot = gone.clone();
    other_boot.boot = Some("another-boot".to_owned());
    assert_eq!(other_boot.liveness(), Liveness::Unknown);
    let mut other_ns = gone;
    other_ns.pidns = Some("pid:[1]".to_owned());
    assert_eq!(other_ns.liveness(), Liveness::Unknown);
}

#[rstest]
fn a_lease_is_refreshed_while_held(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let lock = options(strategy)
        .lease(Duration::from_millis(30))
        .open(&path)
        .expect("open");
    lock.acquire().expect("acquire");
    let first = lock.owner().expect("owner").expect("record");
    assert_eq!(first.lease_ms, Some(30));
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let beat = loop {
        // A look that overlaps a refresh's write may read a torn record,
        // which counts as none (see `strategy::os`): look again.
        let now = lock.owner().expect("owner").map_or(0, |record| record.beat);
        if now >= 3 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(beat >= 3, "the heartbeat refreshed {beat} times");
    lock.ensure_held().expect("held");
    lock.release().expect("release");
}

#[rstest]
fn on_lost_fires_once_when_a_lock_is_broken_under_its_holder(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let fired = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&fired);
    let holder = options(strategy)
        .lease(Duration::from_millis(30))
        .on_lost(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .open(&path)
        .expect("open");
    holder.acquire().expect("acquire");
    open(&path, strategy).force_break().expect("force");
    // The heartbeat notices within a lease; bounded wait for it.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while fired.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    assert_eq!(fired.load(Ordering::SeqCst), 1, "fires once");
}

// On Windows the locked file cannot be replaced: removing a file that is
// open keeps its name until it is closed ("delete pending").
#[cfg(unix)]
#[test]
fn an_os_lock_whose_file_was_replaced_is_lost() {
    let (_dir, path) = scratch();
    let lock = open(&path, LockStrategy::Os);
    lock.acquire().expect("acquire");
    lock.ensure_held().expect("held");
    std::fs::remove_file(&path).expect("remove");
    std::fs::write(&path, "").expect("replace");
    assert!(matches!(lock.ensure_held(), Err(Error::LockLost { .. })));
    assert!(matches!(lock.release(), Err(Error::LockLost { .. })));
    assert_eq!(std::fs::read(&path).expect("kept"), b"");
}

// A handle keeps its Os lock file open between acquisitions; the file it
// kept may be gone by the next one. (Unix only, as above.)
#[cfg(unix)]
#[test]
fn an_os_handle_whose_kept_file_was_replaced_locks_the_new_one() {
    let (_dir, path) = scratch();
    let lock = open(&path, LockStrategy::Os);
    lock.acquire().expect("acquire");
    lock.release().expect("release");
    std::fs::remove_file(&path).expect("remove");
    let mut child = spawn("hold", &["os", path.as_str()]);
    child.expect("ACQUIRED");
    // Locking the removed file would succeed: the path names another.
    assert_would_block_by(lock.try_acquire(), child.pid());
    child.close_stdin();
    assert!(child.wait().success());
    lock.acquire().expect("acquire after the child");
    let token = lock.owner().expect("owner").expect("record").token;
    let on_disk = std::fs::read(&path).expect("read");
    assert_eq!(
        OwnerRecord::parse(&on_disk).map(|r| r.token),
        Some(token),
        "our record is in the file the path names"
    );
    lock.release().expect("release");
}

#[rstest]
fn break_lock_refuses_a_lease_that_is_being_refreshed(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let holder = options(strategy)
        .lease(Duration::from_millis(200))
        .open(&path)
        .expect("open");
    holder.acquire().expect("acquire");
    // The owner is alive, but a lease makes the verdict wait for the lease;
    // the heartbeat changes the record meanwhile.
    match open(&path, strategy).break_lock() {
        Err(Error::NotStale {
            holder: Some(h), ..
        }) => assert_eq!(h.pid, std::process::id()),
        other => panic!("expected NotStale, got {other:?}"),
    }
    holder.ensure_held().expect("still held");
    holder.release().expect("release");
}

#[test]
fn a_link_lock_whose_claim_is_not_its_own_is_left_alone() {
    let (_dir, path) = scratch();
    let dead = record(LockStrategy::Link, |r| r.pid = dead_pid());
    let other = record(LockStrategy::Link, |r| r.pid = dead_pid());
    // The claim is neither a hard link of the lock file nor a record of the
    // same acquisition (a stray copy of another lock's record): it proves
    // nothing.
    std::fs::write(&path, dead.to_json()).expect("lock file");
    std::fs::write(claim_of(&path, &dead.token), other.to_json()).expect("claim");
    let lock = options(LockStrategy::Link)
        .grace(Duration::from_secs(60))
        .open(&path)
        .expect("open");
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(200)),
        Err(Error::Timeout { .. })
    ));
    assert_eq!(
        lock.owner().expect("owner").expect("record").token,
        dead.token
    );
    assert!(claim_of(&path, &dead.token).exists());
}

#[test]
fn a_link_claim_with_another_inode_but_the_same_record_is_the_claim() {
    // sshfs numbers names, not files: a hard link's two names show two
    // inode numbers there. The claim's record (its token) identifies the
    // acquisition as exactly.
    let (_dir, path) = scratch();
    let dead = record(LockStrategy::Link, |r| r.pid = dead_pid());
    std::fs::write(&path, dead.to_json()).expect("lock file");
    std::fs::write(claim_of(&path, &dead.token), dead.to_json()).expect("claim");
    let lock = options(LockStrategy::Link).open(&path).expect("open");
    lock.acquire_timeout(Duration::from_secs(5))
        .expect("the dead owner's lock is broken");
    assert!(!claim_of(&path, &dead.token).exists());
    lock.release().expect("release");
}

#[test]
fn on_lost_may_release_the_lock_it_reports() {
    let (_dir, path) = scratch();
    let (tx, rx) = mpsc::channel();
    let cell: Arc<std::sync::OnceLock<Arc<LockFile>>> = Arc::new(std::sync::OnceLock::new());
    let inside = Arc::clone(&cell);
    // The callback releases the very handle it reports on, from the
    // heartbeat thread: this must not deadlock.
    let lock = Arc::new(
        options(LockStrategy::Mkdir)
            .lease(Duration::from_millis(30))
            .on_lost(move |_| {
                if let Some(lock) = inside.get() {
                    let _ = tx.send(format!("{:?}", lock.release()));
                }
            })
            .open(&path)
            .expect("open"),
    );
    assert!(cell.set(Arc::clone(&lock)).is_ok());
    lock.acquire().expect("acquire");
    open(&path, LockStrategy::Mkdir)
        .force_break()
        .expect("force");
    let said = rx.recv_timeout(EVENT_TIMEOUT).expect("on_lost ran");
    assert!(said.contains("LockLost"), "{said}");
    assert!(!lock.is_held());
    // The heartbeat still serves other leases.
    let (_dir2, other) = scratch();
    let second = options(LockStrategy::Mkdir)
        .lease(Duration::from_millis(30))
        .open(&other)
        .expect("open");
    second.acquire().expect("acquire");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while second.owner().expect("owner").expect("record").beat < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(second.owner().expect("owner").expect("record").beat >= 2);
}

#[cfg(unix)]
#[rstest]
fn a_fifo_at_the_lock_path_is_refused_without_hanging(
    #[values(LockStrategy::Os, LockStrategy::Link, LockStrategy::Mkdir)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let fifo = match strategy {
        LockStrategy::Mkdir => {
            std::fs::create_dir(&path).expect("mkdir");
            path.join(format!("{}.json", fresh_token()))
        }
        _ => path.clone(),
    };
    let status = std::process::Command::new("mkfifo")
        .arg(fifo.as_str())
        .status()
        .expect("run mkfifo");
    assert!(status.success());
    let lock = open(&path, strategy);
    // Each of these returns (a hang would time the test run out).
    let _ = lock.status();
    let _ = lock.break_lock();
    assert!(lock.try_acquire().is_err());
    assert!(fifo.exists(), "the FIFO is left alone");
}

/// A failed look at the process table (no file descriptor left, `/proc`
/// hidden or unreadable) proves nothing: a live owner stays alive. Only a
/// proven absence makes an owner dead.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_look_at_the_process_table_never_makes_an_owner_dead() {
    let alive = template(LockStrategy::Mkdir);
    let mut dead = alive.clone();
    dead.pid = dead_pid();
    // A child with 32 file descriptors uses them all up, then judges.
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(common::CHILD_ARGS);
    let mut child = common::spawn_command(
        cmd,
        "liveness-starved",
        &[&alive.to_json(), &dead.to_json()],
    );
    assert_eq!(child.expect("LIVENESS"), "alive alive");
    assert_eq!(child.expect("LIVENESS"), "dead dead");
    assert!(child.wait().success());
}

/// `release_for(pid)` releases only a lock held for that very process:
/// the PID of another PID namespace, another boot, or an earlier process
/// that had the same PID is another process.
#[rstest]
fn release_for_matches_the_whole_identity_of_the_process(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    let mut other = spawn("wait", &[]);
    let pid: u32 = other.expect("STARTED").parse().expect("pid");
    // The record of a lock held for `other`, as `acquire --pid` leaves it.
    let taker = options(strategy)
        .on_behalf_of(pid)
        .open(&path)
        .expect("open");
    taker.acquire().expect("acquire");
    let held_for_other = taker.detach().expect("detach");
    assert_eq!(held_for_other.pid, pid);
    let lock = open(&path, strategy);
    lock.force_break().expect("clean up");

    type Edit = fn(&mut OwnerRecord);
    let impostors: [(&str, Edit); 3] = [
        ("another PID namespace", |r| {
            r.pidns = Some("pid:[1]".to_owned())
        }),
        ("another boot", |r| r.boot = Some("another-boot".to_owned())),
        ("an earlier process with that PID", |r| other_start(r)),
    ];
    for (what, edit) in impostors {
        let mut record = held_for_other.clone();
        record.token = fresh_token();
        edit(&mut record);
        plant(strategy, &path, &record);
        assert!(
            matches!(lock.release_for(pid), Err(Error::NotOwner { .. })),
            "{what}: released"
        );
        assert_eq!(
            lock.owner().expect("owner").map(|r| r.token),
            Some(record.token),
            "{what}: the lock changed"
        );
        lock.force_break().expect("clean up");
    }
    let mut record = held_for_other;
    record.token = fresh_token();
    plant(strategy, &path, &record);
    assert_eq!(lock.release_for(pid).expect("release").token, record.token);
    assert!(!lock.is_locked().expect("is_locked"));
    other.close_stdin();
    assert!(other.wait().success());
}

/// Makes `record` name a process that started at another time than the
/// one it names.
fn other_start(record: &mut OwnerRecord) {
    let start = record.start.as_deref().expect("a start stamp");
    let (scheme, value) = start.split_once(':').expect("scheme:value");
    let value: u64 = value.parse().expect("a number");
    record.start = Some(format!("{scheme}:{}", value + 1000));
}

/// The `Link` claims beside the lock at `path` (its holder's and its
/// waiters'), by name.
fn claims_beside(path: &Utf8Path) -> Vec<String> {
    let prefix = format!(".{}.", path.file_name().expect("file name"));
    let mut names: Vec<String> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".owner"))
        .collect();
    names.sort();
    names
}

/// Waits (bounded) until a claim other than `except` appears beside the
/// lock at `path`: a waiter's, made at its first try.
fn a_waiters_claim(path: &Utf8Path, except: &[String]) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut others: Vec<String> = claims_beside(path)
            .into_iter()
            .filter(|n| !except.contains(n))
            .collect();
        if let Some(claim) = others.pop() {
            assert!(
                others.is_empty(),
                "two claims at once: {others:?} and {claim}"
            );
            return claim;
        }
        assert!(Instant::now() < deadline, "no waiter's claim appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `Link` lock at `path` held by another process, and another process
/// waiting for it (`wait MS`, polling every 5 ms): the holder, its claim,
/// the waiter and the waiter's claim, once made.
struct LinkQueue {
    holder: Proc,
    held: Vec<String>,
    waiter: Proc,
    claim: String,
}

fn link_waiter_behind_a_holder(path: &Utf8Path, wait_ms: u128) -> LinkQueue {
    let mut holder = spawn("hold", &["link", path.as_str()]);
    holder.expect("ACQUIRED");
    let held = claims_beside(path);
    assert_eq!(held.len(), 1, "the holder's claim: {held:?}");
    let mut waiter = spawn("waiter", &["link", path.as_str(), "10000"]);
    waiter.expect("READY");
    waiter.send(&format!("wait {wait_ms}"));
    let claim = a_waiters_claim(path, &held);
    LinkQueue {
        holder,
        held,
        waiter,
        claim,
    }
}

/// A `Link` waiter on a local file system keeps one claim (one token, one
/// file) for its whole wait, so that a release wakes it to a `link` alone
/// rather than to making a file first; a wait that ends without the lock
/// removes it.
#[test]
fn a_link_waiter_keeps_one_claim_for_its_whole_wait_and_removes_it_after() {
    let (_dir, path) = scratch();
    // Polls every 5 ms: a wait of 1.5 s is some 300 tries.
    let LinkQueue {
        mut holder,
        held,
        mut waiter,
        claim,
    } = link_waiter_behind_a_holder(&path, 1500);
    let mut looks = 0;
    let answer = loop {
        if let Some((event, data)) = waiter.poll_event(Duration::from_millis(2)) {
            break format!("{event} {data}");
        }
        let now: Vec<String> = claims_beside(&path)
            .into_iter()
            .filter(|n| !held.contains(n))
            .collect();
        // The same claim, or none once the wait has ended.
        assert!(
            now.is_empty() || now == [claim.clone()],
            "the waiter's claims changed: {claim} then {now:?}"
        );
        looks += 1;
    };
    assert_eq!(answer, "WAITED Timeout");
    assert!(looks > 10, "the wait was looked at {looks} times only");
    assert_eq!(claims_beside(&path), held, "the waiter left its claim");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    assert_eq!(claims_beside(&path), Vec::<String>::new());
}

/// A `Link` waiter killed while it waits leaves its claim (the one
/// leftover of a killed waiter); the next process that has to wait finds
/// its maker gone and removes it.
#[test]
fn a_killed_link_waiters_claim_is_removed_by_the_next_wait() {
    let (_dir, path) = scratch();
    let LinkQueue {
        mut holder,
        held,
        waiter,
        claim,
    } = link_waiter_behind_a_holder(&path, 30_000);
    let pid = holder.pid();
    waiter.kill();
    assert!(
        claims_beside(&path).contains(&claim),
        "the killed waiter's claim went by itself"
    );
    let next = open(&path, LockStrategy::Link);
    match next.acquire_timeout(Duration::from_millis(50)) {
        Err(e) if e.is_contended() => {
            assert_eq!(e.holder().map(|h| h.pid), Some(pid), "{e}");
        }
        other => panic!("expected the lock held by {pid}, got {other:?}"),
    }
    assert_eq!(claims_beside(&path), held, "left beside the lock");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
}

/// A `Link` waiter's kept claim removed while it sleeps (a cleaner of
/// hidden files) is made again at its next try: the wait goes on, and
/// takes the lock once it is released.
#[test]
fn a_link_waiter_whose_kept_claim_was_removed_makes_it_again() {
    let (_dir, path) = scratch();
    let LinkQueue {
        mut holder,
        held,
        mut waiter,
        claim,
    } = link_waiter_behind_a_holder(&path, EVENT_TIMEOUT.as_millis());
    std::fs::remove_file(path.with_file_name(&claim)).expect("remove the claim");
    // Made again (the same name: the wait's token) at the next try.
    assert_eq!(a_waiters_claim(&path, &held), claim);
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    assert_eq!(waiter.expect("WAITED"), "Ok");
    waiter.send("release");
    assert_eq!(waiter.expect("RELEASED"), "Ok");
    assert_eq!(claims_beside(&path), Vec::<String>::new());
}

#[cfg(unix)]
/// A `Link` waiter that waits on behalf of another process keeps its claim
/// even once that process is gone: the claim is the waiter's (its token
/// names the waiter), and another process's sweep must not take it for a
/// dead one's. The waiter then takes the lock and holds it.
#[test]
fn a_link_waiter_on_behalf_of_a_gone_process_keeps_its_claim_through_a_sweep() {
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &["link", path.as_str()]);
    holder.expect("ACQUIRED");
    let held = claims_beside(&path);
    let mut behalf = spawn("wait", &[]);
    let lock = options(LockStrategy::Link)
        .poll_interval(Duration::from_millis(5))
        .on_behalf_of(behalf.pid())
        .open(&path)
        .expect("open");
    let waiting = std::thread::spawn(move || {
        let got = lock.acquire_timeout(EVENT_TIMEOUT);
        (lock, got)
    });
    let claim = a_waiters_claim(&path, &held);
    // Open, to tell at the end whether it was ever unlinked (and made
    // again): its link count drops to 0 then.
    let opened = std::fs::File::open(path.with_file_name(&claim)).expect("open the claim");
    behalf.close_stdin();
    assert!(behalf.wait().success());
    // Another process waits a moment: it sleeps, and sweeps first (not
    // through the turnstile, where it would wait behind this one).
    let mut sweeper = spawn("waiter", &["link+unfair", path.as_str(), "10000"]);
    sweeper.expect("READY");
    sweeper.send("wait 100");
    assert_eq!(sweeper.expect("WAITED"), "Timeout");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        opened.metadata().expect("fstat").nlink(),
        1,
        "the waiter's claim was swept"
    );
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    let (lock, got) = waiting.join().expect("waiter");
    got.expect("the waiter took the lock");
    lock.ensure_held().expect("still held");
    lock.release().expect("release");
}
