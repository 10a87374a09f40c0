//! `pipe run` and the everyday commands through the real binary: formats and
//! conversions, several inputs, the shipped default pipeline on the shipped sample,
//! streaming latency, progress rules, logs, completions and the man page.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{jsonl, Sandbox};

const CONVERT: &str = "[pipelines.convert]\n";

fn sample(name: &str) -> String {
    std::fs::read_to_string(format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn csv_to_jsonl_and_back_is_lossless() {
    let sb = Sandbox::with_config(CONVERT);
    let csv = sample("orders.csv");
    let to_json = sb.run(&["run", "--output-format", "jsonl", "--stats=json"], &csv);
    assert_eq!(to_json.code, 0, "{}", to_json.stderr);
    to_json.assert_balanced();
    let rows = jsonl(&to_json.stdout);
    assert_eq!(rows.len(), csv.lines().count() - 1);
    // CSV cells are strings, quoted commas and quotes intact.
    assert_eq!(rows[0]["id"], "1");
    assert!(rows
        .iter()
        .any(|r| r["note"] == "\"fragile\" - handle with care"));
    let back = sb.run(
        &["run", "--input-format", "jsonl", "--output-format", "csv"],
        &to_json.stdout,
    );
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert_eq!(back.stdout, csv);
}

#[test]
fn jsonl_identity_keeps_keys_order_values_and_types() {
    let sb = Sandbox::with_config(CONVERT);
    let events = sample("events.jsonl");
    let out = sb.run(&["run", "--input-format", "jsonl"], &events);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Byte for byte: nested arrays, nulls, bools, floats and key order all kept.
    assert_eq!(out.stdout, events);
}

#[test]
fn files_are_read_in_order_with_stdin_as_dash_and_formats_by_extension() {
    let sb = Sandbox::with_config(CONVERT);
    sb.write("a.csv", "id,v\n1,a\n2,b\n");
    sb.write("c.jsonl", "{\"id\":4,\"v\":\"d\"}\n");
    let out = sb.run(
        &["run", "a.csv", "-", "c.jsonl", "--output-format", "jsonl"],
        "id,v\n3,c\n",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ids: Vec<String> = jsonl(&out.stdout)
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"1\"", "\"2\"", "\"3\"", "4"]);
}

#[test]
fn output_file_format_follows_its_extension() {
    let sb = Sandbox::with_config(CONVERT);
    sb.write("in.csv", "id,v\n1,a\n");
    let out = sb.run(&["run", "in.csv", "-o", "out.jsonl"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "data goes to the file only");
    assert_eq!(sb.read("out.jsonl"), "{\"id\":\"1\",\"v\":\"a\"}\n");
}

#[test]
fn jsonl_with_varying_keys_to_csv() {
    let sb = Sandbox::with_config(CONVERT);
    // Keys missing later are empty cells; the union of a batch's keys is the header.
    let ok = sb.run(
        &["run", "--input-format", "jsonl", "--output-format", "csv"],
        "{\"a\":1,\"b\":\"x\"}\n{\"a\":2}\n{\"b\":\"y\",\"c\":true}\n",
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout, "a,b,c\n1,x,\n2,,\n,y,true\n");
    // A key first seen after the header was written cannot fit: a clear error.
    let mut input = String::new();
    for i in 0..1100 {
        input.push_str(&format!("{{\"a\":{i}}}\n"));
    }
    input.push_str("{\"a\":1,\"late\":2}\n");
    let late = sb.run(
        &["run", "--input-format", "jsonl", "--output-format", "csv"],
        &input,
    );
    assert_eq!(late.code, 1);
    assert!(
        late.stderr
            .contains("field `late` first appears after the CSV header"),
        "{}",
        late.stderr
    );
    assert!(
        late.stderr.contains("(the record at -:1101)"),
        "{}",
        late.stderr
    );
}

/// The default pipeline of the shipped pipelines.toml on the shipped sample, checked
/// against the rules it states, computed here from the sample itself.
#[test]
fn default_pipeline_on_the_sample() {
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("plugin_dir"))
        .collect::<Vec<_>>()
        .join("\n");
    let sb = Sandbox::with_config(&config);
    let csv = sample("orders.csv");
    let out = sb.run(&["run", "--stats=json"], &csv);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.assert_balanced();

    let mut expected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    for r in rdr.records() {
        let r = r.unwrap();
        let amount: f64 = r[5].parse().unwrap();
        if &r[6] == "paid" && amount > 100.0 && seen.insert(r[0].to_string()) {
            expected.push((r[0].to_string(), r[4].to_uppercase(), r[5].to_string()));
        }
    }
    assert!(expected.len() > 5);
    let mut got = csv::Reader::from_reader(out.stdout.as_bytes());
    assert_eq!(
        got.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "id",
            "ts",
            "user",
            "email",
            "country",
            "amount",
            "amount_cents"
        ]
    );
    let rows: Vec<csv::StringRecord> = got.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), expected.len());
    for (row, (id, country, amount)) in rows.iter().zip(&expected) {
        assert_eq!(&row[0], id);
        assert_eq!(&row[4], country);
        assert_eq!(&row[5], amount);
        let cents: f64 = row[6].parse().unwrap();
        assert!((cents - amount.parse::<f64>().unwrap() * 100.0).abs() < 1e-6);
        assert_eq!(row[3].len(), 64, "email is a SHA-256: {}", &row[3]);
        assert!(!row[3].contains('@'));
    }
}

