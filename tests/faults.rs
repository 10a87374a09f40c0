//! Faults and bad input through the real binary (DESIGN §8, issue 4): every record is
//! accounted for, the host never crashes, and every failure gets a clear word on stderr
//! naming what failed, where, and what to do.
//!
//! Stage faults come from the `faulty` test plugin (config-driven panics, errors,
//! rejects and hangs); bad input is written by each test. Every run passes
//! `--stats=json`, and every run that completes must balance.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_clean_stderr, jsonl, pipe_bin, plugins, Run, Sandbox};
use serde_json::{json, Value};

/// The hint every stage failure under `on_error = "fail"` ends with.
const STAGE_HINT: &str = "(on_error = \"fail\" stops the run; set on_error = \"skip\" or \
                          \"dead-letter\" on the stage to go on)";

/// The hint every source failure under `on_bad_input = "fail"` ends with.
const SOURCE_HINT: &str = "(on_bad_input = \"fail\" stops the run; set on_bad_input = \"skip\" \
                           or \"dead-letter\" in the pipeline to go on)";

/// A config with one `faulty` stage (found next to the `pipe` binary).
fn faulty_config(settings: &str, pipeline: &str, stage: &str) -> String {
    format!(
        "[settings]\n{settings}\n\n[pipelines.default]\n{pipeline}\n\n\
         [[pipelines.default.stages]]\nplugin = \"faulty\"\n{stage}\n"
    )
}

/// `id,name` CSV with ids `1..=n`; the record with id `k` is on line `k + 1`.
fn rows(n: u32) -> String {
    let mut s = String::from("id,name\n");
    for i in 1..=n {
        s.push_str(&format!("{i},n{i}\n"));
    }
    s
}

/// The CSV rows of `rows` whose ids are not in `except`.
fn rows_except(n: u32, except: &[u32]) -> String {
    let mut s = String::from("id,name\n");
    for i in (1..=n).filter(|i| !except.contains(i)) {
        s.push_str(&format!("{i},n{i}\n"));
    }
    s
}

/// stderr without the `--stats=json` line.
fn messages(run: &Run) -> String {
    run.stderr
        .lines()
        .filter(|l| !(l.starts_with('{') && l.contains("\"written\"")))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn stage_stat(stats: &Value, key: &str) -> i64 {
    stats["stages"][0][key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {stats}"))
}

/// Waits for `child` at most `limit`; kills it and fails the test when it overruns.
fn wait_within(mut child: Child, limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pipe still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    };
    (run, took)
}

/// Runs `pipe args` on no stdin, failing the test if it takes longer than `limit` or if
/// it leaves its private plugin copies behind (they go under `$XDG_RUNTIME_DIR`).
fn run_within(sb: &Sandbox, args: &[&str], limit: Duration) -> (Run, Duration) {
    let runtime = tempfile::tempdir().unwrap();
    let child = sb
        .command(args)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pipe");
    let (run, took) = wait_within(child, limit);
    assert_eq!(
        listing(runtime.path()),
        Vec::<String>::new(),
        "private plugin copies left behind; stderr:\n{}",
        run.stderr
    );
    (run, took)
}

// ---------------------------------------------------------------------------------------
// Stage policies: on_error = fail | skip | dead-letter.

#[test]
fn on_error_fail_stops_the_run_naming_stage_input_and_line() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "",
        "workers = 2\non_error = \"fail\"\nconfig = { reject_on = \"3\" }",
    ));
    sb.write("orders.csv", rows(5));
    let r = sb.run(&["run", "orders.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: stage `faulty` failed on the record at orders.csv:4: rejected 3\n\
             {STAGE_HINT}\n"
        )
    );
    assert_clean_stderr(&r.stderr);
}

#[test]
fn on_error_fail_names_stdin_records_too() {
    let sb = Sandbox::with_config(&faulty_config("", "", "config = { reject_on = \"2\" }"));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(3));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("stage `faulty` failed on the record at -:3: rejected 2"),
        "{}",
        r.stderr
    );
    assert_clean_stderr(&r.stderr);
}

#[test]
fn on_error_skip_counts_and_drops_the_rejected_record() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "",
        "workers = 2\non_error = \"skip\"\nconfig = { reject_on = \"3\" }",
    ));
    sb.write("orders.csv", rows(5));
    let r = sb.run(&["run", "orders.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, rows_except(5, &[3]));
    let s = r.assert_balanced();
    assert_eq!(s["read"], 5);
    assert_eq!(s["written"], 4);
    assert_eq!(stage_stat(&s, "skipped"), 1);
    assert_eq!(stage_stat(&s, "dead_lettered"), 0);
    assert_eq!(messages(&r), "", "skip is quiet");
    assert!(!sb.path("rejects.jsonl").exists());
}

#[test]
fn on_error_dead_letter_writes_one_json_line_per_record() {
    let sb = Sandbox::with_config(&faulty_config(
        "batch_size = 2",
        "dead_letter = \"rejects.jsonl\"",
        "workers = 2\non_error = \"dead-letter\"\nconfig = { reject_on = \"3\" }",
    ));
    // Two rejects, in different batches.
    sb.write("orders.csv", "id,name\n1,a\n3,b\n2,\"c, d\"\n3,e\n");
    let r = sb.run(&["run", "orders.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n1,a\n2,\"c, d\"\n");
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "dead_lettered"), 2);
    let mut dead = jsonl(&sb.read("rejects.jsonl"));
    dead.sort_by_key(|d| d["line"].as_u64());
    assert_eq!(
        dead,
        vec![
            json!({"stage": "faulty", "error": "rejected 3", "input": "orders.csv", "line": 3,
                   "record": {"id": "3", "name": "b"}}),
            json!({"stage": "faulty", "error": "rejected 3", "input": "orders.csv", "line": 5,
                   "record": {"id": "3", "name": "e"}}),
        ]
    );
    assert_eq!(messages(&r), "");
}

