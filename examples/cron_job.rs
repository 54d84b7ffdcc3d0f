//! A cron job that must not overlap with its previous run: it takes its
//! lock with a try (or a short bounded wait) and, if another run still
//! holds it, says who and exits with a distinct code, as `portalock run -n`
//! does (75, `EX_TEMPFAIL`: "try again later").
//!
//! ```text
//! cargo run --example cron_job -- job LOCK_PATH [WAIT_MS]   # one run of the job
//! cargo run --example cron_job                              # the self-check below
//! ```
//!
//! Without arguments it checks itself: it holds the lock and starts the job
//! as a child process (this same program), which must exit 75; then it
//! starts the job again with a bounded wait and releases the lock while
//! the job waits, and the job must run and exit 0.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use portalock::{Error, LockFile};

/// The exit code of a run that found the lock busy (`portalock run -n`'s).
const BUSY: u8 = 75;

/// One run of the job: take the lock without waiting (or for at most
/// `wait`), do the work, release.
fn job(lock_path: &str, wait: Duration) -> ExitCode {
    let lock = match LockFile::new(lock_path) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("job: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `lock_timeout(Duration::ZERO)` tries once, as `try_lock` does.
    let guard = match lock.lock_timeout(wait) {
        Ok(guard) => guard,
        // Busy: the error names the holder (pid, host, since when), when known.
        Err(e @ (Error::WouldBlock { .. } | Error::Timeout { .. })) => {
            eprintln!("job: skipped, the previous run is still going: {e}");
            return ExitCode::from(BUSY);
        }
        Err(e) => {
            eprintln!("job: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("job: running under {}", lock.path());
    // The work.
    std::thread::sleep(Duration::from_millis(50));
    // Dropping the guard releases too; `release` reports an error, if any.
    match guard.release() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("job: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts one run of the job as a child process and returns its exit code.
fn run_job(lock_path: &std::path::Path, wait: Duration) -> Result<i32, Box<dyn std::error::Error>> {
    let status = Command::new(std::env::current_exe()?)
        .arg("job")
        .arg(lock_path)
        .arg(wait.as_millis().to_string())
        .status()?;
    Ok(status.code().ok_or("the job was killed by a signal")?)
}

fn self_check() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nightly-report.lock");

    // The previous run still holds the lock: this run gives up at once.
    let previous = LockFile::new(&path)?;
    let guard = previous.lock()?;
    let code = run_job(&path, Duration::ZERO)?;
    assert_eq!(
        code,
        i32::from(BUSY),
        "a busy lock must make the job exit {BUSY}"
    );
    println!("self-check: with the lock held, a try exits {code}");

    // A bounded wait outlasts the holder: the job waits, then runs.
    let started = Instant::now();
    let code = std::thread::scope(|s| {
        let releaser = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            guard.release()
        });
        let code = run_job(&path, Duration::from_secs(10));
        releaser.join().expect("the releasing thread")?;
        code
    })?;
    assert_eq!(code, 0, "the job must run once the lock is free");
    println!(
        "self-check: with a bounded wait, the job ran once the lock was released ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, path] if cmd == "job" => job(path, Duration::ZERO),
        [cmd, path, ms] if cmd == "job" => match ms.parse() {
            Ok(ms) => job(path, Duration::from_millis(ms)),
            Err(e) => {
                eprintln!("cron_job: WAIT_MS `{ms}`: {e}");
                ExitCode::from(2)
            }
        },
        [] => match self_check() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cron_job: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cron_job [job LOCK_PATH [WAIT_MS]]");
            ExitCode::from(2)
        }
    }
}
