//! Counters of a run, per stage and in total, and the accounting identity every run
//! must satisfy (DESIGN §8):
//!
//! `read = written + filtered + dead-lettered + skipped`
//!
//! where for each stage `in = out + filtered + dead-lettered + skipped` (`filtered` is
//! the net number of rows a stage dropped on purpose: negative for a stage that emits
//! more rows than it takes) and the source's unreadable records count as read and then
//! dead-lettered or skipped.
//!
//! A run that stops early adds `in flight`: records read but not yet accounted for,
//! among them the rows of the batch whose failure stopped it (`failed`, per stage:
//! never counted as `filtered`, which is only what a stage dropped on purpose).
//! `batches` counts the non-empty batches a stage received (the empty batches that carry
//! columns through the chain, and a stage's empty end-of-stream output, are not work),
//! and `busy` is time spent on those and on `finish`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Live counters of one stage. Shared by its dispatcher and workers; survive swaps.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Rows received.
    pub rows_in: AtomicU64,
    /// Rows emitted.
    pub rows_out: AtomicU64,
    /// Rows sent to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Rows dropped under `on_error = "skip"`.
    pub skipped: AtomicU64,
    /// Non-empty batches received.
    pub batches: AtomicU64,
    /// Batches that failed as a whole (error or panic).
    pub batch_errors: AtomicU64,
    /// Rows of a batch whose failure stopped the run (neither out nor dropped on purpose).
    pub failed: AtomicU64,
    /// Panics caught.
    pub panics: AtomicU64,
    /// Nanoseconds spent inside the stage, summed over workers.
    pub busy_ns: AtomicU64,
    /// Hot swaps done.
    pub swaps: AtomicU64,
    /// Hot swaps refused (the old version kept running).
    pub swaps_refused: AtomicU64,
}

/// Live counters of the source.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Records read, readable or not.
    pub read: AtomicU64,
    /// Unreadable records sent to the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Unreadable records skipped.
    pub skipped: AtomicU64,
    /// Input bytes consumed.
    pub bytes: AtomicU64,
}

/// Everything counted in a run.
#[derive(Debug, Default)]
pub struct RunStats {
    /// The source.
    pub source: SourceStats,
    /// Rows written by the sink.
    pub written: AtomicU64,
    /// Stages by name, in chain order (a rebuilt chain adds new names at the end).
    pub stages: Mutex<Vec<(String, Arc<StageStats>, usize)>>,
}

impl RunStats {
    /// The counters of stage `name`, created on first use; `workers` is recorded for
    /// the report.
    pub fn stage(&self, name: &str, workers: usize) -> Arc<StageStats> {
        let mut v = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s, w)) = v.iter_mut().find(|(n, _, _)| n == name) {
            *w = workers;
            return s.clone();
        }
        let s = Arc::new(StageStats::default());
        v.push((name.to_string(), s.clone(), workers));
        s
    }

    /// A consistent-enough snapshot (taken after the run, it is exact).
    pub fn snapshot(&self, elapsed: Duration) -> Snapshot {
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, s, workers)| {
                let rows_in = s.rows_in.load(Relaxed);
                let rows_out = s.rows_out.load(Relaxed);
                let dl = s.dead_lettered.load(Relaxed);
                let sk = s.skipped.load(Relaxed);
                let failed = s.failed.load(Relaxed);
                StageSnapshot {
                    name: name.clone(),
                    workers: *workers,
                    rows_in,
                    rows_out,
                    filtered: rows_in as i64
                        - rows_out as i64
                        - dl as i64
                        - sk as i64
                        - failed as i64,
                    failed,
                    dead_lettered: dl,
                    skipped: sk,
                    batches: s.batches.load(Relaxed),
                    batch_errors: s.batch_errors.load(Relaxed),
                    panics: s.panics.load(Relaxed),
                    busy_ms: s.busy_ns.load(Relaxed) as f64 / 1e6,
                    swaps: s.swaps.load(Relaxed),
                    swaps_refused: s.swaps_refused.load(Relaxed),
                }
            })
            .collect();
        Snapshot {
            read: self.source.read.load(Relaxed),
            bad_input_dead_lettered: self.source.dead_lettered.load(Relaxed),
            bad_input_skipped: self.source.skipped.load(Relaxed),
            bytes_read: self.source.bytes.load(Relaxed),
            written: self.written.load(Relaxed),
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            stages,
            in_flight: 0,
        }
    }
}

