//! Unit tests of the `Link` protocol's steps.

use std::fs::File;
use std::io::Write;

use super::removal::taken_name;
use super::*;
use crate::strategy::{record_at, Broken};
use crate::vocab::{Breaking, Writers};

fn claim_for(dir: &Utf8Path, path: &Utf8Path) -> (OwnerRecord, Utf8PathBuf, File, u64) {
    let record = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    let claim = claim_path(path, &record.token).expect("claim path");
    let mut file = files::create_new(&claim).expect("claim");
    file.write_all(record.to_json().as_bytes()).expect("write");
    let ino = files::ino(&file.metadata().expect("meta"));
    assert!(claim.starts_with(dir));
    (record, claim, file, ino)
}

fn scratch() -> (tempfile::TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Utf8PathBuf::from_path_buf(dir.path().to_owned()).expect("utf-8");
    (dir, root)
}

#[test]
fn eexist_for_a_link_that_was_made_counts_as_ours() {
    // What a lost NFS reply looks like: the link exists (made by the
    // first transmission), and the retransmission answers EEXIST.
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (record, claim, _file, _ino) = claim_for(&root, &path);
    std::fs::hard_link(&claim, &path).expect("the first transmission");
    assert!(link(&path, &claim, &record.token, files::Look::Open).expect("link"));
}

#[test]
fn eexist_for_another_holders_lock_is_busy() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (other, other_claim, _f, _i) = claim_for(&root, &path);
    std::fs::hard_link(&other_claim, &path).expect("other holder");
    let (record, claim, _file, _ino) = claim_for(&root, &path);
    assert_ne!(other.token, record.token);
    for look in [files::Look::Stat, files::Look::Open] {
        assert!(!link(&path, &claim, &record.token, look).expect("link"));
    }
}

#[test]
fn a_copy_with_our_token_counts_as_ours_where_inodes_do_not_tell() {
    // sshfs: another inode number per name, but the same record.
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (record, claim, _file, _ino) = claim_for(&root, &path);
    std::fs::copy(&claim, &path).expect("copy");
    assert!(names(&path, &record.token).expect("names"));
    assert!(!names(&path, "0123456789abcdef0123456789abcdef").expect("names"));
}

/// A PID that ran on this machine and does not any more.
fn dead_pid() -> u32 {
    // This test binary, asked to run no test: it exits at once, on every
    // platform.
    let exe = std::env::current_exe().expect("test executable");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "no such test", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

/// The tags a taken name of process `pid` of this machine and boot
/// carries (its start unknown: judged by its PID alone).
fn tags_of(pid: u32) -> String {
    let tags = crate::owner::process_tags();
    let mut parts = tags.split('.');
    let (machine, boot) = (parts.next().expect("machine"), parts.next().expect("boot"));
    format!("{machine}.{boot}.{pid}.x")
}

/// A lock of a dead owner whose remover took the claim (as `pid`) and
/// died before removing the lock path.
fn orphan(root: &Utf8Path, path: &Utf8Path, taker: u32) -> (String, Utf8PathBuf) {
    let mut record = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    record.pid = dead_pid();
    let claim = claim_path(path, &record.token).expect("claim path");
    std::fs::write(&claim, record.to_json()).expect("claim");
    std::fs::hard_link(&claim, path).expect("lock");
    let taken = root.join(format!(
        "{}.taken.{}.{}",
        claim.file_name().expect("name"),
        tags_of(taker),
        "ab".repeat(16)
    ));
    std::fs::rename(&claim, &taken).expect("take");
    (record.token, taken)
}

#[test]
fn an_orphan_whose_taker_died_is_recovered() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (token, taken) = orphan(&root, &path, dead_pid());
    assert_eq!(
        break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
        Broken::Removed
    );
    assert!(!path.exists());
    assert!(!taken.exists());
    let left: Vec<_> = std::fs::read_dir(&root).expect("list").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_orphan_whose_taker_runs_is_left_to_it() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (token, taken) = orphan(&root, &path, std::process::id());
    assert_eq!(
        break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
        Broken::Raced
    );
    assert!(path.exists() && taken.exists());
}

