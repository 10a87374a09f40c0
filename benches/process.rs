//! A process stage against the same transform as a `.so` stage (issue 6): `country =
//! upper(country)` by the shipped `compute` plugin and by `benches/upper.py` speaking the
//! process-stage protocol, on the same 20,000 generated orders, one worker each, in the
//! same run. The ratio tells a stage author what isolation costs.
//!
//! Skipped (with a message) where `python3` is not installed.
//!
//! Run: `cargo bench --bench process` (about 30 s).

mod common;

use criterion::{Criterion, SamplingMode, Throughput};
use pipe::config::PipelinesConfig;
use pipe_sdk::codec::Format;

use common::{fmt_ns, StageToml, Summary};

const RECORDS: u64 = 20_000;

fn bench(c: &mut Criterion) {
    // Only estimates written from now on are this run's.
    let summary = Summary::default();
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("process bench skipped: no python3 on this machine");
        return;
    }
    let dir = common::build_plugins(&["stage-compute"]);
    let file = common::orders_file(RECORDS, Format::Csv);
    let so = common::plan(
        &dir,
        &[StageToml::new(
            "compute",
            "{ set = { country = \"upper(country)\" } }",
        )],
    );
    let script = common::workspace().join("benches/upper.py");
    let toml = format!(
        "[settings]\nwatch = false\n[pipelines.bench]\n[[pipelines.bench.stages]]\n\
         command = [\"python3\", {:?}]\n",
        script.display().to_string()
    );
    let path = common::workspace().join("bench-pipelines.toml"); // names the plan only
    let process = PipelinesConfig::parse(&path, &toml)
        .and_then(|cfg| cfg.plan(&path, "bench"))
        .unwrap_or_else(|e| panic!("bench plan: {e}"));

    let mut group = c.benchmark_group("process_vs_so");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(RECORDS));
    for (id, plan) in [("so", &so), ("process", &process)] {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                common::run_excluding_load(plan, &file, Format::Csv, iters, |s| {
                    assert_eq!(s.written, RECORDS, "every record comes out");
                })
            })
        });
    }
    group.finish();

    if Summary::is_test_mode() {
        return;
    }
    if let (Some(so), Some(process)) = (
        summary.ns("process_vs_so", "so"),
        summary.ns("process_vs_so", "process"),
    ) {
        println!(
            "\n## a process stage vs a .so stage, {RECORDS} orders, `country = upper(country)`\n"
        );
        println!("| stage | time | records/s | vs .so |\n|---|---:|---:|---:|");
        for (id, ns) in [(".so (compute)", so), ("process (python3)", process)] {
            println!(
                "| {id} | {} | {:.0} | {:.1}× |",
                fmt_ns(ns),
                RECORDS as f64 / (ns / 1e9),
                ns / so
            );
        }
    }
}

fn main() {
    let mut c = common::criterion_for_runs();
    bench(&mut c);
    c.final_summary();
}
