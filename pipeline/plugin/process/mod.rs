//! Process stages (issue 6): a stage that runs as a child process, in any language,
//! speaking JSON lines over its stdin and stdout. The runtime sees an ordinary stage
//! instance ([`StageBox`]); each instance owns one child, so `workers = N` runs N children
//! and order, accounting and error policies are those of `.so` stages.
//!
//! # Protocol, version 1
//!
//! UTF-8, one JSON value per line, each line ending in `\n`. The host writes to the
//! child's stdin and reads its stdout; the child's stderr is free for messages, which the
//! host passes on to its own stderr as `[stage] line`. One request is answered before
//! the next is sent.
//!
//! ```text
//! host → child                                child → host
//! {"pipe":1,"stage":"geo","config":{...}}     {"pipe":1,"name":"geo","version":"1.0.0"}
//!                                               or {"error":"why the config is refused"}
//! {"batch":7,"rows":3}                        {"batch":7,"rows":2,"rejects":[{"row":1,"reason":"..."}]}
//! {"id":1,"country":"de"}                     {"id":1,"country":"de","region":"EU"}
//! {"id":2,"country":"??"}                     {"id":3,"country":"fr","region":"EU"}
//! {"id":3,"country":"fr"}                       or {"batch":7,"error":"why the whole batch failed"}
//! {"end":true}                                {"end":true,"rows":0}   (then exit)
//! ```
//!
//! - **Handshake.** The child answers `pipe` (the protocol version), `name` and `version`,
//!   optionally `description` and `stateful` (true: one worker, every record in order).
//! - **Batches.** A header line with the batch number and the row count, then that many
//!   records. The reply echoes `batch`, gives the row count, then the rows. `rejects`
//!   (optional) sends input rows, by 0-based index in the batch, to the stage's
//!   `on_error` policy with a reason. An `error` reply applies the policy to the whole
//!   batch; the child goes on. Output rows keep the input position (file and line, for
//!   later rejects) of the input row they come from: given by `from` (optional, one input
//!   index per output row), else, when there are as many output rows as input rows not
//!   rejected, the n-th output row comes from the n-th such input row; else unknown.
//! - **End.** `{"end":true}` at the end of the stream; the child may answer with rows (an
//!   aggregate) as for a batch, then exits. Closing stdin without `end` (a hot swap, a
//!   probe at load time, a stop) means: exit now.
//! - Unknown keys are ignored, so later versions can add optional ones.
//!
//! # Isolation
//!
//! A child that exits, crashes, is killed, writes something that is not the protocol on
//! stdout, or does not answer a batch within `timeout_ms` is killed (with its process
//! group); the batch in flight goes to the stage's `on_error` policy and a new child is
//! started before the next batch, after a back-off of 50 ms doubling up to 2 s. After
//! [`MAX_CONSECUTIVE_FAILURES`] failures of one worker's child in a row (starts included)
//! the stage gives up and the run stops with an error naming it ([`ProcessSpec::gave_up`],
//! checked by the runtime). A process stage enforces its own `timeout_ms`, so the
//! runtime's watchdog, which would end the run, leaves it alone.
//!
//! Children never outlive `pipe`: each runs in its own process group (a Ctrl-C in the
//! terminal reaches `pipe`, which drains and ends them in order) with
//! `PR_SET_PDEATHSIG = SIGKILL` on Linux; they are told to end at end of stream, stopped
//! when their instance is dropped, and killed if they do not go within a grace period.
//!
//! # Threads
//!
//! Each child has a writer thread (requests to its stdin), a reader thread (its stdout,
//! cut into replies) and a stderr thread. The worker never blocks on a pipe: a child that
//! stops reading its stdin mid-batch is caught by the timeout like any other hang.

mod child;
mod protocol;
mod stage;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pipe_sdk::abi::{ErrorKind, StageBox, StageError};

use crate::config::{StageKind, StageSpec};
use crate::plugin::{trust, Backend, LoadError, Plugin};
use child::{Child, StartError};

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Failures of one worker's child in a row (a failed batch or a failed start) after which
/// the stage gives up and the run stops. A successful reply resets the count.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// How long a child may take to start and answer the handshake (or `timeout_ms` if that
/// is longer): interpreters that import large libraries take seconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child told to stop (stdin closed) may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a child whose stdout closed may take to exit before it is killed (to tell an
/// exit status from a child that only closed its stdout).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// What it takes to start one child of a process stage, shared by all its instances.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The stage's name, for messages and the stderr prefix.
    pub stage: String,
    /// `timeout_ms`: the longest a child may take to answer one batch.
    pub timeout: Option<Duration>,
    /// Set once a worker's child failed [`MAX_CONSECUTIVE_FAILURES`] times in a row.
    pub(super) gave_up: OnceLock<String>,
    /// The program file checked before every start, if any.
    program: Option<ProgramCheck>,
}

/// A process stage's program file, checked before each child starts.
#[derive(Debug)]
struct ProgramCheck {
    path: PathBuf,
    /// Named in the command (not found on `PATH`): its ownership and mode are checked,
    /// as for a library.
    named: bool,
    /// The stage's pin.
    sha256: Option<String>,
}

impl ProgramCheck {
    /// Checks the file as it is now; returns the digest of its bytes (when it read
    /// them: a program found on `PATH` and not pinned is not read).
    fn verify(&self) -> Result<Option<String>, LoadError> {
        let bytes = if self.named {
            trust::open_verified(&self.path)?.bytes
        } else if self.sha256.is_some() {
            std::fs::read(&self.path).map_err(|source| LoadError::Io {
                path: self.path.clone(),
                source,
            })?
        } else {
            return Ok(None);
        };
        let digest = trust::sha256_hex(&bytes);
        trust::check_pin(&self.path, &digest, self.sha256.as_deref())?;
        Ok(Some(digest))
    }
}

