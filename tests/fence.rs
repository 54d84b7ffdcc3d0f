//! Fencing tokens (`LockOptions::fencing`): every acquisition's token is
//! larger than every earlier one's, across processes, kills, stale breaks
//! and forced breaks.

mod common;

use std::time::Instant;

use camino::Utf8Path;
use portalock::{LockOptions, LockStrategy};
use rstest::rstest;
use rstest_reuse::apply;

use common::fixture::{every_strategy, lasting_strategies, scratch_root};
use common::{spawn, Proc, EVENT_TIMEOUT};

#[test]
fn child() {
    common::child_entry();
}

/// The tokens in the log, one per line (a line cut short by a kill, if
/// any, is left out: it has no end of line).
fn logged(log: &Utf8Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| line.trim().parse().expect("a token"))
        .collect()
}

/// Eight processes take the lock more than a thousand times between them;
/// each appends its token to a log as a fenced resource would (it refuses
/// a token not larger than the last one, and says so). Processes are
/// killed with SIGKILL at random moments (holding, waiting, moving the
/// counter, releasing) and replaced: the locks of killed holders are
/// broken by the next (`Mkdir`, `Link`) or released by the kernel
/// (`Os`). The log grows strictly, and nobody was refused.
#[apply(every_strategy)]
fn tokens_grow_strictly_across_processes_kills_and_breaks(strategy: LockStrategy) {
    const PROCS: usize = 8;
    const EACH: &str = "130";
    const KILLS: u32 = 24;
    let (_dir, root) = scratch_root();
    let path = root.join("x.lock");
    let log = root.join("log");
    let start = || {
        spawn(
            "fence-log",
            &[strategy.as_str(), path.as_str(), log.as_str(), EACH],
        )
    };
    let mut procs: Vec<Proc> = (0..PROCS).map(|_| start()).collect();
    let deadline = Instant::now() + EVENT_TIMEOUT * 4;
    let mut kills = 0;
    // (the pauses pace the kills; nothing waits on them)
    while kills < KILLS {
        assert!(
            Instant::now() < deadline,
            "{strategy}: the kills took too long"
        );
        std::thread::sleep(std::time::Duration::from_millis(fastrand::u64(2..30)));
        let victim = fastrand::usize(..PROCS);
        std::mem::replace(&mut procs[victim], start()).kill();
        kills += 1;
    }
    for mut proc in procs {
        assert_eq!(proc.expect("DONE"), "", "{strategy}");
    }
    let tokens = logged(&log);
    assert!(
        tokens.len() >= 1000,
        "{strategy}: {} acquisitions",
        tokens.len()
    );
    for pair in tokens.windows(2) {
        assert!(
            pair[1] > pair[0],
            "{strategy}: {} after {}",
            pair[1],
            pair[0]
        );
    }
    println!(
        "fence: {strategy}: {} acquisitions by {PROCS} processes, {kills} kills, tokens {}..={}",
        tokens.len(),
        tokens.first().copied().unwrap_or(0),
        tokens.last().copied().unwrap_or(0)
    );
}

/// A holder whose lock is broken by force (it may be paused, or cut off)
/// still believes it holds the lock: the next holder's token is larger
/// than its own, so a fenced resource refuses the old holder. The old
/// holder learns of the loss when it looks.
#[apply(lasting_strategies)]
fn a_forced_break_gives_the_next_holder_a_larger_token(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("x.lock");
    let spec = format!("{}+fence", strategy.as_str());
    let mut holder = spawn("hold", &[&spec, path.as_str()]);
    holder.expect("ACQUIRED");
    holder.send("fence");
    let old: u64 = holder.expect("FENCE").parse().expect("a token");
    assert!(old > 0);

    let mine = LockOptions::new()
        .strategy(strategy)
        .fencing(true)
        .open(&path)
        .expect("open");
    let removed = mine.force_break().expect("force").expect("a record");
    assert_eq!(removed.pid, holder.pid());
    let guard = mine.try_lock().expect("taken after the break");
    let new = guard.fence().expect("a token");
    assert!(new > old, "{new} after {old}");
    assert_eq!(mine.fence(), Some(new));

    holder.send("check");
    holder.expect("ONLOST");
    assert_eq!(holder.expect("CHECKED"), "LockLost");
    holder.send("fence");
    assert_eq!(
        holder.expect("FENCE"),
        old.to_string(),
        "its token stays its own"
    );
    guard.release().expect("release");
    holder.close_stdin();
    let _ = holder.wait();
    // Without fencing, no token.
    let plain = LockOptions::new()
        .strategy(strategy)
        .open(&path)
        .expect("open");
    assert_eq!(plain.try_lock().expect("free").fence(), None);
}

/// The case fencing exists for: a holder stopped (`SIGSTOP`: a long GC
/// pause, a suspended machine) past its lease. Another process waits out
/// the lease, breaks the lock and takes it with a larger token; the
/// stopped holder, resumed, still believes in its old token, which a
/// fenced resource refuses, and is told it lost the lock when it looks.
#[cfg(unix)]
#[apply(lasting_strategies)]
fn a_holder_stopped_past_its_lease_keeps_the_smaller_token(strategy: LockStrategy) {
    let (_dir, root) = scratch_root();
    let path = root.join("x.lock");
    let spec = format!("{}+fence", strategy.as_str());
    let mut holder = spawn("hold", &[&spec, path.as_str(), "300"]);
    holder.expect("ACQUIRED");
    holder.send("fence");
    let old: u64 = holder.expect("FENCE").parse().expect("a token");
    holder.signal("STOP");
    let mine = LockOptions::new()
        .strategy(strategy)
        .fencing(true)
        .open(&path)
        .expect("open");
    let guard = mine
        .lock_timeout(EVENT_TIMEOUT)
        .expect("taken once the stopped holder's lease ran out");
    let new = guard.fence().expect("a token");
    assert!(new > old, "{new} after {old}");
    holder.signal("CONT");
    holder.send("check");
    let told = loop {
        let (event, data) = holder.next_event();
        if event == "CHECKED" {
            break data;
        }
    };
    assert_eq!(told, "LockLost");
    holder.send("fence");
    assert_eq!(holder.expect("FENCE"), old.to_string());
    guard.release().expect("release");
    holder.close_stdin();
    let _ = holder.wait();
}
