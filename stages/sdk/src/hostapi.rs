//! What only a host does to an [`Output`] (mark the input batch, take the rows, reuse
//! the buffers) and to a [`Batch`] (shift its lines, for input that arrives in pieces).
//! The traits live in a private module, so a stage author cannot name them; the host
//! reaches them through [`crate::host`] (feature `host`), and the SDK's own codec and
//! test helpers use them directly.

use crate::batch::Batch;

/// Host-side operations on an [`Output`](crate::Output).
// A plugin built alone (no `host`, no `codec`) calls none of these: not dead code, just
// the host's half of the type.
#[cfg_attr(not(any(feature = "host", feature = "codec")), allow(dead_code))]
pub trait HostOutput {
    /// Marks `input` as the batch being processed, so that its rows can be passed on
    /// without a copy. The host calls it (after [`clear`](HostOutput::clear)) before each
    /// `process`; `input` must stay alive and unchanged until
    /// [`resolve`](HostOutput::resolve).
    fn begin(&mut self, input: &Batch);
    /// Takes the output for `input` (the batch given to [`begin`](HostOutput::begin)):
    /// its kept rows in place, then the rows written, with the output's columns. Leaves
    /// the output empty.
    fn resolve(&mut self, input: Batch) -> Batch;
    /// Empties the output, keeping its buffers. The host calls it before each batch.
    fn clear(&mut self);
    /// Gives the rows to the caller, leaving an empty batch behind.
    fn take_batch(&mut self) -> Batch;
    /// Swaps the output's rows with `batch` (the host recycles buffers this way).
    fn swap_batch(&mut self, batch: &mut Batch);
}

/// Host-side operations on a [`Batch`].
#[cfg_attr(not(feature = "host"), allow(dead_code))]
pub trait HostBatch {
    /// Moves every row `by` lines further down its input; rows a stage made (line 0)
    /// stay at 0. For a host whose input arrives in pieces: a message holding lines
    /// 5001-6000 of a file is read as lines 1-1000 of the message, then shifted.
    fn shift_lines(&mut self, by: u64);
}

impl HostBatch for Batch {
    fn shift_lines(&mut self, by: u64) {
        Batch::shift_lines(self, by)
    }
}
