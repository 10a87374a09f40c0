//! `pipelines.toml`: the file format (DESIGN §10), its validation, and the resolved
//! [`PipelinePlan`] a run is built from.
//!
//! Parsing is two-phase, like ripgrep's flags: serde turns the TOML into `*Config`
//! structs (unknown keys are errors with line and column), then [`PipelinesConfig::plan`]
//! checks what serde cannot (unique stage names, a `plugin` xor a `command`, worker
//! counts) and resolves paths relative to the config file.

pub mod bounds;
mod options;
mod plan;
pub mod stream;

pub use bounds::Whole;

pub use options::{PlanError, RunOptions, RunPlan};
pub use plan::{PipelinePlan, Policy, StageKind, StageSpec};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelinesConfig {
    /// Settings shared by every pipeline.
    #[serde(default)]
    pub settings: SettingsConfig,
    /// The pipelines by name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// `[settings]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SettingsConfig {
    /// Where plugins are looked for after a stage's own `path`; relative to the config
    /// file.
    pub plugin_dir: Option<PathBuf>,
    /// Records per batch (default 1024).
    pub batch_size: Option<Whole>,
    /// Batches each inter-stage channel holds (default 4).
    pub channel_capacity: Option<Whole>,
    /// Watch plugins and this file for changes while running (default true).
    pub watch: Option<bool>,
    /// How long a changed file must stay quiet before it is reloaded, in ms (default 300).
    pub debounce_ms: Option<Whole>,
    /// Longest record read, in bytes (default 64 MiB); a longer one is bad input.
    pub max_record_bytes: Option<Whole>,
    /// Serve `/metrics`, `/health` and `/stages` on this address while running (like
    /// `pipe run --listen`, which wins).
    pub listen: Option<String>,
}

/// `[pipelines.NAME]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// One line for `pipe check` and `--help` listings.
    pub description: Option<String>,
    /// Input format when neither a flag nor a file extension says; or a JetStream
    /// stream to read (`jetstream::config`).
    pub input: Option<crate::config::stream::InputKey>,
    /// Output format when neither a flag nor `-o`'s extension says; or a JetStream
    /// stream to write.
    pub output: Option<crate::config::stream::OutputKey>,
    /// Dead-letter file (relative to the working directory).
    pub dead_letter: Option<PathBuf>,
    /// Policy for records the source cannot read.
    pub on_bad_input: Option<Policy>,
    /// The stages, in order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// One `[[pipelines.NAME.stages]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The plugin's name: `lib<plugin>.so` is looked for.
    pub plugin: Option<String>,
    /// A process stage: the program and its arguments.
    pub command: Option<Vec<String>>,
    /// Unique name in the pipeline; defaults to the plugin's.
    pub name: Option<String>,
    /// A directory (or the file itself) to look in first; relative to the config file.
    pub path: Option<PathBuf>,
    /// Worker threads (default 1; stateful stages always run 1).
    pub workers: Option<Whole>,
    /// What to do with a row the stage rejects or fails on (default fail).
    pub on_error: Option<Policy>,
    /// Longest time one batch may take, in ms (default: no limit; 10 s for a WASM stage).
    pub timeout_ms: Option<Whole>,
    /// A WASM stage's memory cap per instance, in MiB (default 128; other kinds ignore it).
    pub memory_mb: Option<Whole>,
    /// Expected SHA-256 of the plugin file, hex; checked at every load.
    pub sha256: Option<String>,
    /// The stage's own config, handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// A config that cannot be used: what and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}{}", read_hint(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// The content is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (pipeline, stage).
        message: String,
    },
}

/// What to do about a config file that cannot be read.
fn read_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        "; name one with -c FILE or $PIPE_CONFIG, or run pipe where its pipelines.toml is"
    } else {
        ""
    }
}

/// Where the config is: `-c`, else `$PIPE_CONFIG`, else `./pipelines.toml`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("PIPE_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("pipelines.toml"),
    }
}

