//! Corrupt and hostile owner records are an unknown owner: never a panic,
//! never an unbounded read, and the artifact is left as it was.
//!
//! `Mkdir` is left out on purpose: its on-disk layout is about to change.

mod common;

use std::io::{Read, Write};

use camino::Utf8Path;
use portalock::{Error, LockFile, LockStatus, LockStrategy, OwnerRecord, MAX_RECORD_LEN};
use rstest::rstest;

use common::fixture::scratch;

/// A hand-written record of the current version with every field.
const VALID: &str = r#"{"v":2,"token":"00112233445566778899aabbccddeeff","pid":42,"hostname":"h","machine":null,"boot":null,"pidns":null,"start":null,"acquired_at":"2026-11-22T10:00:00Z","strategy":"link","lease_ms":null}"#;

/// 100 MiB: far past any cap, and cheap because the file is sparse.
const HUGE: u64 = 100 * 1024 * 1024;

/// `VALID` with `from` replaced by `to`; panics if `from` is not in it, so
/// that a typo cannot turn a hostile case into the valid record.
fn valid_with(from: &str, to: &str) -> Vec<u8> {
    assert!(VALID.contains(from), "`{from}` is not in the record");
    VALID.replacen(from, to, 1).into_bytes()
}

/// `VALID` with a 0xFF byte inside the hostname string.
fn non_utf8_hostname() -> Vec<u8> {
    let (head, tail) = VALID.split_once(r#""hostname":"h""#).expect("hostname");
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(b"\"hostname\":\"h\xff\"");
    bytes.extend_from_slice(tail.as_bytes());
    bytes
}

/// `VALID` followed by white space up to `len` bytes in all.
fn padded_to(len: usize) -> Vec<u8> {
    let mut bytes = VALID.as_bytes().to_vec();
    bytes.resize(len, b' ');
    bytes
}

/// The record a real `Link` lock writes, read from its lock file.
fn real_link_record() -> Vec<u8> {
    let (_dir, path) = scratch();
    let lock = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    lock.try_acquire().expect("a fresh path is free");
    let bytes = std::fs::read(&path).expect("the lock file is the record");
    lock.release().expect("release");
    bytes
}

/// A sparse file of `HUGE` bytes at `path` that starts with `start`.
fn write_huge(path: &Utf8Path, start: &[u8]) {
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(start).expect("write");
    file.set_len(HUGE).expect("grow");
}

/// The first `n` bytes of the file at `path`.
fn head(path: &Utf8Path, n: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .expect("still there")
        .take(n)
        .read_to_end(&mut bytes)
        .expect("read");
    bytes
}

// ---------------------------------------------------------------------------
// OwnerRecord::parse
// ---------------------------------------------------------------------------

#[test]
fn the_reference_record_parses() {
    let record = OwnerRecord::parse(VALID.as_bytes()).expect("valid");
    assert_eq!(record.pid, 42);
    assert_eq!(record.hostname, "h");
    assert_eq!(record.strategy, LockStrategy::Link);
    assert_eq!(record.lease_ms, None);
    assert_eq!(record.beat, 0);
}

#[rstest]
#[case::newline("\n")]
#[case::crlf("\r\n")]
#[case::spaces_and_tabs("\n   \t  ")]
fn a_record_with_trailing_white_space_parses(#[case] tail: &str) {
    let padded = format!("{VALID}{tail}");
    assert_eq!(
        OwnerRecord::parse(padded.as_bytes()),
        OwnerRecord::parse(VALID.as_bytes())
    );
    assert!(OwnerRecord::parse(padded.as_bytes()).is_some());
}

#[test]
fn a_real_link_record_parses_and_round_trips() {
    let bytes = real_link_record();
    let record = OwnerRecord::parse(&bytes).expect("a real record parses");
    assert_eq!(record.pid, std::process::id());
    assert_eq!(record.strategy, LockStrategy::Link);
    assert_eq!(record.token.len(), 32);
    assert_eq!(
        OwnerRecord::parse(record.to_json().as_bytes()),
        Some(record)
    );
}

#[test]
fn every_truncation_of_a_real_record_is_unknown() {
    let bytes = real_link_record();
    assert!(
        OwnerRecord::parse(&bytes).is_some(),
        "the whole record parses"
    );
    for len in 0..bytes.len() {
        assert_eq!(
            OwnerRecord::parse(&bytes[..len]),
            None,
            "prefix of {len} of {} bytes",
            bytes.len()
        );
    }
}

#[test]
fn every_truncation_of_the_reference_record_is_unknown() {
    for len in 0..VALID.len() {
        assert_eq!(
            OwnerRecord::parse(&VALID.as_bytes()[..len]),
            None,
            "prefix of {len} bytes"
        );
    }
}

#[rstest]
#[case::empty(b"".to_vec())]
#[case::whitespace(b"   \n".to_vec())]
#[case::garbage(vec![0x00, 0x9f, 0xff, b'{', 0x13, 0x37])]
#[case::text(b"locked by bob".to_vec())]
#[case::not_an_object_array(b"[]".to_vec())]
#[case::not_an_object_null(b"null".to_vec())]
#[case::not_an_object_string(br#""x""#.to_vec())]
#[case::not_an_object_number(b"1".to_vec())]
#[case::empty_object(b"{}".to_vec())]
#[case::pid_as_string(valid_with(r#""pid":42"#, r#""pid":"42""#))]
#[case::negative_pid(valid_with(r#""pid":42"#, r#""pid":-1"#))]
#[case::pid_too_large(valid_with(r#""pid":42"#, r#""pid":4294967296"#))]
#[case::token_as_number(valid_with(
    r#""token":"00112233445566778899aabbccddeeff""#,
    r#""token":7"#
))]
#[case::version_as_string(valid_with(r#""v":2"#, r#""v":"2""#))]
#[case::version_0(valid_with(r#""v":2"#, r#""v":0"#))]
#[case::version_1(valid_with(r#""v":2"#, r#""v":1"#))]
#[case::version_3(valid_with(r#""v":2"#, r#""v":3"#))]
#[case::missing_version(valid_with(r#""v":2,"#, ""))]
#[case::missing_pid(valid_with(r#""pid":42,"#, ""))]
#[case::unknown_strategy(valid_with(r#""strategy":"link""#, r#""strategy":"flock""#))]
#[case::unknown_field(valid_with(r#""v":2,"#, r#""v":2,"extra":true,"#))]
#[case::duplicate_field(valid_with(r#""pid":42,"#, r#""pid":42,"pid":43,"#))]
#[case::two_records(format!("{VALID}{VALID}").into_bytes())]
#[case::trailing_garbage(format!("{VALID}x").into_bytes())]
#[case::leading_bom(format!("\u{feff}{VALID}").into_bytes())]
#[case::non_utf8_hostname(non_utf8_hostname())]
#[case::valid_plus_5000_spaces(format!("{VALID}{}", " ".repeat(5000)).into_bytes())]
#[case::one_past_the_cap(padded_to(MAX_RECORD_LEN + 1))]
fn hostile_bytes_are_an_unknown_owner(#[case] bytes: Vec<u8>) {
    assert_eq!(OwnerRecord::parse(&bytes), None);
}

