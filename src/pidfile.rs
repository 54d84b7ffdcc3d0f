//! A PID file that is also a lock: the daemon convention, made safe.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use camino::Utf8Path;

use crate::error::{Error, Op, Result};
use crate::files;
use crate::flock::{self, LockFlags};
use crate::locked_file::{LockedFile, Mode};
use crate::vocab::LockStrategy;

/// A PID file held with an OS lock: it holds the holder's PID (one line,
/// `4242\n`, as daemons and init scripts expect) while the lock is held,
/// and is removed on release.
///
/// Unlike a plain PID file, a stale one (its process crashed) never blocks
/// anyone: the OS lock died with the process. [`PidFileLock::read`] reads
/// the PID back; [`PidFileLock::holder`] tells whether someone holds it.
///
/// # Examples
///
/// ```
/// use portalock::{Error, PidFileLock};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("daemon.pid");
/// let pidfile = PidFileLock::try_acquire(&path)?;
/// assert_eq!(PidFileLock::read(&path)?, Some(std::process::id()));
/// assert_eq!(PidFileLock::holder(&path)?, Some(std::process::id()));
/// assert!(matches!(PidFileLock::try_acquire(&path), Err(Error::WouldBlock { .. })));
/// pidfile.release()?;
/// assert!(!path.exists());
/// assert_eq!(PidFileLock::holder(&path)?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the PID file is released at once"]
pub struct PidFileLock {
    file: LockedFile,
}

impl PidFileLock {
    /// Takes the PID file at `path`, waiting as long as it takes, and
    /// writes this process's PID into it.
    ///
    /// # Errors
    ///
    /// As [`LockedFileOptions::open`](crate::LockedFileOptions::open), and
    /// [`Error::Io`] if the PID cannot be written.
    pub fn acquire(path: impl AsRef<Path>) -> Result<PidFileLock> {
        PidFileLock::within(path.as_ref(), None)
    }

    /// Takes the PID file at `path` if nobody holds it now.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] if it is held (the holder's PID is in
    /// [`holder`](PidFileLock::holder)); as [`acquire`](PidFileLock::acquire).
    pub fn try_acquire(path: impl AsRef<Path>) -> Result<PidFileLock> {
        PidFileLock::within(path.as_ref(), Some(Duration::ZERO))
    }

    /// Takes the PID file at `path`, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`]; as [`acquire`](PidFileLock::acquire).
    pub fn acquire_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<PidFileLock> {
        PidFileLock::within(path.as_ref(), Some(timeout))
    }

    fn within(path: &Path, timeout: Option<Duration>) -> Result<PidFileLock> {
        let mut file = LockedFile::options()
            .mode(Mode::Create)
            .timeout(timeout)
            .remove_on_release(true)
            .open(path)?;
        let line = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(line.as_bytes()))
            .and_then(|()| file.flush());
        if let Err(e) = written {
            return Err(Error::io(file.path(), Op::WritePid, e));
        }
        Ok(PidFileLock { file })
    }

    /// The PID file's path.
    pub fn path(&self) -> &Utf8Path {
        self.file.path()
    }

    /// Removes the PID file and releases the lock, reporting what failed.
    ///
    /// # Errors
    ///
    /// As [`LockedFile::release`].
    pub fn release(self) -> Result<()> {
        self.file.release()
    }

    /// The PID written in the file at `path`, whether or not anyone holds
    /// it now; `None` if there is no file, or it holds no PID.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read; [`Error::Symlink`] and
    /// [`Error::WrongFileType`] for what is not a regular file.
    ///
    /// # Examples
    ///
    /// A PID file that a crashed daemon left behind still holds its PID,
    /// but nobody holds it: [`holder`](PidFileLock::holder) is the one to
    /// ask whether the daemon runs.
    ///
    /// ```
    /// use portalock::PidFileLock;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("daemon.pid");
    /// assert_eq!(PidFileLock::read(&path)?, None); // no file
    ///
    /// std::fs::write(&path, "4242\n")?; // left by a crash
    /// assert_eq!(PidFileLock::read(&path)?, Some(4242));
    /// assert_eq!(PidFileLock::holder(&path)?, None);
    ///
    /// let daemon = PidFileLock::try_acquire(&path)?; // not in the way
    /// assert_eq!(PidFileLock::read(&path)?, Some(std::process::id()));
    /// # daemon.release()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(path: impl AsRef<Path>) -> Result<Option<u32>> {
        let path = crate::files::absolute(path.as_ref())?;
        match open(&path)? {
            Some(file) => read_pid(&path, file),
            None => Ok(None),
        }
    }

    /// The PID of the process that holds the PID file at `path` now, or
    /// `None` if nobody holds it (a file left by a crashed process is not
    /// held). A holder whose PID cannot be read yet (it is writing it) is
    /// reported as held with PID 0.
    ///
    /// # Errors
    ///
    /// As [`read`](PidFileLock::read).
    ///
    /// # Examples
    ///
    /// ```
    /// use portalock::PidFileLock;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("daemon.pid");
    /// assert_eq!(PidFileLock::holder(&path)?, None);
    ///
    /// let running = PidFileLock::acquire(&path)?; // a daemon runs
    ///
    /// // A second start tells who runs; the holder may have exited in
    /// // between, so `None` is an answer too.
    /// let message = match PidFileLock::try_acquire(&path) {
    ///     Ok(_) => unreachable!("the daemon holds it"),
    ///     Err(e) if e.is_contended() => match PidFileLock::holder(&path)? {
    ///         Some(pid) => format!("already running as pid {pid}"),
    ///         None => "stopped just now; start again".to_owned(),
    ///     },
    ///     Err(e) => return Err(e.into()),
    /// };
    /// assert!(message.starts_with("already running as pid"));
    /// # #[cfg(unix)]
    /// assert_eq!(message, format!("already running as pid {}", std::process::id()));
    /// running.release()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn holder(path: impl AsRef<Path>) -> Result<Option<u32>> {
        let path = crate::files::absolute(path.as_ref())?;
        let Some(file) = open(&path)? else {
            return Ok(None);
        };
        match flock::lock(&file, LockFlags::SHARED | LockFlags::NON_BLOCKING) {
            Ok(()) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::io(&path, Op::Inspect, e)),
        }
        Ok(Some(read_pid(&path, file)?.unwrap_or(0)))
    }
}

/// The PID file at `path` opened for reading; `None` if there is none.
fn open(path: &Utf8Path) -> Result<Option<std::fs::File>> {
    match files::open_read(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(files::open_file_error(path, LockStrategy::Os, e)),
    }
}

/// The PID in `file` (capped read; `None` if it holds none).
fn read_pid(path: &Utf8Path, file: std::fs::File) -> Result<Option<u32>> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, Op::Inspect, e))?;
    files::expect_kind(
        path,
        LockStrategy::Os,
        crate::vocab::FileKind::File,
        files::kind(&meta),
    )?;
    let mut text = String::new();
    // A PID is at most 10 digits; read a little more to see garbage.
    let mut capped = file.take(64);
    if capped.read_to_string(&mut text).is_err() {
        return Ok(None);
    }
    Ok(text.trim().parse().ok())
}
