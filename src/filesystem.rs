//! Which file system holds a lock, and what its locks are worth there.
//!
//! [`LockStrategy::Auto`] and the refusal of OS locks that would exclude
//! nobody both rest on [`FileSystem::detect`]:
//!
//! - **Linux**: `statfs(2)` on the lock's directory gives the file system's
//!   magic number (NFS, SMB/CIFS, FUSE, 9p, Ceph, Lustre, AFS, ...). For the
//!   few where the answer depends on how the file system is mounted (the
//!   FUSE subtype, NFS `local_lock=`/`nolock`, CIFS `nobrl`, Lustre
//!   `flock`), the mount's entry in `/proc/self/mountinfo` decides.
//! - **macOS and the BSDs**: `statfs(2)`'s `f_fstypename` and its
//!   `MNT_LOCAL` flag.
//! - **Windows**: UNC paths (`\\server\share\...`) and drive letters that
//!   `GetDriveTypeW` calls remote are SMB shares.
//!
//! The rules (also in the README):
//!
//! | file system | OS locks exclude other clients? | `Auto` picks |
//! | --- | --- | --- |
//! | local disks, tmpfs, overlay, `fuseblk` (ntfs-3g, exfat) | yes (one client) | `Os` |
//! | NFS | yes, forwarded to the server as POSIX locks, unless mounted `nolock` or `local_lock=flock\|all` | `Link` |
//! | SMB/CIFS (Linux), SMB shares (Windows, macOS) | yes, as SMB byte-range locks, unless mounted `nobrl` | `Mkdir` |
//! | Ceph, GPFS, OCFS2, GFS2 | yes (cluster-wide `flock`) | `Link` |
//! | Lustre | only when mounted `-o flock` | `Link` |
//! | FUSE (sshfs, s3fs, rclone, glusterfs, ...) | no: the kernel keeps them on this client unless the FUSE server forwards them, and most do not | `Mkdir` |
//! | 9p, virtiofs, vboxsf, BeeGFS, OrangeFS, AFS, Coda, WebDAV | no | `Link` for 9p and BeeGFS, `Mkdir` for the rest |
//!
//! `Auto` picks `Mkdir` on FUSE, also where hard links work (sshfs): a FUSE
//! client turns the unlink of a file that a process on it still has open
//! (a waiter reading the owner record, say) into a rename to a hidden
//! `.fuse_hidden*` name, which some servers (sshfs) keep after the file is
//! closed. `Mkdir` finds those inside its lock directory and removes them;
//! `Link` would leave them beside the lock file. Mounting sshfs with `-o
//! hard_remove` avoids them.
//!
//! An explicit [`LockStrategy::Os`] on a file system of the "no" rows is
//! refused with [`Error::OsLocksNotShared`](crate::Error::OsLocksNotShared)
//! unless the caller opts in ([`LockOptions::trust_os_locks`]).
//!
//! [`LockStrategy::Auto`]: crate::LockStrategy::Auto
//! [`LockStrategy::Os`]: crate::LockStrategy::Os
//! [`LockOptions::trust_os_locks`]: crate::LockOptions::trust_os_locks

use std::fmt;
use std::io;
use std::path::Path;

use crate::files::Look;
use crate::sys::FsFacts;
use crate::vocab::LockStrategy;

/// Where a file system keeps its data, as far as locking is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Locality {
    /// A file system only this machine uses (a disk, tmpfs, an overlay).
    Local,
    /// A network or cluster file system: other machines are its clients too.
    Network,
    /// A FUSE file system (other than a local block device's): a user-space
    /// server, often a network one, decides what its operations mean.
    Fuse,
}

/// What portalock knows of the file system that holds a lock.
///
/// # Examples
///
/// ```
/// use portalock::{FileSystem, LockStrategy};
///
/// let dir = tempfile::tempdir()?;
/// let fs = FileSystem::detect(dir.path())?;
/// println!("{} ({:?}): Auto picks {}", fs.name(), fs.locality(), fs.auto_strategy());
/// if fs.is_local() {
///     assert_eq!(fs.auto_strategy(), LockStrategy::Os);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileSystem {
    name: String,
    locality: Locality,
    os_locks_shared: bool,
    auto: LockStrategy,
    /// How a holder tells that its lock's name still names what it made.
    look: Look,
}

