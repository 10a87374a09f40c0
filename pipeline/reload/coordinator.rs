//! The reload coordinator: one thread that owns every reload decision, one at a time.
//! It debounces changed paths, loads the new version beside the running one, and hands
//! it to the feeder as a swap or a rebuild; it reports what happened, and a version that
//! fails anywhere before the marker never replaces the running one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use notify::{RecursiveMode, Watcher};

use super::diff::{self, Change};
use super::normalise;
use crate::config::{PipelinePlan, PipelinesConfig, StageSpec};
use crate::plugin::Plugin;
use crate::run::{self, Command, RunStats, SwapOrder, SwapOutcome};

/// A stage as the coordinator knows it.
pub(super) struct Live {
    pub(super) spec: StageSpec,
    pub(super) path: PathBuf,
    pub(super) plugin: Arc<Plugin>,
    pub(super) workers: usize,
    /// The version this one replaced, kept loaded for `pipe ctl rollback` until
    /// [`ROLLBACK_WINDOW`] after the swap.
    pub(super) previous: Option<(Arc<Plugin>, StageSpec, Instant)>,
}

/// How long the replaced version of a stage stays loaded for a rollback: long enough to
/// notice a bad version on a dashboard, short enough not to pin old libraries forever.
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(3600);

/// An order from `pipe ctl` (through `ops`), answered on `reply` with what happened.
pub struct CtlRequest {
    /// What to do.
    pub command: CtlCommand,
    /// `Ok(report)` or `Err(why it was refused)`.
    pub reply: Sender<Result<String, String>>,
}

/// The orders `pipe ctl` can give the coordinator.
#[derive(Debug, Clone)]
pub enum CtlCommand {
    /// Swap `stage` to the plugin at `file`, or reload it from where it was found.
    Swap {
        /// The stage's name.
        stage: String,
        /// The new plugin file (a library stage), if not the stage's own.
        file: Option<PathBuf>,
    },
    /// Swap `stage` back to the version it ran before its last swap.
    Rollback {
        /// The stage's name.
        stage: String,
    },
}

pub(super) struct Coordinator {
    pub(super) plan: PipelinePlan,
    pub(super) stages: Vec<Live>,
    pub(super) config_path: PathBuf,
    pub(super) commands: Sender<Command>,
    pub(super) stats: Arc<RunStats>,
    pub(super) log: fn(&str),
    /// The watcher, to add the directories of stages a rebuild brings in.
    pub(super) watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    /// Directories watched so far.
    pub(super) dirs: BTreeSet<PathBuf>,
    /// Where the chain is published for `/stages` and `/metrics`.
    pub(super) published: super::LiveChain,
}

