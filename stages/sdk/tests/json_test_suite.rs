//! Robustness and conformance of the JSON-lines reader on JSONTestSuite's `test_parsing`
//! cases (MIT; copied into `tests/data/jsontestsuite/`, see `tests/data/README.md`).
//!
//! Each document is read as one JSON line (its `\n` bytes turned into `\r`, which JSON
//! treats the same way in every position) and as it is (possibly several lines). The
//! reader must never panic or hang; a `y_` document that is an object is one row equal to
//! the document; an `n_` document is one bad record at its line (several lines: only bad
//! records); an `i_` document is one or the other. A document that is only whitespace is
//! a blank line in JSON lines, not a record.
//!
//! Everything runs on a thread with a small stack: deep nesting
//! (`n_structure_100000_opening_arrays.json`) must not recurse.

mod common;

use std::path::PathBuf;

use common::{assert_copy_matches, data_dir, files, read_all, shared_dir, ReadAll};
use pipe_sdk::codec::{self, Format};

/// Small enough that recursing per nesting level of a 100,000-deep document would overflow.
const STACK: usize = 256 * 1024;

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn suite() -> PathBuf {
    data_dir().join("jsontestsuite/test_parsing")
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// The document as a JSON object, when serde_json reads it as one. Worked out on the
    /// caller's thread: serde_json's own recursion (up to its limit of 128) is not what the
    /// small stack is there to test.
    object: Option<serde_json::Value>,
}

impl Case {
    fn verdict(&self) -> char {
        self.name.as_bytes()[0] as char
    }

    /// The document as one line: `\n` and `\r` (whitespace or, inside a string, invalid
    /// control characters; both end a JSON line, issue 12) become `\t`, which is the same
    /// in both places.
    fn one_line(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .bytes
            .iter()
            .map(|&b| if matches!(b, b'\n' | b'\r') { b'\t' } else { b })
            .collect();
        v.push(b'\n');
        v
    }

    /// True for a document with nothing but JSON whitespace (and a BOM) in it.
    fn is_blank(&self) -> bool {
        self.is_blank_at(1)
    }

    /// Whether the document is a blank line at line `line` of a stream: a byte-order
    /// mark only counts as nothing at the very start.
    fn is_blank_at(&self, line: u64) -> bool {
        let b = match line {
            1 => self
                .bytes
                .strip_prefix(b"\xEF\xBB\xBF")
                .unwrap_or(&self.bytes),
            _ => &self.bytes,
        };
        b.iter().all(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
    }

    fn object(&self) -> Option<serde_json::Value> {
        self.object.clone()
    }
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = files(&suite())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let object = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .filter(|v| v.is_object());
            Case {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
                object,
            }
        })
        .collect();
    let count = |v| cases.iter().filter(|c| c.verdict() == v).count();
    assert!(
        count('y') >= 95 && count('n') >= 188 && count('i') >= 35,
        "JSONTestSuite cases missing: y {} n {} i {}",
        count('y'),
        count('n'),
        count('i')
    );
    cases
}

/// The row of `all` as a JSON value.
fn only_row(all: &ReadAll) -> serde_json::Value {
    let row = all.batches[0].row(0);
    serde_json::from_str(&codec::row_to_json(row)).unwrap()
}

fn check_one_line(case: &Case, all: &ReadAll) {
    let name = &case.name;
    if case.is_blank() {
        assert_eq!((all.rows(), all.bad.len()), (0, 0), "{name}: a blank line");
        return;
    }
    assert_eq!(all.rows() + all.bad.len(), 1, "{name}: one record");
    if let Some(bad) = all.bad.first() {
        assert_eq!(bad.pos.line, 1, "{name}");
        assert!(bad.reason.starts_with("invalid"), "{name}: {}", bad.reason);
    }
    match case.verdict() {
        'y' => match case.object() {
            Some(expected) => {
                assert_eq!(all.rows(), 1, "{name}: {:?}", all.bad);
                assert_eq!(only_row(all), expected, "{name}");
                assert_eq!(all.batches[0].row(0).pos().line, 1);
            }
            None => {
                let reason = &all.bad[0].reason;
                assert!(
                    reason.contains("expected a JSON object"),
                    "{name}: {reason}"
                );
            }
        },
        'n' => assert_eq!(all.bad.len(), 1, "{name}: accepted"),
        _ => {}
    }
}

