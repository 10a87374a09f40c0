//! `pipe bench`: throughput of a pipeline, each stage's share of the time, and the same
//! input through a bare csv-crate (or serde_json) loop in the same process, so every
//! figure is a ratio measured side by side on the same machine at the same moment.
//!
//! The baselines are the loops a Rust programmer would write by hand: `copy` reads and
//! writes every record unchanged; `chain` does the work of the README's benchmark chain
//! (filter `amount > 500`, `country = upper(country)`, `amount_cents = amount * 100`,
//! keep four columns) on orders data.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pipe_sdk::codec::Format;

use crate::config::RunOptions;
use crate::run::Snapshot;
use crate::run::{self, Outcome};

/// Which hand-written loop to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Baseline {
    /// Read and write every record unchanged.
    Copy,
    /// The benchmark chain on orders: filter, compute, select.
    Chain,
}

/// Runs the bare loop over `files` in `format`, writing to a sink; returns records out.
pub fn bare_loop(baseline: Baseline, format: Format, files: &[PathBuf]) -> io::Result<u64> {
    let mut n = 0;
    for f in files {
        let file = File::open(f)?;
        n += match format {
            Format::Csv => bare_csv(baseline, file)?,
            Format::Jsonl => bare_jsonl(baseline, file)?,
        };
    }
    Ok(n)
}

fn bare_csv(baseline: Baseline, file: File) -> io::Result<u64> {
    let mut rdr = csv::Reader::from_reader(file);
    let mut wtr = csv::Writer::from_writer(io::sink());
    let headers = rdr.byte_headers().map_err(io::Error::other)?.clone();
    let mut rec = csv::ByteRecord::new();
    let mut n = 0;
    match baseline {
        Baseline::Copy => {
            wtr.write_byte_record(&headers).map_err(io::Error::other)?;
            while rdr.read_byte_record(&mut rec).map_err(io::Error::other)? {
                wtr.write_byte_record(&rec).map_err(io::Error::other)?;
                n += 1;
            }
        }
        Baseline::Chain => {
            let col = |name: &str| headers.iter().position(|h| h == name.as_bytes());
            let (Some(id), Some(country), Some(amount)) =
                (col("id"), col("country"), col("amount"))
            else {
                return Err(io::Error::other("the chain baseline needs orders data"));
            };
            wtr.write_record(["id", "country", "amount", "amount_cents"])
                .map_err(io::Error::other)?;
            let mut upper = Vec::new();
            let mut cents = String::new();
            while rdr.read_byte_record(&mut rec).map_err(io::Error::other)? {
                let a: f64 = std::str::from_utf8(&rec[amount])
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(f64::NAN);
                if a.partial_cmp(&500.0) != Some(std::cmp::Ordering::Greater) {
                    continue;
                }
                upper.clear();
                upper.extend(rec[country].iter().map(u8::to_ascii_uppercase));
                cents.clear();
                use std::fmt::Write as _;
                let _ = write!(cents, "{}", (a * 100.0).round());
                wtr.write_record([&rec[id], &upper[..], &rec[amount], cents.as_bytes()])
                    .map_err(io::Error::other)?;
                n += 1;
            }
        }
    }
    wtr.flush()?;
    Ok(n)
}

fn bare_jsonl(baseline: Baseline, file: File) -> io::Result<u64> {
    let mut out = io::BufWriter::new(io::sink());
    let mut n = 0;
    for line in BufReader::with_capacity(1 << 16, file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&line).map_err(io::Error::other)?;
        if baseline == Baseline::Chain {
            let a = v.get("amount").and_then(|a| a.as_f64()).unwrap_or(f64::NAN);
            if a.partial_cmp(&500.0) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let country = v
                .get("country")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_uppercase();
            let mut o = serde_json::Map::new();
            o.insert("id".into(), v["id"].take());
            o.insert("country".into(), country.into());
            o.insert("amount".into(), v["amount"].take());
            o.insert("amount_cents".into(), (a * 100.0).round().into());
            v = serde_json::Value::Object(o);
        }
        serde_json::to_writer(&mut out, &v)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// One bench result, for `--json`.
#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    /// The pipeline.
    pub pipeline: String,
    /// Input format.
    pub format: String,
    /// Records read.
    pub records: u64,
    /// Input bytes.
    pub bytes: u64,
    /// Best pipeline wall time, seconds.
    pub pipeline_s: f64,
    /// Best bare-loop wall time, seconds.
    pub baseline_s: f64,
    /// Which bare loop.
    pub baseline: Baseline,
    /// pipeline_s / baseline_s.
    pub ratio: f64,
    /// Each stage's busy time as a share of the pipeline's wall time (summed over its
    /// workers, so a 2-worker stage can exceed 1).
    pub stage_share: Vec<(String, f64)>,
    /// Counters of the last pipeline run.
    pub stats: Snapshot,
}

