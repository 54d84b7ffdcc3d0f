//! Fast hand-off for waiters in other processes, on Linux: a waiter for a
//! `Mkdir` or `Link` lock sleeps on an inotify watch of the lock's
//! directory and wakes as soon as something is removed from it (the lock,
//! released), instead of after a poll interval. Where inotify is not
//! available (or on network file systems, where other clients' changes
//! raise no event), the waiter falls back to polling with backoff: the
//! watch only ever shortens a sleep. Other platforms: `no_watch`.

use std::time::Duration;

use camino::Utf8Path;

/// A watch on a lock's directory, or nothing where there is none.
#[derive(Debug)]
pub(crate) struct DirWatch {
    fd: Option<std::os::fd::OwnedFd>,
    /// The watch on the directory, in `fd`.
    wd: i32,
    /// The lock's file name: only its removal wakes the waiter (its own
    /// attempts create and remove other names in the directory).
    name: String,
}

/// Idle inotify instances of this process, kept for the next waiter.
///
/// Closing an inotify instance waits for the kernel to retire its marks (an
/// RCU grace period: milliseconds), and a waiter that just got its lock
/// would pay that while holding it. So instances are never closed after a
/// wait: their watch is removed (which the kernel finishes in the
/// background) and the instance goes back here. A few are kept; more are
/// only made when more threads of the process wait at once.
static IDLE: std::sync::Mutex<Vec<std::os::fd::OwnedFd>> = std::sync::Mutex::new(Vec::new());

const MAX_IDLE: usize = 8;

impl DirWatch {
    /// Watches the directory of `path` for removals and renames away.
    /// `None` where that is not possible; the caller then polls.
    pub(crate) fn new(path: &Utf8Path) -> Option<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let dir = path.parent()?;
        let name = path.file_name()?.to_owned();
        let idle = IDLE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let fd = match idle {
            Some(fd) => {
                // Events of an earlier wait, and the IN_IGNORED of its
                // removed watch, are dropped before the new watch exists.
                drain(&fd);
                fd
            }
            None => inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?,
        };
        let flags = WatchFlags::DELETE | WatchFlags::MOVED_FROM | WatchFlags::ONLYDIR;
        let wd = match inotify::add_watch(&fd, dir.as_str(), flags) {
            Ok(wd) => wd,
            Err(_) => {
                give_back(fd);
                return None;
            }
        };
        Some(DirWatch {
            fd: Some(fd),
            wd,
            name,
        })
    }

    /// Sleeps until the lock's name is removed from the directory or
    /// `timeout` passes.
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
            let Some(fd) = self.fd.as_ref() else {
                return std::thread::sleep(left);
            };
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return,
                Ok(_) => {}
                Err(_) => return std::thread::sleep(left),
            }
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = Reader::new(fd, &mut buf);
            let mut ours = false;
            while let Ok(event) = reader.next() {
                ours |= event.wd() == self.wd
                    && event
                        .file_name()
                        .is_some_and(|n| n.to_bytes() == self.name.as_bytes());
            }
            if ours {
                return;
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            // Fails only if the watch is gone already (its directory was
            // removed); the instance is reusable either way.
            let _ = rustix::fs::inotify::remove_watch(&fd, self.wd);
            give_back(fd);
        }
    }
}

/// Reads and drops every queued event of `fd` (non-blocking).
fn drain(fd: &std::os::fd::OwnedFd) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut reader = rustix::fs::inotify::Reader::new(fd, &mut buf);
    while reader.next().is_ok() {}
}

/// Keeps an instance without a watch for the next waiter (or closes it if
/// enough are kept).
fn give_back(fd: std::os::fd::OwnedFd) {
    let mut idle = IDLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if idle.len() < MAX_IDLE {
        idle.push(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_removal_wakes_and_a_reused_instance_forgets_old_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = camino::Utf8PathBuf::from_path_buf(dir.path().join("x.lock")).expect("utf-8");
        std::fs::write(&path, "").expect("create");
        let first = DirWatch::new(&path).expect("watch");
        std::fs::remove_file(&path).expect("remove");
        // The event is queued: the wait returns long before its bound.
        let start = Instant::now();
        first.wait(Duration::from_secs(20));
        assert!(start.elapsed() < Duration::from_secs(10));
        // Another removal, left unread when the watch ends.
        std::fs::write(&path, "").expect("create");
        std::fs::remove_file(&path).expect("remove");
        drop(first);
        std::fs::write(&path, "").expect("create");
        let second = DirWatch::new(&path).expect("watch again");
        let start = Instant::now();
        second.wait(Duration::from_millis(200));
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "woken by an event of the earlier watch"
        );
    }
}
