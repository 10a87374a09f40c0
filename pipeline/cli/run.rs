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
        None => {}
    }
    match report.outcome {
        Outcome::Done | Outcome::BrokenPipe => Exit::Ok,
        Outcome::Interrupted(code) => Exit::Signal(code),
        Outcome::Failed(e) => fail(Exit::Failed, &e),
    }
}
