//! `EtcdLock` against a real `etcd` (Debian's `etcd-server`; `.ci/run`
//! installs it), started by this harness on free loopback ports: a single
//! member, and a three-member cluster for the failure cases. Data lives on
//! tmpfs (`/dev/shm`) when there is one: a cluster on a busy disk misses
//! its heartbeats.
#![cfg(all(feature = "etcd", unix))]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portalock::{Error, EtcdLock, Mechanism};

use common::proxy::BlackHole;
use common::{run_counters, spawn, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One etcd member of a test.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// The etcd members of a test, stopped (and their data removed) when
/// dropped.
struct Cluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Heartbeat and election timeout, in ms.
    timing: (u64, u64),
    /// More arguments for every member.
    extra: Vec<String>,
}

impl Cluster {
    /// A single member with etcd's default timing.
    fn single() -> Cluster {
        Cluster::start(1, (100, 1000))
    }

    /// Three members, with generous timing: elections on a loaded 2-core
    /// machine must not flap.
    fn three() -> Cluster {
        Cluster::start(3, (200, 2000))
    }

    fn start(n: usize, timing: (u64, u64)) -> Cluster {
        Cluster::start_with(n, timing, &[])
    }

    fn start_with(n: usize, timing: (u64, u64), extra: &[&str]) -> Cluster {
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            members,
            dir,
            timing,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        for i in 0..n {
            cluster.launch(i);
        }
        cluster.wait_ready();
        cluster
    }

