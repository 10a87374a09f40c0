//! WASM stages: a `.wasm` module speaking the batch ABI of `pipe_sdk::wasm_abi`, run by
//! wasmtime in a sandbox. As isolated as a process stage (a guest never touches host
//! memory, and has no file, network, clock or environment access), close to a native
//! stage's speed (a batch is copied in and out once), and unlike a native stage it can be
//! stopped: a guest that loops, traps or eats memory costs one batch, not the run.
//!
//! # Layout
//! - this file: `load` (trust and pin checks, compile, import and export checks, the
//!   manifest of a probe instance) and the [`Backend`] that makes instances;
//! - `sandbox`: the engine and its epoch ticker, the limits (`memory_mb`, `timeout_ms`),
//!   the `log`/`panic` imports, one instance's calls and how they fail (`sandbox::Fault`);
//! - `stage`: the runtime's view of an instance (`StageObject`), fault → outcome, and
//!   re-creating an instance after a trap.
//!
//! The codec of the ABI is the SDK's (`pipe_sdk::wasm_abi`), so host and guest share it.
//!
//! A hot swap needs nothing special: the reload coordinator calls [`super::load`] on the
//! changed file, which compiles it (unless bytes with its digest were compiled lately:
//! the same bytes again are no new version) and makes the new instances beside the
//! running ones;
//! a module that does not compile, lacks an export or refuses its config fails there, and
//! the old version runs on. The runtime hands state over at the marker as for any stage.

mod sandbox;
mod stage;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipe_sdk::abi::{StageBox, StageError, StageObject_TO};
use pipe_sdk::wasm_abi;
use serde::Deserialize;
use wasmtime::{ExternType, InstancePre, Module};

use super::{check_manifest, trust, Artifact, Backend, LoadError, Manifest, Plugin};
use crate::config::StageSpec;
use sandbox::{Fault, Host, Limits, Sandboxed};

pub use sandbox::{DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT};

/// The first bytes of every WASM binary module.
const MAGIC: &[u8; 4] = b"\0asm";

/// Whether the file at `path` is a WASM module (by its first bytes, so a module is
/// recognised whatever its name).
///
/// Only a regular file is looked into, and it is opened without blocking: a FIFO renamed
/// over a plugin must not hang the loader (tests/loading_safety.rs); anything else is left
/// to the library backend, whose verified open refuses it with a message.
pub fn is_wasm(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 4];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            // A regular file still, now that it is open (it may have been replaced).
            if f.metadata()?.is_file() {
                (&f).read_exact(&mut head)
            } else {
                Err(std::io::ErrorKind::InvalidInput.into())
            }
        })
        .is_ok()
        && &head == MAGIC
}

/// A compiled module, ready to be instantiated under a stage's limits.
pub struct Compiled {
    module: Module,
    pre: InstancePre<Host>,
    stage: String,
    limits: Limits,
}

impl Compiled {
    fn start(&self) -> Result<Sandboxed, Fault> {
        Sandboxed::start(&self.pre, &self.module, &self.stage, self.limits)
    }
}

/// The backend of a loaded WASM stage.
struct Wasm(Arc<Compiled>);

impl Backend for Wasm {
    fn instantiate(&self, config_json: &str) -> Result<StageBox, StageError> {
        let stage = stage::WasmStage::new(self.0.clone(), config_json)?;
        Ok(StageObject_TO::from_value(
            stage,
            abi_stable::sabi_trait::TD_Opaque,
        ))
    }

    /// The sandbox enforces `timeout_ms` itself and the run goes on; the watchdog, which
    /// ends the run, must not race it.
    fn watchdog_timeout(&self, _timeout: Option<Duration>) -> Option<Duration> {
        None
    }
}

/// `pipe_manifest`'s JSON.
#[derive(Deserialize)]
struct WasmManifest {
    abi: u32,
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    stateful: bool,
    sdk_version: String,
}

