//! The plugin layer (DESIGN §5): one [`Plugin`] type and one way to get one, [`load`],
//! whatever runs the stage's code.
//!
//! # Layout
//! - this file: [`Plugin`], [`Manifest`], [`LoadError`], [`load`] (find the file, dispatch
//!   to a backend) and the [`Backend`] trait every backend implements;
//! - `trust`: the ownership, mode and `sha256` pin checks, once for every backend;
//! - `library`: native `cdylib` plugins through abi_stable (structure check, probe
//!   process, in-memory copy, mapping);
//! - `process`: process stages, children speaking JSON lines;
//! - `wasm`: WASM modules run by wasmtime in a sandbox, speaking the SDK's batch ABI.
//!
//! The runtime only sees [`Plugin`]: it asks it for instances ([`Plugin::instantiate`]),
//! for the watchdog limit ([`Plugin::watchdog_timeout`]) and whether the backend gave up
//! ([`Plugin::gave_up`]). A backend is an `Arc<dyn Backend>` inside the plugin, so a new
//! kind of stage (WASM) is one more folder here and one more arm in [`load`], and nothing
//! outside this folder changes.

pub mod library;
pub mod process;
mod trust;
pub mod wasm;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pipe_sdk::abi::{ErrorKind, StageBox, StageError};

use crate::config::{StageKind, StageSpec};

pub use library::probe::main as probe_main;
pub use library::{cleanup, libraries_mapped};
pub use trust::file_sha256;

/// What a plugin says about itself (host-side copy of the ABI manifest, or of a process
/// stage's handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The stage name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// One line.
    pub description: String,
    /// Needs one worker and ordered input.
    pub stateful: bool,
    /// The SDK version it was built with (or the process protocol it speaks).
    pub sdk_version: String,
}

/// What a backend does for a loaded plugin: make instances, and tell the runtime how to
/// watch them. Implementations live in the sub-modules (`library`, `process`).
pub trait Backend: Send + Sync {
    /// Creates one instance with `config_json`. An `Err` of kind `Panicked` is reported
    /// as a bug in the plugin, any other kind as the stage refusing its config.
    fn instantiate(&self, config_json: &str) -> Result<StageBox, StageError>;

    /// The per-batch limit the runtime's watchdog (which ends the run) enforces for the
    /// instances, given the stage's `timeout_ms`. `None` when the backend enforces the
    /// limit itself and recovers from it. Default: the stage's limit.
    fn watchdog_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        timeout
    }

    /// Why the instances must not run on, once the backend gave up on them. Default:
    /// never.
    fn gave_up(&self) -> Option<&str> {
        None
    }
}

/// A loaded, checked plugin: a factory of stage instances.
#[derive(Clone)]
pub struct Plugin {
    /// The file it was loaded from (not a private copy): the library, or a process
    /// stage's program file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the loaded bytes, hex, when the stage pins one (checked equal).
    pub sha256: Option<String>,
    /// SHA-256 of the loaded bytes, hex, pinned or not, when the backend read them: the
    /// identity of this version ([`Plugin::same_version`]).
    digest: Option<String>,
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// Why a plugin could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not found anywhere on the search path.
    #[error(
        "plugin `{plugin}` not found; looked for {names} in: {places}; build it, or point \
         the stage's `path` or settings.plugin_dir at its directory"
    )]
    NotFound {
        /// The plugin name.
        plugin: String,
        /// File names tried.
        names: String,
        /// Directories tried.
        places: String,
    },
    /// The file could not be read or copied.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The path names something other than a regular file.
    #[error("{path}: refusing to load: it is {what}, not a plugin file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is: "a directory", "a FIFO (named pipe)".
        what: &'static str,
    },
    /// A process stage's program could not be found or started.
    #[error("{path}: {message}")]
    Program {
        /// The program.
        path: PathBuf,
        /// What failed, and what to do.
        message: String,
    },
    /// The probe process saw the library misbehave (crash, exit, hang, stray I/O).
    #[error("{path}: refusing to load: {message}")]
    Probe {
        /// The file.
        path: PathBuf,
        /// What the library did, and when.
        message: String,
    },
    /// The file or its directory is writable by others, or owned by someone else.
    #[error("{path}: refusing to load: {message}")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Why, and how to fix it.
        message: String,
    },
    /// The sha256 pin did not match.
    #[error("{path}: sha256 is {actual}, but the stage pins {expected}; refusing to load")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// Not a loadable library, no root module, or an ABI/layout/version mismatch.
    #[error("{path}: {message}")]
    Library {
        /// The file.
        path: PathBuf,
        /// abi_stable's diagnosis, shortened.
        message: String,
    },
    /// The manifest does not fit the stage.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What did not match.
        message: String,
    },
    /// `new(config)` failed or panicked.
    #[error("{path}: stage `{plugin}` {message}")]
    Instance {
        /// The file.
        path: PathBuf,
        /// The plugin name.
        plugin: String,
        /// What went wrong: `refused its config: ...` or `panicked while starting: ...`.
        message: String,
    },
}

/// The file names a plugin may have on this platform: `libNAME.so`, then `NAME.so`, then
/// the WASM module `NAME.wasm`.
pub fn file_names(plugin: &str) -> Vec<String> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let mut v = vec![format!("{DLL_PREFIX}{plugin}{DLL_SUFFIX}")];
    if !DLL_PREFIX.is_empty() {
        v.push(format!("{plugin}{DLL_SUFFIX}"));
    }
    v.push(format!("{plugin}.wasm"));
    v
}

