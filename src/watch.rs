//! Fast hand-off for waiters in other processes: on Linux, a waiter for a
//! `Mkdir` or `Link` lock sleeps on an inotify watch of the lock's
//! directory and wakes as soon as something is removed from it (the lock,
//! released), instead of after a poll interval. Elsewhere, and where
//! inotify is not available (or on network file systems, where other
//! clients' changes raise no event), the waiter falls back to polling with
//! backoff: the watch only ever shortens a sleep.

use std::time::Duration;

use camino::Utf8Path;

/// A watch on a lock's directory, or nothing where there is none.
#[derive(Debug)]
pub(crate) struct DirWatch {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fd: std::os::fd::OwnedFd,
    /// The lock's file name: only its removal wakes the waiter (its own
    /// attempts create and remove other names in the directory).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    name: String,
}

impl DirWatch {
    /// Watches the directory of `path` for removals and renames away.
    /// `None` where that is not possible; the caller then polls.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn new(path: &Utf8Path) -> Option<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let dir = path.parent()?;
        let name = path.file_name()?.to_owned();
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let flags = WatchFlags::DELETE | WatchFlags::MOVED_FROM | WatchFlags::ONLYDIR;
        inotify::add_watch(&fd, dir.as_str(), flags).ok()?;
        Some(DirWatch { fd, name })
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn new(_path: &Utf8Path) -> Option<DirWatch> {
        None
    }

    /// Sleeps until the lock's name is removed from the directory or
    /// `timeout` passes.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn wait(&self, timeout: Duration) {
        use rustix::event::{poll, PollFd, PollFlags};
        use rustix::fs::inotify::Reader;
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let Ok(ts) = rustix::time::Timespec::try_from(left) else {
                return std::thread::sleep(left);
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => return std::thread::sleep(left),
            }
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = Reader::new(&self.fd, &mut buf);
            let mut ours = false;
            while let Ok(event) = reader.next() {
                ours |= event
                    .file_name()
                    .is_some_and(|n| n.to_bytes() == self.name.as_bytes());
            }
            if ours {
                return;
            }
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn wait(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}
