//! The subcommands besides `pipe run`: planning a run from the command line, `pipe
//! check`, `pipe stages`, `pipe publish`, and the tools (bench, generate, new, test, completions, man).

use std::path::{Path, PathBuf};

use super::args::{
    BenchArgs, CheckArgs, CompletionsArgs, GenerateArgs, GenerateKind, NewArgs, StagesArgs,
    TestArgs,
};
use super::exit::{fail, Exit};
use crate::config::{config_path, PipelinePlan, PipelinesConfig};
use crate::plugin;
use crate::tools;

/// Writes to stdout. `Err(code)` when it cannot: a reader that went away (`pipe stages |
/// head -1`) ends the command quietly with 0, as in `pipe run`; any other failure is an
/// error (1). `println!` would panic on a closed pipe (loading.rs:
/// `listings_to_a_closed_stdout_end_quietly`).
fn print_out(text: std::fmt::Arguments<'_>) -> Result<(), Exit> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Exit::Ok),
        Err(e) => Err(fail(Exit::Failed, &format!("cannot write to stdout: {e}"))),
    }
}

/// `println!` through [`print_out`]: returns from the command when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {
        if let Err(code) = print_out(format_args!("{}\n", format_args!($($arg)*))) {
            return code;
        }
    };
}

/// The config used when there is no `pipelines.toml` and none was named: one pipeline
/// of no stages, which converts between the formats the flags and file names ask for.
const BUILT_IN_CONFIG: &str = "[settings]\nwatch = false\n\n\
    [pipelines.convert]\n\
    description = \"built in (no pipelines.toml): converts between CSV and JSON lines\"\n";

/// Loads the config and picks the pipeline and the inputs from `pipe run`'s positional
/// arguments: the first is the pipeline when the config defines one by that name.
pub fn plan_run(
    config: Option<&Path>,
    args: &[String],
) -> Result<(PipelinePlan, Vec<String>), Box<dyn std::error::Error>> {
    let path = config_path(config);
    let cfg = match PipelinesConfig::load(&path) {
        Ok(cfg) => cfg,
        // No config named and none here: the built-in one, so that a plain conversion
        // works outside a checkout (daily.rs: `with_no_config_file_run_converts`). A
        // config the user named (-c, $PIPE_CONFIG) must exist.
        Err(crate::config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && config.is_none()
                && std::env::var_os("PIPE_CONFIG").is_none_or(|v| v.is_empty()) =>
        {
            tracing::debug!(
                "no {}: using the built-in `convert` pipeline",
                path.display()
            );
            PipelinesConfig::parse(&path, BUILT_IN_CONFIG)?
        }
        Err(e) => return Err(e.into()),
    };
    let (name, files) = match args.first() {
        Some(first) if cfg.pipelines.contains_key(first) => (first.clone(), args[1..].to_vec()),
        Some(first) if looks_like_a_pipeline_name(first) => {
            return Err(unknown_pipeline(&path, first, cfg.pipelines.keys()).into())
        }
        _ => (cfg.select(&path, None)?, args.to_vec()),
    };
    Ok((cfg.plan(&path, &name)?, files))
}

/// `pipe publish`: files into batch messages on a JetStream subject.
pub fn publish(args: crate::run::jetstream::publish::PublishArgs) -> Exit {
    match crate::run::jetstream::publish::run(&args) {
        Ok(p) if p.inputs > 0 => {
            tracing::info!(
                "published {} records in {} messages from {} input{} to {}",
                p.records,
                p.messages,
                p.inputs,
                if p.inputs == 1 { "" } else { "s" },
                args.to
            );
            Exit::Ok
        }
        Ok(_) => Exit::Ok,
        Err(e) if e.is_usage() => fail(Exit::Usage, &e),
        Err(e) => fail(Exit::Failed, &e),
    }
}

/// Whether `word`, which names no pipeline, was meant as one: it is no file, no `-`, and
/// has neither a path separator nor an extension, so "cannot open input" would mislead
/// (daily.rs: `a_mistyped_pipeline_name_names_the_closest_one`).
fn looks_like_a_pipeline_name(word: &str) -> bool {
    word != "-"
        && !Path::new(word).exists()
        && !word.contains(std::path::MAIN_SEPARATOR)
        && !word.contains('/')
        && !word.contains('.')
}

/// "no pipeline `x` in FILE; it has: ...", with the closest name when one is close.
fn unknown_pipeline<'a>(
    config: &Path,
    word: &str,
    names: impl Iterator<Item = &'a String>,
) -> String {
    let names: Vec<&String> = names.collect();
    let closest = names
        .iter()
        .map(|n| (edit_distance(word, n), *n))
        .min()
        .filter(|(d, n)| *d <= n.len().max(word.len()) / 2)
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    format!(
        "no pipeline `{word}` in {}; it has: {}{closest}. To read a file by that name, \
         write it as ./{word}",
        config.display(),
        list.join(", ")
    )
}

