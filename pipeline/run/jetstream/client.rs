//! The bridge between the synchronous host and `async-nats`: one I/O thread running a
//! current-thread tokio runtime, driven by commands and answering through crossbeam
//! channels.
//!
//! Why one thread and not a runtime for the whole program: the host's threads block on
//! crossbeam channels by design (backpressure, markers); only the broker needs async. The
//! I/O thread never blocks on the host: it sends to unbounded channels whose length is
//! bounded all the same, since it pulls only while the host holds fewer than
//! `max_in_flight` messages ([`Bridge::pull`]) and the sink takes a publish permit before
//! each publish ([`Bridge::publish`]). So the I/O thread can always take the next
//! command, acks and progress acks never wait behind data, and no cycle of full channels
//! can form between it and the sink.
//!
//! The I/O thread owns every delivered message's acker. The host names a message by the
//! bridge's id for it, and the thread keeps each one alive with progress acks while the
//! host works on it (so a slow chain does not cause a redelivery), acks it when told
//! (or when its last output message is stored), and NAKs whatever it still holds when
//! the bridge closes, so that other instances get those messages at once.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use pipe_sdk::codec::Format;
use tokio::sync::mpsc;

use super::io::IoThread;
use super::JetStreamError;
use crate::run::RunError;

/// How long connecting, and each JetStream API request, may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a pull request waits for messages on the server. Short enough that an
/// instance notices the end of work (`stop_when_empty`) and a signal quickly; long enough
/// that an idle instance costs the server a few requests a second, not a busy loop.
pub(super) const PULL_EXPIRES: Duration = Duration::from_millis(250);

/// Publishes waiting for their acknowledgement at most, per bridge: the sink blocks
/// beyond it (backpressure), well below async-nats's own limit, which would otherwise
/// make the I/O thread wait inside a command (see the module docs).
pub const PUBLISH_WINDOW: usize = 256;

/// The longest one ack, progress ack, publish or flush may wait on the connection. While
/// the server is away the client queues them and would wait for its return for ever; a
/// message whose ack is lost is simply delivered again after the ack wait.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// At close, how long a pull request still out must bring nothing before it is given up.
pub(super) const PULL_QUIET: Duration = Duration::from_millis(20);

/// How long closing waits for outstanding publish acknowledgements.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// One message delivered to the host.
pub struct Delivery {
    /// The bridge's handle for acking it.
    pub id: u64,
    /// The stream it was read from.
    pub stream: String,
    /// Its sequence number in that stream.
    pub stream_seq: u64,
    /// How many times the server has delivered it (1 the first time).
    pub delivered: i64,
    /// `Pipe-Input`: the input it came from.
    pub input: Option<String>,
    /// `Pipe-Line`: the line of its first record in that input.
    pub line: Option<u64>,
    /// `Pipe-Format`.
    pub format: Option<Format>,
    /// The body.
    pub payload: Bytes,
}

/// What the I/O thread tells the source.
pub enum Event {
    /// A message.
    Message(Delivery),
    /// Pulling failed.
    Failed(String),
}

/// A publish the sink asks for.
pub struct PublishJob {
    /// Subject.
    pub subject: String,
    /// `Nats-Msg-Id`, for the stream's duplicate window.
    pub msg_id: Option<String>,
    /// Other headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body; `None` publishes nothing but still counts towards `ack` (a batch whose
    /// records were all filtered out).
    pub payload: Option<Bytes>,
    /// The input message to ack once all its `parts` output messages are stored.
    pub ack: Option<(u64, u32)>,
}

/// What a bridge did, for the closing report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Closed {
    /// Messages acked.
    pub acked: u64,
    /// Messages NAKed (held but not finished when the bridge closed).
    pub naked: u64,
    /// Messages published and stored.
    pub published: u64,
    /// Published messages the stream dropped as duplicates (a redelivered batch).
    pub duplicates: u64,
}

pub(super) enum Command {
    OpenConsumer {
        input: crate::config::stream::JetStreamInput,
        events: Sender<Event>,
        reply: Sender<Result<(), JetStreamError>>,
    },
    CheckStream {
        stream: String,
        subject: String,
        create: bool,
        reply: Sender<Result<(), JetStreamError>>,
    },
    /// Keep up to this many messages held (0: pull no more).
    Pull(usize),
    Ack(u64),
    Nak(u64),
    Publish(PublishJob),
    Info(Sender<Result<(u64, usize), String>>),
    /// One output message of input message `id` (of `parts`) is stored.
    PartDone(u64, u32),
    /// Input messages are held by another bridge: send `PartDone` there.
    ForwardAcks(mpsc::UnboundedSender<Command>),
    Close(Sender<Closed>),
}

/// The host's handle on the I/O thread. Cloning it gives another handle on the same
/// thread; the thread ends on [`Bridge::close`] (or when every handle is gone).
#[derive(Clone)]
pub struct Bridge {
    cmd: mpsc::UnboundedSender<Command>,
    /// Messages delivered to the host and neither acked nor NAKed yet.
    held: Arc<AtomicUsize>,
    /// One slot per publish awaiting its acknowledgement.
    permits: (Sender<()>, Receiver<()>),
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    /// For messages: the server.
    pub url: String,
}

