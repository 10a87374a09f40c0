//! Host threads that cannot die silently.
//!
//! Every thread of a run (reader, feeder, stage dispatchers and workers) is started by
//! [`spawn`]: a thread that fails to start is an error of the run (not a panic in the
//! middle of a chain rebuild), and a thread that panics reports the panic as its result.
//! Whoever joins it ([`join`]) turns that into a [`RunError::ThreadDied`] naming the
//! thread, so the run exits non-zero and its `-o` file is not committed. Before this, a
//! panicking reader looked like the end of the input and the run committed a truncated
//! file with exit 0 (faults.rs: `a_panicking_reader_fails_the_run`).

use std::any::Any;
use std::thread::JoinHandle;

use super::error::RunError;

/// A host thread whose end says how it went.
pub type Handle = JoinHandle<Result<(), RunError>>;

/// Starts `f` on a thread named `name`.
pub fn spawn<F>(name: &str, f: F) -> Result<Handle, RunError>
where
    F: FnOnce() -> Result<(), RunError> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| RunError::Spawn {
            thread: name.to_string(),
            source,
        })
}

/// Waits for `handle`: its own error, or [`RunError::ThreadDied`] when it panicked.
pub fn join(handle: Handle) -> Result<(), RunError> {
    let thread = handle
        .thread()
        .name()
        .unwrap_or("a host thread")
        .to_string();
    match handle.join() {
        Ok(r) => r,
        Err(payload) => Err(RunError::ThreadDied {
            thread,
            message: panic_message(payload.as_ref()),
        }),
    }
}

/// Joins every handle; the first error wins (all are joined either way).
pub fn join_all(handles: impl IntoIterator<Item = Handle>) -> Result<(), RunError> {
    let mut first = Ok(());
    for h in handles {
        let r = join(h);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// A test hook for the paths no input can reach: in a debug build, a host thread whose
/// name is in `PIPE_FAILPOINT` (comma-separated: `reader`, `worker`) panics where it
/// calls this. Release builds have no such hook. Used by faults.rs to prove that a dead
/// host thread fails the run.
pub fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var_os("PIPE_FAILPOINT") {
        if v.to_string_lossy().split(',').any(|f| f == name) {
            panic!("failpoint `{name}` (PIPE_FAILPOINT)");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_an_error_naming_it() {
        let h = spawn("reader", || panic!("boom")).unwrap();
        match join(h) {
            Err(RunError::ThreadDied { thread, message }) => {
                assert_eq!(thread, "reader");
                assert_eq!(message, "boom");
            }
            other => panic!("expected ThreadDied, got {other:?}"),
        }
    }

    #[test]
    fn join_all_reports_the_first_error_and_joins_the_rest() {
        let ok = spawn("a", || Ok(())).unwrap();
        let bad = spawn("b", || {
            Err(RunError::Output {
                message: "x".into(),
            })
        })
        .unwrap();
        let worse = spawn("c", || panic!("later")).unwrap();
        let e = join_all([ok, bad, worse]).unwrap_err();
        assert!(matches!(e, RunError::Output { .. }), "{e:?}");
    }
}
