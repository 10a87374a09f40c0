//! The `pipe` binary: parse → plan → run, and the exit-code policy.
//!
//! Exit codes: 0 ok (and a closed stdout, as in `pipe run | head`), 1 a run that failed,
//! 2 a usage or configuration error, 128+N stopped by signal N (130 SIGINT, 143 SIGTERM).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pipe::cli::{Cli, CommandLine, RunArgs, StatsFormat};
use pipe::commands;
use pipe::engine::{self, Outcome, RunOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    pipe::logging::init(cli.verbose, cli.quiet);
    let code = match cli.command {
        CommandLine::Run(args) => run(args),
        CommandLine::Publish(args) => pipe::jetstream::publish::run(args),
        CommandLine::Check(args) => commands::check(args),
        CommandLine::Stages(args) => commands::stages(args),
        CommandLine::Bench(args) => commands::bench(args),
        CommandLine::Generate(args) => commands::generate(args),
        CommandLine::New(args) => commands::new_stage(args),
        CommandLine::Test(args) => commands::test(args),
        CommandLine::Completions(args) => commands::completions(args),
        CommandLine::Man => commands::man(),
    };
    pipe::loader::cleanup();
    ExitCode::from(code)
}

fn run(args: RunArgs) -> u8 {
    // Plan: config, pipeline, inputs.
    let (plan, inputs) = match commands::plan_run(args.config.as_deref(), &args.args) {
        Ok(p) => p,
        Err(e) => return commands::fail(2, &e),
    };
    let opts = RunOptions {
        inputs,
        output: args.output,
        input_format: args.input_format,
        output_format: args.output_format,
        watch: !args.no_watch,
        dead_letter: args.dead_letter,
        batch_size: args.batch_size,
        workers: args.workers,
        progress: !args.no_progress && (args.progress || std::io::stderr().is_terminal()),
        discard_output: false,
    };
    // Run.
    let report = match engine::run(plan, opts) {
        Ok(r) => r,
        Err(e) => return commands::fail(2, &e),
    };
    match args.stats {
        Some(StatsFormat::Table) => eprint!("{}", report.stats.table()),
        Some(StatsFormat::Json) => eprintln!(
            "{}",
            serde_json::to_string(&report.stats).unwrap_or_default()
        ),
        None => {}
    }
    match report.outcome {
        Outcome::Done | Outcome::BrokenPipe => 0,
        Outcome::Interrupted(code) => code as u8,
        Outcome::Failed(e) => commands::fail(1, &e),
    }
}