impl Bridge {
    /// Starts the I/O thread and connects to `url` (with `creds` when given). Errors name
    /// the server and what to check. `fatal` receives errors met later (a publish the
    /// stream refused, a connection lost for good).
    pub fn connect(
        url: &str,
        creds: Option<&Path>,
        fatal: Sender<RunError>,
    ) -> Result<Bridge, JetStreamError> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = bounded(1);
        let held = Arc::new(AtomicUsize::new(0));
        let permits = bounded(PUBLISH_WINDOW);
        let io = IoThread {
            url: url.to_string(),
            creds: creds.map(Path::to_path_buf),
            held: held.clone(),
            permits: permits.1.clone(),
            fatal,
        };
        let thread = std::thread::Builder::new()
            .name("nats-io".into())
            .spawn(move || io.run(cmd_rx, ready_tx))
            .map_err(|e| JetStreamError::Connect {
                url: url.to_string(),
                why: format!("cannot start its I/O thread: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Bridge {
                cmd: cmd_tx,
                held,
                permits,
                thread: Arc::new(std::sync::Mutex::new(Some(thread))),
                url: url.to_string(),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(JetStreamError::Connect {
                url: url.to_string(),
                why: "its I/O thread stopped".into(),
            }),
        }
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command, gone: impl FnOnce() -> T) -> T {
        let (tx, rx) = bounded(1);
        if self.cmd.send(make(tx)).is_err() {
            return gone();
        }
        rx.recv().unwrap_or_else(|_| gone())
    }

    /// Checks the stream and creates (or finds) the durable pull consumer of `input`;
    /// messages pulled later arrive on `events`.
    pub fn open_consumer(
        &self,
        input: &crate::config::stream::JetStreamInput,
        events: Sender<Event>,
    ) -> Result<(), JetStreamError> {
        let input = input.clone();
        self.ask(
            |reply| Command::OpenConsumer {
                input,
                events,
                reply,
            },
            || Err(self.gone()),
        )
    }

    /// Checks that `stream` exists and takes `subject`; with `create`, makes it when
    /// missing.
    pub fn check_stream(
        &self,
        stream: &str,
        subject: &str,
        create: bool,
    ) -> Result<(), JetStreamError> {
        let (stream, subject) = (stream.to_string(), subject.to_string());
        self.ask(
            |reply| Command::CheckStream {
                stream,
                subject,
                create,
                reply,
            },
            || Err(self.gone()),
        )
    }

    fn gone(&self) -> JetStreamError {
        JetStreamError::Connect {
            url: self.url.clone(),
            why: "the connection's I/O thread has stopped".into(),
        }
    }

    /// Keeps pulling while this instance holds fewer than `max_in_flight` messages
    /// (0 stops pulling). The I/O thread tops up as soon as an ack makes room: waiting
    /// for the source to notice would leave the chain idle between pulls.
    pub fn pull(&self, max_in_flight: usize) {
        let _ = self.cmd.send(Command::Pull(max_in_flight));
    }

    /// Acks message `id`: it is done.
    pub fn ack(&self, id: u64) {
        let _ = self.cmd.send(Command::Ack(id));
    }

    /// NAKs message `id`: the server redelivers it (to this or another instance).
    pub fn nak(&self, id: u64) {
        let _ = self.cmd.send(Command::Nak(id));
    }

    /// Publishes, waiting while [`PUBLISH_WINDOW`] publishes await their
    /// acknowledgement.
    pub fn publish(&self, job: PublishJob) {
        if job.payload.is_some() {
            // The I/O thread gives permits back; once it is gone nobody would, so wait
            // only while it runs.
            while self
                .permits
                .0
                .send_timeout((), Duration::from_millis(100))
                .is_err()
            {
                if self.cmd.is_closed() {
                    return;
                }
            }
        }
        let _ = self.cmd.send(Command::Publish(job));
    }

    /// Makes this (output) bridge report stored messages to `input`, the bridge that
    /// holds the input messages, when the two are connections to different servers.
    pub fn forward_acks_to(&self, input: &Bridge) {
        let _ = self.cmd.send(Command::ForwardAcks(input.cmd.clone()));
    }

    /// Messages this instance holds (delivered, neither acked nor NAKed).
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// The consumer's pending and unacknowledged message counts, across all instances.
    pub fn consumer_backlog(&self) -> Result<(u64, usize), String> {
        self.ask(Command::Info, || Err("the connection is closed".into()))
    }

    /// Waits for outstanding publishes, NAKs every message still held, flushes and
    /// stops the I/O thread. Later calls return an empty report.
    pub fn close(&self) -> Closed {
        let closed = self.ask(Command::Close, Closed::default);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        closed
    }
}

/// Whether subject filter `filter` (with `*` and `>` wildcards) takes `subject`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn subject_wildcards() {
        assert!(subject_matches("orders.>", "orders.in.eu"));
        assert!(subject_matches("orders.*", "orders.in"));
        assert!(!subject_matches("orders.*", "orders.in.eu"));
        assert!(subject_matches("orders", "orders"));
        assert!(!subject_matches("orders", "orders.in"));
        assert!(!subject_matches("orders.>", "orders"));
    }
}
