//! Readers and writers between bytes and [`Batch`]es: CSV with a header, and JSON lines.
//!
//! Readers never panic on input and never stop at a bad record: a record that cannot be
//! read (wrong number of fields, invalid UTF-8, a JSON line that is not an object) comes
//! back as a [`BadRecord`] with its position and the reason, and the caller applies its
//! policy. Only I/O errors end a read.
//!
//! CSV cells are strings. JSON values keep their kinds; nested objects and arrays keep
//! their JSON text, so JSONL in → JSONL out through identity stages keeps keys, order,
//! values and types.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::batch::{Batch, Kind, Pos};

/// A record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file name's extension implies, if any.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        })
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "csv" => Ok(Format::Csv),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            _ => Err(format!("unknown format `{s}` (expected csv or jsonl)")),
        }
    }
}

/// A record the reader could not turn into a row.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// Where it starts.
    pub pos: Pos,
    /// What is wrong with it.
    pub reason: String,
    /// Which kind of trouble, for a caller that must tell them apart without reading
    /// `reason`.
    pub kind: BadKind,
    /// The record as far as it could be read, as JSON: a string (a JSON line's text) or
    /// an array of strings (a CSV row's fields). Invalid UTF-8 is replaced by U+FFFD. A
    /// record too large to hold in a batch is not copied: `null` or an empty array.
    pub raw: serde_json::Value,
}

/// Which kind of bad record: one record, or a whole CSV input lost to its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadKind {
    /// This record could not be read; the next may be fine.
    Record,
    /// The CSV header line itself could not be read.
    Header,
    /// A record of a CSV input whose header could not be read: none of its records can
    /// be.
    NoHeader,
}

/// Reads records into batches.
pub trait Reader: Send {
    /// Appends up to `max` records to `batch`, which the caller has cleared. Records that
    /// cannot be read go to `bad`. Returns `Ok(false)` once the input is exhausted and
    /// nothing was appended. A batch never spans a change of columns: a CSV reader's batch
    /// has the file's header, a JSON-lines batch the union of its lines' keys.
    fn read_batch(
        &mut self,
        batch: &mut Batch,
        max: usize,
        bad: &mut Vec<BadRecord>,
    ) -> io::Result<bool>;

    /// Bytes consumed so far (for progress).
    fn bytes_read(&self) -> u64;

    /// Sets a probe that says whether more input can be read without blocking. With one
    /// set, a reader that has used up what it buffered returns its batch early (at a
    /// record boundary) when the probe says no, instead of blocking until the batch is
    /// full: records from a slow producer (`tail -f`) flow at once. Without one (files),
    /// batches are always full.
    fn set_ready_probe(&mut self, probe: ReadyProbe);

    /// Sets the longest record held in memory (default [`DEFAULT_MAX_RECORD_BYTES`]). A
    /// longer JSON line is read past, never held whole, and comes back as a bad record,
    /// so memory stays within a small multiple of the limit. The CSV reader does not
    /// apply it yet (its records stop at 4 GiB).
    fn set_max_record_bytes(&mut self, max: usize) {
        let _ = max;
    }
}

/// See [`Reader::set_ready_probe`]: true when a read would not block.
pub type ReadyProbe = Box<dyn FnMut() -> bool + Send>;

/// How many bytes a buffered reader holds that were not consumed yet.
pub trait Buffered {
    /// Bytes buffered.
    fn buffered_len(&self) -> usize;
}

impl<R> Buffered for io::BufReader<R> {
    fn buffered_len(&self) -> usize {
        self.buffer().len()
    }
}

impl Buffered for &[u8] {
    fn buffered_len(&self) -> usize {
        self.len()
    }
}

/// Makes the reader for `format` over `input`, tagging positions with `input_index`.
pub fn reader<'r, R: Read + Send + 'r>(
    format: Format,
    input: R,
    input_index: u32,
) -> Box<dyn Reader + 'r> {
    match format {
        Format::Csv => Box::new(CsvReader::new(input, input_index)),
        Format::Jsonl => Box::new(JsonlReader::new(
            io::BufReader::with_capacity(1 << 16, input),
            input_index,
        )),
    }
}

/// A batch stops growing once its cells hold this many bytes, so that one batch never
/// grows past what [`Batch`]'s `u32` offsets can address (and stays a sane size). The
/// record that would cross the limit starts the next batch.
const BATCH_BYTES: usize = if cfg!(test) { 64 } else { 256 << 20 };

/// The largest record a reader accepts: a batch addresses its arena with `u32` offsets.
/// A larger record is a [`BadRecord`] (regression test: `oversized_records_are_bad_records`).
const RECORD_BYTES: usize = if cfg!(test) { 256 } else { u32::MAX as usize };

/// Whether `len` more bytes of cell text fit in `batch`, which holds rows.
fn batch_has_room(batch: &Batch, len: usize) -> bool {
    batch.is_empty() || batch.data_len() + len <= BATCH_BYTES
}

fn too_large(len: usize) -> String {
    format!("the record is too large ({len} bytes; the limit is {RECORD_BYTES} bytes)")
}

/// Reads CSV with a header line. Quoted fields may hold commas, quotes and newlines; CRLF
/// and a UTF-8 byte-order mark are handled.
///
/// Every record after the header comes back as a row or a [`BadRecord`]: a wrong number of
/// fields, invalid UTF-8, a quote still open at the end of the input, or (when the header
/// itself could not be read) no usable header. Each is positioned at the line its first
/// field starts on.
pub struct CsvReader<R> {
    inner: csv::Reader<LineIndex<R>>,
    input: u32,
    header: Option<Vec<String>>,
    /// Why the header could not be used; every later record is a bad record with it.
    header_error: Option<String>,
    record: csv::ByteRecord,
    /// `record` was read but did not fit the last batch: it starts the next one.
    pending: Option<Pos>,
    done: bool,
    ready: Option<ReadyProbe>,
}

