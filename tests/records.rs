//! Corrupt and hostile owner records are an unknown owner: never a panic,
//! never an unbounded read, and the artifact is left as it was.

use std::io::Write;

use camino::Utf8PathBuf;
use portalock::{Error, LockFile, LockStatus, LockStrategy, OwnerRecord, MAX_RECORD_LEN};
use rstest::rstest;
use tempfile::TempDir;

const VALID: &str = r#"{"v":1,"token":"00112233445566778899aabbccddeeff","pid":42,"hostname":"h","boot":null,"pidns":null,"start":null,"acquired_at":"2026-11-22T10:00:00Z","strategy":"link","lease_ms":null}"#;

fn scratch() -> (TempDir, Utf8PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Utf8PathBuf::from_path_buf(dir.path().join("hostile.lock")).expect("utf-8");
    (dir, path)
}

#[test]
fn the_reference_record_parses() {
    let record = OwnerRecord::parse(VALID.as_bytes()).expect("valid");
    assert_eq!(record.pid, 42);
    assert_eq!(record.lease_ms, None);
    assert_eq!(record.beat, 0);
    let padded = format!("{VALID}\n   \t");
    assert_eq!(OwnerRecord::parse(padded.as_bytes()), Some(record));
}

#[test]
fn every_truncation_of_a_record_is_unknown() {
    for len in 0..VALID.len() {
        assert_eq!(
            OwnerRecord::parse(&VALID.as_bytes()[..len]),
            None,
            "prefix of {len} bytes"
        );
    }
}

fn non_utf8_hostname() -> Vec<u8> {
    let (head, tail) = VALID.split_once(r#""hostname":"h""#).expect("hostname");
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(b"\"hostname\":\"h\xff\"");
    bytes.extend_from_slice(tail.as_bytes());
    bytes
}

#[rstest]
#[case::empty(b"".to_vec())]
#[case::whitespace(b"   \n".to_vec())]
#[case::garbage(vec![0x00, 0x9f, 0xff, b'{', 0x13, 0x37])]
#[case::not_an_object_array(b"[]".to_vec())]
#[case::not_an_object_null(b"null".to_vec())]
#[case::not_an_object_string(br#""x""#.to_vec())]
#[case::pid_as_string(VALID.replace(r#""pid":42"#, r#""pid":"42""#).into_bytes())]
#[case::negative_pid(VALID.replace(r#""pid":42"#, r#""pid":-1"#).into_bytes())]
#[case::token_as_number(VALID.replace(r#""token":"00112233445566778899aabbccddeeff""#, r#""token":7"#).into_bytes())]
#[case::version_as_string(VALID.replace(r#""v":1"#, r#""v":"1""#).into_bytes())]
#[case::version_0(VALID.replace(r#""v":1"#, r#""v":0"#).into_bytes())]
#[case::version_2(VALID.replace(r#""v":1"#, r#""v":2"#).into_bytes())]
#[case::unknown_strategy(VALID.replace(r#""link""#, r#""flock""#).into_bytes())]
#[case::unknown_field(VALID.replace(r#""v":1,"#, r#""v":1,"extra":true,"#).into_bytes())]
#[case::two_records(format!("{VALID}{VALID}").into_bytes())]
#[case::non_utf8_hostname(non_utf8_hostname())]
#[case::over_the_cap(format!("{VALID}{}", " ".repeat(MAX_RECORD_LEN)).into_bytes())]
fn hostile_bytes_are_an_unknown_owner(#[case] bytes: Vec<u8>) {
    assert_eq!(OwnerRecord::parse(&bytes), None);
}

/// Writes `bytes` where a `Link` lock's record lives and checks that the
/// lock reads as held by an unknown owner and is left untouched.
fn assert_unknown_link_owner(path: &Utf8PathBuf, expected: &[u8]) {
    let lock = LockFile::with_strategy(path, LockStrategy::Link).expect("open");
    assert_eq!(lock.status().expect("status"), LockStatus::Held(None));
    assert_eq!(lock.owner().expect("owner"), None);
    assert!(lock.is_locked().expect("is_locked"));
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::WouldBlock { holder: None, .. })
    ));
    assert!(matches!(lock.force_break(), Err(Error::Foreign { .. })));
    assert_eq!(std::fs::read(path).expect("still there"), expected);
}

