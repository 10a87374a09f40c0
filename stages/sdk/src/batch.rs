//! Batches: the unit of data that crosses the plugin boundary.
//!
//! A [`Batch`] holds up to `batch_size` records that share one schema (field names in
//! order). Storage follows `csv::ByteRecord`: every cell's text lives in one byte arena,
//! and each cell is an `(offset, len, kind)` triple, so building or reading a batch
//! allocates nothing per field. The type is `#[repr(C)]` and `StableAbi`, so the host and
//! a plugin built by another compiler run agree on its layout; its fields are private and
//! stage authors only see the methods below.
//!
//! Every cell stores its value as text together with a [`Kind`]: an int is its decimal
//! digits, a float its JSON/CSV text (so `1.50` stays `1.50`), a bool `true`/`false`, a
//! nested JSON object or array its JSON text. Typed accessors such as [`Row::get_f64`] parse
//! on demand; CSV input is all strings.
//!
//! Each row also carries its [`Pos`]: which input it came from and at which line, so a
//! reject anywhere in the chain can name the file and line of the original record.

use std::fmt;

#[cfg(not(target_arch = "wasm32"))]
use abi_stable::StableAbi;

#[cfg(target_arch = "wasm32")]
use crate::std_types::CopySlice;
use crate::std_types::{RString, RVec};

/// The type of a cell.
#[repr(u8)]
#[cfg_attr(not(target_arch = "wasm32"), derive(StableAbi))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The record has no such field (a JSON line without the key). Not written to JSON
    /// lines; an empty cell in CSV.
    Absent = 0,
    /// JSON `null`. An empty cell in CSV.
    Null = 1,
    /// `true` or `false`.
    Bool = 2,
    /// A whole number that fits an `i64`.
    Int = 3,
    /// Any other JSON number, kept as its original text.
    Float = 4,
    /// Text. Every CSV cell is a string.
    Str = 5,
    /// A nested JSON object or array, kept as its JSON text.
    Json = 6,
}

/// One cell: where its text is in the arena, and its kind.
#[repr(C)]
#[cfg_attr(not(target_arch = "wasm32"), derive(StableAbi))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub(crate) start: u32,
    pub(crate) len: u32,
    pub(crate) kind: Kind,
}

/// Where a record came from: the index of its input (in the order the inputs were given)
/// and the 1-based line its text starts on. `line == 0` means the record was made by a
/// stage (for example an aggregate emitted at the end of the stream).
#[repr(C)]
#[cfg_attr(not(target_arch = "wasm32"), derive(StableAbi))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Pos {
    /// Index of the input in the run's list of inputs.
    pub input: u32,
    /// 1-based line number of the start of the record; 0 when unknown.
    pub line: u64,
}

/// A borrowed, typed view of one cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// The field is not in this record.
    Absent,
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float, with its original text when it came from the input.
    Float(f64),
    /// A string.
    Str(&'a str),
    /// Nested JSON, as text.
    Json(&'a str),
}

impl Value<'_> {
    /// The value as a number: ints and floats as they are, strings parsed (after
    /// trimming spaces), bools as 0/1; `None` for anything else.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            Value::Str(s) => parse_f64(s),
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// True for `Absent` and `Null`.
    pub fn is_missing(&self) -> bool {
        matches!(self, Value::Absent | Value::Null)
    }
}

impl fmt::Display for Value<'_> {
    /// The text of the value as it would be written to CSV.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Absent | Value::Null => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) | Value::Json(s) => f.write_str(s),
        }
    }
}

/// Parses a number the way a user would write it in a CSV cell: surrounding spaces are
/// ignored; an empty cell is not a number.
pub fn parse_f64(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// Records sharing one schema, stored in one arena. See the module docs.
#[repr(C)]
#[cfg_attr(not(target_arch = "wasm32"), derive(StableAbi))]
#[derive(Clone, Default)]
pub struct Batch {
    pub(crate) names: RVec<RString>,
    pub(crate) data: RVec<u8>,
    pub(crate) cells: RVec<Cell>,
    pub(crate) pos: RVec<Pos>,
    /// Number of cells pushed for the row under construction.
    pub(crate) open: u32,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for row in self.rows() {
            list.entry(&row);
        }
        list.finish()
    }
}

