//! `/health` and `/stages`.
//!
//! Health is 200 while records flow or the input is idle, and 503 only for a reason an
//! operator must act on: a stage busy past its `timeout_ms` (the watchdog's slots) or a
//! process stage that gave up restarting its children. Idle input is healthy: a stream
//! that waits for data is doing its job (Fluent Bit's health, which judges by recent
//! errors instead, is the counter-example in issue 16).

use std::sync::atomic::Ordering::Relaxed;

use crate::run::Probe;

/// The verdict of `/health`.
#[derive(Debug, serde::Serialize)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub ok: bool,
    /// Why not, one line per reason.
    pub reasons: Vec<String>,
    /// Records read so far, to tell flowing from idle.
    pub records_read: u64,
    /// Records written so far.
    pub records_written: u64,
}

impl Health {
    /// The body of the response.
    pub fn to_json(&self) -> String {
        let status = if self.ok { "ok" } else { "unhealthy" };
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["status"] = status.into();
        format!("{v}\n")
    }
}

/// Judges the run now.
pub fn health(probe: &Probe) -> Health {
    let mut reasons = Vec::new();
    for (stage, busy, limit) in probe.overdue() {
        reasons.push(format!(
            "stage `{stage}` is stuck: busy {busy:.1} s on one batch, past its timeout of {limit:.1} s"
        ));
    }
    for (spec, (plugin, _)) in probe.plan.stages.iter().zip(&probe.loaded) {
        if let Some(why) = plugin.gave_up() {
            reasons.push(format!("process stage `{}` gave up: {why}", spec.name));
        }
    }
    Health {
        ok: reasons.is_empty(),
        reasons,
        records_read: probe.stats.source.read.load(Relaxed),
        records_written: probe.stats.written.load(Relaxed),
    }
}

/// The chain as loaded, as JSON: one object per stage.
pub fn stages_json(probe: &Probe) -> String {
    let counters = probe.stats.stages.lock().unwrap_or_else(|e| e.into_inner());
    let stages: Vec<_> = probe
        .plan
        .stages
        .iter()
        .zip(&probe.loaded)
        .map(|(spec, (plugin, workers))| {
            let swaps = counters
                .iter()
                .find(|(n, _, _)| *n == spec.name)
                .map(|(_, s, _)| (s.swaps.load(Relaxed), s.swaps_refused.load(Relaxed)));
            serde_json::json!({
                "stage": spec.name,
                "plugin": plugin.manifest.name,
                "version": plugin.manifest.version,
                "path": plugin.path.display().to_string(),
                "sha256": plugin.sha256,
                "workers": workers,
                "stateful": plugin.manifest.stateful,
                "swaps": swaps.map(|s| s.0),
                "swaps_refused": swaps.map(|s| s.1),
            })
        })
        .collect();
    format!("{}\n", serde_json::Value::Array(stages))
}
