//! The async waiter's wake-up (feature `tokio`): the lock watch of the
//! blocking waiter (`inotify` on Linux), slept on by a thread of tokio's
//! blocking pool, so that an async wait for a `Mkdir` or `Link` lock wakes
//! when the lock is released instead of at its next poll, without taking
//! a runtime worker. It needs no I/O driver in the runtime (a runtime
//! built with its time driver alone panics on a descriptor registered with
//! it). Where there is no watch, the async waiter polls with backoff.
//!
//! A future dropped while its watch sleeps leaves the blocking thread to
//! finish that sleep (at most the poll interval), after which the watch is
//! closed: nothing is held meanwhile.
//!
//! An `Os` lock has no watch: its release changes nothing a watch sees. On
//! Unix an async wait for it is woken by [`OsReleaseWake`]: a thread of its
//! own (not the runtime's: a runtime waits for its blocking tasks when it
//! is dropped) that asks for a *shared* lock on the lock file, waiting in
//! the kernel, and lets it go as soon as it has it. That happens when the
//! exclusive holder releases; the future then tries the lock. The thread
//! never holds what the wait is for (a shared lock for an instant, which a
//! try-once acquirer elsewhere may find in its way at that instant, as it
//! may find an `is_locked` look). A future dropped while it waits leaves
//! the thread asleep in the kernel until the holder releases; then it lets
//! go at once and ends. (On Windows a handle open on the lock file could
//! stop a temporary lock's removal: the async wait polls there.)

#[cfg(unix)]
use std::collections::HashMap;
#[cfg(unix)]
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use camino::Utf8Path;
#[cfg(unix)]
use camino::Utf8PathBuf;

use super::{Armed, LockWatch};

/// A lock watch that an async task can wait on.
#[derive(Debug)]
pub(crate) struct AsyncLockWatch {
    /// `None` while a blocking thread sleeps on it, or once one failed.
    watch: Option<LockWatch>,
}

impl AsyncLockWatch {
    /// A watch; `None` where there is none (then poll).
    pub(crate) fn new() -> Option<AsyncLockWatch> {
        LockWatch::new().map(|watch| AsyncLockWatch { watch: Some(watch) })
    }

    /// Watches what `path` names now (see `LockWatch::arm`).
    pub(crate) fn arm(&mut self, path: &Utf8Path, dir: bool) -> Armed {
        self.watch
            .as_mut()
            .map_or(Armed::Failed, |watch| watch.arm(path, dir))
    }

    /// Waits until the watched lock is removed, renamed or loses a link,
    /// or `timeout` passes.
    pub(crate) async fn wait(&mut self, timeout: Duration) {
        let Some(watch) = self.watch.take() else {
            return tokio::time::sleep(timeout).await;
        };
        // (a runtime shutting down refuses the task: poll from then on)
        if let Ok(watch) = tokio::task::spawn_blocking(move || {
            let _ = watch.wait(timeout);
            watch
        })
        .await
        {
            self.watch = Some(watch);
        }
    }
}

/// Wakes an async wait for an `Os` lock when its holder releases it (see
/// the module's docs). Unix only.
///
/// One thread per lock file and process waits at a time, whatever the
/// number of waits (and of futures dropped while they waited): a wait
/// joins the thread already waiting on the file its path names, if there
/// is one, and leaves it (its task waker with it) when it is dropped.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct OsReleaseWake {
    /// This wait's name among the listeners of a release.
    id: u64,
    /// The release this wait listens for, while it listens.
    release: Option<Arc<Release>>,
}

/// One thread's wait for the release of one lock file.
#[cfg(unix)]
#[derive(Debug)]
struct Release {
    /// The lock file the thread opened (its identity) and the process
    /// that started it (a child of `fork()` has no such thread).
    file: super::FileId,
    pid: u32,
    /// What the thread found, once it is done (see `OsWoke`).
    done: Mutex<Option<OsWoke>>,
    /// The tasks to wake when it is done, by listener.
    wakers: Mutex<HashMap<u64, std::task::Waker>>,
}

/// The threads waiting now, by lock path.
#[cfg(unix)]
static RELEASES: Mutex<Option<HashMap<Utf8PathBuf, Arc<Release>>>> = Mutex::new(None);

/// The smallest stack the waiting thread needs (it calls `flock` twice).
#[cfg(unix)]
const THREAD_STACK: usize = 64 * 1024;

#[cfg(unix)]
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(unix)]
impl Default for OsReleaseWake {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        OsReleaseWake {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            release: None,
        }
    }
}

#[cfg(unix)]
impl Drop for OsReleaseWake {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            lock(&release.wakers).remove(&self.id);
        }
    }
}

