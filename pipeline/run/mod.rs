//! A run, end to end: [`Running::start`] loads the stages and starts the reader, the
//! feeder and the chain; [`Running::wait`] sinks the output on the calling thread and
//! says how the run ended.
//!
//! ```text
//! reader thread ──batches──► feeder thread ──Msg (seq)──► chain ──► sink (this thread)
//!  (source.rs: parse inputs)  (feeder.rs: numbers the      │          (sink.rs: reorder,
//!                              stream, injects swap/drain  │           encode, watchdog)
//!                              markers, stops on signals)  │
//! reload coordinator (reload/) ──Command──► feeder         │
//!                          chain.rs, stage.rs, worker.rs ──┘
//! ```
//!
//! # Layout
//! - `source`: the reader thread; `feeder`: numbering, reload commands, signals;
//!   `chain`: loading a chain and starting it; `stage`: a stage's dispatcher and swaps;
//!   `worker`: a worker and its batches; `markers`: messages, swap and drain orders, the
//!   state hand-over rule; `reorder`: the reorder buffer; `policy`: fail, skip or
//!   dead-letter; `sink`: ordering and encoding; `output`: atomic `-o`; `shutdown`:
//!   signals; `watchdog`: per-batch timeouts; `threads`: threads that cannot die
//!   silently; `stats`, `deadletter`, `progress`, `error`.
//!
//! # Shutdown
//! The reader ends its channel at end of input; the feeder checks that it ended cleanly
//! and drops the chain's head; each stage drains, calls `finish` and drops its output;
//! the sink sees the last sender go and flushes; then the feeder's verdict (every
//! thread joined) decides whether the output is committed. A fatal error (any thread)
//! goes to the sink, which stops the run at once: with `-o`, the temporary file is
//! removed and an existing file stays untouched.

mod chain;
pub mod deadletter;
pub mod error;
mod feeder;
pub mod jetstream;
mod markers;
mod output;
pub mod policy;
pub mod progress;
mod reorder;
mod shutdown;
mod sink;
mod source;
mod stage;
pub mod stats;
mod threads;
mod watchdog;
mod worker;

#[cfg(test)]
mod tests;

pub use chain::{effective_workers, prepare, PrepareError, StageSetup};
pub use error::RunError;
pub use feeder::{Command, Rebuilt};
pub use markers::{Handover, SwapOrder, SwapOutcome};
pub use output::OutputError;
pub use stats::{RunStats, Snapshot};

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use pipe_sdk::Batch;

use self::chain::{Context, RunningChain};
use self::deadletter::DeadLetter;
use self::feeder::Feeder;
use self::markers::Msg;
use self::output::OutputTarget;
use self::shutdown::{Shutdown, SignalListener};
use self::sink::Sink;
use self::source::Source;
use self::threads::Handle;
use self::watchdog::{describe_busy, Watchdog};
use crate::config::{PipelinePlan, PlanError, RunOptions, RunPlan};
use crate::plugin::Plugin;

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// All input processed and written.
    Done,
    /// The reader of our stdout went away (`| head`): a quiet success.
    BrokenPipe,
    /// Stopped by a signal after draining (exit 128 + signal).
    Interrupted(i32),
    /// Stopped by an error.
    Failed(RunError),
}

/// The result of a run: how it ended, and its counters.
#[derive(Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The counters.
    pub stats: Snapshot,
}

