//! `/health` and `/stages`.
//!
//! Health is 200 while records flow or the input is idle, and 503 only for a reason an
//! operator must act on: a stage busy past its `timeout_ms` (the watchdog's slots) or a
//! process stage that gave up restarting its children. Idle input is healthy: a stream
//! that waits for data is doing its job (Fluent Bit's health, which judges by recent
//! errors instead, is the counter-example in issue 16).

use std::sync::atomic::Ordering::Relaxed;

use super::View;

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
pub fn health(view: &View) -> Health {
    let probe = &view.probe;
    let mut reasons = Vec::new();
    for (stage, busy, limit) in probe.overdue() {
        reasons.push(format!(
            "stage `{stage}` is stuck: busy {busy:.1} s on one batch, past its timeout of {limit:.1} s"
        ));
    }
    for s in view.stages() {
        if let Some(why) = s.plugin.gave_up() {
            reasons.push(format!("process stage `{}` gave up: {why}", s.name));
        }
    }
    Health {
        ok: reasons.is_empty(),
        reasons,
        records_read: probe.stats.source.read.load(Relaxed),
        records_written: probe.stats.written.load(Relaxed),
    }
}

/// The chain running now, as JSON: one object per stage.
pub fn stages_json(view: &View) -> String {
    let counters = view
        .probe
        .stats
        .stages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, s, _)| {
            (
                n.clone(),
                s.swaps.load(Relaxed),
                s.swaps_refused.load(Relaxed),
            )
        })
        .collect::<Vec<_>>();
    let stages: Vec<_> = view
        .stages()
        .into_iter()
        .map(|s| {
            let swaps = counters.iter().find(|(n, _, _)| *n == s.name);
            let last_swap = s.last_swap.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs_f64())
            });
            let plugin = &s.plugin;
            serde_json::json!({
                "stage": s.name,
                "plugin": plugin.manifest.name,
                "version": plugin.manifest.version,
                "path": plugin.path.display().to_string(),
                "sha256": plugin.sha256,
                "workers": s.workers,
                "stateful": plugin.manifest.stateful,
                "swaps": swaps.map(|c| c.1),
                "swaps_refused": swaps.map(|c| c.2),
                "last_swap_unix_s": last_swap,
            })
        })
        .collect();
    format!("{}\n", serde_json::Value::Array(stages))
}
