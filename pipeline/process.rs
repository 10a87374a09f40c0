//! Process stages: a stage that runs as a child process speaking JSON lines over its
//! stdin/stdout (issue 6). Not built yet: loading such a stage is refused with a clear
//! message by `engine::load_stage`.

use pipe_sdk::abi::{ErrorKind, StageBox, StageError};

/// What it takes to start one child of a process stage.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The stage's name, for messages and the stderr prefix.
    pub stage: String,
}

/// Starts one child and handshakes with it.
pub fn spawn(spec: &ProcessSpec, _config_json: &str) -> Result<StageBox, StageError> {
    Err(StageError {
        kind: ErrorKind::Config,
        message: format!(
            "process stages are not supported by this build (command {:?})",
            spec.argv
        )
        .into(),
    })
}
