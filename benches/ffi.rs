//! The cost of crossing the plugin boundary (issue 5: under 1 µs per batch and under 20 ns
//! per record for a pass-through stage).
//!
//! The stage is `select` keeping all eight columns of the orders in order
//! ([`common::pass_through_config`]): the cheapest stage the ABI allows, since a stage
//! writes its output rows and cannot hand its input back. It is called four ways on the
//! same batches, so the differences isolate each layer:
//!
//! | id | what is called |
//! |---|---|
//! | `direct` | `<Select as Stage>::process` from the `select` rlib: plain Rust, the work itself |
//! | `rlib` | the same stage behind the SDK adapter (`#[sabi_trait]` vtable + `catch_unwind`), compiled into this binary |
//! | `plugin` | `StageBox::process` on an instance from the real release `libselect.so`, loaded with `pipe::plugin::load` |
//! | `plugin_host` | `plugin` plus what `runtime.rs`'s worker does around the call to send the rows on: `Output::resolve(input)`, which hands the input batch on with the kept rows compacted (the input is a fresh clone per iteration, made outside the timing) |
//!
//! over batch sizes 0 (the call alone), 1, 16, 256, 1024 and 4096 records. Each call's
//! result is checked inside the timed loop (the output has as many rows as the input).
//! After criterion, a table gives per-batch cost (the call on an empty batch) and
//! per-record cost (`(t(4096) - t(0)) / 4096`) of each path, and the boundary's share
//! (`plugin - direct`).
//!
//! Run: `cargo bench --bench ffi` (about 40 s).

mod common;

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};

use pipe_sdk::abi::StageBox;
use pipe_sdk::codec::{self, Format};
use pipe_sdk::host::HostOutput;
use pipe_sdk::{Batch, Output, Stage};
use select::{Select, SelectConfig};

use common::{fmt_ns, Summary};

const SIZES: [usize; 6] = [0, 1, 16, 256, 1024, 4096];

/// The first `n` orders as one batch (for 0: an empty batch with the orders' columns,
/// as the reader sends for a header-only input).
fn batch_of(n: usize) -> Batch {
    let mut text = Vec::new();
    pipe::tools::generate::orders_csv(&mut text, n as u64, 42).expect("generating orders");
    let mut reader = codec::reader(Format::Csv, text.as_slice(), 0);
    let mut batch = Batch::new();
    let mut bad = Vec::new();
    reader
        .read_batch(&mut batch, n.max(1), &mut bad)
        .expect("reading from memory");
    assert!(bad.is_empty());
    assert_eq!((batch.len(), batch.width()), (n, 8));
    batch
}

/// One call as the host makes it (`runtime.rs`: clear, begin, process), checked.
fn process_checked(stage: &mut StageBox, batch: &Batch, out: &mut Output) {
    out.clear();
    out.begin(batch);
    stage
        .process(black_box(batch), out)
        .into_result()
        .expect("select passes every row");
    assert_eq!(out.len(), batch.len());
}