// `LockStrategy` lives in the vocabulary module, which depends on nothing;
// resolving `Auto` needs the file system, so it is here.
impl LockStrategy {
    /// This strategy, with [`Auto`](LockStrategy::Auto) resolved for a lock
    /// whose directory is on `fs`.
    pub fn resolve(self, fs: &FileSystem) -> LockStrategy {
        match self {
            LockStrategy::Auto => fs.auto_strategy(),
            other => other,
        }
    }
}

impl FileSystem {
    /// The file system that holds `dir`. If `dir` does not exist yet, the
    /// file system of its nearest existing ancestor (where it would be
    /// created).
    ///
    /// # Errors
    ///
    /// The error of `statfs` (or its platform's equivalent) when no
    /// ancestor of `dir` can be inspected.
    ///
    /// # Examples
    ///
    /// Whatever file system the temporary directory is on, what
    /// [`LockStrategy::Auto`] picks there is what a default handle locks
    /// with, and it is never an OS lock where OS locks do not reach the
    /// other clients:
    ///
    /// ```
    /// use portalock::{FileSystem, LockFile, LockStrategy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let fs = FileSystem::detect(dir.path())?;
    ///
    /// // A directory not made yet is on its nearest existing ancestor's.
    /// assert_eq!(FileSystem::detect(dir.path().join("not/made/yet"))?, fs);
    ///
    /// let lock = LockFile::new(dir.path().join("x.lock"))?;
    /// assert_eq!(lock.strategy(), fs.auto_strategy());
    /// assert_eq!(LockStrategy::Auto.resolve(&fs), fs.auto_strategy());
    /// assert_eq!(lock.file_system()?, fs);
    /// if !fs.os_locks_shared() {
    ///     assert_ne!(fs.auto_strategy(), LockStrategy::Os);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn detect(dir: impl AsRef<Path>) -> io::Result<FileSystem> {
        let mut dir = dir.as_ref();
        loop {
            match detect_at(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => match dir.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
                    _ => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// The file system's name: `ext4`, `tmpfs`, `nfs`, `cifs`,
    /// `fuse.sshfs`, `smbfs`, ...; for a local file system portalock has no
    /// name for, its magic number (`0x...`) on Linux.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the file system keeps its data.
    pub fn locality(&self) -> Locality {
        self.locality
    }

    /// Whether only this machine uses the file system.
    pub fn is_local(&self) -> bool {
        self.locality == Locality::Local
    }

    /// Whether an OS advisory lock taken here excludes processes on every
    /// client of the file system, not only on this machine (always true of
    /// a local file system).
    pub fn os_locks_shared(&self) -> bool {
        self.os_locks_shared
    }

    /// Whether this is an SMB share, whose servers keep a file removed
    /// while another client has it open as "delete pending": its name
    /// still exists for `link` and `mkdir` but cannot be opened, until the
    /// other client closes it (Linux clients defer closes by a second).
    /// `Link` locks are refused there.
    pub(crate) fn is_smb(&self) -> bool {
        matches!(self.name.as_str(), "cifs" | "smb3" | "smbfs" | "smb")
    }

    /// How a holder looks at its lock's name here (see [`Look`]).
    pub(crate) fn look(&self) -> Look {
        self.look
    }

    /// The strategy [`LockStrategy::Auto`] resolves to here: `Os` on a
    /// local file system, `Link` on network file systems known to make hard
    /// links (NFS, ...), `Mkdir` on the others and on FUSE.
    pub fn auto_strategy(&self) -> LockStrategy {
        self.auto
    }

    fn local(name: impl Into<String>) -> FileSystem {
        FileSystem {
            name: name.into(),
            locality: Locality::Local,
            os_locks_shared: true,
            auto: LockStrategy::Os,
            look: Look::Stat,
        }
    }

    fn remote(
        name: impl Into<String>,
        locality: Locality,
        os_locks_shared: bool,
        auto: LockStrategy,
    ) -> FileSystem {
        FileSystem {
            name: name.into(),
            locality,
            os_locks_shared,
            auto,
            look: Look::Open,
        }
    }

    fn looked_at(mut self, look: Look) -> FileSystem {
        self.look = look;
        self
    }
}

impl fmt::Display for FileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let locality = match self.locality {
            Locality::Local => "local",
            Locality::Network => "network",
            Locality::Fuse => "FUSE",
        };
        write!(f, "{} ({locality})", self.name)
    }
}

