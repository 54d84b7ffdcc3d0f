//! The flock(1) form: `portalock [OPTIONS] LOCK COMMAND...` and
//! `portalock [OPTIONS] FD`, with no subcommand, answering with flock(1)'s
//! exit codes.

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::{descriptor, run, Outcome, RunArgs, COMMAND, EXIT_FLOCK_CONFLICT, EXIT_USAGE};

/// The flock(1) form: `run`'s options, `-u`, and LOCK or FD.
#[derive(Debug, Parser)]
#[command(
    name = "portalock",
    version,
    override_usage = "portalock [OPTIONS] LOCK COMMAND [ARGS]...\n       portalock [OPTIONS] FD",
    after_help = "See `portalock --help` for the subcommands and the rules of this form."
)]
struct FlockForm {
    #[command(flatten)]
    run: RunArgs,
    /// Unlock descriptor FD instead of locking it (fd mode; flock(1)'s -u).
    #[arg(long, short = 'u')]
    unlock: bool,
}

/// Parses `args` (the whole command line) in the flock(1) form and runs
/// it.
pub(crate) fn main(args: Vec<OsString>) -> Outcome {
    // COMMAND is optional here: without one, LOCK is a descriptor.
    let parsed = FlockForm::command()
        .mut_arg(COMMAND, |arg| {
            arg.required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)
        })
        .try_get_matches_from(args)
        .and_then(|matches| FlockForm::from_arg_matches(&matches));
    let FlockForm {
        run: mut args,
        unlock,
    } = match parsed {
        Ok(form) => form,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let _ = e.print();
            return Ok(EXIT_USAGE);
        }
    };
    args.wait
        .conflict_exit_code
        .get_or_insert(EXIT_FLOCK_CONFLICT);
    // `portalock -n status L` meant the subcommand, not a lock file called
    // `status`.
    if crate::names_a_subcommand(args.lock.as_os_str()) {
        return usage(&format!(
            "`{}` names a subcommand: options of a subcommand go after its name, \
             and a lock file of that name is written `./{}`",
            args.lock.display(),
            args.lock.display()
        ));
    }
    if args.command.is_empty() && args.shell.is_none() {
        return match descriptor::number(&args.lock) {
            Some(fd) => descriptor::lock(fd, &args, unlock),
            None => usage(&format!(
                "`{}` is not a descriptor number: give a lock path and a command, \
                 or the number of an open descriptor",
                args.lock.display()
            )),
        };
    }
    if unlock {
        return usage("-u/--unlock unlocks a descriptor: `portalock -u FD`, with no command");
    }
    run::run(args)
}

/// A usage error of the flock(1) form: one line and flock(1)'s hint, and
/// EX_USAGE.
pub(crate) fn usage(message: &str) -> Outcome {
    eprintln!("portalock: {message}\nTry 'portalock --help' for more information.");
    Ok(EXIT_USAGE)
}
