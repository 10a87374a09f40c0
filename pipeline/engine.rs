//! A run, end to end: load the stages, start the reader, the feeder, the chain and the
//! reload coordinator, and sink the output on the calling thread.
//!
//! ```text
//! reader thread ──batches──► feeder thread ──Msg (seq)──► chain ──► sink (this thread)
//!   (parse inputs)            (numbers the stream,          │          (reorder, encode,
//!                              injects swap/drain markers,  │           watchdog ticks)
//!                              stops on SIGINT/SIGTERM)     │
//! coordinator thread (watch.rs) ──Command──► feeder         │
//! ```
//!
//! Shutdown: the reader ends its channel at end of input; the feeder drops the chain's
//! head; each stage drains, calls `finish` and drops its output; the sink sees the last
//! sender go and flushes. A fatal error (any thread) goes to the sink, which stops the
//! run at once: with `-o`, the temporary file is removed and an existing file stays
//! untouched.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, tick, unbounded, Receiver, Sender};
use pipe_sdk::codec::{self, Format};
use pipe_sdk::Batch;

use crate::config::{PipelinePlan, Policy, StageKind, StageSpec};
use crate::deadletter::DeadLetter;
use crate::error::RunError;
use crate::loader::{self, LoadError, Plugin};
use crate::runtime::{Context, Msg, RetireOrder, RunningChain, StageSetup, SwapOrder, Watchdog};
use crate::stats::{RunStats, Snapshot};

/// What the command line adds to a plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Input files; `-` is stdin; none means stdin.
    pub inputs: Vec<String>,
    /// Output file; none means stdout.
    pub output: Option<PathBuf>,
    /// Input format override.
    pub input_format: Option<Format>,
    /// Output format override.
    pub output_format: Option<Format>,
    /// Watch plugins and config (`--no-watch` turns it off).
    pub watch: bool,
    /// Dead-letter file override.
    pub dead_letter: Option<PathBuf>,
    /// Batch size override.
    pub batch_size: Option<usize>,
    /// Worker count override for every stateless stage.
    pub workers: Option<usize>,
    /// Progress reporting on stderr.
    pub progress: bool,
    /// Throw the output away (for `pipe bench`).
    pub discard_output: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// All input processed and written.
    Done,
    /// The reader of our stdout went away (`| head`): a quiet success.
    BrokenPipe,
    /// Stopped by a signal after draining (exit 128 + signal).
    Interrupted(i32),
    /// Stopped by an error.
    Failed(RunError),
}

/// The result of a run: how it ended, and its counters.
#[derive(Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// The counters.
    pub stats: Snapshot,
}

/// A run that could not start: bad config, plugin or stage config (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A stage could not be loaded or created.
    #[error("stage `{stage}`: {source}")]
    Load {
        /// The stage.
        stage: String,
        /// Why.
        source: LoadError,
    },
    /// The plan and the options do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// The output could not be opened.
    #[error("{0}")]
    Output(String),
    /// A JetStream input or output cannot be used.
    #[error(transparent)]
    JetStream(#[from] crate::jetstream::JetStreamError),
}

/// Loads `spec`'s plugin: find, check, open.
pub fn load_stage(spec: &StageSpec) -> Result<Arc<Plugin>, StartError> {
    let err = |source| StartError::Load {
        stage: spec.name.clone(),
        source,
    };
    match &spec.kind {
        StageKind::Plugin { plugin, search } => {
            let path = loader::find(plugin, search).map_err(err)?;
            Plugin::load(plugin, &path, spec.sha256.as_deref())
                .map(Arc::new)
                .map_err(err)
        }
        StageKind::Command { .. } => crate::process::load(spec).map(Arc::new).map_err(err),
    }
}

/// The number of workers a stage runs: 1 for a stateful plugin.
pub fn effective_workers(spec: &StageSpec, plugin: &Plugin) -> usize {
    if plugin.manifest.stateful {
        1
    } else {
        spec.workers
    }
}