    fn launch(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data: PathBuf = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("log file");
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "portalock-test"])
            .args(["--heartbeat-interval", &self.timing.0.to_string()])
            .args(["--election-timeout", &self.timing.1.to_string()])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (install Debian's etcd-server)");
        self.members[i].child = Some(child);
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The endpoints, comma-separated (as a child's argument).
    fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    /// Runs `f` with a client of the running members, on a runtime of its
    /// own.
    fn with_client<T>(
        &self,
        members: &[usize],
        f: impl AsyncFnOnce(etcd_client::Client) -> T,
    ) -> T {
        let endpoints: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        let runtime = runtime();
        runtime.block_on(async {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(5));
            let client = etcd_client::Client::connect(endpoints, Some(options))
                .await
                .expect("connect");
            f(client).await
        })
    }

    /// Waits (bounded) until every running member answers and the cluster
    /// has a leader.
    fn wait_ready(&self) {
        let deadline = Instant::now() + EVENT_TIMEOUT * 2;
        for i in self.running() {
            loop {
                let ready = self.with_client(&[i], async |mut c| match c.status().await {
                    Ok(status) => status.leader() != 0,
                    Err(_) => false,
                });
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} did not become ready; its log:\n{}",
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    /// The index of the current leader (asked of a running member).
    fn leader(&self) -> usize {
        let running = self.running();
        let (leader, ids) = self.with_client(&running, async |mut c| {
            let status = c.status().await.expect("status");
            let members = c.member_list().await.expect("member list");
            let ids: Vec<(String, u64)> = members
                .members()
                .iter()
                .map(|m| (m.name().to_owned(), m.id()))
                .collect();
            (status.leader(), ids)
        });
        let name = ids
            .iter()
            .find(|(_, id)| *id == leader)
            .map(|(name, _)| name.clone())
            .expect("the leader is a member");
        self.members
            .iter()
            .position(|m| m.name == name)
            .expect("known member")
    }

    /// Kills member `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A current-thread runtime with I/O and time, for the tests' own async
/// code.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn lock(cluster: &Cluster, name: &str, lease_s: u64) -> EtcdLock {
    EtcdLock::options()
        .lease(Duration::from_secs(lease_s))
        .open(&cluster.endpoints(), name)
        .expect("open")
}

#[test]
fn the_contract_of_lockfile() {
    let cluster = Cluster::single();
    let a = lock(&cluster, "job", 5);
    let b = lock(&cluster, "job", 5);
    a.acquire().expect("acquire");
    let fence_a = a.fence().expect("fence");
    match b.try_acquire() {
        Err(Error::WouldBlock {
            holder: Some(owner),
            lock,
            ..
        }) => {
            assert_eq!(owner.pid, std::process::id());
            assert_eq!(owner.strategy, Mechanism::Etcd);
            assert_eq!(owner.lease_ms, Some(5000));
            assert_eq!(lock.to_string(), "portalock/job/");
        }
        other => panic!("expected WouldBlock, got {other:?}"),
    }
    let started = Instant::now();
    assert!(matches!(
        b.acquire_timeout(Duration::from_millis(300)),
        Err(Error::Timeout { .. })
    ));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Not reentrant.
    assert!(matches!(a.try_acquire(), Err(Error::WouldBlock { .. })));
    a.ensure_held().expect("held");
    assert_eq!(
        a.owner().expect("owner").map(|o| o.pid),
        Some(std::process::id())
    );
    a.release().expect("release");
    assert!(matches!(a.release(), Err(Error::NotLocked { .. })));
    assert!(matches!(a.ensure_held(), Err(Error::NotLocked { .. })));
    assert_eq!(a.owner().expect("owner"), None, "released: no holder");
    // A given-up try and a timed-out wait left no key behind: b gets the
    // lock at once, with a larger fence.
    let guard = b.try_lock().expect("free");
    assert!(guard.fence() > fence_a);
    drop(guard);
    assert!(!b.is_held());
    a.try_acquire().expect("the guard released it");
    a.release().expect("release");
}

#[test]
fn a_guard_releases_only_its_own_acquisition() {
    let cluster = Cluster::single();
    let a = lock(&cluster, "guards", 5);
    let old = a.lock().expect("lock");
    a.release().expect("release through the handle");
    a.acquire().expect("acquire again");
    let fence = a.fence();
    drop(old);
    assert!(a.is_held());
    assert_eq!(a.fence(), fence);
    a.ensure_held().expect("the new acquisition is untouched");
    a.release().expect("release");
}

/// The exclusion figure: 8 processes x 25 acquisitions of a
/// read-modify-write counter, exact, and the fences logged under the lock
/// strictly increase.
#[test]
fn processes_increment_a_counter_under_the_etcd_lock() {
    let cluster = Cluster::single();
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter");
    let fences = dir.path().join("fences");
    std::fs::write(&counter, "0\n").expect("counter");
    let endpoints = cluster.endpoint_list();
    let procs = (0..8)
        .map(|_| {
            spawn(
                "etcd-count",
                &[
                    &endpoints,
                    "count",
                    counter.to_str().expect("utf-8"),
                    "25",
                    fences.to_str().expect("utf-8"),
                ],
            )
        })
        .collect();
    assert_eq!(run_counters(procs, &counter), 200);
    assert_strictly_increasing(&fences, 200);
}

/// Reads the fence log (one `FENCE PID` line per critical section, in the
/// order they ran) and checks the fences strictly increase.
fn assert_strictly_increasing(log: &Path, expected: usize) -> Vec<u64> {
    let fences: Vec<u64> = std::fs::read_to_string(log)
        .expect("fence log")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|f| f.parse().ok())
                .expect("a fence")
        })
        .collect();
    assert_eq!(fences.len(), expected, "one fence per critical section");
    for pair in fences.windows(2) {
        assert!(pair[0] < pair[1], "fences out of order: {pair:?}");
    }
    fences
}

/// Waiters are served in the order they asked: five processes join the
/// line one after another (each says `WAITING` once it stands in it) while
/// the lock is held; after the release they run in that order. A lock
/// whose waiters poll serves whoever looks first after each release.
#[test]
fn waiters_are_served_in_the_order_they_asked() {
    let cluster = Cluster::single();
    let dir = tempfile::tempdir().expect("tempdir");
    let order = dir.path().join("order");
    let holder = lock(&cluster, "line", 10);
    holder.acquire().expect("acquire");
    let endpoints = cluster.endpoint_list();
    let mut waiters = Vec::new();
    for id in 0..5 {
        let id = id.to_string();
        let mut waiter = spawn(
            "etcd-queue",
            &[&endpoints, "line", order.to_str().expect("utf-8"), &id],
        );
        waiter.expect("WAITING");
        waiters.push(waiter);
    }
    holder.release().expect("release");
    for waiter in &mut waiters {
        waiter.expect("DONE");
    }
    for waiter in waiters {
        assert!(waiter.wait().success());
    }
    let served = std::fs::read_to_string(&order).expect("order");
    assert_eq!(served, "0\n1\n2\n3\n4\n", "served in the order they asked");
}

