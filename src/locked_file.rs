//! A lock that hands out the file it locks: portalocker's
//! `with Lock(path, 'r+', timeout=...) as fh`.
//!
//! [`LockedFile`] opens a path, takes an OS advisory lock on the open file
//! (exclusive, or shared for readers), and reads and writes through the
//! guard. After locking it checks that the path still names the file it
//! locked (another process may have replaced or removed it meanwhile) and
//! starts over if not. The file is the caller's data, so no owner record
//! is written into it.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::error::{Error, Op, Result};
use crate::files;
use crate::flock::{self, LockFlags};
use crate::vocab::LockStrategy;
use crate::wait::{Backoff, Deadline};

/// How [`LockedFile`] opens its file (portalocker's mode strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// `"r"`: read an existing file.
    Read,
    /// `"r+"`: read and write an existing file.
    ReadWrite,
    /// `"a+"`-like: read and write, creating the file if needed; nothing
    /// is truncated.
    Create,
    /// `"a"`: append, creating the file if needed.
    Append,
    /// `"w"`: write, creating the file if needed and truncating it, but
    /// only once the lock is held, so that a waiter never destroys the
    /// holder's data.
    Truncate,
}

impl Mode {
    fn open_options(self) -> OpenOptions {
        let mut opts = OpenOptions::new();
        match self {
            Mode::Read => opts.read(true),
            Mode::ReadWrite => opts.read(true).write(true),
            Mode::Create => opts.read(true).write(true).create(true),
            Mode::Append => opts.append(true).create(true),
            Mode::Truncate => opts.write(true).create(true),
        };
        opts
    }
}

/// Options for [`LockedFile`]; [`LockedFile::options`] makes one.
///
/// # Examples
///
/// Readers share the file, and a writer that must not wait gives up at
/// once (contention errors here name no holder: the file is the caller's
/// data and holds no owner record).
///
/// ```
/// use std::io::Read;
/// use std::time::Duration;
/// use portalock::{Error, LockedFile, Mode};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("catalog.json");
/// std::fs::write(&path, "{}")?;
///
/// let mut reader = LockedFile::options().mode(Mode::Read).shared(true).open(&path)?;
/// let other_reader = LockedFile::options().mode(Mode::Read).shared(true).open(&path)?;
/// let mut text = String::new();
/// reader.read_to_string(&mut text)?;
/// assert_eq!(text, "{}");
///
/// let writer = LockedFile::options()
///     .mode(Mode::Truncate) // truncates only once the lock is held
///     .timeout(Some(Duration::from_secs(5)))
///     .fail_when_locked(true)
///     .open(&path);
/// assert!(matches!(writer, Err(Error::WouldBlock { holder: None, .. })));
/// assert_eq!(std::fs::read_to_string(&path)?, "{}"); // the readers' data is intact
/// drop((reader, other_reader));
///
/// let writer = LockedFile::options().mode(Mode::Truncate).open(&path)?;
/// assert_eq!(writer.metadata()?.len(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LockedFileOptions {
    mode: Mode,
    shared: bool,
    timeout: Option<Duration>,
    poll_interval: Duration,
    fail_when_locked: bool,
    sync_on_release: bool,
    remove_on_release: bool,
    /// Ends the wait (a `LockFile`'s shared lock with its handle's token).
    cancel: Option<crate::wait::CancelToken>,
}

impl Default for LockedFileOptions {
    fn default() -> Self {
        LockedFileOptions {
            mode: Mode::Create,
            shared: false,
            timeout: None,
            poll_interval: Duration::from_millis(50),
            fail_when_locked: false,
            sync_on_release: false,
            remove_on_release: false,
            cancel: None,
        }
    }
}

impl LockedFileOptions {
    /// How the file is opened. Default: [`Mode::Create`].
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Take a shared (reader) lock instead of an exclusive one: several
    /// readers hold the file at once, a writer waits for all of them.
    pub fn shared(&mut self, yes: bool) -> &mut Self {
        self.shared = yes;
        self
    }

    /// How long to wait for the lock; `None` (the default) waits forever,
    /// zero tries once.
    pub fn timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// The longest pause between two tries while waiting (portalocker's
    /// `check_interval`). Default: 50 ms.
    pub fn poll_interval(&mut self, interval: Duration) -> &mut Self {
        self.poll_interval = interval;
        self
    }

    /// Fail at once with [`Error::WouldBlock`] if the first try finds the
    /// file locked, whatever the timeout (portalocker's
    /// `fail_when_locked`).
    pub fn fail_when_locked(&mut self, yes: bool) -> &mut Self {
        self.fail_when_locked = yes;
        self
    }

