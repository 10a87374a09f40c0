//! Whole runs against the loops a Rust programmer would write by hand (issue 5), in
//! process through `pipe::run::run` with the real release plugins, each next to
//! `pipe::tools::bench::bare_loop` on the same generated file in the same run:
//!
//! | id | pipe | baseline |
//! |---|---|---|
//! | `csv_copy` | CSV → CSV, no stages | `Baseline::Copy`: csv crate, read and write every record |
//! | `csv_chain` | filter `amount > 500` → compute `country = upper(country)`, `amount_cents = amount * 100` → select keep 4 columns | `Baseline::Chain`: the same work by hand with the csv crate |
//! | `jsonl_chain` | the same chain on JSON lines | `Baseline::Chain` with serde_json |
//!
//! 200,000 orders (≈ 18 MB of CSV, 33 MB of JSON lines), throughput in input bytes.
//! Each run's written count is checked inside the timed loop against the bare loop's.
//! Each `pipe` run loads its plugins afresh (as `pipe run` does); the `pipe` figure is the
//! run's own clock, which starts once the stages are loaded
//! ([`common::run_excluding_load`]), and the loading is timed apart on an empty input
//! (group `startup`). The table gives the ratio without and with it.
//!
//! Run: `cargo bench --bench end_to_end` (about 1.5 min).

mod common;

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, SamplingMode, Throughput};
use pipe::tools::bench::{bare_loop, Baseline};
use pipe_sdk::codec::Format;

use common::{fmt_ns, StageToml, Summary};

const RECORDS: u64 = 200_000;

struct Case {
    id: &'static str,
    format: Format,
    baseline: Baseline,
    chain: bool,
}

const CASES: [Case; 3] = [
    Case {
        id: "csv_copy",
        format: Format::Csv,
        baseline: Baseline::Copy,
        chain: false,
    },
    Case {
        id: "csv_chain",
        format: Format::Csv,
        baseline: Baseline::Chain,
        chain: true,
    },
    Case {
        id: "jsonl_chain",
        format: Format::Jsonl,
        baseline: Baseline::Chain,
        chain: true,
    },
];

fn bench(c: &mut Criterion) {
    let dir = common::build_plugins(&["stage-filter", "stage-compute", "stage-select"]);
    let mut startups = Vec::new();
    for case in &CASES {
        let file = common::orders_file(RECORDS, case.format);
        let files: Vec<PathBuf> = vec![file.clone()];
        let stages: Vec<StageToml> = if case.chain {
            common::chain_stages()
        } else {
            Vec::new()
        };
        let plan = common::plan(&dir, &stages);
        // What both must write: the bare loop's count.
        let expected = bare_loop(case.baseline, case.format, &files).expect("bare loop");
        assert!(expected > 0);

        let mut group = c.benchmark_group(case.id);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Bytes(common::file_len(&file)));
        group.bench_function("bare", |b| {
            b.iter(|| {
                let n = bare_loop(case.baseline, case.format, black_box(&files)).expect("bare");
                assert_eq!(n, expected);
            })
        });
        group.bench_function("pipe", |b| {
            b.iter_custom(|iters| {
                common::run_excluding_load(&plan, &file, case.format, iters, |stats| {
                    assert_eq!(stats.read, RECORDS);
                    assert_eq!(stats.written, expected);
                })
            })
        });
        group.finish();
        startups.push((case, plan));
    }
    let mut group = c.benchmark_group("startup");
    common::startup_group(&mut group);
    for (case, plan) in &startups {
        let empty = common::orders_file(0, case.format);
        group.bench_function(case.id, |b| {
            b.iter(|| {
                let stats = common::run(plan, &empty, case.format);
                assert_eq!(stats.written, 0);
            })
        });
    }
    group.finish();
}

fn report(summary: &Summary) {
    println!("\n## end to end: {RECORDS} orders, in process, output discarded\n");
    println!(
        "| case | input | bare loop | pipe (loading excluded) | pipe / bare | pipe MB/s | \
         pipe records/s | start-up (empty input) | (pipe + start-up) / bare |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in &CASES {
        let (Some(bare), Some(pipe)) = (summary.ns(case.id, "bare"), summary.ns(case.id, "pipe"))
        else {
            continue;
        };
        let start = summary.ns("startup", case.id);
        let bytes = common::file_len(&common::orders_file(RECORDS, case.format)) as f64;
        println!(
            "| {} | {:.1} MB {} | {} | {} | {:.2}× | {:.1} | {:.0} | {} | {} |",
            case.id,
            bytes / 1e6,
            case.format,
            fmt_ns(bare),
            fmt_ns(pipe),
            pipe / bare,
            bytes / 1e6 / (pipe / 1e9),
            RECORDS as f64 / (pipe / 1e9),
            start.map_or("—".into(), fmt_ns),
            start.map_or("—".into(), |s| format!("{:.2}×", (pipe + s) / bare)),
        );
    }
}

fn main() {
    let summary = Summary::default();
    let mut c = common::criterion_for_runs();
    bench(&mut c);
    c.final_summary();
    if !Summary::is_test_mode() {
        report(&summary);
    }
}
