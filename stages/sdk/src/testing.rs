//! Run a stage in-process on CSV or JSON-lines text, through the same ABI adapter the
//! host uses (so panics come back as errors exactly as they would in `pipe run`).
//!
//! ```ignore
//! let out = pipe_sdk::testing::run_csv::<Upper>(json!({"fields": ["name"]}), "name\nann\n")?;
//! assert_eq!(out.csv(), "name\nANN\n");
//! ```

use crate::abi::StageError;
use crate::batch::Batch;
use crate::codec::{self, Format};
use crate::hostapi::HostOutput;
use crate::output::Output;
use crate::stage::{new_instance, Stage};

/// A row the stage (or the reader) rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReject {
    /// The input line of the rejected record.
    pub line: u64,
    /// The record as a JSON object's text.
    pub record: String,
    /// The reason given.
    pub reason: String,
}

/// What a stage produced for an input.
#[derive(Debug, Default)]
pub struct TestRun {
    /// The output batches, in order (the end-of-stream output last).
    pub batches: Vec<Batch>,
    /// Every rejected row, in order.
    pub rejects: Vec<TestReject>,
}

impl TestRun {
    /// The output as CSV text (header from the first batch).
    pub fn csv(&self) -> String {
        self.encode(Format::Csv)
    }

    /// The output as JSON lines.
    pub fn jsonl(&self) -> String {
        self.encode(Format::Jsonl)
    }

    /// The number of output rows.
    pub fn len(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    /// True when the stage emitted no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn encode(&self, format: Format) -> String {
        let mut buf = Vec::new();
        {
            let mut w = codec::writer(format, &mut buf);
            for b in &self.batches {
                w.write_batch(b).expect("test output fits its format");
            }
            w.flush().expect("writing to memory");
        }
        String::from_utf8(buf).expect("writers emit UTF-8")
    }
}

/// Runs stage `S` with `config` over CSV text.
pub fn run_csv<S: Stage>(config: serde_json::Value, input: &str) -> Result<TestRun, StageError> {
    run::<S>(config, Format::Csv, input, 1024)
}

/// Runs stage `S` with `config` over JSON-lines text.
pub fn run_jsonl<S: Stage>(config: serde_json::Value, input: &str) -> Result<TestRun, StageError> {
    run::<S>(config, Format::Jsonl, input, 1024)
}

/// Creates an instance of `S` from `config` as the host would (the error for a bad config).
pub fn instance<S: Stage>(config: serde_json::Value) -> Result<crate::abi::StageBox, StageError> {
    new_instance::<S>(&config.to_string()).into_result()
}

/// Runs stage `S` over `input` in batches of `batch_size`, then calls `finish`. A record
/// the reader cannot read is listed in `rejects` with a reason starting `input:`.
pub fn run<S: Stage>(
    config: serde_json::Value,
    format: Format,
    input: &str,
    batch_size: usize,
) -> Result<TestRun, StageError> {
    let mut stage = instance::<S>(config)?;
    run_instance(&mut stage, format, input, batch_size)
}

/// Runs an existing instance over `input` (for tests of state handover).
pub fn run_instance(
    stage: &mut crate::abi::StageBox,
    format: Format,
    input: &str,
    batch_size: usize,
) -> Result<TestRun, StageError> {
    let mut reader = codec::reader(format, input.as_bytes(), 0);
    let mut run = TestRun::default();
    let mut bad = Vec::new();
    let mut out = Output::new();
    loop {
        let mut batch = Batch::new();
        let more = reader
            .read_batch(&mut batch, batch_size.max(1), &mut bad)
            .expect("reading from memory");
        for b in bad.drain(..) {
            run.rejects.push(TestReject {
                line: b.pos.line,
                record: b.raw.to_string(),
                reason: format!("input: {}", b.reason),
            });
        }
        if !more {
            break;
        }
        out.clear();
        out.begin(&batch);
        stage.process(&batch, &mut out).into_result()?;
        for r in out.rejects() {
            let row = batch.row(r.row as usize);
            run.rejects.push(TestReject {
                line: row.pos().line,
                record: codec::row_to_json(row),
                reason: r.reason.to_string(),
            });
        }
        run.batches.push(out.resolve(batch));
    }
    out.clear();
    stage.finish(&mut out).into_result()?;
    if !out.batch().is_empty() {
        run.batches.push(out.take_batch());
    }
    Ok(run)
}

/// The state `stage` would hand to a new version at a hot swap (`None`: it keeps none),
/// as the host asks for it.
pub fn export_state(stage: &crate::abi::StageBox) -> Result<Option<Vec<u8>>, StageError> {
    stage
        .export_state()
        .into_result()
        .map(|s| s.into_option().map(|v| v.into_vec()))
}

/// Gives `stage` the `state` a previous version exported, as the host does at a swap.
pub fn import_state(stage: &mut crate::abi::StageBox, state: &[u8]) -> Result<(), StageError> {
    stage.import_state(state.into()).into_result()
}

/// A hot swap's hand-over, as the host does it: `old`'s exported state into `new`.
/// `Ok(false)` when `old` keeps no state.
pub fn hand_over(
    old: &crate::abi::StageBox,
    new: &mut crate::abi::StageBox,
) -> Result<bool, StageError> {
    match export_state(old)? {
        None => Ok(false),
        Some(state) => import_state(new, &state).map(|()| true),
    }
}
