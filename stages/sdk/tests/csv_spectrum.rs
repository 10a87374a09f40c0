//! Conformance: every case of the csv-spectrum suite reads to exactly the records its JSON
//! twin lists, and survives a trip through JSON lines and CSV. The cases live in
//! `tests/data/csv-spectrum/` (BSD-2-Clause; see `tests/data/README.md`).

mod common;

use std::path::PathBuf;

use common::{assert_copy_matches, data_dir, files, read_all, read_from, shared_dir, write_all};
use pipe_sdk::codec::Format;
use pipe_sdk::Kind;

type Record = Vec<(String, String)>;

fn suite() -> PathBuf {
    data_dir().join("csv-spectrum")
}

/// `(name, csv bytes, expected records)` for every case.
fn cases() -> Vec<(String, Vec<u8>, Vec<Record>)> {
    let cases: Vec<_> = files(&suite().join("csvs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .map(|csv| {
            let name = csv.file_stem().unwrap().to_string_lossy().into_owned();
            let json = suite().join("json").join(format!("{name}.json"));
            let expected: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            let expected = expected
                .into_iter()
                .map(|obj| {
                    obj.into_iter()
                        .map(|(k, v)| {
                            (
                                k,
                                v.as_str()
                                    .expect("csv-spectrum values are strings")
                                    .to_owned(),
                            )
                        })
                        .collect()
                })
                .collect();
            (name, std::fs::read(&csv).unwrap(), expected)
        })
        .collect();
    assert!(
        cases.len() >= 11,
        "csv-spectrum cases missing: {}",
        cases.len()
    );
    cases
}

fn records(all: &common::ReadAll) -> Vec<Record> {
    all.records()
        .into_iter()
        .map(|(_, fields)| {
            fields
                .into_iter()
                .map(|(name, kind, text)| {
                    assert_eq!(kind, Kind::Str, "CSV cells are strings");
                    (name, text)
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_case_reads_to_its_json_records() {
    for (name, csv, expected) in cases() {
        let all = read_all(Format::Csv, &csv);
        assert!(all.bad.is_empty(), "{name}: {:?}", all.bad);
        assert_eq!(records(&all), expected, "{name}");
    }
}

#[test]
fn every_case_reads_the_same_one_byte_at_a_time() {
    for (name, csv, expected) in cases() {
        let whole = read_all(Format::Csv, &csv);
        let bytewise = read_from(Format::Csv, common::Chunked::new(&csv, vec![1]), 1);
        assert!(bytewise.bad.is_empty(), "{name}: {:?}", bytewise.bad);
        assert_eq!(records(&bytewise), expected, "{name}");
        assert_eq!(bytewise.row_lines(), whole.row_lines(), "{name}");
    }
}

#[test]
fn multi_line_cases_report_the_line_each_record_starts_on() {
    let lines = |name: &str| {
        let csv = std::fs::read(suite().join("csvs").join(format!("{name}.csv"))).unwrap();
        read_all(Format::Csv, &csv).row_lines()
    };
    assert_eq!(lines("newlines"), [2, 3, 5]);
    assert_eq!(lines("newlines_crlf"), [2, 3, 5]);
    assert_eq!(lines("quotes_and_newlines"), [2, 5]);
    assert_eq!(lines("empty_crlf"), [2, 3]);
}

#[test]
fn every_case_round_trips_through_json_lines() {
    for (name, csv, expected) in cases() {
        let first = read_all(Format::Csv, &csv);
        let jsonl = write_all(Format::Jsonl, &first.batches);
        let again = read_all(Format::Jsonl, &jsonl);
        assert!(again.bad.is_empty(), "{name}: {:?}", again.bad);
        assert_eq!(
            records(&again),
            expected,
            "{name}: {}",
            String::from_utf8_lossy(&jsonl)
        );
        // One line per record, whatever newlines the fields hold.
        assert_eq!(
            again.row_lines(),
            (1..=expected.len() as u64).collect::<Vec<_>>()
        );
        // And the JSON lines are JSON: each parses back to the expected object.
        for (line, want) in String::from_utf8(jsonl).unwrap().lines().zip(&expected) {
            let obj: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).unwrap();
            let got: Record = obj
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
                .collect();
            assert_eq!(&got, want, "{name}");
        }
    }
}

#[test]
fn every_case_round_trips_through_csv() {
    for (name, csv, expected) in cases() {
        let first = read_all(Format::Csv, &csv);
        let written = write_all(Format::Csv, &first.batches);
        let again = read_all(Format::Csv, &written);
        assert!(again.bad.is_empty(), "{name}: {:?}", again.bad);
        assert_eq!(records(&again), expected, "{name}");
        // Writing is deterministic: a second trip gives the same bytes.
        assert_eq!(write_all(Format::Csv, &again.batches), written, "{name}");
    }
}

#[test]
fn the_copies_match_shared_testdata_when_it_is_there() {
    if let Some(shared) = shared_dir("csv-spectrum") {
        assert_copy_matches(&shared, &suite());
    }
}