#[test]
fn records_flow_while_stdin_stays_open() {
    let sb = Sandbox::with_config(CONVERT);
    let mut child = sb
        .command(&["run", "--no-watch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    stdin.write_all(b"id,v\n1,a\n").unwrap();
    stdin.flush().unwrap();
    let t = Instant::now();
    // A batch holds 1024 records; these two lines must not wait for the other 1022.
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "id,v\n");
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "1,a\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    stdin.write_all(b"2,b\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "2,b\n");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn progress_lines_only_when_forced_on_a_non_terminal() {
    let sb = Sandbox::with_config(CONVERT);
    let mut big = String::from("id,v\n");
    for i in 0..200_000 {
        big.push_str(&format!("{i},some text here\n"));
    }
    sb.write("big.csv", &big);
    let quiet = sb.run(&["run", "big.csv"], "");
    assert_eq!(quiet.code, 0);
    assert!(!quiet.stderr.contains("progress"), "{}", quiet.stderr);
    // Forced: a plain line now and then (here at least the final one would be shown for a
    // run over a second; a fast run may show none, so slow it down with tiny batches).
    let forced = sb.run(&["run", "big.csv", "--progress", "--batch-size", "1"], "");
    assert_eq!(forced.code, 0);
    let line = forced
        .stderr
        .lines()
        .find(|l| l.starts_with("pipe: progress: "))
        .unwrap_or_else(|| panic!("no progress line:\n{}", forced.stderr));
    assert!(line.contains(" MB of "), "{line}");
    assert!(line.contains("records/s"), "{line}");
    assert!(line.contains("ETA"), "{line}");
    assert_eq!(forced.stdout, quiet.stdout, "progress never touches stdout");
}

#[test]
fn quiet_hides_info_and_verbose_shows_debug() {
    let sb = Sandbox::with_config(CONVERT);
    let v = sb.run(&["run", "-v"], "a\n1\n");
    assert!(
        v.stderr.contains("pipe: debug: running pipeline `convert`"),
        "{}",
        v.stderr
    );
    let q = sb.run(&["run", "-q"], "a\n1\n");
    assert_eq!(q.stderr, "");
    let env = sb
        .command(&["run"])
        .env("PIPE_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&env.stderr).contains("pipe: debug: "));
}

#[test]
fn stats_table_balances_and_names_stages() {
    let sb = Sandbox::with_config(
        "[pipelines.p]\n[[pipelines.p.stages]]\nplugin = \"filter\"\nname = \"big\"\nconfig = { where = \"n > 1\" }\n",
    );
    let out = sb.run(&["run", "--stats"], "n\n1\n2\n3\n");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("big"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("read 3 (bad input: 0 dead-lettered, 0 skipped) = written 2 + filtered 1 + dead-lettered 0 + skipped 0"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("DOES NOT BALANCE"));
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = sb.run(&["completions", shell], "");
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("pipe"), "{shell}");
        assert!(
            out.stdout.contains("dead-letter"),
            "{shell}: flags of `run` are completed"
        );
    }
    let man = sb.run(&["man"], "");
    assert_eq!(man.code, 0);
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH pipe 1"));
    assert!(man.stdout.contains("hot"));
}

#[test]
fn usage_errors_exit_2() {
    // A config that was named must exist (with none named and none here, `pipe run`
    // converts: daily.rs, `with_no_config_file_run_converts`).
    let sb = Sandbox::new();
    let none = sb.run(&["run", "-c", "pipelines.toml"], "a\n1\n");
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("pipelines.toml"), "{}", none.stderr);
    let sb = Sandbox::with_config("[pipelines.a]\n[pipelines.b]\n");
    let which = sb.run(&["run"], "a\n1\n");
    assert_eq!(which.code, 2);
    assert!(
        which
            .stderr
            .contains("no `default` pipeline; name one of: a, b"),
        "{}",
        which.stderr
    );
    let bad_flag = sb.run(&["run", "a", "--output-format", "xml"], "");
    assert_eq!(bad_flag.code, 2);
    assert!(
        bad_flag.stderr.contains("unknown format `xml`"),
        "{}",
        bad_flag.stderr
    );
}