impl Batch {
    /// An empty batch with no columns.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch with these columns.
    pub fn with_columns<I, S>(names: I) -> Batch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut b = Batch::new();
        b.set_columns(names);
        b
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    /// True when the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// The number of columns.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// The column names, in order.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.names.iter().map(|n| n.as_str())
    }

    /// The name of column `i`.
    pub fn column_name(&self, i: usize) -> &str {
        self.names[i].as_str()
    }

    /// The index of the column called `name`. A linear scan: look names up once per
    /// batch, not once per row.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n.as_str() == name)
    }

    /// True when both batches have the same column names in the same order.
    pub fn same_columns(&self, other: &Batch) -> bool {
        self.names.as_slice() == other.names.as_slice()
    }

    /// Bytes held in the arena (a measure of the batch's size).
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Row `i`. Panics when `i >= len()`.
    pub fn row(&self, i: usize) -> Row<'_> {
        assert!(i < self.len(), "row {i} out of range ({} rows)", self.len());
        Row {
            batch: self,
            index: i,
        }
    }

    /// All rows, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = Row<'_>> + '_ {
        (0..self.len()).map(move |index| Row { batch: self, index })
    }

    /// Removes all rows and columns, keeping the allocations.
    pub fn clear(&mut self) {
        self.names.clear();
        self.clear_rows();
    }

    /// Removes all rows, keeping the columns and the allocations.
    pub fn clear_rows(&mut self) {
        self.data.clear();
        self.cells.clear();
        self.pos.clear();
        self.open = 0;
    }

    /// Sets the columns. Panics when the batch holds rows and the width would change
    /// (rows of one batch share one schema).
    pub fn set_columns<I, S>(&mut self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let old = self.names.len();
        self.names.clear();
        for n in names {
            self.names.push(RString::from(n.as_ref()));
        }
        assert!(
            self.is_empty() || self.names.len() == old,
            "set_columns: the width of a batch that holds rows cannot change"
        );
    }

    /// Sets the columns to those of `other`.
    pub fn set_columns_like(&mut self, other: &Batch) {
        if !self.same_columns(other) {
            self.set_columns(other.columns());
        }
    }

    /// Adds a column at the end. Rows already in the batch get `Absent` there. This moves
    /// every cell, so it costs O(cells); the readers call it only when a JSON line brings
    /// a key not seen before in the batch. No row may be open.
    pub fn add_column(&mut self, name: &str) -> usize {
        debug_assert_eq!(self.open, 0, "add_column: a row is open");
        let width = self.names.len();
        let rows = self.pos.len();
        self.names.push(RString::from(name));
        if rows > 0 {
            let absent = Cell {
                start: 0,
                len: 0,
                kind: Kind::Absent,
            };
            let mut cells = RVec::with_capacity(self.cells.len() + rows);
            for r in 0..rows {
                cells.extend_from_copy_slice(&self.cells[r * width..(r + 1) * width]);
                cells.push(absent);
            }
            self.cells = cells;
        }
        width
    }

    /// Inserts a column at position `at` (0 = first). Rows already in the batch get
    /// `Absent` there. Costs O(cells), like [`add_column`](Batch::add_column). No row may
    /// be open.
    pub fn insert_column(&mut self, at: usize, name: &str) {
        debug_assert_eq!(self.open, 0, "insert_column: a row is open");
        let width = self.names.len();
        let at = at.min(width);
        if at == width {
            self.add_column(name);
            return;
        }
        let rows = self.pos.len();
        let mut names = RVec::with_capacity(width + 1);
        names.extend_from_slice(&self.names[..at]);
        names.push(RString::from(name));
        names.extend_from_slice(&self.names[at..]);
        self.names = names;
        if rows > 0 {
            let absent = Cell {
                start: 0,
                len: 0,
                kind: Kind::Absent,
            };
            let mut cells = RVec::with_capacity(self.cells.len() + rows);
            for r in 0..rows {
                let row = &self.cells[r * width..(r + 1) * width];
                cells.extend_from_copy_slice(&row[..at]);
                cells.push(absent);
                cells.extend_from_copy_slice(&row[at..]);
            }
            self.cells = cells;
        }
    }

    /// Starts a new row at `pos`. Push exactly [`width`](Batch::width) cells with
    /// [`push_value`](Batch::push_value) or [`push_str`](Batch::push_str), then call
    /// [`end_row`](Batch::end_row).
    pub fn start_row(&mut self, pos: Pos) {
        debug_assert_eq!(self.open, 0, "start_row: the previous row was not ended");
        self.pos.push(pos);
        self.open = 0;
    }

    /// Pushes one cell's text with its kind. The caller vouches that `text` suits `kind`
    /// (digits for `Int`, JSON for `Json`, and so on).
    pub fn push_raw(&mut self, kind: Kind, text: &str) {
        let start = self.data.len();
        self.data.extend_from_copy_slice(text.as_bytes());
        self.cells.push(Cell {
            start: start as u32,
            len: text.len() as u32,
            kind,
        });
        self.open += 1;
    }

    /// Pushes a string cell.
    pub fn push_str(&mut self, s: &str) {
        self.push_raw(Kind::Str, s)
    }

    /// Pushes a typed value.
    pub fn push_value(&mut self, v: Value<'_>) {
        match v {
            Value::Absent => self.push_raw(Kind::Absent, ""),
            Value::Null => self.push_raw(Kind::Null, ""),
            Value::Bool(b) => self.push_raw(Kind::Bool, if b { "true" } else { "false" }),
            Value::Int(i) => self.push_raw(Kind::Int, itoa::Buffer::new().format(i)),
            Value::Float(f) => {
                if f.is_finite() {
                    let s = format_f64(f);
                    self.push_raw(Kind::Float, &s);
                } else {
                    // JSON has no NaN or infinity: such results are null.
                    self.push_raw(Kind::Null, "");
                }
            }
            Value::Str(s) => self.push_raw(Kind::Str, s),
            Value::Json(s) => self.push_raw(Kind::Json, s),
        }
    }

    /// Ends the row under construction. Missing trailing cells become `Absent`; extra
    /// cells are an error (the row is dropped and the batch stays consistent).
    pub fn end_row(&mut self) -> Result<(), crate::Error> {
        let width = self.names.len() as u32;
        if self.open > width {
            let n = self.open;
            self.abandon_row();
            return Err(crate::Error::msg(format!(
                "a row has {n} values but the batch has {width} columns"
            )));
        }
        while self.open < width {
            self.push_raw(Kind::Absent, "");
        }
        self.open = 0;
        Ok(())
    }

    /// Appends a whole row of string cells in one go: `text` holds the fields back to
    /// back and `ends` the end offset of each (as `csv::ByteRecord` keeps them).
    ///
    /// Crate-private, and every end is checked to be a char boundary: a cell cut inside
    /// a UTF-8 character would make [`Row::raw`] hand out a `&str` that is not UTF-8.
    /// Outside the crate it cannot be called at all:
    ///
    /// ```compile_fail
    /// let mut b = pipe_sdk::Batch::with_columns(["a", "b"]);
    /// b.push_str_row(pipe_sdk::Pos::default(), "é", [1, 2].into_iter());
    /// ```
    #[cfg_attr(not(any(feature = "host", feature = "codec")), allow(dead_code))]
    pub(crate) fn push_str_row(&mut self, pos: Pos, text: &str, ends: impl Iterator<Item = usize>) {
        debug_assert_eq!(self.open, 0);
        let base = self.data.len() as u32;
        self.data.extend_from_copy_slice(text.as_bytes());
        let mut start = 0u32;
        for end in ends {
            assert!(
                end <= text.len() && text.is_char_boundary(end) && end as u32 >= start,
                "push_str_row: field end {end} is not a char boundary of the row"
            );
            let end = end as u32;
            self.cells.push(Cell {
                start: base + start,
                len: end - start,
                kind: Kind::Str,
            });
            start = end;
        }
        self.pos.push(pos);
    }

    /// Drops the row under construction.
    pub(crate) fn abandon_row(&mut self) {
        let rows = self.pos.len();
        if rows == 0 {
            return;
        }
        let keep = (rows - 1) * self.names.len();
        if let Some(first) = self.cells.get(keep) {
            let start = first.start as usize;
            self.data.truncate(start);
        }
        self.cells.truncate(keep);
        self.pos.truncate(rows - 1);
        self.open = 0;
    }

    /// Sets cell `col` of the row under construction, which must already have been pushed.
    /// Used by readers that see fields out of column order.
    #[cfg_attr(not(any(feature = "host", feature = "codec")), allow(dead_code))]
    pub(crate) fn set_open_cell(&mut self, col: usize, kind: Kind, text: &str) {
        let rows = self.pos.len();
        debug_assert!(rows > 0);
        let idx = (rows - 1) * self.names.len() + col;
        let start = self.data.len();
        self.data.extend_from_copy_slice(text.as_bytes());
        self.cells[idx] = Cell {
            start: start as u32,
            len: text.len() as u32,
            kind,
        };
    }

    /// Number of cells pushed so far for the row under construction.
    pub(crate) fn open_cells(&self) -> usize {
        self.open as usize
    }

    /// Appends a copy of `row` (from a batch with the same width) at the row's position.
    pub fn push_row(&mut self, row: Row<'_>) {
        let src = row.batch;
        let w = src.width();
        debug_assert_eq!(w, self.width(), "push_row: widths differ");
        let cells = &src.cells[row.index * w..(row.index + 1) * w];
        self.pos.push(src.pos[row.index]);
        // Copy the row's bytes as one block when its cells are contiguous (always so for
        // rows built by the readers), then rebase the offsets.
        let lo = cells.iter().map(|c| c.start).min().unwrap_or(0);
        let hi = cells.iter().map(|c| c.start + c.len).max().unwrap_or(0);
        let base = self.data.len() as u32;
        self.data
            .extend_from_copy_slice(&src.data[lo as usize..hi as usize]);
        for c in cells {
            self.cells.push(Cell {
                start: c.start - lo + base,
                len: c.len,
                kind: c.kind,
            });
        }
    }

    /// Keeps only rows `keep` (indexes in increasing order), in place: the cell table and
    /// positions are compacted; the text stays where it is in the arena.
    #[cfg_attr(not(any(feature = "host", feature = "codec")), allow(dead_code))]
    pub(crate) fn retain_rows(&mut self, keep: &[u32]) {
        if keep.len() == self.pos.len() {
            // Increasing indexes, as many as rows: every row is kept.
            return;
        }
        let w = self.names.len();
        let mut cells = RVec::with_capacity(keep.len() * w);
        let mut pos = RVec::with_capacity(keep.len());
        for &r in keep {
            let r = r as usize;
            cells.extend_from_copy_slice(&self.cells[r * w..(r + 1) * w]);
            pos.push(self.pos[r]);
        }
        self.cells = cells;
        self.pos = pos;
    }

    /// Moves every row `by` lines further down its input; rows a stage made (line 0)
    /// stay at 0. For a host whose input arrives in pieces: a message holding lines
    /// 5001-6000 of a file is read as lines 1-1000 of the message, then shifted.
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn shift_lines(&mut self, by: u64) {
        for p in self.pos.iter_mut() {
            if p.line > 0 {
                p.line += by;
            }
        }
    }

    /// Appends every row of `other`, which must have the same columns.
    #[cfg_attr(not(any(feature = "host", feature = "codec")), allow(dead_code))]
    pub(crate) fn extend_from(&mut self, other: &Batch) {
        debug_assert!(self.same_columns(other));
        let base = self.data.len() as u32;
        self.data.extend_from_copy_slice(&other.data);
        for c in other.cells.iter() {
            self.cells.push(Cell {
                start: c.start + base,
                len: c.len,
                kind: c.kind,
            });
        }
        self.pos.extend_from_copy_slice(&other.pos);
    }

    /// Row `r`'s cells and the arena they point into (for the writers' hot loops).
    #[cfg_attr(not(feature = "codec"), allow(dead_code))]
    pub(crate) fn raw_row(&self, r: usize) -> (&[Cell], &[u8]) {
        let w = self.names.len();
        (&self.cells[r * w..(r + 1) * w], &self.data)
    }

    fn cell(&self, row: usize, col: usize) -> (Kind, &str) {
        let c = self.cells[row * self.names.len() + col];
        let bytes = &self.data[c.start as usize..(c.start + c.len) as usize];
        // SAFETY: every cell is pushed from a `&str` (push_raw / set_open_cell) or copied
        // from another batch's cell, and cells are cut on those boundaries.
        (c.kind, unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

/// Formats a float as JSON and CSV want it: the shortest text that reads back the same.
pub fn format_f64(f: f64) -> String {
    let a = f.abs();
    if a != 0.0 && !(1e-5..1e16).contains(&a) {
        format!("{f:e}")
    } else {
        f.to_string()
    }
}

/// One record of a batch.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    batch: &'a Batch,
    index: usize,
}

impl fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (i, name) in self.batch.columns().enumerate() {
            m.entry(&name, &self.value(i));
        }
        m.finish()
    }
}