/// A stage's counters at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSnapshot {
    /// Stage name.
    pub name: String,
    /// Worker threads.
    pub workers: usize,
    /// Rows in.
    pub rows_in: u64,
    /// Rows out.
    pub rows_out: u64,
    /// Net rows dropped on purpose.
    pub filtered: i64,
    /// Rows dead-lettered.
    pub dead_lettered: u64,
    /// Rows skipped.
    pub skipped: u64,
    /// Non-empty batches received.
    pub batches: u64,
    /// Batches that failed whole.
    pub batch_errors: u64,
    /// Rows of the batch whose failure stopped the run (part of `in_flight`).
    pub failed: u64,
    /// Panics caught.
    pub panics: u64,
    /// Time inside the stage, summed over workers.
    pub busy_ms: f64,
    /// Swaps done.
    pub swaps: u64,
    /// Swaps refused.
    pub swaps_refused: u64,
}

/// The run's counters at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// Records read (readable or not).
    pub read: u64,
    /// Unreadable records dead-lettered.
    pub bad_input_dead_lettered: u64,
    /// Unreadable records skipped.
    pub bad_input_skipped: u64,
    /// Input bytes.
    pub bytes_read: u64,
    /// Rows written.
    pub written: u64,
    /// Wall time.
    pub elapsed_ms: f64,
    /// Per stage, in chain order.
    pub stages: Vec<StageSnapshot>,
    /// Records read but neither written, filtered, dead-lettered nor skipped because the
    /// run stopped early (an error, or the reader of the output went away). Always 0
    /// for a run that finished or drained after a signal.
    pub in_flight: i64,
}

impl Snapshot {
    /// Rows dropped on purpose by all stages.
    pub fn filtered(&self) -> i64 {
        self.stages.iter().map(|s| s.filtered).sum()
    }

    /// Rows dead-lettered anywhere.
    pub fn dead_lettered(&self) -> u64 {
        self.bad_input_dead_lettered + self.stages.iter().map(|s| s.dead_lettered).sum::<u64>()
    }

    /// Rows skipped anywhere.
    pub fn skipped(&self) -> u64 {
        self.bad_input_skipped + self.stages.iter().map(|s| s.skipped).sum::<u64>()
    }

    /// True when `read = written + filtered + dead-lettered + skipped (+ in flight)`.
    pub fn balances(&self) -> bool {
        self.read as i64
            == self.written as i64
                + self.filtered()
                + self.dead_lettered() as i64
                + self.skipped() as i64
                + self.in_flight
    }

    /// For a run that stopped early: counts what was read but not accounted for as in
    /// flight (it was neither written nor dropped on purpose: the run ended under it).
    pub fn mark_stopped_early(&mut self) {
        self.in_flight = self.read as i64
            - (self.written as i64
                + self.filtered()
                + self.dead_lettered() as i64
                + self.skipped() as i64);
    }

    /// The human table `--stats` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let total_busy: f64 = self.stages.iter().map(|s| s.busy_ms).sum::<f64>();
        // A share of nothing is nothing (not 100% for a stage that processed nothing).
        let share = |busy: f64| {
            if total_busy > 0.0 {
                100.0 * busy / total_busy
            } else {
                0.0
            }
        };
        let _ = writeln!(
            s,
            "{:<16} {:>7} {:>11} {:>11} {:>10} {:>9} {:>9} {:>6} {:>6}",
            "stage", "workers", "in", "out", "filtered", "dead", "skipped", "busy%", "swaps"
        );
        for st in &self.stages {
            let _ = writeln!(
                s,
                "{:<16} {:>7} {:>11} {:>11} {:>10} {:>9} {:>9} {:>5.1}% {:>6}",
                truncate(&st.name, 16),
                st.workers,
                st.rows_in,
                st.rows_out,
                st.filtered,
                st.dead_lettered,
                st.skipped,
                share(st.busy_ms),
                st.swaps,
            );
        }
        let secs = (self.elapsed_ms / 1e3).max(1e-9);
        let _ = writeln!(
            s,
            "read {} (bad input: {} dead-lettered, {} skipped) = written {} + filtered {} + dead-lettered {} + skipped {}{}{}",
            self.read,
            self.bad_input_dead_lettered,
            self.bad_input_skipped,
            self.written,
            self.filtered(),
            self.dead_lettered(),
            self.skipped(),
            if self.in_flight != 0 {
                let failed: u64 = self.stages.iter().map(|s| s.failed).sum();
                format!(
                    " + in flight when the run stopped {}{}",
                    self.in_flight,
                    if failed > 0 {
                        format!(" ({failed} in the batch that failed)")
                    } else {
                        String::new()
                    }
                )
            } else {
                String::new()
            },
            if self.balances() { "" } else { "  <- DOES NOT BALANCE (a bug: please report it)" }
        );
        let _ = writeln!(
            s,
            "{:.3} s, {:.0} records/s, {:.1} MB/s",
            secs,
            self.read as f64 / secs,
            self.bytes_read as f64 / 1e6 / secs
        );
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
