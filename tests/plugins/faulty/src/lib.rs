//! Test plugin `faulty`: injects the failures the host must survive, on cue.
//!
//! Each fault is keyed on the value of one field (config `field`, default `id`; the field's
//! text, so JSON `3` and CSV `3` both match `"3"`). Rows that no fault matches pass
//! through unchanged. Config (all optional, unknown keys refused):
//!
//! | key | effect |
//! |---|---|
//! | `panic_on = "v"` | `panic!("boom on v")` inside `process` at that row |
//! | `error_on = "v"` | `process` returns `Err("refused row v")` for the whole batch |
//! | `reject_on = "v"` | `out.reject(row, "rejected v")`; the other rows pass |
//! | `hang_on = "v"` | `process` sleeps forever at that row (for `timeout_ms`) |
//! | `abort_on = "v"` | `std::process::abort()`: kills the whole process. No in-process host survives this; it exists for future process-isolation tests |
//! | `panic_in_new = true` | `new` panics |
//! | `error_in_new = true` | `new` returns `Err("config refused")` |
//! | `panic_in_finish = true` | `finish` panics (`"boom in finish"`) |
//! | `emit_in_finish = N` | `finish` pushes `N` rows whose `field` is `finish-0` … `finish-{N-1}` |
//! | `delay_ms = N` | `process` sleeps `N` ms per batch: a slow stage, so that a test can stop or kill a run mid-stream |
//!
//! Within one row the faults are tried in the order of the table.

use std::time::Duration;

use pipe_sdk::prelude::*;

/// The stage's config. See the crate docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultyConfig {
    /// The field whose value the faults are keyed on.
    #[serde(default = "default_field")]
    pub field: String,
    /// Panic at the row with this value.
    #[serde(default)]
    pub panic_on: Option<String>,
    /// Fail the batch holding the row with this value.
    #[serde(default)]
    pub error_on: Option<String>,
    /// Reject the row with this value.
    #[serde(default)]
    pub reject_on: Option<String>,
    /// Hang forever at the row with this value.
    #[serde(default)]
    pub hang_on: Option<String>,
    /// Abort the process at the row with this value.
    #[serde(default)]
    pub abort_on: Option<String>,
    /// Panic in `new`.
    #[serde(default)]
    pub panic_in_new: bool,
    /// Refuse the config in `new`.
    #[serde(default)]
    pub error_in_new: bool,
    /// Panic in `finish`.
    #[serde(default)]
    pub panic_in_finish: bool,
    /// Rows to emit in `finish`.
    #[serde(default)]
    pub emit_in_finish: u64,
    /// Sleep this long per batch.
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_field() -> String {
    "id".to_owned()
}

/// The stage.
pub struct Faulty {
    config: FaultyConfig,
}

fn is(target: &Option<String>, value: Option<&str>) -> bool {
    matches!((target, value), (Some(t), Some(v)) if t == v)
}

impl Stage for Faulty {
    type Config = FaultyConfig;

    fn new(config: FaultyConfig) -> Result<Self, Error> {
        if config.panic_in_new {
            panic!("boom in new");
        }
        if config.error_in_new {
            return Err(Error::msg("config refused"));
        }
        Ok(Faulty { config })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        let c = &self.config;
        if c.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(c.delay_ms));
        }
        out.columns_like(input);
        for row in input.rows() {
            let value = row.get_str(&c.field);
            if is(&c.panic_on, value) {
                panic!("boom on {}", value.unwrap_or_default());
            }
            if is(&c.error_on, value) {
                return Err(Error::msg(format!(
                    "refused row {}",
                    value.unwrap_or_default()
                )));
            }
            if is(&c.reject_on, value) {
                out.reject(row, format!("rejected {}", value.unwrap_or_default()));
                continue;
            }
            if is(&c.hang_on, value) {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if is(&c.abort_on, value) {
                std::process::abort();
            }
            out.push(row);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.config.panic_in_finish {
            panic!("boom in finish");
        }
        if self.config.emit_in_finish > 0 {
            out.columns([self.config.field.as_str()]);
            for i in 0..self.config.emit_in_finish {
                out.new_row().str(&format!("finish-{i}"));
            }
        }
        Ok(())
    }
}