#[rstest]
#[case::empty(b"".to_vec())]
#[case::garbage(vec![0xde, 0xad, 0xbe, 0xef])]
#[case::truncated(VALID.as_bytes()[..VALID.len() / 2].to_vec())]
#[case::unknown_version(VALID.replace(r#""v":1"#, r#""v":9"#).into_bytes())]
#[case::non_utf8(vec![b'{', 0xff, 0xfe, b'}'])]
fn a_hostile_link_lock_file_is_an_unknown_owner(#[case] bytes: Vec<u8>) {
    let (_dir, path) = scratch();
    std::fs::write(&path, &bytes).expect("write");
    assert_unknown_link_owner(&path, &bytes);
}

#[test]
fn a_hundred_megabyte_record_is_read_with_a_cap() {
    let (_dir, path) = scratch();
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(VALID.as_bytes()).expect("write");
    // Sparse: 100 MB of zeros after a valid-looking start.
    file.set_len(100 * 1024 * 1024).expect("grow");
    drop(file);
    let lock = LockFile::with_strategy(&path, LockStrategy::Link).expect("open");
    assert_eq!(lock.status().expect("status"), LockStatus::Held(None));
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::WouldBlock { holder: None, .. })
    ));
    let meta = std::fs::metadata(&path).expect("still there");
    assert_eq!(meta.len(), 100 * 1024 * 1024);
}

#[test]
fn a_hostile_mkdir_record_is_an_unknown_owner() {
    let (_dir, path) = scratch();
    std::fs::create_dir(&path).expect("mkdir");
    let token = "00112233445566778899aabbccddeeff";
    let record = path.join(format!("{token}.json"));
    let mut file = std::fs::File::create(&record).expect("create");
    file.write_all(b"{\"v\":1,\"tok").expect("write");
    file.set_len(100 * 1024 * 1024).expect("grow");
    drop(file);
    let lock = LockFile::with_strategy(&path, LockStrategy::Mkdir).expect("open");
    assert_eq!(lock.status().expect("status"), LockStatus::Held(None));
    assert!(matches!(
        lock.try_acquire(),
        Err(Error::WouldBlock { holder: None, .. })
    ));
    assert_eq!(
        std::fs::metadata(&record).expect("kept").len(),
        100 * 1024 * 1024
    );
    // Past its grace period, a record that does not parse is stale: the
    // file named after its token is this library's to remove.
    let impatient = LockFile::options()
        .strategy(LockStrategy::Mkdir)
        .grace(std::time::Duration::ZERO)
        .open(&path)
        .expect("open");
    assert_eq!(impatient.break_lock().expect("break"), None);
    assert!(!path.exists());
}

#[test]
fn an_os_lock_file_with_foreign_content_is_never_overwritten() {
    let (_dir, path) = scratch();
    std::fs::write(&path, b"\xff\xfe precious").expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    assert!(matches!(lock.try_acquire(), Err(Error::Foreign { .. })));
    assert_eq!(std::fs::read(&path).expect("kept"), b"\xff\xfe precious");
    assert!(!lock.is_held());
}

#[test]
fn an_os_lock_file_with_a_dead_record_is_free_and_reused() {
    let (_dir, path) = scratch();
    std::fs::write(&path, VALID).expect("write");
    let lock = LockFile::with_strategy(&path, LockStrategy::Os).expect("open");
    assert_eq!(lock.status().expect("status"), LockStatus::Free);
    lock.try_acquire()
        .expect("free: nobody holds the kernel lock");
    assert_eq!(
        lock.owner().expect("owner").map(|o| o.pid),
        Some(std::process::id())
    );
}
