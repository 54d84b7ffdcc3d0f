//! Protocol steps stopped inside one test process, and situations the
//! fault-point matrix cannot stage with its actors (feature `failpoints`;
//! each test holds `fail::FailScenario`, which runs them one at a time).
#![cfg(all(feature = "failpoints", target_os = "linux"))]

mod common;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use camino::Utf8Path;
use portalock::{Error, LockFile, LockOptions, LockStatus, LockStrategy};

use common::fixture::scratch;
use common::{spawn, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

fn link(path: &Utf8Path) -> LockFile {
    LockOptions::new()
        .strategy(LockStrategy::Link)
        .poll_interval(Duration::from_millis(5))
        .open(path)
        .expect("open")
}

/// A `Link` lock whose claim was taken by a remover of another machine,
/// which may still be removing it (its lock path unlinked a moment later,
/// and a new holder's lock made): a forced break must not become a second
/// remover of the same path, which could unlink the new holder's lock. It
/// refuses, and says why.
#[test]
fn a_forced_break_never_competes_with_a_remover_it_cannot_judge() {
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let x = link(&path);
    x.acquire().expect("acquire");
    let token = x.owner().expect("owner").expect("record").token;
    x.detach().expect("detach");
    // A remover on machine B takes the claim (its taken name carries B's
    // machine tag) and has not yet removed the lock path.
    let claim = path.with_file_name(format!(".test.lock.{token}.owner"));
    let remote = path.with_file_name(format!(
        ".test.lock.{token}.owner.taken.0123456789abcdef.h{}.4242.77.{}",
        "0".repeat(16),
        "ab".repeat(16)
    ));
    std::fs::rename(&claim, &remote).expect("B takes the claim");
    let forced = link(&path).force_break();
    assert!(
        matches!(forced, Err(Error::NotStale { .. })),
        "a forced break went on beside a remover it cannot judge: {forced:?}"
    );
    assert!(!claim.exists(), "a second claim was made");
    assert_eq!(
        link(&path).owner().expect("owner").map(|r| r.token),
        Some(token),
        "the lock file was removed"
    );
    // B finishes; the lock is free.
    std::fs::remove_file(&path).expect("B removes the lock path");
    std::fs::remove_file(&remote).expect("B removes its taken name");
    link(&path).try_acquire().expect("free once B is done");
    scenario.teardown();
}

/// A holder stopped (`SIGSTOP`, a suspended machine) for longer than its
/// lease, while a breaker judged its lease expired and is about to break
/// it: once it runs again, it is told it lost the lock, never that it holds
/// it (its late heartbeat must not revive the lease).
#[test]
fn a_holder_stopped_past_its_lease_is_told_it_lost_the_lock() {
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &["link", path.as_str(), "300"]);
    holder.expect("ACQUIRED");
    let (judged_tx, judged_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (judged_tx, go_rx) = (Mutex::new(judged_tx), Mutex::new(go_rx));
    fail::cfg_callback("break.judged", move || {
        let _ = judged_tx.lock().map(|tx| tx.send(()));
        let _ = go_rx.lock().map(|rx| rx.recv());
    })
    .expect("configure the fault point");
    holder.signal("STOP");
    let p = path.clone();
    let breaker = std::thread::spawn(move || link(&p).break_lock());
    judged_rx
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the breaker judged the lease expired");
    holder.signal("CONT");
    // Its overdue heartbeat gets a chance to run first (not needed for the
    // answer, but what made the wrong one possible).
    std::thread::sleep(Duration::from_millis(100));
    holder.send("check");
    let told = loop {
        let (event, data) = holder.next_event();
        if event == "CHECKED" {
            break data;
        }
    };
    go_tx.send(()).expect("resume the breaker");
    let broken = breaker.join().expect("breaker");
    scenario.teardown();
    assert_eq!(
        told, "LockLost",
        "stopped past its lease, the holder was told it holds the lock"
    );
    assert!(broken.is_ok(), "{broken:?}");
}

/// An `Os` lock whose file is on descriptor 0 (a process started with its
/// standard input closed) is handed to the command all the same: the
/// command's own standard I/O set-up must not take the lock file's place.
#[test]
fn an_os_lock_on_a_low_descriptor_is_handed_to_the_command() {
    let (_dir, path) = scratch();
    let mut proc = spawn("spawn-on-fd0", &[path.as_str()]);
    assert_eq!(proc.expect("INHERITED"), "yes");
    assert!(proc.wait().success());
}

/// An SMB client can answer a listing of a `Mkdir` lock's directory with
/// "not a directory" for a moment, though `lstat` just called it one: it
/// took the directory for a file it had cached under the same (reused)
/// inode number (seen on CI's smb3-nobrl lane: a waiter's probe failed
/// with ENOTDIR and its wait ended in an error). A look at the lock, and a
/// waiter's judgement of it, look again rather than fail: the lock is held,
/// and says by whom. The same for the record just listed: opening it can
/// answer ENOTDIR for its directory (seen on the same lane).
#[test]
fn a_listing_that_says_not_a_directory_for_a_moment_is_looked_at_again() {
    const ENOTDIR: i32 = 20;
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let mkdir = || {
        LockOptions::new()
            .strategy(LockStrategy::Mkdir)
            .poll_interval(Duration::from_millis(5))
            .open(&path)
            .expect("open")
    };
    let holder = mkdir();
    holder.acquire().expect("acquire");
    let waiter = mkdir();

    // The listing, then the record just listed (opening it can answer
    // ENOTDIR for its directory): each looked at again, and the record
    // never taken for a missing one (which, lasting a grace period, would
    // let a waiter break a live lock).
    for point in ["mkdir.probe.list", "mkdir.probe.record"] {
        fail::cfg(point, &format!("2*return({ENOTDIR})")).expect("cfg");
        let status = waiter.status();
        assert!(
            matches!(&status, Ok(portalock::LockStatus::Held(Some(r))) if r.pid == std::process::id()),
            "{point}: {status:?}"
        );
        fail::cfg(point, &format!("2*return({ENOTDIR})")).expect("cfg");
        let tried = waiter.try_acquire();
        assert!(
            matches!(
                tried,
                Err(Error::WouldBlock {
                    holder: Some(_),
                    ..
                })
            ),
            "{point}: {tried:?}"
        );
        fail::remove(point);
    }
    // An answer that does not pass is an error, never a lock without a
    // record: the look gives up after its patience (2.5 s).
    fail::cfg("mkdir.probe.record", &format!("return({ENOTDIR})")).expect("cfg");
    let status = waiter.status();
    assert!(
        matches!(&status, Err(e) if e.io_error().and_then(|e| e.raw_os_error()) == Some(ENOTDIR)),
        "{status:?}"
    );
    fail::remove("mkdir.probe.record");
    holder.release().expect("release");
    scenario.teardown();
}

/// A record that a waiter cannot open for longer than the grace period
/// ("delete pending" on SMB answers EBUSY or EINVAL; a server-side program
/// that opens it without sharing does the same) is an owner that cannot be
/// judged, never a missing record: neither `break_lock` nor a waiter may
/// break the live lock (`break_lock` did: after the grace period it
/// unlinked the holder's record).
#[test]
fn a_record_that_cannot_be_opened_is_never_a_missing_one() {
    const EBUSY: i32 = 16;
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let open = |grace: Duration| {
        LockOptions::new()
            .strategy(LockStrategy::Mkdir)
            .poll_interval(Duration::from_millis(5))
            .grace(grace)
            .open(&path)
            .expect("open")
    };
    let holder = open(portalock::DEFAULT_GRACE);
    holder.acquire().expect("acquire");
    let waiter = open(Duration::from_millis(50));
    fail::cfg("mkdir.probe.record", &format!("return({EBUSY})")).expect("cfg");
    let broken = waiter.break_lock();
    let tried = waiter.acquire_timeout(Duration::from_millis(500));
    fail::remove("mkdir.probe.record");
    assert!(matches!(broken, Err(Error::NotStale { .. })), "{broken:?}");
    assert!(
        matches!(tried, Err(Error::Timeout { .. } | Error::WouldBlock { .. })),
        "{tried:?}"
    );
    holder
        .ensure_held()
        .expect("the holder still holds its lock");
    holder.release().expect("release");
    scenario.teardown();
}

/// An SMB client can answer the removal of a holder's own, empty lock
/// directory with ENOTDIR for longer than 2.5 s (its cache of a reused
/// inode number, refreshed by other processes' looks; seen on the
/// smb3-nobrl lane, where such a release failed). Only an empty directory
/// is ever removed, and until it is, nobody else can take the lock, so the
/// holder asks again for as long as a grace period before it gives up.
#[test]
fn a_release_waits_out_a_passing_not_a_directory_for_its_own_directory() {
    const ENOTDIR: i32 = 20;
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let lock = LockOptions::new()
        .strategy(LockStrategy::Mkdir)
        .open(&path)
        .expect("open");
    lock.acquire().expect("acquire");
    // About 3.5 s of answers at the remover's pace (at most 50 ms apart).
    fail::cfg("mkdir.remove.dir", &format!("70*return({ENOTDIR})")).expect("cfg");
    let released = lock.release();
    fail::remove("mkdir.remove.dir");
    assert!(released.is_ok(), "{released:?}");
    assert!(!path.exists(), "the directory is removed");
    scenario.teardown();
}

/// An `Os` holder stopped between taking the kernel's lock and writing its
/// record: on a local file system the file still holds the last holder's
/// record (a release leaves it), and a reader must not give that process,
/// gone, as the owner.
#[test]
fn an_os_lock_not_yet_written_does_not_name_its_gone_last_holder() {
    let scenario = fail::FailScenario::setup();
    let (_dir, path) = scratch();
    let mut last = spawn("hold", &["os", path.as_str()]);
    let gone: u32 = last.expect("ACQUIRED").parse().expect("pid");
    last.send("release");
    assert_eq!(last.expect("RELEASED"), "Ok");
    last.close_stdin();
    assert!(last.wait().success());
    let (locked_tx, locked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (locked_tx, go_rx) = (Mutex::new(locked_tx), Mutex::new(go_rx));
    fail::cfg_callback("os.acquire.locked", move || {
        let _ = locked_tx.lock().map(|tx| tx.send(()));
        let _ = go_rx.lock().map(|rx| rx.recv());
    })
    .expect("configure the fault point");
    let p = path.clone();
    let next = std::thread::spawn(move || {
        let lock = LockFile::with_strategy(&p, LockStrategy::Os).expect("open");
        lock.acquire().map(|()| lock)
    });
    locked_rx
        .recv_timeout(EVENT_TIMEOUT)
        .expect("the next holder took the kernel's lock");
    let reader = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    let owner = reader.owner();
    let status = reader.status();
    go_tx.send(()).expect("resume the next holder");
    let next = next.join().expect("next holder").expect("acquire");
    scenario.teardown();
    assert!(
        matches!(&owner, Ok(None)),
        "the gone last holder {gone} named as the owner: {owner:?}"
    );
    assert!(matches!(status, Ok(LockStatus::Held(None))), "{status:?}");
    assert_eq!(
        reader.owner().expect("owner").map(|r| r.pid),
        Some(std::process::id())
    );
    next.release().expect("release");
}
