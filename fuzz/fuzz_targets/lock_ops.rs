//! Drives several handles on one lock through a sequence of operations
//! decoded from the input, and checks every result against a model of the
//! contract; any divergence is a crash.
//!
//! The first byte picks the strategy (`Os`, `Mkdir`, `Link`); each further
//! byte is one operation: its low 3 bits pick it, the next bits the handle
//! (of 3). The model knows which handle holds the lock in this process and
//! whether its lock was broken under it (`force_break`):
//!
//! | operation | expected |
//! | --- | --- |
//! | `try_acquire` | `Ok` and held if nobody holds it, else `WouldBlock` (also for the holder: not reentrant), but `LockLost` for a holder whose lock was broken (which then holds nothing) |
//! | `acquire_timeout(1 ms)` | like `try_acquire`, but `Timeout` |
//! | `release` | `Ok` by the holder, `LockLost` if it was broken, `NotLocked` by anyone else |
//! | `ensure_held` | `Ok` / `LockLost` by the holder, `NotLocked` by anyone else |
//! | drop and reopen the handle | the holder's drop frees the lock |
//! | `break_lock` | `NotStale` while held by this (live) process, else `Ok(None)` |
//! | `force_break` | the holder's record (`Mkdir`/`Link`), `Unsupported` (`Os`), `Ok(None)` if free |
//! | `try_lock` guard, dropped | like `try_acquire` then `release` (`LockLost` as there) |
//! | `try_lock_shared` (op 0 with the high bit) | `Ok` unless a handle holds the lock exclusively (`WouldBlock`; `LockLost` for a holder whose lock was broken) |
//! | release of the newest shared guard (op 2 with the high bit) | `Ok`, `LockLost` if a forced break removed its registration |
//!
//! Readers change the rest as the contract says: an exclusive acquisition
//! beside live readers is `WouldBlock` (`Timeout`); `break_lock` of a lock
//! only live readers hold is `NotStale` (`Mkdir`, `Link`); `force_break`
//! of it removes their registrations (a record), and an `Os` lock's
//! readers are invisible to both (`Ok(None)`); `is_locked` is true while
//! `Mkdir` or `Link` readers hold it.
//!
//! After every operation `is_held` (each handle), `is_locked` (true while
//! any handle of the process holds it) and `owner` (the record on disk)
//! must agree with the model too.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portalock::{Error, LockFile, LockOptions, LockStrategy, SharedGuard};

const HANDLES: usize = 3;

struct Model {
    /// The handle that holds the lock in this process, and its token.
    holder: Option<(usize, String)>,
    /// Whether the holder's lock was broken under it.
    lost: bool,
}

fn open(strategy: LockStrategy, path: &std::path::Path) -> LockFile {
    LockOptions::new()
        .strategy(strategy)
        .poll_interval(Duration::from_millis(1))
        .open(path)
        .expect("open a handle")
}

/// What `release` and `ensure_held` answer: the holder `Ok`, or `LockLost`
/// once its lock was broken; anyone else `NotLocked`.
fn by_holder(holds: bool, lost: bool) -> &'static str {
    match (holds, lost) {
        (true, false) => "Ok",
        (true, true) => "LockLost",
        (false, _) => "NotLocked",
    }
}

