//! The probes of `doctor`: whether the primitives of portalock's
//! strategies work in a directory.
//!
//! | probe | what must happen | the strategy that rests on it |
//! | --- | --- | --- |
//! | `o_excl` | an exclusive create makes a new file; a second one of the name says it exists | `Link`'s claim, `Mkdir`'s record |
//! | `hard_link` | `link()` gives the file a second name; a link onto an existing name fails | `Link` |
//! | `mkdir` | `mkdir` makes a directory; a second one says it exists; `rmdir` removes it | `Mkdir` |
//! | `os_lock` | an exclusive OS lock on one open file refuses a second open file of that file, and lets it in once unlocked | `Os` |
//!
//! Each probe runs in the scratch directory on a thread of its own,
//! bounded by [`STEP_LIMIT`]. Once one has hung, the others are not run.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use portalock::flock::{self, LockFlags};

use super::{bounded, STEP_LIMIT};

/// A probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It did what portalock needs.
    Works,
    /// It did something else, or failed.
    Fails,
    /// The platform or the file system says it does not have it.
    Unsupported,
    /// The file system did not answer in time.
    Timeout,
    /// Not tried: an earlier probe hung.
    NotRun,
}

impl Verdict {
    /// The name the report and the JSON use.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Works => "works",
            Verdict::Fails => "fails",
            Verdict::Unsupported => "unsupported",
            Verdict::Timeout => "timeout",
            Verdict::NotRun => "not_run",
        }
    }
}

/// What one probe found: a verdict and what was seen, in a few words.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) verdict: Verdict,
    pub(crate) detail: String,
}

impl Probe {
    fn works(detail: impl Into<String>) -> Probe {
        Probe {
            verdict: Verdict::Works,
            detail: detail.into(),
        }
    }

    fn fails(detail: impl Into<String>) -> Probe {
        Probe {
            verdict: Verdict::Fails,
            detail: detail.into(),
        }
    }

    /// The probe stopped at `step` with `err`: unsupported if the error
    /// says so, else failed.
    fn error(step: &str, err: &io::Error) -> Probe {
        let verdict = if err.kind() == io::ErrorKind::Unsupported {
            Verdict::Unsupported
        } else {
            Verdict::Fails
        };
        Probe {
            verdict,
            detail: format!("{step}: {err}"),
        }
    }
}

/// Everything the probes found.
#[derive(Debug, Clone)]
pub(crate) struct Probes {
    pub(crate) o_excl: Probe,
    pub(crate) hard_link: Probe,
    /// The link count of a file just given a second name (`None` where the
    /// platform does not say, or the link failed).
    pub(crate) link_count: Option<u64>,
    pub(crate) mkdir: Probe,
    pub(crate) os_lock: Probe,
}

impl Probes {
    /// Whether a probe did not answer in time.
    pub(crate) fn hung(&self) -> bool {
        [&self.o_excl, &self.hard_link, &self.mkdir, &self.os_lock]
            .iter()
            .any(|p| p.verdict == Verdict::Timeout)
    }
}

/// Runs every probe in `dir` (the scratch directory), each bounded.
pub(crate) fn run(dir: &Path) -> Probes {
    let mut hung = false;
    let mut probe = |f: fn(&Path) -> Probe| -> Probe {
        if hung {
            return Probe {
                verdict: Verdict::NotRun,
                detail: "an earlier probe hung".to_owned(),
            };
        }
        let dir = dir.to_owned();
        bounded(STEP_LIMIT, move || f(&dir)).unwrap_or_else(|why| {
            hung = true;
            Probe {
                verdict: Verdict::Timeout,
                detail: why,
            }
        })
    };
    let o_excl = probe(o_excl);
    let hard_link = probe(hard_link);
    let mkdir = probe(mkdir);
    let os_lock = probe(os_lock);
    let link_count = if hard_link.verdict == Verdict::Works {
        link_count(&dir.join(LINK_SOURCE))
    } else {
        None
    };
    Probes {
        o_excl,
        hard_link,
        link_count,
        mkdir,
        os_lock,
    }
}

fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// An exclusive create, twice.
fn o_excl(dir: &Path) -> Probe {
    let path = dir.join("o-excl");
    if let Err(e) = create_new(&path) {
        return Probe::error("exclusive create", &e);
    }
    match create_new(&path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Probe::works("a second exclusive create of the name says it exists")
        }
        Ok(_) => Probe::fails("a second exclusive create of the name succeeded"),
        Err(e) => Probe::fails(format!(
            "a second exclusive create of the name said `{e}`, not that it exists"
        )),
    }
}