impl<R: Read> CsvReader<R> {
    /// A reader over `input`, whose records are tagged with `input_index`.
    pub fn new(input: R, input_index: u32) -> CsvReader<R> {
        let inner = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(LineIndex::new(input));
        CsvReader {
            inner,
            input: input_index,
            header: None,
            header_error: None,
            record: csv::ByteRecord::new(),
            pending: None,
            done: false,
            ready: None,
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    fn pos(&mut self) -> Pos {
        let byte = self.record.position().map_or(0, |p| p.byte());
        Pos {
            input: self.input,
            line: self.inner.get_mut().line_of(byte),
        }
    }

    fn next_record(&mut self) -> io::Result<bool> {
        next_csv_record(&mut self.inner, &mut self.record)
    }

    /// When the record just read is the last one and ends inside a quoted field, why it
    /// is bad. csv-core takes the end of the input as the end of such a field, which would
    /// silently turn every line after a stray quote into one field.
    fn unterminated(&mut self) -> Option<String> {
        let opened = self.inner.get_ref().open_quote_at_eof()?;
        let line = self.inner.get_mut().line_of(opened);
        Some(format!(
            "unterminated quoted field: the quote opened on line {line} is never closed, \
             so the input ends inside it"
        ))
    }

    fn raw_fields(&self) -> serde_json::Value {
        csv_raw_fields(&self.record)
    }
}

fn next_csv_record<R: Read>(
    inner: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
) -> io::Result<bool> {
    match inner.read_byte_record(record) {
        Ok(more) => Ok(more),
        Err(e) => match e.into_kind() {
            csv::ErrorKind::Io(e) => Err(e),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{other:?}"),
            )),
        },
    }
}

fn csv_raw_fields(record: &csv::ByteRecord) -> serde_json::Value {
    serde_json::Value::Array(
        record
            .iter()
            .map(|f| serde_json::Value::String(String::from_utf8_lossy(f).into_owned()))
            .collect(),
    )
}

impl<R: Read> CsvReader<R> {
    /// Reads the header. Returns false at the end of the input. A header that cannot be
    /// used is reported as a bad record and kept in `header_error`.
    fn read_header(&mut self, bad: &mut Vec<BadRecord>) -> io::Result<bool> {
        if !self.next_record()? {
            self.done = true;
            return Ok(false);
        }
        let pos = self.pos();
        let error = match self.unterminated() {
            Some(reason) => Some(reason),
            None => {
                let fields: Result<Vec<String>, String> = self
                    .record
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        std::str::from_utf8(f).map(str::to_owned).map_err(|e| {
                            format!(
                                "the header line is not valid UTF-8 (field {}, byte {})",
                                i + 1,
                                e.valid_up_to() + 1
                            )
                        })
                    })
                    .collect();
                match fields {
                    Ok(h) => {
                        self.header = Some(h);
                        None
                    }
                    Err(reason) => Some(reason),
                }
            }
        };
        if let Some(reason) = error {
            bad.push(BadRecord {
                pos,
                reason: reason.clone(),
                kind: BadKind::Header,
                raw: self.raw_fields(),
            });
            self.header_error = Some(reason);
        }
        Ok(true)
    }
}

impl<R: Read + Send> Reader for CsvReader<R> {
    fn set_ready_probe(&mut self, probe: ReadyProbe) {
        self.ready = Some(probe);
    }

    fn read_batch(
        &mut self,
        batch: &mut Batch,
        max: usize,
        bad: &mut Vec<BadRecord>,
    ) -> io::Result<bool> {
        if self.done && self.pending.is_none() {
            return Ok(false);
        }
        if self.header.is_none() && self.header_error.is_none() && !self.read_header(bad)? {
            return Ok(false);
        }
        let width = match &self.header {
            Some(header) => {
                if !batch.columns().eq(header.iter().map(|s| s.as_str())) {
                    batch.set_columns(header);
                }
                header.len()
            }
            None => 0,
        };
        let mut got_any = false;
        // Bad records count towards `max` too, so that a run of them is handed to the
        // caller's policy a batch at a time instead of piling up in memory.
        let mut taken = 0;
        while taken < max {
            // Everything handed to csv is parsed: the next record would block on a read.
            if taken > 0
                && self.pending.is_none()
                && self.inner.position().byte() >= self.inner.get_ref().offset
            {
                if let Some(ready) = &mut self.ready {
                    if !ready() {
                        break;
                    }
                }
            }
            let (pos, fresh) = match self.pending.take() {
                Some(pos) => (pos, false),
                None => {
                    if !self.next_record()? {
                        self.done = true;
                        break;
                    }
                    (self.pos(), true)
                }
            };
            got_any = true;
            taken += 1;
            let unterminated = if fresh { self.unterminated() } else { None };
            let reason = if let Some(reason) = unterminated {
                Some((reason, BadKind::Record))
            } else if let Some(e) = &self.header_error {
                Some((format!("no usable header: {e}"), BadKind::NoHeader))
            } else if self.record.len() != width {
                Some((
                    format!(
                        "expected {width} fields as in the header, found {}",
                        self.record.len()
                    ),
                    BadKind::Record,
                ))
            } else {
                None
            };
            if let Some((reason, kind)) = reason {
                bad.push(BadRecord {
                    pos,
                    reason,
                    kind,
                    raw: self.raw_fields(),
                });
                continue;
            }
            let rec = &self.record;
            let bytes = rec.as_slice();
            if !batch_has_room(batch, bytes.len()) {
                self.pending = Some(pos);
                break;
            }
            if bytes.len() > RECORD_BYTES {
                bad.push(BadRecord {
                    pos,
                    reason: too_large(bytes.len()),
                    kind: BadKind::Record,
                    raw: serde_json::Value::Array(Vec::new()),
                });
                continue;
            }
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let mut ends = (0..rec.len()).map(|i| rec.range(i).map_or(0, |r| r.end));
                    // Each field must be valid on its own, not only the concatenation.
                    if ends.all(|e| text.is_char_boundary(e)) {
                        let ends = (0..rec.len()).map(|i| rec.range(i).map_or(0, |r| r.end));
                        batch.push_str_row(pos, text, ends);
                        continue;
                    }
                    bad.push(BadRecord {
                        pos,
                        reason: "invalid UTF-8 in a field".into(),
                        kind: BadKind::Record,
                        raw: csv_raw_fields(rec),
                    });
                }
                Err(e) => {
                    let field = (0..rec.len())
                        .position(|i| rec.range(i).is_some_and(|r| r.end > e.valid_up_to()))
                        .unwrap_or(0);
                    let name = if field < batch.width() {
                        batch.column_name(field)
                    } else {
                        "?"
                    };
                    bad.push(BadRecord {
                        pos,
                        reason: format!("invalid UTF-8 in field `{name}`"),
                        kind: BadKind::Record,
                        raw: csv_raw_fields(rec),
                    });
                }
            }
        }
        Ok(got_any || !batch.is_empty())
    }

    fn bytes_read(&self) -> u64 {
        self.inner.position().byte() + self.inner.get_ref().bom_len
    }
}

