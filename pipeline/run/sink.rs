//! The sink, on the run's calling thread: restores order, encodes, flushes when the
//! stream goes quiet, stops the run on the first fatal error, and ticks the timeout
//! watchdog, the drain warning and the progress bar.

use std::io::{self, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, Receiver, Sender};
use pipe_sdk::codec::{self, Format};
use pipe_sdk::Batch;

use super::chain::Context;
use super::error::RunError;
use super::markers::Msg;
use super::progress::Progress;
use super::reorder::Reorder;
use super::watchdog::describe_busy;
use super::Outcome;

/// What the sink works with.
pub struct Sink<'a> {
    /// The last stage's output.
    pub rx: Receiver<Msg>,
    /// Fatal errors of any thread.
    pub fatal: &'a Receiver<RunError>,
    /// The encoded output.
    pub out: Box<dyn Write + Send>,
    /// Its format.
    pub format: Format,
    /// The run's shared parts.
    pub ctx: &'a Context,
    /// The progress bar, if shown.
    pub progress: Option<&'a Progress>,
    /// Written batches go back to the reader, so their buffers are reused.
    pub pool: Sender<Batch>,
    /// With a stream involved: writes or publishes each batch, then acks its message
    /// (jetstream/sink.rs).
    pub acking: Option<crate::run::jetstream::sink::AckingSink>,
}

impl Sink<'_> {
    /// Writes the stream until every stage has ended (`Done`) or the run must stop.
    pub fn run(self) -> Outcome {
        let Sink {
            rx,
            fatal,
            out,
            format,
            ctx,
            progress,
            pool,
            mut acking,
        } = self;
        let mut writer = codec::writer(format, out);
        let mut order: Reorder<Msg> = Reorder::new(0);
        let ticker = tick(Duration::from_millis(50));
        let mut interrupted_at: Option<Instant> = None;
        let mut warned_drain = false;
        let write_error = |e: codec::WriteError| -> Outcome {
            match e {
                codec::WriteError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    Outcome::BrokenPipe
                }
                codec::WriteError::Io(e) => Outcome::Failed(RunError::io("writing the output", e)),
                codec::WriteError::Schema { message, pos } => Outcome::Failed(RunError::Output {
                    message: if pos.line == 0 {
                        format!("{message} (a record a stage made)")
                    } else {
                        format!(
                            "{message} (the record at {}:{})",
                            ctx.dead.input_name(pos.input),
                            pos.line
                        )
                    },
                }),
            }
        };
        loop {
            select! {
                recv(rx) -> m => match m {
                    Ok(msg) => {
                        order.push(msg.seq(), msg);
                        while let Some(msg) = order.pop() {
                            match msg {
                                Msg::Batch { seq, mut batch } => {
                                    let written = match acking.as_mut() {
                                        Some(a) => a.write(seq, &batch, &mut *writer),
                                        None => writer.write_batch(&batch),
                                    };
                                    if let Err(e) = written {
                                        return write_error(e);
                                    }
                                    ctx.stats.written.fetch_add(batch.len() as u64, Relaxed);
                                    batch.clear_rows();
                                    let _ = pool.try_send(batch);
                                }
                                Msg::Swap { .. } => {}
                                Msg::Drain { ack, .. } => {
                                    let _ = ack.send(());
                                }
                            }
                        }
                        // Nothing more is waiting: hand what we have to the reader of our
                        // output now (a slow stream must not sit in a buffer).
                        if rx.is_empty() {
                            if let Err(e) = writer.flush() {
                                return write_error(codec::WriteError::Io(e));
                            }
                            if let Some(a) = acking.as_mut() {
                                a.flushed();
                            }
                        }
                    }
                    Err(_) => break,
                },
                recv(fatal) -> e => {
                    if let Ok(e) = e {
                        return Outcome::Failed(e);
                    }
                },
                recv(ticker) -> _ => {
                    if let Some(e) = ctx.watchdog.check(&ctx.dead) {
                        return Outcome::Failed(e);
                    }
                    if ctx.shutdown.signal().is_some() && !warned_drain {
                        let since = *interrupted_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(1) {
                            let busy = describe_busy(&ctx.watchdog, &ctx.dead);
                            if !busy.is_empty() {
                                warned_drain = true;
                                tracing::warn!(
                                    "draining after the signal, waiting for {busy}; send it again to stop at once (the output is then discarded)"
                                );
                            }
                        }
                    }
                    if let Some(p) = progress {
                        p.tick(&ctx.stats);
                    }
                },
            }
        }
        if let Err(e) = writer.flush() {
            return write_error(codec::WriteError::Io(e));
        }
        if let Some(a) = acking {
            // Acks what was written, waits for the output stream, returns the rest.
            tracing::info!("{}", a.finish());
        }
        Outcome::Done
    }
}