/// The file that the hard-link probe links (its link count is read
/// after the probe).
const LINK_SOURCE: &str = "link-source";

/// A hard link, and a link onto a name that exists.
fn hard_link(dir: &Path) -> Probe {
    const DATA: &[u8] = b"portalock doctor\n";
    let source = dir.join(LINK_SOURCE);
    let target = dir.join("link-target");
    if let Err(e) = write_new(&source, DATA) {
        return Probe::error("write a file", &e);
    }
    if let Err(e) = std::fs::hard_link(&source, &target) {
        return Probe::error("link", &e);
    }
    match std::fs::read(&target) {
        Ok(data) if data == DATA => {}
        Ok(_) => return Probe::fails("the new name does not hold the file's data"),
        Err(e) => return Probe::error("read the new name", &e),
    }
    let other = dir.join("link-other");
    if let Err(e) = write_new(&other, DATA) {
        return Probe::error("write a second file", &e);
    }
    match std::fs::hard_link(&other, &target) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Probe::works("a link onto an existing name says it exists")
        }
        // sshfs answers EPERM for a link onto an existing name.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Probe::works(format!(
            "a link onto an existing name is refused (`{e}`, not \"exists\")"
        )),
        Ok(()) => Probe::fails("a link onto an existing name succeeded"),
        Err(e) => Probe::fails(format!(
            "a link onto an existing name said `{e}`, not that it exists"
        )),
    }
}

fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    create_new(path)?.write_all(data)
}

/// The link count of `path`, where the platform tells it.
#[cfg(unix)]
fn link_count(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = path.to_owned();
    bounded(STEP_LIMIT, move || std::fs::metadata(path))
        .ok()?
        .ok()
        .map(|m| m.nlink())
}

/// The link count of `path`, where the platform tells it (not here: std
/// has no stable way on this platform).
#[cfg(not(unix))]
fn link_count(_path: &Path) -> Option<u64> {
    None
}

/// `mkdir` twice, then `rmdir`.
fn mkdir(dir: &Path) -> Probe {
    let path = dir.join("mkdir");
    if let Err(e) = std::fs::create_dir(&path) {
        return Probe::error("mkdir", &e);
    }
    let again = std::fs::create_dir(&path);
    let answer = match again {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Probe::works("a second mkdir of the name says it exists")
        }
        Ok(()) => return Probe::fails("a second mkdir of the name succeeded"),
        Err(e) => {
            return Probe::fails(format!(
                "a second mkdir of the name said `{e}`, not that it exists"
            ))
        }
    };
    match std::fs::remove_dir(&path) {
        Ok(()) => answer,
        Err(e) => Probe::error("rmdir", &e),
    }
}

/// An exclusive OS lock on one open file, then a try from a second open
/// file of the same file: it must find the lock busy while the first
/// holds it, and take it once the first has let go. The locks are
/// portalock's own ([`portalock::flock`]: `flock`, `LockFileEx`), which
/// also tell SMB's "access denied" for a held lock as busy.
fn os_lock(dir: &Path) -> Probe {
    let path = dir.join("os-lock");
    let open = |path: &PathBuf| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    let try_lock = |file: &File| flock::lock(file, LockFlags::EXCLUSIVE | LockFlags::NON_BLOCKING);
    let first = match open(&path) {
        Ok(file) => file,
        Err(e) => return Probe::error("open", &e),
    };
    match try_lock(&first) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Probe::fails("a new file's lock said it is held")
        }
        Err(e) => return Probe::error("lock", &e),
    }
    let second = match open(&path) {
        Ok(file) => file,
        Err(e) => return Probe::error("open the file a second time", &e),
    };
    let busy = match try_lock(&second) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => "busy".to_owned(),
        // SMB servers enforce the lock, and say "access denied".
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => format!("busy (`{e}`)"),
        Ok(()) => {
            return Probe::fails(
                "a second open file took the lock while the first held it: the lock \
                 excludes nothing",
            )
        }
        Err(e) => {
            return Probe::fails(format!(
                "a second open file's try said `{e}`, not that the lock is busy"
            ))
        }
    };
    if let Err(e) = flock::unlock(&first) {
        return Probe::error("unlock", &e);
    }
    match try_lock(&second) {
        Ok(()) => {
            let _ = flock::unlock(&second);
            Probe::works(format!(
                "a second open file on this machine finds it {busy}, and takes it once the \
                 first lets go"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Probe::fails("a second open file still finds the lock busy after the first let go")
        }
        Err(e) => Probe::fails(format!(
            "after the first let go, a second open file's try said `{e}`"
        )),
    }
}
