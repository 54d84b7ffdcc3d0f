//! `RedisLock` against a real `redis-server`, started by this harness on a
//! free loopback port (Debian's `redis-server`; `.ci/run` installs it).
// The harness starts a Unix `redis-server`; under Wine there is none.
#![cfg(all(feature = "redis", unix))]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portalock::{Error, RedisLock};

use common::proxy::BlackHole;
use common::{run_counters, spawn, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

/// A `redis-server` of this test, stopped when dropped.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Server { port, child: None };
        server.launch();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // (`DEBUG SLEEP` stalls the whole server, for a test)
            .args(["--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (install Debian's redis-server)");
        self.child = Some(child);
        // Ready when it answers PING (bounded).
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let pong: Option<String> = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .ok()
                .and_then(|mut c| redis::cmd("PING").query(&mut c).ok());
            if pong.as_deref() == Some("PONG") {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts a new one on the same port: with no
    /// persistence, it forgets every key.
    fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect");
        cmd.query(&mut con).expect("query")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(server: &Server, name: &str, lease_ms: u64) -> RedisLock {
    RedisLock::options()
        .lease(Duration::from_millis(lease_ms))
        .poll_interval(Duration::from_millis(50))
        .open(&server.url(), name)
        .expect("open")
}

/// Waits (bounded) until `f` is true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_contract_of_lockfile() {
    let server = Server::start();
    let a = lock(&server, "job", 2000);
    let b = lock(&server, "job", 2000);
    a.acquire().expect("acquire");
    let fence_a = a.fence().expect("fence");
    match b.try_acquire() {
        Err(Error::WouldBlock {
            holder: Some(owner),
            ..
        }) => {
            assert_eq!(owner.pid, std::process::id());
            assert_eq!(owner.strategy, portalock::Mechanism::Redis);
            assert_eq!(owner.lease_ms, Some(2000));
        }
        other => panic!("expected WouldBlock, got {other:?}"),
    }
    let started = Instant::now();
    assert!(matches!(
        b.acquire_timeout(Duration::from_millis(100)),
        Err(Error::Timeout { .. })
    ));
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Not reentrant.
    assert!(matches!(a.try_acquire(), Err(Error::WouldBlock { .. })));
    a.ensure_held().expect("held");
    a.release().expect("release");
    assert!(matches!(a.release(), Err(Error::NotLocked { .. })));
    {
        let _guard = b.lock().expect("b");
        assert!(b.fence().expect("fence") > fence_a, "fences grow");
        assert_eq!(a.owner().expect("owner").expect("record").token.len(), 32);
    }
    assert!(!b.is_held(), "released on drop of the guard");
    a.try_acquire().expect("free");
    drop(a); // released on drop of the handle
    b.try_acquire().expect("free again");
}

#[test]
fn a_waiter_is_woken_by_a_release_not_by_its_poll() {
    let server = Server::start();
    let holder = lock(&server, "wake", 60_000);
    holder.acquire().expect("acquire");
    let waiter = RedisLock::options()
        .poll_interval(Duration::from_secs(30))
        .open(&server.url(), "wake")
        .expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(());
        let result = waiter.acquire_timeout(Duration::from_secs(20));
        (result, Instant::now(), waiter)
    });
    rx.recv_timeout(EVENT_TIMEOUT).expect("waiter started");
    // The waiter subscribes and sleeps; give it a moment to get there (the
    // assertion below holds either way, it is the wake-up that is timed).
    std::thread::sleep(Duration::from_millis(100));
    let released = Instant::now();
    holder.release().expect("release");
    let (result, woke, waiter) = thread.join().expect("waiter");
    result.expect("the waiter got the lock");
    let latency = woke.duration_since(released);
    eprintln!("redis hand-off after release: {latency:?}");
    assert!(
        latency < Duration::from_secs(5),
        "woken by the fallback poll: {latency:?}"
    );
    waiter.release().expect("release");
}

