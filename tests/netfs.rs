//! Locks on network file systems: one export, mounted by two clients.
//!
//! CI runs these tests once per *lane*, each a server and two client
//! mounts of one export, and says which through the environment:
//!
//! - `PORTALOCK_NETFS`: the lane. `nfs4.2`, `nfs3` (with `lockd`),
//!   `nfs3-nolock`, `smb3` and `smb3-nobrl` are the kernel's own clients of
//!   a kernel NFS server or Samba, in a throwaway Linux guest
//!   (`.ci/netfs.sh run LANE -- COMMAND`); `sshfs` is two FUSE mounts on
//!   this machine (`.ci/sshfs.sh up BASE`).
//! - `PORTALOCK_NETFS_A`, `PORTALOCK_NETFS_B`: the export through client A
//!   and through client B.
//! - `PORTALOCK_NETFS_AS_B` (optional): a program that runs its arguments
//!   as client B's machine, with its own host name, machine id, boot id and
//!   PID namespace. Client B's processes then see client A's as another
//!   machine's, and the other way round, as real machines do: a holder
//!   killed on one client is recovered from the other only through its
//!   lease. Without it, both clients are this machine.
//! - `PORTALOCK_NETFS_SERVER` (optional): the export's directory on the
//!   server, to change it behind the clients' backs.
//! - `PORTALOCK_NETFS_RESTART` (optional): a program that restarts the
//!   server.
//!
//! Without `PORTALOCK_NETFS` they fail, saying so: they are ignored in a
//! plain `cargo test` for that reason. They print their figures on lines
//! that start with `netfs: ` (run them with `--nocapture`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portalock::{Error, FileSystem, Locality, LockFile, LockOptions, LockStrategy};
use rstest::rstest;
use rstest_reuse::{apply, template};

use common::{spawn_command, Proc, CHILD_ARGS};

#[test]
fn child() {
    common::child_entry();
}

const NEEDS: &str = "needs two client mounts of one export: PORTALOCK_NETFS=LANE, \
                     PORTALOCK_NETFS_A and PORTALOCK_NETFS_B (.ci/netfs.sh run LANE, or \
                     .ci/sshfs.sh up BASE)";

/// Lock operations per counting process; two processes count on each
/// client.
const ITERATIONS: u32 = 30;
const PROCESSES_PER_CLIENT: usize = 2;
/// The lease of the holders that are killed.
const LEASE: Duration = Duration::from_millis(1500);
/// The longest any one step of these tests may take (a server restart,
/// the slowest lane's counter).
const BOUND: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Nfs,
    Smb,
    Fuse,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    A,
    B,
}

/// The lane these tests run in, from the environment.
struct Lane {
    name: String,
    kind: Kind,
    /// Whether OS locks taken through one client exclude the other's.
    os_shared: bool,
    a: PathBuf,
    b: PathBuf,
    as_b: Option<PathBuf>,
    server: Option<PathBuf>,
    restart: Option<PathBuf>,
}

fn lane() -> Lane {
    let name = std::env::var("PORTALOCK_NETFS")
        .unwrap_or_else(|_| panic!("PORTALOCK_NETFS is not set: this test {NEEDS}"));
    let (kind, os_shared) = match name.as_str() {
        "nfs4.2" | "nfs3" => (Kind::Nfs, true),
        "nfs3-nolock" => (Kind::Nfs, false),
        "smb3" => (Kind::Smb, true),
        "smb3-nobrl" => (Kind::Smb, false),
        "sshfs" => (Kind::Fuse, false),
        other => panic!("PORTALOCK_NETFS={other} is no lane this test knows"),
    };
    let path = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let mount =
        |var: &str| path(var).unwrap_or_else(|| panic!("{var} is not set: this test {NEEDS}"));
    Lane {
        kind,
        os_shared,
        a: mount("PORTALOCK_NETFS_A"),
        b: mount("PORTALOCK_NETFS_B"),
        as_b: path("PORTALOCK_NETFS_AS_B"),
        server: path("PORTALOCK_NETFS_SERVER"),
        restart: path("PORTALOCK_NETFS_RESTART"),
        name,
    }
}

/// A fresh directory of the export, and its path through each client (and
/// on the server, where the lane says where that is).
struct Shared {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    server: Option<PathBuf>,
}

impl Shared {
    fn on(&self, client: Client) -> &Path {
        match client {
            Client::A => &self.a,
            Client::B => &self.b,
        }
    }
}

impl Lane {
    fn shared(&self) -> Shared {
        let dir = tempfile::Builder::new()
            .prefix("netfs-")
            .tempdir_in(&self.a)
            .expect("a directory through client A");
        let name = dir.path().file_name().expect("name").to_owned();
        let b = self.b.join(&name);
        assert!(b.is_dir(), "client B does not show {}", b.display());
        Shared {
            a: dir.path().to_owned(),
            b,
            server: self.server.as_ref().map(|s| s.join(&name)),
            _dir: dir,
        }
    }

    /// Whether the two clients are two machines.
    fn two_machines(&self) -> bool {
        self.as_b.is_some()
    }