/// Loads and instantiates every stage of `specs`.
pub fn prepare(specs: &[StageSpec], log: fn(&str)) -> Result<Vec<StageSetup>, StartError> {
    let mut setups = Vec::with_capacity(specs.len());
    for spec in specs {
        let plugin = load_stage(spec)?;
        let n = effective_workers(spec, &plugin);
        if n < spec.workers {
            log(&format!(
                "stage `{}` is stateful: running 1 worker instead of {}",
                spec.name, spec.workers
            ));
        }
        let mut instances = Vec::with_capacity(n);
        for _ in 0..n {
            instances.push(plugin.instantiate(&spec.config_json).map_err(|source| {
                StartError::Load {
                    stage: spec.name.clone(),
                    source,
                }
            })?);
        }
        setups.push(StageSetup {
            spec: spec.clone(),
            plugin,
            instances,
        });
    }
    Ok(setups)
}

/// Requests from the reload coordinator to the feeder.
pub enum Command {
    /// Inject a swap marker for a stage.
    Swap {
        /// The stage's name.
        stage: String,
        /// The new version.
        order: Arc<SwapOrder>,
    },
    /// Drain the chain and replace it.
    Rebuild {
        /// The new chain's stages, loaded and instantiated.
        stages: Vec<StageSetup>,
        /// Signalled with the new chain's stage names once it runs.
        done: Sender<Vec<String>>,
    },
}

/// The process's signal number that stopped the run, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// The `-o` temporary file of the run in progress, for a second signal to remove.
static TEMP_OUTPUT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn forget_temp_output() {
    if let Ok(mut t) = TEMP_OUTPUT.lock() {
        *t = None;
    }
}

