//! Edge cases of the SDK's readers and writers: empty and header-only inputs, huge fields,
//! wide records, byte-order marks, exact line numbers across CRLF, blank lines and quoted
//! newlines, invalid UTF-8, and quotes left open at the end of the input. Each test that
//! guards a fix in `codec.rs` is named after what it guards.

mod common;

use common::{read_all, read_from, write_all, Chunked, ReadAll};
use pipe_sdk::codec::{CsvReader, Format, JsonlReader, Reader};
use pipe_sdk::{Batch, Kind, Pos};

fn csv(text: impl AsRef<[u8]>) -> ReadAll {
    read_all(Format::Csv, text.as_ref())
}

fn jsonl(text: impl AsRef<[u8]>) -> ReadAll {
    read_all(Format::Jsonl, text.as_ref())
}

/// Reads `text` whole, one byte per read, and in odd chunks: all three must agree.
fn csv_every_way(text: &[u8]) -> ReadAll {
    let whole = read_all(Format::Csv, text);
    for sizes in [vec![1], vec![2, 3], vec![7, 1, 5]] {
        let chunked = read_from(Format::Csv, Chunked::new(text, sizes.clone()), 1024);
        assert_eq!(chunked.records(), whole.records(), "chunks {sizes:?}");
        assert_eq!(chunked.bad, whole.bad, "chunks {sizes:?}");
    }
    whole
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn empty_input_is_no_records() {
    for text in ["", "\u{feff}", "\n", "\r\n\r\n"] {
        let all = csv(text);
        assert_eq!((all.rows(), all.bad.len()), (0, 0), "{text:?}");
    }
    for text in ["", "\u{feff}", "\n", "  \r\n\t\n"] {
        let all = jsonl(text);
        assert_eq!((all.rows(), all.bad.len()), (0, 0), "{text:?}");
    }
}

#[test]
fn header_only_csv_has_its_columns_and_no_rows() {
    for text in ["a,b", "a,b\n", "a,b\r\n", "\u{feff}a,b\r\n\r\n"] {
        let mut reader = CsvReader::new(text.as_bytes(), 0);
        let mut batch = Batch::new();
        let mut bad = Vec::new();
        assert!(
            !reader.read_batch(&mut batch, 10, &mut bad).unwrap(),
            "{text:?}"
        );
        assert!(bad.is_empty() && batch.is_empty());
        assert_eq!(reader.header(), Some(&strs(&["a", "b"])[..]), "{text:?}");
        // Exhausted stays exhausted.
        assert!(!reader.read_batch(&mut batch, 10, &mut bad).unwrap());
    }
}

#[test]
fn a_one_megabyte_field_reads_whole_and_keeps_later_lines() {
    // A field of 1 MiB holding commas, doubled quotes and newlines.
    let field = "ab,\"c\"\n".repeat((1 << 20) / 7 + 1);
    assert!(field.len() >= 1 << 20);
    let quoted = field.replace('"', "\"\"");
    let text = format!("id,big\n1,\"{quoted}\"\n2,after\n");
    let all = csv(&text);
    assert!(all.bad.is_empty(), "{:?}", all.bad);
    assert_eq!(all.texts(), [strs(&["1", &field]), strs(&["2", "after"])]);
    let newlines = field.matches('\n').count() as u64;
    assert_eq!(all.row_lines(), [2, 3 + newlines]);

    // The same through JSON lines, with escapes.
    let out = write_all(Format::Jsonl, &all.batches);
    let back = jsonl(&out);
    assert_eq!(back.texts(), all.texts());
    assert_eq!(back.row_lines(), [1, 2]);
}

#[test]
fn ten_thousand_columns() {
    let n = 10_000;
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let values: Vec<String> = (0..n).map(|i| (i * 7).to_string()).collect();
    let text = format!(
        "{}\n{}\n{}\n",
        names.join(","),
        values.join(","),
        values.join(",")
    );
    let all = csv(&text);
    assert!(all.bad.is_empty());
    assert_eq!(all.batches[0].width(), n);
    assert_eq!(all.texts(), [values.clone(), values.clone()]);
    assert_eq!(all.batches[0].row(1).get_str("c9999"), Some("69993"));

    // JSON lines: keys in column order, then in reverse order (the slow path), then a
    // line that is short of one key and brings a new one.
    let jsonl_text = write_all(Format::Jsonl, &all.batches);
    let first = std::str::from_utf8(&jsonl_text)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let mut reversed: Vec<String> = names
        .iter()
        .zip(&values)
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    reversed.reverse();
    let input = format!(
        "{first}\n{{{}}}\n{{\"new\":1,{}}}\n",
        reversed.join(","),
        reversed[1..].join(",")
    );
    let back = jsonl(&input);
    assert!(back.bad.is_empty());
    // Every line keeps its own key order (DESIGN §3): the reversed line cannot share a
    // batch with the first, so it starts the next one; the third line's new key is
    // placed where that line has it (first), and its other keys follow the batch's order.
    assert_eq!(back.batches.len(), 2);
    assert_eq!(back.batches[0].width(), n);
    let b = &back.batches[1];
    assert_eq!(b.width(), n + 1);
    assert_eq!(b.column_name(0), "new");
    assert_eq!(b.column_name(1), "c9999");
    assert_eq!(b.row(0).get_str("c0"), Some("0"));
    assert_eq!(b.row(0).get_str("c9999"), Some("69993"));
    assert_eq!(b.row(1).get("c9999"), pipe_sdk::Value::Absent);
    assert_eq!(b.row(1).get("new"), pipe_sdk::Value::Int(1));
    assert_eq!(b.row(1).get_str("c5000"), Some("35000"));
    assert_eq!(
        std::str::from_utf8(&write_all(Format::Jsonl, &back.batches)).unwrap(),
        input,
        "JSON lines come back with each line's own key order"
    );

    // And back to CSV, in the header's order.
    let again = csv(write_all(Format::Csv, &all.batches));
    assert_eq!(again.texts(), all.texts());
}

#[test]
fn a_utf8_bom_is_dropped_however_it_arrives() {
    let text = b"\xEF\xBB\xBF\"id\",name\r\n1,ann\r\n";
    let all = csv_every_way(text);
    assert_eq!(all.records()[0].1[0].0, "id");
    assert_eq!(all.row_lines(), [2]);
    // Only the first one is a byte-order mark; a second belongs to the name.
    let all = csv_every_way("\u{feff}\u{feff}id\n1\n".as_bytes());
    assert_eq!(all.records()[0].1[0].0, "\u{feff}id");
    // A BOM inside a quoted header field is the field's text.
    let all = csv_every_way("\"\u{feff}id\"\n1\n".as_bytes());
    assert_eq!(all.records()[0].1[0].0, "\u{feff}id");

    let all = jsonl("\u{feff}{\"a\":1}\n\u{feff}{\"a\":2}\n");
    assert_eq!(all.row_lines(), [1]);
    assert_eq!(all.bad_lines(), [2], "a BOM is only a BOM at the start");
}

/// Regression: csv reports a record at the end of the previous one, so rows after blank
/// lines came out on the first blank line's number; and lone-CR files were all line 1.
#[test]
fn csv_lines_after_blank_lines_and_crlf() {
    let cases: &[(&str, &[u64])] = &[
        ("a,b\n1,2\n3,4\n", &[2, 3]),
        ("a,b\r\n1,2\r\n3,4", &[2, 3]),
        ("a,b\n\n\n1,2\n\n3,4\n", &[4, 6]),
        ("a,b\r\n\r\n1,2\r\n\r\n\r\n3,4\r\n", &[3, 6]),
        ("a,b\r1,2\r\r3,4\r", &[2, 4]),
        ("a,b\r\n1,\"x\r\ny\r\n\"\r\n3,4\r\n", &[2, 5]),
        ("a,b\n1,\"x\ny\"\n\n3,\"\n\r\n\r\"\n5,6", &[2, 5, 9]),
        ("a,b\r\n1,\"x\r\r\ny\"\r\n3,4", &[2, 5]),
        ("a,\"b\nc\"\n1,2\n", &[3]),
        ("\n\na,b\n1,2\n", &[4]),
    ];
    for (text, lines) in cases {
        let all = csv_every_way(text.as_bytes());
        assert!(all.bad.is_empty(), "{text:?}: {:?}", all.bad);
        assert_eq!(all.row_lines(), *lines, "{text:?}");
    }
    // Bad records are placed the same way.
    let all = csv_every_way(b"a,b\r\n\r\n1\r\n\r\n2,3,4\r\n5,6");
    assert_eq!(all.bad_lines(), [3, 5]);
    assert_eq!(all.row_lines(), [6]);
}

#[test]
fn jsonl_lines_count_every_line_break() {
    // A lone `\r` ends a line too (issue 12), as in CSV: `\r\r\n` is two line ends.
    let all = jsonl("{\"a\":1}\r\n\r\n{\"a\":2}\n\n  \n{\"a\":3}\r\r\n{\"a\":");
    assert_eq!(all.row_lines(), [1, 3, 6]);
    assert_eq!(all.bad_lines(), [8]);
}

/// Regression: a header with invalid UTF-8 ended the input silently; the records after it
/// went uncounted.
#[test]
fn invalid_utf8_in_the_header_makes_every_record_bad() {
    let all = csv_every_way(b"id,na\xFFme\n1,ann\n\n2,bob");
    assert_eq!(all.rows(), 0);
    assert_eq!(all.bad_lines(), [1, 2, 4]);
    assert!(
        all.bad[0].reason.contains("header"),
        "{}",
        all.bad[0].reason
    );
    assert!(
        all.bad[0].reason.contains("field 2"),
        "{}",
        all.bad[0].reason
    );
    assert_eq!(all.bad[0].raw, serde_json::json!(["id", "na\u{fffd}me"]));
    assert!(
        all.bad[1].reason.starts_with("no usable header"),
        "{}",
        all.bad[1].reason
    );
    assert_eq!(all.bad[2].raw, serde_json::json!(["2", "bob"]));
}

#[test]
fn invalid_utf8_in_a_field_rejects_that_record_only() {
    let all = csv_every_way(b"id,name,note\n1,ann,ok\n2,b\xC3\x28b,x\n3,cy,\xE2\x82\n4,dee,fine\n");
    assert_eq!(all.row_lines(), [2, 5]);
    assert_eq!(all.bad_lines(), [3, 4]);
    assert!(
        all.bad[0].reason.contains("`name`"),
        "{}",
        all.bad[0].reason
    );
    assert!(
        all.bad[1].reason.contains("`note`"),
        "{}",
        all.bad[1].reason
    );
    // Valid text cut in two by a comma: each field must be valid on its own.
    let all = csv(b"a,b\n\xC3,\xA9\n");
    assert_eq!(all.bad_lines(), [2]);
    assert!(all.bad[0].reason.contains("UTF-8"), "{}", all.bad[0].reason);

    let all = jsonl(b"{\"a\":\"ok\"}\n{\"a\":\"\xFF\"}\n{\"a\":\"fine\"}\n");
    assert_eq!(all.row_lines(), [1, 3]);
    assert_eq!(all.bad_lines(), [2]);
    assert_eq!(all.bad[0].reason, "invalid UTF-8 at column 7");
}

/// Regression: csv-core ends an open quoted field at the end of the input, so one stray
/// quote silently made every later line part of one field.
#[test]
fn unterminated_quote_at_eof_is_a_bad_record() {
    let all = csv_every_way(b"id,note\n1,ok\n2,\"never closed\n3,x\n4,y\n");
    assert_eq!(all.row_lines(), [2]);
    assert_eq!(all.bad_lines(), [3]);
    assert!(
        all.bad[0].reason.contains("unterminated quoted field")
            && all.bad[0].reason.contains("line 3"),
        "{}",
        all.bad[0].reason
    );
    assert_eq!(
        all.bad[0].raw,
        serde_json::json!(["2", "never closed\n3,x\n4,y\n"])
    );

    // The quote's own line is named when the record starts earlier.
    let all = csv_every_way(b"a,b,c\r\n1,\"two\r\nlines\",\"open\r\n");
    assert_eq!(all.bad_lines(), [2]);
    assert!(
        all.bad[0].reason.contains("line 3"),
        "{}",
        all.bad[0].reason
    );

    // An escaped quote at the very end leaves the field open.
    let all = csv_every_way(b"a,b\n1,\"x\"\"");
    assert_eq!((all.rows(), all.bad_lines()), (0, vec![2]));

    // In the header: nothing can be read.
    let all = csv_every_way(b"\"a,b\n1,2\n");
    assert_eq!((all.rows(), all.bad_lines()), (0, vec![1]));

    // Not open: a closed quote at the end, quotes inside unquoted fields.
    for text in [
        &b"a,b\n1,\"x\""[..],
        b"a,b\n1,x\"y",
        b"a,b\n1,\"x\"y\"",
        b"a,b\n\"\",\"\"\"\"",
    ] {
        let all = csv_every_way(text);
        assert!(
            all.bad.is_empty(),
            "{:?}: {:?}",
            String::from_utf8_lossy(text),
            all.bad
        );
        assert_eq!(all.rows(), 1);
    }
}

/// Regression: a line holding only `""` (one empty field) was dropped as if blank: a
/// record neither read nor reported.
#[test]
fn a_quoted_empty_line_is_a_bad_record_not_dropped() {
    let all = csv_every_way(b"a,b\n\"\"\n1,2\n");
    assert_eq!(all.row_lines(), [3]);
    assert_eq!(all.bad_lines(), [2]);
    // With one column it is a row with an empty value (how the CSV writer writes one).
    let all = csv_every_way(b"a\n\"\"\n1\n");
    assert_eq!(all.texts(), [strs(&[""]), strs(&["1"])]);
}

/// Regression: a run of bad records was read in one call, however long.
#[test]
fn bad_records_count_towards_the_batch_size() {
    let text = format!("a,b\n{}", "1\n".repeat(10));
    let mut reader = pipe_sdk::codec::reader(Format::Csv, text.as_bytes(), 0);
    let mut bad = Vec::new();
    let mut batch = Batch::new();
    assert!(reader.read_batch(&mut batch, 3, &mut bad).unwrap());
    assert_eq!((batch.len(), bad.len()), (0, 3));

    let text = "x\n".repeat(10);
    let mut reader = pipe_sdk::codec::reader(Format::Jsonl, text.as_bytes(), 0);
    let mut bad = Vec::new();
    assert!(reader.read_batch(&mut batch, 4, &mut bad).unwrap());
    assert_eq!((batch.len(), bad.len()), (0, 4));
    // The helper checks the bound on every call and that everything is accounted for.
    assert_eq!(read_from(Format::Jsonl, text.as_bytes(), 4).bad.len(), 10);
}

/// Regression: a batch recycled with `clear_rows` kept the last batch's keys as columns.
#[test]
fn jsonl_batch_columns_are_its_own_lines_keys() {
    let mut reader = JsonlReader::new("{\"a\":1}\n{\"b\":2}\n".as_bytes(), 0);
    let mut batch = Batch::new();
    let mut bad = Vec::new();
    assert!(reader.read_batch(&mut batch, 1, &mut bad).unwrap());
    assert_eq!(batch.columns().collect::<Vec<_>>(), ["a"]);
    batch.clear_rows();
    assert!(reader.read_batch(&mut batch, 1, &mut bad).unwrap());
    assert_eq!(batch.columns().collect::<Vec<_>>(), ["b"]);
}

#[test]
fn jsonl_reasons_name_a_real_column() {
    let all = jsonl("[1]\n\"s\"\n{\"a\":1,}\n{\"a\":1} x\n");
    let reasons: Vec<&str> = all.bad.iter().map(|b| b.reason.as_str()).collect();
    assert_eq!(all.bad_lines(), [1, 2, 3, 4]);
    assert!(
        reasons[0].contains("expected a JSON object at column 1"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("expected a JSON object"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].contains("column 8"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("trailing characters at column 9"),
        "{}",
        reasons[3]
    );
}

#[test]
fn jsonl_repeated_key_keeps_its_first_place_and_last_value() {
    let all = jsonl("{\"a\":1,\"b\":2,\"a\":\"x\"}\n");
    let (_, fields) = &all.records()[0];
    assert_eq!(
        fields,
        &[
            ("a".to_string(), Kind::Str, "x".to_string()),
            ("b".to_string(), Kind::Int, "2".to_string())
        ]
    );
}

#[test]
fn csv_writer_output_reads_back_for_awkward_values() {
    let values = [
        "", " ", "\"", "a\rb", "\r\n", "x,y", "\u{feff}", "é😀", "#", "\"\"",
    ];
    let mut batch = Batch::with_columns(["k", "v"]);
    for (i, v) in values.iter().enumerate() {
        batch.start_row(Pos {
            input: 0,
            line: i as u64 + 2,
        });
        batch.push_str(&i.to_string());
        batch.push_str(v);
        batch.end_row().unwrap();
    }
    let out = write_all(Format::Csv, &[batch]);
    let back = csv_every_way(&out);
    assert!(back.bad.is_empty());
    let got: Vec<String> = back.texts().into_iter().map(|f| f[1].clone()).collect();
    assert_eq!(got, values);
    // A lone empty value in a one-column file is written `""`, never as a blank line.
    let mut one = Batch::with_columns([""]);
    one.start_row(Pos::default());
    one.push_str("");
    one.end_row().unwrap();
    let out = write_all(Format::Csv, &[one]);
    assert_eq!(out, b"\"\"\n\"\"\n");
    assert_eq!(csv(&out).texts(), [strs(&[""])]);
}