#[test]
fn the_non_utf8_case_differs_from_a_valid_record_only_in_that_byte() {
    // Without the 0xFF byte, the same construction is a valid record, so the
    // case above fails for the encoding and not for its shape.
    let bytes = non_utf8_hostname();
    let fixed: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0xff { b'x' } else { b })
        .collect();
    assert_eq!(
        OwnerRecord::parse(&fixed).map(|r| r.hostname),
        Some("hx".to_owned())
    );
}

#[test]
fn the_cap_is_exactly_max_record_len() {
    // Valid JSON either way; only the length decides.
    let at_cap = padded_to(MAX_RECORD_LEN);
    assert_eq!(at_cap.len(), MAX_RECORD_LEN);
    assert!(OwnerRecord::parse(&at_cap).is_some());
    let past_cap = padded_to(MAX_RECORD_LEN + 1);
    assert_eq!(OwnerRecord::parse(&past_cap), None);
}

/// `LockStrategy::found_at` names the strategy that took a lock (also
/// the last one, where a released lock leaves a file: an `Os` lock on a
/// local file system), and nothing where nothing is there.
#[rstest]
fn found_at_names_the_strategy_that_took_the_lock(
    #[values(LockStrategy::Os, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let (_dir, path) = scratch();
    assert_eq!(LockStrategy::found_at(&path).expect("found_at"), None);
    let lock = LockFile::with_strategy(&path, strategy).expect("open");
    lock.acquire().expect("acquire");
    assert_eq!(
        LockStrategy::found_at(&path).expect("found_at"),
        Some(strategy)
    );
    lock.release().expect("release");
    let after = (strategy == LockStrategy::Os).then_some(strategy);
    assert_eq!(LockStrategy::found_at(&path).expect("found_at"), after);
}

/// A symbolic link to a held lock, and a FIFO at the lock path, tell
/// nothing, and looking does not block on the FIFO.
#[cfg(unix)]
#[test]
fn found_at_follows_no_link_and_waits_on_no_fifo() {
    let (dir, path) = scratch();
    let held = dir.path().join("held.lock");
    let lock = LockFile::with_strategy(&held, LockStrategy::Mkdir).expect("open");
    lock.acquire().expect("acquire");
    std::os::unix::fs::symlink(&held, &path).expect("symlink");
    assert_eq!(LockStrategy::found_at(&path).expect("found_at"), None);
    let fifo = dir.path().join("fifo.lock");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    assert_eq!(LockStrategy::found_at(&fifo).expect("found_at"), None);
}