/// Where the quoting state of the CSV text stands (the subset of csv-core's state machine
/// that decides whether the input ends inside a quoted field).
#[derive(Debug, Clone, Copy)]
enum Quoting {
    /// Not in a quoted field; `field_start`: the next byte starts a field.
    Outside { field_start: bool },
    /// Inside a quoted field opened at byte `opened`.
    Inside { opened: u64 },
    /// Just after a quote inside a quoted field: `""` (an escaped quote) or the end of it.
    AfterQuote { opened: u64 },
}

/// Passes bytes through to the CSV parser and remembers where the line breaks are, so
/// that a record's line can be computed from its byte offset. csv-core's own line count
/// misses a CRLF, and the offset it gives for a record is where the previous record
/// ended, before any blank lines. A line break is `\n`, `\r\n` or a lone `\r` (csv-core
/// ends records at all three). Only the breaks the parser has not yet passed are kept.
///
/// It also follows the quoting, to tell whether the input ends inside a quoted field, and
/// drops a UTF-8 byte-order mark at the start. (csv-core drops one only when it arrives
/// whole in its first read; a pipe may hand over fewer than three bytes.)
struct LineIndex<R> {
    inner: R,
    /// The first bytes, held back until they are known not to be a byte-order mark.
    probe: [u8; 3],
    /// `(at, len)`: `probe[at..len]` is still to be passed on; `None` before the check.
    probe_state: Option<(usize, usize)>,
    /// 3 when a byte-order mark was dropped.
    bom_len: u64,
    /// Bytes passed on to the parser (after any byte-order mark).
    offset: u64,
    /// `\r` and `\n` bytes not yet passed: offset, and whether it ends a line (a `\r`
    /// followed by `\n` does not: the `\n` does).
    terms: VecDeque<(u64, bool)>,
    /// A `\r` that ended the last read: whether it ends a line depends on the next byte.
    pending_cr: Option<u64>,
    line: u64,
    quoting: Quoting,
    eof: bool,
}

impl<R> LineIndex<R> {
    fn new(inner: R) -> LineIndex<R> {
        LineIndex {
            inner,
            probe: [0; 3],
            probe_state: None,
            bom_len: 0,
            offset: 0,
            terms: VecDeque::new(),
            pending_cr: None,
            line: 1,
            quoting: Quoting::Outside { field_start: true },
            eof: false,
        }
    }

    /// The 1-based line of the record csv reports at byte `byte`; calls must come in
    /// non-decreasing byte order. csv reports where the previous record ended, so line
    /// breaks at the offset itself (the `\n` of a CRLF, blank lines) come before the
    /// record and are skipped (regression test: `csv_lines_after_blank_lines_and_crlf`).
    fn line_of(&mut self, mut byte: u64) -> u64 {
        while let Some(&(at, ends_line)) = self.terms.front() {
            if at > byte {
                break;
            }
            if at == byte {
                byte += 1;
            }
            self.terms.pop_front();
            if ends_line {
                self.line += 1;
            }
        }
        self.line
    }

    /// The byte offset of the quote that opened the quoted field the input ended in, once
    /// the end of the input has been read.
    fn open_quote_at_eof(&self) -> Option<u64> {
        match self.quoting {
            Quoting::Inside { opened } if self.eof => Some(opened),
            _ => None,
        }
    }

    fn index_breaks(&mut self, buf: &[u8]) {
        if let Some(cr) = self.pending_cr.take() {
            self.terms.push_back((cr, buf.first() != Some(&b'\n')));
        }
        for i in memchr::memchr2_iter(b'\n', b'\r', buf) {
            let at = self.offset + i as u64;
            if buf[i] == b'\n' {
                self.terms.push_back((at, true));
            } else if i + 1 < buf.len() {
                self.terms.push_back((at, buf[i + 1] != b'\n'));
            } else {
                self.pending_cr = Some(at);
            }
        }
    }

    /// Follows the quoting through `buf` as csv-core does with its default dialect: a `"`
    /// opens a quoted field only as the first byte of a field; inside, `""` is a quote.
    fn follow_quotes(&mut self, buf: &[u8]) {
        let is_sep = |b: u8| matches!(b, b',' | b'\n' | b'\r');
        let mut i = 0;
        while i < buf.len() {
            match self.quoting {
                Quoting::Outside { field_start } => match memchr::memchr(b'"', &buf[i..]) {
                    None => {
                        self.quoting = Quoting::Outside {
                            field_start: is_sep(buf[buf.len() - 1]),
                        };
                        i = buf.len();
                    }
                    Some(k) => {
                        let q = i + k;
                        let opens = if q > i {
                            is_sep(buf[q - 1])
                        } else {
                            field_start
                        };
                        self.quoting = if opens {
                            Quoting::Inside {
                                opened: self.offset + q as u64,
                            }
                        } else {
                            Quoting::Outside { field_start: false }
                        };
                        i = q + 1;
                    }
                },
                Quoting::Inside { opened } => match memchr::memchr(b'"', &buf[i..]) {
                    None => i = buf.len(),
                    Some(k) => {
                        self.quoting = Quoting::AfterQuote { opened };
                        i += k + 1;
                    }
                },
                Quoting::AfterQuote { opened } => {
                    if buf[i] == b'"' {
                        self.quoting = Quoting::Inside { opened };
                        i += 1;
                    } else {
                        // The field ended; this byte is seen again as outside.
                        self.quoting = Quoting::Outside { field_start: false };
                    }
                }
            }
        }
    }
}

