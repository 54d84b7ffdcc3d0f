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
//!
//! After every operation `is_held` (each handle), `is_locked` (true while
//! any handle of the process holds it) and `owner` (the record on disk)
//! must agree with the model too.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portalock::{Error, LockFile, LockOptions, LockStrategy};

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
    for (step, &byte) in ops.iter().take(64).enumerate() {
        let h = usize::from(byte >> 3) % HANDLES;
        let holds = model.holder.as_ref().is_some_and(|(x, _)| *x == h);
        let held = model.holder.is_some();
        let ctx = format!("step {step}, op {}, handle {h}, {strategy}", byte & 7);
        match byte & 7 {
            0 | 1 => {
                let result = if byte & 7 == 0 {
                    handles[h].try_acquire()
                } else {
                    handles[h].acquire_timeout(Duration::from_millis(1))
                };
                let expected = match (held, byte & 7) {
                    (false, _) => "Ok",
                    _ if holds && model.lost => "LockLost",
                    (true, 0) => "WouldBlock",
                    (true, _) => "Timeout",
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
                if held && !model.lost {
                    assert_eq!(variant(&result.map(drop)), "NotStale", "{ctx}");
                } else {
                    assert!(matches!(result, Ok(None)), "{ctx}: {result:?}");
                }
            }
            6 => {
                let result = handles[h].force_break();
                match (held && !model.lost, strategy) {
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
                    false => "Ok",
                    true if holds && model.lost => "LockLost",
                    true => "WouldBlock",
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
        assert_eq!(
            handles[0].is_locked().expect("is_locked"),
            model.holder.is_some(),
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