#[cfg(unix)]
impl OsReleaseWake {
    /// Waits until the lock file at `path` is released by its exclusive
    /// holder (or has none), or `timeout` passes.
    pub(crate) async fn wait(&mut self, path: &Utf8Path, timeout: Duration) -> OsWoke {
        let release = match &self.release {
            Some(release) => Arc::clone(release),
            None => match join_or_start(path) {
                Some(release) => release,
                None => return OsWoke::Failed,
            },
        };
        self.release = Some(Arc::clone(&release));
        let done = Done {
            release: &release,
            id: self.id,
        };
        match tokio::time::timeout(timeout, done).await {
            // Still waiting: the same thread goes on waiting for the next
            // call.
            Err(_) => OsWoke::Waiting,
            Ok(woke) => {
                self.release = None;
                woke
            }
        }
    }
}

/// The thread waiting for the release of the file `path` names: the one
/// already waiting on it, or a new one; `None` if none can wait (the file
/// cannot be opened, no thread can be started, or the table is held by a
/// thread that a `fork()` left behind).
#[cfg(unix)]
fn join_or_start(path: &Utf8Path) -> Option<Arc<Release>> {
    // (read-only, not following a final symbolic link, not waiting on a
    // FIFO put there)
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    super::no_follow_no_block(&mut opts);
    let file = opts.open(path).ok()?;
    let id = super::file_id(&file).ok()?;
    let pid = super::pid();
    // (a bounded look: a child of `fork()` may find the table locked for
    // good; it polls instead)
    let mut all = (0..1000).find_map(|_| match RELEASES.try_lock() {
        Ok(all) => Some(all),
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => {
            std::thread::yield_now();
            None
        }
    })?;
    let all = all.get_or_insert_with(HashMap::new);
    if let Some(release) = all.get(path) {
        // The same file, by a thread of this process: join it. (A
        // release of a file the path no longer names would never come.)
        if release.file == id && release.pid == pid {
            return Some(Arc::clone(release));
        }
    }
    let release = Arc::new(Release {
        file: id,
        pid,
        done: Mutex::new(None),
        wakers: Mutex::new(HashMap::new()),
    });
    let (theirs, path_owned) = (Arc::clone(&release), path.to_owned());
    // A thread of its own, not one of tokio's blocking pool: a runtime
    // waits for its blocking tasks when it is dropped, and this one may
    // wait as long as the holder holds the lock. Detached: it ends at the
    // release (or with the process).
    std::thread::Builder::new()
        .name("portalock-os-release".to_owned())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let woke = wait_for_release(&file);
            drop(file);
            // Done, and gone from the table (if still its own), in one
            // step: a wait that joins later starts a new thread.
            let mut all = lock(&RELEASES);
            if let Some(all) = all.as_mut() {
                if all
                    .get(&path_owned)
                    .is_some_and(|r| Arc::ptr_eq(r, &theirs))
                {
                    all.remove(&path_owned);
                }
            }
            *lock(&theirs.done) = Some(woke);
            let wakers = std::mem::take(&mut *lock(&theirs.wakers));
            drop(all);
            for waker in wakers.into_values() {
                waker.wake();
            }
        })
        .ok()?;
    all.insert(path.to_owned(), Arc::clone(&release));
    Some(release)
}

/// On the waiting thread: a shared lock of the lock file, waited for in
/// the kernel, and let go at once.
#[cfg(unix)]
fn wait_for_release(file: &std::fs::File) -> OsWoke {
    let shared = |wait| super::lock_file(file, super::LockKind::Shared, wait);
    let woke = match shared(super::Wait::Try) {
        Ok(()) => OsWoke::Free,
        Err(e) if super::lock_contended(&e, file) => match shared(super::Wait::Block) {
            Ok(()) => OsWoke::Released,
            Err(_) => OsWoke::Failed,
        },
        Err(_) => OsWoke::Failed,
    };
    // (closing the file lets the lock go too; unlocked first, in case the
    // descriptor was shared meanwhile)
    let _ = super::unlock_file(file);
    woke
}

/// The future of a [`Release`] for one listener: ready once its thread is
/// done.
#[cfg(unix)]
struct Done<'a> {
    release: &'a Release,
    id: u64,
}

#[cfg(unix)]
impl std::future::Future for Done<'_> {
    type Output = OsWoke;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<OsWoke> {
        // The thread sets `done` before it takes the wakers; this looks at
        // `done` while it holds them: either it sees `done`, or its waker
        // is among those taken.
        let mut wakers = lock(&self.release.wakers);
        if let Some(woke) = *lock(&self.release.done) {
            wakers.remove(&self.id);
            return std::task::Poll::Ready(woke);
        }
        wakers.insert(self.id, cx.waker().clone());
        std::task::Poll::Pending
    }
}

/// What [`OsReleaseWake::wait`] came to.
#[cfg(unix)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OsWoke {
    /// The exclusive holder released the lock while the thread waited.
    Released,
    /// The lock had no exclusive holder at the thread's first look (it was
    /// released just before, or only shared holders have it).
    Free,
    /// The timeout passed; the thread goes on waiting.
    Waiting,
    /// No thread could wait (the file cannot be opened, no thread can be
    /// started): sleep instead.
    Failed,
}
