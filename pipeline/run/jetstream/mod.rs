//! Scale-out through NATS JetStream: a pipeline's input and output can be streams, and
//! `pipe publish` splits files into batch messages, so that N `pipe run` instances (on
//! one machine or many) share one job through a durable consumer, at least once.
//!
//! # Layout
//! - `config`: the `input = { nats = ... }` / `output = { nats = ... }` keys, resolved
//!   into [`config::Endpoints`] on the plan; `nats://HOST:PORT/SUBJECT` addresses.
//! - `client`: the [`client::Bridge`], one I/O thread with a current-thread tokio runtime
//!   running `async-nats`, driven from the synchronous host through channels. It holds
//!   the delivered messages' ackers, sends progress acks, NAKs what is left at close.
//! - `source`: the reader thread of a stream input: message → batches, tagged in the
//!   [`source::AckTracker`] for the sink.
//! - `sink`: [`sink::AckingSink`], the sink's side: write or publish each batch, then
//!   ack the message it came from.
//! - `publish`: `pipe publish`.
//!
//! # The contract
//! One message carries one batch: a CSV body (with its header) or JSON lines, with the
//! headers below. A message is acked only when every record from it has been written by
//! the sink (or filtered, or dead-lettered); a run that fails or is killed leaves its
//! messages unacked and the server redelivers them to the other instances. Output
//! messages carry `Nats-Msg-Id = <stream>:<sequence>:<batch>` of the input message, so
//! the output stream drops a batch written again after a redelivery: end to end, every
//! record arrives once. How the host keeps a batch and its message together through the
//! chain is in `source`'s docs.
//!
//! The run calls in at five points: [`resolve_inputs`](crate::config::stream::resolve_inputs) (the run's input names, from
//! `config::RunPlan::resolve`), [`JetStreamRun::start`] (checks, connect),
//! [`JetStreamRun::take_source`] (the reader thread), the tracker in the feeder
//! ([`source::AckTracker::fed`]) and the sink ([`sink::AckingSink`]).

pub mod client;
mod io;
/// The `input`/`output` keys and addresses live in the config layer.
pub use crate::config::stream as config;
pub mod publish;
pub mod sink;
pub mod source;

use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};
use pipe_sdk::codec::Format;
use pipe_sdk::Batch;

use crate::config::PipelinePlan;
use crate::run::deadletter::DeadLetter;
use crate::run::RunError;
use crate::run::RunStats;
use crate::run::StageSetup;
use client::Bridge;
use sink::{AckingSink, StreamOutput};
use source::{AckTracker, SourceJob};

/// Header naming the input a message's records came from (a file name as published).
pub const HEADER_INPUT: &str = "Pipe-Input";
/// Header with the line, in that input, of the message's first record.
pub const HEADER_LINE: &str = "Pipe-Line";
/// Header with the body's format, `csv` or `jsonl`.
pub const HEADER_FORMAT: &str = "Pipe-Format";
/// Header of an output message: the input and line of the input message it came from
/// (for people; a worker reading the output stream names records by the output
/// message, since a filtered batch's records no longer sit on consecutive lines).
pub const HEADER_SOURCE: &str = "Pipe-Source";

/// Why a stream could not be used: what, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    /// No connection.
    #[error("cannot connect to NATS at {url}: {why}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        why: String,
    },
    /// The server answers but has no JetStream.
    #[error(
        "NATS at {url} has no JetStream: start the server with -js (nats-server -js), or \
         enable jetstream in its config"
    )]
    NoJetStream {
        /// The server.
        url: String,
    },
    /// The stream does not exist.
    #[error(
        "stream `{stream}` not found on {url}: create it, for example with \
         `pipe publish --to {url}/SUBJECT --create-stream {stream}`"
    )]
    StreamNotFound {
        /// The server.
        url: String,
        /// The stream.
        stream: String,
    },
    /// The stream exists but cannot be used as asked.
    #[error("stream `{stream}` on {url}: {why}")]
    Stream {
        /// The server.
        url: String,
        /// The stream.
        stream: String,
        /// Why.
        why: String,
    },
    /// The durable consumer could not be created or found.
    #[error("consumer `{durable}` of stream `{stream}` on {url}: {why}")]
    Consumer {
        /// The server.
        url: String,
        /// The stream.
        stream: String,
        /// The consumer.
        durable: String,
        /// Why.
        why: String,
    },
    /// A `nats://HOST:PORT/SUBJECT` address that does not parse.
    #[error("`{address}` is not a NATS subject address: {why}")]
    Address {
        /// What was given.
        address: String,
        /// Why.
        why: String,
    },
    /// The pipeline and the run's options do not fit a stream.
    #[error("{0}")]
    Refused(String),
    /// One of a pipeline's endpoints failed: which one, and why.
    #[error("pipeline `{pipeline}`, {which}: {source}")]
    At {
        /// The pipeline.
        pipeline: String,
        /// `input` or `output`.
        which: &'static str,
        /// Why.
        source: Box<JetStreamError>,
    },
}

