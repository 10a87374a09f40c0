//! The `pipe` binary: parse → plan → run, and the exit code (`cli::Exit` is the one map
//! from outcomes to codes: 0 ok, 1 failed, 2 usage, 128+N signal).

use std::process::ExitCode;

use clap::Parser;
use pipe::cli::{self, Cli};

fn main() -> ExitCode {
    // `pipe __probe ...`: the hidden mode that loads a plugin before the host does.
    if let Some(code) = pipe::plugin::probe_main() {
        return ExitCode::from(code);
    }
    let cli = Cli::parse();
    cli::logging::init(cli.verbose, cli.quiet);
    let exit = cli::execute(cli.command);
    pipe::plugin::cleanup();
    exit.into()
}
