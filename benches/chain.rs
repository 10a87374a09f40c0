//! Chain depth and worker scaling, in process through `pipe::engine::run` with the real
//! release plugins (issue 5).
//!
//! - `chain/depth/N`: 200,000 generated CSV orders through N pass-through stages
//!   (`select` keeping every column, [`common::pass_through_config`]), N = 0 (the engine
//!   alone: read, number, reorder, encode), 1, 2, 4, 8; baseline `chain/bare_copy`, the
//!   csv-crate copy loop of `pipe::bench::bare_loop(Baseline::Copy)` on the same file.
//!   The slope over N is what one more stage costs per record, all included (channel
//!   hop, dispatcher, worker, the stage's copy).
//! - `workers/N`: `mask` hashing two fields (`fields = ["email", "user"], mode = "hash"`)
//!   with 1 and 2 workers; issue 5 wants ≥ 1.7× the records/s with 2 on 2 cores.
//!
//! Every run's output is discarded and its written count checked inside the timed loop.
//! After criterion, a table gives records/s and each figure's ratio to its baseline.
//!
//! Run: `cargo bench --bench chain` (about 1.5 min).

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use pipe::bench::{bare_loop, Baseline};
use pipe_sdk::codec::Format;

use common::{fmt_ns, StageToml, Summary};

const RECORDS: u64 = 200_000;
const DEPTHS: [usize; 5] = [0, 1, 2, 4, 8];
const WORKERS: [usize; 2] = [1, 2];

fn mask_config() -> &'static str {
    "{ fields = [\"email\", \"user\"], mode = \"hash\", salt = \"s3cret\" }"
}

fn bench(c: &mut Criterion) {
    let dir = common::build_plugins(&["stage-select", "stage-mask"]);
    let file = common::orders_file(RECORDS, Format::Csv);
    let files = [file.clone()];

    let mut group = c.benchmark_group("chain");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("bare_copy", |b| {
        b.iter(|| {
            let n = bare_loop(Baseline::Copy, Format::Csv, black_box(&files)).expect("bare loop");
            assert_eq!(n, RECORDS);
        })
    });
    for depth in DEPTHS {
        let stages: Vec<StageToml> = (0..depth)
            .map(|i| {
                StageToml::new("select", common::pass_through_config()).named(format!("pass{i}"))
            })
            .collect();
        let plan = common::plan(&dir, &stages);
        group.bench_with_input(BenchmarkId::new("depth", depth), &plan, |b, plan| {
            b.iter(|| {
                let stats = common::run(plan, &file, Format::Csv);
                assert_eq!(stats.written, RECORDS);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("workers");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(RECORDS));
    for workers in WORKERS {
        let plan = common::plan(
            &dir,
            &[StageToml::new("mask", mask_config()).workers(workers)],
        );
        group.bench_with_input(BenchmarkId::new("mask", workers), &plan, |b, plan| {
            b.iter(|| {
                let stats = common::run(plan, &file, Format::Csv);
                assert_eq!(stats.written, RECORDS);
                assert_eq!(stats.stages[0].workers, workers);
            })
        });
    }
    group.finish();
}

fn report(summary: &Summary) {
    let rate = |ns: f64| RECORDS as f64 / (ns / 1e9);
    println!("\n## chain depth: {RECORDS} CSV orders, pass-through stages (select keep all)\n");
    let bare = summary.ns("chain", "bare_copy");
    println!(
        "| pipeline | time | records/s | vs bare copy | per record | added per stage per record |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    if let Some(b) = bare {
        println!(
            "| bare csv copy loop | {} | {:.0} | 1.00× | {} | |",
            fmt_ns(b),
            rate(b),
            fmt_ns(b / RECORDS as f64)
        );
    }
    let base0 = summary.ns("chain", "depth/0");
    let mut pts = Vec::new();
    for d in DEPTHS {
        let Some(t) = summary.ns("chain", &format!("depth/{d}")) else {
            continue;
        };
        pts.push((d as f64, t));
        let added = match (base0, d) {
            (Some(t0), d) if d > 0 => fmt_ns((t - t0) / d as f64 / RECORDS as f64),
            _ => String::new(),
        };
        println!(
            "| pipe, {d} stage{} | {} | {:.0} | {} | {} | {added} |",
            if d == 1 { "" } else { "s" },
            fmt_ns(t),
            rate(t),
            bare.map_or("—".into(), |b| format!("{:.2}×", t / b)),
            fmt_ns(t / RECORDS as f64),
        );
    }
    if pts.len() >= 2 {
        let n = pts.len() as f64;
        let sx: f64 = pts.iter().map(|p| p.0).sum();
        let sy: f64 = pts.iter().map(|p| p.1).sum();
        let sxx: f64 = pts.iter().map(|p| p.0 * p.0).sum();
        let sxy: f64 = pts.iter().map(|p| p.0 * p.1).sum();
        let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
        println!(
            "\nfit over depth: each pass-through stage adds {} per record ({} per 1024-record batch)",
            fmt_ns(slope / RECORDS as f64),
            fmt_ns(slope / RECORDS as f64 * 1024.0)
        );
    }

    println!("\n## workers: mask hashing email and user, {RECORDS} CSV orders\n");
    println!("| workers | time | records/s | speed-up vs 1 |");
    println!("|---:|---:|---:|---:|");
    let one = summary.ns("workers", "mask/1");
    for w in WORKERS {
        let Some(t) = summary.ns("workers", &format!("mask/{w}")) else {
            continue;
        };
        println!(
            "| {w} | {} | {:.0} | {} |",
            fmt_ns(t),
            rate(t),
            one.map_or("—".into(), |o| format!("{:.2}×", o / t))
        );
    }
    if let (Some(o), Some(t)) = (one, summary.ns("workers", "mask/2")) {
        println!(
            "\nissue 5 target: ≥ 1.7× records/s with 2 workers on {} cores: {:.2}× — {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            o / t,
            if o / t >= 1.7 { "holds" } else { "MISSED" }
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