    /// Why the README's table refuses `strategy` on this lane, if it does:
    /// the name of the error an explicit lock gets when its handle is
    /// opened.
    fn refusal(&self, strategy: LockStrategy) -> Option<&'static str> {
        match strategy {
            LockStrategy::Os if !self.os_shared => Some("OsLocksNotShared"),
            LockStrategy::Link if self.kind == Kind::Smb => Some("Unsupported"),
            _ => None,
        }
    }

    /// What `Auto` picks here, by the README's table.
    fn auto(&self) -> LockStrategy {
        match self.kind {
            Kind::Nfs => LockStrategy::Link,
            Kind::Smb | Kind::Fuse => LockStrategy::Mkdir,
        }
    }

    /// Whether data kept under a lock must be replaced (a new file renamed
    /// over the old), not rewritten in place: on NFSv3, whose clients tell
    /// a changed file by a time stamp as coarse as the server's clock tick
    /// (README, "Per file system").
    fn replace_data(&self) -> bool {
        self.name.starts_with("nfs3")
    }

    /// A child of this test executable on `client`.
    fn spawn_on(&self, client: Client, role: &str, args: &[&str]) -> Proc {
        let exe = std::env::current_exe().expect("test executable path");
        let mut cmd = match (client, &self.as_b) {
            (Client::B, Some(as_b)) => {
                let mut cmd = Command::new(as_b);
                cmd.arg(exe);
                cmd
            }
            _ => Command::new(exe),
        };
        cmd.args(CHILD_ARGS);
        if self.replace_data() {
            cmd.env("PORTALOCK_TEST_COUNTER_BY_RENAME", "1");
        }
        spawn_command(cmd, role, args)
    }
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn spec(strategy: LockStrategy) -> &'static str {
    strategy.as_str()
}

/// The directory's entries but `keep`, once what the clients remove on
/// their own (hidden renames of files unlinked while open, which FUSE and
/// NFS clients remove when the file is closed) is gone, or after a bound.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    let list = || -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !keep.contains(&name.as_str()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = list();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = list();
    }
    left
}

/// Counting processes on both clients, `PROCESSES_PER_CLIENT` each,
/// started together; the total they counted and how long they took.
fn count_on_both(lane: &Lane, dir: &Shared, role: &str, strategy: &str) -> (Vec<Proc>, Instant) {
    std::fs::write(dir.a.join("counter"), "0\n").expect("counter");
    let n = ITERATIONS.to_string();
    let mut procs = Vec::new();
    for client in [Client::A, Client::B] {
        let root = dir.on(client);
        let lock = root.join("counter.lock");
        let counter = root.join("counter");
        for _ in 0..PROCESSES_PER_CLIENT {
            procs.push(lane.spawn_on(client, role, &[strategy, utf8(&lock), utf8(&counter), &n]));
        }
    }
    for p in &mut procs {
        p.expect("READY");
    }
    let started = Instant::now();
    for p in &mut procs {
        p.send("go");
    }
    (procs, started)
}

fn read_counter(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .expect("counter")
        .trim()
        .parse()
        .expect("a number in the counter")
}

/// Every strategy, `Auto` first: `#[apply(lane_strategies)]` on a test
/// with an argument `strategy: LockStrategy` (a lane skips those its
/// README row refuses).
#[template]
#[rstest]
fn lane_strategies(
    #[values(
        LockStrategy::Auto,
        LockStrategy::Mkdir,
        LockStrategy::Link,
        LockStrategy::Os
    )]
    strategy: LockStrategy,
) {
}

fn expected_count() -> u64 {
    (2 * PROCESSES_PER_CLIENT) as u64 * u64::from(ITERATIONS)
}

#[test]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn the_file_system_and_auto_are_what_the_readme_table_says() {
    let lane = lane();
    let dir = lane.shared();
    let auto = lane.auto();
    let mut name = String::new();
    for root in [&dir.a, &dir.b] {
        let fs = FileSystem::detect(root).expect("detect");
        let names: &[&str] = match lane.kind {
            Kind::Nfs => &["nfs", "nfs4"],
            Kind::Smb => &["cifs", "smb3"],
            Kind::Fuse => &["fuse.sshfs"],
        };
        assert!(
            names.contains(&fs.name()),
            "{}: {}",
            root.display(),
            fs.name()
        );
        let locality = match lane.kind {
            Kind::Nfs | Kind::Smb => Locality::Network,
            Kind::Fuse => Locality::Fuse,
        };
        assert_eq!(fs.locality(), locality);
        assert_eq!(fs.os_locks_shared(), lane.os_shared, "{}", fs.name());
        assert_eq!(fs.auto_strategy(), auto, "{}", fs.name());
        name = fs.name().to_owned();
    }
    // Auto picks it for a lock through either client, and records it: the
    // other client reads what the holder picked.
    let via_a = LockFile::new(dir.a.join("auto.lock")).expect("open");
    assert_eq!(via_a.strategy(), auto);
    via_a.acquire().expect("acquire");
    let mut via_b = lane.spawn_on(Client::B, "race", &["auto", utf8(&dir.b.join("auto.lock"))]);
    via_b.expect("READY");
    via_b.send("try");
    assert_eq!(via_b.expect("TRIED"), "WouldBlock");
    let seen = LockFile::new(dir.b.join("auto.lock")).expect("open");
    assert_eq!(seen.strategy(), auto);
    let owner = seen.owner().expect("owner").expect("a record");
    assert_eq!(owner.strategy, auto);
    assert_eq!(owner.pid, std::process::id());
    via_a.release().expect("release");
    // (A client may see the released lock for a moment longer: SMB
    // clients keep names for up to `actimeo`, one second by default.)
    via_b.send("wait 10000");
    assert_eq!(via_b.expect("WAITED"), "Ok");
    via_b.send("release");
    assert_eq!(via_b.expect("RELEASED"), "Ok");
    // Also for a lock directory that does not exist yet.
    let deeper = LockFile::new(dir.b.join("later/x.lock")).expect("open");
    assert_eq!(deeper.strategy(), auto);
    println!(
        "netfs: {} is {name}: Auto picks {auto}; OS locks {}",
        lane.name,
        if lane.os_shared {
            "reach the server"
        } else {
            "stay on each client"
        }
    );
}

