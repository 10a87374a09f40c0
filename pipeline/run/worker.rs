//! A stage's worker thread: runs batches through its instance, applies the stage's
//! policy to rejects and failed batches, takes part in swaps and drains, and calls
//! `finish` at the end of the stream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use pipe_sdk::host::{ErrorKind, HostOutput, StageBox};
use pipe_sdk::{Batch, Output, Pos};

use super::error::RunError;
use super::markers::{self, Msg, RetireOrder, SwapOrder};
use super::policy::{self, Culprit, Tally};
use super::stage::StageRuntime;
use super::watchdog::WatchSlot;
use crate::config::{Policy, StageSpec};
use crate::plugin::Plugin;

/// What a dispatcher hands its workers.
pub enum Work {
    /// A batch, in order.
    Batch {
        /// Its sequence number.
        seq: u64,
        /// The records.
        batch: Batch,
    },
    /// Install the new version (one per worker).
    Swap(Arc<SwapOrder>),
    /// Export state and end (a chain rebuild).
    Retire(Arc<RetireOrder>),
    /// End of stream: `finish`, send its rows as `seq`, end.
    Finish {
        /// The sequence number of the end-of-stream rows.
        seq: u64,
    },
}

/// The version a worker runs.
#[derive(Clone)]
pub struct Version {
    /// The plugin.
    pub plugin: Arc<Plugin>,
    /// The stage as configured for it.
    pub spec: Arc<StageSpec>,
}

impl Version {
    /// The limit the watchdog enforces (none for stages that enforce their own).
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.plugin.watchdog_timeout(self.spec.timeout)
    }
}

impl StageRuntime {
    /// A worker: processes batches with its instance until Finish or Retire. `Err`
    /// is fatal for the run.
    pub fn work(
        self,
        mut instance: StageBox,
        mut version: Version,
        work: Receiver<Work>,
        completed: Arc<AtomicU64>,
        slot: Arc<WatchSlot>,
    ) -> Result<(), RunError> {
        let mut out = Output::new();
        while let Ok(w) = work.recv() {
            match w {
                Work::Batch { seq, batch } => {
                    super::threads::failpoint("worker");
                    let result = self.process(&mut instance, &version, &batch, &mut out, &slot);
                    completed.fetch_add(1, Relaxed);
                    if let Err(e) = result {
                        // The sink stops the run at once; this thread just ends.
                        let _ = self.ctx.fatal.send(e);
                        return Ok(());
                    }
                    let batch = out.resolve(batch);
                    if self.out.send(Msg::Batch { seq, batch }).is_err() {
                        return Ok(()); // the run is stopping
                    }
                }
                Work::Swap(order) => {
                    order.barrier.wait();
                    let new = order.instances.lock().ok().and_then(|mut v| v.pop());
                    if let Some(mut new) = new {
                        let exported = if version.plugin.manifest.stateful {
                            markers::export(&instance)
                        } else {
                            Ok(None)
                        };
                        let note =
                            markers::hand_over(exported, &mut new, order.plugin.manifest.stateful);
                        if let Ok(mut s) = order.handover.lock() {
                            *s = note;
                        }
                        instance = new; // drops the old instance
                        version = Version {
                            plugin: order.plugin.clone(),
                            spec: Arc::new(order.spec.clone()),
                        };
                        slot.set_timeout(version.watchdog_timeout());
                    }
                    order.barrier.wait();
                }
                Work::Retire(order) => {
                    if version.plugin.manifest.stateful {
                        if let Ok(Some(state)) = markers::export(&instance) {
                            if let Ok(mut m) = order.states.lock() {
                                m.insert(version.spec.name.clone(), state);
                            }
                        }
                    }
                    return Ok(());
                }
                Work::Finish { seq } => {
                    out.clear();
                    let (r, spent) = timed(&slot, Pos::default(), || {
                        instance.finish(&mut out).into_result()
                    });
                    // `finish` is work when there was input or it emits rows; otherwise a
                    // stage that processed nothing would show as the busiest.
                    if self.stats.rows_in.load(Relaxed) > 0 || !out.batch().is_empty() {
                        self.add_busy(spent);
                    }
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
                    return Ok(());
                }
            }
        }
        Ok(())
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
        let (dl, sk) = (
            self.stats.dead_lettered.load(Relaxed),
            self.stats.skipped.load(Relaxed),
        );
        let r = self.process_inner(instance, version, batch, out, slot);
        if r.is_err() {
            // The rows of the batch that stopped the run: not dropped on purpose, so not
            // `filtered` (workers of one stage may interleave here; the run is ending).
            let settled = (self.stats.dead_lettered.load(Relaxed) - dl)
                + (self.stats.skipped.load(Relaxed) - sk);
            self.stats
                .failed
                .fetch_add((batch.len() as u64).saturating_sub(settled), Relaxed);
        }
        r
    }

    fn process_inner(
        &self,
        instance: &mut StageBox,
        version: &Version,
        batch: &Batch,
        out: &mut Output,
        slot: &WatchSlot,
    ) -> Result<(), RunError> {
        let spec = &version.spec;
        self.stats.rows_in.fetch_add(batch.len() as u64, Relaxed);
        if !batch.is_empty() {
            self.stats.batches.fetch_add(1, Relaxed);
        }
        out.clear();
        out.begin(batch);
        // Empty batches go through too: a header-only input still gets the stage's
        // output columns (select, compute), so the output has the right header.
        let pos = if batch.is_empty() {
            Pos::default()
        } else {
            batch.row(0).pos()
        };
        let (r, spent) = timed(slot, pos, || instance.process(batch, out).into_result());
        if !batch.is_empty() {
            self.add_busy(spent);
        }
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
                    // A stage whose backend gave up (a process stage whose children keep
                    // failing): the run cannot go on.
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

    fn add_busy(&self, spent: Duration) {
        self.stats
            .busy_ns
            .fetch_add(spent.as_nanos() as u64, Relaxed);
    }

    fn reject(
        &self,
        spec: &StageSpec,
        pos: Pos,
        reason: &str,
        record: impl FnOnce() -> String,
    ) -> Result<(), RunError> {
        policy::apply(
            spec.on_error,
            Culprit::Stage(&spec.name),
            pos,
            reason,
            record,
            &self.ctx.dead,
            Tally {
                skipped: &self.stats.skipped,
                dead_lettered: &self.stats.dead_lettered,
            },
        )
    }
}

/// Runs `call` as stage work: the watchdog sees the worker busy on the batch at `pos`
/// meanwhile. Returns its result and the time it took.
fn timed<R>(slot: &WatchSlot, pos: Pos, call: impl FnOnce() -> R) -> (R, Duration) {
    slot.start(pos);
    let t = Instant::now();
    let r = call();
    let spent = t.elapsed();
    slot.stop();
    (r, spent)
}
