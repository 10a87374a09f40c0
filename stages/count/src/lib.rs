//! The `count` stage: group records and aggregate them, emitting one row per group at
//! the end of the stream.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "count"
//! config = { by = ["country"], sum = ["amount"], avg = ["amount"], max = ["amount"] }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `by` | list of names | `[]` | the fields to group by; `[]` gives one grand-total row |
//! | `sum` | list of names | `[]` | a `sum_<field>` column each |
//! | `min` | list of names | `[]` | a `min_<field>` column each |
//! | `max` | list of names | `[]` | a `max_<field>` column each |
//! | `avg` | list of names | `[]` | an `avg_<field>` column each (always a float) |
//!
//! Output columns, in this order: the `by` fields, `count` (records in the group, always
//! there), then the `sum_`, `min_`, `max_` and `avg_` columns in the order listed. Groups
//! come out in the order they were first seen. Two output columns with one name (say
//! `by = ["count"]`) are a config error.
//!
//! Values:
//! - Grouping compares field text, so `1` and `"1"` are one group; the group's value is
//!   written as first seen. A `by` field a record lacks groups as absent, which is
//!   distinct from null and from the empty string.
//! - Numbers are JSON numbers and strings that read as one (spaces around are ignored):
//!   `12`, `-3.5`, `1e3`. Absent, null, empty and blank values are skipped by the
//!   aggregates (the record still counts), like SQL's NULL. Anything else (`abc`, `12,5`,
//!   `true`, `nan`, an object) **rejects the record** with a reason naming the field and
//!   value, and the record is not counted at all, so the totals never silently leave out
//!   part of a record.
//! - `sum` is exact decimal arithmetic, as in `compute`: ints sum to an int, and decimals
//!   to their exact decimal (`1819.86`, never `1819.8600000000001`). Only when a value is
//!   not a plain decimal (`1e3`) or the sum outgrows 38 digits does it become a float
//!   (summed with Neumaier's compensation, so ten `0.1` make `1`). `min`/`max` keep the winning value's type. A group where a field never had a
//!   value gets null in its `sum_`/`min_`/`max_`/`avg_` columns.
//! - Empty input: with `by = []`, one row with `count` 0; otherwise no rows.
//!
//! Memory grows with the number of groups: the group's key text plus ~80 bytes per
//! aggregated field.
//!
//! # State handover
//!
//! The stage is stateful; at a hot swap the groups go to the new version in this format
//! (version 1; varints are unsigned LEB128, fixed-size numbers little-endian):
//!
//! ```text
//! "PCNT"  u8 version = 1
//! varint n_by,     n_by × (varint len, UTF-8 name)       -- the config's `by`
//! varint n_fields, n_fields × (varint len, UTF-8 name)   -- every aggregated field
//! varint n_groups, then per group, in first-seen order:
//!   varint len, key              -- per `by` field: varint 0 absent, 1 null,
//!                                   len + 2 then the text
//!   n_by × u8 kind               -- the value's kind as first seen (pipe_sdk::Kind)
//!   varint count
//!   n_fields × accumulator:
//!     varint n                   -- values aggregated
//!     i128 exact_sum, f64 float_sum, f64 compensation,
//!     u8 flags (bit 0: a float was summed; bits 1-7: the exact sum's decimal scale,
//!                so exact_sum / 10^scale is the sum of the exact values)
//!     min, max: u8 tag (0 int, 1 float), 8 bytes (i64 or f64)
//! ```
//!
//! The new version must group `by` the same fields and may aggregate a subset of the
//! fields in any way (adding `max = ["amount"]` next to `sum = ["amount"]` keeps the
//! counts); a field that the state lacks is refused, since past records could not be
//! aggregated over it. Import checks every byte and never panics on garbage.

use std::collections::{HashMap, HashSet};

use pipe_expr::Dec;
use pipe_sdk::prelude::*;
use pipe_sdk::state::{put_bytes, put_key_field, put_str, put_varint, KeyField, StateReader};

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountConfig {
    /// Fields to group by.
    #[serde(default)]
    pub by: Vec<String>,
    /// Fields to sum.
    #[serde(default)]
    pub sum: Vec<String>,
    /// Fields to take the minimum of.
    #[serde(default)]
    pub min: Vec<String>,
    /// Fields to take the maximum of.
    #[serde(default)]
    pub max: Vec<String>,
    /// Fields to average.
    #[serde(default)]
    pub avg: Vec<String>,
}

/// An aggregate over one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agg {
    Sum,
    Min,
    Max,
    Avg,
}