#[test]
fn dead_lettered_json_records_keep_their_types_and_the_stage_name() {
    let sb = Sandbox::with_config(
        "[pipelines.default]\ndead_letter = \"dl.jsonl\"\n\n\
         [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"checker\"\n\
         on_error = \"dead-letter\"\nconfig = { reject_on = \"2\" }\n",
    );
    let input = "{\"id\":1,\"x\":\"a\"}\n{\"id\":2,\"x\":[1,{\"y\":null}],\"f\":1.5,\"b\":true}\n";
    sb.write("events.jsonl", input);
    let r = sb.run(&["run", "events.jsonl", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "{\"id\":1,\"x\":\"a\"}\n");
    r.assert_balanced();
    assert_eq!(
        jsonl(&sb.read("dl.jsonl")),
        vec![
            json!({"stage": "checker", "error": "rejected 2", "input": "events.jsonl",
                    "line": 2, "record": {"id": 2, "x": [1, {"y": null}], "f": 1.5, "b": true}})
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Panics and errors inside a stage.

/// Ten records in batches of two; `name` is `bad` for ids 3 and 7, so two batches
/// ([3, 4] and [7, 8]) fail and the others must go through.
const TWO_BAD_BATCHES: &str =
    "id,name\n1,ok\n2,ok\n3,bad\n4,ok\n5,ok\n6,ok\n7,bad\n8,ok\n9,ok\n10,ok\n";

fn fault_sandbox(policy: &str, fault: &str, input: &str) -> Sandbox {
    let sb = Sandbox::with_config(&faulty_config(
        "batch_size = 2",
        "dead_letter = \"dl.jsonl\"",
        &format!(
            "workers = 2\non_error = \"{policy}\"\nconfig = {{ field = \"name\", {fault} = \"bad\" }}"
        ),
    ));
    sb.write("in.csv", input);
    sb
}

const SURVIVORS: &str = "id,name\n1,ok\n2,ok\n5,ok\n6,ok\n9,ok\n10,ok\n";

#[test]
fn a_panicking_batch_goes_to_the_dead_letter_and_later_batches_run() {
    let sb = fault_sandbox("dead-letter", "panic_on", TWO_BAD_BATCHES);
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout, SURVIVORS,
        "batches after each panic are processed"
    );
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "panics"), 2);
    assert_eq!(stage_stat(&s, "batch_errors"), 2);
    assert_eq!(stage_stat(&s, "dead_lettered"), 4);
    let mut dead = jsonl(&sb.read("dl.jsonl"));
    dead.sort_by_key(|d| d["line"].as_u64());
    let lines: Vec<u64> = dead.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [4, 5, 8, 9], "every row of each failed batch");
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(e.starts_with("panicked: boom on bad (at "), "{d}");
        assert!(e.contains("src/lib.rs:"), "the panic's location: {d}");
        assert_eq!(d["stage"], "faulty");
        assert_eq!(d["input"], "in.csv");
        assert!(d["record"]["id"].is_string(), "{d}");
    }
    assert_eq!(dead[1]["record"], json!({"id": "4", "name": "ok"}));
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_panicking_batch_is_skipped_and_counted() {
    let sb = fault_sandbox("skip", "panic_on", TWO_BAD_BATCHES);
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, SURVIVORS);
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "skipped"), 4);
    assert_eq!(stage_stat(&s, "panics"), 2);
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_panic_under_fail_stops_with_the_panic_text_and_location() {
    // One bad batch: with two workers, the first of two failures would be a race.
    let sb = fault_sandbox(
        "fail",
        "panic_on",
        "id,name\n1,ok\n2,ok\n3,bad\n4,ok\n5,ok\n",
    );
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    let m = messages(&r);
    assert!(
        m.starts_with(
            "pipe: error: stage `faulty` failed on the batch of 2 records at in.csv:4-5: \
             panicked: boom on bad (at "
        ),
        "{m}"
    );
    assert!(m.contains("src/lib.rs:"), "{m}");
    assert!(m.ends_with(&format!("{STAGE_HINT}\n")), "{m}");
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_failing_batch_goes_through_the_policy_like_a_panic() {
    let sb = fault_sandbox("dead-letter", "error_on", TWO_BAD_BATCHES);
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, SURVIVORS);
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "batch_errors"), 2);
    assert_eq!(stage_stat(&s, "panics"), 0);
    let mut dead = jsonl(&sb.read("dl.jsonl"));
    dead.sort_by_key(|d| d["line"].as_u64());
    assert_eq!(dead.len(), 4);
    assert!(
        dead.iter().all(|d| d["error"] == "refused row bad"),
        "{dead:?}"
    );

    let sb = fault_sandbox("skip", "error_on", TWO_BAD_BATCHES);
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, SURVIVORS);
    assert_eq!(stage_stat(&r.assert_balanced(), "skipped"), 4);
}

/// Regression: a batch-wide failure was reported as "failed on the record at" the
/// batch's first line, which is not the record at fault when it comes later.
#[test]
fn a_failing_batch_under_fail_names_the_whole_batch() {
    let sb = Sandbox::with_config(&faulty_config(
        "batch_size = 3",
        "",
        "config = { error_on = \"5\" }",
    ));
    sb.write("in.csv", rows(6));
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: stage `faulty` failed on the batch of 3 records at in.csv:5-7: \
             refused row 5\n{STAGE_HINT}\n"
        )
    );
}

/// Regression: a panic in `new` was reported as the stage refusing its config.
#[test]
fn a_panic_in_new_is_a_start_error() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "",
        "workers = 2\nconfig = { panic_in_new = true }",
    ));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(2));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    let lib = plugins().dir.join("libfaulty.so");
    let m = messages(&r);
    let want = format!(
        "pipe: error: stage `faulty`: {}: stage `faulty` panicked while starting: boom in new (at ",
        lib.display()
    );
    assert!(m.starts_with(&want), "{m}\nwanted: {want}");
    assert!(m.contains("src/lib.rs:"), "{m}");
    assert!(
        m.trim_end().ends_with("; this is a bug in the plugin"),
        "{m}"
    );
    assert_clean_stderr(&r.stderr);
}

#[test]
fn an_error_in_new_is_a_start_error() {
    let sb = Sandbox::with_config(&faulty_config("", "", "config = { error_in_new = true }"));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(2));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: stage `faulty`: {}: stage `faulty` refused its config: config refused\n",
            plugins().dir.join("libfaulty.so").display()
        )
    );
    assert_eq!(r.stdout, "");
}

#[test]
fn a_panic_in_finish_fails_the_run() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "",
        "workers = 2\nconfig = { panic_in_finish = true }",
    ));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(3));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let m = messages(&r);
    assert!(
        m.starts_with(
            "pipe: error: stage `faulty` failed at end of stream: panicked: boom in finish (at "
        ),
        "{m}"
    );
    assert!(m.contains("src/lib.rs:"), "{m}");
    assert!(m.contains("(its end-of-stream rows are lost)"), "{m}");
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_hung_stage_stops_the_run_within_its_timeout() {
    let sb = Sandbox::with_config(&faulty_config(
        "batch_size = 2",
        "",
        "workers = 2\ntimeout_ms = 300\nconfig = { hang_on = \"4\" }",
    ));
    sb.write("in.csv", rows(8));
    let (r, took) = run_within(
        &sb,
        &["run", "in.csv", "--no-watch", "--stats=json"],
        Duration::from_secs(20),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Id 4 is on line 5, in the batch [3, 4] that starts on line 4.
    assert_eq!(
        messages(&r),
        "pipe: error: stage `faulty` took more than 300 ms on the batch starting at in.csv:4 \
         and may be hung; stopping the run (raise timeout_ms if the stage is just slow)\n"
    );
    assert_clean_stderr(&r.stderr);
}

/// Two `faulty` stages: the first makes two records at end of stream (`finish-0`,
/// `finish-1`), the second is configured by `second`.
fn made_records_config(second: &str) -> String {
    format!(
        "[settings]\nbatch_size = 2\n\n[pipelines.default]\ndead_letter = \"dl.jsonl\"\n\n\
         [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"maker\"\n\
         config = {{ emit_in_finish = 2 }}\n\n\
         [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"second\"\n{second}\n"
    )
}

/// Regression: a record a stage made has no input line; it was reported "at in.csv:0".
#[test]
fn a_failure_on_a_record_a_stage_made_says_so() {
    let sb = Sandbox::with_config(&made_records_config(
        "config = { reject_on = \"finish-1\" }",
    ));
    sb.write("in.csv", rows(2));
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: stage `second` failed on a record an earlier stage made (it has no \
             input line): rejected finish-1\n{STAGE_HINT}\n"
        )
    );

    let sb = Sandbox::with_config(&made_records_config("config = { error_on = \"finish-1\" }"));
    sb.write("in.csv", rows(2));
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: stage `second` failed on a batch of 2 records an earlier stage made \
             (they have no input line): refused row finish-1\n{STAGE_HINT}\n"
        )
    );

    let sb = Sandbox::with_config(&made_records_config(
        "timeout_ms = 200\nconfig = { hang_on = \"finish-0\" }",
    ));
    sb.write("in.csv", rows(2));
    let (r, _) = run_within(
        &sb,
        &["run", "in.csv", "--no-watch", "--stats=json"],
        Duration::from_secs(20),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        "pipe: error: stage `second` took more than 200 ms at end of stream or on records an \
         earlier stage made and may be hung; stopping the run (raise timeout_ms if the stage \
         is just slow)\n"
    );
}