/// Where OS locks reach the server, an explicit `Os` lock through one
/// client excludes the other (busy, not an error: SMB answers a
/// conflicting lock with "permission denied"), and a blocked waiter gets
/// it when it is released. Where they do not, it is refused when the
/// handle is opened, and the refusal is right: waived, the lock does not
/// exclude.
#[test]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn an_explicit_os_lock_excludes_across_clients_or_is_refused() {
    let lane = lane();
    let dir = lane.shared();
    let path_a = dir.a.join("os.lock");
    let path_b = dir.b.join("os.lock");
    if lane.os_shared {
        let mut holder = lane.spawn_on(Client::A, "hold", &["os", utf8(&path_a)]);
        holder.expect("ACQUIRED");
        let mut other = lane.spawn_on(Client::B, "race", &["os", utf8(&path_b)]);
        other.expect("READY");
        other.send("try");
        assert_eq!(other.expect("TRIED"), "WouldBlock");
        other.send("wait 60000");
        holder.send("release");
        assert_eq!(holder.expect("RELEASED"), "Ok");
        assert_eq!(other.expect("WAITED"), "Ok");
        holder.send("try");
        assert_eq!(holder.expect("TRIED"), "WouldBlock");
        other.send("release");
        assert_eq!(other.expect("RELEASED"), "Ok");
        holder.send("try");
        assert_eq!(holder.expect("TRIED"), "Ok");
        holder.send("release");
        assert_eq!(holder.expect("RELEASED"), "Ok");
        println!(
            "netfs: {}: an explicit os lock excludes across the clients",
            lane.name
        );
        return;
    }
    match LockFile::with_strategy(&path_a, LockStrategy::Os) {
        Err(e @ Error::OsLocksNotShared { .. }) => {
            let message = e.to_string();
            assert!(message.contains("os.lock"), "{message}");
            assert_eq!(
                std::io::Error::from(e).kind(),
                std::io::ErrorKind::Unsupported
            );
        }
        other => panic!("expected OsLocksNotShared, got {other:?}"),
    }
    assert!(!path_a.exists(), "a refused lock creates nothing");
    // Waived, an OS lock taken through one client does not exclude a
    // holder through the other.
    let via_a = LockOptions::new()
        .strategy(LockStrategy::Os)
        .trust_os_locks(true)
        .open(&path_a)
        .expect("open trusted");
    via_a.try_acquire().expect("through a");
    let mut via_b = lane.spawn_on(Client::B, "race", &["os+trust", utf8(&path_b)]);
    via_b.expect("READY");
    via_b.send("try");
    assert_eq!(
        via_b.expect("TRIED"),
        "Ok",
        "an OS lock through client A excluded client B on {}",
        lane.name
    );
    via_b.send("release");
    via_b.expect("RELEASED");
    let _ = via_a.release();
    println!(
        "netfs: {}: an explicit os lock is refused (OsLocksNotShared)",
        lane.name
    );
}

