//! What every bench shares: building the release plugins it loads, the generated input
//! files (cached under `target/bench-data`, the same bytes on every machine), pipeline
//! plans written as TOML, one in-process run with its result checked, and the summary
//! tables that turn criterion's estimates into ratios against a baseline measured in the
//! same run.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use pipe::config::RunOptions;
use pipe::config::{PipelinePlan, PipelinesConfig};
use pipe::run::stats::Snapshot;
use pipe::run::{self as engine, Outcome};
use pipe_sdk::codec::Format;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The profile directory this bench was built into (`target/release`): the bench binary
/// is `target/release/deps/NAME-HASH`, and the plugins it builds land next to `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<bench>")
        .to_path_buf()
}

/// `target/`.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("target/<profile>")
        .to_path_buf()
}

/// `lib<name>.so` (or the platform's spelling).
pub fn lib_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Runs `cargo build --release ARGS` in the workspace (the `CARGO` that runs the bench).
/// Benches run in the `bench` profile, which inherits `release`, so the plugins must be
/// release builds to match; cargo makes this a no-op when they are up to date. (Under
/// `cargo test --benches` the bench is a debug build, and so are the plugins it builds.)
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = profile_dir().ends_with("release");
    let out = Command::new(cargo)
        .arg("build")
        .args(release.then_some("--release"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build --release {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the given plugin packages (`stage-select`, `test-tagger`, ...) and returns the
/// directory holding their `.so` files.
pub fn build_plugins(packages: &[&str]) -> PathBuf {
    let mut args = Vec::new();
    for p in packages {
        args.extend(["-p", p]);
    }
    cargo_build(&args);
    let dir = profile_dir();
    assert!(
        dir.join(lib_name("select")).is_file() || !packages.contains(&"stage-select"),
        "cargo did not put the plugins in {}",
        dir.display()
    );
    dir
}

/// Orders as `format`, `records` of them, seed 42: generated once into
/// `target/bench-data/` and reused by every bench and run.
pub fn orders_file(records: u64, format: Format) -> PathBuf {
    let dir = target_dir().join("bench-data");
    std::fs::create_dir_all(&dir).expect("creating target/bench-data");
    let path = dir.join(format!("orders-{records}.{format}"));
    if !path.is_file() {
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("creating data"));
        match format {
            Format::Csv => pipe::tools::generate::orders_csv(&mut f, records, 42),
            Format::Jsonl => pipe::tools::generate::orders_jsonl(&mut f, records, 42),
        }
        .expect("generating orders");
        f.flush().expect("writing data");
        drop(f);
        std::fs::rename(&tmp, &path).expect("moving data into place");
    }
    path
}

/// The size of a file in bytes.
pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The columns of generated orders, in order.
pub const ORDER_COLUMNS: [&str; 8] = [
    "id", "ts", "user", "email", "country", "amount", "status", "note",
];

/// The stage that passes every record through unchanged: `select` keeping every column
/// of the orders in input order. Its plan is built once per schema (then checked against
/// the input's column names per batch); per record it calls `Output::push`, which marks
/// the input row as kept, and the host passes kept rows on in place
/// (`Output::resolve`: the cell table is compacted, the bytes are not copied). No shipped
/// stage does less per record, so this is the floor of what one stage costs.
pub fn pass_through_config() -> String {
    format!(
        "{{ keep = [{}] }}",
        ORDER_COLUMNS
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The same config as JSON (what the host hands to `new`).
pub fn pass_through_json() -> String {
    serde_json::json!({ "keep": ORDER_COLUMNS }).to_string()
}

/// One stage of a pipeline written as TOML.
pub struct StageToml<'a> {
    pub plugin: &'a str,
    pub name: String,
    pub workers: usize,
    pub config: String,
}

impl<'a> StageToml<'a> {
    pub fn new(plugin: &'a str, config: impl Into<String>) -> StageToml<'a> {
        StageToml {
            plugin,
            name: plugin.to_string(),
            workers: 1,
            config: config.into(),
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
}

/// A plan for a pipeline of `stages`, loading plugins from `plugin_dir`, with the
/// shipped defaults (batch 1024, channel capacity 4) and no watching.
pub fn plan(plugin_dir: &Path, stages: &[StageToml<'_>]) -> PipelinePlan {
    let mut toml = format!(
        "[settings]\nplugin_dir = {:?}\nwatch = false\n\n[pipelines.bench]\n",
        plugin_dir.display().to_string()
    );
    for s in stages {
        toml.push_str(&format!(
            "\n[[pipelines.bench.stages]]\nplugin = \"{}\"\nname = \"{}\"\nworkers = {}\nconfig = {}\n",
            s.plugin, s.name, s.workers, s.config
        ));
    }
    let path = workspace().join("bench-pipelines.toml"); // only names the plan; never read
    PipelinesConfig::parse(&path, &toml)
        .and_then(|c| c.plan(&path, "bench"))
        .unwrap_or_else(|e| panic!("bench plan: {e}\n{toml}"))
}

/// The benchmark chain of the README on orders: filter `amount > 500`, compute
/// `country = upper(country)` and `amount_cents = amount * 100`, keep four columns. The
/// same work as `pipe::tools::bench::Baseline::Chain`.
pub fn chain_stages() -> Vec<StageToml<'static>> {
    vec![
        StageToml::new("filter", "{ where = \"amount > 500\" }"),
        StageToml::new(
            "compute",
            "{ set = { country = \"upper(country)\", amount_cents = \"amount * 100\" } }",
        ),
        StageToml::new(
            "select",
            "{ keep = [\"id\", \"country\", \"amount\", \"amount_cents\"] }",
        ),
    ]
}

/// Runs `plan` over `file` in process, output discarded, as `pipe bench` does; panics
/// unless the run succeeds and balances.
pub fn run(plan: &PipelinePlan, file: &Path, format: Format) -> Snapshot {
    let opts = RunOptions {
        inputs: vec![file.display().to_string()],
        input_format: Some(format),
        output_format: Some(format),
        watch: false,
        discard_output: true,
        ..RunOptions::default()
    };
    let report = engine::run(plan.clone(), opts).unwrap_or_else(|e| panic!("start: {e}"));
    match report.outcome {
        Outcome::Done => {}
        other => panic!("the run did not finish: {other:?}"),
    }
    assert!(report.stats.balances(), "the run does not balance");
    report.stats
}

/// Times `iters` runs of `plan` over `file` for criterion's `iter_custom`, counting each
/// run's own clock (`Snapshot::elapsed_ms`: from the moment the stages are loaded and
/// instantiated to the last record written), so the figure is the processing alone. The
/// plugin loading before it (read, in-memory copy, `dlopen`, checks) is timed apart, on
/// an empty input, in the `startup` groups. `check` sees every run's counters.
pub fn run_excluding_load(
    plan: &PipelinePlan,
    file: &Path,
    format: Format,
    iters: u64,
    check: impl Fn(&Snapshot),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let stats = run(plan, file, format);
        check(&stats);
        total += Duration::from_secs_f64(stats.elapsed_ms / 1e3);
    }
    total
}

/// Criterion set for benches whose one iteration is a whole run (tens to hundreds of
/// milliseconds): 10 samples, short warm-up, a few seconds each, estimates kept in
/// `target/criterion` for [`Summary`].
pub fn criterion_for_runs() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .output_directory(&target_dir().join("criterion"))
        .configure_from_args()
}

/// Settings for a group of start-up runs (a whole run on an empty input: a millisecond or
/// less without plugins), kept short: each run loads its plugins afresh, and abi_stable
/// never unloads them.
pub fn startup_group(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(criterion::SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_millis(400));
}

/// Criterion set for micro benches (one call into a stage).
pub fn criterion_for_calls() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .output_directory(&target_dir().join("criterion"))
        .configure_from_args()
}

/// Reads criterion's estimate (median of the samples, ns per iteration) for one benchmark
/// of this process's run, or `None` when it was filtered out or run in `--test` mode.
pub struct Summary {
    started: SystemTime,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            started: SystemTime::now(),
        }
    }
}

impl Summary {
    /// ns per iteration of `group/function/param` (criterion's directory layout), when
    /// it was measured by this process.
    pub fn ns(&self, group: &str, id: &str) -> Option<f64> {
        let mut p = target_dir().join("criterion").join(sanitize(group));
        for part in id.split('/') {
            p.push(sanitize(part));
        }
        let file = p.join("new").join("estimates.json");
        let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
        if modified < self.started {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
        // The median of the samples' per-iteration times: on a shared machine a few
        // samples hit by another process's burst move the mean and the slope, not it.
        v["median"]["point_estimate"].as_f64()
    }

    /// True unless run by `cargo bench` (which passes `--bench`): under `cargo test
    /// --benches` criterion runs each benchmark once and measures nothing.
    pub fn is_test_mode() -> bool {
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--list")
    }
}

/// Criterion's directory names (`criterion::report::make_filename_safe`).
fn sanitize(s: &str) -> String {
    s.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_")
}

/// Formats a duration in ns with a sensible unit.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
