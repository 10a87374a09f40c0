//! The WASM batch ABI, version 1: how `pipe` and a WebAssembly stage exchange batches,
//! and its codec, shared by both sides (the host decodes replies with it, the Rust guest
//! glue of [`export_stage!`](crate::export_stage) encodes them with it), so the two
//! cannot drift apart. Any language that compiles to `wasm32` and can export functions
//! can implement it; `tests/wasm/*.wat` is a guest written by hand.
//!
//! # Why a batch ABI
//!
//! A call into a WASM instance costs little, but copying into and out of its memory is
//! where per-record designs lose (Vector dropped its WASM transform over per-event
//! serialisation). Here the host writes a whole batch into the guest's memory in one
//! pass, calls `pipe_process` once, and reads one reply. Rows the guest passes through
//! unchanged come back as indexes only: the host keeps its own copy of them.
//!
//! # Module shape
//!
//! Imports (module `pipe`; nothing else is provided, in particular no WASI):
//!
//! | import | signature | meaning |
//! |---|---|---|
//! | `log` | `(ptr: i32, len: i32)` | UTF-8 text, shown on the host's stderr as `[stage] text` |
//! | `panic` | `(ptr: i32, len: i32)` | optional: the message of a panic about to trap; the host reports the trap with it |
//!
//! Exports:
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the guest's linear memory |
//! | `pipe_alloc` | `(len: i32) -> i32` | a buffer of `len` bytes the host fills for the next call; 0 if it cannot |
//! | `pipe_manifest` | `() -> i64` | JSON `{"abi":1,"name":..,"version":..,"description":..,"stateful":bool,"sdk_version":..}` |
//! | `pipe_new` | `(ptr: i32, len: i32) -> i64` | creates the stage from its config (JSON) → status reply |
//! | `pipe_process` | `(ptr: i32, len: i32) -> i64` | one batch (below) → process reply |
//! | `pipe_finish` | `() -> i64` | end of stream → process reply with no kept rows and no rejects |
//! | `pipe_export_state` | `() -> i64` | → status reply whose payload is `u32 has_state` then the state bytes |
//! | `pipe_import_state` | `(ptr: i32, len: i32) -> i64` | the previous version's state → status reply |
//!
//! A `-> i64` result locates the reply in guest memory: pointer in the high 32 bits,
//! length in the low 32 bits. The reply must stay untouched until the next call into the
//! guest. The host calls `pipe_alloc` right before each call that takes `(ptr, len)` and
//! passes back exactly the pointer it got. One instance holds one stage: `pipe_new` is
//! called once, first.
//!
//! # Encodings
//!
//! Integers are little-endian `u32` ("words") unless said otherwise; there is no padding.
//!
//! **Batch**: header `rows, cols, names_len, data_len`; then `rows × cols` cells of three
//! words `start, len, kind` (a byte range of `data` and a [`Kind`] number 0–6); then `rows`
//! positions of three words `input, line_low, line_high` (a 64-bit line); then the
//! `names_len` bytes of the column names, each a word length followed by UTF-8 bytes; then
//! the `data_len` bytes of the arena. Every cell is UTF-8 text on character boundaries.
//!
//! **Status reply**: word `status` (0 ok, 1 error), then the payload: for an error, the
//! message as UTF-8 (the rest of the reply).
//!
//! **Process reply**: word `status`; for an error, the message as above (the host applies
//! the stage's `on_error` to the whole batch). For ok: words `kept, rejects, reasons_len`;
//! `kept` words, each the index of an input row passed on unchanged (they come first in
//! the output, in this order); `rejects` pairs of words `row, reason_len`; the
//! `reasons_len` bytes of the reasons back to back; then the output rows as a batch (its
//! column names are the output's; with kept rows it must be as wide as the input).
//!
//! The host checks every count, range, index, kind and UTF-8 boundary of a reply: a reply
//! that breaks any rule is a failed batch ([`AbiError`]), never a host crash.

use std::fmt;

use crate::batch::{Batch, Cell, Kind, Pos};
use crate::output::{Output, Reject};
#[cfg(target_arch = "wasm32")]
use crate::std_types::CopySlice;
use crate::std_types::RString;