/// For each strategy: processes on both clients count exactly under it; a
/// holder with a lease killed on client A is recovered from client B once
/// the lease ran out (at once where both clients are one machine); one
/// without a lease is not broken from the other machine (its client,
/// which can tell it is dead, breaks it); nothing is left behind.
#[apply(lane_strategies)]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn each_strategy_excludes_across_clients_and_recovers_by_its_rules(strategy: LockStrategy) {
    let lane = lane();
    if let Some(refusal) = lane.refusal(strategy) {
        let refused = LockFile::with_strategy(lane.a.join("refused.lock"), strategy);
        assert_eq!(variant(&refused.map(drop)), refusal);
        println!(
            "netfs: {} {:<5}: refused when opened ({refusal}), as the README's table says",
            lane.name,
            spec(strategy)
        );
        return;
    }
    let started = Instant::now();
    let dir = lane.shared();
    let s = spec(strategy);

    // The counter.
    let (procs, counting) = count_on_both(&lane, &dir, "count", s);
    for mut p in procs {
        p.expect("DONE");
        assert!(p.wait().success());
    }
    let counted = counting.elapsed();
    let total = read_counter(&dir.b.join("counter"));
    assert_eq!(total, expected_count(), "{} {s}", lane.name);
    // Nothing left behind but the counter (and an Os lock's file; no lock
    // has a turnstile's gate on a network file system).
    let keep: &[&str] = if strategy == LockStrategy::Os {
        &["counter", "counter.lock"]
    } else {
        &["counter"]
    };
    let mut left = leftovers(&dir.a, keep);
    if strategy == LockStrategy::Link && lane.kind == Kind::Fuse {
        // A known limit of explicit Link locks on sshfs (README, "Per
        // file system"): hidden renames a waiter on the same mount was
        // reading may stay. Nothing else may.
        left.retain(|name| !name.starts_with(".fuse_hidden"));
    }
    assert!(left.is_empty(), "left behind: {left:?}");

    // A holder with a lease, killed on client A.
    let leased = dir.a.join("leased.lock");
    let lease_ms = LEASE.as_millis().to_string();
    let mut holder = lane.spawn_on(Client::A, "hold", &[s, utf8(&leased), &lease_ms]);
    holder.expect("ACQUIRED");
    let mut waiter = lane.spawn_on(Client::B, "race", &[s, utf8(&dir.b.join("leased.lock"))]);
    waiter.expect("READY");
    waiter.send("try");
    assert_eq!(waiter.expect("TRIED"), "WouldBlock");
    holder.kill();
    let killed = Instant::now();
    waiter.send(&format!("wait {}", BOUND.as_millis()));
    assert_eq!(waiter.expect("WAITED"), "Ok");
    let recovered = killed.elapsed();
    if lane.two_machines() && strategy != LockStrategy::Os {
        // Only the lease can tell another machine's holder is gone.
        assert!(
            recovered >= LEASE.mul_f32(0.9),
            "recovered after {recovered:?}, before the lease of {LEASE:?} ran out"
        );
    }
    waiter.send("release");
    assert_eq!(waiter.expect("RELEASED"), "Ok");

    // A holder without a lease, killed on client A.
    let unleased = dir.a.join("unleased.lock");
    let mut holder = lane.spawn_on(Client::A, "hold", &[s, utf8(&unleased)]);
    let pid: u32 = holder.expect("ACQUIRED").parse().expect("pid");
    holder.kill();
    let mut other = lane.spawn_on(Client::B, "race", &[s, utf8(&dir.b.join("unleased.lock"))]);
    other.expect("READY");
    let without_lease = if strategy == LockStrategy::Os {
        // The server drops a dead client process's OS lock.
        other.send("wait 30000");
        assert_eq!(other.expect("WAITED"), "Ok");
        other.send("release");
        assert_eq!(other.expect("RELEASED"), "Ok");
        "freed by the server at once"
    } else if lane.two_machines() {
        other.send("owner");
        assert_eq!(other.expect("OWNER"), format!("{pid} Unknown"));
        other.send("wait 2000");
        assert_eq!(
            other.expect("WAITED"),
            "Timeout",
            "another machine's lock without a lease was broken"
        );
        // Its own machine knows it is dead, and breaks it.
        let own = LockOptions::new()
            .strategy(strategy)
            .poll_interval(Duration::from_millis(20))
            .open(&unleased)
            .expect("open");
        own.acquire_timeout(Duration::from_secs(30))
            .expect("its own client breaks a dead holder's lock");
        own.release().expect("release");
        "kept from the other client (owner unknown there), broken by its own"
    } else {
        other.send("wait 30000");
        assert_eq!(other.expect("WAITED"), "Ok");
        other.send("release");
        assert_eq!(other.expect("RELEASED"), "Ok");
        "broken from the other client (one machine: the owner is dead)"
    };
    println!(
        "netfs: {} {:<5}: counter {total}/{} from {} processes on 2 clients in {:.1} s; \
         killed holder with a {:.1} s lease recovered from the other client after {:.1} s; \
         killed holder without a lease {without_lease}; {:.1} s",
        lane.name,
        s,
        expected_count(),
        2 * PROCESSES_PER_CLIENT,
        counted.as_secs_f64(),
        LEASE.as_secs_f64(),
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Readers and writers (`lock_shared` beside `lock`) across the clients:
/// readers on both share the lock, a writer on either is kept out while
/// they read and gets in once they are gone, a reader is kept out while a
/// writer holds, a reader with a lease killed on client A is recovered
/// from client B once its lease ran out, and writers counting on both
/// clients amid readers reading without a gap stay exact.
#[apply(lane_strategies)]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn readers_and_writers_exclude_across_clients(strategy: LockStrategy) {
    let lane = lane();
    if lane.refusal(strategy).is_some() {
        return;
    }
    let started = Instant::now();
    let dir = lane.shared();
    let s = spec(strategy);
    let (on_a, on_b) = (dir.a.join("rw.lock"), dir.b.join("rw.lock"));
    let mut reader_a = lane.spawn_on(Client::A, "reader", &[s, utf8(&on_a)]);
    reader_a.expect("SHARED");
    let mut reader_b = lane.spawn_on(Client::B, "reader", &[s, utf8(&on_b)]);
    reader_b.expect("SHARED");
    let mut writer = lane.spawn_on(Client::B, "race", &[s, utf8(&on_b)]);
    writer.expect("READY");
    writer.send("try");
    assert_eq!(
        writer.expect("TRIED"),
        "WouldBlock",
        "{s}: beside two readers"
    );
    reader_a.send("release");
    assert_eq!(reader_a.expect("RELEASED"), "Ok");
    writer.send("try");
    assert_eq!(
        writer.expect("TRIED"),
        "WouldBlock",
        "{s}: beside one reader"
    );
    reader_b.send("release");
    assert_eq!(reader_b.expect("RELEASED"), "Ok");
    writer.send("wait 30000");
    assert_eq!(writer.expect("WAITED"), "Ok", "{s}: no reader left");
    let mut other = lane.spawn_on(Client::A, "race", &[s, utf8(&on_a)]);
    other.expect("READY");
    other.send("tryshared");
    assert_eq!(
        other.expect("TRIEDSHARED"),
        "WouldBlock",
        "{s}: a reader beside a writer"
    );
    writer.send("release");
    assert_eq!(writer.expect("RELEASED"), "Ok");
    other.send("tryshared");
    assert_eq!(other.expect("TRIEDSHARED"), "Ok", "{s}: free again");

    // A reader with a lease, killed on client A.
    let lease_ms = LEASE.as_millis().to_string();
    let mut leased = lane.spawn_on(Client::A, "reader", &[s, utf8(&on_a), &lease_ms]);
    leased.expect("SHARED");
    leased.kill();
    let killed = Instant::now();
    writer.send(&format!("wait {}", BOUND.as_millis()));
    assert_eq!(
        writer.expect("WAITED"),
        "Ok",
        "{s}: a killed reader's lease"
    );
    let recovered = killed.elapsed();
    if lane.two_machines() && strategy != LockStrategy::Os {
        assert!(
            recovered >= LEASE.mul_f32(0.9),
            "{s}: recovered after {recovered:?}, before the reader's lease of {LEASE:?} ran out"
        );
    }
    writer.send("release");
    assert_eq!(writer.expect("RELEASED"), "Ok");

    // Writers count on both clients while a reader on each reads without
    // a gap: writer preference. Not for `Os` locks here: the server's lock
    // manager grants a shared lock beside shared holders while a writer
    // waits (README, "Readers and writers").
    let counted = if strategy == LockStrategy::Os {
        "no writer preference for os locks here (the server orders them)".to_owned()
    } else {
        count_amid_readers(&lane, &dir, s)
    };
    writer.send("wait 1");
    assert_eq!(writer.expect("WAITED"), "Ok", "{s}: free at the end");
    writer.send("release");
    assert_eq!(writer.expect("RELEASED"), "Ok");
    println!(
        "netfs: {} {:<5}: readers share across clients, writers wait for them; killed reader \
         with a {:.1} s lease recovered from the other client after {:.1} s; {counted}; {:.1} s",
        lane.name,
        s,
        LEASE.as_secs_f64(),
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Writers counting on both clients (`count_on_both`) while a reader on
/// each reads without a gap; what they counted, in words.
fn count_amid_readers(lane: &Lane, dir: &Shared, s: &str) -> String {
    let mut readers: Vec<Proc> = [Client::A, Client::B]
        .into_iter()
        .map(|client| {
            let lock = dir.on(client).join("counter.lock");
            lane.spawn_on(client, "read-loop", &[s, utf8(&lock), "20"])
        })
        .collect();
    for r in &mut readers {
        r.expect("READING");
    }
    let (procs, counting) = count_on_both(lane, dir, "count", s);
    for mut p in procs {
        p.expect("DONE");
        assert!(p.wait().success());
    }
    let counted = counting.elapsed();
    let mut reads = 0;
    for mut r in readers {
        r.close_stdin();
        reads += r.expect("READS").parse::<u64>().expect("a count");
        assert!(r.wait().success());
    }
    let total = read_counter(&dir.b.join("counter"));
    assert_eq!(total, expected_count(), "{} {s}", lane.name);
    format!(
        "counter {total}/{} amid {reads} reads in {:.1} s",
        expected_count(),
        counted.as_secs_f64()
    )
}

/// `sync(true)` (the owner record and the lock's directory flushed before
/// the lock counts as taken) works on every strategy the lane allows.
#[apply(lane_strategies)]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn synced_locks_exclude_across_clients(strategy: LockStrategy) {
    let lane = lane();
    if lane.refusal(strategy).is_some() {
        return;
    }
    let dir = lane.shared();
    let s = format!("{}+sync", spec(strategy));
    let mut holder = lane.spawn_on(Client::A, "hold", &[&s, utf8(&dir.a.join("s.lock"))]);
    holder.expect("ACQUIRED");
    let mut other = lane.spawn_on(Client::B, "race", &[&s, utf8(&dir.b.join("s.lock"))]);
    other.expect("READY");
    other.send("try");
    assert_eq!(other.expect("TRIED"), "WouldBlock");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    other.send("wait 10000");
    assert_eq!(other.expect("WAITED"), "Ok");
    other.send("release");
    assert_eq!(other.expect("RELEASED"), "Ok");
}

/// OS locks exclude across the clients exactly where the README's table
/// says: a counter that trusts them (no refusal) is exact there, and loses
/// updates or lets two processes in where they stay on each client (the
/// negative control: it proves the lane can fail).
#[test]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn os_locks_that_the_table_calls_unshared_let_two_clients_in() {
    let lane = lane();
    let dir = lane.shared();
    let (procs, counting) = count_on_both(&lane, &dir, "count-loose", "os+trust");
    let mut overlaps = 0u64;
    for mut p in procs {
        overlaps += p
            .expect("OVERLAPS")
            .parse::<u64>()
            .expect("a number of overlaps");
        p.expect("DONE");
        assert!(p.wait().success());
    }
    let total = read_counter(&dir.b.join("counter"));
    let exact = total == expected_count() && overlaps == 0;
    println!(
        "netfs: {} os (trusted): counter {total}/{}, {overlaps} overlaps in {:.1} s: {}",
        lane.name,
        expected_count(),
        counting.elapsed().as_secs_f64(),
        match (lane.os_shared, exact) {
            (true, true) => "excluded, as the table says",
            (false, false) => "did not exclude, as the table says (negative control)",
            _ => "NOT what the table says",
        }
    );
    assert_eq!(
        exact, lane.os_shared,
        "the README's table is wrong for {}",
        lane.name
    );
}

