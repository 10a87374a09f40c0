//! The sink's side of at-least-once: write (or publish) each batch, then ack the message
//! it came from, never before.
//!
//! The host's sink calls [`AckingSink::write`] for every batch in stream order, in place
//! of its writer's `write_batch`, and [`AckingSink::flushed`] after it flushes.
//!
//! - Output to stdout (or a device): a message is acked once every batch from it has
//!   been written *and flushed* to the output, with the dead-letter file flushed first,
//!   so a record that was filtered or dead-lettered counts as done only once its trace is
//!   on disk.
//! - Output to a stream: each batch is one message with a deterministic `Nats-Msg-Id`
//!   ([`super::source::BatchTag::msg_id`]), and the input message is acked by the I/O
//!   thread when the stream has stored all of its batches. A batch whose records were
//!   all filtered out publishes nothing but counts as stored.
//!
//! A run that stops on an error acks nothing more: closing the bridge NAKs whatever it
//! still holds, and the server redelivers it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pipe_sdk::codec::{self, Format, WriteError};
use pipe_sdk::Batch;

use super::client::{Bridge, Closed, PublishJob};
use super::source::AckTracker;
use super::{HEADER_FORMAT, HEADER_SOURCE};
use crate::run::deadletter::DeadLetter;

/// Written messages are acked at the latest when this many wait for a flush: a sink that
/// never runs dry would otherwise hold them until the end (and the source, which pulls
/// only while it holds few, would stop).
const ACK_EVERY: usize = 16;

/// Where the sink's batches go when a stream is involved; see the module docs.
pub struct AckingSink {
    /// Tags of the source's batches (none when the input is files).
    pub(super) tracker: Option<Arc<AckTracker>>,
    /// The input's connection, for acks.
    pub(super) input: Option<Bridge>,
    /// The output stream, when the output is one.
    pub(super) output: Option<StreamOutput>,
    pub(super) dead: Arc<DeadLetter>,
    /// Batches written per message, until all of its parts are.
    pub(super) parts: HashMap<u64, u32>,
    /// Messages whose batches are all written, waiting for the next flush.
    pub(super) to_ack: Vec<u64>,
}

/// The output stream's side.
pub(super) struct StreamOutput {
    pub(super) bridge: Bridge,
    pub(super) subject: String,
    pub(super) format: Format,
    /// A body's buffer, reused.
    pub(super) buf: Vec<u8>,
}

/// What the JetStream side of a run did, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// The input connection's report.
    pub input: Closed,
    /// The output connection's report.
    pub output: Closed,
}

impl std::fmt::Display for Summary {
    /// `jetstream: 120 messages acked, 4 returned; 120 published, 3 dropped as duplicates`
    /// (one bridge serving both sides reports under `output`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let acked = self.input.acked + self.output.acked;
        let naked = self.input.naked + self.output.naked;
        let published = self.input.published + self.output.published;
        let duplicates = self.input.duplicates + self.output.duplicates;
        write!(
            f,
            "jetstream: {acked} messages acked, {naked} returned for redelivery; \
             {published} published, {duplicates} of them dropped as duplicates"
        )
    }
}

impl AckingSink {
    /// Writes batch `seq`: publishes it when the output is a stream, else writes it with
    /// `writer`. Acks follow the rules in the module docs.
    pub fn write(
        &mut self,
        seq: u64,
        batch: &Batch,
        writer: &mut dyn codec::Writer,
    ) -> Result<(), WriteError> {
        let tag = self.tracker.as_ref().and_then(|t| t.take(seq));
        if let Some(out) = &mut self.output {
            if batch.is_empty() && tag.is_none() {
                return Ok(()); // an end-of-stream batch with nothing in it
            }
            // The dead letters of this batch's records are on disk before its message
            // can be acked.
            self.dead.flush()?;
            let payload = if batch.is_empty() {
                None
            } else {
                out.buf.clear();
                {
                    // A writer per message: each CSV body carries its own header.
                    let mut w = codec::writer(out.format, &mut out.buf);
                    w.write_batch(batch)?;
                    w.flush()?;
                }
                Some(Bytes::copy_from_slice(&out.buf))
            };
            let mut headers = vec![(HEADER_FORMAT, out.format.to_string())];
            if let Some(t) = &tag {
                headers.push((HEADER_SOURCE, format!("{}:{}", t.input, t.line)));
            }
            out.bridge.publish(PublishJob {
                subject: out.subject.clone(),
                msg_id: tag.as_ref().map(|t| t.msg_id()),
                headers,
                payload,
                ack: tag.as_ref().map(|t| (t.id, t.parts)),
            });
            return Ok(());
        }
        writer.write_batch(batch)?;
        if let Some(t) = tag {
            let n = self.parts.entry(t.id).or_insert(0);
            *n += 1;
            if *n >= t.parts {
                self.parts.remove(&t.id);
                self.to_ack.push(t.id);
            }
            if self.to_ack.len() >= ACK_EVERY {
                writer.flush()?;
                self.flushed();
            }
        }
        Ok(())
    }

    /// The sink flushed its writer: ack every message whose batches are all written.
    pub fn flushed(&mut self) {
        if self.to_ack.is_empty() {
            return;
        }
        if let Err(e) = self.dead.flush() {
            // Not acked: the messages come back, and their dead letters with them.
            tracing::warn!("flushing the dead-letter file failed: {e}");
            return;
        }
        if let Some(b) = &self.input {
            for id in self.to_ack.drain(..) {
                b.ack(id);
            }
        }
    }

    /// The end of a run that wrote everything it took: acks what is left, waits for the
    /// output stream to store every message, and closes the connections (NAKing what
    /// was never written, as after a signal). A publish that failed meanwhile is on the
    /// run's fatal channel.
    pub fn finish(mut self) -> Summary {
        self.flushed();
        self.close()
    }

    fn close(&mut self) -> Summary {
        // The output first: its acknowledgements ack input messages.
        let output = self
            .output
            .take()
            .map(|o| o.bridge.close())
            .unwrap_or_default();
        let input = self.input.take().map(|b| b.close()).unwrap_or_default();
        Summary { input, output }
    }
}

impl Drop for AckingSink {
    /// A run that stopped early: acks nothing more; whatever is held goes back.
    fn drop(&mut self) {
        self.to_ack.clear();
        self.close();
    }
}
