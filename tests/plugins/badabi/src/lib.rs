//! Test plugin `badabi`: a library the host must refuse to load, with a clear error.
//!
//! - Default build: exports a root module under the same `abi_stable` symbol and the same
//!   root-module name (`stage`) as every stage, but whose type has a different layout from
//!   [`pipe_sdk::abi::StageMod`]. Loading it as `StageMod_Ref` fails `abi_stable`'s layout
//!   check (`LibraryError::AbiInstability`). The version strings are the SDK's own, so it
//!   is the layout check, not the version check, that refuses it.
//! - Feature `old_sdk`: exports the real `StageMod` (so the layout check passes), whose
//!   manifest says `name = "badabi"`, `sdk_version = "0.0.1"`: the host's own SDK-version
//!   check must refuse it. Its `new` always fails, in case a host forgets that check.
//!
//! Both builds write the same `libbadabi.so`: copy one away before building the other.

#![allow(non_camel_case_types, non_local_definitions)]

#[cfg(not(feature = "old_sdk"))]
mod root {
    use abi_stable::{
        declare_root_module_statics, export_root_module, library::RootModule,
        prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RString, StableAbi,
    };

    /// Shaped like no version of `StageMod`: other field types, other signatures.
    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = BadMod_Ref)))]
    #[sabi(missing_field(panic))]
    pub struct BadMod {
        /// Not a `Manifest`: a bare string.
        pub manifest: extern "C" fn() -> RString,
        /// Not `new(config) -> RResult<StageBox, StageError>`.
        #[sabi(last_prefix_field)]
        pub new: extern "C" fn(u64) -> u64,
    }

    impl RootModule for BadMod_Ref {
        declare_root_module_statics! {BadMod_Ref}
        const BASE_NAME: &'static str = "stage";
        const NAME: &'static str = "stage";
        const VERSION_STRINGS: VersionStrings =
            <pipe_sdk::abi::StageMod_Ref as RootModule>::VERSION_STRINGS;
    }

    extern "C" fn manifest() -> RString {
        RString::from("badabi")
    }

    extern "C" fn new(x: u64) -> u64 {
        x
    }

    /// The root module `abi_stable` loads.
    #[export_root_module]
    pub fn root_module() -> BadMod_Ref {
        BadMod { manifest, new }.leak_into_prefix()
    }
}

#[cfg(feature = "old_sdk")]
mod root {
    use abi_stable::{
        export_root_module,
        prefix_type::PrefixTypeTrait,
        std_types::{RErr, RResult, RStr, RString},
    };
    use pipe_sdk::abi::{ErrorKind, Manifest, StageBox, StageError, StageMod, StageMod_Ref};

    /// The SDK version this library claims to be built against.
    pub const CLAIMED_SDK_VERSION: &str = "0.0.1";

    extern "C" fn manifest() -> Manifest {
        Manifest {
            name: RString::from("badabi"),
            version: RString::from(env!("CARGO_PKG_VERSION")),
            description: RString::from("claims an SDK that is too old (test plugin)"),
            stateful: false,
            sdk_version: RString::from(CLAIMED_SDK_VERSION),
        }
    }

    extern "C" fn new(_config: RStr<'_>) -> RResult<StageBox, StageError> {
        RErr(StageError {
            kind: ErrorKind::Config,
            message: RString::from("badabi must never be instantiated: its SDK is too old"),
        })
    }

    /// The root module `abi_stable` loads.
    #[export_root_module]
    pub fn root_module() -> StageMod_Ref {
        StageMod { manifest, new }.leak_into_prefix()
    }
}

pub use root::*;
