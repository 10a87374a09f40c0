//! The [`Stage`] trait stage authors implement, and the glue that turns it into the ABI
//! types of [`crate::abi`]: config parsing with error paths, `catch_unwind` around every
//! call, and [`export_stage!`](crate::export_stage).
//!
//! Why `catch_unwind` here: `abi_stable`'s `extern "C"` shims abort the whole process when
//! a panic unwinds into them, so a panicking stage would take the host down. The adapter
//! catches the panic inside the plugin and returns `ErrorKind::Panicked`; a panic hook
//! installed by the SDK records the panic's message and `file:line` for that error and
//! keeps the default "thread panicked at" text off the user's terminal.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSlice, RSome, RString, RVec};
use serde::de::DeserializeOwned;

use crate::abi::{ErrorKind, StageError, StageObject};
use crate::batch::Batch;
use crate::output::Output;

/// An error a stage returns. Anything that implements `std::error::Error` converts into
/// it with `?`; [`Error::msg`] makes one from text.
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Error {
        Error {
            message: message.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Error {
        Error::msg(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A transform. Implement this, then call [`export_stage!`](crate::export_stage).
///
/// The host creates one instance per worker with [`Stage::new`]; a stage that keeps
/// state across records (declared `stateful` in `export_stage!`) gets one worker and sees
/// every batch in input order.
pub trait Stage: Send + Sized + 'static {
    /// The stage's config: the `config` table of the stage in `pipelines.toml`. Use
    /// `#[serde(deny_unknown_fields)]` so a misspelt key is an error that names it.
    type Config: DeserializeOwned;

    /// Creates an instance. An `Err` refuses the config: at start-up the run stops with the
    /// message; at a hot swap the old version keeps running.
    fn new(config: Self::Config) -> Result<Self, Error>;

    /// Processes one batch: push zero or more rows per input row to `out`, or
    /// [`Output::reject`] rows. Returning `Err` applies the stage's `on_error` policy to
    /// every row of the batch.
    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error>;

    /// Called once at the end of the stream; push any rows held back. The default emits
    /// nothing.
    fn finish(&mut self, _out: &mut Output) -> Result<(), Error> {
        Ok(())
    }

    /// The state to hand to the next version at a hot swap. The default keeps none (the
    /// new version starts fresh).
    fn export_state(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }

    /// Takes the state the previous version exported. The default refuses it.
    fn import_state(&mut self, _state: &[u8]) -> Result<(), Error> {
        Err(Error::msg("this stage does not import state"))
    }
}

/// Parses a stage's JSON config into `C`, with the path of the offending key in the
/// message (`config.set.amount: invalid type: ...`).
pub fn parse_config<C: DeserializeOwned>(json: &str) -> Result<C, Error> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut msg = e.inner().to_string();
        // serde_json appends a position in the JSON text the host made, which means
        // nothing to the user: the path says where.
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        if path == "." || path.is_empty() {
            Error::msg(format!("bad config: {msg}"))
        } else {
            Error::msg(format!("bad config at `{path}`: {msg}"))
        }
    })
}

