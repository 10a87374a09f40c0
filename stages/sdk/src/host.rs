//! The host's side of the SDK (feature `host`): what `pipe` itself needs and a stage
//! author never does. Enabling it changes no behaviour; it only makes these names
//! reachable.

pub use crate::abi::{
    ErrorKind, Manifest, StageBox, StageError, StageMod, StageMod_Ref, StageObject, StageObject_TO,
    SDK_VERSION,
};
pub use crate::hostapi::{HostBatch, HostOutput};