// ---------------------------------------------------------------------------
// Link: the lock file is the record
// ---------------------------------------------------------------------------

/// Checks that the `Link` lock at `path` reads as held by an unknown owner
/// and that nothing looking at it or trying to take it changed the file.
fn assert_unknown_link_owner(path: &Utf8Path) {
    let before = std::fs::read(path).expect("the hostile file");
    assert_eq!(LockStrategy::found_at(path).expect("found_at"), None);
    let lock = LockFile::with_strategy(path, LockStrategy::Link).expect("open");
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Held(None)), "{status:?}");
    assert_eq!(lock.owner().expect("owner"), None);
    assert!(lock.is_locked().expect("is_locked"));
    let tried = lock.try_acquire();
    assert!(
        matches!(tried, Err(Error::WouldBlock { holder: None, .. })),
        "{tried:?}"
    );
    assert!(!lock.is_held());
    let forced = lock.force_break();
    assert!(matches!(forced, Err(Error::Foreign { .. })), "{forced:?}");
    assert_eq!(std::fs::read(path).expect("still there"), before);
}

#[rstest]
#[case::garbage(vec![0xde, 0xad, 0xbe, 0xef])]
#[case::not_an_object(b"null".to_vec())]
#[case::truncated(VALID.as_bytes()[..VALID.len() / 2].to_vec())]
#[case::pid_as_string(valid_with(r#""pid":42"#, r#""pid":"42""#))]
#[case::token_as_number(valid_with(
    r#""token":"00112233445566778899aabbccddeeff""#,
    r#""token":7"#
))]
#[case::version_1(valid_with(r#""v":2"#, r#""v":1"#))]
#[case::version_3(valid_with(r#""v":2"#, r#""v":3"#))]
#[case::version_0(valid_with(r#""v":2"#, r#""v":0"#))]
#[case::unknown_field(valid_with(r#""v":2,"#, r#""v":2,"extra":true,"#))]
#[case::non_utf8(vec![b'{', 0xff, 0xfe, b'}'])]
#[case::non_utf8_hostname(non_utf8_hostname())]
#[case::valid_plus_5000_spaces(format!("{VALID}{}", " ".repeat(5000)).into_bytes())]
#[case::one_past_the_cap(padded_to(MAX_RECORD_LEN + 1))]
fn a_hostile_link_lock_file_is_an_unknown_owner(#[case] bytes: Vec<u8>) {
    let (_dir, path) = scratch();
    std::fs::write(&path, &bytes).expect("write");
    assert_unknown_link_owner(&path);
    assert_eq!(std::fs::read(&path).expect("kept"), bytes);
}

/// A blank file at a `Link` lock path is the file of a released `Os`
/// lock, which stays after its release (a `Link` lock file always holds its
/// record: it is linked whole). `Link` refuses it with `StrategyMismatch`
/// at once, never waits for it forever, and leaves it as it was.
#[rstest]
#[case::empty(b"".to_vec())]
#[case::whitespace(b" \n".to_vec())]
fn a_blank_link_lock_file_is_an_os_lock_file(#[case] bytes: Vec<u8>) {
    let (_dir, path) = scratch();
    std::fs::write(&path, &bytes).expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    assert!(matches!(
        lock.status().expect("status"),
        LockStatus::Held(None)
    ));
    let mismatch = |result: Result<(), Error>| {
        matches!(
            result,
            Err(Error::StrategyMismatch {
                found: portalock::Mechanism::Os,
                ..
            })
        )
    };
    assert!(mismatch(lock.try_acquire()));
    assert!(mismatch(
        lock.acquire_timeout(std::time::Duration::from_millis(50))
    ));
    assert!(mismatch(lock.force_break().map(drop)));
    assert!(!lock.is_held());
    assert_eq!(std::fs::read(&path).expect("kept"), bytes);
}

/// The same path taken with `Os` (by a process on an NFS server, say,
/// whose `Auto` sees a local disk), then with `Link`: refused with a clear
/// error, not a wait that never ends.
#[test]
fn link_after_os_on_one_path_is_a_clear_error() {
    let (_dir, path) = scratch();
    let os = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    os.acquire().expect("acquire");
    os.release().expect("release");
    let link = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    let tried = link.acquire_timeout(std::time::Duration::from_millis(100));
    let message = match tried {
        Err(e @ Error::StrategyMismatch { .. }) => e.to_string(),
        other => panic!("expected StrategyMismatch, got {other:?}"),
    };
    assert!(
        message.contains("os") && message.contains("link"),
        "{message}"
    );
}

