//! Property tests of the SDK's readers and writers (`proptest`, 256 cases per property by
//! default; `PROPTEST_CASES` changes it).
//!
//! - Both readers survive any bytes, read in any chunks, and agree with themselves
//!   whatever the chunking.
//! - JSON lines: every non-blank line is exactly one row or one bad record, at its line.
//! - Structured random CSV (fields with commas, quotes, CR, LF, CRLF, unicode; blank
//!   lines; a BOM; records of the wrong width): every record is one row with exactly its
//!   fields, or one bad record, at the line it starts on.
//! - CSV write → read gives back every field value; JSON lines write → read gives back
//!   every key, its order, kind and text; JSON lines read → write gives back each line,
//!   with its keys in the batch's column order.

mod common;

use common::{read_all, read_from, write_all, Chunked};
use pipe_sdk::codec::Format;
use pipe_sdk::{Batch, Kind, Pos};
use proptest::collection::vec;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

/// Bytes that look like CSV or JSON often enough to reach the interesting states.
fn structural_bytes(alphabet: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(proptest::sample::select(alphabet), 0..256),
    ]
}

const CSV_BYTES: &[u8] = b"ab ,,\"\"\r\n\n\xEF\xBB\xBF\xC3\xA9\xFF";
const JSON_BYTES: &[u8] = b"{}[]\"\":,,01e.-+ \t\r\n\n\\untrufalsea\xC3\xA9\xFF\xEF\xBB\xBF";

/// The 1-based numbers of the lines a JSON-lines reader must account for: all but blank
/// ones (whitespace, or a byte-order mark alone on line 1).
fn non_blank_lines(text: &[u8]) -> Vec<u64> {
    // Lines end at `\n`, `\r\n` or a lone `\r` (issue 12).
    let mut lines: Vec<&[u8]> = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < text.len() {
        match text[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines.push(&text[start..]);
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .iter()
        .enumerate()
        .filter(|(i, line)| {
            let line = if *i == 0 {
                line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
            } else {
                line
            };
            !line.iter().all(u8::is_ascii_whitespace)
        })
        .map(|(i, _)| i as u64 + 1)
        .collect()
}

/// Line breaks as the CSV reader counts them: `\n`, `\r\n`, lone `\r`.
fn line_at(text: &[u8], offset: usize) -> u64 {
    let mut line = 1;
    for i in 0..offset {
        if text[i] == b'\n' || (text[i] == b'\r' && text.get(i + 1) != Some(&b'\n')) {
            line += 1;
        }
    }
    line
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn csv_reader_survives_any_bytes_in_any_chunks(
        bytes in structural_bytes(CSV_BYTES),
        max in 1usize..5,
        chunks in vec(1usize..9, 1..4),
    ) {
        let whole = read_all(Format::Csv, &bytes);
        let chunked = read_from(Format::Csv, Chunked::new(&bytes, chunks), max);
        prop_assert_eq!(chunked.records(), whole.records());
        prop_assert_eq!(&chunked.bad, &whole.bad);
        let last = line_at(&bytes, bytes.len());
        let mut lines = whole.row_lines();
        lines.extend(whole.bad_lines());
        prop_assert!(lines.iter().all(|&l| (1..=last).contains(&l)), "{:?} past {}", lines, last);
    }

    #[test]
    fn jsonl_reader_accounts_for_every_line(
        bytes in structural_bytes(JSON_BYTES),
        max in 1usize..5,
        chunks in vec(1usize..9, 1..4),
    ) {
        let all = read_from(Format::Jsonl, Chunked::new(&bytes, chunks), max);
        let mut lines = all.row_lines();
        lines.extend(all.bad_lines());
        lines.sort();
        prop_assert_eq!(lines, non_blank_lines(&bytes));
        prop_assert_eq!(all.records(), read_all(Format::Jsonl, &bytes).records());
    }
}

// ---- structured CSV ----

/// A field's text and whether to quote it even when it need not be.
type Field = (String, bool);

fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,6}",
        "[a-z ,\"\r\n]{0,8}",
        "\\PC{0,6}",
        Just(String::new()),
        Just("\"".to_string()),
        Just("é,ʤ 😀".to_string()),
        Just("\r\n".to_string()),
        Just("\r".to_string()),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    (field_text(), any::<bool>())
}

fn terminator() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

