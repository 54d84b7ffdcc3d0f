//! `portalock completions SHELL` and `portalock man`: shell completions
//! and man pages generated from the command line's own definition.

use std::io::Write;

use clap::CommandFactory;

use crate::{Cli, CompletionsArgs, Failure, ManArgs, Outcome, EXIT_LOCK_ERROR};

/// Prints the completion script for `args.shell`.
pub(crate) fn completions(args: CompletionsArgs) -> Outcome {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "portalock", &mut out);
    write_stdout(&out)
}

/// Prints the man page, or writes one page per subcommand into `--dir`.
pub(crate) fn man(args: ManArgs) -> Outcome {
    let command = Cli::command();
    match args.dir {
        Some(dir) => {
            clap_mangen::generate_to(command, &dir).map_err(|e| {
                Failure::new(
                    format!("cannot write the man pages into {}: {e}", dir.display()),
                    EXIT_LOCK_ERROR,
                )
            })?;
            Ok(0)
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .map_err(|e| Failure::new(format!("cannot render the man page: {e}"), 1))?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Outcome {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map(|()| 0)
        .map_err(|e| Failure::new(format!("cannot write to stdout: {e}"), EXIT_LOCK_ERROR))
}
