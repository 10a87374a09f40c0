//! The exit-code policy, decided in one place (ripgrep's `main`): every command returns
//! an [`Exit`], and only `main` turns it into a process exit code.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok, and a closed stdout (`pipe run \| head`) |
//! | 1 | the run (or check) failed |
//! | 2 | a usage or configuration error: nothing was read |
//! | 128+N | stopped by signal N after draining (130 SIGINT, 143 SIGTERM) |

use std::fmt::Display;
use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success (0).
    Ok,
    /// The work failed (1).
    Failed,
    /// Bad usage or configuration (2).
    Usage,
    /// Stopped by a signal: `128 + N`.
    Signal(i32),
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Signal(n) => u8::try_from(n).unwrap_or(1),
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Prints `error` as `pipe: error: ...` and returns `exit`.
pub fn fail(exit: Exit, error: &dyn Display) -> Exit {
    eprintln!("pipe: error: {error}");
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(
            [Exit::Ok, Exit::Failed, Exit::Usage, Exit::Signal(130)].map(Exit::code),
            [0, 1, 2, 130]
        );
    }
}
