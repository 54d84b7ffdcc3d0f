//! Security: symbolic links planted where portalock writes, reads or
//! removes are never followed to touch their target, neither by acquire,
//! release, a lease refresh nor a break; lock artifacts get a documented
//! mode, honour the umask, and are never writable by others.

#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use portalock::{Error, LockOptions, LockStrategy, OwnerRecord};
use rstest::rstest;

use common::fixture::scratch_root as scratch;
use common::spawn;

#[test]
fn child() {
    common::child_entry();
}

const PRECIOUS: &str = "precious data\n";

fn options(strategy: LockStrategy) -> LockOptions {
    let mut options = LockOptions::new();
    options
        .strategy(strategy)
        .poll_interval(Duration::from_millis(5))
        .grace(Duration::ZERO);
    options
}

/// A file that must come out of the test as it went in.
fn victim(root: &Utf8Path) -> Utf8PathBuf {
    let victim = root.join("victim");
    std::fs::write(&victim, PRECIOUS).expect("victim");
    victim
}

fn assert_untouched(victim: &Utf8Path) {
    assert_eq!(
        std::fs::read_to_string(victim).expect("the victim still exists"),
        PRECIOUS,
        "the victim was written to"
    );
}

#[rstest]
fn breaking_never_follows_a_symlink_at_the_lock_path(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
    #[values(true, false)] dangling: bool,
) {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let target = if dangling {
        root.join("nothing-here")
    } else {
        victim(&root)
    };
    std::os::unix::fs::symlink(&target, &path).expect("symlink");
    let lock = options(strategy).open(&path).expect("open");
    for result in [
        lock.break_lock().map(drop),
        lock.force_break().map(drop),
        lock.status().map(drop),
        lock.try_acquire(),
    ] {
        assert!(
            matches!(result, Err(Error::Symlink { .. })),
            "expected Symlink, got {result:?}"
        );
    }
    assert!(path.is_symlink(), "the symlink itself stays");
    if dangling {
        assert!(!target.exists(), "the symlink's target was created");
    } else {
        assert_untouched(&target);
    }
}

#[test]
fn a_link_claim_replaced_by_a_symlink_is_not_followed_by_release() {
    let (_dir, root) = scratch();
    let target = victim(&root);
    let path = root.join("x.lock");
    let lock = options(LockStrategy::Link).open(&path).expect("open");
    lock.acquire().expect("acquire");
    let token = lock.owner().expect("owner").expect("record").token;
    let claim = root.join(format!(".x.lock.{token}.owner"));
    std::fs::remove_file(&claim).expect("remove the claim");
    std::os::unix::fs::symlink(&target, &claim).expect("plant a symlink");
    // The claim (a name) is taken and removed; the lock file is ours and
    // removed; the symlink's target is never opened.
    let _ = lock.release();
    assert_untouched(&target);
    assert!(!path.exists());
}

#[rstest]
fn a_lease_refresh_never_writes_through_a_planted_symlink(
    #[values(LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, root) = scratch();
    let target = victim(&root);
    let path = root.join("x.lock");
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let lock = options(strategy)
        .lease(Duration::from_millis(150))
        .on_lost(move |_| {
            let _ = tx.lock().map(|tx| tx.send(()));
        })
        .open(&path)
        .expect("open");
    lock.acquire().expect("acquire");
    let token = lock.owner().expect("owner").expect("record").token;
    // The private name the refresh rewrites, replaced by a symlink.
    let private = match strategy {
        LockStrategy::Mkdir => path.join(format!("{token}.json")),
        _ => root.join(format!(".x.lock.{token}.owner")),
    };
    std::fs::remove_file(&private).expect("remove");
    std::os::unix::fs::symlink(&target, &private).expect("plant a symlink");
    // The next refresh refuses to follow it and reports the lock lost.
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the lock was reported lost");
    assert!(matches!(lock.ensure_held(), Err(Error::LockLost { .. })));
    assert_untouched(&target);
}

#[test]
fn a_mkdir_record_that_is_a_symlink_is_refused_not_followed() {
    let (_dir, root) = scratch();
    let target = victim(&root);
    let path = root.join("x.lock");
    std::fs::create_dir(&path).expect("lock directory");
    let token = "0123456789abcdef0123456789abcdef";
    let planted = path.join(format!("{token}.json"));
    std::os::unix::fs::symlink(&target, &planted).expect("symlink");
    let lock = options(LockStrategy::Mkdir).open(&path).expect("open");
    // Not a record portalock wrote: every look and every break is refused
    // with a typed error naming the symlink, and nothing is removed.
    let symlink = |r: Result<(), Error>| matches!(r, Err(Error::Symlink { .. }));
    assert!(symlink(lock.owner().map(drop)));
    assert!(symlink(lock.break_lock().map(drop)));
    assert!(symlink(lock.force_break().map(drop)));
    assert!(planted.is_symlink());
    assert_untouched(&target);
}