    /// Flush the file to stable storage (`fsync`) before releasing the
    /// lock, so that the next holder reads what this one wrote even after
    /// a crash of the machine.
    pub fn sync_on_release(&mut self, yes: bool) -> &mut Self {
        self.sync_on_release = yes;
        self
    }

    /// Remove the file when the lock is released (while it is still held),
    /// making it a temporary lock file that exists only while held. A
    /// waiter that locked the removed file notices that the path no longer
    /// names it and starts over, so no two holders ever hold "the" file.
    pub fn remove_on_release(&mut self, yes: bool) -> &mut Self {
        self.remove_on_release = yes;
        self
    }

    /// Opens `path` and locks it, waiting as the options say.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] or [`Error::Timeout`] if the file stays locked
    /// (the holder is not known: the file carries no owner record);
    /// [`Error::NonUtf8Path`], [`Error::MissingParent`],
    /// [`Error::Symlink`] (never followed), [`Error::WrongFileType`] (a
    /// directory or special file at `path`), [`Error::Io`] (a missing file
    /// in the `Read` and `ReadWrite` modes, permissions, ...).
    pub fn open(&self, path: impl AsRef<Path>) -> Result<LockedFile> {
        let path = crate::files::absolute(path.as_ref())?;
        let deadline = Deadline::after(self.timeout).or_cancelled(self.cancel.as_ref());
        if deadline.cancelled() {
            return Err(Error::Cancelled { lock: path.into() });
        }
        let mut backoff = Backoff::new(self.poll_interval);
        let kind = if self.shared {
            LockFlags::SHARED
        } else {
            LockFlags::EXCLUSIVE
        };
        let mut first = true;
        loop {
            let file = files::open_with(&path, &mut self.mode.open_options())
                .map_err(|e| files::open_file_error(&path, LockStrategy::Os, e))?;
            match flock::lock(&file, kind | LockFlags::NON_BLOCKING) {
                Ok(()) => {
                    if let Some(locked) = self.locked(&path, file)? {
                        return Ok(locked);
                    }
                    // The path was removed or replaced while we waited:
                    // what we locked is not "the" file. Start over.
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::io(&path, Op::Lock, e)),
            }
            drop(file);
            let give_up = (first && self.fail_when_locked) || !backoff.sleep(&deadline);
            first = false;
            if give_up {
                if deadline.cancelled() {
                    return Err(Error::Cancelled { lock: path.into() });
                }
                let waited = self.timeout.filter(|_| !self.fail_when_locked);
                return Err(Error::contended(path, waited, None));
            }
        }
    }

    /// Ends the wait with [`Error::Cancelled`] once `token` is cancelled
    /// (for the shared locks of a `LockFile` whose handle has one).
    pub(crate) fn cancel_with(&mut self, token: Option<&crate::wait::CancelToken>) -> &mut Self {
        self.cancel = token.cloned();
        self
    }

    /// Finishes taking the lock on `file`: `None` if `path` no longer
    /// names it.
    fn locked(&self, path: &Utf8Path, file: File) -> Result<Option<LockedFile>> {
        let id = files::file_id(&file).map_err(|e| Error::io(path, Op::Inspect, e))?;
        if files::path_id(path).map_err(|e| Error::io(path, Op::Inspect, e))? != Some(id) {
            return Ok(None);
        }
        if self.mode == Mode::Truncate {
            file.set_len(0)
                .map_err(|e| Error::io(path, Op::Truncate, e))?;
        }
        Ok(Some(LockedFile {
            file,
            released: false,
            path: path.to_owned(),
            id,
            sync_on_release: self.sync_on_release,
            remove_on_release: self.remove_on_release,
        }))
    }
}

/// An open file that this process holds locked; reads, writes, seeks,
/// [`metadata`](LockedFile::metadata), [`set_len`](LockedFile::set_len)
/// and syncs go through it, and dropping it releases the lock.
///
/// It gives out no [`File`]: through one, safe code could unlock the file
/// ([`File::unlock`]) or close it while the guard still stands, and a
/// second holder would get the lock beside the first. A raw descriptor or
/// handle (`AsFd`, `AsRawFd`; `AsHandle`, `AsRawHandle` on Windows) is
/// there for system calls that need one: what is done through it (an
/// unlock, or a close of a duplicate after `flock`'s rules) is the
/// caller's to avoid.
///
/// ```compile_fail
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let file = portalock::LockedFile::open(dir.path().join("data"))?;
/// file.unlock()?; // no `File` behind the guard: this does not compile
/// # Ok(())
/// # }
/// ```
///
/// # Examples
///
/// ```
/// use std::io::{Read, Seek, Write};
/// use std::time::Duration;
/// use portalock::{LockedFile, Mode};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("counter.txt");
///
/// // Read-modify-write under the lock, as portalocker's
/// // `with Lock(path, 'r+', timeout=5) as fh:`.
/// for _ in 0..3 {
///     let mut file = LockedFile::options()
///         .mode(Mode::Create)
///         .timeout(Some(Duration::from_secs(5)))
///         .open(&path)?;
///     let mut text = String::new();
///     file.read_to_string(&mut text)?;
///     let n: u32 = text.trim().parse().unwrap_or(0);
///     file.rewind()?;
///     file.set_len(0)?;
///     write!(file, "{}", n + 1)?;
/// } // each iteration releases the lock here
/// assert_eq!(std::fs::read_to_string(&path)?, "3");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "if unused the file is unlocked at once"]
pub struct LockedFile {
    file: File,
    released: bool,
    path: Utf8PathBuf,
    id: files::FileId,
    sync_on_release: bool,
    remove_on_release: bool,
}