/// `portalock run` on both clients serialises its commands: the CLI's
/// counter across the clients.
#[cfg(feature = "cli")]
#[rstest]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn the_cli_counts_across_clients(#[values("auto", "mkdir", "link", "os")] strategy: &str) {
    const RUNS: u32 = 5;
    let lane = lane();
    if lane.refusal(strategy.parse().expect("strategy")).is_some() {
        return;
    }
    let dir = lane.shared();
    std::fs::write(dir.a.join("counter"), "0\n").expect("counter");
    let runs = RUNS.to_string();
    let mut procs = Vec::new();
    for client in [Client::A, Client::B] {
        let root = dir.on(client);
        for _ in 0..PROCESSES_PER_CLIENT {
            procs.push(lane.spawn_on(
                client,
                "run-count",
                &[
                    env!("CARGO_BIN_EXE_portalock"),
                    strategy,
                    utf8(&root.join("counter.lock")),
                    utf8(&root.join("counter")),
                    &runs,
                ],
            ));
        }
    }
    for p in &mut procs {
        p.expect("READY");
    }
    let started = Instant::now();
    for p in &mut procs {
        p.send("go");
    }
    for mut p in procs {
        p.expect("DONE");
        assert!(p.wait().success());
    }
    let total = read_counter(&dir.b.join("counter"));
    let expected = (2 * PROCESSES_PER_CLIENT) as u64 * u64::from(RUNS);
    assert_eq!(total, expected, "{} {strategy}", lane.name);
    println!(
        "netfs: {} cli {strategy:<5}: counter {total}/{expected} from `portalock run` on 2 clients in {:.1} s",
        lane.name,
        started.elapsed().as_secs_f64()
    );
}

