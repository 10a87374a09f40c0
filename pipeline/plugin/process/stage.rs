//! One instance of a process stage as the runtime sees it (a [`StageObject`]): it owns a
//! child, sends it each batch, and restarts it with back-off after a failure, until too
//! many failures in a row make the stage give up.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RNone, ROption, RResult, RSlice, RVec};
use pipe_sdk::abi::{ErrorKind, StageBox, StageError, StageObject, StageObject_TO};
use pipe_sdk::{Batch, Output};

use super::child::{Child, Reaped, StartError, Trouble};
use super::protocol::{batch_reply, encode_batch, end_rows, Message, Verdict};
use super::{failed, ProcessSpec, CLOSE_GRACE, EXIT_GRACE, MAX_CONSECUTIVE_FAILURES};

/// The wait before the first restart; it doubles with each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest wait before a restart.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Starts one child and handshakes with it: one instance of a process stage.
pub fn spawn(spec: &Arc<ProcessSpec>, config_json: &str) -> Result<StageBox, StageError> {
    if let Some(why) = spec.gave_up() {
        return Err(failed(why.to_string()));
    }
    let (child, _) = Child::start(spec, config_json).map_err(|e| match e {
        StartError::Refused(m) => StageError {
            kind: ErrorKind::Config,
            message: m.into(),
        },
        StartError::Spawn(m) | StartError::Handshake(m) => failed(m),
    })?;
    Ok(instance(spec, config_json, child))
}

/// An instance of a process stage around a started, handshaken child.
pub(super) fn instance(spec: &Arc<ProcessSpec>, config_json: &str, child: Child) -> StageBox {
    let stage = ProcessStage {
        spec: spec.clone(),
        config_json: config_json.to_string(),
        child: Some(child),
        failures: 0,
        batches: 0,
    };
    StageObject_TO::from_value(stage, abi_stable::sabi_trait::TD_Opaque)
}

/// One instance of a process stage: a child, restarted after failures.
pub(super) struct ProcessStage {
    pub(super) spec: Arc<ProcessSpec>,
    pub(super) config_json: String,
    /// `None` between a failure and the restart before the next request.
    pub(super) child: Option<Child>,
    /// Failures in a row (batches and starts).
    pub(super) failures: u32,
    /// Batches sent, to number them.
    pub(super) batches: u64,
}

impl ProcessStage {
    /// The running child, restarted (with back-off) when the last one failed.
    fn child(&mut self) -> Result<&mut Child, StageError> {
        while self.child.is_none() {
            if let Some(why) = self.spec.gave_up() {
                return Err(failed(why.to_string()));
            }
            std::thread::sleep(backoff(self.failures));
            match Child::start(&self.spec, &self.config_json) {
                Ok((child, _)) => self.child = Some(child),
                Err(StartError::Spawn(m) | StartError::Refused(m) | StartError::Handshake(m)) => {
                    self.count_failure(&format!("a new child failed to start: {m}"))?;
                }
            }
        }
        self.child
            .as_mut()
            .ok_or_else(|| failed("no child process".into()))
    }

    /// Counts one failure; `Err` once there have been too many in a row.
    fn count_failure(&mut self, what: &str) -> Result<(), StageError> {
        self.failures += 1;
        if self.failures >= MAX_CONSECUTIVE_FAILURES {
            let why = format!(
                "gave up: its child process failed {} times in a row, the last time: {what}. \
                 Run `{}` by hand to see why",
                self.failures,
                self.spec.command_line()
            );
            let why = self.spec.gave_up.get_or_init(|| why).clone();
            return Err(failed(why));
        }
        tracing::warn!(
            "stage `{}`: {what}; restarting it in {} ms (failure {} of {} in a row)",
            self.spec.stage,
            backoff(self.failures).as_millis(),
            self.failures,
            MAX_CONSECUTIVE_FAILURES
        );
        Ok(())
    }

    /// The child failed a request: kill it, count it, and say what happened.
    fn lost_child(&mut self, trouble: Trouble, during: &str) -> StageError {
        let mut child = self.child.take();
        let mut status = |grace| child.as_mut().map_or_else(Reaped::none, |c| c.reap(grace));
        let what = match trouble {
            Trouble::Closed => format!("its child process {} {during}", status(CLOSE_GRACE)),
            Trouble::Garbage(g) => {
                status(Duration::ZERO);
                format!("its child process {g} {during}; killed it")
            }
            Trouble::Timeout(t) => {
                status(Duration::ZERO);
                format!(
                    "its child process did not answer within {} ms (timeout_ms) {during}; \
                     killed it",
                    t.as_millis()
                )
            }
        };
        match self.count_failure(&what) {
            Ok(()) => failed(what),
            Err(gave_up) => gave_up,
        }
    }

    fn run_batch(&mut self, input: &Batch, out: &mut Output) -> Result<(), StageError> {
        if input.is_empty() {
            // Nothing for the child to do. The output gets no columns rather than the
            // input's: a stage that adds a field would otherwise fix a CSV header without
            // it before its first rows arrive.
            return Ok(());
        }
        let timeout = self.spec.timeout;
        self.batches += 1;
        let id = self.batches;
        let request = encode_batch(id, input)?;
        let child = self.child()?;
        let reply = match child.request(request, timeout) {
            Ok(m) => m,
            Err(t) => return Err(self.lost_child(t, "while processing this batch")),
        };
        match batch_reply(id, input, reply, out) {
            Ok(()) => {
                self.failures = 0;
                Ok(())
            }
            Err(Verdict::Refused(why)) => {
                self.failures = 0;
                Err(failed(why))
            }
            Err(Verdict::Garbage(g)) => {
                Err(self.lost_child(Trouble::Garbage(g), "in its reply to this batch"))
            }
        }
    }