#[test]
fn an_orphan_without_a_taken_name_needs_force() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (token, taken) = orphan(&root, &path, dead_pid());
    std::fs::remove_file(&taken).expect("remove taken");
    assert_eq!(
        break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
        Broken::Orphan
    );
    assert!(path.exists());
    assert_eq!(
        break_link(&path, &token, Breaking::Forced, Writers::AnyMachine).expect("force"),
        Broken::Removed
    );
    assert!(!path.exists());
}

#[test]
fn sweep_removes_only_what_dead_processes_left() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    // The live lock and its claim.
    let (live, live_claim, _f, _i) = claim_for(&root, &path);
    std::fs::hard_link(&live_claim, &path).expect("lock");
    // Claims made by a dead process, never linked: one with its
    // record, one killed before it wrote the record.
    let dead = dead_pid();
    let dead_token = |n: u64| format!("{}{dead:08x}{n:016x}", crate::owner::host_tag());
    let mut record = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    record.token = dead_token(1);
    record.pid = dead;
    let dead_claim = claim_path(&path, &record.token).expect("claim path");
    std::fs::write(&dead_claim, record.to_json()).expect("dead claim");
    let empty_claim = claim_path(&path, &dead_token(2)).expect("claim path");
    std::fs::write(&empty_claim, "").expect("empty claim");
    // A claim of a live process (this one), not yet linked.
    let (_waiting, waiting_claim, _g, _j) = claim_for(&root, &path);
    // Taken names: of a dead taker, of a live one, of another machine.
    let taken = |who: String| {
        let name = format!(
            ".x.lock.{}.owner.taken.{who}.{}",
            "cd".repeat(16),
            "ef".repeat(16)
        );
        let p = root.join(name);
        std::fs::write(&p, "{}").expect("taken");
        p
    };
    let dead_taken = taken(tags_of(dead_pid()));
    let live_taken = taken(tags_of(std::process::id()));
    let foreign_taken = taken(format!(
        "{}.h{}.{}.x",
        "0".repeat(16),
        "0".repeat(16),
        dead_pid()
    ));
    let unrelated = root.join("notes.txt");
    std::fs::write(&unrelated, "keep").expect("unrelated");
    sweep(&path, Writers::AnyMachine);
    assert!(!dead_claim.exists(), "a dead process's claim stays");
    assert!(!empty_claim.exists(), "a dead process's empty claim stays");
    assert!(!dead_taken.exists(), "a dead taker's name stays");
    for kept in [
        &path,
        &live_claim,
        &waiting_claim,
        &live_taken,
        &foreign_taken,
        &unrelated,
    ] {
        assert!(kept.exists(), "{kept} was removed");
    }
    assert_eq!(
        OwnerRecord::parse(&std::fs::read(&path).expect("lock")).map(|r| r.token),
        Some(live.token)
    );
}

/// A remover of an earlier boot of this machine cannot be alive: on a
/// file system only this machine writes to, its orphan is recovered;
/// on a network one (where a clone of this machine could have written
/// it) it needs a forced break.
#[test]
fn an_orphan_whose_taker_ran_in_an_earlier_boot_is_recovered_on_a_local_disk() {
    let tags = crate::owner::process_tags();
    let boot = tags.split('.').nth(1).expect("boot").to_owned();
    if crate::owner::Identity::get().machine.is_none() || !boot.starts_with('h') {
        eprintln!("no machine id or boot id here: nothing to test");
        return;
    }
    for writers in [Writers::AnyMachine, Writers::ThisMachine] {
        let (_dir, root) = scratch();
        let path = root.join("x.lock");
        // Its PID is alive in this boot (numbers are reused after a
        // reboot): the boot, not the PID, proves it gone.
        let (token, taken) = orphan(&root, &path, std::process::id());
        // The same remover, as an earlier boot named it.
        let name = taken.file_name().expect("name").to_owned();
        let earlier = root.join(name.replace(&boot, &format!("h{}", "0".repeat(16))));
        std::fs::rename(&taken, &earlier).expect("rename");
        let broken = break_link(&path, &token, Breaking::IfStale, writers).expect("break");
        if writers == Writers::ThisMachine {
            assert_eq!(broken, Broken::Removed);
            assert!(!path.exists() && !earlier.exists());
        } else {
            // Its remover cannot be judged there (a clone of this
            // machine could be removing it): nobody else may remove it.
            assert_eq!(broken, Broken::Unjudged);
            assert!(path.exists() && earlier.exists());
        }
    }
}