impl<'a> Row<'a> {
    /// The batch this row belongs to.
    pub fn batch(&self) -> &'a Batch {
        self.batch
    }

    /// The row's index in its batch.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where the record came from.
    pub fn pos(&self) -> Pos {
        self.batch.pos[self.index]
    }

    /// The kind and text of column `col`.
    pub fn raw(&self, col: usize) -> (Kind, &'a str) {
        self.batch.cell(self.index, col)
    }

    /// The typed value of column `col`. Numbers that do not parse (which the readers
    /// never produce) read as strings.
    pub fn value(&self, col: usize) -> Value<'a> {
        let (kind, text) = self.raw(col);
        match kind {
            Kind::Absent => Value::Absent,
            Kind::Null => Value::Null,
            Kind::Bool => Value::Bool(text == "true"),
            Kind::Int => text.parse().map(Value::Int).unwrap_or(Value::Str(text)),
            Kind::Float => text.parse().map(Value::Float).unwrap_or(Value::Str(text)),
            Kind::Str => Value::Str(text),
            Kind::Json => Value::Json(text),
        }
    }

    /// The value of the field called `name`, `Absent` when there is none.
    pub fn get(&self, name: &str) -> Value<'a> {
        match self.batch.column(name) {
            Some(c) => self.value(c),
            None => Value::Absent,
        }
    }

    /// The text of the field called `name` (strings as they are, numbers as written);
    /// `None` when the field is absent or null.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        let c = self.batch.column(name)?;
        match self.raw(c) {
            (Kind::Absent | Kind::Null, _) => None,
            (_, text) => Some(text),
        }
    }

    /// The field called `name` as a number (see [`Value::as_f64`]).
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.get(name).as_f64()
    }

    /// The field called `name` as an integer: ints as they are, strings and floats with
    /// no fractional part parsed.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Int(i) => Some(i),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            _ => None,
        }
    }

    /// The field called `name` as a bool: JSON bools, and the strings `true`/`false`
    /// (any case), `1`/`0`, `yes`/`no`.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Value::Bool(b) => Some(b),
            Value::Int(i) => Some(i != 0),
            Value::Str(s) => parse_bool(s),
            _ => None,
        }
    }

    /// Iterates `(name, value)` over the row's fields, in column order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, Value<'a>)> + 'a {
        let row = *self;
        (0..row.batch.width()).map(move |c| (row.batch.column_name(c), row.value(c)))
    }
}