/// The version of this SDK, as a WASM stage's manifest records it.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ABI version in `pipe_manifest`'s `abi` key.
pub const ABI_VERSION: u32 = 1;

/// Status word of a reply: success.
pub const STATUS_OK: u32 = 0;
/// Status word of a reply: the stage refused (config, batch or state); a message follows.
pub const STATUS_ERROR: u32 = 1;

/// The module name of the host's imports.
pub const IMPORT_MODULE: &str = "pipe";

/// Words in a batch header.
const BATCH_HEADER: usize = 4;
/// Words per cell and per position.
const CELL_WORDS: usize = 3;

/// A batch or reply that breaks the ABI: what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiError(String);

impl AbiError {
    fn new(what: impl Into<String>) -> AbiError {
        AbiError(what.into())
    }
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AbiError {}

/// Packs a reply's location into the `i64` an export returns.
pub fn pack(ptr: u32, len: u32) -> u64 {
    (u64::from(ptr) << 32) | u64::from(len)
}

/// The `(ptr, len)` of a packed reply location.
pub fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

fn put(out: &mut Vec<u8>, w: u32) {
    out.extend_from_slice(&w.to_le_bytes());
}

fn u32_of(n: usize, what: &str) -> Result<u32, AbiError> {
    u32::try_from(n).map_err(|_| AbiError::new(format!("{what} does not fit 32 bits")))
}

/// The exact size of [`encode_batch`]'s output, so that the host can ask the guest for a
/// buffer of that size and write the batch straight into it.
pub fn encoded_batch_len(batch: &Batch) -> usize {
    let cells = batch.len() * batch.width();
    let names: usize = batch.columns().map(|n| 4 + n.len()).sum();
    4 * BATCH_HEADER + 4 * CELL_WORDS * (cells + batch.len()) + names + batch.data_len()
}

/// Appends `batch`'s encoding to `out`.
pub fn encode_batch(batch: &Batch, out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + encoded_batch_len(batch), 0);
    fill_batch(batch, &mut out[at..]);
}

/// Writes `batch`'s encoding into `dst`, which must be exactly
/// [`encoded_batch_len`] bytes (the host writes straight into guest memory this way).
pub fn write_batch(batch: &Batch, dst: &mut [u8]) -> Result<(), AbiError> {
    if dst.len() != encoded_batch_len(batch) {
        return Err(AbiError::new("the batch buffer has the wrong size"));
    }
    u32_of(dst.len(), "the batch")?;
    fill_batch(batch, dst);
    Ok(())
}

fn set(dst: &mut [u8], words: &[u32]) {
    for (d, w) in dst.chunks_exact_mut(4).zip(words) {
        d.copy_from_slice(&w.to_le_bytes());
    }
}

/// Fills `dst` (exactly [`encoded_batch_len`] bytes) with `batch`'s encoding. The hot
/// loops write whole cells into fixed-size chunks: this runs once per cell on both sides
/// of every call, and per-word bounds checks showed in the WASM bench.
fn fill_batch(batch: &Batch, dst: &mut [u8]) {
    let names: usize = batch.columns().map(|n| 4 + n.len()).sum();
    let ncells = batch.cells.len();
    let rows = batch.pos.len();
    // Sizes beyond 4 GiB cannot reach a 32-bit guest: `write_batch` checks the total.
    let (header, rest) = dst.split_at_mut(4 * BATCH_HEADER);
    set(
        header,
        &[
            rows as u32,
            batch.width() as u32,
            names as u32,
            batch.data_len() as u32,
        ],
    );
    let (cells, rest) = rest.split_at_mut(4 * CELL_WORDS * ncells);
    for (d, c) in cells.chunks_exact_mut(12).zip(batch.cells.iter()) {
        set(d, &[c.start, c.len, c.kind as u32]);
    }
    let (pos, rest) = rest.split_at_mut(4 * CELL_WORDS * rows);
    for (d, p) in pos.chunks_exact_mut(12).zip(batch.pos.iter()) {
        set(d, &[p.input, p.line as u32, (p.line >> 32) as u32]);
    }
    let (mut name_bytes, data) = rest.split_at_mut(names);
    for n in batch.columns() {
        let (len, tail) = name_bytes.split_at_mut(4);
        len.copy_from_slice(&(n.len() as u32).to_le_bytes());
        let (text, tail) = tail.split_at_mut(n.len());
        text.copy_from_slice(n.as_bytes());
        name_bytes = tail;
    }
    data.copy_from_slice(&batch.data);
}

