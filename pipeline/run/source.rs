//! The source: the reader thread parses every input in order into batches and hands
//! them to the feeder. Unreadable records go through `on_bad_input` here; readable ones
//! count as read when the feeder takes them (so records parsed but never sent after a
//! signal are not counted).

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use pipe_sdk::codec::{self, BadKind, Format};
use pipe_sdk::{Batch, Pos};

use super::deadletter::DeadLetter;
use super::error::RunError;
use super::policy::{self, Culprit, Tally};
use super::shutdown::Shutdown;
use super::stats::RunStats;
use crate::config::Policy;

/// What the reader thread needs.
pub struct Source {
    /// Inputs in order; `-` is stdin.
    pub inputs: Vec<String>,
    /// Their formats.
    pub formats: Vec<Format>,
    /// Records per batch.
    pub batch_size: usize,
    /// Longest record held in memory (`settings.max_record_bytes`).
    pub max_record_bytes: usize,
    /// `on_bad_input`.
    pub policy: Policy,
    /// Dead letters.
    pub dead: Arc<DeadLetter>,
    /// Counters.
    pub stats: Arc<RunStats>,
    /// Batches out, to the feeder.
    pub tx: Sender<Batch>,
    /// Written batches back from the sink, for reuse.
    pub pool: Receiver<Batch>,
    /// Read no more once a signal arrived.
    pub shutdown: Arc<Shutdown>,
}

impl Source {
    /// Parses every input in order into batches. Ends at the end of the last input, on
    /// a signal, or when the feeder is gone; `Err` stops the run.
    pub fn run(self) -> Result<(), RunError> {
        let mut bad = Vec::new();
        let mut bytes_before = 0u64;
        for (i, (name, &format)) in self.inputs.iter().zip(&self.formats).enumerate() {
            let input: Box<dyn Read + Send> = if name == "-" {
                Box::new(io::stdin())
            } else {
                match File::open(name) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        self.unopenable(i, name, &e)?;
                        continue;
                    }
                }
            };
            let mut reader = codec::reader(format, input, i as u32);
            reader.set_max_record_bytes(self.max_record_bytes);
            if name == "-" {
                // A pipe or a terminal may go quiet: hand on what has arrived instead of
                // waiting for a full batch.
                reader.set_ready_probe(Box::new(stdin_ready));
            }
            let mut first = true;
            let mut saw_header = false;
            let mut warned_header = false;
            let mut warned_format = false;
            loop {
                if self.shutdown.reading_stopped() {
                    return Ok(()); // interrupted: read no more
                }
                // Batches the sink has written come back with their buffers grown.
                let mut batch = self.pool.try_recv().unwrap_or_default();
                let more = reader
                    .read_batch(&mut batch, self.batch_size, &mut bad)
                    .map_err(|e| RunError::io(format!("reading {name}"), e))?;
                if first && format == Format::Csv {
                    warn_if_json_as_csv(name, &batch);
                }
                saw_header |= batch.width() > 0 || !bad.is_empty();
                self.stats.source.read.fetch_add(bad.len() as u64, Relaxed);
                self.stats
                    .source
                    .bytes
                    .store(bytes_before + reader.bytes_read(), Relaxed);
                for b in bad.drain(..) {
                    if b.pos.line == 1 && !warned_format && format == Format::Jsonl {
                        warned_format = looks_like_csv(name, b.raw.as_str().unwrap_or(""));
                    }
                    if !warned_header && b.kind == BadKind::NoHeader {
                        // Whatever the policy, a whole input lost deserves a word.
                        warned_header = true;
                        tracing::warn!(
                            "{name}: {}; none of its records can be read",
                            b.reason.trim_start_matches("no usable header: ")
                        );
                    }
                    if let Err(e) = self.bad_record(b.pos, &b.reason, || b.raw.to_string()) {
                        // The good records parsed with it were read too (issue 12: 5 good
                        // lines then a bad one under `fail` said `read 1`); they are in
                        // flight when the run stops.
                        self.stats
                            .source
                            .read
                            .fetch_add(batch.len() as u64, Relaxed);
                        return Err(e);
                    }
                }
                // An input's first batch goes on even when empty, so that a header-only
                // CSV still produces its header.
                if (!batch.is_empty() || (first && batch.width() > 0))
                    && self.tx.send(batch).is_err()
                {
                    return Ok(()); // the run is stopping
                }
                if !first {
                    super::threads::failpoint("reader");
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

    /// `on_bad_input` for one unreadable record.
    fn bad_record(
        &self,
        pos: Pos,
        reason: &str,
        raw: impl FnOnce() -> String,
    ) -> Result<(), RunError> {
        policy::apply(
            self.policy,
            Culprit::Source,
            pos,
            reason,
            raw,
            &self.dead,
            Tally {
                skipped: &self.stats.source.skipped,
                dead_lettered: &self.stats.source.dead_lettered,
            },
        )
    }

    /// An input that cannot be opened: `on_bad_input` for the whole input, with a word
    /// on stderr unless the run stops anyway.
    fn unopenable(&self, i: usize, name: &str, e: &io::Error) -> Result<(), RunError> {
        let reason = format!("cannot open input: {e}");
        match self.policy {
            Policy::Fail => {}
            Policy::Skip => crate::run::log_stderr(&format!("{name}: {reason}; skipped")),
            Policy::DeadLetter => {
                crate::run::log_stderr(&format!("{name}: {reason}; noted in the dead-letter file"))
            }
        }
        let pos = Pos {
            input: i as u32,
            line: 0,
        };
        // A whole input is not a record: it is noted but not counted as read.
        match self.policy {
            Policy::Skip => Ok(()),
            _ => policy::apply(
                self.policy,
                Culprit::Source,
                pos,
                &reason,
                || serde_json::to_string(name).unwrap_or_default(),
                &self.dead,
                Tally {
                    skipped: &std::sync::atomic::AtomicU64::new(0),
                    dead_lettered: &std::sync::atomic::AtomicU64::new(0),
                },
            ),
        }
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

/// JSON lines read as CSV give one column named after the first record's first field
/// (`{"id":1`) and no error: say so once, with the flag that fixes it (daily.rs:
/// `json_lines_into_a_csv_pipeline_warn_once`).
fn warn_if_json_as_csv(name: &str, batch: &Batch) {
    let mut columns = batch.columns();
    if let Some(first) = columns.next() {
        if first.trim_start().starts_with('{') {
            tracing::warn!(
                "{name}: read as CSV, but its header starts with `{{`: it looks like JSON \
                 lines; pass --input-format jsonl (or name the file *.jsonl)"
            );
        }
    }
}

/// The reverse mix-up: a CSV header read as JSON lines fails as "invalid JSON" at line 1;
/// say what it looks like and which flag fixes it. True when it warned.
fn looks_like_csv(name: &str, raw: &str) -> bool {
    let line = raw.trim_start();
    let csv = !line.starts_with('{') && !line.starts_with('[') && line.contains(',');
    if csv {
        tracing::warn!(
            "{name}: read as JSON lines, but its first line `{}` looks like a CSV header; \
             pass --input-format csv (or name the file *.csv)",
            line.chars().take(60).collect::<String>()
        );
    }
    csv
}