/// The lock's directory removed and made again on the server while a
/// client holds a lock in it: the holder is told it lost the lock (never
/// that it still holds it), a new holder takes the lock in the new
/// directory, and the old holder's release leaves it alone.
#[rstest]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn a_lock_directory_replaced_on_the_server_under_its_holder(
    #[values(LockStrategy::Mkdir, LockStrategy::Link, LockStrategy::Os)] strategy: LockStrategy,
) {
    let lane = lane();
    if lane.refusal(strategy).is_some() {
        return;
    }
    let dir = lane.shared();
    let server = dir
        .server
        .clone()
        .unwrap_or_else(|| panic!("PORTALOCK_NETFS_SERVER is not set: this test {NEEDS}"));
    std::fs::create_dir(dir.a.join("d")).expect("mkdir");
    let holder = LockOptions::new()
        .strategy(strategy)
        .poll_interval(Duration::from_millis(20))
        .open(dir.a.join("d/x.lock"))
        .expect("open");
    holder.acquire().expect("acquire");
    std::fs::remove_dir_all(server.join("d")).expect("remove on the server");
    std::fs::create_dir(server.join("d")).expect("make again on the server");
    // Told it lost the lock; on SMB, where the client answers an open
    // of a file in a directory replaced on the server with EINVAL, an I/O
    // error (it cannot tell): never Ok.
    let held = holder.ensure_held();
    assert!(
        matches!(held, Err(Error::LockLost { .. }))
            || (lane.kind == Kind::Smb && matches!(held, Err(Error::Io { .. }))),
        "ensure_held said {held:?} for a lock whose directory was replaced"
    );
    let mut other = lane.spawn_on(
        Client::B,
        "race",
        &[spec(strategy), utf8(&dir.b.join("d/x.lock"))],
    );
    other.expect("READY");
    other.send(&format!("wait {}", BOUND.as_millis()));
    assert_eq!(other.expect("WAITED"), "Ok");
    let released = holder.release();
    assert!(
        matches!(released, Err(Error::LockLost { .. }))
            || (lane.kind == Kind::Smb && matches!(released, Err(Error::Io { .. }))),
        "release of a replaced lock said {released:?}"
    );
    other.send("check");
    assert_eq!(
        other.expect("CHECKED"),
        "Ok",
        "the old holder's release removed the new lock"
    );
    other.send("release");
    assert_eq!(other.expect("RELEASED"), "Ok");
    println!(
        "netfs: {} {:<5}: directory replaced on the server: ensure_held {}, release {}",
        lane.name,
        spec(strategy),
        variant(&held),
        variant(&released)
    );
}

