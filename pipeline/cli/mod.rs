//! The command line (DESIGN §9): clap definitions, one function per subcommand, and the
//! exit-code policy.
//!
//! # Layout
//! - `args`: the clap types (raw flags).
//! - `run`: `pipe run`: plan, start, hot reload, wait, report.
//! - `commands`: every other subcommand.
//! - `exit`: [`Exit`], the one exit-code map.
//! - `logging`: stderr messages through `tracing`, `-v`/`-q`, `PIPE_LOG`.
//!
//! Flags are parsed in two phases, as in ripgrep: clap gives raw [`Cli`] values, then
//! each command turns them into a validated plan before doing anything.

mod args;
mod commands;
mod exit;
pub mod logging;
mod run;

pub use args::*;
pub use exit::Exit;

/// Runs one subcommand to its end.
pub fn execute(command: CommandLine) -> Exit {
    match command {
        CommandLine::Run(args) => run::run(args),
        CommandLine::Publish(args) => commands::publish(args),
        CommandLine::Check(args) => commands::check(args),
        CommandLine::Stages(args) => commands::stages(args),
        CommandLine::Bench(args) => commands::bench(args),
        CommandLine::Generate(args) => commands::generate(args),
        CommandLine::New(args) => commands::new_stage(args),
        CommandLine::Test(args) => commands::test(args),
        CommandLine::Completions(args) => commands::completions(args),
        CommandLine::Man => commands::man(),
        CommandLine::Ctl(args) => ctl(args),
    }
}

/// `pipe ctl`: one order to a running `pipe run --listen`; exit 0 when it was carried
/// out, 1 when refused, 2 when no run answered.
fn ctl(args: CtlArgs) -> Exit {
    use crate::ops::Order;
    let order = match args.order {
        CtlOrder::Status => Order::Status,
        CtlOrder::Swap { stage, file } => Order::Swap(stage, file),
        CtlOrder::Rollback { stage } => Order::Rollback(stage),
    };
    match crate::ops::send(&args.addr, &order) {
        Ok((200, body)) => {
            print!("{body}");
            Exit::Ok
        }
        Ok((_, body)) => {
            eprint!("pipe ctl: {body}");
            Exit::Failed
        }
        Err(e) => exit::fail(Exit::Usage, &e),
    }
}