/// Levenshtein distance, for suggesting the closest pipeline name.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `pipe check`: loads every stage of the pipeline with its config.
pub fn check(args: CheckArgs) -> Exit {
    let path = config_path(args.config.as_deref());
    let plan = PipelinesConfig::load(&path).and_then(|cfg| {
        let name = cfg.select(&path, args.pipeline.as_deref())?;
        cfg.plan(&path, &name)
    });
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return fail(Exit::Failed, &e),
    };
    // What `pipe run` refuses must not pass the check (faults.rs:
    // pipe_check_reports_a_dead_letter_policy_without_a_file).
    if plan.needs_dead_letter() && plan.dead_letter.is_none() {
        return fail(
            Exit::Failed,
            &format!(
                "pipeline `{}` sends records to the dead letter, but no file is set: add \
                 `dead_letter = \"rejects.jsonl\"` to the pipeline or pass --dead-letter FILE \
                 to `pipe run`",
                plan.name
            ),
        );
    }
    let setups = match crate::run::prepare(&plan.stages, crate::run::log_stderr) {
        Ok(s) => s,
        Err(e) => return fail(Exit::Failed, &e),
    };
    // What `pipe run` refuses must not pass the check (jetstream.rs:
    // bad_urls_and_missing_streams_are_named).
    for s in &setups {
        if let Err(e) =
            crate::run::jetstream::check_stateful(&plan, &s.spec.name, s.plugin.manifest.stateful)
        {
            return fail(Exit::Failed, &e);
        }
    }
    outln!(
        "pipeline `{}`{}: {} stage{}, ok",
        plan.name,
        plan.description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        setups.len(),
        if setups.len() == 1 { "" } else { "s" }
    );
    for s in &setups {
        outln!(
            "  {:<16} {:<10} {:<8} {} worker{}  {}",
            s.spec.name,
            s.plugin.manifest.name,
            s.plugin.manifest.version,
            s.instances.len(),
            if s.instances.len() == 1 { " " } else { "s" },
            s.plugin.path.display()
        );
    }
    Exit::Ok
}

