//! The JetStream source: pulls messages, turns each into the batches of its body, and
//! tags every batch so that the sink can ack the message once it has written them.
//!
//! # Tags
//!
//! The host numbers batches in the feeder, and markers (swap, drain) take numbers too, so
//! the source cannot know a batch's number. It queues each batch's [`BatchTag`] in the
//! [`AckTracker`] before handing the batch on; the feeder calls [`AckTracker::fed`] with
//! the number it gives each batch, in the order it receives them, which moves the first
//! queued tag under that number; the sink takes the tag by number when it writes the
//! batch. A batch is never split or merged on its way through the chain (stages filter
//! rows; end-of-stream batches have numbers no tag has), so every tag is taken exactly
//! once, and tags whose batch was never fed (the run stopped) are left in the queue,
//! where closing the bridge NAKs their messages.
//!
//! # Positions
//!
//! A message's body is read as an input of its own, so its records come out as lines 1,
//! 2, ... of the body. The `Pipe-Input` and `Pipe-Line` headers say which input and line
//! the body's first record is, and every position is shifted to match: dead letters and
//! errors name `orders.csv:5003`, not `message 17, line 3`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pipe_sdk::codec::{self, BadRecord};
use pipe_sdk::host::HostBatch;
use pipe_sdk::Batch;

use super::client::{Bridge, Delivery, Event};
use crate::config::stream::JetStreamInput;
use crate::config::Policy;
use crate::run::deadletter::DeadLetter;
use crate::run::policy::{self, Culprit, Tally};
use crate::run::RunError;
use crate::run::RunStats;

/// With `stop_when_empty`, how long no message must arrive before the source asks the
/// server whether the work is over. While the answer is no (another instance still
/// holds messages, which come back after its ack wait if it died), the source asks
/// half as often each time, down to once every `IDLE_MAX`: the end of a job is seen
/// within milliseconds, and a long wait costs the server a few requests a second.
const IDLE_MIN: Duration = Duration::from_millis(10);
/// See [`IDLE_MIN`].
const IDLE_MAX: Duration = Duration::from_millis(500);

/// Which message a batch came from.
#[derive(Debug, Clone)]
pub struct BatchTag {
    /// The bridge's handle on the message.
    pub id: u64,
    /// Which of the message's batches this is (0 for all but the rare JSON-lines body
    /// whose key order changes mid-body).
    pub part: u32,
    /// How many batches the message gave.
    pub parts: u32,
    /// The stream it was read from.
    pub stream: Arc<str>,
    /// Its sequence number there.
    pub stream_seq: u64,
    /// The input its records came from (`Pipe-Input`).
    pub input: Arc<str>,
    /// The line of the message's first record in that input (`Pipe-Line`; 0 unknown).
    pub line: u64,
}

impl BatchTag {
    /// The output message id of this batch: the same input message and batch give the
    /// same id on every delivery, so the output stream's duplicate window drops a batch
    /// written again after a redelivery.
    pub fn msg_id(&self) -> String {
        format!("{}:{}:{}", self.stream, self.stream_seq, self.part)
    }
}

/// Tags from the source to the sink, keyed by the feeder's numbers; see the module docs.
#[derive(Default)]
pub struct AckTracker {
    queued: Mutex<VecDeque<BatchTag>>,
    numbered: Mutex<HashMap<u64, BatchTag>>,
}

impl AckTracker {
    /// The source: `tag`'s batch goes to the feeder next.
    pub fn queue(&self, tag: BatchTag) {
        lock(&self.queued).push_back(tag);
    }

    /// The source: the batch last queued could not be handed on.
    pub fn unqueue_last(&self) -> Option<BatchTag> {
        lock(&self.queued).pop_back()
    }

    /// The feeder: the next batch from the source is number `seq`. Called before the
    /// batch is sent on, so the sink always finds its tag.
    pub fn fed(&self, seq: u64) {
        if let Some(tag) = lock(&self.queued).pop_front() {
            lock(&self.numbered).insert(seq, tag);
        }
    }