#[test]
fn processes_increment_a_counter_under_the_redis_lock() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0\n").expect("counter");
    let url = server.url();
    let procs = (0..4)
        .map(|_| {
            spawn(
                "redis-count",
                &[&url, "count", counter.to_str().expect("utf-8"), "50"],
            )
        })
        .collect();
    assert_eq!(run_counters(procs, &counter), 200);
}

/// Killing the holder's connection (`CLIENT KILL`) does not take its lock
/// away: the key is still its own, and the holder renews it on a new
/// connection. Deleting the key does: the holder learns it at its next
/// renewal, and the waiter gets the lock without waiting out the lease.
#[test]
fn a_holder_whose_key_is_deleted_learns_it_lost_the_lock() {
    let server = Server::start();
    let holder = lock(&server, "killed", 600);
    holder.acquire().expect("acquire");
    let waiter = lock(&server, "killed", 600);
    let name = format!("portalock-holder-{}", std::process::id());
    eventually("the renewal connection is named", || {
        let list: String = server.query(redis::cmd("CLIENT").arg("LIST"));
        list.contains(&name)
    });
    let killed: i64 = server.query(
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes"),
    );
    assert!(killed >= 1);
    // Two leases later the holder still holds it, renewed anew.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert!(matches!(
            waiter.try_acquire(),
            Err(Error::WouldBlock { .. })
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.ensure_held().expect("still the holder's");
    // An operator deletes the key: the holder finds out.
    let deleted: i64 = server.query(redis::cmd("DEL").arg("portalock:killed"));
    assert_eq!(deleted, 1);
    eventually("the holder notices", || {
        matches!(holder.ensure_held(), Err(Error::LockLost { .. }))
    });
    waiter.try_acquire().expect("free");
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    waiter.release().expect("release");
}

#[cfg(unix)]
#[test]
fn a_holder_paused_past_its_lease_loses_the_lock_and_is_fenced_off() {
    let server = Server::start();
    let url = server.url();
    let mut holder = spawn("redis-hold", &[&url, "paused", "300"]);
    let line = holder.expect("ACQUIRED");
    let old_fence: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("fence");
    holder.signal("STOP");
    let waiter = lock(&server, "paused", 300);
    waiter
        .acquire_timeout(Duration::from_secs(10))
        .expect("taken after the lease");
    let new_fence = waiter.fence().expect("fence");
    assert!(new_fence > old_fence, "{new_fence} > {old_fence}");
    holder.signal("CONT");
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "LockLost");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "LockLost");
    waiter.ensure_held().expect("the new holder is untouched");
    waiter.release().expect("release");
}

#[test]
fn a_redis_restart_leaves_no_holder_unaware() {
    let mut server = Server::start();
    let holder = lock(&server, "restart", 900);
    holder.acquire().expect("acquire");
    let old_fence = holder.fence().expect("fence");
    server.restart();
    // The new server forgot the lock: a waiter takes it at once...
    let waiter = lock(&server, "restart", 900);
    waiter
        .try_acquire()
        .expect("the lock is gone with the old server");
    assert!(
        waiter.fence().expect("fence") > old_fence,
        "fences grow across restarts"
    );
    // ... and the old holder finds out within its renewal interval.
    eventually("the old holder notices", || {
        matches!(holder.ensure_held(), Err(Error::LockLost { .. }))
    });
    waiter.ensure_held().expect("the new holder still holds it");
    waiter.release().expect("release");
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_runs_a_command_under_a_redis_lock() {
    let server = Server::start();
    let url = server.url();
    let tool = env!("CARGO_BIN_EXE_portalock");
    let run = |timeout: &str| {
        let mut child = Command::new(tool)
            .args(["run", "--redis", &url, "--timeout", timeout, "jobs", "--"])
            .args(common::child_command_line())
            .env("PORTALOCK_TEST_ROLE", "exit")
            .env("PORTALOCK_TEST_ARGS", "6")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portalock");
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "portalock did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    assert_eq!(run("5"), Some(6), "the command's status");
    let holder = lock(&server, "jobs", 5000);
    holder.acquire().expect("acquire");
    assert_eq!(run("0"), Some(75), "busy");
    holder.release().expect("release");
    assert_eq!(run("0"), Some(6));
}

/// The black hole's URL.
fn url_of(proxy: &BlackHole) -> String {
    format!("redis://127.0.0.1:{}/", proxy.port)
}

/// Runs `f` on a thread of its own and returns what it returned and how
/// long it took, or `None` if it did not return within `bound`.
fn bounded<T: Send + 'static>(
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let value = f();
        let _ = tx.send((value, started.elapsed()));
    });
    rx.recv_timeout(bound).ok()
}

