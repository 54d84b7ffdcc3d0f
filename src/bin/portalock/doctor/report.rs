//! `doctor`'s answer: an aligned report for people, one JSON object for
//! scripts (its fields are listed in the README, "portalock doctor").

use std::fmt::Write as _;
use std::time::Duration;

use portalock::{Locality, LockStrategy};
use serde_json::{json, Value};

use super::cycles::{Cycle, BUDGET};
use super::probes::Probe;
use super::{auto_reason, reach, Findings};

/// Where the "OS locks reach other clients" answer comes from.
const NOT_MEASURED: &str = "read from the file system's type and mount options, not measured";

/// The width of the report's labels.
const LABEL: usize = 18;

/// The human report, one line per fact.
pub(crate) fn text(f: &Findings) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<LABEL$}{value}");
    };
    line("directory", &f.dir.display().to_string());
    line("file system", &f.fs.to_string());
    line(
        "auto picks",
        &format!("{}: {}", f.fs.auto_strategy(), auto_reason(&f.fs)),
    );
    line("O_EXCL create", &probe(&f.probes.o_excl));
    let mut link = probe(&f.probes.hard_link);
    if let Some(count) = f.probes.link_count {
        link.push_str(&link_count(count));
    }
    line("hard link", &link);
    line("mkdir", &probe(&f.probes.mkdir));
    line("OS lock", &probe(&f.probes.os_lock));
    let (answer, why) = reach(&f.fs);
    line(
        "OS locks shared",
        &format!("{answer}: {why} ({NOT_MEASURED})"),
    );
    let build = if cfg!(debug_assertions) {
        "; a debug build of portalock: slower than a release build"
    } else {
        ""
    };
    line(
        "cycle cost",
        &format!(
            "uncontended acquire + release, this process alone (at most {} each{build})",
            humantime::format_duration(BUDGET)
        ),
    );
    for (strategy, cycle) in f.cycles.iter() {
        line(&format!("  {strategy}"), &cycle_text(cycle));
    }
    let use_ = match (f.advice.strategy, f.advice.resolves_to) {
        (Some(LockStrategy::Auto), Some(pick)) => format!("auto ({pick} here)"),
        (Some(strategy), _) => format!("--strategy {strategy}"),
        (None, _) => "nothing: no strategy works here".to_owned(),
    };
    line("use", &use_);
    for note in &f.advice.notes {
        line("note", note);
    }
    if !f.scratch_removed {
        line("note", "the scratch directory could not be removed (below)");
    }
    out
}

fn probe(p: &Probe) -> String {
    format!("{}: {}", p.verdict.as_str(), p.detail)
}

fn link_count(count: u64) -> String {
    if count == 1 {
        "; link count 1 after the link (the file system does not count links; \
         portalock does not rely on it)"
            .to_owned()
    } else {
        format!("; link count {count}")
    }
}

fn cycle_text(cycle: &Cycle) -> String {
    match cycle {
        Cycle::Measured {
            cycles,
            median,
            mean,
            trusted,
        } => {
            let trusted = if *trusted {
                ", with trust_os_locks: refused here without it"
            } else {
                ""
            };
            format!(
                "{:>9.1} us median, {:.1} us mean ({cycles} cycles{trusted})",
                micros(*median),
                micros(*mean)
            )
        }
        Cycle::Skipped(why) => format!("not timed: {why}"),
        Cycle::Unsupported(why) => format!("unsupported here: {why}"),
        Cycle::Failed(why) => format!("failed: {why}"),
    }
}

/// `d` in microseconds, to a tenth.
fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// The JSON answer.
pub(crate) fn json(f: &Findings) -> Value {
    let locality = match f.fs.locality() {
        Locality::Local => "local",
        Locality::Network => "network",
        Locality::Fuse => "fuse",
        _ => "unknown",
    };
    let probe = |p: &Probe| json!({"result": p.verdict.as_str(), "detail": p.detail});
    let mut hard_link = probe(&f.probes.hard_link);
    hard_link["link_count"] = json!(f.probes.link_count);
    let (answer, why) = reach(&f.fs);
    let cycles: serde_json::Map<String, Value> = f
        .cycles
        .iter()
        .map(|(strategy, cycle)| (strategy.to_string(), cycle_json(cycle)))
        .collect();
    json!({
        "dir": f.dir.to_string_lossy(),
        "file_system": {
            "name": f.fs.name(),
            "locality": locality,
            "os_locks_shared": f.fs.os_locks_shared(),
        },
        "auto": {"strategy": f.fs.auto_strategy(), "why": auto_reason(&f.fs)},
        "probes": {
            "o_excl": probe(&f.probes.o_excl),
            "hard_link": hard_link,
            "mkdir": probe(&f.probes.mkdir),
            "os_lock": probe(&f.probes.os_lock),
        },
        "os_locks_reach_other_clients": {"answer": answer, "why": why, "measured": false},
        "cycles": cycles,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "use": {
            "strategy": f.advice.strategy,
            "resolves_to": f.advice.resolves_to,
            "notes": f.advice.notes,
        },
        "scratch_removed": f.scratch_removed,
    })
}

fn cycle_json(cycle: &Cycle) -> Value {
    match cycle {
        Cycle::Measured {
            cycles,
            median,
            mean,
            trusted,
        } => json!({
            "result": "measured",
            "cycles": cycles,
            "median_us": micros(*median),
            "mean_us": micros(*mean),
            "trust_os_locks": trusted,
            "note": trusted.then_some("refused here without trust_os_locks"),
        }),
        Cycle::Skipped(why) => unmeasured("skipped", why),
        Cycle::Unsupported(why) => unmeasured("unsupported", why),
        Cycle::Failed(why) => unmeasured("failed", why),
    }
}

fn unmeasured(result: &str, why: &str) -> Value {
    json!({
        "result": result,
        "cycles": 0,
        "median_us": null,
        "mean_us": null,
        "trust_os_locks": false,
        "note": why,
    })
}