    /// The sink: the tag of batch `seq`, if it came from a message.
    pub fn take(&self, seq: u64) -> Option<BatchTag> {
        lock(&self.numbered).remove(&seq)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the source thread needs.
pub struct SourceJob {
    /// The stream and consumer.
    pub input: JetStreamInput,
    /// The connection.
    pub bridge: Bridge,
    /// Messages from the connection.
    pub events: Receiver<Event>,
    /// Tags for the sink.
    pub tracker: Arc<AckTracker>,
    /// Policy for records that cannot be read.
    pub policy: Policy,
    /// Dead letters, and the table of input names.
    pub dead: Arc<DeadLetter>,
    /// Counters.
    pub stats: Arc<RunStats>,
    /// Batches out, to the feeder.
    pub tx: Sender<Batch>,
    /// Written batches back from the sink, for reuse.
    pub pool: Receiver<Batch>,
    /// True once the run is interrupted: pull no more.
    pub stop: Box<dyn Fn() -> bool + Send>,
}

impl SourceJob {
    /// Pulls and hands on messages until stopped, until the feeder is gone, or (with
    /// `stop_when_empty`) until the consumer has nothing left.
    pub fn run(self) -> Result<(), RunError> {
        let mut bad = Vec::new();
        let mut spare = Batch::default();
        let stream: Arc<str> = self.input.stream.as_str().into();
        self.bridge.pull(self.input.max_in_flight);
        let mut last_message = Instant::now();
        let mut wait = IDLE_MIN;
        let mut next_check = Instant::now();
        let result = loop {
            if (self.stop)() {
                break Ok(());
            }
            match self.events.recv_timeout(wait) {
                Ok(Event::Message(d)) => {
                    last_message = Instant::now();
                    wait = IDLE_MIN;
                    match self.hand_on(d, &stream, &mut bad, &mut spare) {
                        Ok(true) => {}
                        Ok(false) => break Ok(()), // the run is stopping
                        Err(e) => break Err(e),
                    }
                }
                Ok(Event::Failed(why)) => {
                    break Err(RunError::io(
                        format!(
                            "reading stream `{}` on {}",
                            self.input.stream, self.bridge.url
                        ),
                        std::io::Error::other(why),
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
            // Only once this instance holds nothing is the server asked.
            if self.input.stop_when_empty
                && self.bridge.held() == 0
                && last_message.elapsed() >= IDLE_MIN
                && Instant::now() >= next_check
            {
                if self.finished() {
                    break Ok(());
                }
                wait = (wait * 2).min(IDLE_MAX);
                next_check = Instant::now() + wait;
            }
        };
        self.bridge.pull(0);
        result
    }

    /// Whether the work is over: this instance holds nothing, and the consumer has no
    /// message pending and none unacknowledged (so none can come back from an instance
    /// that died: it would be unacknowledged until its ack wait passes).
    fn finished(&self) -> bool {
        if self.bridge.held() > 0 {
            return false;
        }
        match self.bridge.consumer_backlog() {
            Ok((pending, unacked)) => pending == 0 && unacked == 0,
            Err(e) => {
                tracing::debug!("consumer info: {e}");
                false
            }
        }
    }

    /// Reads one message into batches and hands them on. `Ok(false)`: the feeder is gone.
    /// `spare` is a batch kept from the last message: the reader's final call, which
    /// finds the end of the body, fills no batch, and it is reused rather than dropped
    /// (the pool of written batches would otherwise drain, one arena a message).
    fn hand_on(
        &self,
        d: Delivery,
        stream: &Arc<str>,
        bad: &mut Vec<BadRecord>,
        spare: &mut Batch,
    ) -> Result<bool, RunError> {
        let input_name = d
            .input
            .clone()
            .unwrap_or_else(|| format!("{}:{}", d.stream, d.stream_seq));
        let index = self.dead.register_input(&input_name);
        let format = d.format.unwrap_or(self.input.format);
        self.stats
            .source
            .bytes
            .fetch_add(d.payload.len() as u64, Relaxed);
        let mut reader = codec::reader(format, &d.payload[..], index);
        let mut batches: Vec<Batch> = Vec::with_capacity(1);
        loop {
            let mut batch = std::mem::take(spare);
            batch.clear();
            let more = reader
                .read_batch(&mut batch, usize::MAX, bad)
                .map_err(|e| {
                    RunError::io(
                        format!("reading message {} of stream `{}`", d.stream_seq, d.stream),
                        e,
                    )
                })?;
            if !batch.is_empty() || (batches.is_empty() && batch.width() > 0) {
                batches.push(batch);
                *spare = self.pool.try_recv().unwrap_or_default();
            } else {
                *spare = batch;
            }
            if !more {
                break;
            }
        }
        if batches.is_empty() {
            // Every message gives at least one batch, so that it is acked like the rest
            // once the sink reaches it.
            batches.push(Batch::default());
        }
        let first_in_body = batches[0]
            .rows()
            .next()
            .map(|r| r.pos().line)
            .into_iter()
            .chain(bad.iter().map(|b| b.pos.line))
            .min();
        let shift = match (d.line, first_in_body) {
            (Some(line), Some(first)) => line.saturating_sub(first),
            _ => 0,
        };
        if shift > 0 {
            for b in &mut batches {
                b.shift_lines(shift);
            }
        }
        self.stats.source.read.fetch_add(bad.len() as u64, Relaxed);
        for mut b in bad.drain(..) {
            if b.pos.line > 0 {
                b.pos.line += shift;
            }
            // Under `fail` the run stops, the message is NAKed and comes back: to the
            // next instance, which stops too. Streams want `skip` or `dead-letter`.
            let reason = match self.policy {
                Policy::Fail => format!(
                    "{} (message {} of stream `{}`, which is redelivered: set on_bad_input = \"dead-letter\" for streams)",
                    b.reason, d.stream_seq, d.stream
                ),
                _ => b.reason.clone(),
            };
            policy::apply(
                self.policy,
                Culprit::Source,
                b.pos,
                &reason,
                || b.raw.to_string(),
                &self.dead,
                Tally {
                    skipped: &self.stats.source.skipped,
                    dead_lettered: &self.stats.source.dead_lettered,
                },
            )?;
        }
        if d.delivered > 1 {
            tracing::debug!(
                "message {} of stream `{}` delivered again ({} times)",
                d.stream_seq,
                d.stream,
                d.delivered
            );
        }
        let input: Arc<str> = input_name.into();
        let parts = batches.len() as u32;
        for (part, batch) in batches.into_iter().enumerate() {
            self.tracker.queue(BatchTag {
                id: d.id,
                part: part as u32,
                parts,
                stream: stream.clone(),
                stream_seq: d.stream_seq,
                input: input.clone(),
                line: d.line.unwrap_or(0),
            });
            if self.tx.send(batch).is_err() {
                self.tracker.unqueue_last();
                self.bridge.nak(d.id);
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(id: u64) -> BatchTag {
        BatchTag {
            id,
            part: 0,
            parts: 1,
            stream: "S".into(),
            stream_seq: id + 100,
            input: "in.csv".into(),
            line: 2,
        }
    }

    #[test]
    fn tags_follow_the_feeders_numbers_and_skip_markers() {
        let t = AckTracker::default();
        t.queue(tag(1));
        t.queue(tag(2));
        t.fed(0);
        // seq 1 is a swap marker: the feeder does not call `fed` for it.
        t.fed(2);
        assert_eq!(t.take(1).map(|t| t.id), None);
        assert_eq!(t.take(2).map(|t| t.id), Some(2));
        assert_eq!(t.take(0).map(|t| t.id), Some(1));
        // An end-of-stream batch has a number no tag has.
        assert!(t.take(3).is_none());
    }

    #[test]
    fn a_batch_not_handed_on_leaves_no_tag() {
        let t = AckTracker::default();
        t.queue(tag(1));
        assert_eq!(t.unqueue_last().map(|t| t.id), Some(1));
        t.fed(0);
        assert!(t.take(0).is_none());
    }

    #[test]
    fn message_ids_are_deterministic() {
        assert_eq!(tag(1).msg_id(), "S:101:0");
    }
}