/// A run that could not start: bad options, a stage that cannot be loaded, an output
/// that cannot be opened (exit 2; nothing was read or written).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The options do not fit the pipeline.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A stage could not be loaded or created.
    #[error(transparent)]
    Load(#[from] PrepareError),
    /// The output could not be opened.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A thread of the run could not be started.
    #[error(transparent)]
    Thread(#[from] RunError),
    /// A JetStream input or output cannot be used.
    #[error(transparent)]
    JetStream(#[from] crate::run::jetstream::JetStreamError),
}

/// Reports a message at `info` level (shown unless `-q`).
pub fn log_stderr(msg: &str) {
    tracing::info!("{msg}");
}

/// What the reload coordinator needs to steer a running run.
pub struct Control {
    /// The pipeline as it started.
    pub plan: PipelinePlan,
    /// The stages as loaded, in plan order, with their worker counts.
    pub loaded: Vec<(Arc<Plugin>, usize)>,
    /// Commands to the feeder.
    pub commands: Sender<Command>,
    /// The run's counters.
    pub stats: Arc<RunStats>,
    /// Where reports go.
    pub log: fn(&str),
}

/// What the operations endpoints (`ops`) read from a live run: counters, the chain as
/// loaded, and the watchdog. Cheap to clone; reading it never blocks the run.
#[derive(Clone)]
pub struct Probe {
    /// The pipeline as it started.
    pub plan: PipelinePlan,
    /// The stages as loaded, in plan order, with their worker counts.
    pub loaded: Vec<(Arc<Plugin>, usize)>,
    /// The run's counters.
    pub stats: Arc<RunStats>,
    /// When the run started.
    pub started: Instant,
    watchdog: Arc<Watchdog>,
}

impl Probe {
    /// Workers busy past their stage's `timeout_ms`: (stage, seconds busy, limit).
    pub fn overdue(&self) -> Vec<(String, f64, f64)> {
        self.watchdog.overdue()
    }
}

/// A started run.
pub struct Running {
    plan: RunPlan,
    ctx: Arc<Context>,
    fatal: Receiver<RunError>,
    sink: Receiver<Msg>,
    pool: Sender<Batch>,
    feeder: Handle,
    target: OutputTarget,
    out: Box<dyn Write + Send>,
    commands: Option<Sender<Command>>,
    loaded: Vec<(Arc<Plugin>, usize)>,
    /// The sink's part of a run with a stream (jetstream/sink.rs).
    acking: Option<crate::run::jetstream::sink::AckingSink>,
    started: Instant,
    _signals: Option<SignalListener>,
}

/// Resolves `opts` against `pipeline` and runs it to the end, without hot reload (for
/// `pipe test` and `pipe bench`).
pub fn run(pipeline: PipelinePlan, opts: RunOptions) -> Result<Report, StartError> {
    let plan = RunPlan::resolve(pipeline, opts)?;
    Ok(Running::start(plan)?.wait())
}

impl Running {
    /// Loads every stage, opens the output and starts the run's threads. Nothing is read
    /// before every stage is loaded.
    pub fn start(plan: RunPlan) -> Result<Running, StartError> {
        let log: fn(&str) = log_stderr;
        warn_if_terminal(&plan.inputs);
        let setups = prepare(&plan.pipeline.stages, log)?;
        let shutdown = Arc::new(Shutdown::default());
        let (target, out) = if plan.discard_output {
            let sink: Box<dyn Write + Send> = Box::new(io::sink());
            (OutputTarget::InPlace, sink)
        } else {
            OutputTarget::open(plan.output.as_deref(), &shutdown)?
        };
        let (fatal_tx, fatal) = unbounded::<RunError>();
        let ctx = Arc::new(Context {
            stats: Arc::new(RunStats::default()),
            dead: Arc::new(DeadLetter::new(
                plan.dead_letter.clone(),
                plan.inputs.clone(),
            )),
            fatal: fatal_tx,
            channel_capacity: plan.pipeline.channel_capacity,
            watchdog: Arc::new(Watchdog::default()),
            log,
            shutdown,
        });
        for s in &setups {
            ctx.stats.stage(&s.spec.name, s.instances.len());
        }
        let started = Instant::now();
        let cap = plan.pipeline.channel_capacity;
        let mut jetstream = crate::run::jetstream::JetStreamRun::start(
            &plan.pipeline,
            &setups,
            plan.output_format,
            ctx.dead.clone(),
            ctx.fatal.clone(),
        )?;

        // Reader → feeder; written batches go back to the reader for reuse.
        let (batch_tx, batch_rx) = bounded::<Batch>(cap);
        let (pool, pool_rx) = bounded::<Batch>(cap * 2 + 2);
        let source = Source {
            inputs: plan.inputs.clone(),
            formats: plan.input_formats.clone(),
            batch_size: plan.pipeline.batch_size,
            max_record_bytes: plan.pipeline.max_record_bytes,
            policy: plan.pipeline.on_bad_input,
            dead: ctx.dead.clone(),
            stats: ctx.stats.clone(),
            tx: batch_tx,
            pool: pool_rx,
            shutdown: ctx.shutdown.clone(),
        };
        // A stream input replaces the file reader (jetstream/source.rs).
        let stream = jetstream.as_mut().and_then(|j| {
            let shutdown = ctx.shutdown.clone();
            j.take_source(
                &plan.pipeline,
                ctx.dead.clone(),
                ctx.stats.clone(),
                source.tx.clone(),
                source.pool.clone(),
                Box::new(move || shutdown.reading_stopped()),
            )
        });
        let reader = match stream {
            Some(stream) => {
                drop(source);
                threads::spawn("reader", move || stream.run())?
            }
            None => threads::spawn("reader", move || source.run())?,
        };

        // Signals, chain, feeder.
        let (sig_tx, signals) = bounded::<i32>(4);
        let signals_listener = {
            let ctx2 = ctx.clone();
            shutdown::listen(ctx.shutdown.clone(), ctx.dead.clone(), sig_tx, move || {
                describe_busy(&ctx2.watchdog, &ctx2.dead)
            })
        };
        let loaded = setups
            .iter()
            .map(|s| (s.plugin.clone(), s.instances.len()))
            .collect();
        let (sink_tx, sink) = bounded::<Msg>(cap.max(2) * 2);
        let chain = RunningChain::spawn(setups, &ctx, 0, sink_tx.clone())?;
        let (commands, commands_rx) = unbounded::<Command>();
        let feeder = Feeder {
            batches: batch_rx,
            reader,
            commands: commands_rx,
            signals,
            chain,
            sink: sink_tx,
            ctx: ctx.clone(),
            acks: jetstream.as_ref().and_then(|j| j.tracker.clone()),
        };
        let feeder = threads::spawn("feeder", move || feeder.run())?;
        Ok(Running {
            plan,
            ctx,
            fatal,
            sink,
            pool,
            feeder,
            target,
            out,
            commands: Some(commands),
            loaded,
            acking: jetstream.as_mut().and_then(|j| j.take_sink()),
            started,
            _signals: signals_listener,
        })
    }

    /// The handle a reload coordinator steers this run with (once; `None` after).
    pub fn control(&mut self) -> Option<Control> {
        Some(Control {
            plan: self.plan.pipeline.clone(),
            loaded: self.loaded.clone(),
            commands: self.commands.take()?,
            stats: self.ctx.stats.clone(),
            log: self.ctx.log,
        })
    }

    /// What the operations endpoints read from this run.
    pub fn probe(&self) -> Probe {
        Probe {
            plan: self.plan.pipeline.clone(),
            loaded: self.loaded.clone(),
            stats: self.ctx.stats.clone(),
            started: self.started,
            watchdog: self.ctx.watchdog.clone(),
        }
    }

    /// "running pipeline `x` [a -> b]" (at debug level): the run is under way, and
    /// with `reloading`, a change from now on is seen.
    pub fn log_started(&self, reloading: bool) {
        tracing::debug!(
            "running pipeline `{}` [{}]{}",
            self.plan.pipeline.name,
            self.plan
                .pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" -> "),
            if reloading { ", hot reload on" } else { "" }
        );
    }

    /// Whether hot reload was asked for (the flag and the setting).
    pub fn watching(&self) -> bool {
        self.plan.watch
    }

    /// Sinks the output until the run ends; commits or discards `-o`.
    pub fn wait(mut self) -> Report {
        // Without a coordinator, the feeder's command channel ends now.
        self.commands = None;
        let ctx = &self.ctx;
        let progress = self
            .plan
            .progress
            .then(|| progress::Progress::new(&self.plan.inputs));
        let outcome = Sink {
            rx: self.sink,
            fatal: &self.fatal,
            out: self.out,
            format: self.plan.output_format,
            ctx,
            progress: progress.as_ref(),
            pool: self.pool,
            acking: self.acking.take(),
        }
        .run();
        if let Some(p) = &progress {
            p.finish();
        }
        let outcome = match outcome {
            // Every stage ended; the feeder says whether the reader and every stage
            // ended well (a dead thread is never a normal end of the stream).
            Outcome::Done => match threads::join(self.feeder) {
                Err(e) => Outcome::Failed(e),
                Ok(()) => match self.fatal.try_recv() {
                    Ok(e) => Outcome::Failed(e),
                    Err(_) => Outcome::Done,
                },
            },
            other => other,
        };
        let outcome = match (outcome, ctx.shutdown.signal()) {
            (Outcome::Done, Some(code)) => Outcome::Interrupted(code),
            (o, _) => o,
        };
        // A dead letter that cannot be written fails the run: records counted as
        // dead-lettered must be in the file.
        let outcome = match (ctx.dead.flush(), outcome) {
            (Err(e), Outcome::Done | Outcome::Interrupted(_)) => Outcome::Failed(RunError::io(
                match ctx.dead.path() {
                    Some(p) => format!("writing the dead-letter file {}", p.display()),
                    None => "writing the dead-letter file".into(),
                },
                e,
            )),
            (_, o) => o,
        };
        let outcome = match outcome {
            Outcome::Done => match self.target.commit(&ctx.shutdown) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(RunError::io(e.what, e.source)),
            },
            other => {
                self.target.discard(&ctx.shutdown);
                other
            }
        };
        let mut stats = ctx.stats.snapshot(self.started.elapsed());
        if !matches!(outcome, Outcome::Done | Outcome::Interrupted(_)) {
            stats.mark_stopped_early();
        }
        Report { outcome, stats }
    }
}

/// A bare `pipe run` in a terminal would otherwise just wait, silently.
fn warn_if_terminal(inputs: &[String]) {
    if inputs.iter().any(|i| i == "-") && io::IsTerminal::is_terminal(&io::stdin()) {
        tracing::info!(
            "reading records from the terminal: type them (a CSV header first), end with \
             Ctrl-D; or pipe data in, or name files"
        );
    }
}