/// The stages busy right now, for messages: "stage `x` (busy 3.2 s on the batch at
/// in.csv:40)".
fn busy_stages(ctx: &Context) -> String {
    ctx.watchdog
        .busy(&ctx.dead)
        .iter()
        .map(|(stage, secs, input, line)| {
            if *line == 0 {
                format!("stage `{stage}` (busy {secs:.1} s)")
            } else {
                format!("stage `{stage}` (busy {secs:.1} s on the batch at {input}:{line})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where output goes until the run succeeds.
enum OutputTarget {
    /// Written in place: stdout, or a file that is not a regular file.
    Stdout,
    File {
        tmp: PathBuf,
        dest: PathBuf,
    },
}

impl OutputTarget {
    fn open(path: Option<&Path>) -> Result<(OutputTarget, Box<dyn Write + Send>), StartError> {
        let Some(dest) = path else {
            return Ok((OutputTarget::Stdout, Box::new(io::stdout())));
        };
        // Only a regular file is replaced atomically. A device, a FIFO or a socket
        // (`-o /dev/null`, `-o fifo`) is written in place: renaming a temporary file over
        // it would replace the device itself (as root, even /dev/null). A symlink is
        // followed, so the file it points to is the one replaced.
        let resolved;
        let dest = match std::fs::metadata(dest) {
            Ok(md) if !md.is_file() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dest)
                    .map_err(|e| {
                        StartError::Output(format!("cannot write -o {}: {e}", dest.display()))
                    })?;
                return Ok((OutputTarget::Stdout, Box::new(f)));
            }
            Ok(_) if dest.is_symlink() => {
                resolved = std::fs::canonicalize(dest)
                    .map_err(|e| StartError::Output(format!("-o {}: {e}", dest.display())))?;
                resolved.as_path()
            }
            _ => dest,
        };
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest
            .file_name()
            .ok_or_else(|| StartError::Output(format!("-o {}: not a file name", dest.display())))?;
        let tmp = dir.join(format!(
            ".{}.pipe-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = File::create(&tmp).map_err(|e| {
            StartError::Output(format!(
                "cannot write {} (for -o {}): {e}",
                tmp.display(),
                dest.display()
            ))
        })?;
        if let Ok(mut t) = TEMP_OUTPUT.lock() {
            *t = Some(tmp.clone());
        }
        Ok((
            OutputTarget::File {
                tmp,
                dest: dest.to_path_buf(),
            },
            Box::new(f),
        ))
    }

    /// Moves the finished output into place.
    fn commit(&self) -> io::Result<()> {
        forget_temp_output();
        match self {
            OutputTarget::Stdout => Ok(()),
            OutputTarget::File { tmp, dest } => std::fs::rename(tmp, dest),
        }
    }

    /// Drops the partial output; an existing destination stays untouched.
    fn discard(&self) {
        forget_temp_output();
        if let OutputTarget::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Reports a message at `info` level (shown unless `-q`).
pub fn log_stderr(msg: &str) {
    tracing::info!("{msg}");
}

/// Runs `plan` with `opts`. Loading errors come back as `Err` before any output;
/// everything after is in the [`Report`].
pub fn run(mut plan: PipelinePlan, opts: RunOptions) -> Result<Report, StartError> {
    let log: fn(&str) = log_stderr;
    if let Some(b) = opts.batch_size {
        if b == 0 {
            return Err(StartError::Invalid(
                "--batch-size must be at least 1".into(),
            ));
        }
        plan.batch_size = b;
    }
    if let Some(w) = opts.workers {
        if w == 0 {
            return Err(StartError::Invalid("--workers must be at least 1".into()));
        }
        for s in &mut plan.stages {
            s.workers = w;
        }
    }
    let stream_inputs = crate::jetstream::plan_inputs(&plan, &opts.inputs)?;
    let inputs: Vec<String> = if let Some(names) = stream_inputs {
        names
    } else if opts.inputs.is_empty() {
        vec!["-".to_string()]
    } else {
        opts.inputs.clone()
    };
    if inputs.iter().any(|i| i == "-") && io::IsTerminal::is_terminal(&io::stdin()) {
        // A bare `pipe run` in a terminal would otherwise just wait, silently.
        tracing::info!(
            "reading records from the terminal: type them (a CSV header first), end with \
             Ctrl-D; or pipe data in, or name files"
        );
    }
    if inputs.iter().filter(|i| *i == "-").count() > 1 {
        return Err(StartError::Invalid(
            "stdin (`-`) can be read only once".into(),
        ));
    }
    let input_formats: Vec<Format> = inputs
        .iter()
        .map(|i| {
            opts.input_format
                .or_else(|| {
                    (i != "-")
                        .then(|| Format::from_path(Path::new(i)))
                        .flatten()
                })
                .or(plan.input)
                .unwrap_or(Format::Csv)
        })
        .collect();
    let output_format = opts
        .output_format
        .or_else(|| opts.output.as_deref().and_then(Format::from_path))
        .or(plan.output)
        .unwrap_or(input_formats[0]);
    let dead_letter = opts
        .dead_letter
        .clone()
        .or_else(|| plan.dead_letter.clone());
    let needs_dead_letter = plan.on_bad_input == Policy::DeadLetter
        || plan.stages.iter().any(|s| s.on_error == Policy::DeadLetter);
    if needs_dead_letter && dead_letter.is_none() {
        return Err(StartError::Invalid(format!(
            "pipeline `{}` sends records to the dead letter, but no file is set: add \
             `dead_letter = \"rejects.jsonl\"` to the pipeline or pass --dead-letter FILE",
            plan.name
        )));
    }

    let setups = prepare(&plan.stages, log)?;
    let (target, out) = if opts.discard_output {
        (
            OutputTarget::Stdout,
            Box::new(io::sink()) as Box<dyn Write + Send>,
        )
    } else {
        OutputTarget::open(opts.output.as_deref())?
    };

    let stats = Arc::new(RunStats::default());
    for s in &setups {
        stats.stage(&s.spec.name, s.instances.len());
    }
    let dead = Arc::new(DeadLetter::new(dead_letter, inputs.clone()));
    let (fatal_tx, fatal_rx) = unbounded::<RunError>();
    let ctx = Arc::new(Context {
        stats: stats.clone(),
        dead: dead.clone(),
        fatal: fatal_tx.clone(),
        channel_capacity: plan.channel_capacity,
        watchdog: Arc::new(Watchdog::default()),
        log,
        stop_reading: Arc::new(AtomicBool::new(false)),
    });
    let started = Instant::now();
    let mut jetstream = crate::jetstream::JetStreamRun::start(
        &plan,
        &setups,
        opts.output.as_deref().filter(|_| !opts.discard_output),
        output_format,
        dead.clone(),
        fatal_tx.clone(),
    )?;

    // Reader → feeder.
    let (batch_tx, batch_rx) = bounded::<Batch>(plan.channel_capacity);
    // Written batches go back to the reader, so their buffers are reused.
    let (pool_tx, pool_rx) = bounded::<Batch>(plan.channel_capacity * 2 + 2);
    {
        let job = ReaderJob {
            inputs: inputs.clone(),
            formats: input_formats,
            batch_size: plan.batch_size,
            policy: plan.on_bad_input,
            dead: dead.clone(),
            stats: stats.clone(),
            tx: batch_tx,
            pool: pool_rx,
            stop: ctx.stop_reading.clone(),
        };
        let fatal = fatal_tx.clone();
        let stream = jetstream.as_mut().and_then(|j| {
            j.take_source(
                &plan,
                dead.clone(),
                stats.clone(),
                job.tx.clone(),
                job.pool.clone(),
                job.stop.clone(),
            )
        });
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                let read = match stream {
                    Some(stream) => {
                        drop(job);
                        stream.run()
                    }
                    None => job.run(),
                };
                if let Err(e) = read {
                    let _ = fatal.send(e);
                }
            })
            .expect("spawning a thread");
    }

    // Feeder and chain.
    let (sink_tx, sink_rx) = bounded::<Msg>(plan.channel_capacity.max(2) * 2);
    let (cmd_tx, cmd_rx) = unbounded::<Command>();
    let (sig_tx, sig_rx) = bounded::<i32>(4);
    INTERRUPTED.store(0, Relaxed);
    let _signals = install_signals(sig_tx, ctx.clone());
    let loaded: Vec<(Arc<Plugin>, usize)> = setups
        .iter()
        .map(|s| (s.plugin.clone(), s.instances.len()))
        .collect();
    let chain = RunningChain::spawn(setups, &ctx, 0, sink_tx.clone());
    {
        let ctx = ctx.clone();
        let acks = jetstream.as_ref().and_then(|j| j.tracker.clone());
        std::thread::Builder::new()
            .name("feeder".into())
            .spawn(move || feed(batch_rx, cmd_rx, sig_rx, chain, sink_tx, ctx, acks))
            .expect("spawning a thread");
    }

    // Hot reload.
    let watching = opts.watch && plan.watch;
    let _watcher = if watching {
        match crate::watch::start(plan.clone(), loaded, cmd_tx.clone(), stats.clone(), log) {
            Ok(w) => Some(w),
            Err(e) => {
                log(&format!("hot reload is off: {e}"));
                None
            }
        }
    } else {
        None
    };
    drop(cmd_tx);
    tracing::debug!(
        "running pipeline `{}` [{}]{}",
        plan.name,
        plan.stages
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" -> "),
        if _watcher.is_some() {
            ", hot reload on"
        } else {
            ""
        }
    );

    let progress = opts
        .progress
        .then(|| crate::progress::Progress::new(&inputs));
    let outcome = sink(
        sink_rx,
        fatal_rx,
        out,
        output_format,
        &ctx,
        progress.as_ref(),
        pool_tx,
        jetstream.as_mut().and_then(|j| j.take_sink()),
    );
    if let Some(p) = &progress {
        p.finish();
    }
    let interrupted = INTERRUPTED.load(Relaxed);
    let outcome = match outcome {
        Outcome::Done if interrupted != 0 => Outcome::Interrupted(interrupted),
        o => o,
    };
    if let Err(e) = dead.flush() {
        log(&format!("flushing the dead-letter file failed: {e}"));
    }
    let outcome = match outcome {
        Outcome::Done => match target.commit() {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(RunError::Io {
                what: "moving the output into place".into(),
                message: e.to_string(),
            }),
        },
        other => {
            target.discard();
            other
        }
    };
    let mut snapshot = stats.snapshot(started.elapsed());
    if !matches!(outcome, Outcome::Done | Outcome::Interrupted(_)) {
        snapshot.mark_stopped_early();
    }
    Ok(Report {
        outcome,
        stats: snapshot,
    })
}

/// The first SIGINT/SIGTERM stops reading and drains; a second one stops at once,
/// removing the partial `-o` file and the plugin copies, and says what was still busy.
/// Returns a handle that ends the listener when the run is over.
fn install_signals(tx: Sender<i32>, ctx: Arc<Context>) -> Option<SignalsHandle> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            let handle = signals.handle();
            let _ = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    let mut seen = 0;
                    for sig in signals.forever() {
                        seen += 1;
                        if seen > 1 {
                            // A second signal: the user wants out now.
                            let busy = busy_stages(&ctx);
                            tracing::error!(
                                "stopped at once by a second signal{}{}",
                                if busy.is_empty() { "" } else { " while " },
                                busy
                            );
                            if let Ok(t) = TEMP_OUTPUT.lock() {
                                if let Some(tmp) = t.as_ref() {
                                    let _ = std::fs::remove_file(tmp);
                                }
                            }
                            let _ = ctx.dead.flush();
                            crate::loader::cleanup();
                            std::process::exit(128 + sig);
                        }
                        INTERRUPTED.store(128 + sig, Relaxed);
                        let _ = tx.send(sig);
                    }
                });
            return Some(SignalsHandle(handle));
        }
    }
    None
}