/// Finds plugin `plugin` in `search` (each a directory, or the file itself).
pub fn find(plugin: &str, search: &[PathBuf]) -> Result<PathBuf, LoadError> {
    let names = file_names(plugin);
    // Anything by that name is the plugin, not only a regular file: a directory or a
    // FIFO there is reported as what it is by the checks, not as "not found".
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    for place in search {
        if exists(place) && !place.is_dir() {
            return Ok(place.clone());
        }
        for n in &names {
            let p = place.join(n);
            if exists(&p) {
                return Ok(p);
            }
        }
    }
    Err(LoadError::NotFound {
        plugin: plugin.to_string(),
        names: names.join(" or "),
        places: if search.is_empty() {
            "(no directories)".into()
        } else {
            search
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Loads `spec`'s stage: finds its file, checks it and hands it to the backend its kind
/// names. The one way a plugin is loaded: at start-up, at a hot swap, in `pipe stages`.
pub fn load(spec: &StageSpec) -> Result<Plugin, LoadError> {
    match &spec.kind {
        StageKind::Plugin { plugin, search } => {
            let path = find(plugin, search)?;
            if wasm::is_wasm(&path) {
                wasm::load(plugin, &path, spec)
            } else {
                library::load(plugin, &path, spec.sha256.as_deref(), &spec.config_json)
            }
        }
        StageKind::Command { .. } => process::load(spec),
    }
}

/// The spec of stage `plugin` loaded from the file `path` with no config and no pin, for
/// `pipe stages`, which lists every plugin it finds.
pub fn file_spec(plugin: &str, path: &Path) -> StageSpec {
    StageSpec {
        name: plugin.to_string(),
        kind: StageKind::Plugin {
            plugin: plugin.to_string(),
            search: vec![path.to_path_buf()],
        },
        workers: 1,
        on_error: Default::default(),
        timeout: None,
        memory_mb: None,
        sha256: None,
        config_json: "{}".into(),
    }
}

impl Plugin {
    /// A plugin served by `backend` (for the backends' `load`).
    pub(crate) fn new(
        path: PathBuf,
        manifest: Manifest,
        sha256: Option<String>,
        backend: Arc<dyn Backend>,
    ) -> Plugin {
        Plugin {
            path,
            manifest,
            sha256,
            digest: None,
            backend,
        }
    }

    /// The same plugin, known by the digest of its bytes.
    pub(crate) fn with_digest(mut self, digest: String) -> Plugin {
        self.digest = Some(digest);
        self
    }

    /// Whether `other` was loaded from the same bytes as this plugin: then it is not a
    /// new version, and a reload of it (a file rewritten with what it held, a `touch`)
    /// changes nothing. False when either has no digest (a program found on `PATH`).
    pub fn same_version(&self, other: &Plugin) -> bool {
        self.digest.is_some() && self.digest == other.digest
    }

    /// Creates one instance with `config_json`. `Err` when the stage refuses its config
    /// or panics while starting (the message tells which), or when the backend cannot
    /// start one (a process stage that gave up).
    pub fn instantiate(&self, config_json: &str) -> Result<StageBox, LoadError> {
        self.backend
            .instantiate(config_json)
            .map_err(|e| LoadError::Instance {
                path: self.path.clone(),
                plugin: self.manifest.name.clone(),
                // A panic is not the config's fault: saying "refused its config" would
                // send the user looking for a typo (faults.rs:
                // a_panic_in_new_is_a_start_error).
                message: if e.kind == ErrorKind::Panicked {
                    format!(
                        "panicked while starting: {}; this is a bug in the plugin",
                        e.message
                    )
                } else {
                    format!("refused its config: {e}")
                },
            })
    }

    /// The per-batch limit the runtime's watchdog enforces for this plugin's instances,
    /// given the stage's `timeout_ms`: that limit, or `None` when the backend enforces
    /// it itself (a process stage kills the hung child and applies the stage's policy to
    /// the batch; the watchdog, which ends the run, would race with it).
    pub fn watchdog_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        self.backend.watchdog_timeout(timeout)
    }

    /// Why this plugin's instances must not run on: set once the backend gave up on
    /// them (a process stage whose children failed too many times in a row). The
    /// runtime then stops the run with this message.
    pub fn gave_up(&self) -> Option<&str> {
        self.backend.gave_up()
    }
}

/// What a compiled stage is, for messages: a native library or a WASM module.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Artifact {
    /// A `cdylib`.
    Library,
    /// A `.wasm` module.
    Module,
}

/// The manifest must name stage `plugin` and an SDK of this host's major and minor (one
/// rule for every compiled backend).
pub(crate) fn check_manifest(
    path: &Path,
    plugin: &str,
    manifest: &Manifest,
    artifact: Artifact,
) -> Result<(), LoadError> {
    let bad = |message: String| LoadError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let (this, rebuild) = match artifact {
        Artifact::Library => ("library", "plugin"),
        Artifact::Module => ("module", "module"),
    };
    let sdk = pipe_sdk::host::SDK_VERSION;
    if major_minor(&manifest.sdk_version) != major_minor(sdk) {
        return Err(bad(format!(
            "built against pipe-sdk {}, but this pipe needs pipe-sdk {}.x; rebuild the \
             {rebuild} against the current SDK",
            manifest.sdk_version,
            sdk.rsplit_once('.').map_or(sdk, |(a, _)| a)
        )));
    }
    if manifest.name != plugin {
        return Err(bad(format!(
            "this {this} is stage `{}`, not `{plugin}`; fix `plugin` in the config or the \
             file name",
            manifest.name
        )));
    }
    Ok(())
}

/// Reads `v`'s major and minor version ("0.1.3" -> (0, 1)).
fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_lists_every_place() {
        let e = find("nope", &[PathBuf::from("/a"), PathBuf::from("/b")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("libnope.so or nope.so"), "{e}");
        assert!(e.contains("/a, /b"), "{e}");
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("0.1.3"), Some((0, 1)));
        assert_eq!(major_minor("x"), None);
    }
}
