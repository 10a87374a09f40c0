//! Chain depth and worker scaling, in process through `pipe::run::run` with the real
//! release plugins (issue 5).
//!
//! - `chain/depth/N`: 200,000 generated CSV orders through N pass-through stages
//!   (`select` keeping every column, [`common::pass_through_config`]), N = 0 (the engine
//!   alone: read, number, reorder, encode), 1, 2, 4, 8; baseline `chain/bare_copy`, the
//!   csv-crate copy loop of `pipe::tools::bench::bare_loop(Baseline::Copy)` on the same file.
//!   The slope over N is what one more stage costs per record, all included (channel
//!   hop, dispatcher, worker, the stage's copy).
//! - `workers/N`: `mask` hashing two fields (`fields = ["email", "user"], mode = "hash"`)
//!   with 1 and 2 workers; issue 5 wants ≥ 1.7× the records/s with 2 on 2 cores.
//!
//! Every run of `pipe::run::run` loads its plugins afresh (read, sha256, private copy,
//! `dlopen`), as `pipe run` and `pipe bench` do. The `chain` and `workers` figures are each
//! run's own clock, which starts once the stages are loaded
//! ([`common::run_excluding_load`]); the loading is timed apart, each plan on a
//! header-only file (group `startup`).
//!
//! Every run's output is discarded and its written count checked inside the timed loop.
//! After criterion, a table gives records/s and each figure's ratio to its baseline.
//!
//! Run: `cargo bench --bench chain` (about 1.5 min).

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use pipe::tools::bench::{bare_loop, Baseline};
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
    let header_only = common::orders_file(0, Format::Csv);
    let mut plans = Vec::new();

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
            b.iter_custom(|iters| {
                common::run_excluding_load(plan, &file, Format::Csv, iters, |stats| {
                    assert_eq!(stats.written, RECORDS)
                })
            })
        });
        plans.push((BenchmarkId::new("depth", depth), plan));
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
            b.iter_custom(|iters| {
                common::run_excluding_load(plan, &file, Format::Csv, iters, |stats| {
                    assert_eq!(stats.written, RECORDS);
                    assert_eq!(stats.stages[0].workers, workers);
                })
            })
        });
        plans.push((BenchmarkId::new("mask", workers), plan));
    }
    group.finish();

    let mut group = c.benchmark_group("startup");
    common::startup_group(&mut group);
    for (id, plan) in &plans {
        group.bench_with_input(id.clone(), plan, |b, plan| {
            b.iter(|| {
                let stats = common::run(plan, &header_only, Format::Csv);
                assert_eq!(stats.written, 0);
            })
        });
    }
    group.finish();
}

