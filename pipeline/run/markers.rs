//! The messages that flow through the chain: batches, and the in-band markers that make
//! hot swaps and chain rebuilds exact (see the module docs of [`super::stage`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use pipe_sdk::abi::StageBox;
use pipe_sdk::Batch;

use crate::config::StageSpec;
use crate::plugin::Plugin;

/// A message on a stage channel.
pub enum Msg {
    /// Records.
    Batch {
        /// Position in the stream.
        seq: u64,
        /// The records.
        batch: Batch,
    },
    /// Switch stage `stage` to a new version at this point of the stream.
    Swap {
        /// Position in the stream.
        seq: u64,
        /// The stage's name.
        stage: String,
        /// The new version, ready to run.
        order: Arc<SwapOrder>,
    },
    /// Retire the whole chain at this point; `ack` is signalled by the sink.
    Drain {
        /// Position in the stream.
        seq: u64,
        /// Collects exported state by stage name.
        retire: Arc<RetireOrder>,
        /// Signalled when the sink reaches the marker.
        ack: Sender<()>,
    },
}

impl Msg {
    /// The message's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Msg::Batch { seq, .. } | Msg::Swap { seq, .. } | Msg::Drain { seq, .. } => *seq,
        }
    }
}

/// A new version of a stage, loaded and instantiated, waiting for its marker.
pub struct SwapOrder {
    /// The new plugin.
    pub plugin: Arc<Plugin>,
    /// The stage as configured for the new version.
    pub spec: StageSpec,
    /// One new instance per worker; each worker takes one at the marker.
    pub(super) instances: Mutex<Vec<StageBox>>,
    /// Two waits: all workers hold the marker; all have installed their instance.
    pub(super) barrier: Barrier,
    /// What became of the state (the last worker's word; a stateful stage has one).
    pub(super) handover: Mutex<Handover>,
    /// Receives the outcome once the swap is done (or refused for a worker mismatch).
    pub reply: Sender<SwapOutcome>,
}

impl SwapOrder {
    /// An order for a stage running `instances.len()` workers.
    pub fn new(
        plugin: Arc<Plugin>,
        spec: StageSpec,
        instances: Vec<StageBox>,
        reply: Sender<SwapOutcome>,
    ) -> SwapOrder {
        let n = instances.len();
        SwapOrder {
            plugin,
            spec,
            instances: Mutex::new(instances),
            barrier: Barrier::new(n + 1),
            handover: Mutex::new(Handover::NoState),
            reply,
        }
    }
}

/// What became of a swap.
#[derive(Debug, Clone)]
pub struct SwapOutcome {
    /// The stage.
    pub stage: String,
    /// Old version.
    pub from: String,
    /// New version (the one running now, unless refused).
    pub to: String,
    /// Batches that were in flight and finished on the old version.
    pub drained: u64,
    /// How long the stage's dispatcher paused.
    pub pause: Duration,
    /// What became of the stage's state.
    pub state: Handover,
    /// Why the swap was refused, if it was (the old version keeps running).
    pub refused: Option<String>,
}

/// Collects the state each stateful stage exports when the chain is retired.
#[derive(Default)]
pub struct RetireOrder {
    /// Exported state by stage name.
    pub states: Mutex<BTreeMap<String, Vec<u8>>>,
}

/// What became of a stateful stage's state when a new version took over, at a swap or
/// a chain rebuild alike.
///
/// One rule for both: the new version runs either way. State that the new version takes
/// is handed over; state it refuses (say `dedup`'s `key` was edited, so the old keys no
/// longer mean anything) or that the old version cannot export is dropped and the new
/// version starts fresh, and the report says why. Refusing the swap instead would make
/// such an edit impossible for the rest of the run, which is not what a user who edits
/// the key wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// The stage keeps no state.
    NoState,
    /// The new version took the old one's state.
    HandedOver,
    /// The new version starts with empty state; the reason says why.
    StartedFresh(String),
}

impl fmt::Display for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handover::NoState => f.write_str("no state"),
            Handover::HandedOver => f.write_str("state handed over"),
            Handover::StartedFresh(why) => write!(f, "started fresh ({why})"),
        }
    }
}

/// Moves a stateful stage's state from the old instance's `exported` state (as
/// `export_state` gave it) into `new`.
pub fn hand_over(
    exported: Result<Option<Vec<u8>>, String>,
    new: &mut StageBox,
    stateful: bool,
) -> Handover {
    if !stateful {
        return Handover::NoState;
    }
    match exported {
        Err(e) => {
            Handover::StartedFresh(format!("the old version could not export its state: {e}"))
        }
        Ok(None) => Handover::StartedFresh("the old version exports no state".into()),
        Ok(Some(state)) => match new.import_state(state.as_slice().into()).into_result() {
            Ok(()) => Handover::HandedOver,
            Err(e) => Handover::StartedFresh(format!("the new version refused the old state: {e}")),
        },
    }
}

/// The state `instance` exports, as plain bytes.
pub fn export(instance: &StageBox) -> Result<Option<Vec<u8>>, String> {
    instance
        .export_state()
        .into_result()
        .map(|s| Option::from(s).map(abi_stable::std_types::RVec::into_vec))
        .map_err(|e| e.to_string())
}
