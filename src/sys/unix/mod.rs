//! Processes and machines on Unix.
//!
//! A process's start stamp must not depend on the wall clock, which an NTP
//! correction or `date -s` steps. Linux: the start time in clock ticks
//! since boot, field 22 of `/proc/<pid>/stat`, which never changes for a
//! process and, with the boot id beside it, names one process exactly.
//! (sysinfo's start time is `btime` from `/proc/stat` plus those ticks, and
//! `btime` is the wall clock minus the uptime: it moves with every step.)
//! macOS: the creation time the kernel stored when the process was made
//! (`pbi_start_tvsec`), which a later step does not change. FreeBSD and the
//! other BSDs compute a process's start from the boot time, which moves
//! with the clock; the stamp is therefore the start minus the boot time,
//! both read at once, which a step leaves unchanged (within a second).

use std::fs::File;
use std::io;
#[cfg(target_os = "linux")]
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use super::ProcessState;

mod dir;
mod file;
pub(crate) use dir::DirHandle;
pub(crate) use file::*;

/// This process's PID, asked of the kernel once and again after a `fork()`
/// (a lock's every acquisition needs it several times, and `getpid` is a
/// system call).
pub(crate) fn pid() -> u32 {
    use std::sync::atomic::Ordering;
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    REGISTERED.call_once(forget_pid_on_fork);
    let pid = std::process::id();
    if !NO_CACHE.load(Ordering::Relaxed) {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// The cached PID; 0 when it must be asked.
static PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs in the child of every `fork()`: the cached PID is the parent's.
extern "C" fn pid_forgotten() {
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
}

#[allow(unsafe_code)]
fn forget_pid_on_fork() {
    // SAFETY: `pthread_atfork` only records the three function pointers;
    // the child handler, the one given, stores to an atomic, which is
    // async-signal-safe and so allowed in a forked child. If it cannot be
    // registered (ENOMEM), the cache is not used at all.
    let registered = unsafe { libc::pthread_atfork(None, None, Some(pid_forgotten)) };
    if registered != 0 {
        NO_CACHE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Set if the fork handler could not be registered.
static NO_CACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the kernel knows a process `pid` (a zombie included): `Some`
/// on an answer, `None` if the question failed in a way that tells
/// nothing. `EPERM` (another user's process) is a yes.
fn exists(pid: u32) -> Option<bool> {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        // PID 0 or beyond the kernel's range: no process of ours.
        return Some(false);
    };
    match rustix::process::test_kill_process(raw) {
        Ok(()) | Err(rustix::io::Errno::PERM) => Some(true),
        Err(rustix::io::Errno::SRCH) => Some(false),
        Err(_) => None,
    }
}

/// The state of process `pid`.
///
/// Linux: `/proc/<pid>/stat` gives the state (a zombie has exited) and the
/// start. If it cannot be read (`ENOENT` under `hidepid`, `EMFILE`,
/// `EACCES`), `kill(pid, 0)` decides between exited and running with an
/// unknown start.
#[cfg(target_os = "linux")]
pub(crate) fn process_state(pid: u32) -> ProcessState {
    if let Ok(stat) = read_stat(pid) {
        if let Some((state, ticks)) = parse_stat(&stat) {
            return if matches!(state, 'Z' | 'X' | 'x') {
                ProcessState::Exited
            } else {
                ProcessState::Running {
                    start: Some(format!("linux-ticks:{ticks}")),
                }
            };
        }
    }
    from_kill(pid)
}

/// Elsewhere: `kill(pid, 0)` says whether it exists, sysinfo what its
/// start is and whether it is a zombie.
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_state(pid: u32) -> ProcessState {
    match exists(pid) {
        Some(true) => {}
        Some(false) => return ProcessState::Exited,
        None => return ProcessState::Unknown,
    }
    match super::sysinfo_process(pid) {
        // It exists for the kernel, but could not be read.
        None => ProcessState::Running { start: None },
        Some((true, _)) => ProcessState::Exited,
        Some((false, start)) => ProcessState::Running {
            start: start.map(stamp_of_start),
        },
    }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn stamp_of_start(start: u64) -> String {
    format!("darwin-created:{start}")
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "ios")))]
fn stamp_of_start(start: u64) -> String {
    let boot = sysinfo::System::boot_time();
    format!("bsd-since-boot:{}", start.saturating_sub(boot))
}

#[cfg(target_os = "linux")]
fn from_kill(pid: u32) -> ProcessState {
    match exists(pid) {
        Some(true) => ProcessState::Running { start: None },
        Some(false) => ProcessState::Exited,
        None => ProcessState::Unknown,
    }
}

/// `/proc/<pid>/stat`, read with one small read.
#[cfg(target_os = "linux")]
fn read_stat(pid: u32) -> io::Result<Vec<u8>> {
    let mut file = File::open(format!("/proc/{pid}/stat"))?;
    let mut buf = Vec::with_capacity(512);
    file.by_ref().take(4096).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The state (field 3) and start time in ticks since boot (field 22) of a
/// `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses: fields are counted after
/// the last `)`.
#[cfg(any(target_os = "linux", test))]
fn parse_stat(stat: &[u8]) -> Option<(char, u64)> {
    let text = std::str::from_utf8(&stat[stat.iter().rposition(|&b| b == b')')? + 1..]).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4 to 21 lie between the state and the start time.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The boot id: Linux's `/proc/sys/kernel/random/boot_id`; elsewhere the
/// boot time (`boot-time:<unix seconds>`, which may be off by a second
/// between two readers).
pub(crate) fn boot_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(id.trim().to_owned()).filter(|s| !s.is_empty())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Some(format!("boot-time:{}", sysinfo::System::boot_time()))
    }
}

/// The longest file name the file system that holds `dir` accepts, in
/// bytes, if it can be asked (`statvfs`).
pub(crate) fn name_max(dir: &std::path::Path) -> Option<usize> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    usize::try_from(stat.f_namemax).ok().filter(|&n| n > 0)
}