fn bench(c: &mut Criterion) {
    let dir = common::build_plugins(&["stage-select"]);
    let plugin = pipe::plugin::load(&pipe::plugin::file_spec(
        "select",
        &dir.join(common::lib_name("select")),
    ))
    .expect("loading libselect.so");
    let config = common::pass_through_json();
    let mut loaded = plugin.instantiate(&config).expect("a select instance");
    let mut in_binary = pipe_sdk::__private::new_instance::<Select>(&config)
        .into_result()
        .expect("a select instance");
    let mut direct = Select::new(pipe_sdk::parse_config::<SelectConfig>(&config).expect("config"))
        .expect("a select instance");

    for n in SIZES {
        let batch = batch_of(n);
        let mut group = c.benchmark_group(if n == 0 { "ffi-call" } else { "ffi" });
        if n > 0 {
            group.throughput(Throughput::Elements(n as u64));
        }
        let mut out = Output::new();
        group.bench_with_input(BenchmarkId::new("direct", n), &batch, |b, batch| {
            b.iter(|| {
                out.clear();
                out.begin(batch);
                direct
                    .process(black_box(batch), &mut out)
                    .expect("select passes every row");
                assert_eq!(out.len(), batch.len());
            })
        });
        let mut out = Output::new();
        group.bench_with_input(BenchmarkId::new("rlib", n), &batch, |b, batch| {
            b.iter(|| process_checked(&mut in_binary, batch, &mut out))
        });
        let mut out = Output::new();
        group.bench_with_input(BenchmarkId::new("plugin", n), &batch, |b, batch| {
            b.iter(|| process_checked(&mut loaded, batch, &mut out))
        });
        let mut out = Output::new();
        group.bench_with_input(BenchmarkId::new("plugin_host", n), &batch, |b, batch| {
            b.iter_batched(
                || batch.clone(),
                |input| {
                    process_checked(&mut loaded, &input, &mut out);
                    let passed = out.resolve(input);
                    assert_eq!(passed.len(), n);
                    passed
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn report(summary: &Summary) {
    let get = |kind: &str, n: usize| {
        let group = if n == 0 { "ffi-call" } else { "ffi" };
        summary.ns(group, &format!("{kind}/{n}"))
    };
    let kinds = ["direct", "rlib", "plugin", "plugin_host"];
    let cell = |v: Option<f64>| v.map_or("—".to_string(), fmt_ns);
    println!("\n## ffi: select keeping all 8 columns (pass-through), median time per call\n");
    println!(
        "| records | direct | rlib (vtable) | plugin (.so) | plugin + resolve | \
         plugin − direct | plugin per record |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in SIZES {
        let row: Vec<Option<f64>> = kinds.iter().map(|k| get(k, n)).collect();
        if row.iter().all(Option::is_none) {
            continue;
        }
        let delta = match (row[2], row[0]) {
            (Some(p), Some(d)) => fmt_ns(p - d),
            _ => "—".into(),
        };
        let per = match row[2] {
            Some(p) if n > 0 => fmt_ns(p / n as f64),
            _ => "—".into(),
        };
        println!(
            "| {n} | {} | {} | {} | {} | {delta} | {per} |",
            cell(row[0]),
            cell(row[1]),
            cell(row[2]),
            cell(row[3])
        );
    }
    // Per batch: the call on an empty batch (everything but the rows). Per record: the
    // growth from 0 to 4096 records, divided out. (A least-squares fit over the sizes is
    // dominated by the largest batches' noise and gives a meaningless intercept.)
    println!("\n| path | per batch (empty batch) | per record ((t4096 − t0) / 4096) |");
    println!("|---|---:|---:|");
    let split = |k: &str| match (get(k, 0), get(k, 4096)) {
        (Some(t0), Some(t)) => Some((t0, (t - t0) / 4096.0)),
        _ => None,
    };
    for k in kinds {
        if let Some((b, r)) = split(k) {
            println!("| {k} | {} | {} |", fmt_ns(b), fmt_ns(r));
        }
    }
    if let Some((per_batch, per_record)) = split("plugin") {
        println!(
            "\nissue 5 targets, pass-through stage through the .so: per batch {} — target \
             < 1 µs: {}; per record {} — target < 20 ns: {}",
            fmt_ns(per_batch),
            if per_batch < 1000.0 {
                "holds"
            } else {
                "MISSED"
            },
            fmt_ns(per_record),
            if per_record < 20.0 { "holds" } else { "MISSED" },
        );
        if let (Some((tb, tr)), Some((db, dr))) = (split("plugin_host"), split("direct")) {
            println!(
                "boundary alone (plugin − direct): {} per batch, {} per record; with the \
                 worker's resolve: {} per batch, {} per record",
                fmt_ns(per_batch - db),
                fmt_ns(per_record - dr),
                fmt_ns(tb),
                fmt_ns(tr)
            );
        }
    }
}

fn main() {
    let summary = Summary::default();
    let mut c = common::criterion_for_calls();
    bench(&mut c);
    c.final_summary();
    if !Summary::is_test_mode() {
        report(&summary);
    }
}