/// Whether a comma-separated option list contains `opt` exactly.
fn has_option(options: &str, opt: &str) -> bool {
    options.split(',').any(|o| o == opt)
}

/// The file system that holds the existing directory `dir`, classified
/// from what the platform tells of it (`sys::fs_facts`).
fn detect_at(dir: &Path) -> io::Result<FileSystem> {
    Ok(match crate::sys::fs_facts(dir)? {
        FsFacts::Linux { magic } => linux::classify(magic, || linux::mount_of(dir)),
        FsFacts::Bsd { name, local } => bsd_classify(name, local),
        FsFacts::Windows { remote: true } => {
            FileSystem::remote("smb", Locality::Network, true, LockStrategy::Mkdir)
        }
        FsFacts::Windows { remote: false } => FileSystem::local("local"),
        // No way to tell here: trust the local answer.
        FsFacts::Unknown if crate::sys::HAS_OS_LOCKS => FileSystem::local("unknown"),
        // A platform without OS locks: `Auto` makes directories, and an
        // explicit `Os` lock is refused (`OsLocksNotShared`).
        FsFacts::Unknown => FileSystem {
            os_locks_shared: false,
            auto: LockStrategy::Mkdir,
            ..FileSystem::local("unknown")
        },
    })
}

/// Linux's file systems, by `statfs` magic number and mount entry (data
/// and parsing only: compiled and tested on every platform).
mod linux {
    use std::path::Path;

    use super::{has_option, FileSystem, Locality};
    use crate::files::Look;
    use crate::vocab::LockStrategy;

    const NFS: u64 = 0x6969;
    const SMB: u64 = 0x517b;
    const CIFS: u64 = crate::sys::SMB_MAGICS[0];
    const SMB2: u64 = crate::sys::SMB_MAGICS[1];
    const FUSE: u64 = 0x6573_5546;
    const V9FS: u64 = 0x0102_1997;
    const CEPH: u64 = 0x00c3_6400;
    const LUSTRE: u64 = 0x0bd0_0bd0;
    const KAFS: u64 = 0x6b41_4653;
    const OPENAFS: u64 = 0x5346_414f;
    const CODA: u64 = 0x7375_7245;
    const NCP: u64 = 0x564c;
    const VBOXSF: u64 = 0x786f_4256;
    const OCFS2: u64 = 0x7461_636f;
    const GFS2: u64 = 0x0116_1970;
    const GPFS: u64 = 0x4750_4653;
    const BEEGFS: u64 = 0x1983_0326;
    const ORANGEFS: u64 = 0x2003_0528;

    /// Names of common local file systems, for messages.
    const LOCAL: [(u64, &str); 14] = [
        (0xef53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683e, "btrfs"),
        (0x0102_1994, "tmpfs"),
        (0x794c_7630, "overlay"),
        (0x2fc1_2fc1, "zfs"),
        (0xf2f5_2010, "f2fs"),
        (0x4d44, "vfat"),
        (0x2011_bab0, "exfat"),
        (0x5346_544e, "ntfs"),
        (0x7366_746e, "ntfs3"),
        (0x8584_58f6, "ramfs"),
        (0xca45_1a4e, "bcachefs"),
        (0x3153_464a, "jfs"),
    ];

