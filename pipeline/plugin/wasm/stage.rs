//! [`WasmStage`]: one WASM instance as the runtime sees any stage instance, a
//! [`StageObject`]. It turns guest replies and faults into the runtime's outcomes:
//!
//! - the guest's own error, or a reply that breaks the ABI: `ErrorKind::Failed`, the
//!   batch goes to the stage's `on_error`, the instance goes on;
//! - a panic: `ErrorKind::Panicked` with the panic's message, as for a native stage (the
//!   runtime counts it and re-creates the instance);
//! - a timeout, an out-of-memory or any other trap: `ErrorKind::Failed` with what
//!   happened, and the instance is replaced by a fresh one before the next call (made
//!   lazily, so the failed batch is reported at once). A stateful stage's state is lost
//!   with the instance, as it is when a native stage panics.

use std::sync::{Arc, Mutex};

use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSlice, RSome, RVec};
use pipe_sdk::abi::{ErrorKind, StageError, StageObject};
use pipe_sdk::{Batch, Output};

use super::sandbox::{Fault, Sandboxed};
use super::Compiled;

/// One instance of a WASM stage.
pub struct WasmStage {
    compiled: Arc<Compiled>,
    config_json: String,
    /// The live instance; `None` after a fault until the next call re-creates it. Behind
    /// a mutex because `export_state` takes `&self` but calls into the guest.
    live: Mutex<Option<Sandboxed>>,
}

fn error(kind: ErrorKind, message: String) -> StageError {
    StageError {
        kind,
        message: message.into(),
    }
}

fn fault_error(f: &Fault) -> StageError {
    match f {
        Fault::Panic(m) => error(ErrorKind::Panicked, m.clone()),
        other => error(ErrorKind::Failed, other.to_string()),
    }
}

impl WasmStage {
    /// A stage instance: instantiates the module and calls `pipe_new(config_json)`.
    /// `Err` (kind `Config`) when the stage refuses its config.
    pub fn new(compiled: Arc<Compiled>, config_json: &str) -> Result<WasmStage, StageError> {
        let live = fresh(&compiled, config_json)?;
        Ok(WasmStage {
            compiled,
            config_json: config_json.to_string(),
            live: Mutex::new(Some(live)),
        })
    }

    /// Runs `call` on the live instance, re-creating it first if a fault dropped it; a
    /// fault that poisons the instance drops it.
    fn with<T>(
        &self,
        call: impl FnOnce(&mut Sandboxed) -> Result<Result<T, String>, Fault>,
        refused: ErrorKind,
    ) -> Result<T, StageError> {
        let mut slot = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(fresh(&self.compiled, &self.config_json).map_err(|e| {
                error(
                    ErrorKind::Failed,
                    format!("could not be re-created after a fault: {}", e.message),
                )
            })?);
        }
        let Some(live) = slot.as_mut() else {
            unreachable!("set just above")
        };
        match call(live) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(error(refused, message)),
            Err(fault) => {
                if fault.poisons() {
                    *slot = None;
                }
                Err(fault_error(&fault))
            }
        }
    }
}

/// A new instance with its stage created from `config_json`.
fn fresh(compiled: &Compiled, config_json: &str) -> Result<Sandboxed, StageError> {
    let mut live = compiled.start().map_err(|f| fault_error(&f))?;
    match live.create(config_json) {
        Ok(Ok(())) => Ok(live),
        Ok(Err(message)) => Err(error(ErrorKind::Config, message)),
        Err(fault) => Err(fault_error(&fault)),
    }
}

fn into_r<T>(r: Result<T, StageError>) -> RResult<T, StageError> {
    match r {
        Ok(v) => ROk(v),
        Err(e) => RErr(e),
    }
}

impl StageObject for WasmStage {
    fn process(&mut self, input: &Batch, out: &mut Output) -> RResult<(), StageError> {
        into_r(self.with(|live| live.process(input, out), ErrorKind::Failed))
    }

    fn finish(&mut self, out: &mut Output) -> RResult<(), StageError> {
        into_r(self.with(|live| live.finish(out), ErrorKind::Failed))
    }

    fn export_state(&self) -> RResult<ROption<RVec<u8>>, StageError> {
        into_r(
            self.with(|live| live.export_state(), ErrorKind::State)
                .map(|s| match s {
                    Some(v) => RSome(RVec::from(v)),
                    None => RNone,
                }),
        )
    }

    fn import_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), StageError> {
        into_r(self.with(|live| live.import_state(state.as_slice()), ErrorKind::State))
    }
}
