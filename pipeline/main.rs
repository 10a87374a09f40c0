//! The `pipe` binary: parse → plan → run, and the exit code (`cli::Exit` is the one map
//! from outcomes to codes: 0 ok, 1 failed, 2 usage, 128+N signal).

use std::process::ExitCode;

use clap::Parser;
use pipe::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::logging::init(cli.verbose, cli.quiet);
    let exit = cli::execute(cli.command);
    pipe::loader::cleanup();
    exit.into()
}
