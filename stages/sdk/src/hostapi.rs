//! What only a host does to an [`Output`]: mark the input batch, take the rows, reuse
//! the buffers. The trait lives in a private module, so a stage author cannot name it;
//! the host reaches it through [`crate::host`] (feature `host`), and the SDK's own
//! codec and test helpers use it directly.

use crate::batch::Batch;

/// Host-side operations on an [`Output`](crate::Output).
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
    #[cfg(feature = "host")]
    /// Swaps the output's rows with `batch` (the host recycles buffers this way).
    fn swap_batch(&mut self, batch: &mut Batch);
}
