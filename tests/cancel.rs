//! Cancelling a wait from another thread (`CancelToken`): the wait ends
//! with `Cancelled` within one wake-up and holds nothing, on every
//! strategy, while another process holds the lock.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use camino::Utf8Path;
use portalock::{BoundedSemaphore, CancelToken, Error, LockOptions, LockStrategy};
use rstest::rstest;
use rstest_reuse::apply;

use common::fixture::{every_strategy, scratch, scratch_root};
use common::{spawn, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

/// What the directory of `lock` holds, sorted.
fn listing(lock: &Utf8Path) -> Vec<String> {
    common::names(lock.parent().expect("a parent").as_std_path())
}

/// Options whose wait says when it has begun (the hook, at once), so that
/// the token is cancelled while the wait goes on rather than before it.
fn options_telling_the_wait(strategy: LockStrategy) -> (LockOptions, mpsc::Receiver<()>) {
    let (began, waiting) = mpsc::channel();
    let began = std::sync::Mutex::new(began);
    let mut options = LockOptions::new();
    options
        .strategy(strategy)
        .on_wait(move |_| {
            let _ = began.lock().map(|tx| tx.send(()));
        })
        .on_wait_timing(Duration::ZERO, Duration::from_secs(3600));
    (options, waiting)
}

/// Cancels `token` once the wait has begun; returns when it did.
fn cancel_when_waiting(
    waiting: mpsc::Receiver<()>,
    token: CancelToken,
) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        waiting.recv_timeout(EVENT_TIMEOUT).expect("the wait began");
        let at = Instant::now();
        token.cancel();
        at
    })
}

/// An unbounded wait (for `Os`, one that would sleep in the kernel)
/// cancelled from another thread ends with `Cancelled` within a second
/// (the promise is 10 ms), holds nothing, leaves nothing behind, and the
/// holder in the other process keeps its lock; the handle then takes the
/// lock once it is free.
#[apply(every_strategy)]
fn an_unbounded_wait_cancelled_from_another_thread_ends_and_holds_nothing(strategy: LockStrategy) {
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &[strategy.as_str(), path.as_str()]);
    holder.expect("ACQUIRED");
    let (options, waiting) = options_telling_the_wait(strategy);
    let lock = options.open(&path).expect("open");
    let before = listing(&path);

    let token = CancelToken::new();
    let canceller = cancel_when_waiting(waiting, token.clone());
    let waited = lock.lock_cancellable(&token);
    let ended = Instant::now();
    let cancelled_at = canceller.join().expect("canceller");
    assert!(
        matches!(waited, Err(Error::Cancelled { .. })),
        "{strategy}: {waited:?}"
    );
    let late = ended.saturating_duration_since(cancelled_at);
    assert!(
        late < Duration::from_secs(1),
        "{strategy}: ended {late:?} after the cancel"
    );
    assert!(!lock.is_held());
    assert_eq!(
        listing(&path),
        before,
        "{strategy}: the wait left something"
    );
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "Ok", "the holder keeps its lock");

    // A cancelled token stays cancelled; another wait is as before.
    assert!(matches!(
        lock.acquire_cancellable(&token),
        Err(Error::Cancelled { .. })
    ));
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    let guard = lock
        .lock_cancellable(&CancelToken::new())
        .expect("free: taken");
    guard.release().expect("release");
    holder.close_stdin();
    assert!(holder.wait().success());
}

/// The handle's token (`LockOptions::cancel_token`) ends its bounded
/// waits too, with `Cancelled` rather than `Timeout`, and a semaphore's.
#[rstest]
fn the_handles_token_cancels_bounded_waits_and_semaphores(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, root) = scratch_root();
    let path = root.join("x.lock");
    let mut holder = spawn("hold", &[strategy.as_str(), path.as_str()]);
    holder.expect("ACQUIRED");
    let token = CancelToken::new();
    let (mut options, waiting) = options_telling_the_wait(strategy);
    options.cancel_token(&token);
    let lock = options.open(&path).expect("open");
    let canceller = cancel_when_waiting(waiting, token.clone());
    let started = Instant::now();
    let waited = lock.acquire_timeout(EVENT_TIMEOUT);
    canceller.join().expect("canceller");
    assert!(
        matches!(waited, Err(Error::Cancelled { .. })),
        "{strategy}: {waited:?}"
    );
    assert!(started.elapsed() < EVENT_TIMEOUT);
    assert!(!lock.is_held());

    // A semaphore of one slot, held by the other process: its wait ends
    // at the cancel too.
    let slot = root.join("sem.0");
    let mut slot_holder = spawn("hold", &[strategy.as_str(), slot.as_str()]);
    slot_holder.expect("ACQUIRED");
    let token = CancelToken::new();
    let mut options = LockOptions::new();
    options.strategy(strategy).cancel_token(&token);
    let semaphore = BoundedSemaphore::new(root.join("sem"), 1, &options).expect("semaphore");
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            // (the semaphore's wait has no hook: cancel after its first
            // tries, or before them, which ends it as well)
            std::thread::sleep(Duration::from_millis(50));
            token.cancel();
        })
    };
    let waited = semaphore.acquire_timeout(EVENT_TIMEOUT);
    canceller.join().expect("canceller");
    assert!(
        matches!(waited, Err(Error::Cancelled { .. })),
        "{strategy}: {waited:?}"
    );
    holder.close_stdin();
    slot_holder.close_stdin();
    assert!(holder.wait().success());
    assert!(slot_holder.wait().success());
}

/// A shared (reader) wait of a handle with a token ends at the cancel too.
#[test]
fn the_handles_token_cancels_a_shared_wait() {
    let (_dir, path) = scratch();
    let mut holder = spawn("hold", &["os", path.as_str()]);
    holder.expect("ACQUIRED");
    let token = CancelToken::new();
    let lock = LockOptions::new()
        .strategy(LockStrategy::Os)
        .cancel_token(&token)
        .open(&path)
        .expect("open");
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            // (before the wait or during it: it ends either way)
            std::thread::sleep(Duration::from_millis(50));
            token.cancel();
        })
    };
    let waited = lock.lock_shared();
    canceller.join().expect("canceller");
    assert!(matches!(waited, Err(Error::Cancelled { .. })), "{waited:?}");
    holder.close_stdin();
    assert!(holder.wait().success());
}
