//! The feeder thread: numbers the stream, carries out reload commands as in-band
//! markers, and stops reading on a signal.
//!
//! It is the only writer of sequence numbers, so batches and markers are ordered by
//! construction. At the end it checks how the reader ended (a reader that died is an
//! error of the run, never a quiet end of input), drops the chain's head and waits for
//! every stage to end.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use pipe_sdk::Batch;

use super::chain::{Context, RunningChain, StageSetup};
use super::error::RunError;
use super::markers::{self, Handover, Msg, RetireOrder, SwapOrder};
use super::threads::{self, Handle};

/// Requests from the reload coordinator to the feeder.
pub enum Command {
    /// Inject a swap marker for a stage.
    Swap {
        /// The stage's name.
        stage: String,
        /// The new version.
        order: Arc<SwapOrder>,
    },
    /// Drain the chain and replace it.
    Rebuild {
        /// The new chain's stages, loaded and instantiated.
        stages: Vec<StageSetup>,
        /// Told once the new chain runs.
        done: Sender<Rebuilt>,
    },
}

/// A chain rebuild, done.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The new chain's stage names, in order.
    pub names: Vec<String>,
    /// What became of each stateful stage's state that the old chain had.
    pub states: Vec<(String, Handover)>,
}

/// What the feeder works with.
pub struct Feeder {
    /// Batches from the reader.
    pub batches: Receiver<Batch>,
    /// The reader, joined at the end of its input.
    pub reader: Handle,
    /// Reload commands.
    pub commands: Receiver<Command>,
    /// The first SIGINT/SIGTERM.
    pub signals: Receiver<i32>,
    /// The running chain.
    pub chain: RunningChain,
    /// The sink's input, for a rebuilt chain to feed.
    pub sink: Sender<Msg>,
    /// The run's shared parts.
    pub ctx: Arc<Context>,
    /// With a stream input, where each batch's message is tagged with the number given
    /// here (jetstream/source.rs).
    pub acks: Option<Arc<crate::run::jetstream::source::AckTracker>>,
}

impl Feeder {
    /// Runs until the input ends or a signal stops it, then ends the chain.
    pub fn run(self) -> Result<(), RunError> {
        let Feeder {
            batches,
            reader,
            commands,
            signals,
            mut chain,
            sink,
            ctx,
            acks,
        } = self;
        // Before the batch is sent, so that the sink always finds its tag.
        let tag = |seq: u64| {
            if let Some(a) = &acks {
                a.fed(seq);
            }
        };
        let mut seq = 0u64;
        let mut commands = Some(commands);
        let never = crossbeam_channel::never();
        let send = |chain: &RunningChain, msg: Msg| chain.head.send(msg).is_ok();
        loop {
            let cmd_rx = commands.as_ref().unwrap_or(&never);
            select! {
                recv(batches) -> b => match b {
                    Ok(batch) => {
                        let n = batch.len() as u64;
                        tag(seq);
                        if !send(&chain, Msg::Batch { seq, batch }) {
                            return chain.join(); // a stage died: its error says why
                        }
                        ctx.stats.source.read.fetch_add(n, Relaxed);
                        seq += 1;
                    }
                    Err(_) => {
                        // The reader is done or dead: only a clean end ends the stream.
                        threads::join(reader)?;
                        break;
                    }
                },
                recv(cmd_rx) -> c => match c {
                    Ok(Command::Swap { stage, order }) => {
                        if !send(&chain, Msg::Swap { seq, stage, order }) {
                            return chain.join();
                        }
                        seq += 1;
                    }
                    Ok(Command::Rebuild { stages, done }) => {
                        let retire = Arc::new(RetireOrder::default());
                        let (ack_tx, ack_rx) = bounded(1);
                        if !send(&chain, Msg::Drain { seq, retire: retire.clone(), ack: ack_tx }) {
                            return chain.join();
                        }
                        seq += 1;
                        if ack_rx.recv().is_err() {
                            return chain.join();
                        }
                        chain.join()?;
                        let (stages, states) = take_over_state(stages, &retire);
                        chain = RunningChain::spawn(stages, &ctx, seq, sink.clone())?;
                        let _ = done.send(Rebuilt { names: chain.names.clone(), states });
                    }
                    Err(_) => commands = None,
                },
                recv(signals) -> _ => {
                    // Stop reading, but pass on what the reader already has: records taken
                    // from the input are processed, not dropped. A reader blocked on a quiet
                    // input holds no records (it hands them on before it waits).
                    ctx.shutdown.stop_reading();
                    while let Ok(batch) = batches.recv_timeout(Duration::from_millis(200)) {
                        let n = batch.len() as u64;
                        tag(seq);
                        if !send(&chain, Msg::Batch { seq, batch }) {
                            return chain.join();
                        }
                        ctx.stats.source.read.fetch_add(n, Relaxed);
                        seq += 1;
                    }
                    break;
                }
            }
        }
        // End of stream (or a signal): dropping the head lets every stage finish in turn.
        chain.join()
    }
}

/// Gives each stateful stage of a new chain the state its namesake in the old chain
/// exported (the same rule as a swap: see [`Handover`]).
fn take_over_state(
    mut stages: Vec<StageSetup>,
    retire: &RetireOrder,
) -> (Vec<StageSetup>, Vec<(String, Handover)>) {
    let states = retire.states.lock().map(|m| m.clone()).unwrap_or_default();
    let mut notes = Vec::new();
    for s in &mut stages {
        let Some(state) = states.get(&s.spec.name) else {
            continue;
        };
        let stateful = s.plugin.manifest.stateful;
        if let Some(inst) = s.instances.first_mut() {
            let note = markers::hand_over(Ok(Some(state.clone())), inst, stateful);
            notes.push((s.spec.name.clone(), note));
        }
    }
    (stages, notes)
}