/// A clock that counts on while the machine is suspended (a laptop's lid
/// closed, a VM paused): on Linux `CLOCK_BOOTTIME`, on macOS
/// `CLOCK_MONOTONIC` (which counts sleep there). A lease must be measured
/// on it: `Instant` stops during a suspend, and a holder would believe a
/// lease still runs that its server saw expire. On the BSDs
/// `CLOCK_MONOTONIC` may stop while the machine sleeps.
pub(crate) fn since_boot() -> std::time::Duration {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = rustix::time::ClockId::Boottime;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = rustix::time::ClockId::Monotonic;
    let now = rustix::time::clock_gettime(clock);
    std::time::Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The PID namespace of this process (Linux: `pid:[<inode>]`).
pub(crate) fn pid_namespace() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
        link.to_str().map(str::to_owned)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The machine id (Linux: `/etc/machine-id`, set once per installation),
/// if there is one. Never stored as such: see `owner::Identity`.
pub(crate) fn machine_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|path| {
                let id = std::fs::read_to_string(path).ok()?;
                let id = id.trim();
                (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Spawns `command`, which inherits the open files `keep` (and no process
/// spawned meanwhile by another thread does), and lets it run only once
/// `name_it(pid)` has returned `Ok`: between the fork and the exec the
/// child waits until then. If `name_it` fails, or this process dies first,
/// the command never runs.
///
/// This is how a lock is handed to a command (`LockFile::spawn`): its
/// record names the command before the command starts (an exec keeps the
/// PID and the start time), and an `Os` lock's open file is the command's
/// too, so the kernel keeps the lock while either has it.
///
/// Every file portalock opens is close-on-exec, and so are the two pipes
/// of the gate: `keep`'s flags are cleared in the child alone, after the
/// fork. The gate stays in `command` (a `pre_exec` closure cannot be taken
/// back) but is disarmed when this returns: a later spawn of `command` is
/// a plain spawn. Gates are passed one at a time in a process, so that no
/// gated child inherits another gate's pipe (and waits forever if this
/// process dies).
#[allow(unsafe_code)]
pub(crate) fn spawn_gated(
    command: &mut Command,
    keep: &[&File],
    name_it: &mut (dyn FnMut(u32) -> io::Result<()> + Send),
) -> io::Result<Child> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    static ONE_GATE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_GATE_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (pid_read, pid_write) = cloexec_pipe()?;
    let (go_read, go_write) = cloexec_pipe()?;
    // A file on descriptor 0, 1 or 2 (this process runs with its standard
    // I/O closed) would be overwritten by the child's standard I/O set-up
    // before the gate runs: such a file is passed through a duplicate above
    // them (the same open file, so the same lock).
    let lifted: Vec<rustix::fd::OwnedFd> = keep
        .iter()
        .filter(|f| f.as_raw_fd() <= 2)
        .map(|f| rustix::io::fcntl_dupfd_cloexec(f, 3))
        .collect::<rustix::io::Result<_>>()?;
    let keep: Vec<i32> = keep
        .iter()
        .map(|f| f.as_raw_fd())
        .filter(|&fd| fd > 2)
        .chain(lifted.iter().map(|f| f.as_raw_fd()))
        .collect();
    let (tell, wait, parent_end) = (
        pid_write.as_raw_fd(),
        go_read.as_raw_fd(),
        go_write.as_raw_fd(),
    );
    let armed = Arc::new(AtomicBool::new(true));
    let armed_in_child = Arc::clone(&armed);
    let gate = move || -> io::Result<()> {
        // The child's memory is a copy: only a spawn made while the gate
        // was armed passes it.
        if !armed_in_child.load(Ordering::SeqCst) {
            return Ok(());
        }
        // SAFETY: every number was an open descriptor of the parent when
        // it forked (the caller borrows `keep`; the pipes live until
        // `spawn` returns), hence of this child. Only async-signal-safe
        // calls follow (fcntl, close, getpid, write, read, _exit), and
        // nothing is allocated or locked.
        let fd = |raw| unsafe { BorrowedFd::borrow_raw(raw) };
        for &raw in &keep {
            rustix::io::fcntl_setfd(fd(raw), rustix::io::FdFlags::empty())?;
        }
        // Handlers of the parent's (`portalock run`'s signal forwarding, a
        // library user's) would run on this forked copy while it waits, and
        // swallow a Ctrl-C meant to end it. An exec resets handled signals
        // to their defaults anyway: do it now. Ignored ones stay ignored,
        // as across an exec.
        default_handled_signals();
        // SAFETY: as above; the parent's end of the gate must be closed in
        // the child, or the child would never see it close if the parent
        // died.
        unsafe { rustix::io::close(parent_end) };
        let pid = rustix::process::Pid::as_raw(Some(rustix::process::getpid()));
        let told = retry_eintr(|| rustix::io::write(fd(tell), &pid.to_ne_bytes()));
        let mut answer = [0u8; 1];
        match (
            told,
            retry_eintr(|| rustix::io::read(fd(wait), &mut answer)),
        ) {
            (Ok(4), Ok(1)) if answer[0] == b'g' => Ok(()),
            // Refused: the parent waits in `spawn` for the error.
            (Ok(4), Ok(1)) => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            // The parent is gone: nobody can hear an error (the standard
            // library would abort on reporting it). Leave quietly; the
            // command never runs.
            // SAFETY: `_exit` is async-signal-safe and runs no handler.
            _ => unsafe { libc::_exit(125) },
        }
    };
    // SAFETY: the closure runs between fork and exec and keeps to
    // async-signal-safe calls (see above).
    unsafe {
        command.pre_exec(gate);
    }
    let spawned = std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("portalock-gate".to_owned())
            .spawn_scoped(scope, move || -> Option<io::Result<()>> {
                let mut pid = [0u8; 4];
                let mut got = 0;
                while got < 4 {
                    match retry_eintr(|| rustix::io::read(&pid_read, &mut pid[got..])) {
                        Ok(0) | Err(_) => return None, // no child got that far
                        Ok(n) => got += n,
                    }
                }
                let named = name_it(u32::from_ne_bytes(pid));
                let answer: &[u8] = if named.is_ok() { b"g" } else { b"n" };
                // The parent keeps the read end open: no EPIPE.
                let _ = retry_eintr(|| rustix::io::write(&go_write, answer));
                Some(named)
            });
        let helper = match helper {
            Ok(helper) => helper,
            // No thread, no gate: the command must not start ungated.
            Err(e) => return Err(e),
        };
        let spawned = command.spawn();
        // The helper sees the end of the pipe if no child wrote to it.
        drop(pid_write);
        match (spawned, helper.join()) {
            (Err(_), Ok(Some(Err(why)))) => Err(why),
            // Naming panicked: the child saw its gate close and left
            // without running the command (a spawn that seemed to work).
            (Ok(mut child), Err(_)) => {
                let _ = child.wait();
                Err(io::Error::other(
                    "naming the command in the lock's record failed",
                ))
            }
            (spawned, _) => spawned,
        }
    });
    armed.store(false, Ordering::SeqCst);
    drop(go_read);
    drop(lifted);
    spawned
}

/// Sets every signal that has a handler back to its default action, as an
/// exec would; async-signal-safe (for a child between fork and exec).
#[allow(unsafe_code)]
fn default_handled_signals() {
    for signal in 1..32 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `sigaction` is async-signal-safe; the structures live on
        // this stack frame, zeroed (a valid empty mask, no flags).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
    }
}