impl JetStreamError {
    fn at(self, pipeline: &str, which: &'static str) -> JetStreamError {
        JetStreamError::At {
            pipeline: pipeline.to_string(),
            which,
            source: Box::new(self),
        }
    }
}

/// Refuses stateful stage `stage` in a pipeline that reads a stream: the consumer is
/// shared, so each instance would see only part of the keys, and a redelivered message
/// would be seen twice. Checked at start and at every reload that brings a stage in.
pub fn check_stateful(
    plan: &PipelinePlan,
    stage: &str,
    stateful: bool,
) -> Result<(), JetStreamError> {
    match &plan.jetstream.input {
        Some(input) if stateful => Err(JetStreamError::Refused(format!(
            "stage `{stage}` is stateful, and pipeline `{}` reads stream `{}` through \
             consumer `{}`, which every instance shares: each instance would see only part \
             of the keys, and a redelivered message would be seen twice. Run stateful \
             stages in one `pipe run` that reads the shared pipeline's output stream, or \
             remove the stage",
            plan.name, input.stream, input.durable
        ))),
        _ => Ok(()),
    }
}

/// A run's JetStream side between start and the threads taking their parts.
pub struct JetStreamRun {
    /// For the feeder, when the input is a stream.
    pub tracker: Option<Arc<AckTracker>>,
    source: Option<(client::Bridge, Receiver<client::Event>)>,
    sink: Option<AckingSink>,
}

impl JetStreamRun {
    /// Checks that `plan` can run against its streams, connects, and opens the consumer
    /// and the output stream. `None` when the plan names no stream. Refuses a stream
    /// input with a stateful stage (see the README, "Scaling out").
    pub fn start(
        plan: &PipelinePlan,
        setups: &[StageSetup],
        output_format: Format,
        dead: Arc<DeadLetter>,
        fatal: Sender<RunError>,
    ) -> Result<Option<JetStreamRun>, JetStreamError> {
        let ep = &plan.jetstream;
        if ep.input.is_none() && ep.output.is_none() {
            return Ok(None);
        }
        for s in setups {
            check_stateful(plan, &s.spec.name, s.plugin.manifest.stateful)?;
        }
        let mut source = None;
        let mut tracker = None;
        let mut input_bridge = None;
        if let Some(input) = &ep.input {
            let at = |e: JetStreamError| e.at(&plan.name, "input");
            let bridge =
                Bridge::connect(&input.url, input.creds.as_deref(), fatal.clone()).map_err(at)?;
            let (tx, rx) = unbounded();
            bridge.open_consumer(input, tx).map_err(at)?;
            input_bridge = Some(bridge.clone());
            source = Some((bridge, rx));
            tracker = Some(Arc::new(AckTracker::default()));
        }
        let output = match &ep.output {
            None => None,
            Some(out) => {
                let at = |e: JetStreamError| e.at(&plan.name, "output");
                let bridge = match &input_bridge {
                    Some(b)
                        if b.url == out.url
                            && ep.input.as_ref().map(|i| &i.creds) == Some(&out.creds) =>
                    {
                        b.clone()
                    }
                    _ => {
                        let b = Bridge::connect(&out.url, out.creds.as_deref(), fatal.clone())
                            .map_err(at)?;
                        if let Some(input) = &input_bridge {
                            b.forward_acks_to(input);
                        }
                        b
                    }
                };
                bridge
                    .check_stream(&out.stream, &out.subject, false)
                    .map_err(at)?;
                Some(StreamOutput {
                    bridge,
                    subject: out.subject.clone(),
                    format: output_format,
                    buf: Vec::new(),
                })
            }
        };
        let sink = AckingSink {
            tracker: tracker.clone(),
            input: input_bridge,
            output,
            dead,
            parts: Default::default(),
            to_ack: Vec::new(),
        };
        Ok(Some(JetStreamRun {
            tracker,
            source,
            sink: Some(sink),
        }))
    }

    /// The reader thread's job, when the input is a stream. `stop` says when a signal
    /// came: pull no more.
    pub fn take_source(
        &mut self,
        plan: &PipelinePlan,
        dead: Arc<DeadLetter>,
        stats: Arc<RunStats>,
        tx: Sender<Batch>,
        pool: Receiver<Batch>,
        stop: Box<dyn Fn() -> bool + Send>,
    ) -> Option<SourceJob> {
        let (bridge, events) = self.source.take()?;
        Some(SourceJob {
            input: plan.jetstream.input.clone()?,
            bridge,
            events,
            tracker: self.tracker.clone()?,
            policy: plan.on_bad_input,
            dead,
            stats,
            tx,
            pool,
            stop,
        })
    }

    /// The sink's part.
    pub fn take_sink(&mut self) -> Option<AckingSink> {
        self.sink.take()
    }
}

impl From<crate::config::stream::AddressError> for JetStreamError {
    fn from(e: crate::config::stream::AddressError) -> JetStreamError {
        JetStreamError::Address {
            address: e.address,
            why: e.why,
        }
    }
}