fn report(summary: &Summary) {
    let per_rec = |ns: f64| fmt_ns(ns / RECORDS as f64);
    let rate = |ns: f64| RECORDS as f64 / (ns / 1e9);
    let startup = |id: &str| summary.ns("startup", id);
    println!("\n## chain depth: {RECORDS} CSV orders, pass-through stages (select keep all)\n");
    println!(
        "Times exclude loading the plugins (see start-up, timed apart on a header-only file).\n"
    );
    let bare = summary.ns("chain", "bare_copy");
    println!(
        "| pipeline | time | records/s | vs bare copy | per record | added per stage \
         per record | start-up |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    if let Some(b) = bare {
        println!(
            "| bare csv copy loop | {} | {:.0} | 1.00× | {} | | |",
            fmt_ns(b),
            rate(b),
            per_rec(b)
        );
    }
    let t0 = summary.ns("chain", "depth/0");
    let mut pts = Vec::new();
    for d in DEPTHS {
        let Some(t) = summary.ns("chain", &format!("depth/{d}")) else {
            continue;
        };
        pts.push((d as f64, t));
        let added = match (t0, d) {
            (Some(t0), d) if d > 0 => per_rec((t - t0) / d as f64),
            _ => String::new(),
        };
        println!(
            "| pipe, {d} stage{} | {} | {:.0} | {} | {} | {added} | {} |",
            if d == 1 { "" } else { "s" },
            fmt_ns(t),
            rate(t),
            bare.map_or("—".into(), |b| format!("{:.2}×", t / b)),
            per_rec(t),
            startup(&format!("depth/{d}")).map_or("—".into(), fmt_ns),
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
            "\nfit over depth: each pass-through stage adds {} per record ({} per \
             1024-record batch)",
            per_rec(slope),
            fmt_ns(slope / RECORDS as f64 * 1024.0)
        );
    }
    if let (Some(s0), Some(s8)) = (startup("depth/0"), startup("depth/8")) {
        println!(
            "start-up: {} with no stage, {} more per stage (loading one plugin)",
            fmt_ns(s0),
            fmt_ns((s8 - s0) / 8.0)
        );
    }

    println!(
        "\n## workers: mask hashing email and user, {RECORDS} CSV orders (loading excluded)\n"
    );
    println!("| workers | time | records/s | speed-up vs 1 | start-up |");
    println!("|---:|---:|---:|---:|---:|");
    let get = |w: usize| summary.ns("workers", &format!("mask/{w}"));
    let one = get(1);
    for w in WORKERS {
        let Some(t) = get(w) else { continue };
        println!(
            "| {w} | {} | {:.0} | {} | {} |",
            fmt_ns(t),
            rate(t),
            one.map_or("—".into(), |o| format!("{:.2}×", o / t)),
            startup(&format!("mask/{w}")).map_or("—".into(), fmt_ns),
        );
    }
    if let (Some(o), Some(t)) = (one, get(2)) {
        println!(
            "\nissue 5 target: ≥ 1.7× records/s with 2 workers on {} cores: {:.2}× — {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            o / t,
            if o / t >= 1.7 { "holds" } else { "MISSED" }
        );
    }
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Why the workers figure is what it is: for each worker count, a few runs with the
/// process's CPU time (getrusage, loading subtracted with a header-only run) and the
/// stage's busy time, and the bounds they put on the speed-up: a run cannot take less
/// than its CPU time spread over every core.
fn workers_diagnosis() {
    let dir = common::profile_dir();
    let file = common::orders_file(RECORDS, Format::Csv);
    let header_only = common::orders_file(0, Format::Csv);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("\n| workers | wall | process CPU | CPUs busy | mask busy (all workers) | rest (reader, feeder, sink, ...) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let (mut one, mut two) = (None, None);
    for workers in WORKERS {
        let plan = common::plan(
            &dir,
            &[StageToml::new("mask", mask_config()).workers(workers)],
        );
        let (mut wall, mut cpu, mut busy) = (0.0, 0.0, 0.0);
        let runs = 5;
        for _ in 0..runs {
            let c0 = cpu_time();
            common::run(&plan, &header_only, Format::Csv);
            let c1 = cpu_time();
            let stats = common::run(&plan, &file, Format::Csv);
            let c2 = cpu_time();
            wall += stats.elapsed_ms * 1e6;
            cpu += ((c2 - c1).as_nanos() as f64 - (c1 - c0).as_nanos() as f64).max(0.0);
            busy += stats.stages[0].busy_ms * 1e6;
        }
        let (wall, cpu, busy) = (wall / runs as f64, cpu / runs as f64, busy / runs as f64);
        println!(
            "| {workers} | {} | {} | {:.2} | {} | {} |",
            fmt_ns(wall),
            fmt_ns(cpu),
            cpu / wall,
            fmt_ns(busy),
            fmt_ns(cpu - busy)
        );
        if workers == 1 {
            one = Some((wall, cpu, busy));
        } else {
            two = Some((wall, cpu, busy));
        }
    }
    if let (Some((wall1, cpu1, busy1)), Some((_, cpu2, _))) = (one, two) {
        // Two workers cannot finish before their CPU time spread over every core; and if
        // the 1-worker run overlapped perfectly it would take max(its CPU / cores, the
        // stage's CPU).
        let floor2 = cpu2 / cores;
        let ideal1 = (cpu1 / cores).max(busy1);
        println!(
            "\nbounds on {cores} cores: 2 workers take ≥ {} (process CPU / cores), so the \
             speed-up over this 1-worker run ({}) is ≤ {:.2}×, and over a perfectly \
             overlapped 1-worker run ({}) ≤ {:.2}×. ≥ 1.7× needs the rest of the process \
             to cost ≤ {:.0}% of the stage; it costs {:.0}%. (CPUs busy < {cores}: other \
             processes had part of the machine.)",
            fmt_ns(floor2),
            fmt_ns(wall1),
            wall1 / floor2,
            fmt_ns(ideal1),
            ideal1 / floor2,
            (2.0 / 1.7 - 1.0) * 100.0,
            (cpu1 - busy1) / busy1 * 100.0
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
        workers_diagnosis();
    }
}