export_stage!(
    Faulty,
    name = "faulty",
    description = "fails, panics, rejects, hangs or aborts on cue (test plugin)",
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::abi::ErrorKind;
    use pipe_sdk::testing::{instance, run_csv, run_jsonl};
    use serde_json::json;

    const INPUT: &str = "id,name\n1,ann\n2,bob\n3,cy\n";

    #[test]
    fn rows_no_fault_matches_pass_through_unchanged() {
        let out = run_csv::<Faulty>(json!({"panic_on": "99", "error_on": "98"}), INPUT).unwrap();
        assert_eq!(out.csv(), INPUT);
        let jsonl = "{\"id\":1,\"x\":[1,2],\"y\":1.50}\n{\"id\":2,\"x\":null}\n";
        assert_eq!(
            run_jsonl::<Faulty>(json!({}), jsonl).unwrap().jsonl(),
            jsonl
        );
    }

    #[test]
    fn panic_on_is_a_panicked_error_with_message_and_location() {
        let err = run_csv::<Faulty>(json!({"panic_on": "2"}), INPUT).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panicked);
        assert!(err.message.contains("boom on 2"), "{}", err.message);
        assert!(err.message.contains("src/lib.rs:"), "{}", err.message);
    }

    #[test]
    fn faults_key_on_the_configured_field_and_on_json_numbers() {
        let err = run_csv::<Faulty>(json!({"field": "name", "panic_on": "cy"}), INPUT).unwrap_err();
        assert!(err.message.contains("boom on cy"), "{}", err.message);
        let err =
            run_jsonl::<Faulty>(json!({"error_on": "7"}), "{\"id\":6}\n{\"id\":7}\n").unwrap_err();
        assert_eq!(err.message.as_str(), "refused row 7");
    }

    #[test]
    fn error_on_fails_the_batch() {
        let err = run_csv::<Faulty>(json!({"error_on": "3"}), INPUT).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Failed);
        assert_eq!(err.message.as_str(), "refused row 3");
    }

    #[test]
    fn reject_on_rejects_one_row_and_passes_the_rest() {
        let out = run_csv::<Faulty>(json!({"reject_on": "2"}), INPUT).unwrap();
        assert_eq!(out.csv(), "id,name\n1,ann\n3,cy\n");
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].line, 3);
        assert_eq!(out.rejects[0].reason, "rejected 2");
        assert_eq!(out.rejects[0].record, "{\"id\":\"2\",\"name\":\"bob\"}");
    }

    #[test]
    fn panic_in_new_is_a_panicked_error() {
        let err = instance::<Faulty>(json!({"panic_in_new": true}))
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Panicked);
        assert!(err.message.contains("boom in new"), "{}", err.message);
        assert!(err.message.contains("src/lib.rs:"), "{}", err.message);
    }

    #[test]
    fn error_in_new_is_a_config_error() {
        let err = instance::<Faulty>(json!({"error_in_new": true}))
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert_eq!(err.message.as_str(), "config refused");
    }

    #[test]
    fn unknown_config_key_is_refused_by_name() {
        let err = instance::<Faulty>(json!({"panic_onn": "1"})).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("panic_onn"), "{}", err.message);
    }

    #[test]
    fn panic_in_finish_is_a_panicked_error() {
        let err = run_csv::<Faulty>(json!({"panic_in_finish": true}), INPUT).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panicked);
        assert!(err.message.contains("boom in finish"), "{}", err.message);
        assert!(err.message.contains("src/lib.rs:"), "{}", err.message);
    }

    #[test]
    fn emit_in_finish_appends_rows_at_the_end() {
        let out = run_csv::<Faulty>(json!({"emit_in_finish": 2}), INPUT).unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(
            out.csv(),
            "id,name\n1,ann\n2,bob\n3,cy\nfinish-0,\nfinish-1,\n"
        );
        let last = out.batches.last().unwrap();
        assert_eq!(last.row(1).pos().line, 0, "made by the stage, not read");
    }

    #[test]
    fn hang_on_never_returns() {
        let (tx, rx) = std::sync::mpsc::channel();
        // The thread is left sleeping; the test process exits without it.
        std::thread::spawn(move || {
            let r = run_csv::<Faulty>(json!({"hang_on": "1"}), INPUT);
            let _ = tx.send(r.is_ok());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    /// Runs only as the child of `abort_on_kills_the_process`.
    #[test]
    fn abort_child() {
        if std::env::var_os("FAULTY_ABORT_CHILD").is_some() {
            let _ = run_csv::<Faulty>(json!({"abort_on": "2"}), INPUT);
            unreachable!("abort_on returned");
        }
    }

    #[test]
    fn abort_on_kills_the_process() {
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args(["--exact", "tests::abort_child", "--test-threads=1"])
            .env("FAULTY_ABORT_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success());
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "{status:?}");
        }
    }
}