/// Loads the module at `path` as stage `plugin` of `spec`: trust and pin checks, compile,
/// import and export checks, then a probe instance (under the stage's limits) for the
/// manifest.
pub(crate) fn load(plugin: &str, path: &Path, spec: &StageSpec) -> Result<Plugin, LoadError> {
    let bytes = trust::open_verified(path)?.bytes;
    let digest = trust::sha256_hex(&bytes);
    let pinned = trust::check_pin(path, &digest, spec.sha256.as_deref())?;
    let bad = |message: String| LoadError::Library {
        path: path.to_path_buf(),
        message,
    };
    let engine = sandbox::engine().map_err(&bad)?;
    let module = match compiled_before(&digest) {
        Some(module) => module,
        None => {
            let module = Module::new(engine, &bytes).map_err(|e| {
                bad(format!(
                    "not a WASM module pipe can run: {}; rebuild it with `cargo build \
                     --target wasm32-unknown-unknown --release`",
                    e.root_cause()
                ))
            })?;
            remember(&digest, &module);
            module
        }
    };
    check_shape(&module).map_err(&bad)?;
    let pre = sandbox::linker(engine)
        .and_then(|l| l.instantiate_pre(&module).map_err(|e| e.to_string()))
        .map_err(&bad)?;
    let compiled = Arc::new(Compiled {
        module,
        pre,
        stage: spec.name.clone(),
        limits: Limits::new(spec.memory_mb, spec.timeout),
    });
    let text = compiled
        .start()
        .and_then(|mut probe| probe.manifest())
        .map_err(|f| bad(format!("its manifest could not be read: {f}")))?;
    let m: WasmManifest = serde_json::from_str(&text)
        .map_err(|e| bad(format!("its manifest is not the ABI's JSON: {e}")))?;
    if m.abi != wasm_abi::ABI_VERSION {
        return Err(bad(format!(
            "speaks WASM batch ABI version {}, but this pipe speaks version {}; rebuild it \
             against the current pipe-sdk",
            m.abi,
            wasm_abi::ABI_VERSION
        )));
    }
    let manifest = Manifest {
        name: m.name,
        version: m.version,
        description: m.description,
        stateful: m.stateful,
        sdk_version: m.sdk_version,
    };
    check_manifest(path, plugin, &manifest, Artifact::Module)?;
    Ok(Plugin::new(
        path.to_path_buf(),
        manifest,
        pinned,
        Arc::new(Wasm(compiled)),
    )
    .with_digest(digest))
}

/// How many compiled modules are kept by digest. A compile is most of a WASM load
/// (100–200 ms for `compute.wasm`), and a file rewritten with the same bytes, or a swap
/// back to the previous version, needs none; a few modules' code is a few MB at most.
const COMPILED_KEPT: usize = 4;

static COMPILED: Mutex<Vec<(String, Module)>> = Mutex::new(Vec::new());

/// The module compiled before from bytes with this digest, if still kept.
fn compiled_before(digest: &str) -> Option<Module> {
    let kept = COMPILED.lock().ok()?;
    kept.iter()
        .find(|(d, _)| d == digest)
        .map(|(_, m)| m.clone())
}

/// Keeps `module` for its digest, forgetting the oldest beyond [`COMPILED_KEPT`].
fn remember(digest: &str, module: &Module) {
    if let Ok(mut kept) = COMPILED.lock() {
        kept.push((digest.to_string(), module.clone()));
        let extra = kept.len().saturating_sub(COMPILED_KEPT);
        kept.drain(..extra);
    }
}

/// Checks the module imports only what the host provides and exports the whole ABI,
/// before anything runs, so the message names what is wrong.
fn check_shape(module: &Module) -> Result<(), String> {
    for import in module.imports() {
        let known = import.module() == wasm_abi::IMPORT_MODULE
            && matches!(import.name(), "log" | "panic")
            && matches!(import.ty(), ExternType::Func(_));
        if !known {
            return Err(format!(
                "imports `{}.{}`, but a WASM stage gets only `pipe.log` and `pipe.panic`: no \
                 WASI, so no files, network, clock or environment; build it for \
                 wasm32-unknown-unknown, not wasm32-wasip1",
                import.module(),
                import.name()
            ));
        }
    }
    for name in sandbox::REQUIRED_EXPORTS {
        if module.get_export(name).is_none() {
            return Err(format!(
                "not a pipe stage: the module does not export `{name}` (was it built with \
                 pipe_sdk::export_stage!? the README's \"WASM stages\" lists the ABI)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