impl LockedFile {
    /// The open file that holds the lock, for a command to inherit.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Options with the defaults: [`Mode::Create`], exclusive, wait forever.
    pub fn options() -> LockedFileOptions {
        LockedFileOptions::default()
    }

    /// Opens `path` (creating it if needed) and locks it exclusively,
    /// waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// As [`LockedFileOptions::open`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::time::Duration;
    /// use portalock::{Error, LockedFile};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("journal.log");
    /// let mut file = LockedFile::open(&path)?;
    /// writeln!(file, "entry 1")?;
    ///
    /// // Anyone else (another process, or another open of the file here)
    /// // waits; with a zero timeout, gives up at once.
    /// let busy = LockedFile::options().timeout(Some(Duration::ZERO)).open(&path);
    /// assert!(matches!(busy, Err(Error::WouldBlock { .. })));
    ///
    /// file.release()?;
    /// assert_eq!(std::fs::read_to_string(&path)?, "entry 1\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<LockedFile> {
        LockedFile::options().open(path)
    }

    /// The absolute path of the locked file.
    pub fn path(&self) -> &Utf8Path {
        &self.path
    }

    /// The locked file's metadata ([`File::metadata`]).
    ///
    /// # Errors
    ///
    /// As [`File::metadata`].
    pub fn metadata(&self) -> io::Result<Metadata> {
        self.file.metadata()
    }

    /// Truncates or extends the locked file to `size` bytes
    /// ([`File::set_len`]); the cursor does not move.
    ///
    /// # Errors
    ///
    /// As [`File::set_len`] (for one, a file opened for reading only).
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        self.file.set_len(size)
    }

    /// Flushes the file's data and metadata to stable storage
    /// ([`File::sync_all`]).
    ///
    /// # Errors
    ///
    /// As [`File::sync_all`].
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Flushes the file's data to stable storage ([`File::sync_data`]).
    ///
    /// # Errors
    ///
    /// As [`File::sync_data`].
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Releases the lock (after flushing or removing the file, as the
    /// options say), reporting what failed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file could not be flushed, removed or unlocked.
    pub fn release(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        let file = &self.file;
        let mut result = Ok(());
        if self.sync_on_release {
            result = file
                .sync_all()
                .map_err(|e| Error::io(&self.path, Op::Sync, e));
        }
        if self.remove_on_release {
            // Remove while still locked, and only the file we locked.
            let ours = files::path_id(&self.path).is_ok_and(|id| id == Some(self.id));
            if ours {
                if let Err(e) = files::remove_file(&self.path) {
                    result = result.and(Err(Error::io(&self.path, Op::RemoveFile, e)));
                }
            }
        }
        if let Err(e) = flock::unlock(file) {
            result = result.and(Err(Error::io(&self.path, Op::Unlock, e)));
        }
        result
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for LockedFile {
    /// The locked file's descriptor: see the type's docs for what is the
    /// caller's to avoid through it.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for LockedFile {
    /// The locked file's descriptor: see the type's docs for what is the
    /// caller's to avoid through it.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsHandle for LockedFile {
    /// The locked file's handle: see the type's docs for what is the
    /// caller's to avoid through it.
    fn as_handle(&self) -> std::os::windows::io::BorrowedHandle<'_> {
        std::os::windows::io::AsHandle::as_handle(&self.file)
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsRawHandle for LockedFile {
    /// The locked file's handle: see the type's docs for what is the
    /// caller's to avoid through it.
    fn as_raw_handle(&self) -> std::os::windows::io::RawHandle {
        std::os::windows::io::AsRawHandle::as_raw_handle(&self.file)
    }
}

impl Read for LockedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for LockedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for LockedFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl Drop for LockedFile {
    fn drop(&mut self) {
        // Best effort: a caller who wants the error calls `release`.
        let _ = self.finish();
    }
}
