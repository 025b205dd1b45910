//! `quernctl`, the command-line client for quernd: parses the command line,
//! runs the verb, and turns the outcome into an exit code.
//!
//! Exit codes: 0 on success; 1 on any error, including `wait` for a job
//! that did not succeed; 2 for a bad command line.

mod cli;
mod client;
mod commands;
mod output;
mod parse;

use std::io;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };

    // One thread is plenty for one client connection, and starts faster.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("quernctl: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };

    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`quernctl events | head`):
        // stop quietly with the status a shell gives a process killed by
        // SIGPIPE, as other command-line tools do.
        Err(err) if is_broken_pipe(&err) => ExitCode::from(141),
        Err(err) => {
            eprintln!("quernctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a command-line error the way other errors are reported, with a
/// `quernctl: ` prefix instead of clap's `error: `. Help and version
/// requests are printed as clap prints them.
fn usage_error(err: &clap::Error) -> ExitCode {
    let code = u8::try_from(err.exit_code()).unwrap_or(2);
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Nothing useful can be done if the help text cannot be written.
        let _ = err.print();
        return ExitCode::from(code);
    }
    let text = err.render().to_string();
    eprint!(
        "quernctl: {}",
        text.strip_prefix("error: ").unwrap_or(&text)
    );
    ExitCode::from(code)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
