//! Stopping a run: SIGINT/SIGTERM, and what a run's threads share to stop in order.
//!
//! One [`Shutdown`] per run (mini-redis style: passed to whoever must react, no
//! process-global statics), so runs in one process (`pipe test`, `pipe bench`) cannot
//! see each other's signals or files.
//!
//! - The first signal sets [`Shutdown::signal`] and tells the feeder, which stops the
//!   reader and drains what it already took: records read are processed, not dropped.
//! - A second signal means "out now": the partial `-o` file and the dead letter are
//!   dealt with and the process exits `128 + signal` at once, naming the stage that was
//!   still busy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::deadletter::DeadLetter;

/// What the threads of one run share to stop.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// `128 + N` once signal N arrived; 0 before.
    signal: AtomicI32,
    /// Set by the feeder on a signal: the reader reads no more.
    stop_reading: AtomicBool,
    /// The partial `-o` file, for a second signal to remove.
    temp_output: Mutex<Option<PathBuf>>,
}

impl Shutdown {
    /// The exit code of the signal that stopped the run (`128 + N`), if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Tells the reader to stop at its next batch.
    pub fn stop_reading(&self) {
        self.stop_reading.store(true, Relaxed);
    }

    /// Whether the reader must stop.
    pub fn reading_stopped(&self) -> bool {
        self.stop_reading.load(Relaxed)
    }

    /// Records the partial output file (`None` once it is committed or removed).
    pub fn set_temp_output(&self, path: Option<PathBuf>) {
        *self.temp_output.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    fn remove_temp_output(&self) {
        if let Some(p) = self
            .temp_output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Ends the signal listener of a run when dropped (so that runs in one process do not
/// pile up listener threads).
pub struct SignalListener(#[cfg(unix)] signal_hook::iterator::Handle);

impl Drop for SignalListener {
    fn drop(&mut self) {
        #[cfg(unix)]
        self.0.close();
    }
}

/// Listens for SIGINT/SIGTERM for one run. The first goes to `feeder`; a second one
/// removes the partial output, flushes the dead letter, says what was still `busy`, and
/// exits. `None` when signals cannot be listened to (the default handlers stay).
pub fn listen(
    shutdown: Arc<Shutdown>,
    dead: Arc<DeadLetter>,
    feeder: Sender<i32>,
    busy: impl Fn() -> String + Send + 'static,
) -> Option<SignalListener> {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).ok()?;
        let handle = signals.handle();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if shutdown.signal().is_some() {
                        let busy = busy();
                        tracing::error!(
                            "stopped at once by a second signal{}{}",
                            if busy.is_empty() { "" } else { " while " },
                            busy
                        );
                        shutdown.remove_temp_output();
                        let _ = dead.flush();
                        crate::plugin::cleanup();
                        std::process::exit(128 + sig);
                    }
                    shutdown.signal.store(128 + sig, Relaxed);
                    let _ = feeder.send(sig);
                }
            });
        if spawned.is_err() {
            handle.close();
            return None;
        }
        Some(SignalListener(handle))
    }
    #[cfg(not(unix))]
    {
        let _ = (shutdown, dead, feeder, busy);
        None
    }
}
