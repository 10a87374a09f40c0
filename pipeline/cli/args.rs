//! The command line (DESIGN §9): clap definitions and the subcommands other than the
//! run itself. Flags are parsed in two phases, as in ripgrep: clap gives raw [`Cli`]
//! values, then each command turns them into a validated plan before doing anything.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pipe_sdk::codec::Format;

/// pipe: a stream processor whose stages are plugins you can replace while data flows.
#[derive(Debug, Parser)]
#[command(
    name = "pipe",
    version,
    about,
    after_help = "Examples (run from a checkout: its pipelines.toml and samples/):\n  \
      pipe run < samples/orders.csv                       the `default` pipeline\n  \
      pipe run revenue samples/orders.csv -o rev.jsonl    `revenue` on a file, JSON lines out\n  \
      pipe run convert --output-format jsonl < samples/orders.csv\n  \
      pipe check events                                   load and check every stage of `events`\n  \
      pipe stages                                         list the plugins pipe can find\n\n\
      Config: -c FILE, else $PIPE_CONFIG, else ./pipelines.toml.\n\
      Exit codes: 0 ok, 1 the run failed, 2 usage or configuration error, 130/143 interrupted."
)]
pub struct Cli {
    /// More messages on stderr (-v: debug, -vv: trace). PIPE_LOG or RUST_LOG (e.g.
    /// `PIPE_LOG=debug`) set the level when neither -v nor -q is given.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr (-qq: errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: CommandLine,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CommandLine {
    /// Split files into batch messages on a NATS JetStream subject, for `pipe run`
    /// instances that read the stream to share (README, "Scaling out").
    Publish(crate::run::jetstream::publish::PublishArgs),
    /// Run a pipeline over stdin or files.
    #[command(
        after_help = "PIPELINE may be left out: the first argument is taken as a \
        pipeline name when the config defines one by that name, and as a file otherwise.\n\n\
        Examples:\n  pipe run < samples/orders.csv\n  pipe run revenue samples/orders.csv --stats\n  \
        pipe run convert samples/events.jsonl -o events.csv"
    )]
    Run(RunArgs),
    /// Load every stage of a pipeline and check its config; exit 0 or 1.
    Check(CheckArgs),
    /// List the plugins found: name, version, path, ABI check.
    Stages(StagesArgs),
    /// Measure a pipeline's throughput against a bare csv-crate/serde_json loop, with
    /// each stage's share of the time.
    #[command(
        after_help = "With no file, the bench generates data that fits the pipeline's input and \
        sends rejects to a scratch file, never to the pipeline's dead letter.\n\n\
        Examples:\n  pipe bench events --records 20000 --runs 1\n  \
        pipe bench revenue samples/orders.csv --runs 5\n  pipe bench --records 20000 --json"
    )]
    Bench(BenchArgs),
    /// Write deterministic sample data (orders CSV/JSONL, events JSONL) to stdout.
    #[command(after_help = "Examples:\n  pipe generate orders-csv --records 1000 > orders.csv")]
    Generate(GenerateArgs),
    /// Run declarative tests of pipelines and stages (TOML files of `[[tests]]` tables).
    #[command(after_help = "Examples:\n  pipe test tests/pipelines/*.toml")]
    Test(TestArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  pipe completions bash > pipe.bash")]
    Completions(CompletionsArgs),
    /// Print the man page (roff), with every subcommand.
    #[command(after_help = "Examples:\n  pipe man > pipe.1")]
    Man,
    /// Steer a running `pipe run --listen ADDR`: status, swap a stage, roll it back.
    #[command(after_help = "Examples:\n  pipe ctl --addr 127.0.0.1:9464 status\n  \
        pipe ctl --addr 127.0.0.1:9464 swap clean target/release/libfilter.so\n  \
        pipe ctl --addr 127.0.0.1:9464 rollback clean")]
    Ctl(CtlArgs),
    /// Scaffold a new stage in stages/NAME, registered in the workspace.
    #[command(after_help = "Then: cargo build --release && pipe stages")]
    New(NewArgs),
}

