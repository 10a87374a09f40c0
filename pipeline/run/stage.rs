//! One stage at run time: a *dispatcher* thread and its workers (DESIGN §6, §7).
//!
//! # Data flow
//!
//! Every message carries a sequence number given by the feeder in input order. Each
//! stage's dispatcher restores sequence order (a [`Reorder`] buffer: its workers may
//! finish batches out of order) and hands batches, in order, to `workers` threads
//! through a bounded work channel. Workers send their output straight to the next
//! stage's input, keeping the batch's sequence number. The sink restores the order once
//! more before encoding.
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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::chain::{Context, StageSetup};
use super::error::RunError;
use super::markers::{Handover, Msg, SwapOrder, SwapOutcome};
use super::reorder::Reorder;
use super::stats::StageStats;
use super::threads;
use super::worker::{Version, Work};

/// What a stage's dispatcher and workers share.
#[derive(Clone)]
pub struct StageRuntime {
    /// The run's shared parts.
    pub ctx: Arc<Context>,
    /// This stage's counters (they survive swaps).
    pub stats: Arc<StageStats>,
    /// The next stage's input, or the sink's.
    pub out: Sender<Msg>,
}

impl StageRuntime {
    /// The dispatcher: restores order, feeds workers, performs markers. Ends at the end
    /// of its input or at a drain, once its workers have ended; a worker's death is its
    /// error.
    pub fn dispatch(
        self,
        setup: StageSetup,
        input: Receiver<Msg>,
        start_seq: u64,
    ) -> Result<(), RunError> {
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
            workers.push(threads::spawn(&format!("{name}#{i}"), move || {
                rt.work(instance, v, rx, done, slot)
            })?);
        }
        drop(work_rx);

        let mut order = Reorder::new(start_seq);
        let mut dispatched = 0u64;
        'outer: while let Ok(msg) = input.recv() {
            order.push(msg.seq(), msg);
            while let Some(msg) = order.pop() {
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
                        threads::join_all(workers)?;
                        let _ = self.out.send(Msg::Drain { seq, retire, ack });
                        return Ok(());
                    }
                }
            }
        }
        if order.waiting() > 0 {
            // Only possible when an upstream thread died; its error says why.
            (self.ctx.log)(&format!(
                "stage `{name}`: {} messages left out of order at end of stream",
                order.waiting()
            ));
        }
        // End of stream: each worker takes exactly one Finish, so each finishes once.
        let next = order.next_seq();
        for i in 0..n as u64 {
            let _ = work_tx.send(Work::Finish { seq: next + i });
        }
        drop(work_tx);
        threads::join_all(workers)
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
            self.stats.swaps_refused.fetch_add(1, Relaxed);
            let _ = order.reply.send(SwapOutcome {
                stage: version.spec.name.clone(),
                from,
                to: order.plugin.manifest.version.clone(),
                drained: 0,
                pause: started.elapsed(),
                state: Handover::NoState,
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
        // Second wait: every worker has installed its new instance.
        order.barrier.wait();
        let state = order
            .handover
            .lock()
            .map_or(Handover::NoState, |s| s.clone());
        *version = Version {
            plugin: order.plugin.clone(),
            spec: Arc::new(order.spec.clone()),
        };
        self.stats.swaps.fetch_add(1, Relaxed);
        let _ = order.reply.send(SwapOutcome {
            stage: version.spec.name.clone(),
            from,
            to: order.plugin.manifest.version.clone(),
            drained: inflight,
            pause: started.elapsed(),
            state,
            refused: None,
        });
    }
}