impl Agg {
    const ALL: [(Agg, &'static str); 4] = [
        (Agg::Sum, "sum"),
        (Agg::Min, "min"),
        (Agg::Max, "max"),
        (Agg::Avg, "avg"),
    ];
}

/// A number read from a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// `self < other`, exactly for two ints.
    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            _ => self.as_f64() < other.as_f64(),
        }
    }

    fn value(self) -> Value<'static> {
        match self {
            Num::Int(i) => Value::Int(i),
            Num::Float(f) => Value::Float(f),
        }
    }
}

/// What an aggregated cell holds.
enum Cell {
    /// Absent, null, empty or blank: skipped by the aggregates.
    Missing,
    /// The number, and its exact decimal when it has one (for `sum`).
    Num(Num, Option<Dec>),
    NotANumber,
}

fn read_number(kind: Kind, text: &str) -> Cell {
    match kind {
        Kind::Absent | Kind::Null => Cell::Missing,
        Kind::Bool | Kind::Json => Cell::NotANumber,
        Kind::Int | Kind::Float | Kind::Str => {
            let t = text.trim();
            if t.is_empty() {
                Cell::Missing
            } else if let Ok(i) = t.parse::<i64>() {
                Cell::Num(Num::Int(i), Some(Dec { m: i, scale: 0 }))
            } else {
                // Rust also reads `inf` and `nan`: those are not numbers a user means.
                match t.parse::<f64>() {
                    Ok(f) if f.is_finite() => {
                        let exact = match pipe_expr::Num::parse(t) {
                            Some(pipe_expr::Num::Dec(d)) => Some(d),
                            _ => None,
                        };
                        Cell::Num(Num::Float(f), exact)
                    }
                    _ => Cell::NotANumber,
                }
            }
        }
    }
}

/// Everything aggregated over one field of one group.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Acc {
    /// Values aggregated (missing ones are not).
    n: u64,
    /// The sum of the values summed exactly, as a mantissa at `scale` decimals.
    int_sum: i128,
    /// Decimals of `int_sum` (at most [`pipe_expr::num::MAX_SCALE`]).
    scale: u8,
    float_sum: f64,
    /// Neumaier's running compensation for `float_sum`.
    comp: f64,
    /// A float was summed: the sum is a float.
    any_float: bool,
    /// Meaningful when `n > 0`.
    min: Num,
    max: Num,
}

impl Default for Acc {
    fn default() -> Acc {
        Acc {
            n: 0,
            int_sum: 0,
            scale: 0,
            float_sum: 0.0,
            comp: 0.0,
            any_float: false,
            min: Num::Int(0),
            max: Num::Int(0),
        }
    }
}

impl Acc {
    fn add(&mut self, x: Num, exact: Option<Dec>) {
        let added = exact.is_some_and(|d| self.add_exact(i128::from(d.m), d.scale));
        if !added {
            self.any_float = true;
            self.add_float(x.as_f64());
        }
        if self.n == 0 || x.less(self.min) {
            self.min = x;
        }
        if self.n == 0 || self.max.less(x) {
            self.max = x;
        }
        self.n += 1;
    }