impl<R: Read> LineIndex<R> {
    /// Reads the first (up to) three bytes and drops them if they are a byte-order mark.
    fn check_bom(&mut self) -> io::Result<(usize, usize)> {
        const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
        let mut len = 0;
        while len < 3 && self.probe[..len] == BOM[..len] {
            let n = self.inner.read(&mut self.probe[len..])?;
            if n == 0 {
                break;
            }
            len += n;
        }
        if &self.probe[..len] == BOM {
            self.bom_len = 3;
            return Ok((0, 0));
        }
        Ok((0, len))
    }
}

impl<R: Read> Read for LineIndex<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // csv-core drops a BOM at the start of the first input it is given if that input
        // holds 3 bytes or more. The BOM was dealt with here: hand over one byte first, so
        // that a second BOM (part of the first name) is kept however the input is read.
        let buf = if self.offset == 0 { &mut buf[..1] } else { buf };
        let fresh = self.probe_state.is_none();
        let (at, len) = match self.probe_state {
            Some(state) => state,
            None => self.check_bom()?,
        };
        let n = if fresh && len == 0 && self.bom_len == 0 {
            // The BOM check already read the end of the input. Reading again would wait
            // for a second end: at a terminal, the first Ctrl-D would be ignored
            // (daily.rs: `the_first_ctrl_d_on_an_empty_terminal_ends_the_run`).
            self.probe_state = Some((0, 0));
            0
        } else if at < len {
            let n = (len - at).min(buf.len());
            buf[..n].copy_from_slice(&self.probe[at..at + n]);
            self.probe_state = Some((at + n, len));
            n
        } else {
            self.probe_state = Some((len, len));
            self.inner.read(buf)?
        };
        if n == 0 {
            self.eof = true;
            if let Some(cr) = self.pending_cr.take() {
                self.terms.push_back((cr, true));
            }
            return Ok(0);
        }
        self.index_breaks(&buf[..n]);
        self.follow_quotes(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads one JSON object per line. Blank lines are skipped. Keys missing from a line are
/// absent in its row; a key first seen mid-batch becomes a new column.
///
/// A batch's columns are the union of its lines' keys, arranged so that every line's keys
/// keep their order: a key first seen mid-batch is inserted after the key that precedes
/// it in its line, and a line that orders two known keys the other way round starts a new
/// batch. So JSON lines in → JSON lines out through identity stages gives back each line's
/// keys in its own order.
pub struct JsonlReader<R> {
    inner: R,
    input: u32,
    line_no: u64,
    bytes: u64,
    buf: Vec<u8>,
    fields: Vec<(usize, Kind, usize, usize)>,
    text: String,
    new_names: Vec<String>,
    /// Column of each name: of the batch's columns when it is wide (a linear search per
    /// key would make a wide line quadratic), and of `new_names`.
    index: std::collections::HashMap<String, usize>,
    /// Whether `index` holds the batch's columns (it does for wide batches).
    indexed: bool,
    /// The line in `buf` was read but did not fit the last batch: it starts the next one.
    pending: Option<Pos>,
    done: bool,
    ready: Option<ReadyProbe>,
    /// The last line ended in `\r`: a `\n` right after it belongs to that line end.
    skip_lf: bool,
    /// Longest line kept in memory; a longer one is read past and reported bad.
    max_record: usize,
}

/// The default of `settings.max_record_bytes`: the longest record a reader holds in
/// memory (64 MiB). A longer one is a bad record, read past without being kept.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;

/// Above this many columns, keys are looked up through a hash map.
const WIDE: usize = 32;

impl<R: BufRead> JsonlReader<R> {
    /// A reader over `input`, whose records are tagged with `input_index`.
    pub fn new(input: R, input_index: u32) -> JsonlReader<R> {
        JsonlReader {
            inner: input,
            input: input_index,
            line_no: 0,
            bytes: 0,
            buf: Vec::with_capacity(1024),
            fields: Vec::new(),
            text: String::new(),
            new_names: Vec::new(),
            index: std::collections::HashMap::new(),
            indexed: false,
            pending: None,
            done: false,
            ready: None,
            skip_lf: false,
            max_record: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Reads one line into `buf`, without its end: `\n`, `\r\n` or a lone `\r` (a JSON
    /// text holds neither raw, so each can only end a line; issue 12: a file with CR line
    /// ends was one bad record). Keeps at most `max_record` bytes: for a longer line it
    /// reads on to the line's end without keeping them and returns the line's length as
    /// `Err`. Returns the bytes consumed (0 at the end of the input).
    fn read_line(&mut self) -> io::Result<(usize, Result<(), usize>)> {
        let mut consumed = 0;
        let mut len = 0usize;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            if std::mem::take(&mut self.skip_lf) && chunk[0] == b'\n' {
                self.inner.consume(1);
                consumed += 1;
                continue;
            }
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    let keep = i.min(self.max_record.saturating_sub(len));
                    self.buf.extend_from_slice(&chunk[..keep]);
                    len += i;
                    self.skip_lf = chunk[i] == b'\r';
                    self.inner.consume(i + 1);
                    consumed += i + 1;
                    break;
                }
                None => {
                    let n = chunk.len();
                    let keep = n.min(self.max_record.saturating_sub(len));
                    self.buf.extend_from_slice(&chunk[..keep]);
                    len += n;
                    self.inner.consume(n);
                    consumed += n;
                }
            }
        }
        Ok((
            consumed,
            if len > self.max_record {
                Err(len)
            } else {
                Ok(())
            },
        ))
    }

    /// The column of `key` in `batch`, or of a name new in this line.
    fn find_column(&mut self, batch: &Batch, key: &str) -> Option<usize> {
        let width = batch.width();
        if !self.indexed && width + self.new_names.len() > WIDE {
            self.index.clear();
            for (i, name) in batch.columns().enumerate() {
                self.index.insert(name.to_owned(), i);
            }
            for (i, name) in self.new_names.iter().enumerate() {
                self.index.insert(name.clone(), width + i);
            }
            self.indexed = true;
        }
        if self.indexed {
            return self.index.get(key).copied();
        }
        batch.column(key).or_else(|| {
            self.new_names
                .iter()
                .position(|n| n == key)
                .map(|n| width + n)
        })
    }

    /// Makes room in `batch` for the parsed line's keys so that every line's keys keep
    /// their order: a new key is inserted right after the key before it in the line (not
    /// appended), so optional fields land where their lines have them. When the line
    /// orders two known keys the other way round, a batch with rows cannot hold it
    /// (false: it starts the next batch); an empty batch just takes the line's order.
    /// On success `self.fields` name final column indexes.
    fn place_columns(&mut self, batch: &mut Batch) -> bool {
        let width = batch.width();
        let mut seq: Vec<usize> = Vec::with_capacity(self.fields.len());
        let mut increasing = true;
        for f in &self.fields {
            if seq.contains(&f.0) {
                continue; // a repeated key keeps its first place
            }
            if let Some(&last) = seq.last() {
                increasing &= f.0 > last;
            }
            seq.push(f.0);
        }
        if self.new_names.is_empty() && increasing {
            return true;
        }
        let name_of = |id: usize, batch: &Batch, new: &[String]| -> String {
            if id < width {
                batch.column_name(id).to_owned()
            } else {
                new[id - width].clone()
            }
        };
        let mut final_pos = vec![usize::MAX; width + self.new_names.len()];
        if batch.is_empty() {
            let names: Vec<String> = seq
                .iter()
                .map(|&id| name_of(id, batch, &self.new_names))
                .collect();
            batch.set_columns(&names);
            for (i, &id) in seq.iter().enumerate() {
                final_pos[id] = i;
            }
        } else {
            let mut order: Vec<usize> = (0..width).collect();
            let mut prev: Option<usize> = None;
            for &id in &seq {
                if id < width {
                    let at = order.iter().position(|&x| x == id).unwrap_or(0);
                    if prev.is_some_and(|p| at <= p) {
                        return false;
                    }
                    prev = Some(at);
                } else {
                    let at = prev.map_or(0, |p| p + 1);
                    order.insert(at, id);
                    prev = Some(at);
                }
            }
            for (pos, &id) in order.iter().enumerate() {
                if id >= width {
                    batch.insert_column(pos, &self.new_names[id - width]);
                }
                final_pos[id] = pos;
            }
        }
        for f in &mut self.fields {
            f.0 = final_pos[f.0];
        }
        self.new_names.clear();
        // Column indexes moved: the wide-batch index is rebuilt on demand.
        self.indexed = false;
        self.index.clear();
        true
    }

    /// Parses `line` into `self.fields` / `self.text`, resolving keys against `batch`'s
    /// columns (new keys go to `self.new_names`, numbered after the batch's width).
    fn parse_line(&mut self, line: &str, batch: &Batch) -> Result<(), String> {
        self.fields.clear();
        self.text.clear();
        // New names left from a line that was not added (a bad line) are no columns.
        for name in self.new_names.drain(..) {
            if self.indexed {
                self.index.remove(&name);
            }
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let pairs = de
            .deserialize_map(PairsVisitor)
            .map_err(|e| json_reason(&e))?;
        de.end().map_err(|e| json_reason(&e))?;
        let width = batch.width();
        for (i, (key, raw)) in pairs.iter().enumerate() {
            // Keys usually come in the same order on every line: try the same column
            // first.
            let col = if i < width && batch.column_name(i) == key.as_ref() {
                i
            } else if let Some(c) = self.find_column(batch, key) {
                c
            } else {
                self.new_names.push(key.to_string());
                let c = width + self.new_names.len() - 1;
                if self.indexed {
                    self.index.insert(key.to_string(), c);
                }
                c
            };
            let raw = raw.get();
            let (kind, text): (Kind, Cow<'_, str>) = match raw.as_bytes()[0] {
                b'"' => {
                    let inner = &raw[1..raw.len() - 1];
                    if inner.contains('\\') {
                        let s: String = serde_json::from_str(raw).map_err(|e| json_reason(&e))?;
                        (Kind::Str, Cow::Owned(s))
                    } else {
                        (Kind::Str, Cow::Borrowed(inner))
                    }
                }
                b't' | b'f' => (Kind::Bool, Cow::Borrowed(raw)),
                b'n' => (Kind::Null, Cow::Borrowed("")),
                b'{' | b'[' => (Kind::Json, Cow::Borrowed(raw)),
                _ => {
                    let is_int = !raw.contains(['.', 'e', 'E']) && raw.parse::<i64>().is_ok();
                    (
                        if is_int { Kind::Int } else { Kind::Float },
                        Cow::Borrowed(raw),
                    )
                }
            };
            let start = self.text.len();
            self.text.push_str(&text);
            // A repeated key: the cells are set in order, so the last value wins, as in
            // serde_json's own maps. (Searching `fields` for the column instead made a
            // line with n keys cost O(n²).)
            self.fields.push((col, kind, start, text.len()));
        }
        Ok(())
    }
}

fn json_reason(e: &serde_json::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        // Each record is one line: the column is what helps. serde_json says column 0
        // for an error at the first character (a line that is not an object).
        msg = format!("{} at column {}", &msg[..i], e.column().max(1));
    }
    format!("invalid JSON: {msg}")
}

/// Collects an object's members without allocating for keys that need no unescaping.
struct PairsVisitor;

struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            pairs.push((k.0, v));
        }
        Ok(pairs)
    }
}

