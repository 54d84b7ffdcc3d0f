//! Passing signals on to the command.
//!
//! The rule: pass on what the command would not get by itself. A
//! terminal's Ctrl-C (SIGINT), Ctrl-\\ (SIGQUIT) and hang-up (SIGHUP) are
//! sent by the kernel to every process of the terminal's foreground
//! process group; when the command is in portalock's group it gets them
//! already, and a second SIGINT would make many programs quit without
//! cleaning up. Signals sent to portalock alone (`kill PID`, a job
//! scheduler, `timeout`) are passed on. Linux tells the two apart (the
//! signal's `si_code`); elsewhere every caught signal is passed on.
//! A signal sent with `kill` to the whole process group (a negative PID)
//! reaches the command twice: send it to portalock alone.

#[cfg(not(unix))]
pub(crate) use other::*;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(unix)]
mod unix {
    /// The signal that killed the process whose exit status is `status`.
    pub(crate) fn killed_by(status: std::process::ExitStatus) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    }

    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    use signal_hook::iterator::Handle;

    const CAUGHT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

    #[cfg(target_os = "linux")]
    type Signals =
        signal_hook::iterator::SignalsInfo<signal_hook::iterator::exfiltrator::WithOrigin>;
    #[cfg(not(target_os = "linux"))]
    type Signals = signal_hook::iterator::Signals;

    pub(crate) struct Caught(Signals);

    pub(crate) struct Forwarding {
        handle: Handle,
        thread: std::thread::JoinHandle<()>,
    }

    /// Starts catching the signals that ask a job to stop; they wait until
    /// [`forward`] passes them on. portalock itself keeps running, so that
    /// it releases the lock once the command has exited.
    pub(crate) fn catch() -> Option<Caught> {
        match Signals::new(CAUGHT) {
            Ok(signals) => Some(Caught(signals)),
            Err(e) => {
                eprintln!("portalock: cannot pass signals on to the command: {e}");
                None
            }
        }
    }

    /// A signal caught so far (taken out), if any.
    pub(crate) fn arrived(caught: &mut Option<Caught>) -> Option<i32> {
        let Caught(signals) = caught.as_mut()?;
        let first = signals.pending().next();
        #[cfg(target_os = "linux")]
        return first.map(|origin| origin.signal);
        #[cfg(not(target_os = "linux"))]
        return first;
    }

    /// Passes what was caught, and what comes, on to `pid` (by the rule in
    /// the module docs), until [`stop`].
    pub(crate) fn forward(caught: Option<Caught>, pid: u32) -> Option<Forwarding> {
        let Caught(mut signals) = caught?;
        let child = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            for info in signals.forever() {
                #[cfg(target_os = "linux")]
                let (signal, pass) = {
                    let from_kernel =
                        matches!(info.cause, signal_hook::low_level::siginfo::Cause::Kernel);
                    (
                        info.signal,
                        forward_from_kernel(info.signal, from_kernel, child),
                    )
                };
                #[cfg(not(target_os = "linux"))]
                let (signal, pass) = (info, true);
                if pass {
                    if let Some(signal) = rustix::process::Signal::from_named_raw(signal) {
                        let _ = rustix::process::kill_process(child, signal);
                    }
                }
            }
        });
        Some(Forwarding { handle, thread })
    }

    /// Whether a signal the kernel sent (`from_kernel`: a terminal's) or a
    /// process sent must be passed on to `child`.
    #[cfg(target_os = "linux")]
    fn forward_from_kernel(signal: i32, from_kernel: bool, child: rustix::process::Pid) -> bool {
        // `/proc` speaks of the PID namespace that mounted it: one that
        // does not know this process by its own PID (a PID namespace made
        // without a `/proc` of its own) cannot say; then the signal is
        // passed on (the command may get a terminal's signal twice).
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let own_proc = std::fs::read_to_string("/proc/self/stat").is_ok_and(|stat| {
            stat.split_ascii_whitespace().next() == Some(me.to_string().as_str())
        });
        if !own_proc {
            return true;
        }
        let ours = group_and_session("self");
        let theirs = group_and_session(&child.as_raw_nonzero().to_string());
        let same_group = matches!((ours, theirs), (Some((a, _)), Some((b, _))) if a == b);
        // A hang-up reaches the session leader alone: if portalock leads
        // its session, the command did not get it.
        let leads_session = ours.is_some_and(|(_, sid)| sid == i64::from(me));
        should_forward(signal, from_kernel, same_group, leads_session)
    }

    /// The process group and session (fields 5 and 6 of
    /// `/proc/<pid>/stat`, counted after the command name's last `)`).
    ///
    /// Read from `/proc` rather than asked with `getpgid`/`getsid`: in a
    /// PID namespace whose group or session leader lives outside (a
    /// container started from a shell, `unshare --pid`), the kernel answers
    /// 0, which rustix's `Pid` cannot hold. Here 0 is a value: a command
    /// that stayed in portalock's group shows the same 0, and a command
    /// that made its own group shows its own PID.
    #[cfg(target_os = "linux")]
    fn group_and_session(pid: &str) -> Option<(i64, i64)> {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        parse_group_and_session(&stat)
    }

    /// The parsing half of [`group_and_session`].
    #[cfg(target_os = "linux")]
    pub(crate) fn parse_group_and_session(stat: &[u8]) -> Option<(i64, i64)> {
        let after = stat.iter().rposition(|&b| b == b')')? + 1;
        let text = std::str::from_utf8(stat.get(after..)?).ok()?;
        // State, parent, group, session.
        let mut fields = text.split_ascii_whitespace().skip(2);
        let group = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        Some((group, session))
    }

    /// The rule, for the unit test.
    #[cfg(target_os = "linux")]
    pub(crate) fn should_forward(
        signal: i32,
        from_kernel: bool,
        same_group: bool,
        leads_session: bool,
    ) -> bool {
        !(from_kernel && same_group && !(signal == SIGHUP && leads_session))
    }

    /// Stops catching: what was caught and not forwarded is dropped.
    pub(crate) fn stop(caught: Option<Caught>, forwarding: Option<Forwarding>) {
        drop(caught);
        if let Some(Forwarding { handle, thread }) = forwarding {
            handle.close();
            let _ = thread.join();
        }
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[test]
        fn group_and_session_are_read_after_the_command_name() {
            let stat = b"42 (a) b (c)) S 1 0 0 0 -1 4194560";
            assert_eq!(parse_group_and_session(stat), Some((0, 0)));
            let stat = b"42 (sh) S 1 42 7 34816 42 4194560";
            assert_eq!(parse_group_and_session(stat), Some((42, 7)));
            assert_eq!(parse_group_and_session(b"42 (sh"), None);
            assert_eq!(parse_group_and_session(b"42 (sh) S 1"), None);
            // This process: a group and a session, whatever their numbers.
            assert!(group_and_session("self").is_some());
        }

        #[test]
        fn a_terminals_signals_are_not_passed_on_to_a_command_that_got_them() {
            // Ctrl-C at the terminal, the command in our group: it has it.
            assert!(!should_forward(SIGINT, true, true, false));
            assert!(!should_forward(SIGQUIT, true, true, false));
            assert!(!should_forward(SIGHUP, true, true, false));
            // `kill -INT <portalock>`: only portalock got it.
            assert!(should_forward(SIGINT, false, true, false));
            assert!(should_forward(SIGTERM, false, true, false));
            // The command left our group: nothing reaches it by itself.
            assert!(should_forward(SIGINT, true, false, false));
            // A hang-up of the terminal that portalock's session leads.
            assert!(should_forward(SIGHUP, true, true, true));
        }
    }
}

#[cfg(not(unix))]
mod other {
    /// No process is killed by a signal here.
    pub(crate) fn killed_by(_status: std::process::ExitStatus) -> Option<i32> {
        None
    }

    /// On Windows, Ctrl-C reaches every process of the console, the
    /// command included: nothing to pass on.
    pub(crate) fn catch() -> Option<()> {
        None
    }

    pub(crate) fn arrived(_caught: &mut Option<()>) -> Option<i32> {
        None
    }

    pub(crate) fn forward(_caught: Option<()>, _pid: u32) -> Option<()> {
        None
    }

    pub(crate) fn stop(_caught: Option<()>, _forwarding: Option<()>) {}
}
