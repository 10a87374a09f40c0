//! What happens to a record that cannot go on: one function for the source (unreadable
//! input, `on_bad_input`) and for every stage (rejects and failed batches, `on_error`),
//! so `fail`, `skip` and `dead-letter` mean the same everywhere and are counted the same
//! way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pipe_sdk::Pos;

use super::deadletter::DeadLetter;
use super::error::RunError;
use crate::config::Policy;

/// Who gave up on the record.
#[derive(Debug, Clone, Copy)]
pub enum Culprit<'a> {
    /// The reader: the record could not be parsed (or the input opened).
    Source,
    /// A stage, by name.
    Stage(&'a str),
}

/// The counters a policy adds to.
pub struct Tally<'a> {
    /// `skip`.
    pub skipped: &'a AtomicU64,
    /// `dead-letter`.
    pub dead_lettered: &'a AtomicU64,
}

/// Applies `policy` to the record at `pos`. `record` gives its JSON text for the dead
/// letter (only called under `dead-letter`). `Err` stops the run: `fail`, or a dead
/// letter that could not be written (a record is counted only once it is written).
pub fn apply(
    policy: Policy,
    culprit: Culprit<'_>,
    pos: Pos,
    reason: &str,
    record: impl FnOnce() -> String,
    dead: &DeadLetter,
    tally: Tally<'_>,
) -> Result<(), RunError> {
    match policy {
        Policy::Fail => {
            let input = dead.input_name(pos.input).to_string();
            Err(match culprit {
                Culprit::Source => RunError::BadInput {
                    input,
                    line: pos.line,
                    reason: reason.to_string(),
                },
                Culprit::Stage(stage) => RunError::Rejected {
                    stage: stage.to_string(),
                    input,
                    line: pos.line,
                    reason: reason.to_string(),
                },
            })
        }
        Policy::Skip => {
            tally.skipped.fetch_add(1, Relaxed);
            Ok(())
        }
        Policy::DeadLetter => {
            let stage = match culprit {
                Culprit::Source => "source",
                Culprit::Stage(s) => s,
            };
            // The error names the file already.
            dead.write(stage, reason, pos, &record())
                .map_err(|e| RunError::io("writing the dead-letter file", e))?;
            tally.dead_lettered.fetch_add(1, Relaxed);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        policy: Policy,
        culprit: Culprit<'_>,
        dead: &DeadLetter,
    ) -> (Result<(), RunError>, u64, u64) {
        let (s, d) = (AtomicU64::new(0), AtomicU64::new(0));
        let r = apply(
            policy,
            culprit,
            Pos { input: 0, line: 7 },
            "bad",
            || "{}".to_string(),
            dead,
            Tally {
                skipped: &s,
                dead_lettered: &d,
            },
        );
        (r, s.into_inner(), d.into_inner())
    }

    #[test]
    fn fail_names_the_culprit_input_and_line() {
        let dead = DeadLetter::new(None, vec!["in.csv".into()]);
        match run(Policy::Fail, Culprit::Stage("validate"), &dead).0 {
            Err(RunError::Rejected {
                stage, input, line, ..
            }) => {
                assert_eq!(
                    (stage.as_str(), input.as_str(), line),
                    ("validate", "in.csv", 7)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(Policy::Fail, Culprit::Source, &dead).0,
            Err(RunError::BadInput { line: 7, .. })
        ));
    }

    #[test]
    fn skip_and_dead_letter_count_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dl.jsonl");
        let dead = DeadLetter::new(Some(file.clone()), vec!["in.csv".into()]);
        assert_eq!(run(Policy::Skip, Culprit::Source, &dead).1, 1);
        let (r, _, d) = run(Policy::DeadLetter, Culprit::Stage("mask"), &dead);
        r.unwrap();
        assert_eq!(d, 1);
        dead.flush().unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("\"stage\":\"mask\""), "{text}");
        // Without a file, nothing is counted and the run stops.
        let none = DeadLetter::new(None, vec![]);
        let (r, _, d) = run(Policy::DeadLetter, Culprit::Source, &none);
        assert!(matches!(r, Err(RunError::Io { .. })));
        assert_eq!(d, 0);
    }
}