/// Parses the usual spellings of a boolean.
pub fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("true") || t == "1" || t.eq_ignore_ascii_case("yes") {
        Some(true)
    } else if t.eq_ignore_ascii_case("false") || t == "0" || t.eq_ignore_ascii_case("no") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut b = Batch::with_columns(["id", "name", "amount"]);
        for (i, (n, a)) in [("ann", "1.5"), ("bob", "20")].iter().enumerate() {
            b.start_row(Pos {
                input: 0,
                line: i as u64 + 2,
            });
            b.push_value(Value::Int(i as i64 + 1));
            b.push_str(n);
            b.push_str(a);
            b.end_row().unwrap();
        }
        b
    }

    #[test]
    fn typed_access_parses_on_demand() {
        let b = sample();
        assert_eq!(b.len(), 2);
        let r = b.row(1);
        assert_eq!(r.get("id"), Value::Int(2));
        assert_eq!(r.get_str("name"), Some("bob"));
        assert_eq!(r.get_f64("amount"), Some(20.0));
        assert_eq!(r.get("nope"), Value::Absent);
        assert_eq!(r.pos().line, 3);
    }

    #[test]
    fn push_row_copies_between_batches() {
        let b = sample();
        let mut out = Batch::new();
        out.set_columns_like(&b);
        out.push_row(b.row(1));
        out.push_row(b.row(0));
        assert_eq!(out.row(0).get_str("name"), Some("bob"));
        assert_eq!(out.row(1).get_str("name"), Some("ann"));
        assert_eq!(out.row(1).pos().line, 2);
    }

    #[test]
    fn add_column_pads_earlier_rows_with_absent() {
        let mut b = sample();
        b.add_column("extra");
        assert_eq!(b.row(0).get("extra"), Value::Absent);
        assert_eq!(b.row(1).get_str("amount"), Some("20"));
        b.start_row(Pos::default());
        b.push_str("3");
        b.end_row().unwrap();
        assert_eq!(b.row(2).get("name"), Value::Absent);
        assert_eq!(b.width(), 4);
    }

    #[test]
    fn insert_column_keeps_rows_aligned() {
        let mut b = sample();
        b.insert_column(1, "mid");
        assert_eq!(
            b.columns().collect::<Vec<_>>(),
            ["id", "mid", "name", "amount"]
        );
        assert_eq!(b.row(1).get("mid"), Value::Absent);
        assert_eq!(b.row(1).get_str("name"), Some("bob"));
        assert_eq!(b.row(0).get_f64("amount"), Some(1.5));
    }

    #[test]
    fn too_many_cells_is_an_error_and_leaves_batch_consistent() {
        let mut b = sample();
        b.start_row(Pos::default());
        for _ in 0..4 {
            b.push_str("x");
        }
        assert!(b.end_row().is_err());
        assert_eq!(b.len(), 2);
        assert_eq!(b.row(1).get_str("name"), Some("bob"));
    }

    #[test]
    fn floats_format_shortest() {
        assert_eq!(format_f64(1999.0), "1999");
        assert_eq!(format_f64(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_f64(1e300), "1e300");
    }
}
