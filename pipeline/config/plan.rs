//! The resolved plan: what a run is built from once `pipelines.toml` has been parsed and
//! checked ([`PipelinePlan`], one [`StageSpec`] per stage), and the [`Policy`] every
//! source and stage applies to records it cannot handle.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use pipe_sdk::codec::Format;
use serde::Deserialize;

/// What happens to a record that cannot be read or processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Stop the run with an error (exit 1).
    #[default]
    Fail,
    /// Count it and drop it.
    Skip,
    /// Write it to the dead-letter file, count it, go on.
    DeadLetter,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Fail => "fail",
            Policy::Skip => "skip",
            Policy::DeadLetter => "dead-letter",
        })
    }
}

/// What runs one stage: a plugin library or a child process.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// A `cdylib` plugin called `plugin`, searched in `search` (in order).
    Plugin {
        /// The plugin name.
        plugin: String,
        /// Directories or files to look in, in order.
        search: Vec<PathBuf>,
    },
    /// A child process speaking the process-stage protocol.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// One stage, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The stage's unique name in the pipeline.
    pub name: String,
    /// What runs it.
    pub kind: StageKind,
    /// Worker threads requested.
    pub workers: usize,
    /// Error policy.
    pub on_error: Policy,
    /// Per-batch time limit.
    pub timeout: Option<Duration>,
    /// A WASM stage's memory cap per instance, in MiB.
    pub memory_mb: Option<u64>,
    /// Pinned SHA-256 (lower-case hex).
    pub sha256: Option<String>,
    /// The stage's config as JSON text.
    pub config_json: String,
}

impl StageSpec {
    /// The plugin name, or the program for process stages.
    pub fn plugin_label(&self) -> &str {
        match &self.kind {
            StageKind::Plugin { plugin, .. } => plugin,
            StageKind::Command { argv } => argv.first().map_or("?", |s| s.as_str()),
        }
    }
}

/// A pipeline resolved against its config file.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The pipeline's name.
    pub name: String,
    /// The pipeline's description.
    pub description: Option<String>,
    /// The config file it came from.
    pub config_path: PathBuf,
    /// Default input format.
    pub input: Option<Format>,
    /// Default output format.
    pub output: Option<Format>,
    /// Dead-letter file.
    pub dead_letter: Option<PathBuf>,
    /// Source policy.
    pub on_bad_input: Policy,
    /// Records per batch.
    pub batch_size: usize,
    /// Channel capacity in batches.
    pub channel_capacity: usize,
    /// Longest record the reader holds in memory (`settings.max_record_bytes`).
    pub max_record_bytes: usize,
    /// Watch for changes.
    pub watch: bool,
    /// `settings.listen`: where to serve the operations endpoints (see `ops`).
    pub listen: Option<String>,
    /// Quiet time before a reload.
    pub debounce: Duration,
    /// The stages.
    pub stages: Vec<StageSpec>,
    /// JetStream streams as input or output, if any.
    pub jetstream: crate::config::stream::Endpoints,
}

impl PipelinePlan {
    /// Whether a policy sends records to the dead-letter file (which must then be set,
    /// in the pipeline or with `--dead-letter`).
    pub fn needs_dead_letter(&self) -> bool {
        self.on_bad_input == Policy::DeadLetter
            || self.stages.iter().any(|s| s.on_error == Policy::DeadLetter)
    }
}
