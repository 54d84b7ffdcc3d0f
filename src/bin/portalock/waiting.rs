//! What a waiting `portalock` says on stderr: who holds the lock, and
//! for how long it has waited.

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use portalock::{Error, LockFile, OwnerRecord};

use crate::Wait;

/// Runs `acquire` while telling on stderr (unless `--quiet`) what it waits
/// for, in the words of `line`.
pub(crate) fn wait_visibly<T>(
    wait: &Wait,
    line: impl Fn(Duration) -> String + Sync,
    acquire: impl FnOnce() -> portalock::Result<T>,
) -> portalock::Result<T> {
    std::thread::scope(|scope| {
        let (done, waiting) = mpsc::channel::<()>();
        if !wait.quiet {
            let line = &line;
            scope.spawn(move || report_wait(line, &waiting));
        }
        let result = acquire();
        drop(done);
        result
    })
}

/// Says what we wait for, after a second and then every second on a
/// terminal (rewriting one line) or every ten seconds otherwise, until
/// `done` is dropped.
pub(crate) fn report_wait(line: &(impl Fn(Duration) -> String + Sync), done: &mpsc::Receiver<()>) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let start = Instant::now();
    let mut next = Duration::from_secs(1);
    let mut shown = false;
    while let Err(RecvTimeoutError::Timeout) =
        done.recv_timeout(next.saturating_sub(start.elapsed()))
    {
        let text = line(start.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r\x1b[2K{text}")
        } else {
            writeln!(err, "{text}")
        };
        let _ = err.flush();
        shown = true;
        next += every;
    }
    if terminal && shown {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
}

/// Who holds a lock, for a waiting message, from a look at its owner.
pub(crate) fn describe_holder(owner: Result<Option<OwnerRecord>, Error>) -> String {
    match owner {
        Ok(Some(owner)) => describe(&owner),
        Ok(None) => "an owner whose record cannot be read".to_owned(),
        Err(e) => format!("an unknown owner ({e})"),
    }
}

pub(crate) fn waiting_line(lock: &LockFile, waited: Duration) -> String {
    let holder = describe_holder(lock.owner());
    format!(
        "portalock: waiting {} for {}, held by {holder}",
        secs(waited),
        lock.path()
    )
}

/// "pid 42 on build-7 for 3m 5s".
pub(crate) fn describe(owner: &OwnerRecord) -> String {
    let held = SystemTime::now()
        .duration_since(owner.acquired_at)
        .ok()
        .map(|d| format!(" for {}", secs(d)))
        .unwrap_or_default();
    format!("pid {} on {}{held}", owner.pid, owner.hostname)
}

/// When `owner` took its lock, RFC 3339 in UTC: "2026-11-22T10:00:00Z".
pub(crate) fn since(owner: &OwnerRecord) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(owner.acquired_at)
}

/// A duration to the second: "1m 5s".
pub(crate) fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