#[test]
fn every_document_as_one_json_line() {
    let cases = cases();
    on_small_stack(move || {
        for case in cases {
            let all = read_all(Format::Jsonl, &case.one_line());
            check_one_line(&case, &all);
        }
    });
}

#[test]
fn every_document_as_it_is() {
    let cases = cases();
    on_small_stack(move || {
        for case in cases {
            let name = &case.name;
            let all = read_all(Format::Jsonl, &case.bytes);
            let lines: Vec<&[u8]> = case.bytes.split(|&b| b == b'\n').collect();
            if lines.len() == 1 || (lines.len() == 2 && lines[1].is_empty()) {
                check_one_line(&case, &all);
                continue;
            }
            // Several lines: each non-blank line is one record, at its own line.
            let non_blank: Vec<u64> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                .map(|(i, _)| i as u64 + 1)
                .collect();
            let mut seen: Vec<u64> = all.row_lines();
            seen.extend(all.bad_lines());
            seen.sort();
            assert_eq!(seen, non_blank, "{name}");
            if case.verdict() == 'n' {
                assert_eq!(
                    all.rows(),
                    0,
                    "{name}: a line of a bad document was accepted"
                );
            }
        }
    });
}

#[test]
fn all_documents_in_one_stream_keep_their_verdicts_and_lines() {
    let cases = cases();
    on_small_stack(move || {
        let mut stream = Vec::new();
        for case in &cases {
            stream.extend(case.one_line());
        }
        // Small batches: verdicts must not depend on what else is in the batch.
        let all = common::read_from(Format::Jsonl, &stream[..], 7);
        let rows = all.records();
        let mut rows = rows.iter().peekable();
        let mut bad = all.bad.iter().peekable();
        for (i, case) in cases.iter().enumerate() {
            let line = i as u64 + 1;
            let row = rows.next_if(|(l, _)| *l == line);
            let rejected = bad.next_if(|b| b.pos.line == line);
            let name = &case.name;
            match (case.verdict(), case.is_blank_at(line), case.object()) {
                (_, true, _) => assert!(row.is_none() && rejected.is_none(), "{name}"),
                ('y', _, Some(_)) => assert!(row.is_some() && rejected.is_none(), "{name}"),
                ('y', _, None) | ('n', _, _) => {
                    assert!(row.is_none() && rejected.is_some(), "{name}")
                }
                _ => assert!(row.is_some() != rejected.is_some(), "{name}"),
            }
        }
        assert!(rows.next().is_none() && bad.next().is_none());
    });
}

#[test]
fn deep_nesting_inside_an_object_neither_recurses_nor_is_lost() {
    on_small_stack(|| {
        let depth = 100_000;
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let mut input = String::new();
        input.push_str(&format!("{{\"deep\":{arrays}}}\n"));
        input.push_str(&format!("{{\"deep\":{objects}}}\n"));
        input.push_str(&format!("{{\"deep\":{}}}\n", "[".repeat(depth)));
        input.push_str(&format!("{}\n", "{\"a\":[".repeat(depth)));
        input.push_str(&"[".repeat(depth));
        let all = read_all(Format::Jsonl, input.as_bytes());
        let rows = all.records();
        assert_eq!(rows.len(), 2);
        // Nested values are kept as their JSON text, whole.
        assert_eq!(rows[0].1[0].2, arrays);
        assert_eq!(rows[1].1[0].2, objects);
        assert_eq!(all.bad_lines(), [3, 4, 5]);
    });
}

#[test]
fn the_copies_match_shared_testdata_when_it_is_there() {
    if let Some(shared) = shared_dir("jsontestsuite") {
        assert_copy_matches(&shared, &data_dir().join("jsontestsuite"));
    }
}
