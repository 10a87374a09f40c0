//! The run's counters in the Prometheus text format (version 0.0.4), checked by
//! `promtool check metrics` in tests/ops.rs.
//!
//! Written by hand rather than through `prometheus-client`: the counters already live
//! in the run's atomics, so a registry would only copy them; what the format needs is
//! the `# HELP`/`# TYPE` lines, `_total` on counters and escaped label values.
//!
//! The plugin version is not a label of every counter: the counters of a stage survive
//! swaps (they are the stage's, not the version's), so `pipe_stage_info` carries the
//! plugin and version running now, the usual Prometheus way of joining them in a query
//! (`rate(...) * on(stage) group_left(version) pipe_stage_info`).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::View;
use crate::run::stats::StageStats;

/// The whole `/metrics` page.
pub fn render(view: &View) -> String {
    let probe = &view.probe;
    let live = view.stages();
    let mut out = String::with_capacity(4096);
    let stats = &probe.stats;
    let stages: Vec<_> = stats
        .stages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, s, workers)| (name.clone(), s.clone(), *workers))
        .collect();

    let src = &stats.source;
    family(
        &mut out,
        "pipe_reader_records_total",
        "counter",
        "Records read, readable or not.",
        &[("", src.read.load(Relaxed) as f64)],
    );
    family(
        &mut out,
        "pipe_reader_bytes_total",
        "counter",
        "Input bytes consumed.",
        &[("", src.bytes.load(Relaxed) as f64)],
    );
    family(
        &mut out,
        "pipe_reader_bad_records_dead_lettered_total",
        "counter",
        "Unreadable records sent to the dead-letter file.",
        &[("", src.dead_lettered.load(Relaxed) as f64)],
    );
    family(
        &mut out,
        "pipe_reader_bad_records_skipped_total",
        "counter",
        "Unreadable records skipped.",
        &[("", src.skipped.load(Relaxed) as f64)],
    );
    family(
        &mut out,
        "pipe_sink_records_written_total",
        "counter",
        "Records written to the output.",
        &[("", stats.written.load(Relaxed) as f64)],
    );
    family(
        &mut out,
        "pipe_uptime_seconds",
        "gauge",
        "Seconds since the run started.",
        &[("", probe.started.elapsed().as_secs_f64())],
    );

    // The stage's plugin and version as loaded at start (see the module doc).
    let info: Vec<(String, f64)> = live
        .iter()
        .map(|s| {
            (
                format!(
                    "stage=\"{}\",plugin=\"{}\",version=\"{}\"",
                    escape(&s.name),
                    escape(&s.plugin.manifest.name),
                    escape(&s.plugin.manifest.version)
                ),
                1.0,
            )
        })
        .collect();
    let info: Vec<(&str, f64)> = info.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family(
        &mut out,
        "pipe_stage_info",
        "gauge",
        "A stage's plugin and version running now.",
        &info,
    );

    let per_stage = |get: &Get| -> Vec<(String, f64)> {
        stages
            .iter()
            .map(|(name, s, w)| (format!("stage=\"{}\"", escape(name)), get(s, *w)))
            .collect()
    };
    let rows: [(&str, &str, &str, &Get); 12] = [
        ("pipe_stage_records_in_total", "counter", "Records a stage received.", &|s, _| s.rows_in.load(Relaxed) as f64),
        ("pipe_stage_records_out_total", "counter", "Records a stage emitted.", &|s, _| s.rows_out.load(Relaxed) as f64),
        ("pipe_stage_records_filtered", "gauge", "Net records a stage dropped on purpose (in - out - dead-lettered - skipped; negative for a stage that emits more than it takes).", &|s, _| {
            s.rows_in.load(Relaxed) as f64 - s.rows_out.load(Relaxed) as f64 - s.dead_lettered.load(Relaxed) as f64 - s.skipped.load(Relaxed) as f64
        }),
        ("pipe_stage_records_dead_lettered_total", "counter", "Records a stage sent to the dead-letter file.", &|s, _| s.dead_lettered.load(Relaxed) as f64),
        ("pipe_stage_records_skipped_total", "counter", "Records a stage dropped under on_error = skip.", &|s, _| s.skipped.load(Relaxed) as f64),
        ("pipe_stage_batches_total", "counter", "Batches a stage processed.", &|s, _| s.batches.load(Relaxed) as f64),
        ("pipe_stage_batch_errors_total", "counter", "Batches that failed as a whole (error or panic).", &|s, _| s.batch_errors.load(Relaxed) as f64),
        ("pipe_stage_panics_total", "counter", "Panics caught in a stage.", &|s, _| s.panics.load(Relaxed) as f64),
        ("pipe_stage_busy_seconds_total", "counter", "Seconds spent inside a stage, summed over its workers.", &|s, _| s.busy_ns.load(Relaxed) as f64 / 1e9),
        ("pipe_stage_swaps_total", "counter", "Hot swaps of a stage done.", &|s, _| s.swaps.load(Relaxed) as f64),
        ("pipe_stage_swaps_refused_total", "counter", "Hot swaps of a stage refused (the old version kept running).", &|s, _| s.swaps_refused.load(Relaxed) as f64),
        ("pipe_stage_workers", "gauge", "Worker threads of a stage.", &|_, w| w as f64),
    ];
    for (name, kind, help, get) in rows {
        let v = per_stage(get);
        let v: Vec<(&str, f64)> = v.iter().map(|(l, x)| (l.as_str(), *x)).collect();
        family(&mut out, name, kind, help, &v);
    }
    let gave_up: Vec<(String, f64)> = live
        .iter()
        .map(|s| {
            (
                format!("stage=\"{}\"", escape(&s.name)),
                s.plugin.gave_up().is_some() as u8 as f64,
            )
        })
        .collect();
    let gave_up: Vec<(&str, f64)> = gave_up.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family(
        &mut out,
        "pipe_stage_gave_up",
        "gauge",
        "1 when a process stage's children failed too often and it gave up.",
        &gave_up,
    );
    out
}

/// Reads one sample from a stage's counters and its worker count.
type Get = dyn Fn(&StageStats, usize) -> f64;

/// One metric family: HELP, TYPE and a sample per label set (`""`: no labels).
pub(super) fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(&str, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_family_has_help_type_and_samples() {
        let mut s = String::new();
        family(&mut s, "x_total", "counter", "X.", &[("stage=\"a\"", 3.0)]);
        assert_eq!(
            s,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{stage=\"a\"} 3\n"
        );
    }
}