/// A holder behind a silent partition learns that it lost the lock within
/// about one lease, and release (and drop) return within a bound; another
/// client takes the lock once the lease has run out.
#[test]
fn a_holder_behind_a_silent_partition_learns_of_it_within_a_lease() {
    const LEASE: Duration = Duration::from_millis(900);
    let server = Server::start();
    let proxy = BlackHole::in_front_of(server.port);
    let holder = std::sync::Arc::new(
        RedisLock::options()
            .lease(LEASE)
            .open(&url_of(&proxy), "partition")
            .expect("open"),
    );
    holder.acquire().expect("acquire");
    proxy.partition();
    let cut = Instant::now();

    // ensure_held answers within a bound every time, and says LockLost
    // once the lease has run out.
    let lost = loop {
        let h = std::sync::Arc::clone(&holder);
        let (result, took) = bounded(3 * LEASE, move || h.ensure_held())
            .expect("ensure_held hung behind the partition");
        assert!(took <= 2 * LEASE, "ensure_held took {took:?}");
        if matches!(result, Err(Error::LockLost { .. })) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < 4 * LEASE,
            "not lost after {:?}",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("redis: a partitioned holder learned of its loss after {lost:?} (lease {LEASE:?})");
    assert!(lost <= 2 * LEASE, "learned after {lost:?}");

    // Another client (not behind the partition) takes the lock.
    let other = lock(&server, "partition", 5000);
    other
        .acquire_timeout(2 * LEASE)
        .expect("taken once the partitioned holder's lease ran out");

    let h = std::sync::Arc::clone(&holder);
    let (released, took) =
        bounded(3 * LEASE, move || h.release()).expect("release hung behind the partition");
    assert!(released.is_err(), "a lost lock's release is an error");
    assert!(took <= 2 * LEASE, "release took {took:?}");
    let (_, took) = bounded(3 * LEASE, move || drop(holder)).expect("drop hung");
    assert!(took <= 2 * LEASE, "drop took {took:?}");
    other.ensure_held().expect("the new holder is untouched");
    other.release().expect("release");
}

/// `portalock run --redis` behind a silent partition: once its command
/// ends, it exits within a bound and says the lock was lost.
#[cfg(feature = "cli")]
#[test]
fn the_cli_behind_a_silent_partition_exits_after_its_command() {
    let server = Server::start();
    let proxy = BlackHole::in_front_of(server.port);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portalock"));
    cmd.args([
        "run",
        "--redis",
        &url_of(&proxy),
        "--lease",
        "0.9",
        "cut",
        "--",
    ])
    .args(common::child_command_line());
    let mut running = common::spawn_command(cmd, "wait", &[]);
    running.expect("STARTED");
    proxy.partition();
    running.close_stdin(); // the command ends
    let ended = Instant::now();
    let status = running.wait_open();
    assert!(
        ended.elapsed() <= Duration::from_secs(3),
        "{:?}",
        ended.elapsed()
    );
    assert_eq!(status.code(), Some(74), "the lost lock is reported");
}

/// A guard releases only the acquisition that made it, as `LockGuard`
/// does: an old guard dropped after a new acquisition leaves it alone.
#[test]
fn a_guard_releases_only_its_own_acquisition() {
    let server = Server::start();
    let lock = lock(&server, "guard", 5000);
    let old = lock.lock().expect("lock");
    lock.release().expect("released through the handle");
    lock.acquire().expect("taken again");
    drop(old);
    assert!(lock.is_held(), "the old guard released the new acquisition");
    lock.ensure_held().expect("still held");
    let other = RedisLock::new(&server.url(), "guard").expect("open");
    assert!(matches!(other.try_acquire(), Err(Error::WouldBlock { .. })));
    lock.release().expect("release");
}

/// A server that closes idle connections (`timeout` in redis.conf) cuts
/// the holder's renewal connection between two renewals: the holder
/// connects again and keeps its lock, which is still its own.
#[test]
fn a_holder_keeps_its_lock_when_the_server_closes_idle_connections() {
    let server = Server::start();
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("timeout").arg("1"));
    // Renewals every 3 s: longer than the server keeps an idle client
    // (it counts idle time in whole seconds).
    let holder = lock(&server, "idle", 9000);
    holder.acquire().expect("acquire");
    let other = lock(&server, "idle", 9000);
    let until = Instant::now() + Duration::from_millis(7500);
    while Instant::now() < until {
        assert!(
            matches!(other.try_acquire(), Err(Error::WouldBlock { .. })),
            "the lock was given away while its holder held it"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    holder.ensure_held().expect("still held");
    holder.release().expect("release");
}

/// `ensure_held` asked near the end of the holder's trust, behind a silent
/// partition: the trust ends with the presence window (half of this
/// lease), before the lease. Its question to Redis takes a command
/// timeout, and by the time it answers the trust has run out. It must not
/// answer `Ok` then: a waiter may have taken the lock over.
#[test]
fn ensure_held_never_answers_ok_after_its_trust_ran_out() {
    const LEASE: Duration = Duration::from_millis(900);
    // The presence window of this lease: at most half of it.
    const TRUST: Duration = Duration::from_millis(450);
    let server = Server::start();
    let proxy = BlackHole::in_front_of(server.port);
    let holder = RedisLock::options()
        .lease(LEASE)
        .command_timeout(LEASE / 3)
        .open(&url_of(&proxy), "late-check")
        .expect("open");
    let before = Instant::now();
    holder.acquire().expect("acquire");
    proxy.partition();
    // 150 ms before the trust runs out (a bound of the contract, not a
    // synchronisation): the question cannot be answered before it does.
    let ask_at = before + TRUST - Duration::from_millis(150);
    std::thread::sleep(ask_at.saturating_duration_since(Instant::now()));
    let result = holder.ensure_held();
    let answered = Instant::now();
    assert!(
        answered >= before + TRUST,
        "answered {:?} before the trust's end: the question was not asked",
        (before + TRUST).saturating_duration_since(answered)
    );
    assert!(
        matches!(result, Err(Error::LockLost { .. })),
        "after the trust ran out ensure_held said {result:?}"
    );
}

/// The id of the client connection named `name` in `CLIENT LIST`.
fn client_id(server: &Server, name: &str) -> Option<String> {
    let list: String = server.query(redis::cmd("CLIENT").arg("LIST"));
    list.lines()
        .find(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
}

/// A holder killed with SIGKILL, under a short lease or a 30 s one: its
/// presence connection closes with it, and a waiter takes the lock over at
/// once, not after the lease.
#[rstest::rstest]
#[case(600)]
#[case(30_000)]
fn a_killed_holder_is_replaced_at_once(#[case] lease_ms: u64) {
    let server = Server::start();
    let url = server.url();
    let mut holder = spawn("redis-hold", &[&url, "present", &lease_ms.to_string()]);
    holder.expect("ACQUIRED");
    let waiter = lock(&server, "present", lease_ms);
    assert!(matches!(
        waiter.try_acquire(),
        Err(Error::WouldBlock { .. })
    ));
    holder.kill();
    let died = Instant::now();
    waiter
        .acquire_timeout(Duration::from_secs(20))
        .expect("taken over");
    let after = died.elapsed();
    eprintln!(
        "redis: lock of a killed holder (lease {lease_ms} ms) taken over {after:?} after its death"
    );
    assert!(after < Duration::from_secs(3), "{after:?}");
    waiter.release().expect("release");
}

/// A holder stopped with SIGSTOP keeps its connection open: nobody takes
/// its lock before the lease runs out; after it, a waiter does, and the
/// holder, resumed, is told.
#[cfg(unix)]
#[test]
fn a_stopped_holder_is_not_taken_over_before_its_lease() {
    const LEASE: Duration = Duration::from_millis(1500);
    let server = Server::start();
    let url = server.url();
    let lease_ms = LEASE.as_millis().to_string();
    let mut holder = spawn("redis-hold", &[&url, "slow", &lease_ms]);
    holder.expect("ACQUIRED");
    holder.signal("STOP");
    let stopped = Instant::now();
    let waiter = lock(&server, "slow", 1500);
    assert!(
        matches!(
            waiter.acquire_timeout(LEASE / 2),
            Err(Error::Timeout { .. })
        ),
        "a stopped holder's lock was taken before its lease ran out"
    );
    waiter
        .acquire_timeout(Duration::from_secs(20))
        .expect("taken after the lease");
    assert!(
        stopped.elapsed() >= LEASE.mul_f32(0.9),
        "{:?}",
        stopped.elapsed()
    );
    holder.signal("CONT");
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "LockLost");
    waiter.release().expect("release");
}

/// The holder's presence connection killed on the server (`CLIENT KILL`):
/// the holder says `LockLost` at once (before a waiter's poll could take
/// the lock over), and a waiter takes it over without waiting out the
/// lease.
#[test]
fn a_holder_whose_presence_is_killed_learns_it_at_once() {
    let server = Server::start();
    let holder = lock(&server, "cut", 30_000);
    holder.acquire().expect("acquire");
    let name = format!("portalock-present-{}", std::process::id());
    let mut id = None;
    eventually("the presence connection is listed", || {
        id = client_id(&server, &name);
        id.is_some()
    });
    let id = id.expect("an id");
    let killed: i64 = server.query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id));
    assert_eq!(killed, 1);
    let cut = Instant::now();
    eventually("the holder learns it", || {
        matches!(holder.ensure_held(), Err(Error::LockLost { .. }))
    });
    let learnt = cut.elapsed();
    let waiter = lock(&server, "cut", 30_000);
    waiter
        .acquire_timeout(Duration::from_secs(20))
        .expect("taken over");
    eprintln!(
        "redis: a holder whose presence was killed learnt it {learnt:?} after; taken over {:?} after",
        cut.elapsed()
    );
    assert!(learnt < Duration::from_secs(1), "{learnt:?}");
    assert!(
        learnt < cut.elapsed(),
        "taken over before the holder knew it lost the lock"
    );
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "{:?}",
        cut.elapsed()
    );
    assert!(matches!(holder.release(), Err(Error::LockLost { .. })));
    waiter.release().expect("release");
}