#[test]
fn records_a_stage_made_are_dead_lettered_without_a_position() {
    let sb = Sandbox::with_config(&made_records_config(
        "on_error = \"dead-letter\"\nconfig = { reject_on = \"finish-1\" }",
    ));
    sb.write("in.csv", rows(2));
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n1,n1\n2,n2\nfinish-0,\n");
    let s = r.assert_balanced();
    assert_eq!(s["stages"][0]["filtered"], -2, "the maker adds two records");
    assert_eq!(s["stages"][1]["dead_lettered"], 1);
    assert_eq!(
        jsonl(&sb.read("dl.jsonl")),
        vec![json!({"stage": "second", "error": "rejected finish-1",
                    "record": {"id": "finish-1"}})]
    );
}

// ---------------------------------------------------------------------------------------
// The source: on_bad_input = fail | skip | dead-letter.

/// One kind of unreadable record, in a file of three records with the bad one second.
struct BadCase {
    file: &'static str,
    text: &'static [u8],
    line: u64,
    reason: &'static str,
    raw: Value,
    /// What the good records come out as.
    good: &'static str,
}

fn check_bad_input(case: BadCase) {
    for policy in ["fail", "skip", "dead-letter"] {
        let sb = Sandbox::with_config(&format!(
            "[pipelines.default]\non_bad_input = \"{policy}\"\ndead_letter = \"bad.jsonl\"\n\n\
             [[pipelines.default.stages]]\nplugin = \"faulty\"\n"
        ));
        sb.write(case.file, case.text);
        let r = sb.run(&["run", case.file, "--no-watch", "--stats=json"], "");
        let ctx = format!("{} under {policy}:\n{}", case.file, r.stderr);
        assert_clean_stderr(&r.stderr);
        match policy {
            "fail" => {
                assert_eq!(r.code, 1, "{ctx}");
                assert_eq!(
                    messages(&r),
                    format!(
                        "pipe: error: bad input at {}:{}: {}\n{SOURCE_HINT}\n",
                        case.file, case.line, case.reason
                    ),
                    "{ctx}"
                );
            }
            "skip" => {
                assert_eq!(r.code, 0, "{ctx}");
                assert_eq!(r.stdout, case.good, "{ctx}");
                let s = r.assert_balanced();
                assert_eq!(s["bad_input_skipped"], 1, "{ctx}");
                assert_eq!(messages(&r), "", "{ctx}");
            }
            _ => {
                assert_eq!(r.code, 0, "{ctx}");
                assert_eq!(r.stdout, case.good, "{ctx}");
                let s = r.assert_balanced();
                assert_eq!(s["bad_input_dead_lettered"], 1, "{ctx}");
                assert_eq!(
                    jsonl(&sb.read("bad.jsonl")),
                    vec![
                        json!({"stage": "source", "error": case.reason, "input": case.file,
                                "line": case.line, "record": case.raw})
                    ],
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn csv_rows_with_the_wrong_number_of_fields() {
    check_bad_input(BadCase {
        file: "in.csv",
        text: b"id,name\n1,a\n2,b,extra\n3,c\n",
        line: 3,
        reason: "expected 2 fields as in the header, found 3",
        raw: json!(["2", "b", "extra"]),
        good: "id,name\n1,a\n3,c\n",
    });
    check_bad_input(BadCase {
        file: "short.csv",
        text: b"id,name\n1,a\n2\n3,c\n",
        line: 3,
        reason: "expected 2 fields as in the header, found 1",
        raw: json!(["2"]),
        good: "id,name\n1,a\n3,c\n",
    });
}

#[test]
fn csv_lines_are_counted_across_crlf_and_blank_lines() {
    check_bad_input(BadCase {
        file: "crlf.csv",
        text: b"id,name\r\n1,a\r\n\r\n2,b,c\r\n3,c\r\n",
        line: 4,
        reason: "expected 2 fields as in the header, found 3",
        raw: json!(["2", "b", "c"]),
        good: "id,name\n1,a\n3,c\n",
    });
}

#[test]
fn a_csv_header_with_invalid_utf8_stops_the_run() {
    let sb = Sandbox::with_config("[pipelines.default]\n");
    sb.write("in.csv", b"id,na\xffme\n1,a\n");
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: bad input at in.csv:1: the header line is not valid UTF-8 (field 2, \
             byte 3)\n{SOURCE_HINT}\n"
        )
    );
}

#[test]
fn csv_rows_with_invalid_utf8() {
    check_bad_input(BadCase {
        file: "in.csv",
        text: b"id,name\n1,a\n2,b\xff\n3,c\n",
        line: 3,
        reason: "invalid UTF-8 in field `name`",
        raw: json!(["2", "b\u{fffd}"]),
        good: "id,name\n1,a\n3,c\n",
    });
}

#[test]
fn csv_with_an_unterminated_quote() {
    // The open quote swallows the rest of the input: one bad record, not a silent merge.
    check_bad_input(BadCase {
        file: "in.csv",
        text: b"id,name\n1,a\n2,\"b\n3,c\n",
        line: 3,
        reason: "unterminated quoted field: the quote opened on line 3 is never closed, so \
                 the input ends inside it",
        raw: json!(["2", "b\n3,c\n"]),
        good: "id,name\n1,a\n",
    });
}

#[test]
fn json_lines_that_are_not_objects() {
    check_bad_input(BadCase {
        file: "in.jsonl",
        text: b"{\"id\":1}\n[1,2]\n{\"id\":3}\n",
        line: 2,
        reason: "invalid JSON: invalid type: sequence, expected a JSON object at column 1",
        raw: json!("[1,2]"),
        good: "{\"id\":1}\n{\"id\":3}\n",
    });
    check_bad_input(BadCase {
        file: "scalar.jsonl",
        text: b"{\"id\":1}\n\"just text\"\n{\"id\":3}\n",
        line: 2,
        reason: "invalid JSON: invalid type: string \"just text\", expected a JSON object at \
                 column 11",
        raw: json!("\"just text\""),
        good: "{\"id\":1}\n{\"id\":3}\n",
    });
}

#[test]
fn json_lines_that_are_not_json() {
    check_bad_input(BadCase {
        file: "in.jsonl",
        text: b"{\"id\":1}\n{\"id\":\n{\"id\":3}\n",
        line: 2,
        reason: "invalid JSON: EOF while parsing a value at column 6",
        raw: json!("{\"id\":"),
        good: "{\"id\":1}\n{\"id\":3}\n",
    });
}

#[test]
fn json_lines_with_invalid_utf8() {
    check_bad_input(BadCase {
        file: "in.jsonl",
        text: b"{\"id\":1}\n{\"id\":\"\xff\"}\n{\"id\":3}\n",
        line: 2,
        reason: "invalid UTF-8 at column 8",
        raw: json!("{\"id\":\"\u{fffd}\"}"),
        good: "{\"id\":1}\n{\"id\":3}\n",
    });
}

/// Regression: a missing file was reported as "bad input at missing.csv:0".
#[test]
fn a_missing_input_file() {
    let config = |policy: &str| {
        format!("[pipelines.default]\non_bad_input = \"{policy}\"\ndead_letter = \"bad.jsonl\"\n")
    };
    let enoent = "cannot open input: No such file or directory (os error 2)";

    let sb = Sandbox::with_config(&config("fail"));
    sb.write("a.csv", "id\n1\n");
    let r = sb.run(
        &["run", "a.csv", "missing.csv", "--no-watch", "--stats=json"],
        "",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!("pipe: error: missing.csv: {enoent}\n{SOURCE_HINT}\n")
    );

    let sb = Sandbox::with_config(&config("skip"));
    sb.write("a.csv", "id\n1\n");
    sb.write("b.csv", "id\n2\n");
    let r = sb.run(
        &[
            "run",
            "a.csv",
            "missing.csv",
            "b.csv",
            "--no-watch",
            "--stats=json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id\n1\n2\n");
    r.assert_balanced();
    assert_eq!(
        messages(&r),
        format!("pipe: missing.csv: {enoent}; skipped\n")
    );

    let sb = Sandbox::with_config(&config("dead-letter"));
    sb.write("a.csv", "id\n1\n");
    let r = sb.run(
        &["run", "missing.csv", "a.csv", "--no-watch", "--stats=json"],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id\n1\n");
    r.assert_balanced();
    assert_eq!(
        messages(&r),
        format!("pipe: missing.csv: {enoent}; noted in the dead-letter file\n")
    );
    let dead = jsonl(&sb.read("bad.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["stage"], "source");
    assert_eq!(dead[0]["error"], enoent);
    assert_eq!(dead[0]["record"], "missing.csv");
    assert_clean_stderr(&r.stderr);
}

#[test]
fn empty_inputs_give_empty_output() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    sb.write("empty.csv", "");
    sb.write("empty.jsonl", "");
    for args in [
        vec!["run", "empty.csv"],
        vec!["run", "empty.jsonl"],
        vec!["run", "--input-format", "jsonl"],
        vec!["run"],
    ] {
        let mut args = args;
        args.extend(["--no-watch", "--stats=json"]);
        let r = sb.run(&args, "");
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{args:?}");
        let s = r.assert_balanced();
        assert_eq!(s["read"], 0);
        assert_clean_stderr(&r.stderr);
    }
}

#[test]
fn a_header_only_csv_yields_just_the_header() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    sb.write("header.csv", "id,name\n");
    let r = sb.run(&["run", "header.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n");
    assert_eq!(r.assert_balanced()["read"], 0);

    let r = sb.run(&["run", "--no-watch", "--stats=json"], "id,name\r\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n", "from stdin too");
    r.assert_balanced();

    let r = sb.run(
        &[
            "run",
            "header.csv",
            "--output-format",
            "jsonl",
            "--no-watch",
            "--stats=json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "", "no records, no lines");
    r.assert_balanced();
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_one_megabyte_field_round_trips() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    let big = "x".repeat(1 << 20);
    let csv = format!("id,blob,note\n1,{big},a\n2,\"{big}, \"\"quoted\"\"\n{big}\",b\n3,,c\n");
    sb.write("big.csv", &csv);
    let r = sb.run(&["run", "big.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == csv, "the CSV does not round-trip");
    assert_eq!(r.assert_balanced()["written"], 3);

    let line = format!("{{\"id\":1,\"blob\":\"{big}\",\"n\":[1,2]}}\n{{\"id\":2,\"blob\":\"\"}}\n");
    sb.write("big.jsonl", &line);
    let r = sb.run(&["run", "big.jsonl", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == line, "the JSON lines do not round-trip");
    assert_eq!(r.assert_balanced()["written"], 2);
}

#[test]
fn ten_thousand_columns_round_trip() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    let n = 10_000;
    let header: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let row1: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let row2: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    let csv = format!(
        "{}\n{}\n{}\n",
        header.join(","),
        row1.join(","),
        row2.join(",")
    );
    sb.write("wide.csv", &csv);
    let r = sb.run(&["run", "wide.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == csv, "the CSV does not round-trip");
    assert_eq!(r.assert_balanced()["written"], 2);

    let obj: Vec<String> = (0..n).map(|i| format!("\"c{i}\":{i}")).collect();
    let line = format!("{{{}}}\n", obj.join(","));
    sb.write("wide.jsonl", &line);
    let r = sb.run(&["run", "wide.jsonl", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout == line, "the JSON line does not round-trip");
    assert_eq!(r.assert_balanced()["written"], 1);
}

// ---------------------------------------------------------------------------------------
// -o FILE.

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether process `pid` holds a temporary output file in `dir`: a named `*.tmp` there,
/// or an unnamed one (`O_TMPFILE` shows in /proc as `DIR/#INODE (deleted)`).
fn has_temp_output(pid: u32, dir: &Path) -> bool {
    if listing(dir).iter().any(|n| n.ends_with(".tmp")) {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let dir = dir.canonicalize().unwrap();
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.to_string_lossy().into_owned();
            t.starts_with(&format!("{}/#", dir.display())) && t.ends_with("(deleted)")
        })
    })
}

#[test]
fn dash_o_writes_the_file_and_leaves_no_temporary() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    sb.write("in.csv", rows(100));
    sb.write("out/old.txt", "x");
    let r = sb.run(
        &[
            "run",
            "in.csv",
            "-o",
            "out/result.csv",
            "--no-watch",
            "--stats=json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "", "data goes to the file only");
    assert_eq!(sb.read("out/result.csv"), rows(100));
    assert_eq!(listing(&sb.path("out")), ["old.txt", "result.csv"]);
    r.assert_balanced();
}

#[test]
fn dash_o_is_replaced_only_when_the_run_succeeds() {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    sb.write("out.csv", "old output\n");
    let mut child = sb
        .command(&[
            "run",
            "-o",
            "out.csv",
            "--no-watch",
            "--stats=json",
            "--batch-size",
            "2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(rows(2000).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // While the run goes on, its output is in a temporary file in the destination's
    // directory: unnamed (O_TMPFILE, seen only among the process's descriptors) or, where
    // that is unavailable, under a random name.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_temp_output(child.id(), sb.dir.path()) {
        assert!(
            Instant::now() < deadline,
            "no temporary file beside out.csv"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sb.read("out.csv"),
        "old output\n",
        "replaced before the end"
    );
    drop(stdin);
    let (r, _) = wait_within(child, Duration::from_secs(30));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(sb.read("out.csv"), rows(2000));
    assert_eq!(listing(sb.dir.path()), ["out.csv", "pipelines.toml"]);
    r.assert_balanced();
}

#[test]
fn a_failed_run_leaves_an_existing_output_byte_for_byte_untouched() {
    // Bytes no writer of ours would produce, so any rewrite shows.
    let old: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let cases: [(&str, &str, &str, i32); 6] = [
        ("stage error", "", "config = { error_on = \"150\" }", 1),
        (
            "panic in finish",
            "",
            "config = { panic_in_finish = true }",
            1,
        ),
        (
            "hung stage",
            "",
            "timeout_ms = 200\nconfig = { hang_on = \"150\" }",
            1,
        ),
        ("bad input", "", "", 1),
        ("bad stage config", "", "config = { nope = 1 }", 2),
        (
            "dead letter without a file",
            "",
            "on_error = \"dead-letter\"",
            2,
        ),
    ];
    for (what, pipeline, stage, code) in cases {
        let sb = Sandbox::with_config(&faulty_config("batch_size = 10", pipeline, stage));
        let mut input = rows(300);
        if what == "bad input" {
            input.push_str("301,too,many\n");
        }
        sb.write("in.csv", &input);
        sb.write("out.csv", &old);
        let before = listing(sb.dir.path());
        let (r, _) = run_within(
            &sb,
            &[
                "run",
                "in.csv",
                "-o",
                "out.csv",
                "--no-watch",
                "--stats=json",
            ],
            Duration::from_secs(20),
        );
        assert_eq!(r.code, code, "{what}: {}", r.stderr);
        assert!(
            std::fs::read(sb.path("out.csv")).unwrap() == old,
            "{what}: out.csv was changed"
        );
        assert_eq!(
            listing(sb.dir.path()),
            before,
            "{what}: a file was left behind"
        );
        assert_clean_stderr(&r.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// Signals, and a reader that goes away.

/// A `pipe run` whose stdin stays open, with stdout collected as it comes.
struct Streaming {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Streaming {
    fn start(sb: &Sandbox, args: &[&str]) -> Streaming {
        let mut child = sb
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pipe");
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Streaming {
            child,
            stdin,
            stdout: rx,
            seen: Vec::new(),
        }
    }

    /// Waits until stdout has at least `bytes` bytes.
    fn wait_output(&mut self, bytes: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.seen.len() < bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!("only {} bytes of output within {secs} s", self.seen.len()),
            }
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the child we started and have not reaped.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Waits for the exit (stdin still open); returns the run with all of stdout.
    fn wait(mut self, secs: u64) -> Run {
        let mut err = self.child.stderr.take().unwrap();
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("pipe did not stop within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(chunk) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            self.seen.extend(chunk);
        }
        drop(self.stdin.take());
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8(self.seen).expect("output is UTF-8"),
            stderr: err_t.join().unwrap(),
        }
    }
}

/// Checks that `out` is the `rows` header and records `1..=n` for some n, each line
/// whole; returns n.
fn whole_records(out: &str) -> u32 {
    assert!(out.starts_with("id,name\n"), "{out:.100}");
    assert!(
        out.ends_with('\n'),
        "output ends inside a record: {:?}",
        &out[out.len().saturating_sub(40)..]
    );
    let mut n = 0;
    for line in out.lines().skip(1) {
        n += 1;
        assert_eq!(line, format!("{n},n{n}"), "records lost, doubled or cut");
    }
    n
}

fn interrupted_run_drains_and_exits(sig: i32, code: i32) {
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    let mut run = Streaming::start(
        &sb,
        &["run", "--no-watch", "--stats=json", "--batch-size", "10"],
    );
    // stdin stays open after these: the run waits for more when the signal comes.
    let input = rows(3000);
    run.stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    run.stdin.as_mut().unwrap().flush().unwrap();
    run.wait_output(input.len(), 30);
    run.signal(sig);
    let r = run.wait(20);
    assert_eq!(r.code, code, "{}", r.stderr);
    let n = whole_records(&r.stdout);
    assert_eq!(
        n, 3000,
        "records read before the signal are drained and written"
    );
    let s = r.assert_balanced();
    assert_eq!(s["written"], 3000);
    // No error, one line saying what was drained and where the output stands (issue 13,
    // item 7).
    let name = if sig == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    assert_eq!(
        messages(&r),
        format!(
            "pipe: interrupted by {name}: stopped reading and drained the 3000 records read \
             (3000 written); stdout has every written record, whole\n"
        ),
        "an interrupt is not an error"
    );
    assert_clean_stderr(&r.stderr);
}

#[test]
fn sigterm_drains_flushes_and_exits_143() {
    interrupted_run_drains_and_exits(libc::SIGTERM, 143);
}

#[test]
fn sigint_drains_flushes_and_exits_130() {
    interrupted_run_drains_and_exits(libc::SIGINT, 130);
}

#[test]
fn a_second_signal_stops_a_run_stuck_in_a_stage_and_cleans_up() {
    let sb = Sandbox::with_config(&faulty_config("", "", "config = { hang_on = \"2\" }"));
    sb.write("out.csv", "old\n");
    let runtime = tempfile::tempdir().unwrap();
    let mut child = sb
        .command(&["run", "-o", "out.csv", "--no-watch", "--stats=json"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(rows(3).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Long enough for the run to start and reach the hang even on a loaded machine (a
    // signal before the records are read would just end the run: nothing in flight).
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the batch in flight"
    );
    // SAFETY: as above; the child is still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (r, took) = wait_within(child, Duration::from_secs(20));
    drop(stdin);
    assert_eq!(r.code, 143, "{}", r.stderr);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(sb.read("out.csv"), "old\n");
    assert_eq!(
        listing(sb.dir.path()),
        ["out.csv", "pipelines.toml"],
        "the partial output is left behind"
    );
    assert_eq!(
        listing(runtime.path()),
        Vec::<String>::new(),
        "plugin copies left behind"
    );
    assert!(
        messages(&r).contains("stage `faulty`"),
        "no word on which stage was stuck: {}",
        r.stderr
    );
    assert_clean_stderr(&r.stderr);
}

/// Writes `id,name` records into `stdin` until the pipe closes.
fn endless_input(mut stdin: std::process::ChildStdin) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        let mut buf = String::from("id,name\n");
        loop {
            for _ in 0..1000 {
                i += 1;
                buf.push_str(&format!("{i},n{i}\n"));
            }
            if stdin.write_all(buf.as_bytes()).is_err() {
                return;
            }
            buf.clear();
        }
    })
}

#[test]
fn a_signal_while_input_streams_in_still_balances() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
        let mut run = Streaming::start(
            &sb,
            &["run", "--no-watch", "--stats=json", "--batch-size", "7"],
        );
        let writer = endless_input(run.stdin.take().unwrap());
        run.wait_output(64 << 10, 30);
        run.signal(sig);
        let r = run.wait(20);
        drop(writer);
        assert_eq!(r.code, code, "{}", r.stderr);
        whole_records(&r.stdout);
        r.assert_balanced();
        assert_clean_stderr(&r.stderr);
    }
}

/// Regression: records that did not fill a batch waited for more input forever (and
/// were lost, uncounted, on a signal).
#[test]
fn a_slow_stream_flows_before_its_batch_fills() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    let mut run = Streaming::start(&sb, &["run", "--no-watch", "--stats=json"]);
    // Fewer records than a batch (1024), with stdin left open, as `tail -f | pipe run`.
    let input = rows(10);
    let stdin = run.stdin.as_mut().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    run.wait_output(input.len(), 10);
    run.signal(libc::SIGTERM);
    let r = run.wait(20);
    assert_eq!(r.code, 143, "{}", r.stderr);
    assert_eq!(r.stdout, input);
    assert_eq!(r.assert_balanced()["read"], 10);
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    plugins();
    let sb = Sandbox::with_config(&faulty_config("", "", "workers = 2"));
    sb.write("big.csv", rows(200_000));
    for stats in [false, true] {
        let script = format!(
            "set -o pipefail; '{}' run big.csv --no-watch {} | head -1",
            pipe_bin().display(),
            if stats { "--stats=json" } else { "" }
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(sb.dir.path())
            .env_remove("PIPE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("PIPE_LOG")
            .output()
            .unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout, "id,name\n");
        if stats {
            assert!(r.stats().is_some(), "{}", r.stderr);
            assert_eq!(messages(&r), "", "only the stats");
        } else {
            assert_eq!(r.stderr, "");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The dead-letter file.

#[test]
fn a_dead_letter_policy_without_a_file_is_a_config_error() {
    let fix = "pipe: error: pipeline `default` sends records to the dead letter, but no file \
               is set: add `dead_letter = \"rejects.jsonl\"` to the pipeline or pass \
               --dead-letter FILE\n";
    for (pipeline, stage) in [
        ("", "on_error = \"dead-letter\""),
        ("on_bad_input = \"dead-letter\"", ""),
    ] {
        let sb = Sandbox::with_config(&faulty_config("", pipeline, stage));
        let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(2));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert_eq!(r.stderr, fix);
        assert_eq!(r.stdout, "");

        // The fix it gives works.
        let r = sb.run(
            &[
                "run",
                "--no-watch",
                "--stats=json",
                "--dead-letter",
                "rejects.jsonl",
            ],
            &rows(2),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_balanced();
    }
}

/// Regression: `pipe check` passed a pipeline that `pipe run` refuses.
#[test]
fn pipe_check_reports_a_dead_letter_policy_without_a_file() {
    let sb = Sandbox::with_config(&faulty_config("", "", "on_error = \"dead-letter\""));
    let out = sb.command(&["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline `default` sends records to the dead letter, but no file is set"),
        "{err}"
    );
}

#[test]
fn an_unwritable_dead_letter_file_fails_the_run_with_its_path() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "dead_letter = \"no/such/dir/dl.jsonl\"",
        "on_error = \"dead-letter\"\nconfig = { reject_on = \"1\" }",
    ));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(3));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        "pipe: error: writing the dead-letter file: dead-letter file no/such/dir/dl.jsonl: \
         No such file or directory (os error 2)\n"
    );
}

/// A run that fails part-way says how many records were in flight instead of claiming
/// the counts do not balance.
#[test]
fn a_failed_run_accounts_for_records_in_flight() {
    let sb = Sandbox::with_config(&faulty_config("", "", "config = { error_on = \"5\" }"));
    let r = sb.run(&["run", "--stats", "--batch-size", "2"], &rows(9));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stderr.contains("DOES NOT BALANCE"), "{}", r.stderr);
    assert!(
        r.stderr.contains("in flight when the run stopped"),
        "{}",
        r.stderr
    );
    let j = sb.run(&["run", "--stats=json", "--batch-size", "2"], &rows(9));
    assert_eq!(j.code, 1);
    let s = j.assert_balanced_with_in_flight();
    assert!(s["in_flight"].as_i64().unwrap() > 0, "{s}");
}

/// Runs `pipe run -o out.csv` over 5000 rows in small batches with host threads made to
/// panic by `PIPE_FAILPOINT` (a debug-build test hook), over an existing `out.csv`.
fn run_with_failpoint(failpoint: &str) -> (Sandbox, Run) {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    std::fs::write(sb.path("out.csv"), "precious\n").unwrap();
    let input = rows(5000);
    let mut child = sb
        .command(&["run", "--no-watch", "--batch-size", "10", "-o", "out.csv"])
        .env("PIPE_FAILPOINT", failpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (sb, run)
}

/// Regression: a reader thread that panicked looked like the end of the input; the run
/// committed a truncated `-o` file and exited 0.
#[test]
fn a_panicking_reader_fails_the_run() {
    let (sb, r) = run_with_failpoint("reader");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the reader thread died (failpoint `reader`"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("out.csv")).unwrap(),
        "precious\n",
        "a failed run must not commit its output"
    );
    let litter: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(
        litter.is_empty(),
        "temporary output left behind: {litter:?}"
    );
}

#[test]
fn a_panicking_stage_worker_thread_fails_the_run_naming_it() {
    let (sb, r) = run_with_failpoint("worker");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the faulty#0 thread died (failpoint `worker`"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("out.csv")).unwrap(),
        "precious\n"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 12: `-o` in a shared directory, kept modes, killed runs, full disks, closed stdout.

/// Whether the tests run as root (they then also play another user with `runuser`).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A small tmpfs mounted in `dir` for as long as it lives (root only), to fill up.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a 64 KiB tmpfs at `dir/disk`, or `None` where mounting is not allowed.
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let at = dir.join("disk");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=1777", "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(at))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `n` rows whose ids are all 3 (rejected by `reject_on = "3"`), each with a 1000-byte
/// name: enough to fill a 64 KiB disk.
fn big_rejects(n: u32) -> String {
    let mut s = String::from("id,name\n");
    for _ in 0..n {
        s.push_str(&format!("3,{}\n", "x".repeat(1000)));
    }
    s
}

#[test]
fn dash_o_keeps_the_mode_and_owner_of_the_file_it_replaces() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    sb.write("in.csv", rows(10));
    let out = sb.write("out.csv", "secret\n");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        // nobody's uid and gid on every Linux distribution.
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    }
    let r = sb.run(
        &[
            "run",
            "in.csv",
            "-o",
            "out.csv",
            "--no-watch",
            "--stats=json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_balanced();
    assert_eq!(sb.read("out.csv"), rows(10));
    let md = std::fs::metadata(&out).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "a 0600 file came back readable");
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "the owner changed");
    }
    assert_eq!(
        listing(sb.dir.path()),
        ["in.csv", "out.csv", "pipelines.toml"]
    );
}

#[test]
fn dash_o_dash_is_stdout() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    let r = sb.run(&["run", "-o", "-", "--no-watch", "--stats=json"], &rows(3));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, rows(3));
    r.assert_balanced();
    assert_eq!(listing(sb.dir.path()), ["pipelines.toml"]);
}

/// Regression (issue 12): the temporary file was `.FILE.pipe-PID.tmp`, created following
/// symlinks and truncating what was there, so another user of a shared directory could
/// make a root run overwrite any file, or own the output. Here `nobody` plants a symlink
/// or a file of its own at that name for each of the next pids; none is followed,
/// written or reused.
#[test]
fn dash_o_in_a_shared_directory_follows_no_planted_temporary_name() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    sb.write("in.csv", rows(50));
    let victim = sb.write("victim.txt", "precious\n");
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let plant = format!(
        "for p in $(seq {} {}); do if [ $((p % 2)) = 0 ]; then ln -s {} .out.csv.pipe-$p.tmp; \
         else echo mine > .out.csv.pipe-$p.tmp; fi; done",
        last + 1,
        last + 400,
        victim.display()
    );
    let as_nobody = if is_root() {
        vec!["runuser", "-u", "nobody", "--", "sh", "-c", &plant]
    } else {
        vec!["sh", "-c", &plant]
    };
    let st = Command::new(as_nobody[0])
        .args(&as_nobody[1..])
        .current_dir(sb.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let planted = listing(sb.dir.path());
    let r = sb.run(
        &[
            "run",
            "in.csv",
            "-o",
            "out.csv",
            "--no-watch",
            "--stats=json",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_balanced();
    assert_eq!(
        sb.read("victim.txt"),
        "precious\n",
        "a planted symlink was followed"
    );
    assert_eq!(sb.read("out.csv"), rows(50));
    let md = std::fs::metadata(sb.path("out.csv")).unwrap();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        md.uid(),
        unsafe { libc::geteuid() },
        "the output is someone else's"
    );
    assert!(!md.file_type().is_symlink());
    for name in planted.iter().filter(|n| n.ends_with(".tmp")) {
        let p = sb.path(name);
        let lmd = std::fs::symlink_metadata(&p).unwrap();
        if !lmd.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                "mine\n",
                "{name} reused"
            );
        }
    }
    let mut after = listing(sb.dir.path());
    after.retain(|n| n != "out.csv");
    assert_eq!(after, planted, "a temporary file was left behind");
}

#[test]
fn a_killed_run_leaves_no_temporary_file() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    sb.write("out.csv", "old\n");
    let mut child = sb
        .command(&["run", "-o", "out.csv", "--no-watch", "--batch-size", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(rows(2000).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_temp_output(child.id(), sb.dir.path()) {
        assert!(Instant::now() < deadline, "the run never opened its output");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert_eq!(sb.read("out.csv"), "old\n");
    assert_eq!(listing(sb.dir.path()), ["out.csv", "pipelines.toml"]);
}

/// Regression (issue 12): the dead letter was buffered and a failure at its final flush
/// was only logged: exit 0, "2 dead-lettered", an empty file.
#[test]
fn a_full_disk_under_the_dead_letter_fails_the_run_and_counts_only_what_was_written() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    let disk = SmallDisk::mount(sb.dir.path());
    let file = match &disk {
        Some(d) => d.0.join("dl.jsonl"),
        None => std::path::PathBuf::from("/dev/full"),
    };
    sb.write(
        "pipelines.toml",
        faulty_config(
            "batch_size = 10",
            &format!("dead_letter = \"{}\"", file.display()),
            "on_error = \"dead-letter\"\nconfig = { reject_on = \"3\" }",
        ),
    );
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &big_rejects(200));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        messages(&r),
        format!(
            "pipe: error: writing the dead-letter file: dead-letter file {}: No space left on \
             device (os error 28)\n",
            file.display()
        )
    );
    let s = r.stats().expect("stats");
    let written = if disk.is_some() {
        std::fs::read_to_string(&file).unwrap().lines().count() as i64
    } else {
        0
    };
    assert_eq!(stage_stat(&s, "dead_lettered"), written, "{s}");
    assert!(!r.stdout.contains("\n3,"), "a rejected record was written");
    drop(disk);
}

#[test]
fn a_full_disk_under_the_output_fails_the_run_and_leaves_nothing() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    sb.write("in.csv", big_rejects(200));
    // stdout on a full device.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = sb
        .command(&["run", "in.csv", "--no-watch", "--stats=json"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipe: error: writing the output: No space left on device (os error 28)"),
        "{err}"
    );
    // -o on a small file system that fills up: the old file stays, nothing is left.
    if let Some(disk) = SmallDisk::mount(sb.dir.path()) {
        std::fs::write(disk.0.join("out.csv"), "old\n").unwrap();
        let dest = disk.0.join("out.csv");
        let r = sb.run(
            &["run", "in.csv", "-o", dest.to_str().unwrap(), "--no-watch"],
            "",
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
        assert!(r.stderr.contains("output"), "{}", r.stderr);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old\n");
        assert_eq!(listing(&disk.0), ["out.csv"]);
    }
}

/// Regression (issue 12): with stdout closed every row was dropped and the run exited 0.
#[test]
fn a_closed_stdout_is_an_error_not_a_silent_success() {
    plugins();
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    sb.write("in.csv", rows(5));
    for o in ["", "-o -"] {
        let script = format!("'{}' run in.csv {o} --no-watch >&-", pipe_bin().display());
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(sb.dir.path())
            .env_remove("PIPE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("PIPE_LOG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{o}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "pipe: error: cannot write the output: stdout is closed; give it a file or name \
             one with -o FILE\n"
        );
    }
    // `>/dev/null` is a fine place for output.
    let r = sb
        .command(&["run", "in.csv", "--no-watch"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(r.code(), Some(0));
}

/// Regression (issue 12): `channel_capacity = 1e12` aborted on allocation, `i64::MAX`
/// panicked, `--workers 100000` aborted after 16k threads. Each is refused at start.
#[test]
fn settings_and_flags_out_of_bounds_are_refused_at_start() {
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "channel_capacity = 1e12",
            &[],
            "line 2, column 20: expected a whole number, found a fraction or exponent",
        ),
        (
            "channel_capacity = 9223372036854775807",
            &[],
            "settings.channel_capacity must be a whole number from 1 to 1024, not \
             9223372036854775807",
        ),
        (
            "",
            &["--workers", "100000"],
            "--workers must be a whole number from 1 to 256, not 100000",
        ),
        (
            "",
            &["--batch-size", "2000000"],
            "--batch-size must be a whole number from 1 to 1048576, not 2000000",
        ),
    ];
    for (settings, flags, want) in cases {
        let sb = Sandbox::with_config(&faulty_config(settings, "", ""));
        let mut args = vec!["run", "--no-watch", "--stats=json"];
        args.extend_from_slice(flags);
        let r = sb.run(&args, &rows(3));
        assert_eq!(r.code, 2, "{settings} {flags:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("pipe: error: "), "{}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert_eq!(r.stdout, "");
    }
}

// ---------------------------------------------------------------------------------------
// Issue 12, item 7: the accounting line on every fault path.

/// The human accounting line of `--stats` (the one that starts with `read `).
fn accounting_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("read "))
        .unwrap_or_else(|| panic!("no accounting line in:\n{stderr}"))
}

/// Regression: 5 good lines then a bad one under `fail` said `read 1`; the good ones were
/// parsed and must count as read (in flight: the run stopped under them).
#[test]
fn bad_input_under_fail_counts_every_record_parsed() {
    let sb = Sandbox::with_config(&faulty_config("", "", ""));
    let input = format!("{}6\n", rows(5));
    let r = sb.run(&["run", "--no-watch", "--stats"], &input);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        accounting_line(&r.stderr),
        "read 6 (bad input: 0 dead-lettered, 0 skipped) = written 0 + filtered 0 + \
         dead-lettered 0 + skipped 0 + in flight when the run stopped 6"
    );
    let j = sb.run(&["run", "--no-watch", "--stats=json"], &input);
    let s = j.assert_balanced_with_in_flight();
    assert_eq!(
        (s["read"].as_i64(), s["in_flight"].as_i64()),
        (Some(6), Some(6))
    );
    // Under skip and dead-letter the same input balances without anything in flight.
    for (pipeline, field) in [
        ("on_bad_input = \"skip\"", "bad_input_skipped"),
        (
            "on_bad_input = \"dead-letter\"\ndead_letter = \"dl.jsonl\"",
            "bad_input_dead_lettered",
        ),
    ] {
        sb.write("pipelines.toml", faulty_config("", pipeline, ""));
        let r = sb.run(&["run", "--no-watch", "--stats=json"], &input);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let s = r.assert_balanced();
        assert_eq!(
            (s["read"].as_i64(), s[field].as_i64()),
            (Some(6), Some(1)),
            "{s}"
        );
    }
}

/// Regression: the rows of the batch that stopped a run were counted as `filtered`.
#[test]
fn the_failed_batch_is_reported_as_failed_not_filtered() {
    let sb = Sandbox::with_config(&faulty_config("", "", "config = { error_on = \"5\" }"));
    let r = sb.run(
        &["run", "--no-watch", "--stats", "--batch-size", "2"],
        &rows(9),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = accounting_line(&r.stderr);
    assert!(line.contains("filtered 0 "), "{line}");
    assert!(line.contains("(2 in the batch that failed)"), "{line}");
    let j = sb.run(
        &["run", "--no-watch", "--stats=json", "--batch-size", "2"],
        &rows(9),
    );
    let s = j.assert_balanced_with_in_flight();
    assert_eq!(stage_stat(&s, "filtered"), 0, "{s}");
    assert_eq!(stage_stat(&s, "failed"), 2, "{s}");
    assert_eq!(stage_stat(&s, "batch_errors"), 1, "{s}");
}

/// Regression: `batches` grew by one at each stage downstream (each stage's empty
/// end-of-stream output counted as a batch), and a stage that processed nothing was 100%
/// busy.
#[test]
fn batches_are_what_each_stage_received_and_idle_stages_are_not_busy() {
    let three = "[settings]\n\n[pipelines.default]\n\n\
                 [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"a\"\n\
                 [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"b\"\n\
                 [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"c\"\n";
    let sb = Sandbox::with_config(three);
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &rows(3));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = r.assert_balanced();
    for st in s["stages"].as_array().unwrap() {
        assert_eq!(st["batches"], 1, "{s}");
    }
    let r = sb.run(&["run", "--no-watch", "--stats"], "id,name\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    for name in ["a", "b", "c"] {
        let row = r
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{}", r.stderr));
        assert!(row.contains(" 0.0% "), "{row}");
    }
    assert_eq!(
        accounting_line(&r.stderr),
        "read 0 (bad input: 0 dead-lettered, 0 skipped) = written 0 + filtered 0 + \
         dead-lettered 0 + skipped 0"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 12, items 3 and 4: records too long, and line ends.

/// Regression (issue 12): a 200 MB line took up to 860 MB of memory before it was found
/// too large (and a 4 GB one aborted the process even under `skip`). With
/// `max_record_bytes` the reader reads past it without holding it: the run goes on, counts
/// it skipped, and its peak memory (the child's own, from wait4) stays far below the line.
#[test]
fn a_200_megabyte_line_under_skip_is_skipped_in_bounded_memory() {
    let sb = Sandbox::with_config(&faulty_config(
        "max_record_bytes = 1048576",
        "input = \"jsonl\"\noutput = \"jsonl\"\non_bad_input = \"skip\"",
        "",
    ));
    let mut child = sb
        .command(&["run", "--no-watch", "--stats=json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(b"{\"id\":\"1\"}\n{\"name\":\"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            stdin.write_all(&chunk).unwrap();
        }
        stdin.write_all(b"\"}\n{\"id\":\"3\"}\n").unwrap();
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    writer.join().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 reaps the child we spawned (and never
    // wait for through `child` afterwards).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let r = Run {
        code: libc::WEXITSTATUS(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        jsonl(&r.stdout),
        vec![json!({"id": "1"}), json!({"id": "3"})]
    );
    let s = r.assert_balanced();
    assert_eq!(
        (s["read"].as_i64(), s["bad_input_skipped"].as_i64()),
        (Some(3), Some(1))
    );
    let peak_mb = usage.ru_maxrss / 1024;
    assert!(peak_mb < 100, "peak memory {peak_mb} MB for a 200 MB line");
    std::mem::forget(child);
}

/// A line over the limit is a bad record named as such under `fail`.
#[test]
fn a_record_over_max_record_bytes_is_bad_input() {
    let sb = Sandbox::with_config(&faulty_config(
        "max_record_bytes = 1024",
        "input = \"jsonl\"\noutput = \"jsonl\"",
        "",
    ));
    let input = format!("{{\"id\":\"1\"}}\n{{\"id\":\"{}\"}}\n", "y".repeat(2000));
    let r = sb.run(&["run", "--no-watch", "--stats=json"], &input);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        messages(&r).starts_with(
            "pipe: error: bad input at -:2: the record is longer than max_record_bytes \
             (2009 bytes; the limit is 1024)"
        ),
        "{}",
        r.stderr
    );
    r.assert_balanced_with_in_flight();
}

/// Regression (issue 12): JSON lines with CR-only line ends were one bad record; under
/// `skip`, exit 0 and nothing written.
#[test]
fn json_lines_end_at_cr_crlf_and_lf() {
    let sb = Sandbox::with_config(&faulty_config(
        "",
        "input = \"jsonl\"\noutput = \"jsonl\"\non_bad_input = \"skip\"",
        "",
    ));
    let input = "{\"id\":\"1\"}\r{\"id\":\"2\"}\r\n{\"id\":\"3\"}\n\r\n{\"id\":\"4\"}\r";
    let r = sb.run(&["run", "--no-watch", "--stats=json"], input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        jsonl(&r.stdout),
        (1..=4)
            .map(|i| json!({"id": i.to_string()}))
            .collect::<Vec<_>>()
    );
    let s = r.assert_balanced();
    assert_eq!(
        (s["read"].as_i64(), s["bad_input_skipped"].as_i64()),
        (Some(4), Some(0))
    );
    // Line numbers count every line end once (`\r\n` too): the bad record is on line 3.
    sb.write(
        "pipelines.toml",
        faulty_config("", "input = \"jsonl\"\noutput = \"jsonl\"", ""),
    );
    let r = sb.run(
        &["run", "--no-watch", "--stats=json"],
        "{\"id\":\"1\"}\r\n{\"id\":\"2\"}\r[1]\r\n",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        messages(&r).starts_with("pipe: error: bad input at -:3: "),
        "{}",
        r.stderr
    );
    r.assert_balanced_with_in_flight();
}
