//! The dead-letter file: one JSON object per rejected or unreadable record.
//!
//! ```json
//! {"stage":"validate","error":"field `amount`: expected a float, got `x`","input":"orders.csv","line":12,"record":{"id":"7","amount":"x"}}
//! ```
//!
//! `stage` is `source` for records the reader could not read; their `record` is the
//! raw line (JSON lines) or the array of fields (CSV). The file is created on the first
//! rejected record and appended to if it exists. Lines from stages with several workers
//! may interleave out of input order; each line is written whole.
//!
//! Each line is written through to the file (no buffer) before the record is counted as
//! dead-lettered, so the count is what the file holds and a full disk fails the run at
//! the record it hit (issue 12: a buffered file failed only at the final flush, which
//! was logged, and the run exited 0 claiming records the file did not have). Rejects
//! are rare, so one write per record costs nothing that matters.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where dead letters go. Cheap to share (`Arc`); writes are serialised.
pub struct DeadLetter {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    inputs: Vec<String>,
    /// Inputs named while the run goes on (a stream's messages name theirs), after
    /// `inputs`. Leaked so that [`DeadLetter::input_name`] can lend them like the
    /// others: one string per distinct name, a few bytes each.
    more: Mutex<Vec<&'static str>>,
}

impl DeadLetter {
    /// A dead-letter sink writing to `path` (none: `dead-letter` policies are refused at
    /// plan time). `inputs` names the run's inputs by index.
    pub fn new(path: Option<PathBuf>, inputs: Vec<String>) -> DeadLetter {
        DeadLetter {
            path,
            file: Mutex::new(None),
            inputs,
            more: Mutex::new(Vec::new()),
        }
    }

    /// The index of input `name`, added when new (for records of a stream, whose
    /// messages name the input they came from).
    pub fn register_input(&self, name: &str) -> u32 {
        if let Some(i) = self.inputs.iter().position(|n| n == name) {
            return i as u32;
        }
        let mut more = self.more.lock().unwrap_or_else(|e| e.into_inner());
        let i = match more.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                more.push(Box::leak(name.to_string().into_boxed_str()));
                more.len() - 1
            }
        };
        (self.inputs.len() + i) as u32
    }

    /// The name of input `i` (as given on the command line, `-` for stdin).
    pub fn input_name(&self, i: u32) -> &str {
        match self.inputs.get(i as usize) {
            Some(s) => s,
            None => {
                let more = self.more.lock().unwrap_or_else(|e| e.into_inner());
                more.get(i as usize - self.inputs.len())
                    .copied()
                    .unwrap_or("?")
            }
        }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// Appends one record. `record_json` must be JSON text.
    pub fn write(
        &self,
        stage: &str,
        error: &str,
        pos: pipe_sdk::Pos,
        record_json: &str,
    ) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Err(std::io::Error::other(
                "no dead-letter file configured (set `dead_letter` or --dead-letter)",
            ));
        };
        let mut line = Vec::with_capacity(record_json.len() + 128);
        line.extend_from_slice(b"{\"stage\":");
        pipe_sdk::codec::write_json_str(&mut line, stage);
        line.extend_from_slice(b",\"error\":");
        pipe_sdk::codec::write_json_str(&mut line, error);
        if pos.line > 0 {
            line.extend_from_slice(b",\"input\":");
            pipe_sdk::codec::write_json_str(&mut line, self.input_name(pos.input));
            line.extend_from_slice(format!(",\"line\":{}", pos.line).as_bytes());
        }
        line.extend_from_slice(b",\"record\":");
        line.extend_from_slice(record_json.as_bytes());
        line.extend_from_slice(b"}\n");
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("dead-letter file {}: {e}", path.display()),
                    )
                })?;
            *guard = Some(f);
        }
        let f = guard.as_mut().expect("opened above");
        let before = f.metadata().map(|m| m.len());
        f.write_all(&line)
            .inspect_err(|_| {
                // A line cut short by a full disk is taken back (best effort), so the
                // file holds exactly the records counted.
                if let Ok(len) = before {
                    let _ = f.set_len(len);
                }
            })
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("dead-letter file {}: {e}", path.display()),
                )
            })
    }

    /// Flushes what was written (a no-op kept for the end of the run: lines are written
    /// through).
    pub fn flush(&self) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}
