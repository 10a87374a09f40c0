//! The timeout watchdog: timestamps of busy workers, checked by the sink's ticker
//! against each stage's `timeout_ms`. A worker stuck inside a native plugin cannot be
//! stopped, so a timeout ends the run with an error naming the stage, the input and the
//! line of the batch, instead of hanging forever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipe_sdk::Pos;

use super::deadletter::DeadLetter;
use super::error::RunError;

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

    pub(super) fn start(&self, pos: Pos) {
        self.line.store(pos.line, Relaxed);
        self.input.store(pos.input as u64, Relaxed);
        self.busy_since.store(self.now(), Relaxed);
    }

    pub(super) fn stop(&self) {
        self.busy_since.store(0, Relaxed);
    }

    pub(super) fn set_timeout(&self, t: Option<Duration>) {
        self.timeout_ms
            .store(t.map_or(0, |d| d.as_millis() as u64), Relaxed);
    }
}

impl Watchdog {
    /// A slot for a worker of `stage`.
    pub(super) fn register(&self, stage: &str, timeout: Option<Duration>) -> Arc<WatchSlot> {
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

    /// Every worker busy past its stage's timeout right now: (stage, seconds busy,
    /// limit in seconds). Unlike [`Watchdog::check`] it marks nothing: `/health` asks
    /// this as often as it is scraped.
    pub fn overdue(&self) -> Vec<(String, f64, f64)> {
        let v = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter_map(|s| {
                let limit = s.timeout_ms.load(Relaxed);
                let since = s.busy_since.load(Relaxed);
                let busy = s.now().saturating_sub(since);
                (limit != 0 && since != 0 && busy > limit)
                    .then(|| (s.stage.clone(), busy as f64 / 1e3, limit as f64 / 1e3))
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

/// The stages busy right now, for messages: "stage `x` (busy 3.2 s on the batch at
/// in.csv:40)".
pub fn describe_busy(watchdog: &Watchdog, dead: &DeadLetter) -> String {
    watchdog
        .busy(dead)
        .iter()
        .map(|(stage, secs, input, line)| {
            if *line == 0 {
                format!("stage `{stage}` (busy {secs:.1} s)")
            } else {
                format!("stage `{stage}` (busy {secs:.1} s on the batch at {input}:{line})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
