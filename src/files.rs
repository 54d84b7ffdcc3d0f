//! File-system helpers shared by the strategies: opening without following
//! symbolic links, classifying what sits at a lock path, and turning
//! `io::Error`s into errors that name the path.

use std::fs::{File, Metadata, OpenOptions};
use std::io;

use camino::Utf8Path;
#[cfg(test)]
use camino::Utf8PathBuf;

use crate::error::{Error, Op, Result};
use crate::vocab::FileKind;
use crate::vocab::LockStrategy;

use crate::sys;
pub(crate) use crate::sys::FileId;

/// The kind of object `meta` describes (from `symlink_metadata`).
pub(crate) fn kind(meta: &Metadata) -> FileKind {
    let ty = meta.file_type();
    if ty.is_symlink() {
        FileKind::Symlink
    } else if ty.is_dir() {
        FileKind::Directory
    } else if ty.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// What is at `path`, without following a symbolic link; `None` if nothing.
pub(crate) fn lkind(path: &Utf8Path) -> io::Result<Option<FileKind>> {
    match lstat(path) {
        Ok(meta) => Ok(Some(kind(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The error for finding `found` at `path` where `strategy` needs `expected`.
pub(crate) fn wrong_kind(
    path: &Utf8Path,
    strategy: LockStrategy,
    expected: FileKind,
    found: FileKind,
) -> Error {
    if found == FileKind::Symlink {
        Error::Symlink {
            path: path.to_owned(),
        }
    } else {
        Error::WrongFileType {
            path: path.to_owned(),
            strategy,
            expected,
            found,
        }
    }
}

/// After `EEXIST` from creating the artifact at `path`: `Ok(())` (the lock
/// is busy) if what is there is of kind `expected`, or already gone; else
/// the typed error for what was found.
pub(crate) fn expect_kind_at(
    path: &Utf8Path,
    strategy: LockStrategy,
    expected: FileKind,
) -> Result<()> {
    match lkind(path) {
        Ok(None) => Ok(()),
        Ok(Some(found)) => expect_kind(path, strategy, expected, found),
        Err(e) => Err(Error::io(path, Op::Inspect, e)),
    }
}

/// Fails unless the object at `path` (if any) is of kind `expected`.
pub(crate) fn expect_kind(
    path: &Utf8Path,
    strategy: LockStrategy,
    expected: FileKind,
    found: FileKind,
) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(wrong_kind(path, strategy, expected, found))
    }
}

/// Turns an I/O error of operation `op` on `path` into an [`Error`]:
/// a missing parent directory becomes [`Error::MissingParent`], a symbolic
/// link refused by `O_NOFOLLOW` becomes [`Error::Symlink`]; the rest is
/// [`Error::Io`] naming the path.
pub(crate) fn io_error(path: &Utf8Path, op: Op, err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::NotFound && parent_missing(path) {
        return Error::MissingParent {
            path: path.to_owned(),
        };
    }
    if sys::is_symlink_refusal(&err) && matches!(lkind(path), Ok(Some(FileKind::Symlink))) {
        return Error::Symlink {
            path: path.to_owned(),
        };
    }
    Error::io(path, op, err)
}

fn parent_missing(path: &Utf8Path) -> bool {
    match path.parent() {
        Some(parent) if !parent.as_str().is_empty() => !parent.is_dir(),
        _ => false,
    }
}

/// Opens `path` for reading without following a final symbolic link, and
/// without blocking on a FIFO planted at the path (its kind is checked
/// after opening).
pub(crate) fn open_read(path: &Utf8Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    sys::no_follow_no_block(&mut opts);
    stale_retry(|| opts.open(path))
}

/// Opens the regular file `path` with `opts` (the caller's access and
/// creation flags), without following a final symbolic link and without
/// blocking on a FIFO; anything but a regular file is refused afterwards
/// with `InvalidInput`.
pub(crate) fn open_with(path: &Utf8Path, opts: &mut OpenOptions) -> io::Result<File> {
    sys::no_follow_no_block(opts);
    sys::file_mode(opts);
    regular(stale_retry(|| opts.open(path))?)
}

/// `file` if it is a regular file, else an `InvalidInput` error.
fn regular(file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// Opens the existing regular file `path` for writing, without following
/// a final symbolic link, creating or truncating anything.
pub(crate) fn open_write(path: &Utf8Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    sys::no_follow_no_block(&mut opts);
    regular(stale_retry(|| opts.open(path))?)
}

/// Opens `path` for reading and writing, creating it if needed (mode
/// [`FILE_MODE`] less the umask), without following a final symbolic link
/// and without truncating it.
pub(crate) fn open_create(path: &Utf8Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    sys::no_follow(&mut opts);
    sys::file_mode(&mut opts);
    opts.open(path)
}

/// As [`open_create`], and without updating the file's access time when
/// it is read, where the platform can and the file is ours (see
/// `sys::no_follow_no_atime`).
pub(crate) fn open_create_no_atime(path: &Utf8Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    sys::file_mode(&mut opts);
    if sys::no_follow_no_atime(&mut opts) {
        match opts.open(path) {
            Err(e) if sys::is_eperm(&e) => {}
            other => return other,
        }
    }
    open_create(path)
}

/// Gives a file that an acquisition just made the permission bits of
/// [`LockOptions::permissions`](crate::LockOptions::permissions), if
/// set, whatever the umask. Best effort: a file system without Unix
/// permission bits (or a file another user made) keeps what it has.
pub(crate) fn apply_mode(file: &File, mode: Option<u32>) {
    if let Some(mode) = mode {
        let _ = sys::set_mode(file, mode);
    }
}

/// Gives the directory `dir`, which an acquisition just made, the bits of a
/// lock directory for the file bits `mode` (best effort, as
/// [`apply_mode`]).
pub(crate) fn set_dir_mode(dir: &Utf8Path, mode: u32) {
    if let Ok(opened) = File::open(dir) {
        let _ = sys::set_mode(&opened, dir_mode(mode));
    }
}

/// The bits of a lock directory for the file bits `mode`: `x` wherever
/// `mode` has `r`.
pub(crate) fn dir_mode(mode: u32) -> u32 {
    mode | (mode & 0o444) >> 2
}

/// Creates `path`, which must not exist, for reading and writing (mode
/// [`FILE_MODE`] less the umask). `O_EXCL` also refuses a symbolic link.
pub(crate) fn create_new(path: &Utf8Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    sys::no_follow(&mut opts);
    sys::file_mode(&mut opts);
    stale_retry(|| opts.open(path))
}

/// Whether `err`, from opening or inspecting `path`, means that nothing is
/// there while its directory exists: a free lock rather than an error.
pub(crate) fn is_absent(path: &Utf8Path, err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound && !parent_missing(path)
}

/// The inode number in `meta` (0 where the platform has none to offer).
pub(crate) fn ino(meta: &Metadata) -> u64 {
    sys::ino(meta)
}

/// A change stamp of `meta`: inode, size and modification time, for
/// artifacts without a record whose changes a contender watches.
pub(crate) fn stamp(meta: &Metadata) -> Vec<u8> {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{}:{modified}", ino(meta), meta.len()).into_bytes()
}

/// Writes `bytes` at offset 0 of `file` in one call, padded with spaces to
/// `old_len`, without moving any cursor and without cutting the file:
/// readers see the old record, the new one, or (rarely) bytes that do not
/// parse, never a mix that parses.
pub(crate) fn rewrite(file: &File, bytes: &[u8], old_len: usize) -> io::Result<()> {
    let mut padded = bytes.to_vec();
    if padded.len() < old_len {
        padded.resize(old_len, b' ');
    }
    sys::write_all_at(file, &padded)
}

/// Flushes the directory that holds `path` (the entry for `path`) to
/// stable storage. A no-op where directories cannot be opened (Windows,
/// whose file systems journal their metadata).
pub(crate) fn sync_parent(path: &Utf8Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Flushes the directory `dir` to stable storage (see [`sync_parent`]).
pub(crate) fn sync_dir(dir: &Utf8Path) -> io::Result<()> {
    if sys::SYNCS_DIRECTORIES {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

/// Whether `e` is an error that trying again may cure: a stale NFS file
/// handle, an interrupted or timed-out call, an I/O error of a network
/// file system, a server out of reach for a while (an SMB client
/// reconnecting to a restarted server answers "connection aborted" and
/// "host is down").
pub(crate) fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::StaleNetworkFileHandle
            | K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionAborted
            | K::ConnectionReset
            | K::NotConnected
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    ) {
        return true;
    }
    // The platform's own codes (Unix: EIO, EHOSTDOWN; Windows: sharing
    // and lock violations, "delete pending").
    sys::is_transient_os(e)
}

/// Whether `name` is a client's hidden rename of a file that was unlinked
/// while open (FUSE's `.fuse_hidden*`, NFS's `.nfs*`).
pub(crate) fn is_silly_renamed(name: &str) -> bool {
    name.starts_with(".fuse_hidden") || name.starts_with(".nfs")
}

/// Runs `op` again while it fails with `ESTALE`: an NFS or FUSE client's
/// handle of a directory went stale (the directory was removed and made
/// again). Such a call did nothing, so repeating it is safe; the client
/// looks the path up afresh. Gives up after a few tries.
pub(crate) fn stale_retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempt = 0u32;
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::StaleNetworkFileHandle && attempt < 4 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
            }
            other => return other,
        }
    }
}

/// `std::fs::remove_file`, retried on `ESTALE`.
pub(crate) fn remove_file(path: impl AsRef<std::path::Path>) -> io::Result<()> {
    stale_retry(|| std::fs::remove_file(path.as_ref()))
}

/// `std::fs::remove_dir`, retried on `ESTALE`.
pub(crate) fn remove_dir(path: impl AsRef<std::path::Path>) -> io::Result<()> {
    stale_retry(|| std::fs::remove_dir(path.as_ref()))
}

/// Creates the directory `path` (mode `0o755` less the umask on Unix),
/// retried on `ESTALE`.
pub(crate) fn create_dir(path: impl AsRef<std::path::Path>) -> io::Result<()> {
    let builder = sys::dir_builder();
    stale_retry(|| builder.create(path.as_ref()))
}

/// `std::fs::read_dir`, retried on `ESTALE`.
pub(crate) fn read_dir(path: impl AsRef<std::path::Path>) -> io::Result<std::fs::ReadDir> {
    stale_retry(|| std::fs::read_dir(path.as_ref()))
}

/// `std::fs::hard_link`, retried on `ESTALE`.
pub(crate) fn hard_link(
    from: impl AsRef<std::path::Path>,
    to: impl AsRef<std::path::Path>,
) -> io::Result<()> {
    stale_retry(|| std::fs::hard_link(from.as_ref(), to.as_ref()))
}

/// Runs `op`, an I/O on the file whose OS lock this process holds, again
/// (a few times, over about 100 ms) while it fails with `EACCES`: an SMB
/// server checks reads and writes against byte-range locks, and the Linux
/// client, while a lease on the file is being broken, can have a holder's
/// own I/O refused for a moment.
pub(crate) fn conflict_retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut attempt = 0;
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `symlink_metadata` (`lstat`), retried on `ESTALE`.
pub(crate) fn lstat(path: impl AsRef<std::path::Path>) -> io::Result<Metadata> {
    stale_retry(|| std::fs::symlink_metadata(path.as_ref()))
}

/// The error for failing to open the lock artifact at `path` (a `Link` or
/// `Os` lock file): a typed error if something of another kind than a
/// regular file is there (Windows refuses to open a directory as a file
/// with "access denied"), else the I/O error.
pub(crate) fn open_file_error(path: &Utf8Path, strategy: LockStrategy, err: io::Error) -> Error {
    match lkind(path) {
        Ok(Some(found)) if found != FileKind::File => {
            wrong_kind(path, strategy, FileKind::File, found)
        }
        _ => io_error(path, Op::Open, err),
    }
}

/// The identity of the open file `file`.
pub(crate) fn file_id(file: &File) -> io::Result<FileId> {
    sys::file_id(file)
}

/// How a holder looks at the name of what it holds, to tell whether it
/// still names what it made: a question a network client may answer from
/// a cache, and a wrong "yes" makes two holders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum Look {
    /// `lstat`: a local file system, which has no cache to be stale.
    #[default]
    Stat,
    /// Open the name and `fstat` the open file. An open goes to the server
    /// (NFS's close-to-open rule), where `lstat` may be answered from the
    /// client's cache of attributes for seconds, and so keep a file whose
    /// directory was removed or replaced on the server.
    Open,
    /// List the directory and find the name in it, with its inode number
    /// (the server's, on SMB mounts with `serverino`, the default). SMB
    /// clients answer an open from a handle they still have open for that
    /// name, or keep open for a second after a close (Linux's deferred
    /// close), without asking the server: an open can find a file that is
    /// no longer there. A directory listing is asked of the server.
    List,
}

/// The identity of the file at `path`, and whether it is a regular file,
/// as `look` finds it (never following a final symbolic link); `None` if
/// nothing is there (nor the directory it would be in).
pub(crate) fn look_id(path: &Utf8Path, look: Look) -> io::Result<Option<(FileId, bool)>> {
    match look {
        // Where metadata carry no identity, it is known only from an open
        // file.
        Look::Stat if !sys::ID_FROM_METADATA => look_id(path, Look::Open),
        Look::Stat => match lstat(path) {
            Ok(meta) => match sys::meta_id(&meta) {
                Some(id) => Ok(Some((id, meta.is_file()))),
                None => look_id(path, Look::Open),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        Look::Open => match open_read(path) {
            Ok(file) => Ok(Some((file_id(&file)?, file.metadata()?.is_file()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        Look::List => listed_id(path),
    }
}

/// [`Look::List`]: the name's entry in its directory's listing (opened
/// instead where listings carry no inode numbers).
fn listed_id(path: &Utf8Path) -> io::Result<Option<(FileId, bool)>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return look_id(path, Look::Open);
    };
    let dir = if dir.as_str().is_empty() {
        Utf8Path::new(".")
    } else {
        dir
    };
    let gone = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        )
    };
    // The device number only: the same for every file of the mount.
    let dev = match stale_retry(|| std::fs::metadata(dir)) {
        Ok(meta) => match sys::dev(&meta) {
            Some(dev) => dev,
            None => return look_id(path, Look::Open),
        },
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let entries = match stale_retry(|| std::fs::read_dir(dir)) {
        Ok(entries) => entries,
        Err(e) if gone(&e) => return Ok(None),
        // A directory this process may search but not list: opened.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return look_id(path, Look::Open),
        Err(e) => return Err(e),
    };
    // SMB shares usually ignore case: a name that differs from ours only
    // in case is the same file, if no entry has our name exactly.
    let folded = name.to_lowercase();
    let mut like = None;
    for entry in entries {
        let entry = entry?;
        let listed = entry.file_name();
        let Some(ino) = sys::entry_ino(&entry) else {
            return look_id(path, Look::Open);
        };
        if listed == name {
            let file = entry.file_type()?.is_file();
            return Ok(Some(((dev, ino), file)));
        }
        if like.is_none() && listed.to_str().is_some_and(|l| l.to_lowercase() == folded) {
            like = Some(((dev, ino), entry.file_type()?.is_file()));
        }
    }
    Ok(like)
}

/// Whether `listed`, an identity from a directory listing ([`Look::List`]),
/// is that of the open file whose identity is `mine`. A 32-bit Linux SMB
/// client lists an inode number folded to 32 bits (the two halves of the
/// server's 64-bit number, exclusive-or'ed), where `fstat` gives it whole.
pub(crate) fn same_listed(listed: FileId, mine: FileId) -> bool {
    if listed == mine {
        return true;
    }
    #[cfg(target_pointer_width = "32")]
    if listed.0 == mine.0 && mine.1 > u64::from(u32::MAX) {
        let folded = (mine.1 as u32) ^ ((mine.1 >> 32) as u32);
        return listed.1 == u64::from(folded);
    }
    false
}

/// The identity of the file at `path` (not following a final symbolic
/// link on Unix); `None` if nothing is there.
pub(crate) fn path_id(path: &Utf8Path) -> io::Result<Option<FileId>> {
    Ok(path_state(path)?.map(|(id, _)| id))
}

/// The identity and length of the file at `path` (not following a final
/// symbolic link on Unix: one `lstat`); `None` if nothing is there.
pub(crate) fn path_state(path: &Utf8Path) -> io::Result<Option<(FileId, u64)>> {
    let from_metadata = |meta: Metadata| match sys::meta_id(&meta) {
        Some(id) => Ok((id, meta.len())),
        None => open_read(path).and_then(|file| sys::file_state(&file)),
    };
    let state = if sys::ID_FROM_METADATA {
        lstat(path).and_then(from_metadata)
    } else {
        open_read(path).and_then(|file| sys::file_state(&file))
    };
    match state {
        Ok(state) => Ok(Some(state)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The device of the file system that holds `path` (0 where the platform
/// has no such number to offer).
pub(crate) fn device(path: &Utf8Path) -> io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    Ok(sys::dev(&meta).unwrap_or(0))
}

/// Reads from `offset` without moving the file position (`pread`).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    sys::read_at(file, buf, offset)
}

/// The identity of the open `file` whose metadata `meta` was just read
/// (no second `fstat` on Unix).
pub(crate) fn id_of(meta: &Metadata, file: &File) -> io::Result<FileId> {
    match sys::meta_id(meta) {
        Some(id) => Ok(id),
        None => sys::file_id(file),
    }
}

/// `path` as every handle names its lock: UTF-8, absolute (against the
/// current directory now), one spelling (no trailing separator, no `.`),
/// and ending in a file name; an error says which of these it is not.
pub(crate) fn absolute(path: &std::path::Path) -> Result<camino::Utf8PathBuf> {
    let non_utf8 = |p: &std::path::Path| Error::NonUtf8Path { path: p.to_owned() };
    let utf8 = Utf8Path::from_path(path).ok_or_else(|| non_utf8(path))?;
    let invalid = |why: &str| {
        Error::io(
            utf8,
            Op::UseAsLockPath,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_owned()),
        )
    };
    if utf8.as_str().is_empty() {
        return Err(invalid("the path is empty"));
    }
    // Judged before `absolute`, which on Windows resolves `..` lexically.
    if !matches!(
        utf8.components().next_back(),
        Some(camino::Utf8Component::Normal(_))
    ) {
        return Err(invalid("the path has no file name"));
    }
    let abs = std::path::absolute(utf8).map_err(|e| Error::io(utf8, Op::Absolute, e))?;
    let abs = camino::Utf8PathBuf::from_path_buf(abs).map_err(|p| non_utf8(&p))?;
    // One spelling per path (no trailing separator): the process's table
    // of held locks compares paths as text.
    let abs: camino::Utf8PathBuf = abs.components().collect();
    match abs.file_name() {
        Some(name) if name != ".." => Ok(abs),
        _ => Err(invalid("the path has no file name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_tell_files_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Utf8PathBuf::from_path_buf(dir.path().join("a")).expect("utf-8");
        let b = a.with_file_name("b");
        let (fa, fb) = (create_new(&a).expect("a"), create_new(&b).expect("b"));
        assert_eq!(path_id(&a).expect("id"), Some(file_id(&fa).expect("id")));
        assert_eq!(path_id(&b).expect("id"), Some(file_id(&fb).expect("id")));
        assert_ne!(file_id(&fa).expect("id"), file_id(&fb).expect("id"));
        assert_eq!(path_id(&a.with_file_name("c")).expect("id"), None);
    }

    #[test]
    fn file_ids_tell_a_replaced_file_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Utf8PathBuf::from_path_buf(dir.path().join("f")).expect("utf-8");
        let file = create_new(&path).expect("create");
        let id = file_id(&file).expect("id");
        assert_eq!(path_id(&path).expect("path id"), Some(id));
        // Moved away rather than removed, and kept open: its identity
        // cannot be handed out again meanwhile (a freed inode number
        // can), and Windows keeps a removed open file's name until it is
        // closed.
        std::fs::rename(&path, path.with_file_name("old")).expect("move away");
        assert_eq!(path_id(&path).expect("path id"), None);
        let other = create_new(&path).expect("create again");
        let new_id = path_id(&path).expect("path id");
        assert_eq!(new_id, Some(file_id(&other).expect("id")));
        assert_ne!(new_id, Some(id), "a new file has a new identity");
    }
}