/// A wait in an async runtime goes on through errors that may pass on a
/// network file system (a server restarting or out of reach: here, `EIO`
/// from the step that makes the lock, more times in a row than the quick
/// retries cover), as a blocking wait does, and takes the lock once the
/// server answers again; it does not fail at the first such error.
#[cfg(all(feature = "tokio", feature = "failpoints"))]
#[rstest]
#[case::mkdir(LockStrategy::Mkdir, "mkdir.acquire.mkdir")]
#[case::link(LockStrategy::Link, "link.acquire.claim")]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn an_async_wait_goes_on_through_errors_that_may_pass(
    #[case] strategy: LockStrategy,
    #[case] step: &str,
) {
    let lane = lane();
    if lane.refusal(strategy).is_some() {
        return; // refused when opened: see the test above
    }
    let dir = lane.shared();
    let lock = LockOptions::new()
        .strategy(strategy)
        .poll_interval(Duration::from_millis(20))
        .open(dir.a.join("async.lock"))
        .expect("open");
    let scenario = fail::FailScenario::setup();
    // Four tries per look (one and three quick retries), so 12 failures
    // outlast three looks.
    fail::cfg(step, "12*return(5)").expect("configure the fault point");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let taken = runtime.block_on(lock.lock_timeout_async(BOUND));
    scenario.teardown();
    let guard = match taken {
        Ok(guard) => guard,
        Err(e) => panic!(
            "{} {}: the async wait failed: {e}",
            lane.name,
            spec(strategy)
        ),
    };
    guard.release().expect("release");
    println!(
        "netfs: {} {:<5}: an async wait went on through 12 I/O errors and took the lock",
        lane.name,
        spec(strategy)
    );
}

/// The answer to `want` from a holder whose lock may have been lost: a
/// lost lock runs the holder's `on_lost` callback (it says `ONLOST`) once,
/// from whichever look found it lost first (a check, the release), so
/// that line may come before any answer.
fn past_onlost(holder: &mut Proc, want: &str, name: &str) -> String {
    loop {
        match holder.next_event() {
            (event, _) if event == "ONLOST" => continue,
            (event, answer) if event == want => break answer,
            other => panic!("{name}: the holder said {other:?}, not {want}"),
        }
    }
}