    /// One mount's entry in `/proc/self/mountinfo`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(super) struct Mount {
        /// `fuse.sshfs`, `nfs4`, ...
        pub(super) fstype: String,
        /// Mount options and super-block options, comma-separated.
        pub(super) options: String,
    }

    pub(super) fn classify(magic: u64, mount: impl FnOnce() -> Option<Mount>) -> FileSystem {
        use Locality::{Fuse, Network};
        use LockStrategy::{Link, Mkdir};
        match magic {
            NFS => {
                let m = mount().unwrap_or_default();
                let local_locks = m
                    .options
                    .split(',')
                    .any(|o| o == "nolock" || o == "local_lock=flock" || o == "local_lock=all");
                let name = if m.fstype.is_empty() {
                    "nfs"
                } else {
                    &m.fstype
                };
                FileSystem::remote(name, Network, !local_locks, Link)
            }
            CIFS | SMB2 => {
                let m = mount().unwrap_or_default();
                let name = if m.fstype.is_empty() {
                    "cifs"
                } else {
                    &m.fstype
                };
                // The server's inode numbers (`serverino`, the default) are
                // what a listing shows and `fstat` says alike.
                let look = if has_option(&m.options, "noserverino") {
                    Look::Open
                } else {
                    Look::List
                };
                FileSystem::remote(name, Network, !has_option(&m.options, "nobrl"), Mkdir)
                    .looked_at(look)
            }
            FUSE => match mount() {
                Some(m) if m.fstype == "fuseblk" => FileSystem::local("fuseblk"),
                Some(m) => FileSystem::remote(m.fstype, Fuse, false, Mkdir),
                None => FileSystem::remote("fuse", Fuse, false, Mkdir),
            },
            LUSTRE => {
                let m = mount().unwrap_or_default();
                FileSystem::remote("lustre", Network, has_option(&m.options, "flock"), Link)
            }
            CEPH => FileSystem::remote("ceph", Network, true, Link),
            GPFS => FileSystem::remote("gpfs", Network, true, Link),
            OCFS2 => FileSystem::remote("ocfs2", Network, true, Link),
            GFS2 => FileSystem::remote("gfs2", Network, true, Link),
            V9FS => FileSystem::remote("9p", Network, false, Link),
            BEEGFS => FileSystem::remote("beegfs", Network, false, Link),
            SMB => FileSystem::remote("smbfs", Network, false, Mkdir),
            KAFS | OPENAFS => FileSystem::remote("afs", Network, false, Mkdir),
            CODA => FileSystem::remote("coda", Network, false, Mkdir),
            NCP => FileSystem::remote("ncpfs", Network, false, Mkdir),
            VBOXSF => FileSystem::remote("vboxsf", Network, false, Mkdir),
            ORANGEFS => FileSystem::remote("orangefs", Network, false, Mkdir),
            _ => match LOCAL.iter().find(|(m, _)| *m == magic) {
                Some((_, name)) => FileSystem::local(*name),
                None => FileSystem::local(format!("{magic:#x}")),
            },
        }
    }

    /// The mount that holds `dir`: the last mountinfo entry whose mount
    /// point is the longest prefix of `dir`'s canonical path.
    pub(super) fn mount_of(dir: &Path) -> Option<Mount> {
        let dir = std::fs::canonicalize(dir).ok()?;
        let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        best_mount(&table, dir.to_str()?)
    }

    /// Picks `dir`'s mount out of a mountinfo table.
    pub(super) fn best_mount(table: &str, dir: &str) -> Option<Mount> {
        let mut best: Option<(usize, Mount)> = None;
        for line in table.lines() {
            let (left, right) = line.split_once(" - ")?;
            let mut left_fields = left.split(' ');
            let mount_point = unescape(left_fields.nth(4)?);
            let mount_options = left_fields.next().unwrap_or("");
            let mut right_fields = right.split(' ');
            let fstype = right_fields.next().unwrap_or("");
            let super_options = right_fields.nth(1).unwrap_or("");
            let inside = dir == mount_point
                || mount_point == "/"
                || dir
                    .strip_prefix(mount_point.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
            if inside
                && best
                    .as_ref()
                    .is_none_or(|(len, _)| mount_point.len() >= *len)
            {
                best = Some((
                    mount_point.len(),
                    Mount {
                        fstype: fstype.to_owned(),
                        options: format!("{mount_options},{super_options}"),
                    },
                ));
            }
        }
        best.map(|(_, mount)| mount)
    }

    /// Undoes mountinfo's octal escapes (`\040` for a space, ...).
    fn unescape(field: &str) -> String {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes.get(i + 1..i + 4).and_then(|d| {
                let s = std::str::from_utf8(d).ok()?;
                u8::from_str_radix(s, 8).ok()
            });
            match (bytes[i], octal) {
                (b'\\', Some(b)) => {
                    out.push(b);
                    i += 4;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The BSDs' and macOS's file systems, by `f_fstypename` and `MNT_LOCAL`.
fn bsd_classify(name: String, local: bool) -> FileSystem {
    use LockStrategy::{Link, Mkdir};
    let fuse = name.starts_with("fuse")
        || name.starts_with("osxfuse")
        || name.starts_with("macfuse")
        || name == "fusefs";
    if fuse {
        return FileSystem::remote(name, Locality::Fuse, false, Mkdir);
    }
    if local {
        return FileSystem::local(name);
    }
    match name.as_str() {
        "nfs" => FileSystem::remote(name, Locality::Network, true, Link),
        "smbfs" | "afpfs" | "cifs" => FileSystem::remote(name, Locality::Network, true, Mkdir),
        _ => FileSystem::remote(name, Locality::Network, false, Mkdir),
    }
}

#[cfg(test)]
mod tests {
    use super::linux::{best_mount, classify, Mount};
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nfs rw,relatime shared:2 - nfs4 srv:/export rw,vers=4.2,local_lock=none
41 22 0:36 / /mnt/nfs-local rw shared:3 - nfs srv:/x rw,vers=3,nolock,local_lock=all
42 22 0:37 / /mnt/my\\040share rw,nosuid - fuse.sshfs user@host:/d rw,user_id=0
43 42 0:38 / /mnt/my\\040share/inner rw - fuseblk /dev/sdb1 rw
44 22 0:39 / /mnt/smb rw - cifs //srv/s rw,vers=3.0,nobrl
";

    fn mount(dir: &str) -> Mount {
        best_mount(TABLE, dir).unwrap_or_default()
    }

    #[test]
    fn mountinfo_picks_the_longest_prefix_and_unescapes() {
        assert_eq!(mount("/home/x").fstype, "ext4");
        assert_eq!(mount("/mnt/nfs/a/b").fstype, "nfs4");
        assert_eq!(mount("/mnt/nfs-local").fstype, "nfs");
        assert_eq!(mount("/mnt/nfsx").fstype, "ext4");
        assert_eq!(mount("/mnt/my share/x").fstype, "fuse.sshfs");
        assert_eq!(mount("/mnt/my share/inner/y").fstype, "fuseblk");
    }

    #[test]
    fn linux_rules() {
        let nfs = classify(0x6969, || Some(mount("/mnt/nfs")));
        assert_eq!((nfs.name(), nfs.os_locks_shared()), ("nfs4", true));
        assert_eq!(nfs.auto_strategy(), LockStrategy::Link);
        let nolock = classify(0x6969, || Some(mount("/mnt/nfs-local")));
        assert!(!nolock.os_locks_shared());
        let sshfs = classify(0x6573_5546, || Some(mount("/mnt/my share")));
        assert_eq!(sshfs.locality(), Locality::Fuse);
        assert!(!sshfs.os_locks_shared());
        assert_eq!(sshfs.auto_strategy(), LockStrategy::Mkdir);
        let blk = classify(0x6573_5546, || Some(mount("/mnt/my share/inner")));
        assert!(blk.is_local());
        assert_eq!(blk.auto_strategy(), LockStrategy::Os);
        let other_fuse = classify(0x6573_5546, || {
            Some(Mount {
                fstype: "fuse.rclone".into(),
                options: String::new(),
            })
        });
        assert_eq!(other_fuse.auto_strategy(), LockStrategy::Mkdir);
        let cifs = classify(0xff53_4d42, || Some(mount("/mnt/smb")));
        assert!(!cifs.os_locks_shared());
        assert_eq!(cifs.auto_strategy(), LockStrategy::Mkdir);
        let ext4 = classify(0xef53, || None);
        assert_eq!((ext4.name(), ext4.is_local()), ("ext4", true));
        assert_eq!(classify(0x1234, || None).name(), "0x1234");
    }

    #[test]
    fn bsd_rules() {
        assert_eq!(
            bsd_classify("apfs".into(), true).auto_strategy(),
            LockStrategy::Os
        );
        let nfs = bsd_classify("nfs".into(), false);
        assert!(nfs.os_locks_shared());
        assert_eq!(nfs.auto_strategy(), LockStrategy::Link);
        let fuse = bsd_classify("macfuse".into(), true);
        assert!(!fuse.os_locks_shared());
        assert_eq!(fuse.locality(), Locality::Fuse);
        assert_eq!(
            bsd_classify("smbfs".into(), false).auto_strategy(),
            LockStrategy::Mkdir
        );
        assert!(!bsd_classify("webdav".into(), false).os_locks_shared());
    }

    #[test]
    fn detect_walks_up_to_an_existing_ancestor() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let here = FileSystem::detect(dir.path())?;
        let deeper = FileSystem::detect(dir.path().join("no/such/dir"))?;
        assert_eq!(here, deeper);
        Ok(())
    }
}