/// A Redis whose ACL refuses the presence subscription refuses the
/// acquisition, saying so: a lock without a presence could be taken over
/// by a waiter at once.
#[test]
fn a_refused_presence_refuses_the_acquisition() {
    let server = Server::start();
    let _: () = server.query(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("nosub")
            .arg("on")
            .arg(">secret")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .arg("-subscribe"),
    );
    let url = format!("redis://nosub:secret@127.0.0.1:{}/", server.port);
    let lock = RedisLock::options()
        .lease(Duration::from_secs(5))
        .open(&url, "acl")
        .expect("open");
    match lock.try_acquire() {
        Err(Error::Redis { op, message, .. }) => {
            assert_eq!(op.as_str(), "subscribe", "{message}");
            assert!(message.to_lowercase().contains("subscri"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!lock.is_held());
    let owner: Option<String> = server.query(redis::cmd("GET").arg("portalock:acl"));
    assert_eq!(owner, None, "no key left behind");
}

/// A Redis that stalls (`DEBUG SLEEP`) longer than the holder's presence
/// window: the holder's pings go unanswered meanwhile, but nobody could
/// take its lock over (its presence stayed counted), so once Redis answers
/// again the holder still holds it, and no waiter took it.
#[test]
fn a_stalled_server_leaves_the_holder_its_lock() {
    let server = Server::start();
    let holder = lock(&server, "stall", 10_000);
    holder.acquire().expect("acquire");
    // The whole server stalls for 1.5 s (its event loop sleeps).
    let url = server.url();
    let stall = std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("url");
        let mut con = client.get_connection().expect("connect");
        let _: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg("1.5").query(&mut con);
    });
    // Asked early in the stall: its question is answered only after the
    // presence window (750 ms) has passed; it asks again, and says Ok.
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    holder
        .ensure_held()
        .expect("held: Redis still counted the presence");
    eprintln!(
        "redis: ensure_held asked during a stall answered after {:?}",
        asked.elapsed()
    );
    let waiter = lock(&server, "stall", 10_000);
    assert!(matches!(
        waiter.acquire_timeout(Duration::from_millis(2500)),
        Err(Error::Timeout { .. })
    ));
    holder
        .ensure_held()
        .expect("still held once Redis answers again");
    let record: Option<String> = server.query(redis::cmd("GET").arg("portalock:stall"));
    assert!(record.is_some(), "the holder's key is still there");
    holder.release().expect("release");
    stall.join().expect("the stalling client");
}

/// A record that no presence marks (another client's, or a holder that
/// never subscribed) is never taken over, however long its channel has no
/// subscriber: only its lease frees it.
#[test]
fn a_holder_without_a_presence_is_not_taken_over() {
    let server = Server::start();
    let holder = lock(&server, "unmarked", 2000);
    holder.acquire().expect("acquire");
    let record: String = server.query(redis::cmd("GET").arg("portalock:unmarked"));
    holder.release().expect("release");
    // The same record, written by hand: no presence key, no subscriber.
    let _: () = server.query(
        redis::cmd("SET")
            .arg("portalock:unmarked")
            .arg(&record)
            .arg("PX")
            .arg(30_000),
    );
    let waiter = lock(&server, "unmarked", 2000);
    assert!(matches!(
        waiter.acquire_timeout(Duration::from_millis(2000)),
        Err(Error::Timeout { .. })
    ));
}

/// A holder stopped and continued again and again (a terminal's Ctrl-Z and
/// `fg`, a debugger): its presence survives every interrupted read, and
/// nobody takes its lock over.
#[cfg(unix)]
#[test]
fn a_holder_stopped_and_continued_keeps_its_lock() {
    let server = Server::start();
    let url = server.url();
    let mut holder = spawn("redis-hold", &[&url, "stopgo", "30000"]);
    holder.expect("ACQUIRED");
    let waiter = lock(&server, "stopgo", 30_000);
    for _ in 0..15 {
        holder.signal("STOP");
        std::thread::sleep(Duration::from_millis(30));
        holder.signal("CONT");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(matches!(
        waiter.acquire_timeout(Duration::from_millis(1500)),
        Err(Error::Timeout { .. })
    ));
    holder.send("check");
    assert_eq!(holder.expect("CHECKED"), "Ok");
    holder.send("release");
    assert_eq!(holder.expect("RELEASED"), "Ok");
    waiter.try_acquire().expect("free");
    waiter.release().expect("release");
}