fn variant(result: &Result<(), Error>) -> String {
    match result {
        Ok(()) => "Ok".to_owned(),
        Err(Error::Io { cause, .. }) => format!("Io({:?})", cause.kind()),
        Err(e) => format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The server restarts (with its grace period) under a holder and a
/// waiter of each strategy, on two clients. For the length of the grace
/// period and more, the waiter may get the lock only if the holder lost
/// it; and then the holder is told so (`LockLost`), never that it still
/// holds. A holder that kept it releases it, and the waiter gets it then:
/// never two holders.
/// Fencing tokens across two clients: processes on both take the lock
/// with `fencing`, each appending its token to a log that refuses a token
/// not larger than the last; one process on client A is killed while the
/// others go on (its lock, if it held one, is broken by its peers on A).
/// The log grows strictly.
#[rstest]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn fencing_tokens_grow_across_clients(
    #[values(LockStrategy::Auto, LockStrategy::Mkdir, LockStrategy::Link)] strategy: LockStrategy,
) {
    let lane = lane();
    if lane.refusal(strategy).is_some() {
        return;
    }
    let dir = lane.shared();
    let s = spec(strategy);
    let n = ITERATIONS.to_string();
    let mut procs = Vec::new();
    for client in [Client::A, Client::B] {
        let root = dir.on(client);
        let (lock, log) = (root.join("x.lock"), root.join("log"));
        for _ in 0..PROCESSES_PER_CLIENT {
            procs.push(lane.spawn_on(client, "fence-log", &[s, utf8(&lock), utf8(&log), &n]));
        }
    }
    // One more on client A, killed once the log shows it has begun.
    let mut victim = lane.spawn_on(
        Client::A,
        "fence-log",
        &[s, utf8(&dir.a.join("x.lock")), utf8(&dir.a.join("log")), &n],
    );
    let deadline = Instant::now() + BOUND;
    while std::fs::read_to_string(dir.a.join("log")).map_or(0, |text| text.lines().count()) < 3 {
        assert!(Instant::now() < deadline, "no acquisition logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.signal("KILL");
    let _ = victim.wait_open();
    for mut p in procs {
        assert_eq!(p.expect("DONE"), "");
        assert!(p.wait().success());
    }
    let text = std::fs::read_to_string(dir.b.join("log")).expect("log");
    let tokens: Vec<u64> = text.lines().map(|l| l.parse().expect("a token")).collect();
    assert!(
        tokens.len() >= expected_count() as usize,
        "{} {s}: {tokens:?}",
        lane.name
    );
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "{} {s}: {tokens:?}",
        lane.name
    );
    println!(
        "netfs: {} {s:<5}: fencing tokens grew over {} acquisitions on two clients, one process killed",
        lane.name,
        tokens.len()
    );
}

#[test]
#[ignore = "needs two mounts of one export (see the module docs); .ci/run runs it"]
fn a_server_restart_under_holders_and_waiters_never_makes_two_holders() {
    /// Longer than the lanes' grace periods (10 s), and than the SMB
    /// client's reconnect.
    const SETTLE: Duration = Duration::from_secs(20);
    let lane = lane();
    let restart = lane
        .restart
        .clone()
        .unwrap_or_else(|| panic!("PORTALOCK_NETFS_RESTART is not set: this test {NEEDS}"));
    let dir = lane.shared();
    let strategies: Vec<LockStrategy> = [LockStrategy::Mkdir, LockStrategy::Link, LockStrategy::Os]
        .into_iter()
        .filter(|&s| lane.refusal(s).is_none())
        .collect();
    let mut pairs = Vec::new();
    for &strategy in &strategies {
        let name = format!("{}.lock", spec(strategy));
        let mut holder = lane.spawn_on(
            Client::A,
            "hold",
            &[spec(strategy), utf8(&dir.a.join(&name))],
        );
        holder.expect("ACQUIRED");
        let mut waiter = lane.spawn_on(
            Client::B,
            "race",
            &[spec(strategy), utf8(&dir.b.join(&name))],
        );
        waiter.expect("READY");
        waiter.send(&format!("wait {}", BOUND.as_millis()));
        pairs.push((strategy, holder, waiter));
    }
    let started = Instant::now();
    let status = Command::new(&restart)
        .status()
        .expect("run the restart program");
    assert!(status.success(), "the server did not restart: {status}");
    let restarted = started.elapsed();
    let settled = Instant::now() + SETTLE;
    for (strategy, mut holder, mut waiter) in pairs {
        let name = spec(strategy);
        // What the waiter got while the server came back (one shared
        // deadline: the pairs wait together).
        let early = waiter.poll_event(settled.saturating_duration_since(Instant::now()));
        holder.send("check");
        // A check that finds the lock lost runs the holder's `on_lost`
        // callback first (it says ONLOST).
        let check = past_onlost(&mut holder, "CHECKED", name);
        let outcome = match early {
            Some((event, answer)) => {
                assert_eq!(
                    (event.as_str(), answer.as_str()),
                    ("WAITED", "Ok"),
                    "{name}: the waiter"
                );
                // An SMB server refuses the holder's read of its record
                // while the other client's lock covers the file: an I/O
                // error, which cannot tell. Never Ok.
                assert!(
                    check == "LockLost" || (lane.kind == Kind::Smb && check == "Io"),
                    "{name}: the waiter got the lock after the restart, and the holder was told {check}"
                );
                holder.send("release");
                let released = past_onlost(&mut holder, "RELEASED", name);
                assert_ne!(released, "Ok", "{name}: the lost lock's release");
                waiter.send("check");
                assert_eq!(
                    waiter.expect("CHECKED"),
                    "Ok",
                    "{name}: the old holder's release took the new holder's lock"
                );
                if check == "LockLost" {
                    "the server dropped it: the waiter got it, the holder was told LockLost"
                } else {
                    "the server dropped it: the waiter got it, the holder's check failed (Io: the waiter's lock covers the file)"
                }
            }
            None if check == "Ok" => {
                holder.send("release");
                assert_eq!(holder.expect("RELEASED"), "Ok", "{name}: release");
                assert_eq!(waiter.expect("WAITED"), "Ok", "{name}: the waiter");
                "the holder kept it; the waiter got it once released"
            }
            None => {
                assert!(
                    check == "LockLost" || (lane.kind == Kind::Smb && check == "Io"),
                    "{name}: the holder's check said {check}"
                );
                holder.send("release");
                past_onlost(&mut holder, "RELEASED", name);
                assert_eq!(waiter.expect("WAITED"), "Ok", "{name}: the waiter");
                "the holder's check failed or said LockLost; the waiter got it once that holder let go"
            }
        };
        waiter.send("release");
        assert_eq!(
            waiter.expect("RELEASED"),
            "Ok",
            "{name}: the waiter's release"
        );
        println!(
            "netfs: {} {name:<5}: server restarted in {:.1} s under a holder and a waiter: {outcome}",
            lane.name,
            restarted.as_secs_f64()
        );
    }
}
