//! `pipe test`: declarative tests of pipelines and single stages, like `vector test`.
//!
//! A test file is TOML with one or more `[[tests]]`:
//!
//! ```toml
//! [[tests]]
//! name = "paid orders over 100 get amount_cents"
//! pipeline = "default"                 # a pipeline of the config (-c), or:
//! # stage = { plugin = "filter", config = { where = "amount > 1" } }
//! input_format = "csv"                 # optional: else the pipeline's, else csv
//! output_format = "csv"                # optional: else the pipeline's, else the input's
//! input = """
//! id,amount,status
//! 1,150.00,paid
//! """
//! expected = """
//! id,amount,status,amount_cents
//! 1,150.00,paid,15000
//! """
//! [[tests.rejects]]                    # optional: rows that must be rejected
//! line = 3                             # input line (1 is the CSV header)
//! stage = "validate"                   # optional
//! reason = "expected a float"          # a part of the reason
//! ```
//!
//! Each test runs the real engine in-process with the real plugins (hot reload off), on
//! its input written to a temporary file; rejected rows are captured through the
//! dead-letter path (stages of a `stage =` test reject to it; a pipeline keeps its own
//! policies, with its dead-letter file redirected). Output is compared as text, exactly
//! (a missing final newline is forgiven); a mismatch prints a line diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pipe_sdk::codec::Format;
use serde::Deserialize;

use crate::config::RunOptions;
use crate::config::{PipelinesConfig, Policy, StageConfig};
use crate::run::{self, Outcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    pipeline: Option<String>,
    stage: Option<StageConfig>,
    input_format: Option<Format>,
    output_format: Option<Format>,
    input: String,
    expected: Option<String>,
    #[serde(default)]
    rejects: Vec<ExpectedReject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedReject {
    line: Option<u64>,
    stage: Option<String>,
    reason: Option<String>,
}

/// The outcome of all test files.
#[derive(Debug, Default)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
}