#[test]
fn a_link_lock_that_is_a_hard_link_of_a_victim_is_foreign() {
    // Someone made the lock path another name of an important file: it is
    // not a record, so nothing removes or rewrites it.
    let (_dir, root) = scratch();
    let target = victim(&root);
    let path = root.join("x.lock");
    std::fs::hard_link(&target, &path).expect("hard link");
    for strategy in [LockStrategy::Os, LockStrategy::Link] {
        let lock = options(strategy).open(&path).expect("open");
        let tried = lock.try_acquire();
        assert!(
            matches!(tried, Err(Error::Foreign { .. } | Error::WouldBlock { .. })),
            "{strategy}: {tried:?}"
        );
        // Os: the file is not locked, so there is nothing to break.
        let broken = lock.force_break();
        assert!(
            matches!(broken, Err(_) | Ok(None)),
            "{strategy}: broken {broken:?}"
        );
    }
    assert_untouched(&target);
    assert_untouched(&path);
}

/// The permission bits of `path`.
fn mode(path: &Utf8Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

#[rstest]
fn artifacts_have_the_documented_mode_and_honour_the_umask(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
    #[values("0", "022", "077")] umask: &str,
) {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let mut holder = spawn("umask-hold", &[umask, strategy.as_str(), path.as_str()]);
    holder.expect("ACQUIRED");
    let mask = u32::from_str_radix(umask, 8).expect("octal");
    let token = OwnerRecord::parse(&match strategy {
        LockStrategy::Mkdir => Vec::new(),
        _ => std::fs::read(&path).expect("lock file"),
    })
    .map(|r| r.token);
    let mut artifacts: Vec<(Utf8PathBuf, u32)> = Vec::new();
    match strategy {
        LockStrategy::Os => artifacts.push((path.clone(), 0o644)),
        LockStrategy::Mkdir => {
            artifacts.push((path.clone(), 0o755));
            for entry in std::fs::read_dir(&path).expect("list") {
                let name = entry.expect("entry").file_name();
                let name = name.to_str().expect("utf-8").to_owned();
                artifacts.push((path.join(name), 0o644));
            }
        }
        _ => {
            artifacts.push((path.clone(), 0o644));
            let token = token.expect("record");
            artifacts.push((root.join(format!(".x.lock.{token}.owner")), 0o644));
        }
    }
    assert!(artifacts.len() >= 2 || strategy == LockStrategy::Os);
    for (artifact, documented) in &artifacts {
        let got = mode(artifact);
        assert_eq!(got, documented & !mask, "{artifact} with umask {umask}");
        assert_eq!(got & 0o022, 0, "{artifact} is writable by others");
    }
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    holder.close_stdin();
    assert!(holder.wait().success());
}

/// `LockOptions::permissions` gives every artifact exact bits whatever the
/// umask (files `mode`, directories also `x` where `mode` has `r`): the
/// lock file, a lock directory and its record, a claim, the gate.
#[rstest]
fn permissions_give_every_artifact_exact_bits_whatever_the_umask(
    #[values("os", "mkdir", "link")] strategy: &str,
) {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let spec = format!("{strategy}+mode664");
    let mut holder = spawn("umask-hold", &["077", &spec, path.as_str()]);
    holder.expect("ACQUIRED");
    let mut seen = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let entry = Utf8PathBuf::from_path_buf(entry.expect("entry").path()).expect("utf-8");
            let is_dir = std::fs::symlink_metadata(&entry).expect("stat").is_dir();
            assert_eq!(
                mode(&entry),
                if is_dir { 0o775 } else { 0o664 },
                "{entry} under umask 077"
            );
            if is_dir {
                dirs.push(entry.clone());
            }
            seen.push(entry);
        }
    }
    assert!(seen.contains(&path), "{seen:?}");
    assert!(
        seen.iter().any(|p| p.as_str().ends_with("gate")),
        "{seen:?}"
    );
    if strategy != "os" {
        assert!(seen.len() >= 3, "lock, record or claim, gate: {seen:?}");
    }
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    holder.close_stdin();
    assert!(holder.wait().success());
}