impl Coordinator {
    /// Publishes the chain; `swapped` names the stage index just swapped.
    pub(super) fn publish(&self, swapped: Option<usize>) {
        let mut v = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let next = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| super::LiveStage {
                name: s.spec.name.clone(),
                plugin: s.plugin.clone(),
                workers: s.workers,
                last_swap: if swapped == Some(i) {
                    Some(std::time::SystemTime::now())
                } else {
                    v.iter()
                        .find(|o| o.name == s.spec.name)
                        .and_then(|o| o.last_swap)
                },
            })
            .collect();
        *v = next;
    }

    /// Watches the directories of the config and of every stage's file not yet watched.
    pub(super) fn watch_dirs(&mut self) -> Result<(), String> {
        let mut wanted = vec![self
            .config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()];
        for s in &self.stages {
            wanted.push(s.path.parent().map(Path::to_path_buf).unwrap_or_default());
        }
        let mut watcher = self
            .watcher
            .lock()
            .map_err(|_| "the watcher is gone".to_string())?;
        for d in wanted {
            if self.dirs.contains(&d) {
                continue;
            }
            watcher
                .watch(&d, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", d.display()))?;
            self.dirs.insert(d);
        }
        Ok(())
    }

    pub(super) fn run(mut self, events: Receiver<PathBuf>, ctl: Receiver<CtlRequest>) {
        let debounce = self.plan.debounce;
        let mut pending: BTreeMap<PathBuf, Instant> = BTreeMap::new();
        loop {
            let wait = pending
                .values()
                .map(|t| (*t + debounce).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            // Orders from `pipe ctl` go through this same thread, so they never race a
            // reload from a file change.
            let got = crossbeam_channel::select! {
                recv(events) -> p => p.map_err(|_| RecvTimeoutError::Disconnected),
                recv(ctl) -> r => {
                    if let Ok(r) = r {
                        let answer = self.ctl(r.command);
                        let _ = r.reply.send(answer);
                    }
                    continue;
                }
                default(wait) => Err(RecvTimeoutError::Timeout),
            };
            match got {
                Ok(p) => {
                    let p = normalise(&p);
                    if self.is_watched(&p) {
                        pending.insert(p, Instant::now());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let ready: Vec<PathBuf> = pending
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= debounce)
                .map(|(p, _)| p.clone())
                .collect();
            for p in ready {
                pending.remove(&p);
                if p == self.config_path {
                    self.reload_config();
                } else {
                    self.reload_plugin(&p);
                }
            }
        }
    }

    /// Carries out one `pipe ctl` order as a swap with the usual guarantees (loaded
    /// beside the running version, drained at a marker, state handed over, reported).
    fn ctl(&mut self, command: CtlCommand) -> Result<String, String> {
        let stage = match &command {
            CtlCommand::Swap { stage, .. } | CtlCommand::Rollback { stage } => stage.clone(),
        };
        let i = self
            .stages
            .iter()
            .position(|s| s.spec.name == stage)
            .ok_or_else(|| format!("no stage `{stage}` in the running pipeline"))?;
        match command {
            CtlCommand::Swap { file: None, .. } => {
                let spec = self.stages[i].spec.clone();
                self.swap(i, spec, None, &[])
            }
            CtlCommand::Swap {
                file: Some(file), ..
            } => {
                let spec = self.stages[i].spec.clone();
                let crate::config::StageKind::Plugin { plugin, .. } = &spec.kind else {
                    return Err(format!(
                        "stage `{stage}` is a process stage: edit its program and run `pipe ctl swap {stage}` without a file"
                    ));
                };
                // The same checks as any load (trust, pin, probe), on that file.
                let mut at_file = spec.clone();
                at_file.kind = crate::config::StageKind::Plugin {
                    plugin: plugin.clone(),
                    search: vec![file.clone()],
                };
                let loaded = crate::plugin::load(&at_file).map_err(|e| e.to_string());
                match loaded {
                    Ok(p) => self.swap(i, spec, Some(Arc::new(p)), &[]),
                    Err(why) => {
                        self.count_refused(i);
                        Err(why)
                    }
                }
            }
            CtlCommand::Rollback { .. } => {
                let Some((plugin, spec, at)) = self.stages[i].previous.clone() else {
                    return Err(format!(
                        "stage `{stage}` has not been swapped in this run: nothing to roll back to"
                    ));
                };
                if at.elapsed() > ROLLBACK_WINDOW {
                    self.stages[i].previous = None;
                    return Err(format!(
                        "the previous version of stage `{stage}` was released {} s after the swap",
                        ROLLBACK_WINDOW.as_secs()
                    ));
                }
                self.swap(i, spec, Some(plugin), &[])
                    .map(|r| format!("rolled back: {r}"))
            }
        }
    }

    fn count_refused(&self, i: usize) {
        let live = &self.stages[i];
        self.stats
            .stage(&live.spec.name, live.workers)
            .swaps_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_watched(&self, p: &Path) -> bool {
        p == self.config_path || self.stages.iter().any(|s| s.path == p)
    }

    /// A plugin file changed: swap every stage that runs it.
    fn reload_plugin(&mut self, path: &Path) {
        let idx: Vec<usize> = (0..self.stages.len())
            .filter(|&i| self.stages[i].path == path)
            .collect();
        for i in idx {
            let spec = self.stages[i].spec.clone();
            let _ = self.swap(i, spec, None, &[]);
        }
    }

    /// Loads (unless `plugin` is given), instantiates and swaps stage `i`. `keys` are
    /// the config keys that changed (empty for a new plugin file). Returns the report,
    /// or why the swap was refused (already logged either way).
    fn swap(
        &mut self,
        i: usize,
        spec: StageSpec,
        plugin: Option<Arc<Plugin>>,
        keys: &[String],
    ) -> Result<String, String> {
        let live = &self.stages[i];
        let name = live.spec.name.clone();
        let stats = self.stats.stage(&name, live.workers);
        let refuse = |why: String| {
            stats
                .swaps_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                "reload of stage `{name}` refused, version {} keeps running: {why}",
                live.plugin.manifest.version
            );
            Err(why)
        };
        let plugin = match plugin {
            Some(p) => p,
            None => match crate::plugin::load(&spec) {
                // The same bytes and config are not a new version (issue 11).
                Ok(p) if p.same_version(&live.plugin) && spec == live.spec => {
                    tracing::debug!("stage `{name}`: {} is unchanged", p.path.display());
                    return Ok(format!(
                        "stage `{name}`: {} is the running version; nothing to do",
                        p.path.display()
                    ));
                }
                Ok(p) => Arc::new(p),
                Err(e) => return refuse(e.to_string()),
            },
        };
        if let Err(e) =
            crate::run::jetstream::check_stateful(&self.plan, &name, plugin.manifest.stateful)
        {
            return refuse(e.to_string());
        }
        if plugin.manifest.stateful && live.workers > 1 {
            return refuse(format!(
                "the new version is stateful but the stage runs {} workers; restart the run",
                live.workers
            ));
        }
        let mut instances = Vec::with_capacity(live.workers);
        for _ in 0..live.workers {
            match plugin.instantiate(&spec.config_json) {
                Ok(inst) => instances.push(inst),
                Err(e) => return refuse(e.to_string()),
            }
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded::<SwapOutcome>(1);
        let order = Arc::new(SwapOrder::new(
            plugin.clone(),
            spec.clone(),
            instances,
            reply_tx,
        ));
        if self
            .commands
            .send(Command::Swap {
                stage: name.clone(),
                order,
            })
            .is_err()
        {
            return Err("the run is ending".into());
        }
        // No reply: the stream ended before the marker reached the stage.
        let Ok(out) = reply_rx.recv() else {
            return Err("the stream ended before the swap".into());
        };
        if let Some(why) = out.refused {
            tracing::warn!(
                "swap of stage `{}` refused at the last step, version {} keeps running: {why}",
                out.stage,
                out.from
            );
            return Err(why);
        }
        // A config edit says which keys changed; a new file says where it came from.
        let what = if keys.is_empty() {
            format!("{} -> {} ({})", out.from, out.to, plugin.path.display())
        } else {
            format!(
                "{} -> {} (config changed: {})",
                out.from,
                out.to,
                keys.join(", ")
            )
        };
        let report = format!(
            "swapped stage `{}` {what}: drained {} batch{}, paused {:.2} ms, {}",
            out.stage,
            out.drained,
            if out.drained == 1 { "" } else { "es" },
            out.pause.as_secs_f64() * 1e3,
            out.state,
        );
        (self.log)(&report);
        let live = &mut self.stages[i];
        let old_plugin = std::mem::replace(&mut live.plugin, plugin);
        let old_spec = std::mem::replace(&mut live.spec, spec);
        live.previous = Some((old_plugin, old_spec, Instant::now()));
        self.publish(Some(i));
        Ok(report)
    }

    /// The config changed: apply stage config changes as swaps, chain changes as a
    /// rebuild; refuse anything invalid.
    fn reload_config(&mut self) {
        let name = self.plan.name.clone();
        let new_plan = PipelinesConfig::load(&self.plan.config_path).and_then(|c| {
            if !c.pipelines.contains_key(&name) {
                return Err(crate::config::ConfigError::Invalid {
                    path: self.plan.config_path.clone(),
                    message: format!("pipeline `{name}` is gone from the file"),
                });
            }
            c.plan(&self.plan.config_path, &name)
        });
        let new_plan = match new_plan {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("config change ignored, the pipeline runs on unchanged: {e}");
                return;
            }
        };
        let mut running = self.plan.clone();
        running.stages = self.stages.iter().map(|s| s.spec.clone()).collect();
        let d = diff::diff(&running, &new_plan);
        if !d.next_run_only.is_empty() {
            (self.log)(&format!(
                "{} changed: applies to the next run",
                d.next_run_only.join(", ")
            ));
        }
        match d.change {
            Change::None => self.plan = new_plan,
            Change::Swap(changes) => {
                for c in changes {
                    let spec = new_plan.stages[c.index].clone();
                    // Same file: reuse the loaded plugin unless the diff says otherwise.
                    let plugin = (!c.reload).then(|| self.stages[c.index].plugin.clone());
                    let _ = self.swap(c.index, spec, plugin, &c.keys);
                }
                self.plan = new_plan;
            }
            Change::Rebuild { .. } => self.rebuild(new_plan),
        }
    }

    /// The chain itself changed: load everything first, then drain and rebuild.
    fn rebuild(&mut self, new_plan: PipelinePlan) {
        let setups = match run::prepare(&new_plan.stages, self.log) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("config change ignored, the pipeline runs on unchanged: {e}");
                return;
            }
        };
        if let Some(e) = setups.iter().find_map(|s| {
            crate::run::jetstream::check_stateful(
                &new_plan,
                &s.spec.name,
                s.plugin.manifest.stateful,
            )
            .err()
        }) {
            tracing::warn!("config change ignored, the pipeline runs on unchanged: {e}");
            return;
        }
        let live: Vec<Live> = setups
            .iter()
            .map(|s| Live {
                spec: s.spec.clone(),
                path: normalise(&s.plugin.path),
                plugin: s.plugin.clone(),
                workers: s.instances.len(),
                previous: None,
            })
            .collect();
        let before: Vec<String> = self.stages.iter().map(|s| s.spec.name.clone()).collect();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if self
            .commands
            .send(Command::Rebuild {
                stages: setups,
                done: done_tx,
            })
            .is_err()
        {
            return;
        }
        let Ok(rebuilt) = done_rx.recv() else { return };
        let states: Vec<String> = rebuilt
            .states
            .iter()
            .map(|(stage, h)| format!("; `{stage}`: {h}"))
            .collect();
        (self.log)(&format!(
            "pipeline `{}` rebuilt: [{}] -> [{}]{}",
            self.plan.name,
            before.join(" -> "),
            rebuilt.names.join(" -> "),
            states.concat()
        ));
        self.stages = live;
        self.plan = new_plan;
        self.publish(None);
        if let Err(e) = self.watch_dirs() {
            tracing::warn!("{e}: changes to the new stages' files will not be seen");
        }
    }
}