thread_local! {
    static IN_STAGE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_STAGE.with(|s| s.get()) {
                let msg = panic_text(info.payload());
                let text = match info.location() {
                    Some(l) => format!("{msg} (at {}:{})", l.file(), l.line()),
                    None => msg,
                };
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Runs `f`, turning a panic into `ErrorKind::Panicked` and an `Err` into `kind`.
fn guarded<T>(kind: ErrorKind, f: impl FnOnce() -> Result<T, Error>) -> RResult<T, StageError> {
    install_panic_hook();
    let was = IN_STAGE.with(|s| s.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_STAGE.with(|s| s.set(was));
    match result {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(StageError {
            kind,
            message: RString::from(e.message),
        }),
        Err(payload) => {
            let message = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| panic_text(&*payload));
            RErr(StageError {
                kind: ErrorKind::Panicked,
                message: RString::from(message),
            })
        }
    }
}

/// Wraps a [`Stage`] as a [`StageObject`]. Used by [`export_stage!`](crate::export_stage).
#[doc(hidden)]
pub struct Adapter<S>(pub S);

impl<S: Stage> StageObject for Adapter<S> {
    fn process(&mut self, input: &Batch, out: &mut Output) -> RResult<(), StageError> {
        guarded(ErrorKind::Failed, || self.0.process(input, out))
    }

    fn finish(&mut self, out: &mut Output) -> RResult<(), StageError> {
        guarded(ErrorKind::Failed, || self.0.finish(out))
    }

    fn export_state(&self) -> RResult<ROption<RVec<u8>>, StageError> {
        guarded(ErrorKind::State, || {
            Ok(match self.0.export_state()? {
                Some(v) => RSome(RVec::from(v)),
                None => RNone,
            })
        })
    }

    fn import_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), StageError> {
        guarded(ErrorKind::State, || self.0.import_state(state.as_slice()))
    }
}

/// Creates a boxed instance of `S` from JSON config text. Used by
/// [`export_stage!`](crate::export_stage) and by the in-process test helpers.
pub fn new_instance<S: Stage>(config_json: &str) -> RResult<crate::abi::StageBox, StageError> {
    let config = match parse_config::<S::Config>(config_json) {
        Ok(c) => c,
        Err(e) => {
            return RErr(StageError {
                kind: ErrorKind::Config,
                message: RString::from(e.message),
            })
        }
    };
    guarded(ErrorKind::Config, || S::new(config)).map(|s| {
        crate::abi::StageObject_TO::from_value(Adapter(s), abi_stable::sabi_trait::TD_Opaque)
    })
}

/// Exports a [`Stage`] as the library's root module.
///
/// ```ignore
/// pipe_sdk::export_stage!(Upper, name = "upper", description = "upper-cases fields");
/// pipe_sdk::export_stage!(Dedup, name = "dedup", description = "drops repeats", stateful = true);
/// ```
///
/// The stage's version is its crate's version (`CARGO_PKG_VERSION`) unless
/// `version = "..."` is given (after `stateful`).
#[macro_export]
macro_rules! export_stage {
    (
        $ty:ty,
        name = $name:expr,
        description = $desc:expr
        $(, stateful = $stateful:expr)?
        $(, version = $version:expr)?
        $(,)?
    ) => {
        #[doc(hidden)]
        pub mod __pipe_stage_export {
            use super::*;
            use $crate::__private::abi_stable as abi;

            extern "C" fn manifest() -> $crate::abi::Manifest {
                $crate::abi::Manifest {
                    name: $name.into(),
                    version: {
                        let v: &str = env!("CARGO_PKG_VERSION");
                        $(let v: &str = $version;)?
                        v
                    }
                    .into(),
                    description: $desc.into(),
                    stateful: false $(|| $stateful)?,
                    sdk_version: $crate::abi::SDK_VERSION.into(),
                }
            }

            extern "C" fn new(
                config: abi::std_types::RStr<'_>,
            ) -> abi::std_types::RResult<$crate::abi::StageBox, $crate::abi::StageError> {
                $crate::__private::new_instance::<$ty>(config.as_str())
            }

            /// The root module, as `abi_stable` loads it.
            pub fn root_module() -> $crate::abi::StageMod_Ref {
                use abi::prefix_type::PrefixTypeTrait;
                $crate::abi::StageMod { manifest, new }.leak_into_prefix()
            }

            /// The manifest, for in-process use (tests).
            pub fn stage_manifest() -> $crate::abi::Manifest {
                manifest()
            }

            // What `#[abi_stable::export_root_module]` expands to, written out so that
            // plugin crates need no direct dependency on abi_stable. The symbol name is
            // checked against abi_stable's own in the SDK's tests.
            #[no_mangle]
            pub static _1as_0lib_1header_0root_bmodule_bloader: abi::library::LibHeader = {
                pub extern "C" fn erased() -> abi::library::RootModuleResult {
                    abi::library::__call_root_module_loader(root_module)
                }
                // SAFETY: `from_constructor` requires that `erased` builds the root module
                // of the type it is instantiated with: it does (`root_module` returns a
                // `StageMod_Ref`), and `CheckTypeLayout::Yes` makes abi_stable compare the
                // layouts at load time, so a mismatched host refuses the library instead of
                // misreading it. This is exactly what `#[export_root_module]` generates.
                unsafe {
                    abi::library::LibHeader::from_constructor::<$crate::abi::StageMod_Ref>(
                        erased,
                        abi::library::CheckTypeLayout::Yes,
                    )
                }
            };
        }
    };
}