/// Ends the signal listener of a run (so that runs in one process, as in `pipe test` and
/// `pipe bench`, do not pile up threads).
struct SignalsHandle(#[cfg(unix)] signal_hook::iterator::Handle);

impl Drop for SignalsHandle {
    fn drop(&mut self) {
        #[cfg(unix)]
        self.0.close();
    }
}

/// What the reader thread needs.
struct ReaderJob {
    inputs: Vec<String>,
    formats: Vec<Format>,
    batch_size: usize,
    policy: Policy,
    dead: Arc<DeadLetter>,
    stats: Arc<RunStats>,
    /// Batches out, to the feeder.
    tx: Sender<Batch>,
    /// Written batches back from the sink, for reuse.
    pool: Receiver<Batch>,
    /// Set when the run is interrupted: read no more.
    stop: Arc<AtomicBool>,
}

impl ReaderJob {
    /// Parses every input in order into batches.
    fn run(self) -> Result<(), RunError> {
        let ReaderJob {
            inputs,
            formats,
            batch_size,
            policy,
            dead,
            stats,
            tx,
            pool,
            stop,
        } = self;
        let formats = &formats;
        let mut bad = Vec::new();
        let mut bytes_before = 0u64;
        for (i, (name, &format)) in inputs.iter().zip(formats).enumerate() {
            let source: Box<dyn Read + Send> = if name == "-" {
                Box::new(io::stdin())
            } else {
                match File::open(name) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        let reason = format!("cannot open input: {e}");
                        match policy {
                            Policy::Fail => {
                                return Err(RunError::BadInput {
                                    input: name.clone(),
                                    line: 0,
                                    reason,
                                })
                            }
                            Policy::Skip => log_stderr(&format!("{name}: {reason}; skipped")),
                            Policy::DeadLetter => {
                                log_stderr(&format!(
                                    "{name}: {reason}; noted in the dead-letter file"
                                ));
                                dead.write(
                                    "source",
                                    &reason,
                                    pipe_sdk::Pos {
                                        input: i as u32,
                                        line: 0,
                                    },
                                    &serde_json::to_string(name).unwrap_or_default(),
                                )
                                .map_err(|e| RunError::Io {
                                    what: "writing the dead-letter file".into(),
                                    message: e.to_string(),
                                })?;
                            }
                        }
                        continue;
                    }
                }
            };
            let mut reader = codec::reader(format, source, i as u32);
            if name == "-" {
                // A pipe or a terminal may go quiet: hand on what has arrived instead of
                // waiting for a full batch.
                reader.set_ready_probe(Box::new(stdin_ready));
            }
            let mut first = true;
            let mut saw_header = false;
            let mut warned_header = false;
            loop {
                if stop.load(Relaxed) {
                    return Ok(()); // interrupted: read no more
                }
                // Batches the sink has written come back with their buffers grown.
                let mut batch = pool.try_recv().unwrap_or_default();
                let more = reader
                    .read_batch(&mut batch, batch_size, &mut bad)
                    .map_err(|e| RunError::Io {
                        what: format!("reading {name}"),
                        message: e.to_string(),
                    })?;
                saw_header |= batch.width() > 0 || !bad.is_empty();
                // Readable records count as read when the feeder takes them (so that
                // records parsed but never sent after a signal are not counted);
                // unreadable ones are dealt with here.
                stats.source.read.fetch_add(bad.len() as u64, Relaxed);
                stats
                    .source
                    .bytes
                    .store(bytes_before + reader.bytes_read(), Relaxed);
                for b in bad.drain(..) {
                    if !warned_header && b.reason.starts_with("no usable header") {
                        // Whatever the policy, a whole input lost deserves a word.
                        warned_header = true;
                        tracing::warn!(
                            "{name}: {}; none of its records can be read",
                            b.reason.trim_start_matches("no usable header: ")
                        );
                    }
                    match policy {
                        Policy::Fail => {
                            return Err(RunError::BadInput {
                                input: name.clone(),
                                line: b.pos.line,
                                reason: b.reason,
                            })
                        }
                        Policy::Skip => {
                            stats.source.skipped.fetch_add(1, Relaxed);
                        }
                        Policy::DeadLetter => {
                            dead.write("source", &b.reason, b.pos, &b.raw.to_string())
                                .map_err(|e| RunError::Io {
                                    what: "writing the dead-letter file".into(),
                                    message: e.to_string(),
                                })?;
                            stats.source.dead_lettered.fetch_add(1, Relaxed);
                        }
                    }
                }
                // An input's first batch goes on even when empty, so that a header-only
                // CSV still produces its header.
                if (!batch.is_empty() || (first && batch.width() > 0)) && tx.send(batch).is_err() {
                    return Ok(()); // the run is stopping
                }
                first = false;
                if !more {
                    break;
                }
            }
            if !saw_header && format == Format::Csv {
                tracing::warn!("{name}: empty input, no CSV header; nothing read");
            }
            bytes_before += reader.bytes_read();
        }
        Ok(())
    }
}

