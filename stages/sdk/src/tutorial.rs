//! Writing a stage, start to finish.
//!
//! A stage is a Rust library built as a `cdylib` (the plugin `pipe` loads) and an `rlib`
//! (so its tests can run it in-process). `pipe new NAME` writes this for you; here is
//! what it writes, and why.
//!
//! # 1. The crate
//!
//! ```toml
//! [package]
//! name = "stage-upper"
//! version = "0.1.0"          # the stage's version, shown in swap reports and `pipe stages`
//! edition = "2021"
//!
//! [lib]
//! name = "upper"             # the file is libupper.so: `plugin = "upper"` in pipelines.toml
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! pipe-sdk = { path = "../sdk" }
//! serde = { version = "1", features = ["derive"] }
//!
//! [dev-dependencies]
//! pipe-sdk = { path = "../sdk", features = ["codec"] }   # the test helpers
//! serde_json = "1"
//! ```
//!
//! # 2. The stage
//!
//! Three things: a config type (the `config` table of the stage in `pipelines.toml`,
//! deserialised with serde), a type implementing [`Stage`](crate::Stage), and one
//! [`export_stage!`](crate::export_stage) line. No `unsafe`, no `extern`, no ABI types.
//!
//! ```
//! use pipe_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)] // a misspelt key is an error that names it
//! pub struct Config {
//!     fields: Vec<String>,
//! }
//!
//! pub struct Upper {
//!     fields: Vec<String>,
//! }
//!
//! impl Stage for Upper {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, Error> {
//!         Ok(Upper { fields: config.fields })
//!     }
//!
//!     fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
//!         out.columns_like(input); // same columns out as in
//!         // Look columns up once per batch, not once per row.
//!         let cols: Vec<Option<usize>> = self.fields.iter().map(|f| input.column(f)).collect();
//!         for row in input.rows() {
//!             let mut w = out.row(row); // a new row that keeps `row`'s file and line
//!             for c in 0..input.width() {
//!                 match row.value(c) {
//!                     Value::Str(s) if cols.contains(&Some(c)) => w.str(&s.to_uppercase()),
//!                     _ => w.copy(row, c),
//!                 };
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_stage!(Upper, name = "upper", description = "upper-cases fields");
//!
//! // In the crate's tests: run it in-process through the same ABI adapter the host uses.
//! # fn main() {
//! # #[cfg(feature = "codec")]
//! # {
//! let out = pipe_sdk::testing::run_csv::<Upper>(
//!     serde_json::json!({ "fields": ["name"] }),
//!     "id,name\n1,ann\n",
//! )
//! .unwrap();
//! assert_eq!(out.csv(), "id,name\n1,ANN\n");
//! # }
//! # }
//! ```
//!
//! # 3. What a stage can do
//!
//! - **Filter**: push only some rows (`out.push(row)` copies a row unchanged).
//! - **Reshape**: `out.columns(["a", "b"])`, then `out.row(row).copy(row, 2).value(...)`.
//!   All rows of one output share its columns.
//! - **Reject**: `out.reject(row, "why")` sends the row to the stage's `on_error` policy
//!   (fail, skip, or the dead-letter file with the reason, file and line).
//! - **Fail a batch**: return `Err(Error::msg(...))`; every row of the batch goes to the
//!   policy. A panic does the same (the SDK catches it inside the plugin and reports the
//!   message with your source file and line), and the host re-creates the instance.
//! - **Aggregate**: keep state in `self` and emit it in [`Stage::finish`](crate::Stage::finish)
//!   with `out.new_row()`; declare it with `export_stage!(..., stateful = true)` so the host
//!   runs one worker that sees every batch in input order.
//! - **Survive a hot swap**: implement [`Stage::export_state`](crate::Stage::export_state)
//!   and [`Stage::import_state`](crate::Stage::import_state); the new version gets the old
//!   one's state between two batches. Version your format and refuse what you cannot read.
//!
//! # 4. Types
//!
//! CSV cells are strings; JSON lines keep their types (`Value::Int`, `Value::Float`,
//! `Value::Bool`, `Value::Null`, nested objects and arrays as `Value::Json` text). A field
//! missing from a record is `Value::Absent`. Typed accessors parse on demand:
//! [`Row::get_f64`](crate::Row::get_f64) reads `"12.50"` from CSV and `12.5` from JSON alike.
//!
//! # 5. Build, list, run
//!
//! ```sh
//! cargo build --release          # target/release/libupper.so, next to pipe
//! pipe stages                    # upper  0.1.0  ok  .../libupper.so
//! pipe run upper-pipeline data.csv
//! ```
//!
//! # 6. The same stage as WASM
//!
//! Nothing in the code changes: for `wasm32`, [`export_stage!`](crate::export_stage) emits
//! the exports of the WASM batch ABI ([`crate::wasm_abi`]) instead of the native root
//! module, and the stage runs sandboxed, with a memory cap and a per-batch deadline:
//!
//! ```sh
//! cargo build --target wasm32-unknown-unknown --release -p stage-upper
//! # pipelines.toml: plugin = "upper", path = "target/wasm32-unknown-unknown/release/upper.wasm"
//! ```
//!
//! A WASM stage has no stderr, files, network or clock: print with [`crate::log`], and
//! keep to the records. A panic traps; the host reports it with its message, as above.