impl<R: BufRead + Buffered + Send> Reader for JsonlReader<R> {
    fn set_ready_probe(&mut self, probe: ReadyProbe) {
        self.ready = Some(probe);
    }

    fn set_max_record_bytes(&mut self, max: usize) {
        self.max_record = max;
    }

    fn read_batch(
        &mut self,
        batch: &mut Batch,
        max: usize,
        bad: &mut Vec<BadRecord>,
    ) -> io::Result<bool> {
        if self.done && self.pending.is_none() {
            return Ok(false);
        }
        if batch.is_empty() && batch.width() > 0 {
            // A batch recycled with `clear_rows` keeps its columns; this batch's columns
            // must be the union of its own lines' keys.
            batch.set_columns(std::iter::empty::<&str>());
        }
        self.indexed = false;
        let mut got_any = false;
        // Bad lines count towards `max` too, so that a run of them is handed to the
        // caller's policy a batch at a time instead of piling up in memory.
        let mut taken = 0;
        while taken < max {
            if taken > 0 && self.pending.is_none() && self.inner.buffered_len() == 0 {
                if let Some(ready) = &mut self.ready {
                    if !ready() {
                        break;
                    }
                }
            }
            let pos = match self.pending.take() {
                Some(pos) => pos,
                None => {
                    self.buf.clear();
                    let (n, fits) = self.read_line()?;
                    if n == 0 {
                        self.done = true;
                        break;
                    }
                    self.bytes += n as u64;
                    self.line_no += 1;
                    if let Err(len) = fits {
                        self.buf.clear();
                        got_any = true;
                        taken += 1;
                        bad.push(BadRecord {
                            pos: Pos {
                                input: self.input,
                                line: self.line_no,
                            },
                            reason: format!(
                                "the record is longer than max_record_bytes ({len} bytes; \
                                 the limit is {})",
                                self.max_record
                            ),
                            kind: BadKind::Record,
                            raw: serde_json::Value::Null,
                        });
                        continue;
                    }
                    if self.line_no == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
                        self.buf.drain(..3);
                    }
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    Pos {
                        input: self.input,
                        line: self.line_no,
                    }
                }
            };
            got_any = true;
            taken += 1;
            let line = std::mem::take(&mut self.buf);
            let parsed = match std::str::from_utf8(&line) {
                Err(e) => Err(format!("invalid UTF-8 at column {}", e.valid_up_to() + 1)),
                Ok(text) => self.parse_line(text, batch),
            };
            let parsed = parsed.and_then(|()| {
                if self.text.len() > RECORD_BYTES {
                    Err(too_large(self.text.len()))
                } else {
                    Ok(())
                }
            });
            match parsed {
                Ok(()) if !batch_has_room(batch, self.text.len()) => {
                    self.buf = line;
                    self.pending = Some(pos);
                    break;
                }
                Ok(()) if !self.place_columns(batch) => {
                    // The line's keys come in an order the batch's columns cannot follow
                    // without reordering another line: it starts the next batch.
                    self.buf = line;
                    self.pending = Some(pos);
                    break;
                }
                Ok(()) => {
                    batch.start_row(pos);
                    for _ in 0..batch.width() {
                        batch.push_raw(Kind::Absent, "");
                    }
                    for &(col, kind, start, len) in &self.fields {
                        batch.set_open_cell(col, kind, &self.text[start..start + len]);
                    }
                    batch
                        .end_row()
                        .expect("a pre-filled row has exactly the batch's width");
                }
                Err(reason) => bad.push(BadRecord {
                    pos,
                    reason,
                    kind: BadKind::Record,
                    raw: if line.len() > RECORD_BYTES {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(String::from_utf8_lossy(&line).into_owned())
                    },
                }),
            }
            self.buf = line;
        }
        Ok(got_any || !batch.is_empty())
    }

    fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

