//! The plugin ABI: the root module every stage library exports and the stage object it
//! creates. Everything here is `StableAbi`: `abi_stable` compares the host's and the
//! library's layouts when the library is loaded and refuses a mismatch with an error that
//! names the type, so a plugin built against another SDK is a clear error, never a crash.
//!
//! Stage authors never touch this module: they implement [`crate::Stage`] and call
//! [`crate::export_stage!`], which builds these types for them.
//!
//! Compatibility rule: `StageMod` and `StageObject` are prefix types, so later SDK
//! versions may only append fields/methods (after the `last_prefix_field`). The SDK's own
//! semver (checked by `abi_stable` from `VERSION_STRINGS`) guards everything else: a
//! library built against SDK 0.1.x loads into any host of SDK 0.1.y.

#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::batch::Batch;
use crate::output::Output;

/// What a stage library says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Manifest {
    /// The stage's name; must equal the `plugin` a pipeline names it by.
    pub name: RString,
    /// The stage's own semantic version (its crate's version).
    pub version: RString,
    /// One line: what the stage does.
    pub description: RString,
    /// A stateful stage (dedup, count) sees every record in order, so it runs one worker.
    pub stateful: bool,
    /// The version of `pipe-sdk` the library was built against.
    pub sdk_version: RString,
}

/// How a call into a stage failed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The stage's config did not deserialize or validate.
    Config = 0,
    /// The stage returned an error for a whole batch.
    Failed = 1,
    /// The stage panicked; the instance must not be used again.
    Panicked = 2,
    /// The stage cannot export or import state.
    State = 3,
}

/// An error that crossed the plugin boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct StageError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The message, with the panic location for panics.
    pub message: RString,
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ErrorKind::Panicked => write!(f, "panicked: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StageError {}

/// One instance of a stage, as the host holds it.
///
/// Every method is wrapped in `catch_unwind` by the SDK; a panic comes back as
/// `ErrorKind::Panicked`.
#[sabi_trait]
pub trait StageObject: Send {
    /// Processes one batch into `out` (which the host has cleared). `Err` applies the
    /// stage's error policy to every row of the batch and drops what was written to `out`.
    fn process(&mut self, input: &Batch, out: &mut Output) -> RResult<(), StageError>;

    /// End of stream: write any rows held back (aggregates).
    fn finish(&mut self, out: &mut Output) -> RResult<(), StageError>;

    /// The state to hand to a new version at a hot swap; `RNone` when the stage keeps none.
    fn export_state(&self) -> RResult<ROption<RVec<u8>>, StageError>;

    /// Takes the state exported by the previous version.
    #[sabi(last_prefix_field)]
    fn import_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), StageError>;
}

/// A boxed stage instance that crossed the boundary.
pub type StageBox = StageObject_TO<'static, RBox<()>>;

/// The root module of a stage library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = StageMod_Ref)))]
#[sabi(missing_field(panic))]
pub struct StageMod {
    /// The stage's manifest.
    pub manifest: extern "C" fn() -> Manifest,

    /// Creates one instance from the stage's config, as JSON text.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>) -> RResult<StageBox, StageError>,
}

impl RootModule for StageMod_Ref {
    declare_root_module_statics! {StageMod_Ref}
    const BASE_NAME: &'static str = "stage";
    const NAME: &'static str = "stage";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The SDK version this crate is, as plugins record it in their manifest.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
