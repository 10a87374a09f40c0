//! The bare loops of `pipe::bench` as a program of their own, so that `compare.sh` can time
//! them out of process exactly as it times `pipe run`, `mlr` or `jq` (same files, same
//! process start-up, median of the same number of runs).
//!
//! ```text
//! bare copy|chain csv|jsonl FILE     runs the loop once; prints the records written
//! ```
//!
//! `compare.sh` finds the executable with `cargo bench --bench bare --no-run
//! --message-format=json`. Run by `cargo bench` (no FILE) it checks itself on a small
//! generated file instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use pipe::tools::bench::{bare_loop, Baseline};
use pipe_sdk::codec::Format;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [baseline, format, file] => {
            let baseline = match baseline.as_str() {
                "copy" => Baseline::Copy,
                "chain" => Baseline::Chain,
                other => return usage(&format!("unknown loop `{other}`")),
            };
            let format = match format.parse::<Format>() {
                Ok(f) => f,
                Err(e) => return usage(&e),
            };
            match bare_loop(baseline, format, &[PathBuf::from(file)]) {
                Ok(n) => {
                    println!("{n}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bare: {file}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        [] => self_check(),
        _ => usage("expected 3 arguments"),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("bare: {why}\nusage: bare copy|chain csv|jsonl FILE");
    ExitCode::from(2)
}

/// Under `cargo bench`/`cargo test --benches`: both loops on 20,000 generated orders.
fn self_check() -> ExitCode {
    let dir = tempfile::tempdir().expect("a temp dir");
    for format in [Format::Csv, Format::Jsonl] {
        let file = dir.path().join(format!("orders.{format}"));
        let mut f = std::fs::File::create(&file).expect("creating data");
        match format {
            Format::Csv => pipe::tools::generate::orders_csv(&mut f, 20_000, 42),
            Format::Jsonl => pipe::tools::generate::orders_jsonl(&mut f, 20_000, 42),
        }
        .expect("generating orders");
        for baseline in [Baseline::Copy, Baseline::Chain] {
            let t = Instant::now();
            let n = bare_loop(baseline, format, std::slice::from_ref(&file)).expect("bare loop");
            assert!(n > 0 && n <= 20_000);
            println!(
                "bare {baseline:?} {format}: {n} records in {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    ExitCode::SUCCESS
}
