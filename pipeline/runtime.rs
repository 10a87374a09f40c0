//! The running chain (DESIGN §6, §7): stage dispatchers and workers joined by bounded
//! channels, and the in-band markers that make hot swaps and chain rebuilds exact.
//!
//! # Data flow
//!
//! Every message carries a sequence number given by the feeder (`engine.rs`) in input
//! order. Each stage has a *dispatcher* thread that restores sequence order (a small
//! reorder buffer: its workers may finish batches out of order) and hands batches, in
//! order, to `workers` threads through a bounded work channel. Workers send their output
//! straight to the next stage's input, keeping the batch's sequence number. The sink
//! restores the order once more before encoding. Every channel is bounded, so a slow
//! stage applies backpressure all the way to the reader and memory stays flat.
//!
//! # Markers
//!
//! A hot swap or a chain rebuild is a marker message with its own sequence number,
//! injected by the feeder between two batches:
//!
//! - [`Msg::Swap`] for stage S: S's dispatcher, on reaching it in order, sends one
//!   `Work::Swap` to each worker; each worker takes exactly one (it blocks on a barrier
//!   until all have), which proves that every batch before the marker has been processed
//!   by the old version. Then each worker installs a new instance (handing state over
//!   for a stateful stage) and everything after the marker goes to the new version. So
//!   every batch is processed wholly by one version and the output switches version
//!   exactly once, at the marker. The dispatcher is paused only for the barrier.
//! - [`Msg::Drain`]: every dispatcher retires its workers (collecting exported state)
//!   and forwards the marker; when the sink sees it, the whole chain is empty and the
//!   feeder builds the new chain.
//!
//! Markers for other stages pass through a dispatcher unchanged; the sink ignores
//! `Swap` markers. Using the stream itself for control means no lock is shared between
//! the data path and the reload path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use pipe_sdk::abi::{ErrorKind, StageBox};
use pipe_sdk::{Batch, Output, Pos};

use crate::config::{Policy, StageSpec};
use crate::deadletter::DeadLetter;
use crate::error::RunError;
use crate::plugin::Plugin;
use crate::stats::{RunStats, StageStats};

/// A message on a stage channel.
pub enum Msg {
    /// Records.
    Batch {
        /// Position in the stream.
        seq: u64,
        /// The records.
        batch: Batch,
    },
    /// Switch stage `stage` to a new version at this point of the stream.
    Swap {
        /// Position in the stream.
        seq: u64,
        /// The stage's name.
        stage: String,
        /// The new version, ready to run.
        order: Arc<SwapOrder>,
    },
    /// Retire the whole chain at this point; `ack` is signalled by the sink.
    Drain {
        /// Position in the stream.
        seq: u64,
        /// Collects exported state by stage name.
        retire: Arc<RetireOrder>,
        /// Signalled when the sink reaches the marker.
        ack: Sender<()>,
    },
}

impl Msg {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Msg::Batch { seq, .. } | Msg::Swap { seq, .. } | Msg::Drain { seq, .. } => *seq,
        }
    }
}

/// A new version of a stage, loaded and instantiated, waiting for its marker.
pub struct SwapOrder {
    /// The new plugin.
    pub plugin: Arc<Plugin>,
    /// The stage as configured for the new version.
    pub spec: StageSpec,
    instances: Mutex<Vec<StageBox>>,
    barrier: Barrier,
    refused: Mutex<Option<String>>,
    state_note: Mutex<&'static str>,
    /// Receives the outcome once the swap is done or refused.
    pub reply: Sender<SwapOutcome>,
}

impl SwapOrder {
    /// An order for a stage running `instances.len()` workers.
    pub fn new(
        plugin: Arc<Plugin>,
        spec: StageSpec,
        instances: Vec<StageBox>,
        reply: Sender<SwapOutcome>,
    ) -> SwapOrder {
        let n = instances.len();
        SwapOrder {
            plugin,
            spec,
            instances: Mutex::new(instances),
            barrier: Barrier::new(n + 1),
            refused: Mutex::new(None),
            state_note: Mutex::new("no state"),
            reply,
        }
    }
}