/// Options of one bench.
pub struct BenchOptions {
    /// Input files (generated when empty).
    pub files: Vec<PathBuf>,
    /// Records to generate when no files are given.
    pub records: u64,
    /// Best of this many runs.
    pub runs: usize,
    /// The bare loop to compare with.
    pub baseline: Baseline,
    /// Worker override.
    pub workers: Option<usize>,
}

/// Benchmarks `plan`.
pub fn bench(
    mut plan: crate::config::PipelinePlan,
    opts: BenchOptions,
) -> Result<BenchReport, Box<dyn std::error::Error>> {
    // The stages are measured on files: a pipeline's streams are neither read nor
    // written (that would take real messages from its consumer).
    plan.jetstream = Default::default();
    let tmp;
    // The bench's own scratch dir: generated data and the dead letter go here, never to
    // the pipeline's dead-letter file or anywhere else the user did not name
    // (daily.rs: `bench_on_events_generates_events_and_writes_nothing_else`).
    let scratch = ScratchDir::new()?;
    let dead_letter = Some(scratch.0.join("dead-letter.jsonl"));
    let format = plan.input.unwrap_or(Format::Csv);
    let files = if opts.files.is_empty() {
        let kind = fitting_data(&plan, format, &scratch, dead_letter.as_deref())?;
        tmp = scratch.0.join(format!("generated.{format}"));
        let mut f = io::BufWriter::new(File::create(&tmp)?);
        kind.write(&mut f, opts.records)?;
        f.flush()?;
        vec![tmp.clone()]
    } else {
        opts.files.clone()
    };
    let format = files
        .first()
        .and_then(|f| Format::from_path(f))
        .unwrap_or(format);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let runs = opts.runs.max(1);
    let mut best_pipe = Duration::MAX;
    let mut best_base = Duration::MAX;
    let mut stats = None;
    for _ in 0..runs {
        // Alternate the two so both see the same machine state.
        let t = Instant::now();
        bare_loop(opts.baseline, format, &files)?;
        best_base = best_base.min(t.elapsed());
        let run_opts = RunOptions {
            inputs: files.iter().map(|f| f.display().to_string()).collect(),
            input_format: Some(format),
            output_format: Some(format),
            watch: false,
            workers: opts.workers,
            dead_letter: dead_letter.clone(),
            discard_output: true,
            ..RunOptions::default()
        };
        let t = Instant::now();
        let report = run::run(plan.clone(), run_opts)?;
        let el = t.elapsed();
        if let Outcome::Failed(e) = report.outcome {
            return Err(Box::new(e));
        }
        best_pipe = best_pipe.min(el);
        stats = Some(report.stats);
    }
    let stats = stats.expect("at least one run");
    let wall_ms = stats.elapsed_ms.max(1e-9);
    Ok(BenchReport {
        pipeline: plan.name.clone(),
        format: format.to_string(),
        records: stats.read,
        bytes,
        pipeline_s: best_pipe.as_secs_f64(),
        baseline_s: best_base.as_secs_f64(),
        baseline: opts.baseline,
        ratio: best_pipe.as_secs_f64() / best_base.as_secs_f64().max(1e-9),
        stage_share: stats
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.busy_ms / wall_ms))
            .collect(),
        stats,
    })
}

/// The generated data shapes a bench can feed a pipeline.
#[derive(Debug, Clone, Copy)]
enum Generated {
    OrdersCsv,
    OrdersJsonl,
    EventsJsonl,
}

