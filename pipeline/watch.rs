//! Hot reload (DESIGN §7): watch the plugin files and the config, load a changed
//! version side by side, and hand it to the feeder as a swap or a rebuild.
//!
//! A process stage is watched through its program file (`process::program_file`: the
//! script of `["python3", "geo.py"]`); loading its new version starts a child and reads
//! its handshake, and the instances of the swap are new children, handshaken before the
//! old ones are drained and stopped. The swap itself is the same as for a library.
//!
//! The `notify` watcher only sends events; one coordinator thread owns all reload
//! decisions, one at a time, so two changes never race each other. Watches are on the
//! *directories* of the config and of each plugin file (non-recursive), because cargo and
//! most deploy tools replace a file by renaming a new one over it, and a delete-then-
//! create would end a watch on the file itself.
//!
//! Debounce: a path is acted on once no event has arrived for it for `debounce_ms`
//! (default 300 ms, `settings.debounce_ms`): long enough for `cp` or a linker to finish
//! writing, short enough to feel immediate. A file that still fails to load (say, it was
//! half-written) is reported and the old version keeps running; the next change retries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use notify::{RecursiveMode, Watcher};

use crate::config::{PipelinePlan, PipelinesConfig, StageKind, StageSpec};
use crate::engine::{prepare, Command};
use crate::plugin::{self, Plugin};
use crate::runtime::{SwapOrder, SwapOutcome};
use crate::stats::RunStats;

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

/// A stage as the coordinator knows it.
struct Live {
    spec: StageSpec,
    path: PathBuf,
    plugin: Arc<Plugin>,
    workers: usize,
}

struct Coordinator {
    plan: PipelinePlan,
    stages: Vec<Live>,
    config_path: PathBuf,
    commands: Sender<Command>,
    stats: Arc<RunStats>,
    log: fn(&str),
    /// The watcher, to add the directories of stages a rebuild brings in.
    watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
    /// Directories watched so far.
    dirs: BTreeSet<PathBuf>,
}

/// Absolute, with the directory canonicalised (the file itself may not exist).
fn normalise(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| abs.clone()),
        _ => abs,
    }
}

/// Starts watching the plan's config and its stages' files. `loaded` are the stages as
/// the run loaded them (plugin and worker count), in plan order.
pub fn start(
    plan: PipelinePlan,
    loaded: Vec<(Arc<Plugin>, usize)>,
    commands: Sender<Command>,
    stats: Arc<RunStats>,
    log: fn(&str),
) -> Result<WatchHandle, String> {
    let (tx, rx) = unbounded::<PathBuf>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })
    .map_err(|e| format!("cannot start the file watcher: {e}"))?;
    let watcher = Arc::new(std::sync::Mutex::new(watcher));

    let stages: Vec<Live> = plan
        .stages
        .iter()
        .zip(loaded)
        .map(|(spec, (plugin, workers))| Live {
            workers,
            spec: spec.clone(),
            path: normalise(&plugin.path),
            plugin,
        })
        .collect();
    let config_path = normalise(&plan.config_path);
    let mut coordinator = Coordinator {
        plan,
        stages,
        config_path,
        commands,
        stats,
        log,
        watcher: watcher.clone(),
        dirs: BTreeSet::new(),
    };
    coordinator.watch_dirs()?;
    tracing::debug!(
        "watching {} for changes (debounce {} ms)",
        coordinator
            .dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        coordinator.plan.debounce.as_millis()
    );
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || coordinator.run(rx))
        .map_err(|e| e.to_string())?;
    Ok(WatchHandle { _watcher: watcher })
}