    /// Adds `m / 10^scale` to the exact sum; false (and nothing changed) when the sum
    /// would outgrow an `i128`, so the caller sums the value as a float instead.
    fn add_exact(&mut self, m: i128, scale: u8) -> bool {
        let target = self.scale.max(scale);
        let lift = |v: i128, from: u8| {
            10i128
                .checked_pow(u32::from(target - from))
                .and_then(|p| v.checked_mul(p))
        };
        match (lift(self.int_sum, self.scale), lift(m, scale)) {
            (Some(a), Some(b)) => match a.checked_add(b) {
                Some(sum) => {
                    self.int_sum = sum;
                    self.scale = target;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// The exact sum as a float.
    fn exact_f64(&self) -> f64 {
        self.int_sum as f64 / 10f64.powi(i32::from(self.scale))
    }

    fn add_float(&mut self, x: f64) {
        let t = self.float_sum + x;
        if self.float_sum.abs() >= x.abs() {
            self.comp += (self.float_sum - t) + x;
        } else {
            self.comp += (x - t) + self.float_sum;
        }
        self.float_sum = t;
    }

    fn merge(&mut self, other: &Acc) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        if !self.add_exact(other.int_sum, other.scale) {
            self.any_float = true;
            self.add_float(other.exact_f64());
        }
        self.add_float(other.float_sum);
        self.add_float(other.comp);
        self.any_float |= other.any_float;
        if other.min.less(self.min) {
            self.min = other.min;
        }
        if self.max.less(other.max) {
            self.max = other.max;
        }
        self.n += other.n;
    }

    /// The sum as a float.
    fn total(&self) -> f64 {
        let mut t = *self;
        t.add_float(self.exact_f64());
        t.float_sum + t.comp
    }

    /// Writes the aggregate as the next cell: an exact sum as its decimal text.
    fn output(&self, agg: Agg, w: &mut pipe_sdk::RowWriter<'_>) {
        if self.n == 0 {
            w.value(Value::Null);
            return;
        }
        match agg {
            Agg::Sum if !self.any_float => match i64::try_from(self.int_sum) {
                Ok(m) => {
                    let d = Dec {
                        m,
                        scale: self.scale,
                    }
                    .normalize();
                    if self.scale == 0 {
                        w.value(Value::Int(d.m));
                    } else if d.scale == 0 && d.m.unsigned_abs() < 1 << 53 {
                        // Decimals that sum to a whole number stay a float (`5.0`), so a
                        // column's sum keeps its type from one group to the next; below
                        // 2^53 the float is exact.
                        w.value(Value::Float(d.m as f64));
                    } else {
                        let mut buf = pipe_expr::num::NumBuf::new();
                        w.raw(Kind::Float, d.write(&mut buf));
                    }
                }
                Err(_) => {
                    w.value(Value::Float(self.total()));
                }
            },
            Agg::Sum => {
                w.value(Value::Float(self.total()));
            }
            Agg::Min => {
                w.value(self.min.value());
            }
            Agg::Max => {
                w.value(self.max.value());
            }
            Agg::Avg => {
                w.value(Value::Float(self.total() / self.n as f64));
            }
        }
    }
}

/// The running stage.
pub struct Count {
    by: Vec<String>,
    /// Every aggregated field, once, in the order first listed.
    fields: Vec<String>,
    /// The aggregate columns, in output order: which aggregate of which field.
    outputs: Vec<(Agg, usize)>,
    /// All output column names.
    names: Vec<String>,
    /// Encoded `by` values (see the module docs) → group number.
    index: HashMap<Box<[u8]>, usize>,
    /// Per group, `by.len()` kinds as first seen.
    kinds: Vec<Kind>,
    /// Per group, its record count.
    counts: Vec<u64>,
    /// Per group, `fields.len()` accumulators.
    accs: Vec<Acc>,
    // Per-batch and per-row scratch, reused.
    by_cols: Vec<Option<usize>>,
    field_cols: Vec<Option<usize>>,
    nums: Vec<Option<(Num, Option<Dec>)>>,
    key: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"PCNT";
const VERSION: u8 = 1;

fn put_names(out: &mut Vec<u8>, names: &[String]) {
    put_varint(out, names.len() as u64);
    for n in names {
        put_str(out, n);
    }
}

fn put_num(out: &mut Vec<u8>, n: Num) {
    match n {
        Num::Int(i) => {
            out.push(0);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Num::Float(f) => {
            out.push(1);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
    }
}

fn state_error(msg: impl std::fmt::Display) -> Error {
    Error::msg(format!("count state: {msg}"))
}

/// The parts of count's state format beyond the SDK's building blocks.
trait CountState {
    fn finite(&mut self) -> Result<f64, Error>;
    fn num(&mut self) -> Result<Num, Error>;
    fn acc(&mut self) -> Result<Acc, Error>;
}

impl CountState for StateReader<'_> {
    fn finite(&mut self) -> Result<f64, Error> {
        let f = f64::from_bits(u64::from_le_bytes(self.array()?));
        if f.is_finite() {
            Ok(f)
        } else {
            Err(state_error("a float is not finite"))
        }
    }

    fn num(&mut self) -> Result<Num, Error> {
        match self.u8()? {
            0 => Ok(Num::Int(i64::from_le_bytes(self.array()?))),
            1 => Ok(Num::Float(self.finite()?)),
            t => Err(state_error(format!("unknown number tag {t}"))),
        }
    }

    fn acc(&mut self) -> Result<Acc, Error> {
        let n = self.varint()?;
        let int_sum = i128::from_le_bytes(self.array()?);
        let float_sum = self.finite()?;
        let comp = self.finite()?;
        let flags = self.u8()?;
        let any_float = flags & 1 == 1;
        let scale = flags >> 1;
        if scale > pipe_expr::num::MAX_SCALE {
            return Err(state_error(format!("unknown flags {flags}")));
        }
        let min = self.num()?;
        let max = self.num()?;
        Ok(Acc {
            n,
            int_sum,
            scale,
            float_sum,
            comp,
            any_float,
            min,
            max,
        })
    }
}

fn kind_from_u8(b: u8) -> Option<Kind> {
    Some(match b {
        0 => Kind::Absent,
        1 => Kind::Null,
        2 => Kind::Bool,
        3 => Kind::Int,
        4 => Kind::Float,
        5 => Kind::Str,
        6 => Kind::Json,
        _ => return None,
    })
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// True when a group value read from state is one the writers can write as `kind`.
fn fits(field: &KeyField<'_>, kind: Kind) -> bool {
    match (field, kind) {
        (KeyField::Absent, Kind::Absent) | (KeyField::Null, Kind::Null) => true,
        (KeyField::Text(t), Kind::Bool) => *t == "true" || *t == "false",
        (KeyField::Text(t), Kind::Int) => t.parse::<i64>().is_ok(),
        // Any JSON number: the readers keep out-of-range ones like `1e400` as floats.
        (KeyField::Text(t), Kind::Float) => {
            t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) && is_json(t)
        }
        (KeyField::Text(_), Kind::Str) => true,
        (KeyField::Text(t), Kind::Json) => t.starts_with(['{', '[']) && is_json(t),
        _ => false,
    }
}

/// Column `col` of `row`, absent when the input has no such column.
fn raw<'a>(row: &Row<'a>, col: Option<usize>) -> (Kind, &'a str) {
    match col {
        Some(c) => row.raw(c),
        None => (Kind::Absent, ""),
    }
}

/// A value for a reject reason, cut to 60 characters, and the mark to show it was cut.
fn shown(text: &str) -> (&str, &str) {
    match text.char_indices().nth(60) {
        Some((i, _)) => (&text[..i], "…"),
        None => (text, ""),
    }
}

impl Count {
    /// The group for the key in `self.key`, created with `kinds` when new.
    fn group_for(&mut self, kinds: impl Iterator<Item = Kind>) -> usize {
        if let Some(&g) = self.index.get(self.key.as_slice()) {
            return g;
        }
        let g = self.counts.len();
        self.index.insert(self.key.as_slice().into(), g);
        self.kinds.extend(kinds);
        self.counts.push(0);
        self.accs
            .resize(self.accs.len() + self.fields.len(), Acc::default());
        g
    }
}

impl Stage for Count {
    type Config = CountConfig;

    fn new(config: CountConfig) -> Result<Self, Error> {
        let lists = [
            ("by", &config.by),
            ("sum", &config.sum),
            ("min", &config.min),
            ("max", &config.max),
            ("avg", &config.avg),
        ];
        for (key, list) in lists {
            for (i, name) in list.iter().enumerate() {
                if name.is_empty() {
                    return Err(Error::msg(format!(
                        "bad config at `{key}`: field names cannot be empty"
                    )));
                }
                if list[..i].contains(name) {
                    return Err(Error::msg(format!(
                        "bad config at `{key}`: `{name}` is listed twice"
                    )));
                }
            }
        }
        let mut fields: Vec<String> = Vec::new();
        let mut outputs = Vec::new();
        let mut names: Vec<String> = config.by.clone();
        let mut origin: Vec<&str> = vec!["by"; names.len()];
        names.push("count".into());
        origin.push("count");
        for ((agg, prefix), list) in Agg::ALL.into_iter().zip(&lists[1..]) {
            for f in list.1 {
                let i = match fields.iter().position(|x| x == f) {
                    Some(i) => i,
                    None => {
                        fields.push(f.clone());
                        fields.len() - 1
                    }
                };
                outputs.push((agg, i));
                names.push(format!("{prefix}_{f}"));
                origin.push(prefix);
            }
        }
        let mut seen = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            if !seen.insert(name.as_str()) {
                let first = names.iter().position(|n| n == name).unwrap_or(0);
                let (a, b) = (origin[first], origin[i]);
                let key = if b == "count" { a } else { b };
                return Err(Error::msg(format!(
                    "bad config at `{key}`: two output columns would be named `{name}` \
                     (from `{a}` and `{b}`); rename the input field with a `select` stage first"
                )));
            }
        }
        Ok(Count {
            by: config.by,
            fields,
            outputs,
            names,
            index: HashMap::new(),
            kinds: Vec::new(),
            counts: Vec::new(),
            accs: Vec::new(),
            by_cols: Vec::new(),
            field_cols: Vec::new(),
            nums: Vec::new(),
            key: Vec::new(),
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        self.by_cols.clear();
        self.by_cols.extend(self.by.iter().map(|f| input.column(f)));
        self.field_cols.clear();
        self.field_cols
            .extend(self.fields.iter().map(|f| input.column(f)));
        'rows: for row in input.rows() {
            self.nums.clear();
            for (i, &col) in self.field_cols.iter().enumerate() {
                let (kind, text) = raw(&row, col);
                match read_number(kind, text) {
                    Cell::Missing => self.nums.push(None),
                    Cell::Num(n, exact) => self.nums.push(Some((n, exact))),
                    Cell::NotANumber => {
                        let (value, cut) = shown(text);
                        let field = &self.fields[i];
                        out.reject(
                            row,
                            format_args!("field `{field}`: expected a number, got `{value}{cut}`"),
                        );
                        continue 'rows;
                    }
                }
            }
            self.key.clear();
            for &col in &self.by_cols {
                let (kind, text) = raw(&row, col);
                put_key_field(&mut self.key, kind, text);
            }
            let by_cols = std::mem::take(&mut self.by_cols);
            let g = self.group_for(by_cols.iter().map(|&c| raw(&row, c).0));
            self.by_cols = by_cols;
            self.counts[g] += 1;
            let accs = &mut self.accs[g * self.fields.len()..(g + 1) * self.fields.len()];
            for (acc, n) in accs.iter_mut().zip(&self.nums) {
                if let Some((n, exact)) = n {
                    acc.add(*n, *exact);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.by.is_empty() && self.counts.is_empty() {
            // A grand total of nothing is a count of 0, as in SQL.
            self.key.clear();
            self.group_for(std::iter::empty());
        }
        out.columns(&self.names);
        let mut keys: Vec<&[u8]> = vec![&[]; self.counts.len()];
        for (k, &g) in &self.index {
            keys[g] = k;
        }
        let (nb, nf) = (self.by.len(), self.fields.len());
        for (g, key) in keys.iter().enumerate() {
            let mut w = out.new_row();
            let mut r = StateReader::new(key, "count");
            for &kind in &self.kinds[g * nb..(g + 1) * nb] {
                match r.key_field()? {
                    KeyField::Absent => w.raw(Kind::Absent, ""),
                    KeyField::Null => w.raw(Kind::Null, ""),
                    KeyField::Text(t) => w.raw(kind, t),
                };
            }
            w.value(Value::Int(
                i64::try_from(self.counts[g]).unwrap_or(i64::MAX),
            ));
            for &(agg, f) in &self.outputs {
                self.accs[g * nf + f].output(agg, &mut w);
            }
        }
        Ok(())
    }

    fn export_state(&self) -> Result<Option<Vec<u8>>, Error> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_names(&mut out, &self.by);
        put_names(&mut out, &self.fields);
        let mut keys: Vec<&[u8]> = vec![&[]; self.counts.len()];
        for (k, &g) in &self.index {
            keys[g] = k;
        }
        put_varint(&mut out, keys.len() as u64);
        let (nb, nf) = (self.by.len(), self.fields.len());
        for (g, key) in keys.iter().enumerate() {
            put_bytes(&mut out, key);
            out.extend(self.kinds[g * nb..(g + 1) * nb].iter().map(|&k| k as u8));
            put_varint(&mut out, self.counts[g]);
            for a in &self.accs[g * nf..(g + 1) * nf] {
                put_varint(&mut out, a.n);
                out.extend_from_slice(&a.int_sum.to_le_bytes());
                out.extend_from_slice(&a.float_sum.to_bits().to_le_bytes());
                out.extend_from_slice(&a.comp.to_bits().to_le_bytes());
                out.push(u8::from(a.any_float) | (a.scale << 1));
                put_num(&mut out, a.min);
                put_num(&mut out, a.max);
            }
        }
        Ok(Some(out))
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), Error> {
        if state.len() < 5 || &state[..4] != MAGIC {
            return Err(state_error("not a count state (bad magic)"));
        }
        if state[4] != VERSION {
            return Err(state_error(format!(
                "version {} is not supported (this is version {VERSION})",
                state[4]
            )));
        }
        let mut r = StateReader::new(&state[5..], "count");
        let by = r.strs()?;
        if !by.iter().eq(self.by.iter()) {
            return Err(state_error(format!(
                "it groups by {by:?}, but this stage groups by {:?}; the groups cannot \
                 carry over",
                self.by
            )));
        }
        let fields = r.strs()?;
        let mut from = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            match fields.iter().position(|s| s == f) {
                Some(i) => from.push(i),
                None => {
                    return Err(state_error(format!(
                        "it has no aggregates of `{f}`, which this stage aggregates"
                    )))
                }
            }
        }
        // Decode everything before touching `self`, so a bad state changes nothing.
        let n_groups = r.varint()?;
        let (nb, nf) = (by.len(), fields.len());
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut kinds = Vec::new();
        let mut counts = Vec::new();
        let mut accs = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..n_groups {
            let key = r.len_bytes()?;
            let mut kr = StateReader::new(key, "count");
            for _ in 0..nb {
                let field = kr.key_field()?;
                let kind = kind_from_u8(r.u8()?).ok_or_else(|| state_error("unknown kind"))?;
                if !fits(&field, kind) {
                    return Err(state_error("a group value does not match its kind"));
                }
                kinds.push(kind);
            }
            if kr.rest() != 0 || !seen.insert(key) {
                return Err(state_error("a group key is malformed"));
            }
            keys.push(key);
            let count = r.varint()?;
            counts.push(count);
            for _ in 0..nf {
                let acc = r.acc()?;
                if acc.n > count {
                    return Err(state_error("an aggregate has more values than records"));
                }
                accs.push(acc);
            }
        }
        r.finish()?;
        for (g, key) in keys.iter().enumerate() {
            self.key.clear();
            self.key.extend_from_slice(key);
            let mine = self.group_for(kinds[g * nb..(g + 1) * nb].iter().copied());
            self.counts[mine] += counts[g];
            let base = mine * self.fields.len();
            for (i, &j) in from.iter().enumerate() {
                self.accs[base + i].merge(&accs[g * nf + j]);
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Count,
    name = "count",
    description = "groups records and emits count, sum, min, max and avg per group at the end",
    stateful = true
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::abi::StageBox;
    use pipe_sdk::codec::Format;
    use pipe_sdk::parse_config;
    use pipe_sdk::testing::{self, instance, run, run_csv, run_instance, run_jsonl};
    use serde_json::json;

    const ORDERS: &str = "id,country,amount\n\
                          1,FR,10\n\
                          2,DE,20.5\n\
                          3,FR,5\n\
                          4,US,\n\
                          5,DE,1\n\
                          6,FR,7\n";

    fn config_error(config: serde_json::Value) -> String {
        match instance::<Count>(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.message.to_string(),
        }
    }

    fn count(config: serde_json::Value) -> Count {
        Count::new(parse_config(&config.to_string()).unwrap()).unwrap()
    }

    fn export(stage: &StageBox) -> Vec<u8> {
        testing::export_state(stage).unwrap().unwrap()
    }

    #[test]
    fn groups_in_first_seen_order_with_all_aggregates() {
        let config = json!({"by": ["country"], "sum": ["amount"], "min": ["amount"],
                            "max": ["amount"], "avg": ["amount"]});
        let out = run_csv::<Count>(config, ORDERS).unwrap();
        assert_eq!(
            out.csv(),
            "country,count,sum_amount,min_amount,max_amount,avg_amount\n\
             FR,3,22,5,10,7.333333333333333\n\
             DE,2,21.5,1,20.5,10.75\n\
             US,1,,,,\n"
        );
        // Emitted rows stand for no input line.
        assert!(out
            .batches
            .iter()
            .all(|b| b.rows().all(|r| r.pos().line == 0)));
    }

    #[test]
    fn grand_total_and_empty_input() {
        let out = run_csv::<Count>(json!({"sum": ["amount"]}), ORDERS).unwrap();
        assert_eq!(out.csv(), "count,sum_amount\n6,43.5\n");
        let out = run_csv::<Count>(json!({"sum": ["amount"]}), "id,amount\n").unwrap();
        assert_eq!(out.csv(), "count,sum_amount\n0,\n");
        let out = run_csv::<Count>(json!({"by": ["country"]}), "country\n").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn multi_batch_runs_match_one_batch() {
        let config = json!({"by": ["country"], "sum": ["amount"], "avg": ["amount"]});
        let whole = run_csv::<Count>(config.clone(), ORDERS).unwrap().csv();
        for size in [1, 2, 4] {
            let out = run::<Count>(config.clone(), Format::Csv, ORDERS, size).unwrap();
            assert_eq!(out.csv(), whole, "batch size {size}");
        }
    }

    #[test]
    fn jsonl_int_sums_stay_ints_and_group_values_keep_their_type() {
        let input = "{\"code\":33,\"n\":2,\"x\":1}\n\
                     {\"code\":49,\"n\":3,\"x\":1.5}\n\
                     {\"code\":\"33\",\"n\":\"4\",\"x\":null}\n\
                     {\"n\":1}\n\
                     {\"code\":null,\"n\":1}\n";
        let out = run_jsonl::<Count>(
            json!({"by": ["code"], "sum": ["n", "x"], "max": ["x"]}),
            input,
        )
        .unwrap();
        assert_eq!(
            out.jsonl(),
            "{\"code\":33,\"count\":2,\"sum_n\":6,\"sum_x\":1,\"max_x\":1}\n\
             {\"code\":49,\"count\":1,\"sum_n\":3,\"sum_x\":1.5,\"max_x\":1.5}\n\
             {\"count\":1,\"sum_n\":1,\"sum_x\":null,\"max_x\":null}\n\
             {\"code\":null,\"count\":1,\"sum_n\":1,\"sum_x\":null,\"max_x\":null}\n"
        );
    }

    #[test]
    fn non_numbers_reject_the_record_which_is_not_counted() {
        let input = "country,amount\nFR,10\nFR,12;5\nDE,abc\nFR,nan\nFR, 3 \nDE,\n";
        let out = run_csv::<Count>(json!({"by": ["country"], "sum": ["amount"]}), input);
        let out = out.unwrap();
        assert_eq!(out.csv(), "country,count,sum_amount\nFR,2,13\nDE,1,\n");
        let reasons: Vec<(u64, &str)> = out
            .rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "field `amount`: expected a number, got `12;5`"),
                (4, "field `amount`: expected a number, got `abc`"),
                (5, "field `amount`: expected a number, got `nan`"),
            ]
        );
        let out = run_jsonl::<Count>(
            json!({"sum": ["a"]}),
            "{\"a\":true}\n{\"a\":[1]}\n{\"a\":1}\n",
        );
        let out = out.unwrap();
        assert_eq!(out.jsonl(), "{\"count\":1,\"sum_a\":1}\n");
        assert_eq!(out.rejects.len(), 2);
    }

    #[test]
    fn sums_are_compensated_and_overflow_to_float() {
        let tenths = format!("x\n{}", "0.1\n".repeat(10));
        let out = run_csv::<Count>(json!({"sum": ["x"], "avg": ["x"]}), &tenths).unwrap();
        assert_eq!(out.csv(), "count,sum_x,avg_x\n10,1,0.1\n");
        let big = format!("x\n{}\n{}\n", i64::MAX, i64::MAX);
        let out = run_csv::<Count>(json!({"sum": ["x"], "min": ["x"]}), &big).unwrap();
        assert_eq!(
            out.csv(),
            "count,sum_x,min_x\n2,1.8446744073709552e19,9223372036854775807\n"
        );
    }

    #[test]
    fn missing_by_field_groups_as_absent() {
        let out = run_csv::<Count>(json!({"by": ["nope"]}), ORDERS).unwrap();
        assert_eq!(out.csv(), "nope,count\n,6\n");
    }

    #[test]
    fn state_survives_a_swap_and_matches_one_run() {
        let config = json!({"by": ["country"], "sum": ["amount"], "min": ["amount"]});
        let whole = run_csv::<Count>(config.clone(), ORDERS).unwrap().csv();
        let (head, tail) = ORDERS.split_at(ORDERS.find("3,FR").unwrap());
        let mut old = instance::<Count>(config.clone()).unwrap();
        let first = run_instance(&mut old, Format::Csv, head, 2);
        assert!(first.is_ok());
        // run_instance ends with finish; a host swap would not, but the state is the same.
        let state = export(&old);
        assert!(state.starts_with(b"PCNT\x01"));

        // The new version may aggregate the same fields differently.
        let mut new = instance::<Count>(
            json!({"by": ["country"], "sum": ["amount"], "min": ["amount"], "max": ["amount"]}),
        )
        .unwrap();
        testing::import_state(&mut new, &state).unwrap();
        let rest = format!("id,country,amount\n{tail}");
        let second = run_instance(&mut new, Format::Csv, &rest, 2).unwrap();
        assert_eq!(
            second.csv(),
            "country,count,sum_amount,min_amount,max_amount\n\
             FR,3,22,5,10\nDE,2,21.5,1,20.5\nUS,1,,,\n"
        );
        assert_eq!(
            whole,
            "country,count,sum_amount,min_amount\nFR,3,22,5\nDE,2,21.5,1\nUS,1,,\n"
        );
    }

    #[test]
    fn state_round_trips_kinds_and_every_accumulator() {
        let config = json!({"by": ["k", "j"], "sum": ["x"], "avg": ["y"]});
        let mut batch = Batch::with_columns(["k", "j", "x", "y"]);
        let rows = [
            [
                (Kind::Int, "1"),
                (Kind::Json, "{\"a\":[1]}"),
                (Kind::Float, "1.25"),
                (Kind::Int, "2"),
            ],
            [
                (Kind::Bool, "true"),
                (Kind::Absent, ""),
                (Kind::Int, "-3"),
                (Kind::Absent, ""),
            ],
            [
                (Kind::Null, ""),
                (Kind::Str, "s"),
                (Kind::Absent, ""),
                (Kind::Float, "1e300"),
            ],
            [
                (Kind::Float, "1e400"),
                (Kind::Json, "[]"),
                (Kind::Str, " "),
                (Kind::Str, "-0"),
            ],
        ];
        for row in rows {
            batch.start_row(Default::default());
            for (kind, text) in row {
                batch.push_raw(kind, text);
            }
            batch.end_row().unwrap();
        }
        let mut a = count(config.clone());
        let mut out = pipe_sdk::Output::new();
        a.process(&batch, &mut out).unwrap();
        let state = a.export_state().unwrap().unwrap();
        let mut b = count(config);
        b.import_state(&state).unwrap();
        assert_eq!(b.kinds, a.kinds);
        assert_eq!(b.counts, a.counts);
        assert_eq!(b.accs, a.accs);
        assert_eq!(b.export_state().unwrap().unwrap(), state);
        let (mut fa, mut fb) = (pipe_sdk::Output::new(), pipe_sdk::Output::new());
        a.finish(&mut fa).unwrap();
        b.finish(&mut fb).unwrap();
        assert_eq!(format!("{:?}", fa.batch()), format!("{:?}", fb.batch()));
    }

    #[test]
    fn import_refuses_other_configs_and_garbage() {
        let config = json!({"by": ["c"], "sum": ["x"]});
        let mut a = count(config.clone());
        let batch = {
            let mut b = Batch::with_columns(["c", "x"]);
            for (c, x) in [("FR", "1"), ("DE", "2.5"), ("FR", "")] {
                b.start_row(Default::default());
                b.push_str(c);
                b.push_str(x);
                b.end_row().unwrap();
            }
            b
        };
        a.process(&batch, &mut pipe_sdk::Output::new()).unwrap();
        let state = a.export_state().unwrap().unwrap();
        assert!(count(config.clone()).import_state(&state).is_ok());

        let err = |c: serde_json::Value, bytes: &[u8]| {
            count(c)
                .import_state(bytes)
                .unwrap_err()
                .message()
                .to_owned()
        };
        assert_eq!(
            err(json!({"by": ["d"], "sum": ["x"]}), &state),
            "count state: it groups by [\"c\"], but this stage groups by [\"d\"]; the groups \
             cannot carry over"
        );
        assert_eq!(
            err(json!({"by": ["c"], "sum": ["x"], "avg": ["y"]}), &state),
            "count state: it has no aggregates of `y`, which this stage aggregates"
        );
        assert_eq!(
            err(config.clone(), b"junk"),
            "count state: not a count state (bad magic)"
        );
        assert_eq!(
            err(config.clone(), b"PCNT\x07"),
            "count state: version 7 is not supported (this is version 1)"
        );
        let mut long = state.clone();
        long.push(9);
        assert_eq!(
            err(config.clone(), &long),
            "count state: 1 unexpected bytes at the end"
        );
        for n in 0..state.len() {
            assert!(
                count(config.clone()).import_state(&state[..n]).is_err(),
                "{n}"
            );
        }
        // Corrupt every byte in turn, and feed random bytes: errors or a valid state,
        // never a panic; a failed import leaves the stage empty.
        for i in 0..state.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bytes = state.clone();
                bytes[i] ^= flip;
                let mut c = count(config.clone());
                if c.import_state(&bytes).is_err() {
                    assert!(c.counts.is_empty() && c.index.is_empty());
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let mut bytes = b"PCNT\x01\x01\x01c\x01\x01x".to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let _ = count(config.clone()).import_state(&bytes);
        }
    }

    #[test]
    fn import_merges_into_a_stage_that_already_counted() {
        let config = json!({"by": ["c"], "sum": ["x"], "min": ["x"], "max": ["x"]});
        let mut batch = Batch::with_columns(["c", "x"]);
        for (c, x) in [("FR", "1"), ("DE", "2.5")] {
            batch.start_row(Default::default());
            batch.push_str(c);
            batch.push_str(x);
            batch.end_row().unwrap();
        }
        let mut a = count(config.clone());
        a.process(&batch, &mut pipe_sdk::Output::new()).unwrap();
        let mut b = count(config);
        b.process(&batch, &mut pipe_sdk::Output::new()).unwrap();
        b.import_state(&a.export_state().unwrap().unwrap()).unwrap();
        let mut out = pipe_sdk::Output::new();
        b.finish(&mut out).unwrap();
        assert_eq!(
            format!("{:?}", out.batch()),
            "[{\"c\": Str(\"FR\"), \"count\": Int(2), \"sum_x\": Int(2), \"min_x\": Int(1), \
             \"max_x\": Int(1)}, {\"c\": Str(\"DE\"), \"count\": Int(2), \"sum_x\": Float(5.0), \
             \"min_x\": Float(2.5), \"max_x\": Float(2.5)}]"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert_eq!(
            config_error(json!({"by": ["count"]})),
            "bad config at `by`: two output columns would be named `count` (from `by` and \
             `count`); rename the input field with a `select` stage first"
        );
        assert_eq!(
            config_error(json!({"by": ["sum_a"], "sum": ["a"]})),
            "bad config at `sum`: two output columns would be named `sum_a` (from `by` and \
             `sum`); rename the input field with a `select` stage first"
        );
        assert_eq!(
            config_error(json!({"sum": ["a", "a"]})),
            "bad config at `sum`: `a` is listed twice"
        );
        assert_eq!(
            config_error(json!({"avg": [""]})),
            "bad config at `avg`: field names cannot be empty"
        );
        assert!(config_error(json!({"by": "country"})).starts_with("bad config at `by`"));
        assert!(config_error(json!({"mean": ["a"]})).contains("mean"));
    }
}
