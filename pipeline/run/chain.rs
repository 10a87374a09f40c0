//! The running chain (DESIGN §6): one [`StageSetup`] per stage, loaded and instantiated
//! by [`prepare`], started by [`RunningChain::spawn`] as a dispatcher thread and its
//! workers per stage (see [`super::stage`]), joined by bounded channels that end in
//! the sink. Every channel is bounded, so a slow stage applies backpressure all the way
//! to the reader and memory stays flat.

use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};
use pipe_sdk::abi::StageBox;

use super::deadletter::DeadLetter;
use super::error::RunError;
use super::markers::Msg;
use super::shutdown::Shutdown;
use super::stage::StageRuntime;
use super::stats::RunStats;
use super::threads::{self, Handle};
use super::watchdog::Watchdog;
use crate::config::StageSpec;
use crate::plugin::{LoadError, Plugin};

/// What all stages of a run share.
pub struct Context {
    /// Counters.
    pub stats: Arc<RunStats>,
    /// Dead letters.
    pub dead: Arc<DeadLetter>,
    /// Where fatal errors go (the sink stops the run on the first).
    pub fatal: Sender<RunError>,
    /// Capacity of each stage's input channel, in batches.
    pub channel_capacity: usize,
    /// Busy workers, for the timeout watchdog.
    pub watchdog: Arc<Watchdog>,
    /// Prints swap reports and warnings.
    pub log: fn(&str),
    /// Signals and the partial output.
    pub shutdown: Arc<Shutdown>,
}

/// One stage ready to run.
pub struct StageSetup {
    /// Its config.
    pub spec: StageSpec,
    /// The loaded plugin.
    pub plugin: Arc<Plugin>,
    /// One instance per worker.
    pub instances: Vec<StageBox>,
}

/// A stage that could not be loaded or started.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}`: {source}")]
pub struct PrepareError {
    /// The stage.
    pub stage: String,
    /// Why.
    #[source]
    pub source: LoadError,
}

/// The number of workers a stage runs: 1 for a stateful plugin.
pub fn effective_workers(spec: &StageSpec, plugin: &Plugin) -> usize {
    if plugin.manifest.stateful {
        1
    } else {
        spec.workers
    }
}

/// Loads and instantiates every stage of `specs` (the one way stages are made, at start
/// and for a rebuild).
pub fn prepare(specs: &[StageSpec], _log: fn(&str)) -> Result<Vec<StageSetup>, PrepareError> {
    let mut setups = Vec::with_capacity(specs.len());
    for spec in specs {
        let err = |source| PrepareError {
            stage: spec.name.clone(),
            source,
        };
        let plugin = Arc::new(crate::plugin::load(spec).map_err(err)?);
        let n = effective_workers(spec, &plugin);
        // Stateful stages run one worker by definition (documented on `--workers` and
        // `workers`); saying so on every run would be noise for a rule the user already
        // follows, so it is a debug message, and `pipe check` lists the real counts.
        if n < spec.workers {
            tracing::debug!(
                "stage `{}` is stateful: running 1 worker instead of {}",
                spec.name,
                spec.workers
            );
        }
        let instances = (0..n)
            .map(|_| plugin.instantiate(&spec.config_json).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        setups.push(StageSetup {
            spec: spec.clone(),
            plugin,
            instances,
        });
    }
    Ok(setups)
}

/// A running chain: where to send batches in, and the threads to join.
pub struct RunningChain {
    /// The first stage's input (the sink's, for an empty chain).
    pub head: Sender<Msg>,
    /// Dispatcher threads (each joins its own workers).
    pub threads: Vec<Handle>,
    /// Stage names in order.
    pub names: Vec<String>,
}

impl RunningChain {
    /// Starts `stages`, the last one feeding `sink`; sequence numbers start at
    /// `start_seq`. A thread that cannot start is an error; the threads already started
    /// end when their input is dropped.
    pub fn spawn(
        stages: Vec<StageSetup>,
        ctx: &Arc<Context>,
        start_seq: u64,
        sink: Sender<Msg>,
    ) -> Result<RunningChain, RunError> {
        let mut out = sink;
        let mut threads = Vec::new();
        let names = stages.iter().map(|s| s.spec.name.clone()).collect();
        for setup in stages.into_iter().rev() {
            let (tx, rx) = bounded(ctx.channel_capacity);
            let stats = ctx.stats.stage(&setup.spec.name, setup.instances.len());
            let stage = StageRuntime {
                ctx: ctx.clone(),
                stats,
                out: out.clone(),
            };
            let name = format!("stage {}", setup.spec.name);
            threads.push(threads::spawn(&name, move || {
                stage.dispatch(setup, rx, start_seq)
            })?);
            out = tx;
        }
        threads.reverse();
        Ok(RunningChain {
            head: out,
            threads,
            names,
        })
    }

    /// Waits for every stage to end (after the head was dropped or a drain): the first
    /// error of any of their threads.
    pub fn join(self) -> Result<(), RunError> {
        drop(self.head);
        threads::join_all(self.threads)
    }
}