impl Coordinator {
    /// Watches the directories of the config and of every stage's file not yet watched.
    fn watch_dirs(&mut self) -> Result<(), String> {
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

    fn run(mut self, events: Receiver<PathBuf>) {
        let debounce = self.plan.debounce;
        let mut pending: BTreeMap<PathBuf, Instant> = BTreeMap::new();
        loop {
            let wait = pending
                .values()
                .map(|t| (*t + debounce).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            match events.recv_timeout(wait) {
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
                if self.commands_closed() {
                    return;
                }
            }
        }
    }

    fn commands_closed(&self) -> bool {
        // The feeder drops its receiver at end of stream; a send would fail. There is
        // no cheap probe, so the coordinator just keeps going: its sends fail quietly.
        false
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
            self.swap(i, spec, None);
        }
    }

    /// Loads (unless `plugin` is given), instantiates and swaps stage `i`.
    fn swap(&mut self, i: usize, spec: StageSpec, plugin: Option<Arc<Plugin>>) {
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
        };
        let plugin = match plugin {
            Some(p) => p,
            None => match plugin::load(&spec) {
                // The same bytes and config are not a new version (issue 11).
                Ok(p) if p.same_version(&live.plugin) && spec == live.spec => {
                    tracing::debug!("stage `{name}`: {} is unchanged", p.path.display());
                    return;
                }
                Ok(p) => Arc::new(p),
                Err(e) => return refuse(e.to_string()),
            },
        };
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
            return; // the run is ending
        }
        // No reply: the stream ended before the marker reached the stage.
        if let Ok(out) = reply_rx.recv() {
            {
                if let Some(why) = out.refused {
                    tracing::warn!(
                        "swap of stage `{}` refused at the last step, version {} keeps running: {why}",
                        out.stage,
                        out.from
                    );
                    return;
                }
                (self.log)(&format!(
                    "swapped stage `{}` {} -> {} ({}): drained {} batch{}, paused {:.2} ms, {}",
                    out.stage,
                    out.from,
                    out.to,
                    plugin.path.display(),
                    out.drained,
                    if out.drained == 1 { "" } else { "es" },
                    out.pause.as_secs_f64() * 1e3,
                    out.state,
                ));
                let live = &mut self.stages[i];
                live.plugin = plugin;
                live.spec = spec;
            }
        }
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
        if new_plan.batch_size != self.plan.batch_size
            || new_plan.channel_capacity != self.plan.channel_capacity
            || new_plan.on_bad_input != self.plan.on_bad_input
            || new_plan.dead_letter != self.plan.dead_letter
        {
            (self.log)(
                "changes to [settings] and to the pipeline's own keys apply to the next run",
            );
        }
        let old: Vec<&StageSpec> = self.stages.iter().map(|s| &s.spec).collect();
        let same_shape = old.len() == new_plan.stages.len()
            && old
                .iter()
                .zip(&new_plan.stages)
                .all(|(a, b)| a.name == b.name && a.kind == b.kind && a.workers == b.workers);
        if same_shape {
            let changed: Vec<usize> = (0..old.len())
                .filter(|&i| *old[i] != new_plan.stages[i])
                .collect();
            for i in changed {
                let spec = new_plan.stages[i].clone();
                // Same file: reuse the loaded plugin unless the pin changed. A process
                // stage is loaded anew: its `timeout_ms` lives in the plugin, and the new
                // config is checked by a new child's handshake before anything changes.
                // A WASM stage's limits are compiled into its plugin: loaded anew too.
                let old = &self.stages[i].spec;
                let plugin = (spec.sha256 == old.sha256
                    && (spec.timeout, spec.memory_mb) == (old.timeout, old.memory_mb)
                    && matches!(spec.kind, StageKind::Plugin { .. }))
                .then(|| self.stages[i].plugin.clone());
                self.swap(i, spec, plugin);
            }
            self.plan = new_plan;
            return;
        }
        // The chain itself changed: load everything first, then drain and rebuild.
        let setups = match prepare(&new_plan.stages, self.log) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("config change ignored, the pipeline runs on unchanged: {e}");
                return;
            }
        };
        let live: Vec<Live> = setups
            .iter()
            .map(|s| Live {
                spec: s.spec.clone(),
                path: normalise(&s.plugin.path),
                plugin: s.plugin.clone(),
                workers: s.instances.len(),
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
        if let Ok(names) = done_rx.recv() {
            (self.log)(&format!(
                "pipeline `{}` rebuilt: [{}] -> [{}]",
                self.plan.name,
                before.join(" -> "),
                names.join(" -> ")
            ));
            self.stages = live;
            self.plan = new_plan;
            if let Err(e) = self.watch_dirs() {
                tracing::warn!("{e}: changes to the new stages' files will not be seen");
            }
        }
    }
}