    fn finish_stream(&mut self, out: &mut Output) -> Result<(), StageError> {
        let timeout = self.spec.timeout;
        let child = self.child()?;
        let reply = child.request(b"{\"end\":true}\n".to_vec(), timeout);
        let result = match reply {
            Ok(Message {
                header,
                line,
                body,
                rows,
            }) => {
                if let Some(e) = header.error {
                    Err(failed(e))
                } else if header.end != Some(true) {
                    Err(failed(format!(
                        "its child process answered `{line}` to the end of the stream; \
                         expected {{\"end\": true, \"rows\": N}} and N records"
                    )))
                } else {
                    end_rows(&body, rows, out).map_err(failed)
                }
            }
            // Exiting at the end of the stream without a word is fine: no rows to add.
            Err(Trouble::Closed) => {
                let status = self
                    .child
                    .as_mut()
                    .map_or_else(Reaped::none, |c| c.reap(EXIT_GRACE));
                if status.clean {
                    Ok(())
                } else {
                    Err(failed(format!(
                        "its child process {status} at the end of the stream"
                    )))
                }
            }
            Err(t) => return Err(self.lost_child(t, "at the end of the stream")),
        };
        if let Some(mut child) = self.child.take() {
            child.reap(EXIT_GRACE);
        }
        result
    }
}

impl StageObject for ProcessStage {
    fn process(&mut self, input: &Batch, out: &mut Output) -> RResult<(), StageError> {
        self.run_batch(input, out).into()
    }

    fn finish(&mut self, out: &mut Output) -> RResult<(), StageError> {
        self.finish_stream(out).into()
    }

    fn export_state(&self) -> RResult<ROption<RVec<u8>>, StageError> {
        // Protocol 1 has no state hand-over: a new version starts fresh.
        RResult::ROk(RNone)
    }

    fn import_state(&mut self, _state: RSlice<'_, u8>) -> RResult<(), StageError> {
        RResult::ROk(())
    }
}

pub(super) fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BACKOFF_FIRST
        .saturating_mul(1 << (failures - 1).min(16))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::super::program_file;
    use super::*;
    use pipe_sdk::host::HostOutput;
    use pipe_sdk::{Pos, Value};
    use std::time::Instant;

    fn input() -> Batch {
        let mut b = Batch::with_columns(["id", "country"]);
        for (i, c) in ["de", "??", "fr"].iter().enumerate() {
            b.start_row(Pos {
                input: 0,
                line: i as u64 + 2,
            });
            b.push_value(Value::Int(i as i64 + 1));
            b.push_str(c);
            b.end_row().unwrap();
        }
        b
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(3), Duration::from_millis(200));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }

    /// A stage that upper-cases `country` in a few lines of Python, through the real
    /// protocol.
    const UPPER: &str = r#"
import json, sys
hello = json.loads(sys.stdin.readline())
print(json.dumps({"pipe": 1, "name": "upper", "version": "0.1.0"}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("end"):
        break
    rows = [json.loads(sys.stdin.readline()) for _ in range(msg["rows"])]
    if any(r["country"] == "hang" for r in rows):
        import time; time.sleep(60)
    for r in rows:
        r["country"] = r["country"].upper()
    print(json.dumps({"batch": msg["batch"], "rows": len(rows)}))
    for r in rows:
        print(json.dumps(r))
    sys.stdout.flush()
"#;

    fn upper(timeout: Option<Duration>) -> Option<Arc<ProcessSpec>> {
        let python = program_file(&["python3".to_string()])?;
        Some(Arc::new(ProcessSpec::new(
            "upper",
            vec![
                python.to_string_lossy().into_owned(),
                "-c".into(),
                UPPER.into(),
            ],
            timeout,
        )))
    }

    #[test]
    fn a_child_processes_batches_and_a_hung_one_is_killed_at_the_timeout() {
        let Some(spec) = upper(Some(Duration::from_millis(500))) else {
            eprintln!("no python3 on PATH; skipped");
            return;
        };
        let mut stage = spawn(&spec, "{}").unwrap();
        let mut out = Output::new();
        stage.process(&input(), &mut out).into_result().unwrap();
        assert_eq!(out.batch().row(2).get_str("country"), Some("FR"));
        assert_eq!(out.batch().row(2).pos().line, 4);

        let mut hang = Batch::with_columns(["country"]);
        hang.start_row(Pos::default());
        hang.push_str("hang");
        hang.end_row().unwrap();
        let t = Instant::now();
        let e = stage.process(&hang, &mut out).into_result().unwrap_err();
        assert!(e.message.contains("did not answer within 500 ms"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // The next batch gets a new child.
        out.clear();
        stage.process(&input(), &mut out).into_result().unwrap();
        assert_eq!(out.batch().len(), 3);
        out.clear();
        stage.finish(&mut out).into_result().unwrap();
        assert!(out.batch().is_empty());
    }
}