impl Generated {
    fn write(self, out: &mut impl Write, records: u64) -> io::Result<()> {
        use crate::tools::generate;
        match self {
            Generated::OrdersCsv => generate::orders_csv(out, records, 42),
            Generated::OrdersJsonl => generate::orders_jsonl(out, records, 42),
            Generated::EventsJsonl => generate::events_jsonl(out, records, 42),
        }
    }
}

/// Picks the generated data that fits `plan`: each shape of the pipeline's input format
/// goes through the pipeline once on a small sample, and the one that loses the fewest
/// records to rejects (then keeps the most) wins. Trying beats guessing from stage
/// configs, which any plugin may read its own way; an `events` pipeline fed orders
/// rejected every record (issue 13, item 2).
fn fitting_data(
    plan: &crate::config::PipelinePlan,
    format: Format,
    scratch: &ScratchDir,
    dead_letter: Option<&Path>,
) -> Result<Generated, Box<dyn std::error::Error>> {
    let candidates: &[Generated] = match format {
        Format::Csv => return Ok(Generated::OrdersCsv),
        Format::Jsonl => &[Generated::OrdersJsonl, Generated::EventsJsonl],
    };
    let mut best = (candidates[0], (u64::MAX, 0));
    for &kind in candidates {
        let path = scratch.0.join(format!("probe.{format}"));
        let mut f = io::BufWriter::new(File::create(&path)?);
        kind.write(&mut f, 500)?;
        f.flush()?;
        drop(f);
        let report = run::run(
            plan.clone(),
            RunOptions {
                inputs: vec![path.display().to_string()],
                input_format: Some(format),
                output_format: Some(format),
                dead_letter: dead_letter.map(Path::to_path_buf),
                discard_output: true,
                ..RunOptions::default()
            },
        )?;
        let s = &report.stats;
        let lost = s.dead_lettered() + s.skipped();
        // Fewer rejects first, then more records out.
        let score = (lost, u64::MAX - s.written);
        if score < (best.1 .0, u64::MAX - best.1 .1) {
            best = (kind, (lost, s.written));
        }
    }
    Ok(best.0)
}

/// A temporary directory removed, with everything in it, on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> io::Result<ScratchDir> {
        let p = std::env::temp_dir().join(format!("pipe-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl BenchReport {
    /// The table for people.
    pub fn table(&self) -> String {
        let rate = |s: f64| self.records as f64 / s.max(1e-9);
        let mbs = |s: f64| self.bytes as f64 / 1e6 / s.max(1e-9);
        let mut out = format!(
            "pipeline `{}` on {} records ({:.1} MB of {})\n\
             {:<22} {:>9} {:>12} {:>9} {:>10}\n\
             {:<22} {:>8.3}s {:>10.0}/s {:>9.1} {:>9.2}x\n\
             {:<22} {:>8.3}s {:>10.0}/s {:>9.1} {:>9.2}x\n",
            self.pipeline,
            self.records,
            self.bytes as f64 / 1e6,
            self.format,
            "",
            "time",
            "records/s",
            "MB/s",
            "vs bare",
            format!("bare loop ({:?})", self.baseline).to_lowercase(),
            self.baseline_s,
            rate(self.baseline_s),
            mbs(self.baseline_s),
            1.0,
            "pipe",
            self.pipeline_s,
            rate(self.pipeline_s),
            mbs(self.pipeline_s),
            self.ratio,
        );
        if !self.stage_share.is_empty() {
            out.push_str("stage busy time / wall time (workers summed):\n");
            let max = self.stage_share.iter().map(|s| s.1).fold(0.0, f64::max);
            for (name, share) in &self.stage_share {
                out.push_str(&format!(
                    "  {name:<20} {:>6.1}%{}\n",
                    share * 100.0,
                    if *share == max && max > 0.0 {
                        "  <- busiest"
                    } else {
                        ""
                    }
                ));
            }
        }
        out
    }
}

/// Whether `path` names an existing file (for telling pipelines from files).
pub fn is_file(path: &str) -> bool {
    Path::new(path).is_file()
}
