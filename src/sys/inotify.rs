//! Fast hand-off for waiters in other processes, on Linux: a waiter for a
//! `Mkdir` or `Link` lock sleeps on an inotify watch of the lock itself
//! (the holder's directory or file) and wakes as soon as it is removed,
//! renamed or loses a link (the lock, released), instead of after a poll
//! interval. The watch is on the lock's inode, not on its directory: a
//! busy directory (a build creating and removing thousands of files a
//! second beside the lock) wakes nobody. Each wake-up arms the watch again
//! on whatever the path names then (the next holder's lock). Where inotify
//! is not available (or on network file systems, where other clients'
//! changes raise no event), the waiter falls back to polling with backoff:
//! the watch only ever shortens a sleep. Other platforms: `no_watch`.

use std::time::Duration;

use camino::Utf8Path;

/// An inotify instance that watches one lock at a time, or nothing where
/// there is none.
#[derive(Debug)]
pub(crate) struct LockWatch {
    fd: Option<std::os::fd::OwnedFd>,
    /// The watch on the lock as last armed, in `fd`.
    wd: Option<i32>,
}

/// What arming a watch on a lock found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armed {
    /// The lock's path names something, and its removal will wake the
    /// waiter.
    Watching,
    /// Nothing is at the path now: the lock was just released.
    Absent,
    /// No watch could be set: poll.
    Failed,
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

impl LockWatch {
    /// An instance to watch a lock with; `None` where there is none (the
    /// caller then polls).
    pub(crate) fn new() -> Option<LockWatch> {
        use rustix::fs::inotify::{self, CreateFlags};
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
        Some(LockWatch {
            fd: Some(fd),
            wd: None,
        })
    }

    /// Watches what `path` names now (without following a symbolic link),
    /// instead of what it watched before: its removal, a rename or a
    /// change of its link count wakes [`wait`](LockWatch::wait).
    ///
    /// A lock directory (`dir`, `Mkdir`) wakes it when it is removed or
    /// renamed. A lock file (`Link`) wakes it when it loses a link, which
    /// its release's `unlink` does; not when another of its names is
    /// renamed (a `Link` release renames the holder's claim first: a
    /// wake-up then would only find the lock still held, in the middle of
    /// the hand-off).
    pub(crate) fn arm(&mut self, path: &Utf8Path, dir: bool) -> Armed {
        use rustix::fs::inotify::{self, WatchFlags};
        let Some(fd) = self.fd.as_ref() else {
            return Armed::Failed;
        };
        if let Some(wd) = self.wd.take() {
            let _ = inotify::remove_watch(fd, wd);
        }
        let flags = if dir {
            WatchFlags::DELETE_SELF | WatchFlags::MOVE_SELF | WatchFlags::ONLYDIR
        } else {
            WatchFlags::DELETE_SELF | WatchFlags::ATTRIB
        } | WatchFlags::DONT_FOLLOW;
        match inotify::add_watch(fd, path.as_str(), flags) {
            Ok(wd) => {
                self.wd = Some(wd);
                Armed::Watching
            }
            Err(rustix::io::Errno::NOENT) => Armed::Absent,
            Err(_) => Armed::Failed,
        }
    }

    /// Sleeps until the watched lock is removed, renamed or loses a link
    /// (true), or `timeout` passes (false).
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        use rustix::fs::inotify::Reader;
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let (Some(fd), Some(wd)) = (self.fd.as_ref(), self.wd) else {
                std::thread::sleep(left);
                return false;
            };
            let Ok(ts) = rustix::time::Timespec::try_from(left) else {
                std::thread::sleep(left);
                return false;
            };
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(_) => {
                    std::thread::sleep(left);
                    return false;
                }
            }
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = Reader::new(fd, &mut buf);
            let mut ours = false;
            while let Ok(event) = reader.next() {
                // Events of a watch armed before this one are late news.
                ours |= event.wd() == wd;
            }
            if ours {
                return true;
            }
        }
    }
}

impl Drop for LockWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            // Fails only if the watch is gone already (the lock was
            // removed); the instance is reusable either way.
            if let Some(wd) = self.wd.take() {
                let _ = rustix::fs::inotify::remove_watch(&fd, wd);
            }
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
        let mut first = LockWatch::new().expect("watch");
        assert_eq!(first.arm(&path, false), Armed::Watching);
        std::fs::remove_file(&path).expect("remove");
        // The event is queued: the wait returns long before its bound.
        let start = Instant::now();
        first.wait(Duration::from_secs(20));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(first.arm(&path, false), Armed::Absent);
        // Another removal, left unread when the watch ends.
        std::fs::write(&path, "").expect("create");
        assert_eq!(first.arm(&path, false), Armed::Watching);
        std::fs::remove_file(&path).expect("remove");
        drop(first);
        std::fs::write(&path, "").expect("create");
        let mut second = LockWatch::new().expect("watch again");
        assert_eq!(second.arm(&path, false), Armed::Watching);
        let start = Instant::now();
        second.wait(Duration::from_millis(200));
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "woken by an event of the earlier watch"
        );
    }

    #[test]
    fn files_created_and_removed_beside_the_lock_wake_nobody() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = camino::Utf8PathBuf::from_path_buf(dir.path().join("x.lock")).expect("utf-8");
        std::fs::create_dir(&path).expect("a Mkdir lock");
        std::fs::write(path.join("record.json"), "{}").expect("its record");
        let mut watch = LockWatch::new().expect("watch");
        assert_eq!(watch.arm(&path, true), Armed::Watching);
        // Neighbours come and go, and the holder rewrites its record.
        for i in 0..100 {
            let other = dir.path().join(format!("other-{i}"));
            std::fs::write(&other, "x").expect("create a neighbour");
            std::fs::remove_file(&other).expect("remove it");
        }
        std::fs::write(path.join("record.json"), "{ }").expect("rewrite the record");
        let start = Instant::now();
        watch.wait(Duration::from_millis(200));
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "woken by a neighbour"
        );
        // The lock's release wakes it.
        std::fs::remove_file(path.join("record.json")).expect("remove the record");
        std::fs::remove_dir(&path).expect("release");
        let start = Instant::now();
        watch.wait(Duration::from_secs(20));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