fn variant(result: &Result<(), Error>) -> &'static str {
    match result {
        Ok(()) => "Ok",
        Err(Error::WouldBlock { .. }) => "WouldBlock",
        Err(Error::Timeout { .. }) => "Timeout",
        Err(Error::NotLocked { .. }) => "NotLocked",
        Err(Error::LockLost { .. }) => "LockLost",
        Err(Error::NotStale { .. }) => "NotStale",
        Err(Error::Unsupported { .. }) => "Unsupported",
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let strategy = LockStrategy::ALL[usize::from(first) % 3];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.lock");
    let mut handles: Vec<LockFile> = (0..HANDLES).map(|_| open(strategy, &path)).collect();
    let mut model = Model {
        holder: None,
        lost: false,
    };
    // The shared guards taken, oldest first, each with whether a forced
    // break removed its registration.
    let mut readers: Vec<(SharedGuard, bool)> = Vec::new();
    for (step, &byte) in ops.iter().take(64).enumerate() {
        let h = usize::from(byte >> 3) % HANDLES;
        let holds = model.holder.as_ref().is_some_and(|(x, _)| *x == h);
        let held = model.holder.is_some();
        let ctx = format!("step {step}, op {}, handle {h}, {strategy}", byte & 7);
        let live_readers = readers.iter().filter(|(_, lost)| !lost).count();
        match byte & 7 {
            0 if byte & 0x80 != 0 => {
                let result = handles[h].try_lock_shared();
                let expected = match held {
                    false => "Ok",
                    true if holds && model.lost => "LockLost",
                    true => "WouldBlock",
                };
                let got = match &result {
                    Ok(_) => "Ok",
                    Err(Error::WouldBlock { .. }) => "WouldBlock",
                    Err(Error::LockLost { .. }) => "LockLost",
                    Err(e) => panic!("{ctx}: unexpected error from try_lock_shared: {e}"),
                };
                assert_eq!(got, expected, "{ctx}: try_lock_shared");
                if expected == "LockLost" {
                    model.holder = None;
                    model.lost = false;
                }
                if let Ok(guard) = result {
                    readers.push((guard, false));
                }
            }
            2 if byte & 0x80 != 0 => {
                if let Some((guard, lost)) = readers.pop() {
                    let result = guard.release();
                    let expected = if lost { "LockLost" } else { "Ok" };
                    assert_eq!(variant(&result), expected, "{ctx}: shared release");
                }
            }
            0 | 1 => {
                let result = if byte & 7 == 0 {
                    handles[h].try_acquire()
                } else {
                    handles[h].acquire_timeout(Duration::from_millis(1))
                };
                let expected = match (held, byte & 7) {
                    (false, _) if live_readers == 0 => "Ok",
                    _ if holds && model.lost => "LockLost",
                    (_, 0) => "WouldBlock",
                    (_, _) => "Timeout",
                };
                assert_eq!(variant(&result), expected, "{ctx}");
                if expected == "LockLost" {
                    model.holder = None;
                    model.lost = false;
                }
                if result.is_ok() {
                    let token = handles[h].owner().expect("owner").expect("a record").token;
                    model.holder = Some((h, token));
                    model.lost = false;
                }
            }
            2 => {
                let result = handles[h].release();
                assert_eq!(variant(&result), by_holder(holds, model.lost), "{ctx}");
                if holds {
                    model.holder = None;
                    model.lost = false;
                }
            }
            3 => {
                let result = handles[h].ensure_held();
                assert_eq!(variant(&result), by_holder(holds, model.lost), "{ctx}");
            }
            4 => {
                handles[h] = open(strategy, &path);
                if holds {
                    model.holder = None;
                    model.lost = false;
                }
            }
            5 => {
                let result = handles[h].break_lock();
                let readers_seen = live_readers > 0 && strategy != LockStrategy::Os;
                if (held && !model.lost) || readers_seen {
                    assert_eq!(variant(&result.map(drop)), "NotStale", "{ctx}");
                } else {
                    assert!(matches!(result, Ok(None)), "{ctx}: {result:?}");
                }
            }
            6 => {
                let result = handles[h].force_break();
                match (held && !model.lost, strategy) {
                    (false, LockStrategy::Mkdir | LockStrategy::Link) if live_readers > 0 => {
                        // Every reader's registration goes.
                        let record = result.expect(&ctx).expect("a reader's record");
                        assert_eq!(record.pid, std::process::id(), "{ctx}");
                        for (_, lost) in &mut readers {
                            *lost = true;
                        }
                    }
                    (false, _) => assert!(matches!(result, Ok(None)), "{ctx}: {result:?}"),
                    (true, LockStrategy::Os) => {
                        assert_eq!(variant(&result.map(drop)), "Unsupported", "{ctx}")
                    }
                    (true, _) => {
                        let record = result.expect(&ctx).expect("the broken record");
                        let token = model.holder.as_ref().map(|(_, t)| t.clone());
                        assert_eq!(Some(record.token), token, "{ctx}");
                        model.lost = true;
                    }
                }
            }
            _ => {
                let guard = handles[h].try_lock();
                let got = match &guard {
                    Ok(_) => "Ok",
                    Err(Error::WouldBlock { .. }) => "WouldBlock",
                    Err(Error::LockLost { .. }) => "LockLost",
                    Err(e) => panic!("{ctx}: unexpected error from try_lock: {e}"),
                };
                let expected = match held {
                    false if live_readers == 0 => "Ok",
                    true if holds && model.lost => "LockLost",
                    _ => "WouldBlock",
                };
                assert_eq!(got, expected, "{ctx}");
                if expected == "LockLost" {
                    model.holder = None;
                    model.lost = false;
                }
                drop(guard);
            }
        }
        // The observable state agrees with the model.
        for (i, handle) in handles.iter().enumerate() {
            let holds = model.holder.as_ref().is_some_and(|(x, _)| *x == i);
            assert_eq!(handle.is_held(), holds, "{ctx}: is_held of handle {i}");
        }
        // Locked while a handle of this process holds it (even one whose
        // lock was broken: it has not let go yet); the record is on disk
        // only while the lock was not broken.
        let live_readers = readers.iter().filter(|(_, lost)| !lost).count();
        assert_eq!(
            handles[0].is_locked().expect("is_locked"),
            model.holder.is_some() || (live_readers > 0 && strategy != LockStrategy::Os),
            "{ctx}: is_locked"
        );
        let on_disk = model.holder.is_some() && !model.lost;
        let owner = handles[0].owner().expect("owner").map(|r| r.token);
        let expected = if on_disk {
            model.holder.as_ref().map(|(_, t)| t.clone())
        } else {
            None
        };
        assert_eq!(owner, expected, "{ctx}: owner");
    }
});
