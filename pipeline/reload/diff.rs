//! The plan diff: what a config edit asks of a running pipeline, as a pure function of
//! the old and the new plan (Vector's reload diff: `to_add`, `to_change`, `to_remove`).
//!
//! Stages that keep their place, name, kind and worker count are *swapped* one by one
//! (each at its own marker, state handed over); any other change to the chain *rebuilds*
//! it (a drain marker, then the new chain, state handed over by stage name). Settings
//! that size the run itself (batch size, channel capacity, policies, the dead-letter
//! file) apply to the next run only, and the diff says which.

use crate::config::{PipelinePlan, StageKind, StageSpec};

/// What a config edit asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDiff {
    /// Settings that changed but apply only to the next run.
    pub next_run_only: Vec<&'static str>,
    /// What to do to the running chain.
    pub change: Change,
}

/// What to do to the running chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The chain is as it was.
    None,
    /// Same stages in the same places: swap each of these.
    Swap(Vec<StageChange>),
    /// The chain changed shape: drain it and build the new one.
    Rebuild {
        /// Stages (by name) only the new chain has.
        to_add: Vec<String>,
        /// Stages only the old chain has.
        to_remove: Vec<String>,
        /// Stages both have (their state is handed over).
        to_keep: Vec<String>,
    },
}

/// One stage to swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageChange {
    /// Its index in the chain.
    pub index: usize,
    /// The plugin must be loaded anew (a changed pin or limit, or a process stage, whose
    /// config a new child checks in its handshake); otherwise the loaded one makes the new
    /// instances.
    pub reload: bool,
    /// What changed, for the report: stage keys (`on_error`, `timeout_ms`, `sha256`)
    /// and `config.KEY` for each key of the stage's own config.
    pub keys: Vec<String>,
}

/// Compares `old` (as running) with `new` (as edited).
pub fn diff(old: &PipelinePlan, new: &PipelinePlan) -> PlanDiff {
    let mut next_run_only = Vec::new();
    if old.batch_size != new.batch_size {
        next_run_only.push("batch_size");
    }
    if old.channel_capacity != new.channel_capacity {
        next_run_only.push("channel_capacity");
    }
    if old.max_record_bytes != new.max_record_bytes {
        next_run_only.push("max_record_bytes");
    }
    if old.on_bad_input != new.on_bad_input {
        next_run_only.push("on_bad_input");
    }
    if old.dead_letter != new.dead_letter {
        next_run_only.push("dead_letter");
    }
    if old.jetstream != new.jetstream {
        next_run_only.push("input/output stream");
    }
    let same_shape = old.stages.len() == new.stages.len()
        && old
            .stages
            .iter()
            .zip(&new.stages)
            .all(|(a, b)| a.name == b.name && a.kind == b.kind && a.workers == b.workers);
    let change = if same_shape {
        let swaps: Vec<StageChange> = old
            .stages
            .iter()
            .zip(&new.stages)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(index, (a, b))| StageChange {
                index,
                // A WASM stage's limits are compiled into its loaded module.
                reload: a.sha256 != b.sha256
                    || (a.timeout, a.memory_mb) != (b.timeout, b.memory_mb)
                    || !matches!(b.kind, StageKind::Plugin { .. }),
                keys: changed_keys(a, b),
            })
            .collect();
        if swaps.is_empty() {
            Change::None
        } else {
            Change::Swap(swaps)
        }
    } else {
        let names = |p: &PipelinePlan| p.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let (before, after) = (names(old), names(new));
        Change::Rebuild {
            to_add: after
                .iter()
                .filter(|n| !before.contains(n))
                .cloned()
                .collect(),
            to_remove: before
                .iter()
                .filter(|n| !after.contains(n))
                .cloned()
                .collect(),
            to_keep: after
                .iter()
                .filter(|n| before.contains(n))
                .cloned()
                .collect(),
        }
    };
    PlanDiff {
        next_run_only,
        change,
    }
}

/// The keys that differ between two versions of a stage.
pub fn changed_keys(a: &StageSpec, b: &StageSpec) -> Vec<String> {
    let mut keys = Vec::new();
    if a.on_error != b.on_error {
        keys.push("on_error".to_string());
    }
    if a.timeout != b.timeout {
        keys.push("timeout_ms".to_string());
    }
    if a.memory_mb != b.memory_mb {
        keys.push("memory_mb".to_string());
    }
    if a.sha256 != b.sha256 {
        keys.push("sha256".to_string());
    }
    if a.config_json != b.config_json {
        let parse = |s: &str| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(s).unwrap_or_default()
        };
        let (ca, cb) = (parse(&a.config_json), parse(&b.config_json));
        let mut names: Vec<&String> = ca.keys().chain(cb.keys()).collect();
        names.sort();
        names.dedup();
        keys.extend(
            names
                .into_iter()
                .filter(|k| ca.get(*k) != cb.get(*k))
                .map(|k| format!("config.{k}")),
        );
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelinesConfig;
    use std::path::Path;

    fn plan(toml: &str) -> PipelinePlan {
        let path = Path::new("pipelines.toml");
        PipelinesConfig::parse(path, toml)
            .unwrap()
            .plan(path, "default")
            .unwrap()
    }

    const BASE: &str = "[pipelines.default]\n\
        [[pipelines.default.stages]]\nplugin = \"filter\"\nconfig = { where = \"a > 1\" }\n\
        [[pipelines.default.stages]]\nplugin = \"dedup\"\nconfig = { key = [\"id\"] }\n";

    #[test]
    fn an_unchanged_plan_changes_nothing() {
        let d = diff(&plan(BASE), &plan(BASE));
        assert_eq!(d.change, Change::None);
        assert!(d.next_run_only.is_empty());
    }

    #[test]
    fn a_stage_config_edit_is_one_swap_naming_the_keys() {
        let edited = BASE.replace("key = [\"id\"]", "key = [\"email\"]");
        let d = diff(&plan(BASE), &plan(&edited));
        assert_eq!(
            d.change,
            Change::Swap(vec![StageChange {
                index: 1,
                reload: false,
                keys: vec!["config.key".into()],
            }])
        );
    }

    #[test]
    fn a_new_pin_reloads_the_plugin() {
        let pinned = BASE.replace(
            "plugin = \"filter\"\n",
            &format!("plugin = \"filter\"\nsha256 = \"{}\"\n", "a".repeat(64)),
        );
        match diff(&plan(BASE), &plan(&pinned)).change {
            Change::Swap(v) => {
                assert_eq!(v.len(), 1);
                assert!(v[0].reload);
                assert_eq!(v[0].keys, ["sha256"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adding_removing_or_resizing_a_stage_rebuilds() {
        let added = format!("{BASE}[[pipelines.default.stages]]\nplugin = \"mask\"\n");
        assert_eq!(
            diff(&plan(BASE), &plan(&added)).change,
            Change::Rebuild {
                to_add: vec!["mask".into()],
                to_remove: vec![],
                to_keep: vec!["filter".into(), "dedup".into()],
            }
        );
        let resized = BASE.replace(
            "plugin = \"filter\"\n",
            "plugin = \"filter\"\nworkers = 2\n",
        );
        assert!(matches!(
            diff(&plan(BASE), &plan(&resized)).change,
            Change::Rebuild { .. }
        ));
    }

    #[test]
    fn run_settings_apply_to_the_next_run() {
        let edited = format!("[settings]\nbatch_size = 7\n{BASE}");
        let d = diff(&plan(BASE), &plan(&edited));
        assert_eq!(d.next_run_only, ["batch_size"]);
        assert_eq!(d.change, Change::None);
    }
}