/// A bounds-checked reader over a buffer that came from the other side.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], AbiError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                AbiError::new(format!(
                    "{what} runs past the end of the {} bytes given",
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn word(&mut self, what: &str) -> Result<u32, AbiError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `count` items of `words` words each, as one slice.
    fn words(&mut self, count: usize, words: usize, what: &str) -> Result<&'a [u8], AbiError> {
        let n = count
            .checked_mul(words * 4)
            .ok_or_else(|| AbiError::new(format!("{what}: count too large")))?;
        self.take(n, what)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }
}

fn word_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

fn kind_of(k: u32) -> Option<Kind> {
    Some(match k {
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

/// Whether the text is checked as UTF-8 while decoding: always for what a guest sends the
/// host; a guest may trust the host's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Check everything (the host reading a guest's reply).
    Full,
    /// Check counts, ranges and kinds, but take the text as valid UTF-8 (a guest reading
    /// the host's batch: the host's batches are built from `&str`).
    TrustText,
}

/// Decodes one batch from `r` into `batch` (its rows and columns replaced; its buffers
/// reused).
fn decode_batch_from(r: &mut Reader<'_>, batch: &mut Batch, check: Check) -> Result<(), AbiError> {
    let rows = r.word("the batch header")? as usize;
    let cols = r.word("the batch header")? as usize;
    let names_len = r.word("the batch header")? as usize;
    let data_len = r.word("the batch header")? as usize;
    let ncells = rows
        .checked_mul(cols)
        .ok_or_else(|| AbiError::new("rows × columns overflows"))?;
    let cells = r.words(ncells, CELL_WORDS, "the cells")?;
    let pos = r.words(rows, CELL_WORDS, "the row positions")?;
    let names = r.take(names_len, "the column names")?;
    let data = r.take(data_len, "the batch's text")?;

    // Names: small, always checked.
    let mut nr = Reader::new(names);
    batch.names.clear();
    for c in 0..cols {
        let len = nr.word("a column name")? as usize;
        let name = nr.take(len, "a column name")?;
        let name = std::str::from_utf8(name)
            .map_err(|_| AbiError::new(format!("column {c}'s name is not UTF-8")))?;
        batch.names.push(RString::from(name));
    }
    if nr.at != names.len() {
        return Err(AbiError::new(
            "the column names section is longer than its names",
        ));
    }

    let text = match check {
        Check::Full => Some(
            std::str::from_utf8(data)
                .map_err(|e| AbiError::new(format!("the batch's text is not UTF-8: {e}")))?,
        ),
        Check::TrustText => None,
    };
    // Sized once and filled in place: a push per cell (an `RVec`'s in the host) cost
    // more than the rest of the decoding.
    let blank = Cell {
        start: 0,
        len: 0,
        kind: Kind::Absent,
    };
    batch.cells.clear();
    batch.cells.resize(ncells, blank);
    let width = cols.max(1);
    for (i, (slot, ch)) in batch
        .cells
        .iter_mut()
        .zip(cells.chunks_exact(12))
        .enumerate()
    {
        let start = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        let len = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        let kind = u32::from_le_bytes([ch[8], ch[9], ch[10], ch[11]]);
        // In u64: on wasm32 a usize sum of two u32s could wrap past the check.
        let end64 = u64::from(start) + u64::from(len);
        if end64 > data_len as u64 {
            return Err(AbiError::new(format!(
                "cell {} of row {} points past the text ({start}+{len} > {data_len})",
                i % width,
                i / width
            )));
        }
        let end = end64 as usize;
        if let Some(t) = text {
            if !t.is_char_boundary(start as usize) || !t.is_char_boundary(end) {
                return Err(AbiError::new(format!(
                    "cell {} of row {} cuts a UTF-8 character",
                    i % width,
                    i / width
                )));
            }
        }
        let Some(kind) = kind_of(kind) else {
            return Err(AbiError::new(format!(
                "cell {} has an unknown kind {kind}",
                i % width
            )));
        };
        *slot = Cell { start, len, kind };
    }
    batch.pos.clear();
    batch.pos.resize(rows, Pos::default());
    for (slot, ch) in batch.pos.iter_mut().zip(pos.chunks_exact(12)) {
        let w = |i: usize| u32::from_le_bytes([ch[i], ch[i + 1], ch[i + 2], ch[i + 3]]);
        *slot = Pos {
            input: w(0),
            line: u64::from(w(4)) | (u64::from(w(8)) << 32),
        };
    }
    batch.data.clear();
    batch.data.extend_from_copy_slice(data);
    batch.open = 0;
    Ok(())
}

/// Decodes a batch made by [`encode_batch`] into `batch`, reusing its buffers.
pub fn decode_batch(bytes: &[u8], batch: &mut Batch, check: Check) -> Result<(), AbiError> {
    let mut r = Reader::new(bytes);
    decode_batch_from(&mut r, batch, check)?;
    if r.at != bytes.len() {
        return Err(AbiError::new("bytes left over after the batch"));
    }
    Ok(())
}

/// Appends a status reply: ok with `payload`, or an error with its message.
pub fn encode_status(result: Result<&[u8], &str>, out: &mut Vec<u8>) {
    match result {
        Ok(payload) => {
            put(out, STATUS_OK);
            out.extend_from_slice(payload);
        }
        Err(message) => {
            put(out, STATUS_ERROR);
            out.extend_from_slice(message.as_bytes());
        }
    }
}

/// Reads a status reply: `Ok(Ok(payload))`, `Ok(Err(message))` for a refusal, or `Err`
/// when the reply is malformed.
pub fn decode_status(bytes: &[u8]) -> Result<Result<&[u8], String>, AbiError> {
    let mut r = Reader::new(bytes);
    match r.word("the reply's status")? {
        STATUS_OK => Ok(Ok(r.rest())),
        STATUS_ERROR => Ok(Err(String::from_utf8_lossy(r.rest()).into_owned())),
        s => Err(AbiError::new(format!("unknown reply status {s}"))),
    }
}

/// Appends the process reply for `out` (an ok reply).
pub fn encode_output(out: &Output, buf: &mut Vec<u8>) {
    put(buf, STATUS_OK);
    put(buf, out.kept.len() as u32);
    put(buf, out.rejects.len() as u32);
    let reasons: usize = out.rejects.iter().map(|r| r.reason.len()).sum();
    put(buf, reasons as u32);
    for &k in out.kept.iter() {
        put(buf, k);
    }
    for r in out.rejects.iter() {
        put(buf, r.row);
        put(buf, r.reason.len() as u32);
    }
    for r in out.rejects.iter() {
        buf.extend_from_slice(r.reason.as_bytes());
    }
    encode_batch(&out.batch, buf);
}

/// Decodes a process reply into `out` (which the host has cleared). `input` is the batch
/// the guest was given, `None` at the end of the stream (no rows to keep or reject then).
/// `Ok(Err(message))` is the stage's own error for the whole batch; `Err` a malformed reply.
pub fn decode_output(
    bytes: &[u8],
    input: Option<&Batch>,
    out: &mut Output,
) -> Result<Result<(), String>, AbiError> {
    let mut r = Reader::new(bytes);
    match r.word("the reply's status")? {
        STATUS_OK => {}
        STATUS_ERROR => return Ok(Err(String::from_utf8_lossy(r.rest()).into_owned())),
        s => return Err(AbiError::new(format!("unknown reply status {s}"))),
    }
    let kept = r.word("the reply header")? as usize;
    let rejects = r.word("the reply header")? as usize;
    let reasons_len = r.word("the reply header")? as usize;
    let kept_rows = r.words(kept, 1, "the kept rows")?;
    let reject_rows = r.words(rejects, 2, "the rejects")?;
    let reasons = r.take(reasons_len, "the reject reasons")?;
    decode_batch_from(&mut r, &mut out.batch, Check::Full)?;
    if r.at != bytes.len() {
        return Err(AbiError::new("bytes left over after the reply"));
    }

    let input_rows = input.map_or(0, Batch::len);
    if kept > 0 {
        let Some(input) = input else {
            return Err(AbiError::new(
                "rows kept from an input at the end of the stream",
            ));
        };
        // The host keeps these rows in place under the output's columns: same width.
        if out.batch.width() != input.width() {
            return Err(AbiError::new(format!(
                "input rows are kept, but the output has {} columns and the input {}",
                out.batch.width(),
                input.width()
            )));
        }
    }
    out.kept.clear();
    for i in 0..kept {
        let k = word_at(kept_rows, i);
        if k as usize >= input_rows {
            return Err(AbiError::new(format!(
                "keeps input row {k} of a batch of {input_rows}"
            )));
        }
        out.kept.push(k);
    }
    out.rejects.clear();
    let mut at = 0usize;
    for i in 0..rejects {
        let row = word_at(reject_rows, 2 * i);
        let len = word_at(reject_rows, 2 * i + 1) as usize;
        if row as usize >= input_rows {
            return Err(AbiError::new(format!(
                "rejects input row {row} of a batch of {input_rows}"
            )));
        }
        let end = at
            .checked_add(len)
            .filter(|&e| e <= reasons.len())
            .ok_or_else(|| AbiError::new("a reject reason runs past the reasons"))?;
        let reason = String::from_utf8_lossy(&reasons[at..end]);
        at = end;
        out.rejects.push(Reject {
            row,
            reason: RString::from(reason.as_ref()),
        });
    }
    if at != reasons.len() {
        return Err(AbiError::new(
            "the reasons section is longer than its reasons",
        ));
    }
    Ok(Ok(()))
}

/// What `pipe_manifest` returns, as JSON.
pub fn manifest_json(
    name: &str,
    version: &str,
    description: &str,
    stateful: bool,
    sdk_version: &str,
) -> String {
    serde_json::json!({
        "abi": ABI_VERSION,
        "name": name,
        "version": version,
        "description": description,
        "stateful": stateful,
        "sdk_version": sdk_version,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Value;
    use crate::hostapi::HostOutput;

    fn sample() -> Batch {
        let mut b = Batch::with_columns(["id", "name", "é"]);
        for (i, n) in ["ann", "bøb", ""].iter().enumerate() {
            b.start_row(Pos {
                input: 1,
                line: (1 << 40) + i as u64,
            });
            b.push_value(Value::Int(i as i64));
            b.push_str(n);
            b.push_value(Value::Null);
            b.end_row().unwrap();
        }
        b
    }

    #[test]
    fn a_batch_round_trips_and_its_size_is_known_before() {
        let b = sample();
        let mut buf = Vec::new();
        encode_batch(&b, &mut buf);
        assert_eq!(buf.len(), encoded_batch_len(&b));
        let mut direct = vec![0; encoded_batch_len(&b)];
        write_batch(&b, &mut direct).unwrap();
        assert_eq!(buf, direct);
        let mut back = Batch::new();
        decode_batch(&buf, &mut back, Check::Full).unwrap();
        assert_eq!(format!("{b:?}"), format!("{back:?}"));
        assert_eq!(back.row(2).pos(), b.row(2).pos());
        assert!(back.same_columns(&b));
    }

    #[test]
    fn an_output_round_trips_with_kept_rows_and_rejects() {
        let input = sample();
        let mut out = Output::new();
        out.begin(&input);
        out.columns_like(&input);
        out.push(input.row(2));
        out.reject(input.row(1), "no bob");
        out.row(input.row(0)).str("x").str("y").str("z");
        let mut buf = Vec::new();
        encode_output(&out, &mut buf);

        let mut host = Output::new();
        host.begin(&input);
        assert_eq!(decode_output(&buf, Some(&input), &mut host), Ok(Ok(())));
        assert_eq!(host.kept(), &[2]);
        assert_eq!(host.rejects()[0].row, 1);
        assert_eq!(host.rejects()[0].reason.as_str(), "no bob");
        let all = host.resolve(input.clone());
        assert_eq!(all.len(), 2);
        assert_eq!(all.row(0).get_str("name"), Some(""));
        assert_eq!(all.row(1).get_str("id"), Some("x"));
        assert_eq!(all.row(1).pos(), input.row(0).pos());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_valid_batch() {
        let input = sample();
        let mut out = Output::new();
        out.begin(&input);
        out.columns_like(&input);
        out.push(input.row(0));
        out.reject(input.row(1), "r");
        out.row(input.row(2)).str("ü").str("v");
        let mut good = Vec::new();
        encode_output(&out, &mut good);
        for cut in 0..good.len() {
            let mut o = Output::new();
            assert!(decode_output(&good[..cut], Some(&input), &mut o).is_err());
        }
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let mut o = Output::new();
                o.begin(&input);
                if let Ok(Ok(())) = decode_output(&bad, Some(&input), &mut o) {
                    // Whatever got through is usable without a panic.
                    let b = o.resolve(input.clone());
                    for row in b.rows() {
                        let _ = format!("{row:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn replies_that_break_the_rules_are_named() {
        let input = sample();
        let err = |build: &dyn Fn(&mut Vec<u8>)| {
            let mut buf = Vec::new();
            build(&mut buf);
            let mut o = Output::new();
            decode_output(&buf, Some(&input), &mut o)
                .unwrap_err()
                .to_string()
        };
        let header = |buf: &mut Vec<u8>, kept: u32, rejects: u32, reasons: u32| {
            put(buf, STATUS_OK);
            put(buf, kept);
            put(buf, rejects);
            put(buf, reasons);
        };
        let empty_batch = |buf: &mut Vec<u8>, cols: u32| {
            let b = Batch::with_columns((0..cols).map(|i| format!("c{i}")));
            encode_batch(&b, buf);
        };
        let e = err(&|b| {
            header(b, 1, 0, 0);
            put(b, 7);
            empty_batch(b, 3);
        });
        assert!(e.contains("keeps input row 7 of a batch of 3"), "{e}");
        let e = err(&|b| {
            header(b, 1, 0, 0);
            put(b, 0);
            empty_batch(b, 2);
        });
        assert!(e.contains("output has 2 columns and the input 3"), "{e}");
        let e = err(&|b| {
            header(b, 0, 1, 0);
            put(b, 3);
            put(b, 0);
            empty_batch(b, 1);
        });
        assert!(e.contains("rejects input row 3"), "{e}");
        let e = err(&|b| put(b, 9));
        assert!(e.contains("unknown reply status 9"), "{e}");
        // A cell outside the text: one row, one column `a`, text "a", cell 0+5.
        let e = err(&|b| {
            header(b, 0, 0, 0);
            for w in [1, 1, 5, 1, 0, 5, 5, 0, 0, 0, 1] {
                put(b, w);
            }
            b.extend_from_slice(b"aa");
        });
        assert!(e.contains("points past the text"), "{e}");
        // A cell cutting a character in two: text "é", cell 0+1.
        let e = err(&|b| {
            header(b, 0, 0, 0);
            for w in [1, 1, 5, 2, 0, 1, 5, 0, 0, 0, 1] {
                put(b, w);
            }
            b.extend_from_slice(b"a");
            b.extend_from_slice("é".as_bytes());
        });
        assert!(e.contains("cuts a UTF-8 character"), "{e}");
    }

    #[test]
    fn statuses_and_packing() {
        let mut b = Vec::new();
        encode_status(Err("no"), &mut b);
        assert_eq!(decode_status(&b).unwrap(), Err("no".to_string()));
        b.clear();
        encode_status(Ok(b"st"), &mut b);
        assert_eq!(decode_status(&b).unwrap(), Ok(&b"st"[..]));
        assert_eq!(unpack(pack(7, 9)), (7, 9));
        assert!(decode_status(&[1, 0]).is_err());
    }
}