/// Runs every test in `files`, printing a line per test (and a diff for failures) to
/// stdout. `config` is the pipelines file tests with `pipeline = ...` refer to.
pub fn run_files(config: &Path, files: &[PathBuf]) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let mut pipelines: Option<PipelinesConfig> = None;
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let tf: TestFile = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", file.display(), e.message().trim()))?;
        if tf.tests.is_empty() {
            return Err(format!("{}: no [[tests]] in the file", file.display()));
        }
        for case in &tf.tests {
            let result = run_case(config, &mut pipelines, file, case);
            match result {
                Ok(()) => {
                    summary.passed += 1;
                    println!("test {} :: {} ... ok", file.display(), case.name);
                }
                Err(why) => {
                    summary.failed += 1;
                    println!("test {} :: {} ... FAILED", file.display(), case.name);
                    for line in why.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
    }
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

fn run_case(
    config: &Path,
    pipelines: &mut Option<PipelinesConfig>,
    file: &Path,
    case: &TestCase,
) -> Result<(), String> {
    let mut plan = match (&case.pipeline, &case.stage) {
        (Some(name), None) => {
            if pipelines.is_none() {
                *pipelines = Some(PipelinesConfig::load(config).map_err(|e| e.to_string())?);
            }
            let cfg = pipelines.as_ref().expect("loaded above");
            cfg.plan(config, name).map_err(|e| e.to_string())?
        }
        (None, Some(stage)) => {
            // A one-stage pipeline, resolved as if written in the config's directory.
            let mut stage = stage.clone();
            stage.on_error = Some(stage.on_error.unwrap_or(Policy::DeadLetter));
            let mut cfg = match PipelinesConfig::load(config) {
                Ok(c) => c,
                Err(_) => PipelinesConfig::parse(config, "").map_err(|e| e.to_string())?,
            };
            let mut p = crate::config::PipelineConfig::default();
            p.stages.push(stage);
            cfg.pipelines = BTreeMap::from([("test".to_string(), p)]);
            cfg.plan(config, "test").map_err(|e| e.to_string())?
        }
        _ => {
            return Err(format!(
                "{}: test `{}` needs exactly one of `pipeline` or `stage`",
                file.display(),
                case.name
            ))
        }
    };
    plan.watch = false;
    // A case tests the stages on its own records, never the pipeline's streams.
    plan.jetstream = Default::default();
    let input_format = case.input_format.or(plan.input).unwrap_or(Format::Csv);
    let output_format = case.output_format.or(plan.output).unwrap_or(input_format);
    let dir = scratch_dir()?;
    let input = dir.join(format!("input.{input_format}"));
    let output = dir.join(format!("output.{output_format}"));
    let dead = dir.join("rejects.jsonl");
    std::fs::write(&input, &case.input).map_err(|e| e.to_string())?;
    let report = run::run(
        plan,
        RunOptions {
            inputs: vec![input.display().to_string()],
            output: Some(output.clone()),
            input_format: Some(input_format),
            output_format: Some(output_format),
            watch: false,
            dead_letter: Some(dead.clone()),
            ..RunOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let result = check(case, &report.outcome, &output, &dead, &input);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn check(
    case: &TestCase,
    outcome: &Outcome,
    output: &Path,
    dead: &Path,
    input: &Path,
) -> Result<(), String> {
    if let Outcome::Failed(e) = outcome {
        return Err(format!("the run failed: {e}"));
    }
    let mut problems = Vec::new();
    if let Some(expected) = &case.expected {
        let actual = std::fs::read_to_string(output).unwrap_or_default();
        let norm = |s: &str| s.strip_suffix('\n').unwrap_or(s).to_string();
        if norm(expected) != norm(&actual) {
            problems.push(format!("output differs:\n{}", diff(expected, &actual)));
        }
    }
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(dead)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let input_name = input.display().to_string();
    for want in &case.rejects {
        let found = rejects.iter().any(|r| {
            want.line.is_none_or(|l| r["line"].as_u64() == Some(l))
                && want
                    .stage
                    .as_deref()
                    .is_none_or(|s| r["stage"].as_str() == Some(s))
                && want
                    .reason
                    .as_deref()
                    .is_none_or(|s| r["error"].as_str().is_some_and(|e| e.contains(s)))
        });
        if !found {
            problems.push(format!(
                "expected a reject{}{}{}; rejects were:\n{}",
                want.line
                    .map(|l| format!(" at line {l}"))
                    .unwrap_or_default(),
                want.stage
                    .as_deref()
                    .map(|s| format!(" by `{s}`"))
                    .unwrap_or_default(),
                want.reason
                    .as_deref()
                    .map(|s| format!(" with reason containing {s:?}"))
                    .unwrap_or_default(),
                if rejects.is_empty() {
                    "  (none)".to_string()
                } else {
                    rejects
                        .iter()
                        .map(|r| format!("  {}", r.to_string().replace(&input_name, "input")))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            ));
        }
    }
    if case.rejects.is_empty() && !rejects.is_empty() && case.expected.is_some() {
        problems.push(format!(
            "{} unexpected reject(s), the first: {}",
            rejects.len(),
            rejects[0].to_string().replace(&input_name, "input")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A line diff: `-` expected only, `+` actual only, two lines of context around each
/// change. Lines are matched by a longest common subsequence, so a line that is the same
/// on both sides is never marked as changed (pipe_test.rs:
/// `a_diff_marks_only_the_changed_lines`).
fn diff(expected: &str, actual: &str) -> String {
    /// Past this many lines a side, the quadratic table would cost more than the diff is
    /// worth: the lines are shown as all removed and all added.
    const MAX_LINES: usize = 4000;
    /// How many diff lines to print at most.
    const MAX_SHOWN: usize = 40;
    const CONTEXT: usize = 2;
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    // ops: (' ' | '-' | '+', line)
    let mut ops: Vec<(char, &str)> = Vec::new();
    if e.len() > MAX_LINES || a.len() > MAX_LINES {
        ops.extend(e.iter().map(|l| ('-', *l)));
        ops.extend(a.iter().map(|l| ('+', *l)));
    } else {
        // lcs[i][j]: common subsequence length of e[i..] and a[j..].
        let mut lcs = vec![vec![0u32; a.len() + 1]; e.len() + 1];
        for i in (0..e.len()).rev() {
            for j in (0..a.len()).rev() {
                lcs[i][j] = if e[i] == a[j] {
                    lcs[i + 1][j + 1] + 1
                } else {
                    lcs[i + 1][j].max(lcs[i][j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < e.len() || j < a.len() {
            if i < e.len() && j < a.len() && e[i] == a[j] {
                ops.push((' ', e[i]));
                i += 1;
                j += 1;
            } else if j < a.len() && (i == e.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
                ops.push(('+', a[j]));
                j += 1;
            } else {
                ops.push(('-', e[i]));
                i += 1;
            }
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + CONTEXT + 1).min(ops.len());
        ops[lo..hi].iter().any(|(op, _)| *op != ' ')
    };
    let mut out = String::from("--- expected\n+++ actual\n");
    let mut shown = 0;
    let mut skipped = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if !near_change(k) {
            skipped = true;
            continue;
        }
        if shown == MAX_SHOWN {
            out.push_str("  ...\n");
            return out;
        }
        if skipped && shown > 0 {
            out.push_str("  ...\n");
        }
        skipped = false;
        out.push_str(&format!("{op} {line}\n"));
        shown += 1;
    }
    out
}

fn scratch_dir() -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "pipe-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}
