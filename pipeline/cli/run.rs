//! `pipe run`: resolve the plan, start the run, steer it with hot reload, wait for its
//! end, print the stats, and say how it ended.

use std::io::IsTerminal;

use super::args::{RunArgs, StatsFormat};
use super::commands::plan_run;
use super::exit::{fail, Exit};
use crate::config::{RunOptions, RunPlan};
use crate::run::{Outcome, Running};

/// `pipe run`.
pub fn run(args: RunArgs) -> Exit {
    // Plan: config, pipeline, inputs, options.
    let (pipeline, inputs) = match plan_run(args.config.as_deref(), &args.args) {
        Ok(p) => p,
        Err(e) => return fail(Exit::Usage, &e),
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
    let plan = match RunPlan::resolve(pipeline, opts) {
        Ok(p) => p,
        Err(e) => return fail(Exit::Usage, &e),
    };
    let dead_letter = plan.dead_letter.clone();
    let output = plan.output.clone();
    // The operations endpoints' address is bound before the run starts, so a taken port
    // fails before any record is read.
    let listener = match args.listen.as_deref().or(plan.pipeline.listen.as_deref()) {
        Some(addr) => match crate::ops::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => return fail(Exit::Usage, &e),
        },
        None => None,
    };
    // Run, with hot reload when asked for.
    let mut running = match Running::start(plan) {
        Ok(r) => r,
        Err(e) => return fail(Exit::Usage, &e),
    };
    let control = if running.watching() {
        running.control()
    } else {
        None
    };
    // `pipe ctl` orders reach the reload coordinator through this channel.
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let chain = crate::reload::LiveChain::default();
    let _watch = match control {
        Some(control) => match crate::reload::start_with_ctl(control, ctl_rx, chain.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::info!("hot reload is off: {e}");
                None
            }
        },
        None => None,
    };
    let _ops = match listener {
        Some(l) => {
            let addr = crate::ops::local_addr(&l);
            let steering = _watch
                .is_some()
                .then_some(crate::ops::Steering { ctl: ctl_tx, chain });
            match crate::ops::serve(l, running.probe(), steering) {
                Ok(server) => {
                    if let Some(a) = addr {
                        tracing::info!("serving /metrics, /health and /stages on http://{a}");
                    }
                    Some(server)
                }
                Err(e) => return fail(Exit::Failed, &e),
            }
        }
        None => None,
    };
    running.log_started(_watch.is_some());
    let report = running.wait();
    // Report.
    match args.stats {
        Some(StatsFormat::Table) => eprint!("{}", report.stats.table()),
        Some(StatsFormat::Json) => eprintln!(
            "{}",
            serde_json::to_string(&report.stats).unwrap_or_default()
        ),
        None => {
            if let Some(line) = lost_records(&report.stats, dead_letter.as_deref()) {
                tracing::warn!("{line}");
            }
        }
    }
    match report.outcome {
        Outcome::Done | Outcome::BrokenPipe => Exit::Ok,
        Outcome::Interrupted(code) => {
            tracing::info!("{}", interrupted(code, &report.stats, output.as_deref()));
            Exit::Signal(code)
        }
        Outcome::Failed(e) => fail(Exit::Failed, &e),
    }
}

/// The one line said at the end of a run without `--stats` when records did not reach the
/// output for a reason other than a filter, so that they never go unnoticed (daily.rs:
/// `rejected_records_are_summed_up_at_the_end`). `None` when every record was written
/// or filtered.
fn lost_records(
    stats: &crate::run::Snapshot,
    dead_letter: Option<&std::path::Path>,
) -> Option<String> {
    let dead = stats.dead_lettered();
    let skipped = stats.skipped();
    if dead == 0 && skipped == 0 {
        return None;
    }
    let mut parts = Vec::new();
    if dead > 0 {
        parts.push(match dead_letter {
            Some(p) => format!("{dead} dead-lettered to {}", p.display()),
            None => format!("{dead} dead-lettered"),
        });
    }
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    Some(format!(
        "of {} records read, {}; --stats shows which stage",
        stats.read,
        parts.join(", ")
    ))
}

/// What a run stopped by SIGINT/SIGTERM did with what it had read: the reader stopped,
/// every record already read went through the chain, and the output is either whole
/// records on stdout or a `-o` file left unwritten (faults.rs:
/// `sigint_drains_flushes_and_exits_130`).
fn interrupted(
    code: i32,
    stats: &crate::run::Snapshot,
    output: Option<&std::path::Path>,
) -> String {
    let signal = match code {
        130 => "SIGINT".to_string(),
        143 => "SIGTERM".to_string(),
        c => format!("signal {}", c - 128),
    };
    let mut counts = vec![format!("{} written", stats.written)];
    for (n, what) in [
        (stats.filtered().max(0) as u64, "filtered"),
        (stats.dead_lettered(), "dead-lettered"),
        (stats.skipped(), "skipped"),
    ] {
        if n > 0 {
            counts.push(format!("{n} {what}"));
        }
    }
    let output = match output {
        None => "stdout has every written record, whole".to_string(),
        Some(p) => format!(
            "{} was not written (an existing file is left as it was)",
            p.display()
        ),
    };
    format!(
        "interrupted by {signal}: stopped reading and drained the {} records read ({}); {output}",
        stats.read,
        counts.join(", ")
    )
}