/// `op`, again while the call is interrupted by a signal.
fn retry_eintr<T>(mut op: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match op() {
            Err(rustix::io::Errno::INTR) => {}
            other => return other,
        }
    }
}

/// A pipe whose two ends are close-on-exec and above the standard
/// descriptors (if this process runs with 0, 1 or 2 closed, a pipe could
/// get one of those numbers, which the child's standard I/O set-up would
/// overwrite before the gate runs).
fn cloexec_pipe() -> io::Result<(rustix::fd::OwnedFd, rustix::fd::OwnedFd)> {
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    let (read, write) = rustix::pipe::pipe()?;
    let above = |end: rustix::fd::OwnedFd| -> io::Result<rustix::fd::OwnedFd> {
        if end.as_raw_fd() > 2 {
            rustix::io::fcntl_setfd(&end, rustix::io::FdFlags::CLOEXEC)?;
            Ok(end)
        } else {
            Ok(rustix::io::fcntl_dupfd_cloexec(&end, 3)?)
        }
    };
    Ok((above(read)?, above(write)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = b"4242 (a (strange) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                     1 2 0 0 20 0 1 0 987654 12345 67 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));
        assert_eq!(parse_stat(b"4242 (x) Z 1 2"), None);
        assert_eq!(parse_stat(b"no parenthesis"), None);
    }

    #[test]
    fn a_gate_that_is_not_opened_runs_no_command() {
        let mut named = None;
        let mut refuse = |pid: u32| {
            named = Some(pid);
            Err(io::Error::other("no"))
        };
        let mut cmd = Command::new("true");
        cmd.stdin(std::process::Stdio::piped());
        let spawned = spawn_gated(&mut cmd, &[], &mut refuse);
        let err = spawned.expect_err("the command must not run");
        assert_eq!(err.to_string(), "no");
        assert!(named.is_some(), "the child was named before its exec");
        let mut open = |_pid: u32| Ok(());
        let mut child = spawn_gated(&mut Command::new("true"), &[], &mut open).expect("spawn");
        assert!(child.wait().expect("wait").success());
    }

    /// The gate stays in the `Command` (there is no way to take a
    /// `pre_exec` closure back out): a second spawn of it must be a plain
    /// spawn, touching no descriptor of this process.
    #[test]
    fn a_command_spawned_again_passes_no_gate() {
        let mut cmd = Command::new("true");
        let mut open = |_pid: u32| Ok(());
        let mut child = spawn_gated(&mut cmd, &[], &mut open).expect("spawn");
        assert!(child.wait().expect("wait").success());
        // Descriptors that may now have the numbers the gate used.
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<File> = (0..8)
            .map(|i| File::create(dir.path().join(i.to_string())).expect("file"))
            .collect();
        let status = cmd.status().expect("spawned again");
        assert!(status.success(), "{status}");
        for i in 0..files.len() {
            let len = std::fs::metadata(dir.path().join(i.to_string()))
                .expect("meta")
                .len();
            assert_eq!(len, 0, "the second spawn wrote into file {i}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_runs_with_a_start_in_ticks() {
        match process_state(std::process::id()) {
            ProcessState::Running { start: Some(start) } => {
                assert!(start.starts_with("linux-ticks:"), "{start}")
            }
            other => panic!("{other:?}"),
        }
    }
}