#[test]
fn a_link_record_at_the_cap_is_read_whole() {
    // The counterpart of `one_past_the_cap` above: the reader reads up to
    // the cap, so a record padded to exactly MAX_RECORD_LEN names its owner.
    let (_dir, path) = scratch();
    std::fs::write(&path, padded_to(MAX_RECORD_LEN)).expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    assert_eq!(lock.owner().expect("owner").map(|o| o.pid), Some(42));
    let tried = lock.try_acquire();
    match tried {
        Err(Error::WouldBlock {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.pid, 42),
        other => panic!("expected WouldBlock naming pid 42, got {other:?}"),
    }
    assert_eq!(
        std::fs::metadata(&path).expect("kept").len(),
        MAX_RECORD_LEN as u64
    );
}

#[rstest]
#[case::sparse_zeros(b"".as_slice())]
#[case::valid_prefix_then_zeros(VALID.as_bytes())]
#[case::open_object_then_zeros(br#"{"v":2,"tok"#.as_slice())]
fn a_hundred_megabyte_link_lock_file_is_read_with_a_cap(#[case] start: &[u8]) {
    let (_dir, path) = scratch();
    write_huge(&path, start);
    let lock = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Held(None)), "{status:?}");
    assert_eq!(lock.owner().expect("owner"), None);
    assert!(lock.is_locked().expect("is_locked"));
    let tried = lock.try_acquire();
    assert!(
        matches!(tried, Err(Error::WouldBlock { holder: None, .. })),
        "{tried:?}"
    );
    assert!(!lock.is_held());
    // Left as it was: same length, same leading bytes.
    assert_eq!(std::fs::metadata(&path).expect("kept").len(), HUGE);
    let mut expected = start.to_vec();
    expected.resize(2 * MAX_RECORD_LEN, 0);
    assert_eq!(head(&path, 2 * MAX_RECORD_LEN as u64), expected);
}

// ---------------------------------------------------------------------------
// Os: the advisory lock decides; the record is only read while locked
// ---------------------------------------------------------------------------

#[rstest]
#[case::garbage(b"\xff\xfe precious".to_vec())]
#[case::text(b"do not delete\n".to_vec())]
#[case::not_an_object(b"[]".to_vec())]
#[case::nul_bytes(vec![0; 64])]
fn an_os_lock_file_with_foreign_content_is_free_but_never_overwritten(#[case] bytes: Vec<u8>) {
    let (_dir, path) = scratch();
    std::fs::write(&path, &bytes).expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    // Nobody holds the kernel lock, whatever the file says.
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Free), "{status:?}");
    assert!(!lock.is_locked().expect("is_locked"));
    // But the file is not a record, so it is not ours to overwrite.
    let tried = lock.try_acquire();
    assert!(matches!(tried, Err(Error::Foreign { .. })), "{tried:?}");
    assert!(!lock.is_held());
    assert_eq!(std::fs::read(&path).expect("kept"), bytes);
    // The refusal let go of the kernel lock.
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Free), "{status:?}");
}

#[rstest]
#[case::sparse_zeros(b"".as_slice())]
#[case::record_prefix_then_zeros(br#"{"v":1,"tok"#.as_slice())]
fn a_hundred_megabyte_os_lock_file_is_read_with_a_cap(#[case] start: &[u8]) {
    let (_dir, path) = scratch();
    write_huge(&path, start);
    let lock = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Free), "{status:?}");
    let tried = lock.try_acquire();
    assert!(matches!(tried, Err(Error::Foreign { .. })), "{tried:?}");
    assert!(!lock.is_held());
    assert_eq!(std::fs::metadata(&path).expect("kept").len(), HUGE);
    let mut expected = start.to_vec();
    expected.resize(2 * MAX_RECORD_LEN, 0);
    assert_eq!(head(&path, 2 * MAX_RECORD_LEN as u64), expected);
}

#[rstest]
#[case::empty(b"".to_vec())]
#[case::whitespace(b" \n\t\n".to_vec())]
#[case::a_dead_holders_record(valid_with(r#""strategy":"link""#, r#""strategy":"os""#))]
fn an_os_lock_file_with_no_or_a_stale_record_is_free_and_reused(#[case] bytes: Vec<u8>) {
    let (_dir, path) = scratch();
    std::fs::write(&path, bytes).expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    let status = lock.status().expect("status");
    assert!(matches!(status, LockStatus::Free), "{status:?}");
    lock.try_acquire()
        .expect("free: nobody holds the kernel lock");
    let owner = lock.owner().expect("owner").expect("our own record");
    assert_eq!(owner.pid, std::process::id());
    assert_eq!(owner.strategy, LockStrategy::Os);
    // While held, the lock file holds our record and nothing else.
    assert_eq!(
        OwnerRecord::parse(&std::fs::read(&path).expect("read")),
        Some(owner)
    );
    lock.release().expect("release");
    assert!(path.exists(), "an Os lock file stays after release");
}
