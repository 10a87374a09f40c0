//! The stage SDK of `pipe`.
//!
//! A stage is a plugin: a `cdylib` that `pipe` loads at run time and can replace while
//! data flows. This crate is everything a stage author needs:
//!
//! - [`Batch`] and [`Row`]: the records a stage receives, with typed accessors;
//! - [`Output`]: where a stage writes rows and rejects;
//! - [`Stage`]: the trait to implement; [`export_stage!`]: the one line that exports it;
//! - `testing` (feature `codec`): run a stage in-process on CSV or JSON-lines text.
//!
//! See the [`tutorial`] for a complete stage in about 25 lines.
//!
//! # Layout
//! - `batch`: the arena-backed batch, rows, values, positions.
//! - `output`: the per-batch output buffer and row writer.
//! - `stage`: the author-facing trait, config parsing, panic containment, the export macro.
//! - `state`: building blocks for state formats (hot-swap handover) and compact keys.
//! - `abi`: the `abi_stable` root module and stage object (hidden from authors; not
//!   built for wasm32).
//! - `hostapi`, `host` (feature `host`): what only a host does to an [`Output`] (mark
//!   the input, take the rows); private, so a stage cannot misuse it.
//! - `wasm_abi`: the WASM batch ABI and its codec, shared by the host and the guest glue.
//! - `wasm_guest` (wasm32 only): the exports a stage built as `.wasm` gets.
//! - `std_types`: the vector and string types the batch types are made of.
//! - `codec` (feature): CSV and JSON-lines readers and writers for batches, used by the
//!   host and by the test helpers.
//!
//! The modules are private and their API is re-exported here (rust-csv's habit): the
//! crate root is the whole surface. Mutators that could break a batch's invariants
//! (cutting a cell inside a UTF-8 character, half-built rows) are crate-private.
#![deny(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
pub mod abi;
mod batch;
#[cfg(feature = "host")]
pub mod host;
mod hostapi;
mod output;
mod stage;
pub mod state;
pub mod tutorial;
pub mod wasm_abi;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm_guest;

/// The vector and string types of [`Batch`] and [`Output`]: `abi_stable`'s FFI-safe ones
/// in a native build, whose layout is checked when a plugin loads; std's on wasm32, where
/// nothing crosses a native boundary (the WASM ABI copies bytes) and `abi_stable` does not
/// build.
mod std_types {
    #[cfg(not(target_arch = "wasm32"))]
    pub use abi_stable::std_types::{RString, RVec};

    #[cfg(target_arch = "wasm32")]
    pub type RVec<T> = Vec<T>;
    #[cfg(target_arch = "wasm32")]
    pub type RString = String;

    /// `RVec::extend_from_copy_slice`, spelt for `Vec`.
    #[cfg(target_arch = "wasm32")]
    pub trait CopySlice<T: Copy> {
        fn extend_from_copy_slice(&mut self, s: &[T]);
    }

    #[cfg(target_arch = "wasm32")]
    impl<T: Copy> CopySlice<T> for Vec<T> {
        fn extend_from_copy_slice(&mut self, s: &[T]) {
            self.extend_from_slice(s)
        }
    }
}

/// Writes one line to the host's stderr. A native stage writes it straight there; a WASM
/// stage, which has no stderr, hands it to the host, which prints it as `[stage] line`.
pub fn log(line: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm_guest::log(line);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
}

#[cfg(feature = "codec")]
pub mod codec;
#[cfg(feature = "codec")]
pub mod testing;

pub use batch::{format_f64, parse_bool, parse_f64, Batch, Kind, Pos, Row, Value};
pub use output::{Output, Reject, RowWriter};
pub use stage::{parse_config, Error, Stage};

/// Everything a stage needs, in one import: `use pipe_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::batch::{Batch, Kind, Pos, Row, Value};
    pub use crate::export_stage;
    pub use crate::output::Output;
    pub use crate::stage::{Error, Stage};
    pub use serde::Deserialize;
}

/// What [`export_stage!`] expands to refers to; not part of the API.
#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod __private {
    pub use crate::stage::new_instance;
    pub use abi_stable;
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_matches_abi_stable() {
        // export_stage! spells out the symbol `#[export_root_module]` would make.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
