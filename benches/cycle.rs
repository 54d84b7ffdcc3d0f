//! An uncontended acquire + release cycle of each strategy, beside its
//! floor (the bare system calls the strategy needs, owner record included)
//! and beside the crates a Rust user would pick instead, on the system temp
//! directory and on `/dev/shm`.
//!
//! ```sh
//! cargo bench --bench cycle
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use portalock::{LockOptions, LockStrategy};

/// A record of the size portalock writes (about 250 bytes of JSON).
const RECORD: &[u8] = br#"{"v":1,"token":"0123456789abcdef0123456789abcdef","pid":4242,"hostname":"build-7","boot":"aef3770f-7a9a-4275-9428-e64177f19c48","pidns":"pid:[4026531836]","start":1795411051,"acquired_at":"2026-11-22T10:00:00Z","strategy":"mkdir","lease_ms":null}"#;

fn dirs() -> Vec<(&'static str, tempfile::TempDir)> {
    let mut dirs = vec![("tmp", tempfile::tempdir().expect("temp dir"))];
    if Path::new("/dev/shm").is_dir() {
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(("shm", shm));
        }
    }
    dirs
}

fn os_floor(path: &Path) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open");
    file.lock().expect("lock");
    file.write_all(RECORD).expect("write");
    file.set_len(RECORD.len() as u64).expect("truncate");
    file.set_len(0).expect("clear");
    file.unlock().expect("unlock");
}

/// The least an OS lock with an owner record can do on a file it keeps
/// open: lock, write the record, blank it, unlock.
fn os_open_floor(file: &File, blank: &[u8]) {
    file.lock().expect("lock");
    write_at_start(file, RECORD);
    write_at_start(file, blank);
    file.unlock().expect("unlock");
}

/// One positioned write at offset 0 (`pwrite`).
fn write_at_start(file: &File, bytes: &[u8]) {
    #[cfg(unix)]
    std::os::unix::fs::FileExt::write_all_at(file, bytes, 0).expect("write");
    #[cfg(windows)]
    assert_eq!(
        std::os::windows::fs::FileExt::seek_write(file, bytes, 0).expect("write"),
        bytes.len()
    );
}

fn mkdir_floor(path: &Path, record: &Path) {
    std::fs::create_dir(path).expect("mkdir");
    File::create_new(record)
        .and_then(|mut f| f.write_all(RECORD))
        .expect("record");
    std::fs::remove_file(record).expect("unlink");
    std::fs::remove_dir(path).expect("rmdir");
}

fn link_floor(path: &Path, claim: &Path) {
    File::create_new(claim)
        .and_then(|mut f| f.write_all(RECORD))
        .expect("claim");
    std::fs::hard_link(claim, path).expect("link");
    std::fs::remove_file(claim).expect("unlink claim");
    std::fs::remove_file(path).expect("unlink");
}

fn cycle(c: &mut Criterion) {
    for (name, dir) in dirs() {
        let at = |f: &str| -> PathBuf { dir.path().join(f) };
        let mut group = c.benchmark_group(format!("cycle/{name}"));

        for strategy in LockStrategy::ALL {
            // The default (fair: through the turnstile's gate), without
            // the gate (what the gate costs), and with a fencing token
            // (what the counter costs).
            for (suffix, fair, fencing) in [
                ("", true, false),
                ("-unfair", false, false),
                ("-fence", true, true),
            ] {
                let lock = LockOptions::new()
                    .strategy(strategy)
                    .fair(fair)
                    .fencing(fencing)
                    .open(at(&format!("{strategy}{suffix}.lock")))
                    .expect("open");
                group.bench_function(format!("portalock/{strategy}{suffix}"), |b| {
                    b.iter(|| {
                        lock.acquire().expect("acquire");
                        lock.release().expect("release");
                    })
                });
            }
            // A reader's cycle: `lock_shared` and its release (for `Mkdir`
            // and `Link`: the lock taken and let go, a registration made
            // and removed).
            let lock = LockOptions::new()
                .strategy(strategy)
                .open(at(&format!("{strategy}-shared.lock")))
                .expect("open");
            group.bench_function(format!("portalock/{strategy}-shared"), |b| {
                b.iter(|| {
                    lock.lock_shared()
                        .expect("shared")
                        .release()
                        .expect("release")
                })
            });
        }

        let (os, mk, rec, ln, claim) = (
            at("floor-os.lock"),
            at("floor-mkdir.lock"),
            at("floor-mkdir.lock/0123.json"),
            at("floor-link.lock"),
            at(".floor-link.lock.0123.owner"),
        );
        group.bench_function("floor/os", |b| b.iter(|| os_floor(&os)));
        let kept = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(at("floor-os-open.lock"))
            .expect("open");
        let blank = vec![b' '; RECORD.len()];
        group.bench_function("floor/os-kept-open", |b| {
            b.iter(|| os_open_floor(&kept, &blank))
        });
        group.bench_function("floor/mkdir", |b| b.iter(|| mkdir_floor(&mk, &rec)));
        group.bench_function("floor/link", |b| b.iter(|| link_floor(&ln, &claim)));

        // Peers, each locking one file it keeps open (no owner record).
        let open = |f: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(at(f))
                .expect("open")
        };
        let mut fdlock = fd_lock::RwLock::new(open("fd-lock.lock"));
        group.bench_function("peer/fd-lock", |b| {
            b.iter(|| drop(fdlock.write().expect("lock")))
        });
        let fs4_file = open("fs4.lock");
        group.bench_function("peer/fs4", |b| {
            b.iter(|| {
                fs4::fs_std::FileExt::lock_exclusive(&fs4_file).expect("lock");
                fs4::fs_std::FileExt::unlock(&fs4_file).expect("unlock");
            })
        });
        let mut fslock = fslock::LockFile::open(&at("fslock.lock")).expect("open");
        group.bench_function("peer/fslock", |b| {
            b.iter(|| {
                fslock.lock().expect("lock");
                fslock.unlock().expect("unlock");
            })
        });
        let ours = open("portalock-flock.lock");
        group.bench_function("portalock/flock", |b| {
            b.iter(|| {
                portalock::flock::lock(&ours, portalock::flock::LockFlags::EXCLUSIVE)
                    .expect("lock");
                portalock::flock::unlock(&ours).expect("unlock");
            })
        });
        let std_file = open("std.lock");
        group.bench_function("peer/std-file-lock", |b| {
            b.iter(|| {
                std_file.lock().expect("lock");
                std_file.unlock().expect("unlock");
            })
        });
        group.finish();
    }
}

criterion_group!(benches, cycle);
criterion_main!(benches);