/// `pipe completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `pipe test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The config file the tests' `pipeline = ...` refer to.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `pipe new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The stage's name (lower case, digits, `_`): builds `lib<NAME>.so`.
    pub name: String,
    /// The workspace root.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// For a WASM stage: the same crate, documented to build as `NAME.wasm`.
    #[arg(long)]
    pub wasm: bool,
}

/// `pipe bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The pipeline, then input files (default: generated orders).
    #[arg(value_name = "PIPELINE|FILE")]
    pub args: Vec<String>,
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Records to generate when no file is given.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub records: u64,
    /// Report the best of N runs.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub runs: usize,
    /// The bare loop to compare with.
    #[arg(long, value_enum, default_value = "copy")]
    pub baseline: crate::tools::bench::Baseline,
    /// Worker threads for every stateless stage.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `pipe generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[arg(value_enum)]
    pub kind: GenerateKind,
    /// How many records.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub records: u64,
    /// Seed: the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Sample data shapes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GenerateKind {
    /// Orders as CSV (about 100 bytes a row).
    OrdersCsv,
    /// The same orders as JSON lines.
    OrdersJsonl,
    /// Web events as JSON lines, some with nested arrays.
    EventsJsonl,
}

/// `pipe run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline (default: `default`, else the only one), then input files (`-` is
    /// stdin; none: stdin).
    #[arg(value_name = "PIPELINE|FILE")]
    pub args: Vec<String>,
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write to FILE (atomically: a failed run leaves an existing FILE untouched).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Input format (default: from the file extension, else the pipeline's, else csv).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub input_format: Option<Format>,
    /// Output format (default: from -o's extension, else the pipeline's, else the input's).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub output_format: Option<Format>,
    /// Don't watch plugins and the config for changes (no hot reload).
    #[arg(long)]
    pub no_watch: bool,
    /// Print per-stage counts at the end, as a table or as JSON (`--stats=json`; the
    /// `=` is required so that `--stats FILE` reads FILE instead of taking it as a format).
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "table"
    )]
    pub stats: Option<StatsFormat>,
    /// Show a progress bar on stderr even when it is not a terminal.
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Records per batch.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Worker threads for every stateless stage. Stateful stages (`dedup`, `count`) run
    /// one worker whatever N is; `pipe check` shows each stage's count.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Dead-letter file (overrides the pipeline's).
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /health and /stages over HTTP on ADDR (e.g.
    /// 127.0.0.1:9464; port 0 picks a free one) while running (overrides
    /// `settings.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// `pipe ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The running pipe's --listen address.
    #[arg(long, value_name = "ADDR", env = "PIPE_CTL_ADDR")]
    pub addr: String,
    /// What to do.
    #[command(subcommand)]
    pub order: CtlOrder,
}

/// `pipe ctl` orders.
#[derive(Debug, Subcommand)]
pub enum CtlOrder {
    /// The chain (stage, plugin, version, path, workers, swaps) and health, as JSON.
    Status,
    /// Swap STAGE to FILE, or reload it from its own file: drained at a marker, state
    /// handed over, reported.
    Swap {
        /// The stage's name.
        stage: String,
        /// The new plugin library.
        file: Option<PathBuf>,
    },
    /// Swap STAGE back to the version its last swap replaced (kept loaded for an hour).
    Rollback {
        /// The stage's name.
        stage: String,
    },
}

/// `--stats` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// A table for people.
    Table,
    /// One JSON object.
    Json,
}

/// `pipe check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pipeline (default: `default`, else the only one).
    pub pipeline: Option<String>,
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `pipe stages`.
#[derive(Debug, Args)]
pub struct StagesArgs {
    /// The config file (its plugin_dir is searched).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also look in these directories.
    #[arg(value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}