/// A release wakes the next waiter through its watch, not a poll: the
/// hand-off takes far less than a lease.
#[test]
fn a_release_wakes_the_next_waiter_at_once() {
    let cluster = Cluster::single();
    let holder = lock(&cluster, "wake", 10);
    holder.acquire().expect("acquire");
    let mut waiter = spawn(
        "etcd-queue",
        &[&cluster.endpoint_list(), "wake", "/dev/null", "0"],
    );
    waiter.expect("WAITING");
    let released = Instant::now();
    holder.release().expect("release");
    waiter.expect("DONE");
    let took = released.elapsed();
    eprintln!("etcd: a waiting process had the lock and was done {took:?} after the release");
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: woken by its watch, within a lease"
    );
    assert!(waiter.wait().success());
}

#[test]
fn a_killed_holder_frees_the_lock_after_its_lease() {
    const LEASE: u64 = 2;
    let cluster = Cluster::single();
    let mut holder = spawn("etcd-hold", &[&cluster.endpoint_list(), "crash", "2"]);
    let old: u64 = holder
        .expect("ACQUIRED")
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("fence");
    let waiter = lock(&cluster, "crash", LEASE);
    assert!(matches!(
        waiter.try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    holder.kill();
    let died = Instant::now();
    waiter
        .acquire_timeout(Duration::from_secs(30))
        .expect("taken after the lease");
    let after = died.elapsed();
    eprintln!("etcd: lock of a killed holder taken {after:?} after its death (lease {LEASE} s)");
    // etcd expires leases on its leader's clock, checking twice a second.
    assert!(after <= Duration::from_secs(LEASE + 3), "{after:?}");
    assert!(waiter.fence().expect("fence") > old);
    waiter.release().expect("release");
}

#[test]
fn a_holder_paused_past_its_lease_loses_the_lock_and_is_fenced_off() {
    let cluster = Cluster::single();
    let mut holder = spawn("etcd-hold", &[&cluster.endpoint_list(), "paused", "2"]);
    let old: u64 = holder
        .expect("ACQUIRED")
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("fence");
    holder.signal("STOP");
    let waiter = lock(&cluster, "paused", 2);
    waiter
        .acquire_timeout(Duration::from_secs(30))
        .expect("taken after the lease");
    let new = waiter.fence().expect("fence");
    assert!(new > old, "{new} > {old}");
    holder.signal("CONT");
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "LockLost");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "LockLost");
    waiter.ensure_held().expect("the new holder is untouched");
    assert_eq!(waiter.fence(), Some(new));
    waiter.release().expect("release");
}

#[test]
fn an_operator_deleting_the_key_takes_the_lock_away() {
    let cluster = Cluster::single();
    let holder = lock(&cluster, "deleted", 5);
    holder.acquire().expect("acquire");
    let deleted = cluster.with_client(&[0], async |mut c| {
        c.delete(
            "portalock/deleted/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete")
        .deleted()
    });
    assert_eq!(deleted, 1);
    assert!(matches!(holder.ensure_held(), Err(Error::LockLost { .. })));
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    let other = lock(&cluster, "deleted", 5);
    other.try_acquire().expect("free");
    other.release().expect("release");
}

/// The leader of a three-member cluster is killed while processes take
/// turns under the lock: no two holders at once (the counter is exact, no
/// overlap), every critical section's fence is larger than the one before,
/// and the lock keeps working under the new leader.
#[test]
fn the_leader_killed_under_holders_and_waiters() {
    let mut cluster = Cluster::three();
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter");
    let fences = dir.path().join("fences");
    std::fs::write(&counter, "0\n").expect("counter");
    let endpoints = cluster.endpoint_list();
    let mut procs: Vec<_> = (0..4)
        .map(|_| {
            spawn(
                "etcd-count",
                &[
                    &endpoints,
                    "leader",
                    counter.to_str().expect("utf-8"),
                    "15",
                    fences.to_str().expect("utf-8"),
                ],
            )
        })
        .collect();
    for p in &mut procs {
        p.expect("READY");
    }
    for p in &mut procs {
        p.send("go");
    }
    // Kill the leader once a few critical sections have run.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let done: u64 = std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if done >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    let leader = cluster.leader();
    cluster.kill(leader);
    eprintln!("etcd: killed the leader, member {leader}");
    for p in &mut procs {
        p.expect("DONE");
    }
    for p in procs {
        assert!(p.wait().success());
    }
    let total: u64 = std::fs::read_to_string(&counter)
        .expect("counter")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(total, 60);
    let fences = assert_strictly_increasing(&fences, 60);
    // The lock works under the new leader, with a larger fence.
    let after = lock(&cluster, "leader", 4);
    after
        .acquire_timeout(Duration::from_secs(30))
        .expect("acquire under the new leader");
    assert!(after.fence().expect("fence") > *fences.last().expect("fences"));
    assert_ne!(cluster.leader(), leader);
    after.release().expect("release");
}