#[test]
fn taken_names_keep_the_token_whatever_the_lock_is_called() {
    let (_dir, root) = scratch();
    let token = "0123456789abcdef0123456789abcdef";
    for lock in ["a.taken.lock", "x.owner.taken.y", "z.owner"] {
        let path = root.join(lock);
        let claim = claim_path(&path, token).expect("claim");
        let taken = taken_name(&claim).expect("taken");
        let again = taken_name(&taken).expect("taken again");
        for name in [&taken, &again] {
            let name = name.file_name().expect("name");
            assert!(
                name.starts_with(&format!(".{lock}.{token}.owner.taken.")),
                "{name}"
            );
        }
        assert_ne!(taken, again);
    }
}

#[test]
fn a_forced_break_leaves_an_orphan_to_its_running_remover() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (token, taken) = orphan(&root, &path, std::process::id());
    assert_eq!(
        break_link(&path, &token, Breaking::Forced, Writers::AnyMachine).expect("force"),
        Broken::Raced
    );
    assert!(path.exists() && taken.exists());
    assert!(!claim_path(&path, &token).expect("claim").exists());
}

/// A forced break acts on one judged acquisition. If that lock is
/// released meanwhile and the next holder's lock file lands in the same
/// inode (ext4 hands a freed inode out again at once), the break must
/// leave the new lock alone.
#[test]
fn a_forced_break_never_removes_a_newer_lock_in_a_reused_inode() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    // The lock the breaker looked at: its token in inode `ino`.
    let (old, old_claim, file, ino) = claim_for(&root, &path);
    drop(file);
    std::fs::hard_link(&old_claim, &path).expect("lock");
    // Released (lock path, then claim), and the same inode becomes the
    // next holder's claim, record and lock file.
    std::fs::remove_file(&path).expect("release the lock path");
    let new = OwnerRecord::for_this_process(Mechanism::Link).expect("record");
    let new_claim = claim_path(&path, &new.token).expect("claim path");
    std::fs::rename(&old_claim, &new_claim).expect("the inode, reused");
    std::fs::write(&new_claim, new.to_json()).expect("the new record");
    std::fs::hard_link(&new_claim, &path).expect("the new lock");
    assert_eq!(files::ino(&files::lstat(&path).expect("lstat")), ino);

    let broken =
        break_link(&path, &old.token, Breaking::Forced, Writers::AnyMachine).expect("break");
    assert_ne!(broken, Broken::Removed);
    assert_eq!(record_at(&path).map(|r| r.token), Some(new.token.clone()));
    assert!(new_claim.exists(), "the new holder's claim was taken");
    assert!(!claim_path(&path, &old.token).expect("claim").exists());
}

#[test]
fn an_orphan_that_was_removed_meanwhile_is_a_race_not_an_orphan() {
    let (_dir, root) = scratch();
    let path = root.join("x.lock");
    let (token, taken) = orphan(&root, &path, dead_pid());
    std::fs::remove_file(&taken).expect("remove taken");
    std::fs::remove_file(&path).expect("someone removed the lock");
    assert_eq!(
        break_link(&path, &token, Breaking::IfStale, Writers::AnyMachine).expect("break"),
        Broken::Raced
    );
}
