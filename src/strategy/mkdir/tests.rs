//! Unit tests of the `Mkdir` protocol's steps, each against the state
//! a race or a crash would leave.

use super::*;
use crate::vocab::Mechanism;

fn scratch() -> (tempfile::TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Utf8PathBuf::from_path_buf(dir.path().join("m.lock")).expect("utf-8");
    (dir, path)
}

fn record() -> OwnerRecord {
    OwnerRecord::for_this_process(Mechanism::Mkdir).expect("record")
}

fn acquire(path: &Utf8Path, record: &OwnerRecord) -> Option<MkdirHold> {
    try_acquire(path, record, false, files::Look::Stat, None).expect("try_acquire")
}

/// The names in the lock directory, sorted.
fn names(path: &Utf8Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_lock_is_a_directory_with_one_record_named_after_its_token() {
    let (_dir, path) = scratch();
    let mine = record();
    let held = acquire(&path, &mine).expect("free: taken");
    assert_eq!(names(&path), [format!("{}.json", mine.token)]);
    assert!(check(&path, &held).expect("check"));
    assert!(acquire(&path, &record()).is_none(), "held: busy");
    assert!(matches!(release(&path, held), Ok(Released::Done)));
    assert!(!path.exists(), "release removes the directory");
}

#[test]
fn a_writer_that_finds_another_record_beside_its_own_withdraws() {
    // A breaker removed this process's empty directory and another
    // process made it again: both write a record; each must see the
    // other's and take its own back out.
    let (_dir, path) = scratch();
    std::fs::create_dir(&path).expect("the directory, made by another");
    let theirs = record();
    std::fs::write(record_path(&path, &theirs.token), theirs.to_json()).expect("theirs");
    let mine = record();
    assert!(!write_record(&path, &mine, false, None).expect("write_record"));
    assert_eq!(names(&path), [format!("{}.json", theirs.token)]);
}

#[test]
fn hidden_renames_of_unlinked_files_do_not_count_as_another_record() {
    let (_dir, path) = scratch();
    std::fs::create_dir(&path).expect("dir");
    std::fs::write(path.join(".nfs000000000000abcd00000001"), b"x").expect("silly");
    let mine = record();
    assert!(write_record(&path, &mine, false, None).expect("write_record"));
}

#[test]
fn a_release_after_a_break_and_a_new_holder_is_lost_and_leaves_theirs() {
    let (_dir, path) = scratch();
    let held = acquire(&path, &record()).expect("taken");
    // Broken (forced) by someone, then taken afresh.
    assert_eq!(
        break_record(&path, &held.token).expect("break"),
        Broken::Removed
    );
    let theirs = record();
    let _new = acquire(&path, &theirs).expect("taken afresh");
    assert!(!check(&path, &held).expect("check"));
    assert!(matches!(release(&path, held), Ok(Released::Lost(_))));
    assert_eq!(names(&path), [format!("{}.json", theirs.token)]);
}

#[test]
fn only_one_of_two_removers_of_one_record_goes_on() {
    let (_dir, path) = scratch();
    let held = acquire(&path, &record()).expect("taken");
    assert_eq!(
        break_record(&path, &held.token).expect("first"),
        Broken::Removed
    );
    assert_eq!(
        break_record(&path, &held.token).expect("second"),
        Broken::Raced
    );
}

#[test]
fn an_empty_directory_is_broken_but_one_with_a_record_is_not() {
    let (_dir, path) = scratch();
    std::fs::create_dir(&path).expect("a holder that died before its record");
    assert_eq!(break_empty(&path).expect("break_empty"), Broken::Removed);
    let held = acquire(&path, &record()).expect("taken");
    assert_eq!(break_empty(&path).expect("break_empty"), Broken::Raced);
    assert!(check(&path, &held).expect("still held"));
}

#[test]
fn a_regular_file_at_the_lock_path_is_the_wrong_kind() {
    let (_dir, path) = scratch();
    std::fs::write(&path, b"not a lock").expect("file");
    let found = try_acquire(&path, &record(), false, files::Look::Stat, None);
    assert!(
        matches!(
            found,
            Err(Error::WrongFileType {
                expected: FileKind::Directory,
                found: FileKind::File,
                ..
            })
        ),
        "{found:?}"
    );
    assert_eq!(std::fs::read(&path).expect("untouched"), b"not a lock");
}

#[test]
fn a_foreign_file_inside_the_directory_is_never_removed() {
    let (_dir, path) = scratch();
    std::fs::create_dir(&path).expect("dir");
    std::fs::write(path.join("notes.txt"), b"mine").expect("foreign");
    assert_eq!(break_empty(&path).expect("break_empty"), Broken::Raced);
    assert_eq!(names(&path), ["notes.txt"]);
}