#[derive(Debug, Clone)]
struct CsvRecord {
    blank_lines_before: Vec<&'static str>,
    fields: Vec<Field>,
    terminator: &'static str,
}

#[derive(Debug, Clone)]
struct CsvCase {
    bom: bool,
    header: Vec<Field>,
    header_terminator: &'static str,
    records: Vec<CsvRecord>,
    /// Whether the last record ends with its terminator.
    final_terminator: bool,
}

fn csv_record(width: usize) -> impl Strategy<Value = CsvRecord> {
    let fields = prop_oneof![8 => Just(width), 1 => 1usize..7].prop_flat_map(|n| vec(field(), n));
    (vec(terminator(), 0..3), fields, terminator()).prop_map(
        |(blank_lines_before, fields, terminator)| CsvRecord {
            blank_lines_before,
            fields,
            terminator,
        },
    )
}

fn csv_case() -> impl Strategy<Value = CsvCase> {
    (1usize..5).prop_flat_map(|width| {
        (
            any::<bool>(),
            vec(field(), width),
            terminator(),
            vec(csv_record(width), 0..10),
            any::<bool>(),
        )
            .prop_map(
                |(bom, header, header_terminator, records, final_terminator)| CsvCase {
                    bom,
                    header,
                    header_terminator,
                    records,
                    final_terminator,
                },
            )
    })
}