/// Writes batches.
pub trait Writer: Send {
    /// Writes every row of `batch`.
    fn write_batch(&mut self, batch: &Batch) -> Result<(), WriteError>;
    /// Flushes buffered output.
    fn flush(&mut self) -> io::Result<()>;
}

/// Why a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The underlying writer failed (a closed pipe is `io::ErrorKind::BrokenPipe`).
    Io(io::Error),
    /// A row does not fit the output: a field appeared after the CSV header was written.
    Schema {
        /// What does not fit, and what to do.
        message: String,
        /// The record that did not fit (`line == 0`: a record a stage made).
        pos: Pos,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Io(e) => write!(f, "write failed: {e}"),
            WriteError::Schema { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

impl From<csv::Error> for WriteError {
    fn from(e: csv::Error) -> Self {
        match e.into_kind() {
            csv::ErrorKind::Io(e) => WriteError::Io(e),
            other => WriteError::Io(io::Error::other(format!("{other:?}"))),
        }
    }
}

/// Makes the writer for `format` over `out`.
pub fn writer<'w, W: Write + Send + 'w>(format: Format, out: W) -> Box<dyn Writer + 'w> {
    match format {
        Format::Csv => Box::new(CsvWriter::new(out)),
        Format::Jsonl => Box::new(JsonlWriter::new(out)),
    }
}

/// Writes CSV (RFC 4180, `\n` line ends). The header is the columns of the first batch;
/// later batches are matched to it by name (a missing field is an empty cell; a field the
/// header lacks is an error, since CSV cannot grow a column mid-file).
///
/// Fields are quoted only when they must be (they hold a comma, a quote, CR or LF; or a
/// record is one empty field, which would otherwise read as a blank line), as the csv
/// crate's `QuoteStyle::Necessary` does. The writer is our own rather than `csv::Writer`
/// because it is on the hot path of every CSV run: it copies each cell straight from the
/// batch's arena into one output buffer (see `benches/`).
pub struct CsvWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    header: Option<Vec<String>>,
    /// For the current batch's columns: the header slot of each, rebuilt on change.
    order: Vec<Option<usize>>,
    order_for: Vec<String>,
}

/// Bytes that force a CSV field to be quoted.
const fn quote_table() -> [bool; 256] {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t
}
static NEEDS_QUOTE: [bool; 256] = quote_table();

