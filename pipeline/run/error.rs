//! Errors that end a run, each saying what happened, where, and what to do. The
//! `io::Error` of a failed read or write is kept as the source, not flattened to text.

/// A run that cannot go on (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage rejected or failed on a record under `on_error = "fail"`.
    #[error(
        "stage `{stage}` failed on {}: {reason}\n\
         (on_error = \"fail\" stops the run; set on_error = \"skip\" or \"dead-letter\" on the stage to go on)",
        record_at(input, *line)
    )]
    Rejected {
        /// The stage.
        stage: String,
        /// The input file (`-` for stdin).
        input: String,
        /// The record's line; 0 for a record a stage made.
        line: u64,
        /// The stage's reason.
        reason: String,
    },
    /// A stage failed on a whole batch (an error or a panic) under `on_error = "fail"`:
    /// which of its records was at fault is not known.
    #[error(
        "stage `{stage}` failed on {}: {reason}\n\
         (on_error = \"fail\" stops the run; set on_error = \"skip\" or \"dead-letter\" on the stage to go on)",
        batch_at(*count, input, *first, *last)
    )]
    BatchFailed {
        /// The stage.
        stage: String,
        /// The input file (`-` for stdin).
        input: String,
        /// Records in the batch.
        count: usize,
        /// The line of the batch's first record.
        first: u64,
        /// The line of its last record.
        last: u64,
        /// The stage's reason.
        reason: String,
    },
    /// The source could not read a record under `on_bad_input = "fail"`.
    #[error(
        "{}{reason}\n\
         (on_bad_input = \"fail\" stops the run; set on_bad_input = \"skip\" or \"dead-letter\" in the pipeline to go on)",
        bad_input_at(input, *line)
    )]
    BadInput {
        /// The input file.
        input: String,
        /// The line; 0 when the input as a whole could not be read (not found).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A stage took longer than its `timeout_ms` on one batch.
    #[error(
        "stage `{stage}` took more than {limit_ms} ms {} and may be hung; stopping the run \
         (raise timeout_ms if the stage is just slow)",
        if *line == 0 {
            "at end of stream or on records an earlier stage made".to_string()
        } else {
            format!("on the batch starting at {input}:{line}")
        }
    )]
    Timeout {
        /// The stage.
        stage: String,
        /// Its limit.
        limit_ms: u64,
        /// Input of the batch's first record.
        input: String,
        /// Line of the batch's first record.
        line: u64,
    },
    /// A stage failed outside a batch (finish, re-creation after a panic).
    #[error("stage `{stage}` {message}")]
    Stage {
        /// The stage.
        stage: String,
        /// What failed.
        message: String,
    },
    /// Reading, writing or the dead-letter file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and on which file.
        what: String,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// Output rows do not fit the output format.
    #[error("cannot write the output: {message}")]
    Output {
        /// What does not fit, and which record.
        message: String,
    },
    /// A host thread could not be started.
    #[error("cannot start the {thread} thread: {source}")]
    Spawn {
        /// The thread's name.
        thread: String,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// A host thread panicked: a bug in `pipe`, never a normal end of the stream.
    #[error(
        "the {thread} thread died ({message}); the output is incomplete and was not \
         committed. This is a bug in pipe: please report it"
    )]
    ThreadDied {
        /// The thread's name.
        thread: String,
        /// The panic's message.
        message: String,
    },
}

impl RunError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> RunError {
        RunError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Which record a stage failed on. A record a stage made (in `finish`, say) has no input
/// line: `in.csv:0` would send the user to a line that does not exist.
fn record_at(input: &str, line: u64) -> String {
    if line == 0 {
        "a record an earlier stage made (it has no input line)".to_string()
    } else {
        format!("the record at {input}:{line}")
    }
}

/// Which batch a stage failed on; see [`record_at`].
fn batch_at(count: usize, input: &str, first: u64, last: u64) -> String {
    if first == 0 && last == 0 {
        format!("a batch of {count} records an earlier stage made (they have no input line)")
    } else {
        format!("the batch of {count} records at {input}:{first}-{last}")
    }
}

/// Where bad input is: `bad input at FILE:LINE: `, or `FILE: ` for a whole input (a file
/// that cannot be opened has no line 0 to point at).
fn bad_input_at(input: &str, line: u64) -> String {
    if line == 0 {
        format!("{input}: ")
    } else {
        format!("bad input at {input}:{line}: ")
    }
}
