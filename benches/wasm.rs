//! WASM stages against native ones (issue 14), in process through `pipe::run::run`
//! with the real release builds:
//!
//! - `wasm_chain/{so,wasm}`: 200,000 generated CSV orders through the README chain
//!   (filter `amount > 500` → compute `country = upper(country)`, `amount_cents = amount *
//!   100` → select four columns), with `compute` as the `.so` and as the same crate built
//!   for `wasm32-unknown-unknown`. The chain ratio is wall time; the stage ratio is the
//!   compute stage's own busy time (`busy_ms`: every call into it, both copies included
//!   for WASM). Issue 14 wants the WASM stage at ≥ 50% of the `.so` stage's records/s and
//!   the chain within 1.3× of the all-native chain.
//! - `wasm_load/compute`: what a hot swap of `compute.wasm` costs before its marker:
//!   read, checks, compile (cranelift), probe for the manifest, and one instance created
//!   with its config (`plugin::load` + `instantiate`).
//!
//! Run: `cargo bench --bench wasm` (about 1 min).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use pipe::config::StageKind;
use pipe_sdk::codec::Format;

use common::{fmt_ns, Summary};

const RECORDS: u64 = 200_000;

/// Builds `compute` for wasm32 (release) and returns the module's path.
fn build_compute_wasm() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .args(["-p", "stage-compute"])
        .current_dir(common::workspace())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building compute.wasm failed (rustup target add wasm32-unknown-unknown?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::target_dir().join("wasm32-unknown-unknown/release/compute.wasm")
}

/// `(compute busy ns, records into compute)` of a run, for the stage's own rate.
fn compute_busy(s: &pipe::run::Snapshot) -> (f64, u64) {
    let st = &s.stages[1];
    (st.busy_ms * 1e6, st.rows_in)
}

fn bench(c: &mut Criterion) {
    let summary = Summary::default();
    let dir = common::build_plugins(&["stage-filter", "stage-compute", "stage-select"]);
    let wasm = build_compute_wasm();
    let file = common::orders_file(RECORDS, Format::Csv);
    let so = common::plan(&dir, &common::chain_stages());
    let mut sandboxed = so.clone();
    sandboxed.stages[1].kind = StageKind::Plugin {
        plugin: "compute".into(),
        search: vec![wasm.clone()],
    };

    // The stage's own time, summed over every measured run of each plan.
    let busy = std::sync::Mutex::new([(0.0f64, 0u64); 2]);
    let mut group = c.benchmark_group("wasm_chain");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(RECORDS));
    for (i, (id, plan)) in [("so", &so), ("wasm", &sandboxed)].into_iter().enumerate() {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                common::run_excluding_load(plan, &file, Format::Csv, iters, |s| {
                    assert_eq!(s.stages[1].batch_errors, 0);
                    assert_eq!(s.stages[2].rows_out, s.written);
                    assert!(s.written > 0 && s.written < RECORDS);
                    let (ns, rows) = compute_busy(s);
                    let mut b = busy.lock().unwrap();
                    b[i].0 += ns;
                    b[i].1 += rows;
                })
            })
        });
    }
    group.finish();

    let spec = sandboxed.stages[1].clone();
    let mut group = c.benchmark_group("wasm_load");
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("compute", |b| {
        b.iter(|| {
            let p = pipe::plugin::load(&spec).expect("loading compute.wasm");
            assert_eq!(p.manifest.name, "compute");
            p.instantiate(&spec.config_json).expect("an instance");
        })
    });
    group.finish();

    if Summary::is_test_mode() {
        return;
    }
    let rate = |ns: f64| RECORDS as f64 / (ns / 1e9);
    let b = *busy.lock().unwrap();
    let stage_rate = |(ns, rows): (f64, u64)| rows as f64 / (ns / 1e9);
    if let (Some(so_ns), Some(wasm_ns)) = (
        summary.ns("wasm_chain", "so"),
        summary.ns("wasm_chain", "wasm"),
    ) {
        println!("\n## WASM vs .so: {RECORDS} CSV orders, filter → compute → select\n");
        println!(
            "| compute as | chain time | chain records/s | chain vs all-native | compute stage records/s | stage vs .so |\n|---|---:|---:|---:|---:|---:|"
        );
        for (i, (id, ns)) in [(".so", so_ns), (".wasm", wasm_ns)].into_iter().enumerate() {
            println!(
                "| {id} | {} | {:.0} | {:.2}× | {:.0} | {:.0}% |",
                fmt_ns(ns),
                rate(ns),
                ns / so_ns,
                stage_rate(b[i]),
                100.0 * stage_rate(b[i]) / stage_rate(b[0]),
            );
        }
        let stage_ok = stage_rate(b[1]) >= 0.5 * stage_rate(b[0]);
        let chain_ok = wasm_ns <= 1.3 * so_ns;
        println!(
            "\ntargets: WASM stage ≥ 50% of the .so stage's records/s: {}; chain within 1.3× \
             of all-native: {}",
            if stage_ok { "holds" } else { "MISSED" },
            if chain_ok { "holds" } else { "MISSED" },
        );
    }
    if let Some(ns) = summary.ns("wasm_load", "compute") {
        let size = std::fs::metadata(&wasm).map_or(0, |m| m.len());
        println!(
            "\nload of compute.wasm ({} KiB) before a swap (read, checks, compile, manifest \
             probe, one instance): {}",
            size / 1024,
            fmt_ns(ns)
        );
    }
}

fn main() {
    let mut c = common::criterion_for_runs();
    bench(&mut c);
    c.final_summary();
}