impl PipelinesConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PipelinesConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PipelinesConfig::parse(path, &text)
    }

    /// Parses config text; `path` is for messages.
    pub fn parse(path: &Path, text: &str) -> Result<PipelinesConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_message(&e, text),
        })
    }

    /// The pipeline to run: `name`, else `default`, else the only one.
    pub fn select(&self, path: &Path, name: Option<&str>) -> Result<String, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let names = || {
            self.pipelines
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) if self.pipelines.contains_key(n) => Ok(n.to_string()),
            Some(n) => Err(invalid(format!(
                "no pipeline `{n}`; the file defines: {}",
                if self.pipelines.is_empty() {
                    "none".to_string()
                } else {
                    names()
                }
            ))),
            None if self.pipelines.contains_key("default") => Ok("default".into()),
            None if self.pipelines.len() == 1 => {
                Ok(self.pipelines.keys().next().cloned().unwrap_or_default())
            }
            None if self.pipelines.is_empty() => Err(invalid(
                "defines no pipelines: add a [pipelines.default] table".into(),
            )),
            None => Err(invalid(format!(
                "no `default` pipeline; name one of: {}",
                names()
            ))),
        }
    }

    /// Resolves pipeline `name` (which must exist) into a plan.
    pub fn plan(&self, path: &Path, name: &str) -> Result<PipelinePlan, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let p = self
            .pipelines
            .get(name)
            .ok_or_else(|| invalid(format!("no pipeline `{name}`")))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let s = &self.settings;
        let batch_size = bounds::check(
            "settings.batch_size",
            s.batch_size.map_or(1024, |w| w.0),
            bounds::BATCH_SIZE,
        )
        .map_err(invalid)? as usize;
        let channel_capacity = bounds::check(
            "settings.channel_capacity",
            s.channel_capacity.map_or(4, |w| w.0),
            bounds::CHANNEL_CAPACITY,
        )
        .map_err(invalid)? as usize;
        let max_record_bytes = bounds::check(
            "settings.max_record_bytes",
            s.max_record_bytes
                .map_or(pipe_sdk::codec::DEFAULT_MAX_RECORD_BYTES as i64, |w| w.0),
            bounds::MAX_RECORD_BYTES,
        )
        .map_err(invalid)? as usize;
        let debounce_ms = bounds::check(
            "settings.debounce_ms",
            s.debounce_ms.map_or(300, |w| w.0),
            bounds::DEBOUNCE_MS,
        )
        .map_err(invalid)?;
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf));
        let mut stages = Vec::with_capacity(p.stages.len());
        for (i, st) in p.stages.iter().enumerate() {
            let at = |what: String| invalid(format!("pipelines.{name}.stages[{i}]: {what}"));
            let kind = match (&st.plugin, &st.command) {
                (Some(plugin), None) => {
                    if plugin.is_empty() || plugin.contains(['/', '\\']) {
                        return Err(at(format!(
                            "plugin `{plugin}` must be a bare name like `filter`; put the \
                             directory in `path`"
                        )));
                    }
                    let mut search = Vec::new();
                    if let Some(dir) = &st.path {
                        search.push(base.join(dir));
                    }
                    if let Some(dir) = &s.plugin_dir {
                        search.push(base.join(dir));
                    }
                    if let Some(dir) = &exe_dir {
                        search.push(dir.clone());
                    }
                    StageKind::Plugin {
                        plugin: plugin.clone(),
                        search,
                    }
                }
                (None, Some(argv)) if !argv.is_empty() => StageKind::Command {
                    argv: resolve_command(&base, argv),
                },
                (None, Some(_)) => return Err(at("`command` is empty".into())),
                (Some(_), Some(_)) => {
                    return Err(at("give either `plugin` or `command`, not both".into()))
                }
                (None, None) => {
                    return Err(at("needs `plugin = \"NAME\"` (or `command = [...]`)".into()))
                }
            };
            let stage_name = st.name.clone().unwrap_or_else(|| match &kind {
                StageKind::Plugin { plugin, .. } => plugin.clone(),
                StageKind::Command { argv } => Path::new(&argv[argv.len().min(2) - 1])
                    .file_stem()
                    .map_or_else(|| format!("stage{i}"), |s| s.to_string_lossy().into_owned()),
            });
            if stages.iter().any(|x: &StageSpec| x.name == stage_name) {
                return Err(at(format!(
                    "stage name `{stage_name}` is used twice; give one a `name = \"...\"`"
                )));
            }
            let workers = bounds::check("workers", st.workers.map_or(1, |w| w.0), bounds::WORKERS)
                .map_err(at)? as usize;
            let timeout_ms = match st.timeout_ms {
                Some(t) => Some(bounds::check("timeout_ms", t.0, bounds::TIMEOUT_MS).map_err(at)?),
                None => None,
            };
            let memory_mb = match st.memory_mb {
                Some(m) => Some(bounds::check("memory_mb", m.0, bounds::MEMORY_MB).map_err(at)?),
                None => None,
            };
            let sha256 = match &st.sha256 {
                Some(h) => {
                    let h = h.trim().to_ascii_lowercase();
                    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(at("sha256 must be 64 hex digits".into()));
                    }
                    Some(h)
                }
                None => None,
            };
            let config_json = serde_json::to_string(&st.config)
                .map_err(|e| at(format!("config cannot be passed on as JSON: {e}")))?;
            stages.push(StageSpec {
                name: stage_name,
                kind,
                workers,
                on_error: st.on_error.unwrap_or_default(),
                timeout: timeout_ms.map(Duration::from_millis),
                memory_mb,
                sha256,
                config_json,
            });
        }
        Ok(PipelinePlan {
            name: name.to_string(),
            description: p.description.clone(),
            config_path: path.to_path_buf(),
            input: p.input.as_ref().and_then(|i| i.format()),
            output: p.output.as_ref().and_then(|o| o.format()),
            jetstream: crate::config::stream::Endpoints::resolve(
                name,
                &base,
                p.input.as_ref(),
                p.output.as_ref(),
            )
            .map_err(invalid)?,
            dead_letter: p.dead_letter.clone(),
            on_bad_input: p.on_bad_input.unwrap_or_default(),
            batch_size,
            channel_capacity,
            max_record_bytes,
            watch: s.watch.unwrap_or(true),
            listen: s.listen.clone(),
            debounce: Duration::from_millis(debounce_ms),
            stages,
        })
    }
}