/// What became of a swap.
#[derive(Debug, Clone)]
pub struct SwapOutcome {
    /// The stage.
    pub stage: String,
    /// Old version.
    pub from: String,
    /// New version (the one running now, unless refused).
    pub to: String,
    /// Batches that were in flight and finished on the old version.
    pub drained: u64,
    /// How long the stage's dispatcher paused.
    pub pause: Duration,
    /// `handed over`, `started fresh` or `no state`.
    pub state: &'static str,
    /// Why the swap was refused at the last step (state import), if it was.
    pub refused: Option<String>,
}

/// Collects the state each stateful stage exports when the chain is retired.
#[derive(Default)]
pub struct RetireOrder {
    /// Exported state by stage name.
    pub states: Mutex<BTreeMap<String, Vec<u8>>>,
}

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
    /// Set on SIGINT/SIGTERM: the reader stops at its next batch.
    pub stop_reading: Arc<AtomicBool>,
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

/// A running chain: where to send batches in, and the threads to join.
pub struct RunningChain {
    /// The first stage's input (the sink's, for an empty chain).
    pub head: Sender<Msg>,
    /// Dispatcher threads (each joins its own workers).
    pub threads: Vec<JoinHandle<()>>,
    /// Stage names in order.
    pub names: Vec<String>,
}

impl RunningChain {
    /// Starts `stages`, the last one feeding `sink`; sequence numbers start at
    /// `start_seq`.
    pub fn spawn(
        stages: Vec<StageSetup>,
        ctx: &Arc<Context>,
        start_seq: u64,
        sink: Sender<Msg>,
    ) -> RunningChain {
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
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || stage.dispatch(setup, rx, start_seq))
                .expect("spawning a thread");
            threads.push(handle);
            out = tx;
        }
        threads.reverse();
        RunningChain {
            head: out,
            threads,
            names,
        }
    }
}

/// What a stage's dispatcher and workers share.
#[derive(Clone)]
struct StageRuntime {
    ctx: Arc<Context>,
    stats: Arc<StageStats>,
    out: Sender<Msg>,
}

enum Work {
    Batch { seq: u64, batch: Batch },
    Swap(Arc<SwapOrder>),
    Retire(Arc<RetireOrder>),
    Finish { seq: u64 },
}

/// The version a worker runs.
#[derive(Clone)]
struct Version {
    plugin: Arc<Plugin>,
    spec: Arc<StageSpec>,
}

impl Version {
    /// The limit the watchdog enforces (none for process stages, which enforce their own).
    fn watchdog_timeout(&self) -> Option<Duration> {
        self.plugin.watchdog_timeout(self.spec.timeout)
    }
}

