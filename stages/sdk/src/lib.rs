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
//! - `abi`: the `abi_stable` root module and stage object (hidden from authors).
//! - `hostapi`, `host` (feature `host`): what only a host does to an [`Output`] (mark
//!   the input, take the rows); private, so a stage cannot misuse it.
//! - `codec` (feature): CSV and JSON-lines readers and writers for batches, used by the
//!   host and by the test helpers.
//!
//! The modules are private and their API is re-exported here (rust-csv's habit): the
//! crate root is the whole surface. Mutators that could break a batch's invariants
//! (cutting a cell inside a UTF-8 character, half-built rows) are crate-private.
#![deny(missing_docs)]

pub mod abi;
mod batch;
#[cfg(feature = "host")]
pub mod host;
// Only the host, the codec and the test helpers drive an output from outside; a plain
// stage build leaves it out rather than warn about dead code (README rebuild command).
#[cfg(any(feature = "host", feature = "codec"))]
mod hostapi;
mod output;
mod stage;
pub mod state;
pub mod tutorial;

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