/// Whether stdin has data (or EOF) to read without blocking.
fn stdin_ready() -> bool {
    #[cfg(unix)]
    {
        let mut fds = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut fds, 1, 0) };
        n != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// The feeder thread: numbers batches, performs reload commands, stops on a signal.
fn feed(
    batches: Receiver<Batch>,
    commands: Receiver<Command>,
    signals: Receiver<i32>,
    mut chain: RunningChain,
    sink: Sender<Msg>,
    ctx: Arc<Context>,
    acks: Option<Arc<crate::jetstream::source::AckTracker>>,
) {
    // A stream input's batches carry the message to ack: its tag follows the number
    // given here (jetstream/source.rs), recorded before the batch can reach the sink.
    let tag = |seq: u64| {
        if let Some(a) = &acks {
            a.fed(seq);
        }
    };
    let mut seq = 0u64;
    let mut commands = Some(commands);
    let never = crossbeam_channel::never();
    loop {
        let cmd_rx = commands.as_ref().unwrap_or(&never);
        select! {
            recv(batches) -> b => match b {
                Ok(batch) => {
                    let n = batch.len() as u64;
                    tag(seq);
                    if chain.head.send(Msg::Batch { seq, batch }).is_err() {
                        return;
                    }
                    ctx.stats.source.read.fetch_add(n, Relaxed);
                    seq += 1;
                }
                Err(_) => break,
            },
            recv(cmd_rx) -> c => match c {
                Ok(Command::Swap { stage, order }) => {
                    if chain.head.send(Msg::Swap { seq, stage, order }).is_err() {
                        return;
                    }
                    seq += 1;
                }
                Ok(Command::Rebuild { stages, done }) => {
                    let retire = Arc::new(RetireOrder::default());
                    let (ack_tx, ack_rx) = bounded(1);
                    if chain
                        .head
                        .send(Msg::Drain { seq, retire: retire.clone(), ack: ack_tx })
                        .is_err()
                    {
                        return;
                    }
                    seq += 1;
                    if ack_rx.recv().is_err() {
                        return;
                    }
                    for t in chain.threads.drain(..) {
                        let _ = t.join();
                    }
                    let states = retire.states.lock().map(|m| m.clone()).unwrap_or_default();
                    let mut stages = stages;
                    for s in &mut stages {
                        let Some(state) = states.get(&s.spec.name) else { continue };
                        if !s.plugin.manifest.stateful {
                            continue;
                        }
                        if let Some(inst) = s.instances.first_mut() {
                            if let Err(e) = inst.import_state(state.as_slice().into()).into_result() {
                                (ctx.log)(&format!(
                                    "stage `{}` could not take its state over ({e}); it starts fresh",
                                    s.spec.name
                                ));
                            }
                        }
                    }
                    chain = RunningChain::spawn(stages, &ctx, seq, sink.clone());
                    let _ = done.send(chain.names.clone());
                }
                Err(_) => commands = None,
            },
            recv(signals) -> _ => {
                // Stop reading, but pass on what the reader already has: records taken
                // from the input are processed, not dropped. A reader blocked on a quiet
                // input holds no records (it hands them on before it waits).
                ctx.stop_reading.store(true, Relaxed);
                while let Ok(batch) = batches.recv_timeout(Duration::from_millis(200)) {
                    let n = batch.len() as u64;
                    tag(seq);
                    if chain.head.send(Msg::Batch { seq, batch }).is_err() {
                        return;
                    }
                    ctx.stats.source.read.fetch_add(n, Relaxed);
                    seq += 1;
                }
                break;
            }
        }
    }
    // End of stream (or a signal): dropping the head lets every stage finish in turn.
}

