//! [`Output`]: where a stage writes its rows and rejects for one batch.
//!
//! The host owns the `Output` and reuses it from batch to batch, so a stage that writes
//! rows allocates nothing once the buffers have grown to size.
//!
//! Rows passed through unchanged cost no copy: [`Output::push`] of a row of the batch
//! being processed only records its index while no new row has been written yet, and the
//! host then keeps those rows of its own input batch in place (their text stays where it
//! is; only the cell table is compacted). A filter that keeps most rows therefore moves
//! 12 bytes a cell instead of the whole record. Anything else (a row of another batch, a
//! pass-through after a new row) is copied, so the output order is always push order.

use std::fmt::Display;

use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

use crate::batch::{Batch, Kind, Pos, Row, Value};
#[cfg(any(feature = "host", feature = "codec"))]
use crate::hostapi::HostOutput;

/// A row sent to the dead-letter path: the index of the input row and why.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct Reject {
    /// Index of the rejected row in the input batch.
    pub row: u32,
    /// Why the stage rejected it.
    pub reason: RString,
}

/// The rows a stage emits for one batch (or at the end of the stream), and its rejects.
///
/// Set the columns first ([`columns`](Output::columns) or
/// [`columns_like`](Output::columns_like)), then push rows. All rows of one output share
/// its columns.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default)]
pub struct Output {
    batch: Batch,
    rejects: RVec<Reject>,
    /// Rows of the current input kept unchanged, by index; they come before `batch`'s rows.
    kept: RVec<u32>,
    /// The address of the current input batch (0: none, as in `finish`).
    input: usize,
}

impl Output {
    /// An empty output.
    pub fn new() -> Output {
        Output::default()
    }

    /// Sets the output's columns. Panics when rows were already pushed under other
    /// columns.
    pub fn columns<I, S>(&mut self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if self.batch.is_empty() {
            self.batch.set_columns(names);
        } else {
            let names: Vec<S> = names.into_iter().collect();
            assert!(
                names.iter().map(|n| n.as_ref()).eq(self.batch.columns()),
                "Output::columns: rows were already pushed under other columns"
            );
        }
    }

    /// Uses the same columns as `input` (for stages that pass rows through).
    pub fn columns_like(&mut self, input: &Batch) {
        if !self.batch.same_columns(input) {
            self.columns(input.columns());
        }
    }

    /// Copies `row` unchanged. The output must have the row's columns
    /// ([`columns_like`](Output::columns_like)).
    pub fn push(&mut self, row: Row<'_>) {
        assert_eq!(
            self.batch.width(),
            row.batch().width(),
            "Output::push: call columns_like(input) before pushing input rows"
        );
        let from_input = self.input != 0 && std::ptr::eq(row.batch(), self.input as *const Batch);
        if from_input && self.batch.is_empty() {
            self.kept.push(row.index() as u32);
        } else {
            self.batch.push_row(row);
        }
    }

    /// Starts a new row derived from `from` (it keeps `from`'s file and line). Push one
    /// value per column; columns left out are absent. The row ends when the writer drops.
    pub fn row(&mut self, from: Row<'_>) -> RowWriter<'_> {
        self.row_at(from.pos())
    }

    /// Starts a new row that no input row stands behind (an aggregate at the end).
    pub fn new_row(&mut self) -> RowWriter<'_> {
        self.row_at(Pos::default())
    }

    fn row_at(&mut self, pos: Pos) -> RowWriter<'_> {
        self.batch.start_row(pos);
        RowWriter {
            batch: &mut self.batch,
        }
    }

    /// Sends input row `row` to the stage's error policy (dead letter, skip or fail) with
    /// `reason`. A rejected row should not also be pushed.
    pub fn reject(&mut self, row: Row<'_>, reason: impl Display) {
        self.rejects.push(Reject {
            row: row.index() as u32,
            reason: RString::from(reason.to_string()),
        });
    }

    /// The rows written so far, not counting input rows kept in place (see
    /// [`kept`](Output::kept)).
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// Indexes of the input rows kept unchanged, which come first in the output.
    pub fn kept(&self) -> &[u32] {
        &self.kept
    }

    /// The number of rows in the output.
    pub fn len(&self) -> usize {
        self.kept.len() + self.batch.len()
    }

    /// True when the output holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rejects written so far.
    pub fn rejects(&self) -> &[Reject] {
        &self.rejects
    }
}

#[cfg(any(feature = "host", feature = "codec"))]
impl HostOutput for Output {
    // Documented on the trait.
    /// Marks `input` as the batch being processed, so that its rows can be passed on
    /// without a copy. The host calls it (after [`clear`](Output::clear)) before each
    /// `process`; `input` must stay alive and unchanged until [`resolve`](Output::resolve).
    fn begin(&mut self, input: &Batch) {
        self.input = input as *const Batch as usize;
    }

    /// Takes the output for `input` (the batch given to [`begin`](Output::begin)): its
    /// kept rows in place, then the rows written, with the output's columns. Leaves the
    /// output empty.
    fn resolve(&mut self, mut input: Batch) -> Batch {
        self.input = 0;
        if self.kept.is_empty() {
            return self.take_batch();
        }
        input.retain_rows(&self.kept);
        self.kept.clear();
        if !input.columns().eq(self.batch.columns()) {
            // Same width (push checks it), maybe other names: a rename.
            input.set_columns(self.batch.columns());
        }
        if !self.batch.is_empty() {
            input.extend_from(&self.batch);
        }
        self.batch.clear_rows();
        input
    }

    /// Empties the output, keeping its buffers. The host calls it before each batch.
    fn clear(&mut self) {
        self.batch.clear_rows();
        self.rejects.clear();
        self.kept.clear();
        self.input = 0;
    }

    /// Gives the rows to the caller, leaving an empty batch with the same allocation
    /// strategy behind.
    fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    #[cfg(feature = "host")]
    /// Swaps the output's rows with `batch` (the host recycles buffers this way).
    fn swap_batch(&mut self, batch: &mut Batch) {
        std::mem::swap(&mut self.batch, batch);
    }
}

/// Writes one row of an [`Output`], one value per column in column order.
pub struct RowWriter<'a> {
    batch: &'a mut Batch,
}

impl RowWriter<'_> {
    fn check(&self) {
        assert!(
            self.batch.open_cells() < self.batch.width(),
            "a row has more values than the {} columns of the output",
            self.batch.width()
        );
    }

    /// Pushes a typed value.
    pub fn value(&mut self, v: Value<'_>) -> &mut Self {
        self.check();
        self.batch.push_value(v);
        self
    }

    /// Pushes a string.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.check();
        self.batch.push_str(s);
        self
    }

    /// Copies column `col` of `row` with its kind.
    pub fn copy(&mut self, row: Row<'_>, col: usize) -> &mut Self {
        self.check();
        let (kind, text) = row.raw(col);
        self.batch.push_raw(kind, text);
        self
    }

    /// Pushes text of a given kind (`Kind::Json` for nested JSON, for example).
    pub fn raw(&mut self, kind: Kind, text: &str) -> &mut Self {
        self.check();
        self.batch.push_raw(kind, text);
        self
    }
}

impl Drop for RowWriter<'_> {
    fn drop(&mut self) {
        // `check` keeps the count at or below the width, so this only pads with Absent.
        let _ = self.batch.end_row();
    }
}