/// Appends one field, quoted if it must be.
fn push_csv_field(buf: &mut Vec<u8>, f: &[u8]) {
    if !f.iter().any(|&b| NEEDS_QUOTE[b as usize]) {
        buf.extend_from_slice(f);
        return;
    }
    buf.push(b'"');
    let mut start = 0;
    for i in memchr::memchr_iter(b'"', f) {
        buf.extend_from_slice(&f[start..=i]);
        buf.push(b'"');
        start = i + 1;
    }
    buf.extend_from_slice(&f[start..]);
    buf.push(b'"');
}

impl<W: Write> CsvWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> CsvWriter<W> {
        CsvWriter {
            out,
            buf: Vec::with_capacity(1 << 17),
            header: None,
            order: Vec::new(),
            order_for: Vec::new(),
        }
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.drain()?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn drain(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Appends one record of `fields`.
    fn record<'a>(&mut self, fields: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let start = self.buf.len();
        let mut n = 0;
        for f in fields {
            if n > 0 {
                self.buf.push(b',');
            }
            push_csv_field(&mut self.buf, f);
            n += 1;
        }
        if n == 1 && self.buf.len() == start {
            self.buf.extend_from_slice(b"\"\"");
        }
        self.buf.push(b'\n');
        if self.buf.len() >= 1 << 16 {
            self.drain()?;
        }
        Ok(())
    }
}

impl<W: Write + Send> Writer for CsvWriter<W> {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), WriteError> {
        if batch.width() == 0 {
            return Ok(());
        }
        if self.header.is_none() {
            let h: Vec<String> = batch.columns().map(str::to_owned).collect();
            self.record(h.iter().map(|s| s.as_bytes()))?;
            self.header = Some(h);
        }
        let header = self.header.as_ref().expect("set above");
        if batch.columns().eq(header.iter().map(|s| s.as_str())) {
            for r in 0..batch.len() {
                let (cells, data) = batch.raw_row(r);
                let start = self.buf.len();
                // A row's cells usually lie side by side in the arena: when the bytes
                // they span hold nothing that needs quoting (one SIMD scan), no cell
                // does, and each is copied as it is.
                let lo = cells.iter().map(|c| c.start).min().unwrap_or(0) as usize;
                let hi = cells.iter().map(|c| c.start + c.len).max().unwrap_or(0) as usize;
                let span = &data[lo..hi];
                let plain = memchr::memchr3(b',', b'"', b'\n', span).is_none()
                    && memchr::memchr(b'\r', span).is_none();
                for (i, c) in cells.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    let f = &data[c.start as usize..(c.start + c.len) as usize];
                    if plain {
                        self.buf.extend_from_slice(f);
                    } else {
                        push_csv_field(&mut self.buf, f);
                    }
                }
                if cells.len() == 1 && self.buf.len() == start {
                    self.buf.extend_from_slice(b"\"\"");
                }
                self.buf.push(b'\n');
                if self.buf.len() >= 1 << 16 {
                    self.drain()?;
                }
            }
            return Ok(());
        }
        if !batch
            .columns()
            .eq(self.order_for.iter().map(|s| s.as_str()))
        {
            self.order.clear();
            for name in batch.columns() {
                self.order.push(header.iter().position(|h| h == name));
            }
            self.order_for = batch.columns().map(str::to_owned).collect();
        }
        let width = header.len();
        let mut slots: Vec<&str> = vec![""; width];
        for row in batch.rows() {
            slots.iter_mut().for_each(|s| *s = "");
            for (c, slot) in self.order.iter().enumerate() {
                let (kind, text) = row.raw(c);
                match slot {
                    Some(i) => slots[*i] = text,
                    None if kind == Kind::Absent => {}
                    None => {
                        return Err(WriteError::Schema {
                            message: format!(
                                "field `{}` first appears after the CSV header was written; \
                                 write JSON lines, or keep a fixed set of fields with a \
                                 `select` stage",
                                batch.column_name(c),
                            ),
                            pos: row.pos(),
                        })
                    }
                }
            }
            let fields: Vec<&[u8]> = slots.iter().map(|s| s.as_bytes()).collect();
            self.record(fields.into_iter())?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.out.flush()
    }
}

/// Writes one JSON object per line, keys in column order, absent fields left out.
pub struct JsonlWriter<W: Write> {
    inner: io::BufWriter<W>,
    keys: Vec<Vec<u8>>,
    keys_for: Vec<String>,
    line: Vec<u8>,
}