/// The sink: restores order, encodes, watches for fatal errors and hung stages.
#[allow(clippy::too_many_arguments)]
fn sink(
    rx: Receiver<Msg>,
    fatal: Receiver<RunError>,
    out: Box<dyn Write + Send>,
    format: Format,
    ctx: &Context,
    progress: Option<&crate::progress::Progress>,
    pool: Sender<Batch>,
    mut acking: Option<crate::jetstream::sink::AckingSink>,
) -> Outcome {
    let mut writer = codec::writer(format, out);
    let mut pending: std::collections::BTreeMap<u64, Msg> = Default::default();
    let mut next = 0u64;
    let ticker = tick(Duration::from_millis(50));
    let mut interrupted_at: Option<Instant> = None;
    let mut warned_drain = false;
    let write_error = |e: codec::WriteError| -> Outcome {
        match e {
            codec::WriteError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                Outcome::BrokenPipe
            }
            codec::WriteError::Io(e) => Outcome::Failed(RunError::Io {
                what: "writing the output".into(),
                message: e.to_string(),
            }),
            codec::WriteError::Schema { message, pos } => {
                Outcome::Failed(RunError::Output(if pos.line == 0 {
                    format!("{message} (a record a stage made)")
                } else {
                    format!(
                        "{message} (the record at {}:{})",
                        ctx.dead.input_name(pos.input),
                        pos.line
                    )
                }))
            }
        }
    };
    loop {
        select! {
            recv(rx) -> m => match m {
                Ok(msg) => {
                    pending.insert(msg.seq(), msg);
                    while let Some(msg) = pending.remove(&next) {
                        next += 1;
                        match msg {
                            Msg::Batch { seq, mut batch } => {
                                // With a stream involved, the batch is written (or
                                // published) and its message acked (jetstream/sink.rs).
                                let written = match acking.as_mut() {
                                    Some(a) => a.write(seq, &batch, &mut *writer),
                                    None => writer.write_batch(&batch),
                                };
                                if let Err(e) = written {
                                    return write_error(e);
                                }
                                ctx.stats.written.fetch_add(batch.len() as u64, Relaxed);
                                batch.clear_rows();
                                let _ = pool.try_send(batch);
                            }
                            Msg::Swap { .. } => {}
                            Msg::Drain { ack, .. } => {
                                let _ = ack.send(());
                            }
                        }
                    }
                    // Nothing more is waiting: hand what we have to the reader of our
                    // output now (a slow stream must not sit in a buffer).
                    if rx.is_empty() {
                        if let Err(e) = writer.flush() {
                            return write_error(codec::WriteError::Io(e));
                        }
                        if let Some(a) = acking.as_mut() {
                            a.flushed();
                        }
                    }
                }
                Err(_) => break,
            },
            recv(fatal) -> e => {
                if let Ok(e) = e {
                    return Outcome::Failed(e);
                }
            },
            recv(ticker) -> _ => {
                if let Some(e) = ctx.watchdog.check(&ctx.dead) {
                    return Outcome::Failed(e);
                }
                if INTERRUPTED.load(Relaxed) != 0 && !warned_drain {
                    let since = *interrupted_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        let busy = busy_stages(ctx);
                        if !busy.is_empty() {
                            warned_drain = true;
                            tracing::warn!(
                                "draining after the signal, waiting for {busy}; send it again to stop at once (the output is then discarded)"
                            );
                        }
                    }
                }
                if let Some(p) = progress {
                    p.tick(&ctx.stats);
                }
            },
        }
    }
    // A fatal error may have raced with the end of the stream.
    if let Ok(e) = fatal.try_recv() {
        return Outcome::Failed(e);
    }
    if let Err(e) = writer.flush() {
        return write_error(codec::WriteError::Io(e));
    }
    if let Some(a) = acking {
        match a.finish() {
            Ok(s) => tracing::info!("{s}"),
            Err(e) => return Outcome::Failed(e),
        }
        // A publish refused at the last moment is reported on the fatal channel.
        if let Ok(e) = fatal.try_recv() {
            return Outcome::Failed(e);
        }
    }
    Outcome::Done
}