/// Regression: `-o` onto something that is not a regular file (a FIFO here; `/dev/null`
/// in real life) must write into it, not rename a temporary file over it, which would
/// replace the device itself.
#[cfg(unix)]
#[test]
fn output_to_a_fifo_or_device_is_written_in_place() {
    let sb = Sandbox::with_config(CONVERT);
    sb.write("in.csv", "id,v\n1,a\n2,b\n");
    let fifo = sb.path("out.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; mkfifo(3) creates the FIFO.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = sb.run(&["run", "in.csv", "-o", "out.fifo"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(reader.join().unwrap(), "id,v\n1,a\n2,b\n");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    let left: Vec<_> = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `-o` through a symlink replaces the file it points to, not the link.
#[cfg(unix)]
#[test]
fn output_through_a_symlink_replaces_its_target() {
    let sb = Sandbox::with_config(CONVERT);
    sb.write("in.csv", "id\n1\n");
    sb.write("real.csv", "old\n");
    std::os::unix::fs::symlink("real.csv", sb.path("link.csv")).unwrap();
    let out = sb.run(&["run", "in.csv", "-o", "link.csv"], "");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(sb.path("link.csv").is_symlink());
    assert_eq!(sb.read("real.csv"), "id\n1\n");
}

/// On a terminal (a pseudo-terminal made by util-linux `script`), `pipe run FILE` draws a
/// progress bar on stderr with bytes of the total, records/s and an ETA, and nothing of it
/// reaches stdout. Skipped where `script` is not installed.
#[test]
fn progress_bar_renders_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to make a pseudo-terminal");
        return;
    }
    let sb = Sandbox::with_config(CONVERT);
    let mut big = String::from("id,v\n");
    for i in 0..300_000 {
        big.push_str(&format!("{i},some text here\n"));
    }
    sb.write("big.csv", &big);
    common::plugins();
    let inner = format!(
        "{} run big.csv --no-watch --batch-size 16 > out.csv",
        common::pipe_bin().display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .current_dir(sb.dir.path())
        .env_remove("PIPE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("records/s"), "no progress drawn:\n{screen}");
    assert!(screen.contains("ETA"), "{screen}");
    assert!(screen.contains("MiB") || screen.contains("KiB"), "{screen}");
    assert_eq!(sb.read("out.csv"), big, "stdout carries the data only");
}