impl ProcessSpec {
    /// A spec for stage `stage` running `argv`.
    pub fn new(stage: &str, argv: Vec<String>, timeout: Option<Duration>) -> ProcessSpec {
        ProcessSpec {
            argv,
            stage: stage.to_string(),
            timeout,
            gave_up: OnceLock::new(),
            program: None,
        }
    }

    /// Checks the program file (trust, pin) as it is now, before a child starts.
    pub(super) fn check_program(&self) -> Result<(), LoadError> {
        self.program
            .as_ref()
            .map_or(Ok(()), |p| p.verify().map(drop))
    }

    /// Why the stage gave up, once its children failed too often in a row: the runtime
    /// then stops the run with this message (`RunError::Stage`).
    pub fn gave_up(&self) -> Option<&str> {
        self.gave_up.get().map(String::as_str)
    }

    pub(super) fn handshake_timeout(&self) -> Duration {
        self.timeout
            .map_or(HANDSHAKE_TIMEOUT, |t| t.max(HANDSHAKE_TIMEOUT))
    }

    pub(super) fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// The file that stands for a process stage's program, hashed, pinned and watched for
/// hot swaps: the first argument that names an existing file (the script of an
/// interpreter: `["python3", "geo.py", "regions.csv"]` is `geo.py`), else the program
/// itself, found on `PATH` when it is a bare name.
pub fn program_file(argv: &[String]) -> Option<PathBuf> {
    if let Some(script) = argv.iter().skip(1).map(Path::new).find(|p| p.is_file()) {
        return Some(script.to_path_buf());
    }
    let program = Path::new(argv.first()?);
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Loads a process stage: finds and checks its program file (trust, `sha256` pin), starts
/// one child to read its handshake, and returns a plugin whose instances are children.
pub(crate) fn load(spec: &StageSpec) -> Result<Plugin, LoadError> {
    let StageKind::Command { argv } = &spec.kind else {
        return Err(LoadError::Manifest {
            path: PathBuf::from(spec.plugin_label()),
            message: "not a process stage".into(),
        });
    };
    let path = program_file(argv).ok_or_else(|| LoadError::Program {
        path: PathBuf::from(&argv[0]),
        message: "no such program: not a file, and not found on PATH; fix `command`".into(),
    })?;
    // The same checks as a plugin library for a file the command names; a program found
    // on PATH is the user's own choice, as in their shell (but a pin is a pin).
    let check = ProgramCheck {
        named: argv.iter().any(|a| Path::new(a) == path),
        path: path.clone(),
        sha256: spec.sha256.clone(),
    };
    let digest = check.verify()?;
    let sha256 = spec.sha256.as_ref().and(digest.clone());
    let mut process = ProcessSpec::new(&spec.name, argv.clone(), spec.timeout);
    process.program = Some(check);
    let process = Arc::new(process);
    // The handshake child tells us who it is, then serves as the first instance with
    // the same config: `workers = 2` starts two children, not three (issue 13).
    let (first, hello) = Child::start(&process, &spec.config_json).map_err(|e| match e {
        StartError::Refused(message) => LoadError::Instance {
            path: path.clone(),
            plugin: spec.name.clone(),
            message: format!("refused its config: {message}"),
        },
        StartError::Spawn(message) => LoadError::Program {
            path: path.clone(),
            message,
        },
        StartError::Handshake(message) => LoadError::Manifest {
            path: path.clone(),
            message,
        },
    })?;
    let plugin = Plugin::new(
        path,
        hello,
        sha256,
        Arc::new(Processes {
            spec: process,
            first: Mutex::new(Some((first, spec.config_json.clone()))),
        }),
    );
    Ok(match digest {
        Some(d) => plugin.with_digest(d),
        None => plugin,
    })
}

/// The backend of a process stage: each instance is a child of `spec`.
struct Processes {
    spec: Arc<ProcessSpec>,
    /// The child started at load for the handshake, with its config, until an instance
    /// with that config takes it.
    first: Mutex<Option<(Child, String)>>,
}

impl Backend for Processes {
    fn instantiate(&self, config_json: &str) -> Result<StageBox, StageError> {
        let first = match self.first.lock() {
            Ok(mut first) => first.take(),
            Err(_) => None,
        };
        match first {
            Some((child, config)) if config == config_json => {
                Ok(stage::instance(&self.spec, config_json, child))
            }
            _ => stage::spawn(&self.spec, config_json),
        }
    }

    /// A process stage enforces `timeout_ms` itself (it kills the hung child and applies
    /// the stage's policy to the batch), so the watchdog, which ends the run, leaves it
    /// alone: the two would race.
    fn watchdog_timeout(&self, _timeout: Option<Duration>) -> Option<Duration> {
        None
    }

    fn gave_up(&self) -> Option<&str> {
        self.spec.gave_up()
    }
}

pub(super) fn failed(message: String) -> StageError {
    StageError {
        kind: ErrorKind::Failed,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_file_is_the_script_or_the_program_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("geo.py");
        std::fs::write(&script, "").unwrap();
        let s = script.to_string_lossy().into_owned();
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            program_file(&argv(&["python3", "-u", &s, "x"])),
            Some(script)
        );
        let sh = program_file(&argv(&["sh", "-c", "exit 0"])).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(program_file(&argv(&["./no/such/program"])), None);
    }
}