/// `pipe stages`: every plugin file in the search directories, loaded and checked.
pub fn stages(args: StagesArgs) -> Exit {
    // A directory the user named must exist: listing nothing for a typo would read as
    // "no plugins there" (loading.rs: `pipe_stages_with_a_missing_dir_is_an_error`).
    for d in &args.dirs {
        if !d.is_dir() {
            return fail(Exit::Usage, &format!("{}: no such directory", d.display()));
        }
    }
    let mut dirs: Vec<PathBuf> = args.dirs.clone();
    let path = config_path(args.config.as_deref());
    if let Ok(cfg) = PipelinesConfig::load(&path) {
        if let Some(d) = &cfg.settings.plugin_dir {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            dirs.push(base.join(d));
        }
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut found = 0;
    let mut broken = 0;
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    for dir in dirs {
        let Ok(canon) = dir.canonicalize() else {
            continue;
        };
        if !seen.insert(canon.clone()) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let Some(fname) = f.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = fname.strip_suffix(DLL_SUFFIX) else {
                continue;
            };
            let name = stem.strip_prefix(DLL_PREFIX).unwrap_or(stem);
            found += 1;
            match plugin::load(&plugin::file_spec(name, &f)) {
                Ok(p) => outln!(
                    "{:<12} {:<8} ok   {}  {}",
                    p.manifest.name,
                    p.manifest.version,
                    f.display(),
                    p.manifest.description
                ),
                Err(e) => {
                    broken += 1;
                    outln!("{name:<12} {:<8} FAIL {}", "?", e);
                }
            }
        }
    }
    if found == 0 {
        eprintln!(
            "pipe: no plugins found; build them with `cargo build --release` or set \
             settings.plugin_dir"
        );
        return Exit::Failed;
    }
    let _ = plugin::libraries_mapped();
    if broken > 0 {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

/// `pipe bench`.
pub fn bench(args: BenchArgs) -> Exit {
    let (plan, files) = match plan_run(args.config.as_deref(), &args.args) {
        Ok(p) => p,
        Err(e) => return fail(Exit::Usage, &e),
    };
    let opts = tools::bench::BenchOptions {
        files: files.iter().map(PathBuf::from).collect(),
        records: args.records,
        runs: args.runs,
        baseline: args.baseline,
        workers: args.workers,
    };
    match tools::bench::bench(plan, opts) {
        Ok(r) => {
            if args.json {
                outln!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                outln!("{}", r.table().trim_end());
            }
            Exit::Ok
        }
        Err(e) => fail(Exit::Failed, &e),
    }
}

/// `pipe generate`.
pub fn generate(args: GenerateArgs) -> Exit {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = match args.kind {
        GenerateKind::OrdersCsv => tools::generate::orders_csv(&mut out, args.records, args.seed),
        GenerateKind::OrdersJsonl => {
            tools::generate::orders_jsonl(&mut out, args.records, args.seed)
        }
        GenerateKind::EventsJsonl => {
            tools::generate::events_jsonl(&mut out, args.records, args.seed)
        }
    };
    match r {
        Ok(()) => Exit::Ok,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => fail(Exit::Failed, &e),
    }
}

/// `pipe new`.
pub fn new_stage(args: NewArgs) -> Exit {
    match tools::scaffold::new_stage(&args.root, &args.name, args.wasm) {
        Ok(dir) if args.wasm => {
            println!(
                "created {} (package stage-{}), registered in the workspace.\n\
                 next: cargo build --target wasm32-unknown-unknown --release -p stage-{}\n\
                 then: path = \"target/wasm32-unknown-unknown/release/{}.wasm\" in its stage table\n\
                 test it: cargo test -p stage-{}",
                dir.display(),
                args.name,
                args.name,
                args.name,
                args.name
            );
            Exit::Ok
        }
        Ok(dir) => {
            println!(
                "created {} (package stage-{}), registered in the workspace.\n\
                 next: cargo build --release && pipe stages\n\
                 test it: cargo test -p stage-{}",
                dir.display(),
                args.name,
                args.name
            );
            Exit::Ok
        }
        Err(e) => fail(Exit::Usage, &e),
    }
}

/// `pipe test`.
pub fn test(args: TestArgs) -> Exit {
    let config = config_path(args.config.as_deref());
    match tools::testfile::run_files(&config, &args.files) {
        Ok(s) if s.failed == 0 => Exit::Ok,
        Ok(_) => Exit::Failed,
        Err(e) => fail(Exit::Usage, &e),
    }
}

/// `pipe completions SHELL`: generated from the clap definition.
pub fn completions(args: CompletionsArgs) -> Exit {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "pipe", &mut std::io::stdout());
    Exit::Ok
}

/// `pipe man`: the man page, generated from the clap definition: the top level as clap_mangen
/// renders it, then one section per subcommand with its full `--help` (usage, every
/// option, examples), so the page covers everything `pipe SUB --help` would say.
pub fn man() -> Exit {
    use clap::CommandFactory;
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd.clone()).render(&mut page) {
        return fail(Exit::Failed, &e);
    }
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("pipe {}", sub.get_name());
        let help = sub.clone().bin_name(&name).render_long_help().to_string();
        page.extend_from_slice(format!(".SH \"{}\"\n.nf\n", name.to_uppercase()).as_bytes());
        for line in help.lines() {
            page.extend_from_slice(roff_line(line).as_bytes());
            page.push(b'\n');
        }
        page.extend_from_slice(b".fi\n");
    }
    match print_out(format_args!("{}", String::from_utf8_lossy(&page))) {
        Ok(()) => Exit::Ok,
        Err(code) => code,
    }
}

/// One line of preformatted text as roff: backslashes escaped, and a leading `.` or `'`
/// (which roff would read as a request) made literal.
fn roff_line(line: &str) -> String {
    let line = line.replace('\\', "\\e");
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}
