//! Progress on stderr, never on stdout. On a terminal: an `indicatif` bar with bytes read
//! of the total, records/s and ETA when every input is a file, or a spinner with counts
//! when reading stdin. When stderr is not a terminal nothing is shown unless
//! `--progress` forces it; then a plain line every second (for CI and job logs, where a
//! redrawn bar would be noise).

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::stats::RunStats;

/// A live progress display.
pub struct Progress {
    kind: Kind,
    total: Option<u64>,
    started: Instant,
}

enum Kind {
    Bar(ProgressBar),
    Lines(Mutex<Instant>),
}

fn total_size(inputs: &[String]) -> Option<u64> {
    inputs
        .iter()
        .map(|i| {
            if i == "-" {
                None
            } else {
                std::fs::metadata(i).ok().map(|m| m.len())
            }
        })
        .sum()
}

impl Progress {
    /// A bar (or a spinner) on a terminal; plain lines otherwise.
    pub fn new(inputs: &[String]) -> Progress {
        let total = total_size(inputs);
        let kind = if std::io::stderr().is_terminal() {
            let target = ProgressDrawTarget::stderr_with_hz(10);
            let b = match total {
                Some(t) => {
                    let b = ProgressBar::with_draw_target(Some(t), target);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b
                }
                None => {
                    let b = ProgressBar::with_draw_target(None, target);
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {bytes} read, {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.enable_steady_tick(Duration::from_millis(100));
                    b
                }
            };
            Kind::Bar(b)
        } else {
            Kind::Lines(Mutex::new(Instant::now()))
        };
        Progress {
            kind,
            total,
            started: Instant::now(),
        }
    }

    /// Updates the display from the counters.
    pub fn tick(&self, stats: &RunStats) {
        let bytes = stats.source.bytes.load(Relaxed);
        let read = stats.source.read.load(Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = read as f64 / secs;
        match &self.kind {
            Kind::Bar(b) => {
                b.set_position(bytes);
                b.set_message(format!("{read} records, {rate:.0} records/s"));
            }
            Kind::Lines(last) => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() < Duration::from_secs(1) {
                    return;
                }
                *last = Instant::now();
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "pipe: progress: {}",
                    line(bytes, self.total, read, rate, secs)
                );
            }
        }
    }

    /// Removes the display.
    pub fn finish(&self) {
        if let Kind::Bar(b) = &self.kind {
            b.finish_and_clear();
        }
    }
}

/// One progress line: `12.0 MB of 92.4 MB (13%), 130000 records, 410000 records/s, ETA 7s`.
pub fn line(bytes: u64, total: Option<u64>, records: u64, rate: f64, secs: f64) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    match total {
        Some(t) if t > 0 => {
            let frac = (bytes as f64 / t as f64).min(1.0);
            let eta = if frac > 0.0 {
                secs * (1.0 - frac) / frac
            } else {
                0.0
            };
            format!(
                "{:.1} MB of {:.1} MB ({:.0}%), {records} records, {rate:.0} records/s, ETA {eta:.0}s",
                mb(bytes),
                mb(t),
                frac * 100.0
            )
        }
        _ => format!(
            "{:.1} MB, {records} records, {rate:.0} records/s",
            mb(bytes)
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_show_share_and_eta() {
        assert_eq!(
            super::line(25_000_000, Some(100_000_000), 250_000, 50_000.0, 5.0),
            "25.0 MB of 100.0 MB (25%), 250000 records, 50000 records/s, ETA 15s"
        );
        assert_eq!(
            super::line(1_500_000, None, 10, 2.0, 5.0),
            "1.5 MB, 10 records, 2 records/s"
        );
    }
}