/// The black hole's endpoint URL.
fn endpoint_of(proxy: &BlackHole) -> String {
    format!("http://127.0.0.1:{}", proxy.port)
}

/// A holder behind a silent partition learns that it lost the lock within
/// about one lease, without the network; another client takes the lock
/// once etcd has expired the lease; release returns within a bound and
/// says `LockLost`.
#[test]
fn a_holder_behind_a_black_hole_learns_of_it_within_a_lease() {
    const LEASE: Duration = Duration::from_secs(3);
    let cluster = Cluster::single();
    let proxy = BlackHole::in_front_of(cluster.members[0].client);
    let holder = EtcdLock::options()
        .lease(LEASE)
        .open(&[endpoint_of(&proxy)], "partition")
        .expect("open");
    holder.acquire().expect("acquire");
    holder.ensure_held().expect("held");
    proxy.partition();
    let cut = Instant::now();
    let other = lock(&cluster, "partition", 3);
    std::thread::scope(|scope| {
        // Another client waits for the lock meanwhile.
        let taker = scope.spawn(|| {
            other
                .acquire_timeout(Duration::from_secs(30))
                .expect("the other client takes the lock");
            let taken = Instant::now();
            // Once another client holds the lock, the cut-off holder never
            // answers that it holds it.
            let check = holder.ensure_held();
            assert!(
                matches!(check, Err(Error::LockLost { .. })),
                "the old holder said {check:?} while another held the lock"
            );
            taken
        });
        // The holder finds out within about one lease of the partition.
        let deadline = cut + LEASE * 3;
        let learnt = loop {
            match holder.ensure_held() {
                Err(Error::LockLost { .. }) => break Instant::now(),
                Ok(()) => {}
                Err(e) => panic!("unexpected: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "still held after {:?}",
                cut.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let taken = taker.join().expect("taker");
        eprintln!(
            "etcd: behind a black hole, the holder counted its lock lost {:?} after the cut, \
             another client took it {:?} after the cut (lease {LEASE:?})",
            learnt - cut,
            taken - cut
        );
        assert!(
            learnt - cut <= LEASE + Duration::from_secs(1),
            "{:?}",
            learnt - cut
        );
    });
    let started = Instant::now();
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    assert!(started.elapsed() < LEASE * 2, "{:?}", started.elapsed());
    other.ensure_held().expect("untouched");
    other.release().expect("release");
}

/// The async API on a caller's runtime: a waiter wakes at the release, and
/// a guard dropped inside async code releases without a panic.
#[test]
fn the_async_api_on_another_runtime() {
    let cluster = Cluster::single();
    let holder = lock(&cluster, "async", 5);
    holder.acquire().expect("acquire");
    let waiter = lock(&cluster, "async", 5);
    let runtime = runtime();
    runtime.block_on(async {
        let timed_out = waiter
            .acquire_timeout_async(Duration::from_millis(200))
            .await;
        assert!(matches!(timed_out, Err(Error::Timeout { .. })));
        let wait = waiter.lock_async();
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            holder.release().expect("release");
        };
        let (guard, ()) = tokio::join!(wait, release);
        let guard = guard.expect("woken at the release");
        assert!(waiter.is_held());
        drop(guard); // inside async code
        assert!(!waiter.is_held());
    });
    holder.try_acquire().expect("the async guard released it");
    holder.release().expect("release");
}

/// Errors are typed and bounded: no server, a bad endpoint.
#[test]
fn no_server_is_a_typed_error_within_the_bound() {
    let port = free_port(); // nothing listens
    let lock = EtcdLock::options()
        .lease(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .open(&[format!("http://127.0.0.1:{port}")], "nobody");
    let started = Instant::now();
    let result = lock.and_then(|l| l.try_acquire());
    assert!(matches!(result, Err(Error::Etcd { .. })), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Runs the `portalock` tool to completion (bounded): exit code, stdout,
/// stderr.
#[cfg(feature = "cli")]
fn tool(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portalock"));
    cmd.args(args);
    let (status, out, err) = common::run_to_end(&mut cmd, &format!("portalock {args:?}"));
    (status.code().expect("exited"), out, err)
}

/// `portalock run --etcd` and `portalock status --etcd`.
#[cfg(feature = "cli")]
#[test]
fn the_cli_runs_a_command_under_an_etcd_lock() {
    let cluster = Cluster::single();
    let endpoints = cluster.endpoint_list();
    let (code, out, _) = tool(&["status", "--etcd", &endpoints, "--json", "deploy"]);
    assert_eq!(code, 0, "free");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["state"], "free");

    let holder = lock(&cluster, "deploy", 5);
    holder.acquire().expect("acquire");
    let (code, out, _) = tool(&["status", "--etcd", &endpoints, "--json", "deploy"]);
    assert_eq!(code, 1, "held");
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json["state"], "held");
    assert_eq!(json["strategy"], "etcd");
    assert_eq!(json["owner"]["pid"], std::process::id());
    let (code, _, err) = tool(&["run", "--etcd", &endpoints, "-n", "deploy", "--", "true"]);
    assert_eq!(code, 75, "busy: {err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    let fence = holder.fence().expect("fence");
    holder.release().expect("release");

    let (code, out, err) = tool(&[
        "run",
        "--etcd",
        &endpoints,
        "--fence",
        "deploy",
        "--",
        "sh",
        "-c",
        "echo $PORTALOCK_FENCE; exit 7",
    ]);
    assert_eq!(code, 7, "the command's status: {err}");
    let passed: u64 = out.trim().parse().expect("a fence");
    assert!(passed > fence, "{passed} > {fence}");
    // Released after the command: free again.
    let after = lock(&cluster, "deploy", 5);
    after.try_acquire().expect("free after the run");
    after.release().expect("release");
}

/// With etcd's authentication on, a handle logs in with the options' user:
/// the right password takes the lock, a wrong one is a typed error.
#[test]
fn authentication_logs_in_as_the_user() {
    // Tokens that expire after a second: a holder must log in again to
    // keep its lease alive.
    let cluster = Cluster::start_with(1, (100, 1000), &["--auth-token-ttl", "1"]);
    cluster.with_client(&[0], async |mut c| {
        c.user_add("root", "root-secret", None).await.expect("user");
        c.user_grant_role("root", "root").await.expect("role");
        c.auth_enable().await.expect("auth on");
    });
    let open = |password: &str| {
        EtcdLock::options()
            .lease(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .user("root", password)
            .open(&cluster.endpoints(), "guarded")
    };
    match open("wrong") {
        Err(Error::Etcd { message, .. }) => {
            assert!(message.contains("authentication failed"), "{message}")
        }
        other => panic!("expected an etcd error, got {other:?}"),
    }
    let anonymous = lock(&cluster, "guarded", 5);
    assert!(
        matches!(anonymous.try_acquire(), Err(Error::Etcd { .. })),
        "without a user, etcd refuses"
    );
    let lock = open("root-secret").expect("log in");
    lock.acquire().expect("acquire");
    // Past two leases, and past many token lifetimes: still held.
    let until = Instant::now() + Duration::from_secs(11);
    while Instant::now() < until {
        lock.ensure_held().expect("held");
        // Longer than the token lives unused.
        std::thread::sleep(Duration::from_millis(2500));
    }
    lock.release().expect("release");
}

/// A child (`etcd-pause`) on the lock `name` with a 2 s lease that will
/// stop at the fault point `point` until the returned file exists.
#[cfg(feature = "failpoints")]
fn paused(cluster: &Cluster, name: &str, point: &str) -> (common::Proc, Resume) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resume");
    let child = spawn(
        "etcd-pause",
        &[
            &cluster.endpoint_list(),
            name,
            "2",
            point,
            file.to_str().expect("utf-8"),
        ],
    );
    (child, Resume { _dir: dir, file })
}

/// The file whose creation lets a paused child go on.
#[cfg(feature = "failpoints")]
struct Resume {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

/// The holder stops (its keep-alive with it) just after etcd answered
/// `ensure_held` that its key is there, past its lease, while another
/// client takes the lock: the late answer is no proof, `ensure_held` says
/// `LockLost`.
#[cfg(feature = "failpoints")]
#[test]
fn ensure_held_never_vouches_with_an_answer_older_than_the_lease() {
    let cluster = Cluster::single();
    let (mut holder, resume) = paused(&cluster, "late", "etcd.check.answered");
    holder.expect("ACQUIRED");
    holder.expect("PAUSED");
    // The whole process stops there, its keep-alive with it.
    holder.signal("STOP");
    let waiter = lock(&cluster, "late", 2);
    waiter
        .acquire_timeout(Duration::from_secs(30))
        .expect("taken once the stopped holder's lease ran out");
    std::fs::write(&resume.file, "").expect("resume");
    holder.signal("CONT");
    assert_eq!(holder.expect("RESULT"), "LockLost");
    waiter.ensure_held().expect("the new holder");
    waiter.release().expect("release");
}

/// An acquisition that found itself first in line, then stopped past its
/// lease (etcd expired it and deleted its key), is not granted when it
/// goes on.
#[cfg(feature = "failpoints")]
#[test]
fn an_acquisition_stopped_past_its_lease_is_not_granted() {
    let cluster = Cluster::single();
    let (mut taker, resume) = paused(&cluster, "stalled", "etcd.acquire.first");
    taker.expect("PAUSED");
    taker.signal("STOP");
    let other = lock(&cluster, "stalled", 2);
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while other.owner().expect("owner").is_some() {
        assert!(Instant::now() < deadline, "the stopped taker's key stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    other.acquire().expect("free");
    std::fs::write(&resume.file, "").expect("resume");
    taker.signal("CONT");
    let said = taker.expect("RESULT");
    assert_ne!(said, "Ok", "granted a lock whose lease had run out");
    other.ensure_held().expect("untouched");
    other.release().expect("release");
}

/// A lock named `a/b` and one named `a` are two locks: no name's keys fall
/// under another's prefix.
#[test]
fn names_with_slashes_are_locks_of_their_own() {
    let cluster = Cluster::single();
    let deep = lock(&cluster, "reports/daily", 5);
    deep.acquire().expect("acquire");
    let top = lock(&cluster, "reports", 5);
    top.try_acquire().expect("another lock");
    assert_eq!(
        top.owner().expect("owner").map(|o| o.pid),
        Some(std::process::id())
    );
    top.release().expect("release");
    assert_eq!(
        top.owner().expect("owner"),
        None,
        "reports/daily is not reports"
    );
    deep.release().expect("release");
}

/// Async code on the caller's own runtime: a handle opened, used and
/// dropped inside a task; two acquisitions at once through one handle
/// (one is refused, not both granted); a wait cancelled at any moment
/// around a release never leaves the handle holding a lock it did not
/// report.
#[test]
fn async_handles_opened_cancelled_and_raced_inside_a_runtime() {
    let cluster = Cluster::single();
    let endpoints = cluster.endpoints();
    let runtime = runtime();
    runtime.block_on(async {
        let lock = EtcdLock::options()
            .lease(Duration::from_secs(5))
            .open(&endpoints, "inside")
            .expect("open inside a runtime");
        let (a, b) = tokio::join!(lock.acquire_async(), lock.acquire_async());
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one of two acquisitions at once: {a:?} {b:?}"
        );
        let refused = if a.is_ok() { b } else { a };
        assert!(
            matches!(refused, Err(Error::WouldBlock { .. })),
            "{refused:?}"
        );
        lock.release_async().await.expect("release");

        let holder = EtcdLock::options()
            .lease(Duration::from_secs(5))
            .open(&endpoints, "inside")
            .expect("open");
        for round in 0..20u64 {
            holder.acquire_async().await.expect("holder");
            let release_after = Duration::from_millis(round % 7 * 3);
            let give_up_after = Duration::from_millis(round % 5 * 4 + 1);
            let release = async {
                tokio::time::sleep(release_after).await;
                holder.release_async().await.expect("release");
            };
            let (waited, ()) = tokio::join!(
                tokio::time::timeout(give_up_after, lock.acquire_async()),
                release
            );
            match waited {
                Ok(Ok(())) => {
                    assert!(lock.is_held());
                    lock.release_async().await.expect("release");
                }
                Ok(Err(e)) => panic!("round {round}: {e}"),
                Err(_) => assert!(
                    !lock.is_held(),
                    "round {round}: held after a cancelled wait"
                ),
            }
            // Whatever happened, the lock comes free (a cancelled wait that
            // had won gives it back in the background).
            holder
                .acquire_timeout_async(Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("round {round}: the lock stayed taken: {e}"));
            holder.release_async().await.expect("release");
        }
        drop(lock); // inside the runtime: no panic
    });
}
