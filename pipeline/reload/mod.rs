//! Hot reload (DESIGN §7): watch the plugin files and the config, load a changed
//! version side by side, and hand it to the run's feeder as a swap or a rebuild.
//!
//! # Layout
//! - `mod.rs`: [`start`]: the `notify` watcher, which only sends paths.
//! - `coordinator`: the one thread that owns every reload decision, one at a time, so
//!   two changes never race each other: debounce, load, swap or rebuild, report.
//! - `diff`: the pure plan diff behind a config edit.
//!
//! A process stage is watched through its program file (the script of
//! `["python3", "geo.py"]`); loading its new version starts a child and reads its
//! handshake. The swap itself is the same as for a library.
//!
//! Watches are on the *directories* of the config and of each plugin file
//! (non-recursive), because cargo and most deploy tools replace a file by renaming a new
//! one over it, and a delete-then-create would end a watch on the file itself.
//!
//! Debounce: a path is acted on once no event has arrived for it for `debounce_ms`
//! (default 300 ms, `settings.debounce_ms`): long enough for `cp` or a linker to finish
//! writing, short enough to feel immediate. A file that still fails to load (say, it was
//! half-written) is reported and the old version keeps running; the next change retries.

mod coordinator;
pub mod diff;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crossbeam_channel::unbounded;

pub use self::coordinator::{CtlCommand, CtlRequest, ROLLBACK_WINDOW};

use self::coordinator::{Coordinator, Live};
use crate::run::Control;

/// A stage as the coordinator last left it: what `/stages` and `/metrics` show.
#[derive(Clone)]
pub struct LiveStage {
    /// The stage's name.
    pub name: String,
    /// The version running now.
    pub plugin: Arc<crate::plugin::Plugin>,
    /// Worker threads.
    pub workers: usize,
    /// When it was last swapped in this run.
    pub last_swap: Option<SystemTime>,
}

/// The running chain, published by the coordinator after every swap and rebuild.
pub type LiveChain = Arc<Mutex<Vec<LiveStage>>>;

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
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

/// Starts watching the run's config and its stages' files, steering the run through
/// `control`.
pub fn start(control: Control) -> Result<WatchHandle, String> {
    start_with_ctl(control, crossbeam_channel::never(), LiveChain::default())
}

/// [`start`], also taking `pipe ctl` orders (swap, rollback) from `ctl` and publishing
/// the chain as it changes to `chain`.
pub fn start_with_ctl(
    control: Control,
    ctl: crossbeam_channel::Receiver<CtlRequest>,
    chain: LiveChain,
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
    let watcher = Arc::new(Mutex::new(watcher));

    let Control {
        plan,
        loaded,
        commands,
        stats,
        log,
    } = control;
    let stages: Vec<Live> = plan
        .stages
        .iter()
        .zip(loaded)
        .map(|(spec, (plugin, workers))| Live {
            workers,
            previous: None,
            spec: spec.clone(),
            path: normalise(&plugin.path),
            plugin,
        })
        .collect();
    let mut coordinator = Coordinator {
        config_path: normalise(&plan.config_path),
        plan,
        stages,
        commands,
        stats,
        log,
        watcher: watcher.clone(),
        dirs: Default::default(),
        published: chain,
    };
    coordinator.publish(None);
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
        .spawn(move || coordinator.run(rx, ctl))
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    Ok(WatchHandle { _watcher: watcher })
}