/// One record as CSV text: quoted when it must be (or when asked to).
fn encode(fields: &[Field]) -> String {
    let lone_empty = fields.len() == 1 && fields[0].0.is_empty();
    fields
        .iter()
        .map(|(text, quote)| {
            if *quote || lone_empty || text.contains([',', '"', '\r', '\n']) {
                format!("\"{}\"", text.replace('"', "\"\""))
            } else {
                text.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What the reader must make of a record.
#[derive(Debug, PartialEq)]
enum Expect {
    Row(u64, Vec<String>),
    Bad(u64),
}

impl CsvCase {
    /// The CSV text, and what each record must read as.
    fn render(&self) -> (Vec<u8>, Vec<Expect>) {
        let mut text = Vec::new();
        if self.bom {
            text.extend_from_slice(b"\xEF\xBB\xBF");
        }
        text.extend(encode(&self.header).bytes());
        text.extend(self.header_terminator.bytes());
        let mut starts = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            for blank in &r.blank_lines_before {
                text.extend(blank.bytes());
            }
            starts.push(text.len());
            text.extend(encode(&r.fields).bytes());
            if i + 1 < self.records.len() || self.final_terminator {
                text.extend(r.terminator.bytes());
            }
        }
        let body = if self.bom { 3 } else { 0 };
        let expect = self
            .records
            .iter()
            .zip(starts)
            .map(|(r, start)| {
                let line = line_at(&text[body..], start - body);
                if r.fields.len() == self.header.len() {
                    Expect::Row(line, r.fields.iter().map(|f| f.0.clone()).collect())
                } else {
                    Expect::Bad(line)
                }
            })
            .collect();
        (text, expect)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn structured_csv_reads_every_record_at_its_line(
        case in csv_case(),
        max in 1usize..6,
        chunks in vec(1usize..17, 1..4),
    ) {
        let (text, expect) = case.render();
        let all = read_from(Format::Csv, Chunked::new(&text, chunks), max);
        // Rows and bad records, merged in input order.
        let mut got: Vec<Expect> = all
            .records()
            .into_iter()
            .map(|(line, fields)| Expect::Row(line, fields.into_iter().map(|f| f.2).collect()))
            .chain(all.bad.iter().map(|b| Expect::Bad(b.pos.line)))
            .collect();
        got.sort_by_key(|e| match e { Expect::Row(l, _) | Expect::Bad(l) => *l });
        prop_assert_eq!(&got, &expect, "{:?}", String::from_utf8_lossy(&text));
        prop_assert!(all.bad.iter().all(|b| b.reason.starts_with("expected")), "{:?}", all.bad);
        let header: Vec<String> = case.header.iter().map(|f| f.0.clone()).collect();
        for b in &all.batches {
            prop_assert!(b.columns().eq(header.iter().map(String::as_str)));
        }
    }

    #[test]
    fn csv_write_then_read_gives_back_every_value(
        header in (1usize..5).prop_flat_map(|w| vec(field_text(), w)),
        rows in vec(vec(field_text(), 4), 0..8),
    ) {
        let width = header.len();
        let mut batch = Batch::with_columns(&header);
        for (i, row) in rows.iter().enumerate() {
            batch.start_row(Pos { input: 0, line: i as u64 + 2 });
            for text in &row[..width] {
                batch.push_str(text);
            }
            batch.end_row().unwrap();
        }
        let text = write_all(Format::Csv, std::slice::from_ref(&batch));
        let back = read_all(Format::Csv, &text);
        prop_assert!(back.bad.is_empty(), "{:?}", back.bad);
        let want: Vec<Vec<String>> = rows.iter().map(|r| r[..width].to_vec()).collect();
        prop_assert_eq!(back.texts(), want);
        for b in &back.batches {
            prop_assert!(b.columns().eq(header.iter().map(String::as_str)));
        }
    }
}

// ---- JSON lines ----

fn float_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        Just("1.50".to_string()),
        Just("-0.0".to_string()),
        Just("1E5".to_string()),
        Just("2e-7".to_string()),
        Just("12345678901234567890".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((any::<String>(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn nested_text() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value()
            .prop_filter("nested", |v| v.is_array() || v.is_object())
            .prop_map(|v| v.to_string()),
        Just("[1, 2]".to_string()),
        Just("{ \"a\" : [ ] }".to_string()),
    ]
}

fn cell() -> impl Strategy<Value = (Kind, String)> {
    prop_oneof![
        Just((Kind::Absent, String::new())),
        Just((Kind::Null, String::new())),
        any::<bool>().prop_map(|b| (Kind::Bool, b.to_string())),
        any::<i64>().prop_map(|i| (Kind::Int, i.to_string())),
        float_text().prop_map(|t| (Kind::Float, t)),
        any::<String>().prop_map(|s| (Kind::Str, s)),
        "[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}\u{feff}a-z]{0,6}".prop_map(|s| (Kind::Str, s)),
        nested_text().prop_map(|t| (Kind::Json, t)),
    ]
}

fn column_names() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set(
        prop_oneof![any::<String>(), "[\\x00-\\x1f\"\\\\a-c]{0,3}"],
        1..6,
    )
    .prop_map(|set| set.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jsonl_write_then_read_gives_back_keys_order_kinds_and_text(
        names in column_names(),
        rows in vec(vec(cell(), 6), 0..6),
    ) {
        let mut batch = Batch::with_columns(&names);
        let mut want = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let line = i as u64 + 1;
            batch.start_row(Pos { input: 0, line });
            let mut fields = Vec::new();
            for (name, (kind, text)) in names.iter().zip(row) {
                batch.push_raw(*kind, text);
                if *kind != Kind::Absent {
                    fields.push((name.clone(), *kind, text.clone()));
                }
            }
            batch.end_row().unwrap();
            want.push((line, fields));
        }
        // Each row comes back with its keys in its own order (DESIGN §3).
        let text = write_all(Format::Jsonl, std::slice::from_ref(&batch));
        let back = read_all(Format::Jsonl, &text);
        prop_assert!(back.bad.is_empty(), "{:?}", back.bad);
        prop_assert_eq!(back.records(), want, "{}", String::from_utf8_lossy(&text));
    }

    #[test]
    fn jsonl_read_then_write_gives_back_each_line(
        lines in vec(
            vec((proptest::sample::select(&["a", "b", "c", "é", "\"q\"", "\n", ""][..]), json_value()), 0..5),
            0..8,
        ),
    ) {
        // Each line an object with its own key order (a repeated key: serde_json keeps
        // its first place and last value, as the reader does).
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = lines
            .into_iter()
            .map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .collect();
        let mut input = String::new();
        for o in &objects {
            input.push_str(&serde_json::to_string(o).unwrap());
            input.push('\n');
        }
        // Each line comes back exactly, with its own key order (DESIGN §3), however the
        // lines' keys interleave: a line whose order the batch cannot follow starts a
        // new batch.
        let all = read_all(Format::Jsonl, input.as_bytes());
        prop_assert!(all.bad.is_empty(), "{:?}", all.bad);
        prop_assert_eq!(all.batches.is_empty(), objects.is_empty());
        let out = String::from_utf8(write_all(Format::Jsonl, &all.batches)).unwrap();
        prop_assert_eq!(out, input);
    }
}