impl StageRuntime {
    /// The dispatcher: restores order, feeds workers, performs markers.
    fn dispatch(self, setup: StageSetup, input: Receiver<Msg>, start_seq: u64) {
        let StageSetup {
            spec,
            plugin,
            instances,
        } = setup;
        let name = spec.name.clone();
        let mut version = Version {
            plugin,
            spec: Arc::new(spec),
        };
        let n = instances.len();
        let (work_tx, work_rx) = bounded::<Work>(n);
        let completed = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::with_capacity(n);
        for (i, instance) in instances.into_iter().enumerate() {
            let rt = self.clone();
            let rx = work_rx.clone();
            let v = version.clone();
            let done = completed.clone();
            let slot = self.ctx.watchdog.register(&name, v.watchdog_timeout());
            let h = std::thread::Builder::new()
                .name(format!("{name}#{i}"))
                .spawn(move || rt.work(instance, v, rx, done, slot))
                .expect("spawning a thread");
            workers.push(h);
        }
        drop(work_rx);

        let mut pending: BTreeMap<u64, Msg> = BTreeMap::new();
        let mut next = start_seq;
        let mut dispatched = 0u64;
        'outer: while let Ok(msg) = input.recv() {
            pending.insert(msg.seq(), msg);
            while let Some(msg) = pending.remove(&next) {
                next += 1;
                match msg {
                    Msg::Batch { seq, batch } => {
                        dispatched += 1;
                        if work_tx.send(Work::Batch { seq, batch }).is_err() {
                            break 'outer; // workers gone after a fatal error
                        }
                    }
                    Msg::Swap { seq, stage, order } => {
                        if stage == name {
                            let inflight = dispatched - completed.load(Relaxed);
                            self.swap(&order, &work_tx, n, inflight, &mut version);
                        }
                        let _ = self.out.send(Msg::Swap { seq, stage, order });
                    }
                    Msg::Drain { seq, retire, ack } => {
                        for _ in 0..n {
                            let _ = work_tx.send(Work::Retire(retire.clone()));
                        }
                        drop(work_tx);
                        for w in workers {
                            let _ = w.join();
                        }
                        let _ = self.out.send(Msg::Drain { seq, retire, ack });
                        return;
                    }
                }
            }
        }
        if !pending.is_empty() {
            // Only possible when an upstream thread died; the fatal error says why.
            (self.ctx.log)(&format!(
                "stage `{name}`: {} messages left out of order at end of stream",
                pending.len()
            ));
        }
        // End of stream: each worker takes exactly one Finish, so each finishes once.
        for i in 0..n as u64 {
            let _ = work_tx.send(Work::Finish { seq: next + i });
        }
        drop(work_tx);
        for w in workers {
            let _ = w.join();
        }
    }

    /// Runs a swap at the marker; see the module docs.
    fn swap(
        &self,
        order: &Arc<SwapOrder>,
        work_tx: &Sender<Work>,
        n: usize,
        inflight: u64,
        version: &mut Version,
    ) {
        let started = Instant::now();
        let from = version.plugin.manifest.version.clone();
        let count = order.instances.lock().map_or(0, |v| v.len());
        if count != n {
            // The order was made for another worker count: refuse without touching
            // the workers.
            let _ = order.reply.send(SwapOutcome {
                stage: version.spec.name.clone(),
                from: from.clone(),
                to: order.plugin.manifest.version.clone(),
                drained: 0,
                pause: started.elapsed(),
                state: "no state",
                refused: Some(format!(
                    "the new version has {count} instances for {n} workers"
                )),
            });
            return;
        }
        for _ in 0..n {
            let _ = work_tx.send(Work::Swap(order.clone()));
        }
        // First wait: every worker holds a Swap, so all earlier batches are done.
        order.barrier.wait();
        // Second wait: every worker has installed its new instance (or refused).
        order.barrier.wait();
        let refused = order.refused.lock().ok().and_then(|mut r| r.take());
        let state = order.state_note.lock().map_or("no state", |s| *s);
        if refused.is_none() {
            *version = Version {
                plugin: order.plugin.clone(),
                spec: Arc::new(order.spec.clone()),
            };
            self.stats.swaps.fetch_add(1, Relaxed);
        } else {
            self.stats.swaps_refused.fetch_add(1, Relaxed);
        }
        let _ = order.reply.send(SwapOutcome {
            stage: version.spec.name.clone(),
            from,
            to: order.plugin.manifest.version.clone(),
            drained: inflight,
            pause: started.elapsed(),
            state,
            refused,
        });
    }

    /// A worker: processes batches with its instance until Finish or Retire.
    fn work(
        self,
        mut instance: StageBox,
        mut version: Version,
        work: Receiver<Work>,
        completed: Arc<AtomicU64>,
        slot: Arc<WatchSlot>,
    ) {
        let mut out = Output::new();
        while let Ok(w) = work.recv() {
            match w {
                Work::Batch { seq, batch } => {
                    let result = self.process(&mut instance, &version, &batch, &mut out, &slot);
                    completed.fetch_add(1, Relaxed);
                    match result {
                        Ok(()) => {
                            if self
                                .out
                                .send(Msg::Batch {
                                    seq,
                                    batch: out.resolve(batch),
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = self.ctx.fatal.send(e);
                            return;
                        }
                    }
                }
                Work::Swap(order) => {
                    order.barrier.wait();
                    let new = order.instances.lock().ok().and_then(|mut v| v.pop());
                    if let Some(mut new) = new {
                        match hand_over(&instance, &mut new, version.plugin.manifest.stateful) {
                            Ok(note) => {
                                if let Ok(mut s) = order.state_note.lock() {
                                    *s = note;
                                }
                                instance = new; // drops the old instance
                                version = Version {
                                    plugin: order.plugin.clone(),
                                    spec: Arc::new(order.spec.clone()),
                                };
                                slot.set_timeout(version.watchdog_timeout());
                            }
                            Err(why) => {
                                if let Ok(mut r) = order.refused.lock() {
                                    *r = Some(why);
                                }
                            }
                        }
                    }
                    order.barrier.wait();
                }
                Work::Retire(order) => {
                    if version.plugin.manifest.stateful {
                        if let Ok(Some(state)) = instance
                            .export_state()
                            .into_result()
                            .map(Option::<abi_stable::std_types::RVec<u8>>::from)
                        {
                            if let Ok(mut m) = order.states.lock() {
                                m.insert(version.spec.name.clone(), state.into_vec());
                            }
                        }
                    }
                    return;
                }
                Work::Finish { seq } => {
                    out.clear();
                    slot.start(Pos::default());
                    let t = Instant::now();
                    let r = instance.finish(&mut out).into_result();
                    self.stats
                        .busy_ns
                        .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
                    slot.stop();
                    match r {
                        Ok(()) => {
                            self.stats
                                .rows_out
                                .fetch_add(out.batch().len() as u64, Relaxed);
                            let _ = self.out.send(Msg::Batch {
                                seq,
                                batch: out.take_batch(),
                            });
                        }
                        Err(e) => {
                            let _ = self.ctx.fatal.send(RunError::Stage {
                                stage: version.spec.name.clone(),
                                message: format!(
                                    "failed at end of stream: {e} (its end-of-stream rows are lost)"
                                ),
                            });
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Processes one batch into `out`, applying the stage's policy to rejects and
    /// failures. `Err` is fatal for the run.
    fn process(
        &self,
        instance: &mut StageBox,
        version: &Version,
        batch: &Batch,
        out: &mut Output,
        slot: &WatchSlot,
    ) -> Result<(), RunError> {
        let spec = &version.spec;
        self.stats.rows_in.fetch_add(batch.len() as u64, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        out.clear();
        out.begin(batch);
        // Empty batches go through too: a header-only input still gets the stage's
        // output columns (select, compute), so the output has the right header.
        slot.start(if batch.is_empty() {
            Pos::default()
        } else {
            batch.row(0).pos()
        });
        let t = Instant::now();
        let r = instance.process(batch, out).into_result();
        self.stats
            .busy_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        slot.stop();
        match r {
            Ok(()) => {
                for rej in out.rejects() {
                    let Some(row) = (rej.row as usize)
                        .lt(&batch.len())
                        .then(|| batch.row(rej.row as usize))
                    else {
                        continue;
                    };
                    self.reject(spec, row.pos(), &rej.reason, || {
                        pipe_sdk::codec::row_to_json(row)
                    })?;
                }
                self.stats.rows_out.fetch_add(out.len() as u64, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.batch_errors.fetch_add(1, Relaxed);
                if let Some(why) = version.plugin.gave_up() {
                    // A process stage whose children keep failing (plugin/process/).
                    return Err(RunError::Stage {
                        stage: spec.name.clone(),
                        message: why.to_string(),
                    });
                }
                if e.kind == ErrorKind::Panicked {
                    self.stats.panics.fetch_add(1, Relaxed);
                    // A panicked instance may be half-updated: replace it before its
                    // next batch.
                    *instance = version
                        .plugin
                        .instantiate(&spec.config_json)
                        .map_err(|le| RunError::Stage {
                            stage: spec.name.clone(),
                            message: format!(
                                "panicked ({}) and could not be re-created: {le}",
                                e.message
                            ),
                        })?;
                }
                let reason = e.to_string();
                if spec.on_error == Policy::Fail && batch.len() > 1 {
                    // The whole batch failed: naming its first record would point at a
                    // record that may be fine.
                    let first = batch.row(0).pos();
                    return Err(RunError::BatchFailed {
                        stage: spec.name.clone(),
                        input: self.ctx.dead.input_name(first.input).to_string(),
                        count: batch.len(),
                        first: first.line,
                        last: batch.row(batch.len() - 1).pos().line,
                        reason,
                    });
                }
                for row in batch.rows() {
                    self.reject(spec, row.pos(), &reason, || {
                        pipe_sdk::codec::row_to_json(row)
                    })?;
                }
                out.clear();
                out.columns_like(batch);
                Ok(())
            }
        }
    }

    fn reject(
        &self,
        spec: &StageSpec,
        pos: Pos,
        reason: &str,
        record: impl FnOnce() -> String,
    ) -> Result<(), RunError> {
        match spec.on_error {
            Policy::Fail => Err(RunError::Rejected {
                stage: spec.name.clone(),
                input: self.ctx.dead.input_name(pos.input).to_string(),
                line: pos.line,
                reason: reason.to_string(),
            }),
            Policy::Skip => {
                self.stats.skipped.fetch_add(1, Relaxed);
                Ok(())
            }
            Policy::DeadLetter => {
                self.ctx
                    .dead
                    .write(&spec.name, reason, pos, &record())
                    .map_err(|e| RunError::Io {
                        what: "writing the dead-letter file".into(),
                        message: e.to_string(),
                    })?;
                self.stats.dead_lettered.fetch_add(1, Relaxed);
                Ok(())
            }
        }
    }
}

/// Moves state from `old` to `new` for a stateful stage. Returns what happened, or why
/// the swap must be refused (the old instance then keeps running).
fn hand_over(old: &StageBox, new: &mut StageBox, stateful: bool) -> Result<&'static str, String> {
    if !stateful {
        return Ok("no state");
    }
    let exported = old
        .export_state()
        .into_result()
        .map_err(|e| format!("the old version could not export its state: {e}"))?;
    match Option::<abi_stable::std_types::RVec<u8>>::from(exported) {
        None => Ok("started fresh (the old version exports no state)"),
        Some(state) => match new.import_state(state.as_slice().into()).into_result() {
            Ok(()) => Ok("state handed over"),
            Err(e) => Err(format!("the new version refused the old state: {e}")),
        },
    }
}

/// Timestamps of busy workers, checked by one watchdog thread against each stage's
/// `timeout_ms`. A worker stuck inside a plugin cannot be stopped, so a timeout ends the
/// run with an error naming the stage instead of hanging forever.
pub struct Watchdog {
    slots: Mutex<Vec<Arc<WatchSlot>>>,
    epoch: Instant,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            slots: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        }
    }
}

/// One worker's busy state.
pub struct WatchSlot {
    stage: String,
    timeout_ms: AtomicU64,
    /// Milliseconds since the epoch when the current call started, plus one; 0 = idle.
    busy_since: AtomicU64,
    line: AtomicU64,
    input: AtomicU64,
    epoch: Instant,
    reported: AtomicBool,
}

impl WatchSlot {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn start(&self, pos: Pos) {
        self.line.store(pos.line, Relaxed);
        self.input.store(pos.input as u64, Relaxed);
        self.busy_since.store(self.now(), Relaxed);
    }

    fn stop(&self) {
        self.busy_since.store(0, Relaxed);
    }

    fn set_timeout(&self, t: Option<Duration>) {
        self.timeout_ms
            .store(t.map_or(0, |d| d.as_millis() as u64), Relaxed);
    }
}

impl Watchdog {
    /// A slot for a worker of `stage`.
    fn register(&self, stage: &str, timeout: Option<Duration>) -> Arc<WatchSlot> {
        let slot = Arc::new(WatchSlot {
            stage: stage.to_string(),
            timeout_ms: AtomicU64::new(timeout.map_or(0, |d| d.as_millis() as u64)),
            busy_since: AtomicU64::new(0),
            line: AtomicU64::new(0),
            input: AtomicU64::new(0),
            epoch: self.epoch,
            reported: AtomicBool::new(false),
        });
        let mut v = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Forget slots of workers that have exited.
        v.retain(|s| Arc::strong_count(s) > 1);
        v.push(slot.clone());
        slot
    }

    /// Every worker busy right now: (stage, seconds busy, input, line of the batch).
    pub fn busy(&self, dead: &DeadLetter) -> Vec<(String, f64, String, u64)> {
        let v = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter_map(|s| {
                let since = s.busy_since.load(Relaxed);
                (since != 0).then(|| {
                    (
                        s.stage.clone(),
                        s.now().saturating_sub(since) as f64 / 1e3,
                        dead.input_name(s.input.load(Relaxed) as u32).to_string(),
                        s.line.load(Relaxed),
                    )
                })
            })
            .collect()
    }

    /// Checks every slot; returns the first that overran its timeout.
    pub fn check(&self, dead: &DeadLetter) -> Option<RunError> {
        let v = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in v.iter() {
            let limit = s.timeout_ms.load(Relaxed);
            let since = s.busy_since.load(Relaxed);
            if limit == 0 || since == 0 {
                continue;
            }
            let now = s.now();
            if now.saturating_sub(since) > limit && !s.reported.swap(true, Relaxed) {
                return Some(RunError::Timeout {
                    stage: s.stage.clone(),
                    limit_ms: limit,
                    input: dead.input_name(s.input.load(Relaxed) as u32).to_string(),
                    line: s.line.load(Relaxed),
                });
            }
        }
        None
    }
}