impl<W: Write> JsonlWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> JsonlWriter<W> {
        JsonlWriter {
            inner: io::BufWriter::with_capacity(1 << 16, out),
            keys: Vec::new(),
            keys_for: Vec::new(),
            line: Vec::with_capacity(1024),
        }
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> io::Result<W> {
        self.inner.into_inner().map_err(|e| e.into_error())
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends row `row` of `batch` as one JSON object (no newline), using pre-escaped keys.
fn write_json_row(out: &mut Vec<u8>, keys: &[Vec<u8>], row: crate::batch::Row<'_>) {
    out.push(b'{');
    let mut first = true;
    for (c, key) in keys.iter().enumerate() {
        let (kind, text) = row.raw(c);
        if kind == Kind::Absent {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(key);
        out.push(b':');
        match kind {
            Kind::Str => write_json_str(out, text),
            Kind::Null => out.extend_from_slice(b"null"),
            _ => out.extend_from_slice(text.as_bytes()),
        }
    }
    out.push(b'}');
}

/// One row as a JSON object's text (used for dead-letter lines and test output).
pub fn row_to_json(row: crate::batch::Row<'_>) -> String {
    let keys: Vec<Vec<u8>> = row
        .batch()
        .columns()
        .map(|k| {
            let mut v = Vec::new();
            write_json_str(&mut v, k);
            v
        })
        .collect();
    let mut out = Vec::new();
    write_json_row(&mut out, &keys, row);
    String::from_utf8(out).expect("JSON text built from str is UTF-8")
}

impl<W: Write + Send> Writer for JsonlWriter<W> {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), WriteError> {
        if !batch.columns().eq(self.keys_for.iter().map(|s| s.as_str())) {
            self.keys.clear();
            for k in batch.columns() {
                let mut v = Vec::with_capacity(k.len() + 2);
                write_json_str(&mut v, k);
                self.keys.push(v);
            }
            self.keys_for = batch.columns().map(str::to_owned).collect();
        }
        for row in batch.rows() {
            self.line.clear();
            write_json_row(&mut self.line, &self.keys, row);
            self.line.push(b'\n');
            self.inner.write_all(&self.line)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(format: Format, text: &[u8]) -> (Vec<Batch>, Vec<BadRecord>) {
        let mut r = reader(format, text, 0);
        let mut out = Vec::new();
        let mut bad = Vec::new();
        loop {
            let mut b = Batch::new();
            if !r.read_batch(&mut b, 2, &mut bad).unwrap() {
                break;
            }
            out.push(b);
        }
        (out, bad)
    }

    fn write_all(format: Format, batches: &[Batch]) -> String {
        let mut buf = Vec::new();
        {
            let mut w = writer(format, &mut buf);
            for b in batches {
                w.write_batch(b).unwrap();
            }
            w.flush().unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn csv_round_trips_quotes_newlines_crlf_and_bom() {
        let input = "\u{feff}id,note\r\n1,\"a, b\"\r\n2,\"say \"\"hi\"\"\"\r\n3,\"two\nlines\"\r\n";
        let (batches, bad) = read_all(Format::Csv, input.as_bytes());
        assert!(bad.is_empty());
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].column_name(0), "id");
        assert_eq!(batches[1].row(0).get_str("note"), Some("two\nlines"));
        assert_eq!(batches[1].row(0).pos().line, 4);
        let out = write_all(Format::Csv, &batches);
        assert_eq!(
            out,
            "id,note\n1,\"a, b\"\n2,\"say \"\"hi\"\"\"\n3,\"two\nlines\"\n"
        );
    }

    #[test]
    fn csv_bad_rows_are_reported_with_lines() {
        let input = b"a,b\n1,2\n3\n4,\xff\n5,6\n";
        let (batches, bad) = read_all(Format::Csv, input);
        let rows: usize = batches.iter().map(|b| b.len()).sum();
        assert_eq!(rows, 2);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].pos.line, 3);
        assert!(
            bad[0].reason.contains("expected 2 fields"),
            "{}",
            bad[0].reason
        );
        assert_eq!(bad[1].pos.line, 4);
        assert!(
            bad[1].reason.contains("invalid UTF-8 in field `b`"),
            "{}",
            bad[1].reason
        );
    }

    #[test]
    fn jsonl_keeps_types_order_and_nesting() {
        let input = "{\"a\":1,\"b\":\"x\\\"y\",\"c\":[1, 2],\"d\":null,\"e\":true,\"f\":1.50}\n\n{\"b\":\"z\",\"g\":{\"h\":1}}\n";
        let (batches, bad) = read_all(Format::Jsonl, input.as_bytes());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(batches.len(), 1);
        let out = write_all(Format::Jsonl, &batches);
        assert_eq!(
            out,
            "{\"a\":1,\"b\":\"x\\\"y\",\"c\":[1, 2],\"d\":null,\"e\":true,\"f\":1.50}\n{\"b\":\"z\",\"g\":{\"h\":1}}\n"
        );
        assert_eq!(batches[0].row(1).pos().line, 3);
    }

    #[test]
    fn jsonl_bad_lines_do_not_add_columns() {
        let input = "{\"a\":1}\n[1]\n{\"zz\":1,\n{\"a\":2}\n\"s\"\n";
        let (batches, bad) = read_all(Format::Jsonl, input.as_bytes());
        assert_eq!(bad.len(), 3);
        assert_eq!(bad[0].pos.line, 2);
        assert!(
            bad[0].reason.contains("expected a JSON object"),
            "{}",
            bad[0].reason
        );
        assert_eq!(batches[0].width(), 1);
    }

    /// Under `cfg(test)` a batch stops at 64 bytes and a record may hold 256.
    #[test]
    fn oversized_records_are_bad_records() {
        let row = "x".repeat(40);
        let big = "y".repeat(300);
        let csv = format!("a\n{row}\n{row}\n{big}\n{row}\n");
        let (batches, bad) = read_all(Format::Csv, csv.as_bytes());
        // Two rows of 40 bytes do not fit one 64-byte batch.
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert!(batches.iter().all(|b| b.data_len() <= 64));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].pos.line, 4);
        assert!(bad[0].reason.contains("too large"), "{}", bad[0].reason);

        let jsonl = format!("{{\"a\":\"{row}\"}}\n{{\"a\":\"{row}\"}}\n{{\"a\":\"{big}\"}}\n");
        let (batches, bad) = read_all(Format::Jsonl, jsonl.as_bytes());
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(batches[1].row(0).pos().line, 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].pos.line, 3);
        assert_eq!(bad[0].raw, serde_json::Value::Null);
    }

    #[test]
    fn csv_writer_maps_later_schemas_by_name_and_refuses_new_fields() {
        let mut a = Batch::with_columns(["x", "y"]);
        a.start_row(Pos::default());
        a.push_str("1");
        a.push_str("2");
        a.end_row().unwrap();
        let mut b = Batch::with_columns(["y"]);
        b.start_row(Pos::default());
        b.push_str("3");
        b.end_row().unwrap();
        assert_eq!(write_all(Format::Csv, &[a.clone(), b]), "x,y\n1,2\n,3\n");
        let mut c = Batch::with_columns(["z"]);
        c.start_row(Pos::default());
        c.push_str("3");
        c.end_row().unwrap();
        let mut buf = Vec::new();
        let mut w = CsvWriter::new(&mut buf);
        w.write_batch(&a).unwrap();
        assert!(matches!(w.write_batch(&c), Err(WriteError::Schema { .. })));
    }
}