/// A process stage's `command`, with every relative path that names a file in the config
/// file's directory taken from there (`["python3", "geo.py"]` next to `pipelines.toml`
/// runs that `geo.py` whatever the working directory). Anything else is kept as written:
/// a bare program name is looked up on `PATH` when the stage starts.
fn resolve_command(base: &Path, argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|a| {
            let p = Path::new(a);
            let local = base.join(p);
            if p.is_relative() && !a.is_empty() && local.is_file() {
                local.to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .collect()
}

/// toml's error as one or two lines: "line 12, column 3: unknown field `wokers`, expected
/// one of ...".
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let upto = &text[..span.start.min(text.len())];
            let line = upto.matches('\n').count() + 1;
            let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<PipelinePlan, ConfigError> {
        let path = Path::new("conf/pipelines.toml");
        let c = PipelinesConfig::parse(path, text)?;
        let name = c.select(path, None)?;
        c.plan(path, &name)
    }

    /// Regression (issue 12): these aborted or panicked the run instead of being refused.
    #[test]
    fn numbers_out_of_bounds_are_refused_with_the_key_and_the_range() {
        let cases = [
            ("[settings]\nchannel_capacity = 1e12", "expected a whole number"),
            (
                "[settings]\nchannel_capacity = 9223372036854775807",
                "settings.channel_capacity must be a whole number from 1 to 1024, not 9223372036854775807",
            ),
            (
                "[settings]\nbatch_size = 0",
                "settings.batch_size must be a whole number from 1 to 1048576, not 0",
            ),
            (
                "[settings]\ndebounce_ms = -1",
                "settings.debounce_ms must be a whole number from 0 to 3600000, not -1",
            ),
            (
                "[pipelines.default.stages]]\nplugin = \"a\"\nworkers = 100000",
                "workers must be a whole number from 1 to 256, not 100000",
            ),
            (
                "[pipelines.default.stages]]\nplugin = \"a\"\ntimeout_ms = 0",
                "timeout_ms must be a whole number from 1 to 86400000, not 0",
            ),
        ];
        for (head, want) in cases {
            // Settings go before the pipeline; a stage's keys after its table header.
            let text = match head.strip_prefix("[pipelines.default.stages]]") {
                Some(keys) => format!("[pipelines.default]\n[[pipelines.default.stages]]{keys}\n"),
                None => format!("{head}\n[pipelines.default]\n"),
            };
            let e = plan(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("usize") && !e.contains("u64"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_name_line_and_column() {
        let err = plan(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\nwokers = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4, column 1"), "{err}");
        assert!(err.contains("wokers"), "{err}");
    }

    #[test]
    fn stage_defaults_and_paths_resolve_against_the_config_dir() {
        let p = plan(
            "[settings]\nplugin_dir = \"plugins\"\n[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\npath = \"mine\"\nconfig = { where = \"a > 1\", z = 1, b = 2 }\n",
        )
        .unwrap();
        let s = &p.stages[0];
        assert_eq!(s.name, "filter");
        assert_eq!(s.workers, 1);
        assert_eq!(s.on_error, Policy::Fail);
        match &s.kind {
            StageKind::Plugin { search, .. } => {
                assert_eq!(search[0], Path::new("conf/mine"));
                assert_eq!(search[1], Path::new("conf/plugins"));
            }
            other => panic!("{other:?}"),
        }
        // Key order is kept: compute applies `set` in the order written.
        assert_eq!(s.config_json, r#"{"where":"a > 1","z":1,"b":2}"#);
    }

    #[test]
    fn duplicate_names_and_missing_plugin_are_errors() {
        let dup = plan("[pipelines.x]\n[[pipelines.x.stages]]\nplugin = \"a\"\n[[pipelines.x.stages]]\nplugin = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(dup.contains("used twice"), "{dup}");
        let none = plan("[pipelines.x]\n[[pipelines.x.stages]]\nname = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("pipelines.x.stages[0]: needs `plugin"),
            "{none}"
        );
    }

    #[test]
    fn command_paths_resolve_against_the_config_dir_when_the_file_is_there() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("geo.py"), "").unwrap();
        let path = dir.path().join("pipelines.toml");
        let c = PipelinesConfig::parse(
            &path,
            "[pipelines.x]\n[[pipelines.x.stages]]\ncommand = [\"python3\", \"geo.py\", \"-v\"]\n",
        )
        .unwrap();
        let p = c.plan(&path, "x").unwrap();
        let StageKind::Command { argv } = &p.stages[0].kind else {
            panic!("{:?}", p.stages[0].kind)
        };
        assert_eq!(
            argv[0], "python3",
            "programs not beside the config come from PATH"
        );
        assert_eq!(Path::new(&argv[1]), dir.path().join("geo.py"));
        assert_eq!(argv[2], "-v");
        assert_eq!(p.stages[0].name, "geo");
    }

    #[test]
    fn pipeline_selection() {
        let path = Path::new("p.toml");
        let c = PipelinesConfig::parse(path, "[pipelines.a]\n[pipelines.b]\n").unwrap();
        assert!(c
            .select(path, None)
            .unwrap_err()
            .to_string()
            .contains("a, b"));
        assert_eq!(c.select(path, Some("b")).unwrap(), "b");
        assert!(c.select(path, Some("zz")).is_err());
        let one = PipelinesConfig::parse(path, "[pipelines.only]\n").unwrap();
        assert_eq!(one.select(path, None).unwrap(), "only");
    }
}
