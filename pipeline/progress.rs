//! The progress bar on stderr: bytes read of the total with records/s and ETA when every
//! input is a file, a spinner with counts when reading stdin. Shown only on a terminal
//! unless `--progress` forces it; never on stdout.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::RunStats;

/// A live progress display.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar sized to `inputs` (files), or a spinner (stdin or unknown sizes).
    pub fn new(inputs: &[String]) -> Progress {
        let total: Option<u64> = inputs
            .iter()
            .map(|i| {
                if i == "-" {
                    None
                } else {
                    std::fs::metadata(i).ok().map(|m| m.len())
                }
            })
            .sum();
        let bar = match total {
            Some(t) => {
                let b =
                    ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr_with_hz(10));
                b.set_style(
                    ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            }
            None => {
                let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
                b.set_style(
                    ProgressStyle::with_template("{spinner} {bytes} read, {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(100));
                b
            }
        };
        Progress { bar }
    }

    /// Updates the display from the counters.
    pub fn tick(&self, stats: &RunStats) {
        let bytes = stats.source.bytes.load(Relaxed);
        let read = stats.source.read.load(Relaxed);
        let secs = self.bar.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_position(bytes);
        self.bar.set_message(format!(
            "{read} records, {:.0} records/s",
            read as f64 / secs
        ));
    }

    /// Removes the display.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
