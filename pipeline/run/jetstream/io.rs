//! The I/O thread of the JetStream client: a current-thread tokio runtime that owns the
//! connection, pulls messages, publishes, acks, NAKs and sends progress acks, and talks to
//! the synchronous host only through the channels of [`super::client::Bridge`].

use super::client::{
    subject_matches, Closed, Command, Delivery, Event, PublishJob, CLOSE_TIMEOUT, PUBLISH_WINDOW,
    PULL_EXPIRES, PULL_QUIET, REQUEST_TIMEOUT, SEND_TIMEOUT,
};
use super::{JetStreamError, HEADER_FORMAT, HEADER_INPUT, HEADER_LINE};
use crate::run::RunError;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use crossbeam_channel::{Receiver, Sender};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the I/O thread is started with.
pub(super) struct IoThread {
    pub(super) url: String,
    pub(super) creds: Option<PathBuf>,
    pub(super) held: Arc<AtomicUsize>,
    pub(super) permits: Receiver<()>,
    pub(super) fatal: Sender<RunError>,
}

/// A message held for the host.
struct Held {
    acker: jetstream::message::Acker,
    /// When it was delivered or last given a progress ack.
    touched: Instant,
    /// Output messages of it stored so far.
    parts_done: u32,
}

type PublishFuture =
    Pin<Box<dyn Future<Output = (Result<bool, String>, Option<(u64, u32)>, String)>>>;

/// The I/O thread's live state.
struct Io {
    client: async_nats::Client,
    js: jetstream::Context,
    url: String,
    consumer: Option<PullConsumer>,
    events: Option<Sender<Event>>,
    ack_wait: Duration,
    held_map: HashMap<u64, Held>,
    next_id: u64,
    held: Arc<AtomicUsize>,
    permits: Receiver<()>,
    fatal: Sender<RunError>,
    /// Messages to keep held (0: none; see [`Bridge::pull`]).
    pull_limit: usize,
    /// No pull request before this (after one that failed).
    pull_after: Instant,
    /// Where `PartDone`s go when another bridge holds the input messages.
    forward: Option<mpsc::UnboundedSender<Command>>,
    closed: Closed,
}

impl IoThread {
    pub(super) fn run(
        self,
        mut cmd: mpsc::UnboundedReceiver<Command>,
        ready: Sender<Result<(), JetStreamError>>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(JetStreamError::Connect {
                    url: self.url.clone(),
                    why: format!("cannot start its runtime: {e}"),
                }));
                return;
            }
        };
        rt.block_on(async move {
            let client = match connect(&self.url, self.creds.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let js = jetstream::ContextBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .max_ack_inflight(PUBLISH_WINDOW * 4)
                .build(client.clone());
            let _ = ready.send(Ok(()));
            let mut io = Io {
                client,
                js,
                url: self.url,
                consumer: None,
                events: None,
                ack_wait: Duration::from_secs(30),
                held_map: HashMap::new(),
                next_id: 0,
                held: self.held,
                permits: self.permits,
                fatal: self.fatal,
                pull_limit: 0,
                pull_after: Instant::now(),
                forward: None,
                closed: Closed::default(),
            };
            io.serve(&mut cmd).await;
        });
    }
}

async fn connect(url: &str, creds: Option<&Path>) -> Result<async_nats::Client, JetStreamError> {
    let err = |why: String| JetStreamError::Connect {
        url: url.to_string(),
        why,
    };
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a server address: {e}")))?;
    let mut opts = async_nats::ConnectOptions::new()
        .name("pipe")
        .connection_timeout(REQUEST_TIMEOUT);
    if let Some(c) = creds {
        opts = opts.credentials_file(c).await.map_err(|e| {
            err(format!(
                "cannot read the credentials file {}: {e}",
                c.display()
            ))
        })?;
    }
    opts.connect(addrs).await.map_err(|e| {
        err(format!(
            "{e}; is nats-server running there (with -js for JetStream)?"
        ))
    })
}

impl Io {
    async fn serve(&mut self, cmd: &mut mpsc::UnboundedReceiver<Command>) {
        let mut pull: Option<(jetstream::consumer::pull::Batch, usize)> = None;
        let mut publishes: FuturesUnordered<PublishFuture> = FuturesUnordered::new();
        let mut period = progress_period(self.ack_wait);
        let mut progress = tokio::time::interval(period);
        loop {
            if progress_period(self.ack_wait) != period {
                period = progress_period(self.ack_wait);
                progress = tokio::time::interval(period);
            }
            self.top_up(&mut pull).await;
            tokio::select! {
                c = cmd.recv() => {
                    let Some(c) = c else { break };
                    match c {
                        Command::Close(reply) => {
                            self.close(&mut pull, &mut publishes).await;
                            let _ = reply.send(self.closed);
                            return;
                        }
                        c => self.command(c, &mut publishes).await,
                    }
                }
                m = next_message(&mut pull), if pull.is_some() => self.delivered(m, &mut pull),
                Some(done) = publishes.next(), if !publishes.is_empty() => self.published(done).await,
                _ = progress.tick() => self.keep_alive().await,
            }
        }
        // Every handle dropped without a close: still give back what we hold.
        self.close(&mut pull, &mut publishes).await;
    }

    async fn command(&mut self, c: Command, publishes: &mut FuturesUnordered<PublishFuture>) {
        match c {
            Command::OpenConsumer {
                input,
                events,
                reply,
            } => {
                let r = self.open_consumer(&input).await;
                if r.is_ok() {
                    self.events = Some(events);
                    self.ack_wait = input.ack_wait;
                }
                let _ = reply.send(r);
            }
            Command::CheckStream {
                stream,
                subject,
                create,
                reply,
            } => {
                let _ = reply.send(self.check_stream(&stream, &subject, create).await);
            }
            // A pull request already out is read to its end: messages the server sent
            // for it are ours until acked or NAKed, and dropping the request would leave
            // them unacknowledged until the ack wait (see `close`).
            Command::Pull(limit) => self.pull_limit = limit,
            Command::Ack(id) => self.finish(id, AckKind::Ack).await,
            Command::Nak(id) => self.finish(id, AckKind::Nak(None)).await,
            Command::Publish(job) => self.publish(job, publishes).await,
            Command::Info(reply) => {
                let r = match &mut self.consumer {
                    Some(c) => c
                        .info()
                        .await
                        .map(|i| (i.num_pending, i.num_ack_pending))
                        .map_err(|e| e.to_string()),
                    None => Err("no consumer".into()),
                };
                let _ = reply.send(r);
            }
            Command::PartDone(id, parts) => self.part_done(Some((id, parts))).await,
            Command::ForwardAcks(to) => self.forward = Some(to),
            Command::Close(_) => unreachable!("handled by serve"),
        }
    }

    async fn open_consumer(
        &mut self,
        input: &crate::config::stream::JetStreamInput,
    ) -> Result<(), JetStreamError> {
        let stream = self
            .js
            .get_stream(&input.stream)
            .await
            .map_err(|e| stream_error(&self.url, &input.stream, &e.to_string()))?;
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(input.durable.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: input.ack_wait,
            filter_subject: input.subject.clone().unwrap_or_default(),
            // The per-instance bound is `max_in_flight`; the server's default of 1000
            // unacknowledged messages per consumer would cap the instances together.
            max_ack_pending: 100_000,
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&input.durable, config)
            .await
            .map_err(|e| JetStreamError::Consumer {
                url: self.url.clone(),
                stream: input.stream.clone(),
                durable: input.durable.clone(),
                why: e.to_string(),
            })?;
        self.consumer = Some(consumer);
        Ok(())
    }

    async fn check_stream(
        &mut self,
        name: &str,
        subject: &str,
        create: bool,
    ) -> Result<(), JetStreamError> {
        let found = self.js.get_stream(name).await;
        let mut stream = match found {
            Ok(s) => s,
            Err(e) if create && is_not_found(&e.to_string()) => self
                .js
                .create_stream(jetstream::stream::Config {
                    name: name.to_string(),
                    subjects: vec![subject.to_string()],
                    // Longer than the default 2 minutes: a batch redelivered after an
                    // instance died (ack wait) and worked again must still be known.
                    duplicate_window: Duration::from_secs(600),
                    ..Default::default()
                })
                .await
                .map_err(|e| JetStreamError::Stream {
                    url: self.url.clone(),
                    stream: name.to_string(),
                    why: format!("cannot create it: {e}"),
                })?,
            Err(e) => return Err(stream_error(&self.url, name, &e.to_string())),
        };
        let info = stream.info().await.map_err(|e| JetStreamError::Stream {
            url: self.url.clone(),
            stream: name.to_string(),
            why: e.to_string(),
        })?;
        if !info
            .config
            .subjects
            .iter()
            .any(|s| subject_matches(s, subject))
        {
            return Err(JetStreamError::Stream {
                url: self.url.clone(),
                stream: name.to_string(),
                why: format!(
                    "it does not take subject `{subject}` (its subjects: {}); publish to one of \
                     them, or add the subject to the stream",
                    info.config.subjects.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Starts a pull request when none is out and the host has room for half its
    /// `max_in_flight` or more. Topping up one message at a time, as each ack frees a
    /// slot, would cost a request (a subscription, a round trip, the server's work) per
    /// message; waiting for half keeps requests large while the host never runs dry.
    async fn top_up(&mut self, pull: &mut Option<(jetstream::consumer::pull::Batch, usize)>) {
        let held = self.held_map.len();
        if pull.is_some()
            || held >= self.pull_limit
            || (held > 0 && held > self.pull_limit / 2)
            || Instant::now() < self.pull_after
        {
            return;
        }
        let Some(consumer) = &self.consumer else {
            return;
        };
        let request = consumer
            .batch()
            .max_messages(self.pull_limit - held)
            .expires(PULL_EXPIRES)
            .messages();
        let result = match tokio::time::timeout(SEND_TIMEOUT, request).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the server does not answer".to_string()),
        };
        match result {
            Ok(b) => *pull = Some((b, 0)),
            Err(e) => {
                self.pull_limit = 0;
                self.event(Event::Failed(format!("pull request failed: {e}")));
            }
        }
    }

    fn event(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn delivered(
        &mut self,
        m: Option<Result<jetstream::Message, async_nats::Error>>,
        pull: &mut Option<(jetstream::consumer::pull::Batch, usize)>,
    ) {
        match m {
            None => {
                pull.take();
            }
            Some(Err(e)) => {
                // A status the server sends at the end of a request it held (timeout,
                // consumer busy) is not fatal: end this pull and ask again, after a pause
                // so that a consumer that keeps refusing is not asked in a busy loop.
                pull.take();
                tracing::debug!("pull ended: {e}");
                self.pull_after = Instant::now() + Duration::from_millis(50);
            }
            Some(Ok(msg)) => {
                if let Some((_, n)) = pull.as_mut() {
                    *n += 1;
                }
                let (stream, stream_seq, delivered) = match msg.info() {
                    Ok(i) => (i.stream.to_string(), i.stream_sequence, i.delivered),
                    Err(_) => (String::new(), 0, 1),
                };
                let (msg, acker) = msg.split();
                let header = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_string())
                };
                let id = self.next_id;
                self.next_id += 1;
                self.held_map.insert(
                    id,
                    Held {
                        acker,
                        touched: Instant::now(),
                        parts_done: 0,
                    },
                );
                self.held.fetch_add(1, Relaxed);
                self.event(Event::Message(Delivery {
                    id,
                    stream,
                    stream_seq,
                    delivered,
                    input: header(HEADER_INPUT),
                    line: header(HEADER_LINE).and_then(|l| l.parse().ok()),
                    format: header(HEADER_FORMAT).and_then(|f| f.parse().ok()),
                    payload: msg.payload,
                }));
            }
        }
    }

    async fn finish(&mut self, id: u64, kind: AckKind) {
        let Some(h) = self.held_map.remove(&id) else {
            return;
        };
        self.held.fetch_sub(1, Relaxed);
        let naked = matches!(kind, AckKind::Nak(_));
        let sent = match tokio::time::timeout(SEND_TIMEOUT, h.acker.ack_with(kind)).await {
            Ok(r) => r,
            Err(_) => Err("the server does not answer".into()),
        };
        if let Err(e) = sent {
            tracing::warn!(
                "{}: could not send an ack: {e}; the message will be redelivered",
                self.url
            );
        }
        if naked {
            self.closed.naked += 1;
        } else {
            self.closed.acked += 1;
        }
    }

    async fn publish(&mut self, job: PublishJob, publishes: &mut FuturesUnordered<PublishFuture>) {
        let Some(payload) = job.payload else {
            self.part_done(job.ack).await;
            return;
        };
        let mut msg = jetstream::message::PublishMessage::build().payload(payload);
        for (k, v) in job.headers {
            msg = msg.header(k, v.as_str());
        }
        if let Some(id) = &job.msg_id {
            msg = msg.message_id(id);
        }
        let subject = job.subject;
        let ack = job.ack;
        let sent = tokio::time::timeout(SEND_TIMEOUT, self.js.send_publish(subject.clone(), msg))
            .await
            .unwrap_or_else(|_| {
                Err(async_nats::jetstream::context::PublishError::new(
                    async_nats::jetstream::context::PublishErrorKind::TimedOut,
                ))
            });
        match sent {
            Ok(fut) => publishes.push(Box::pin(async move {
                let r = std::future::IntoFuture::into_future(fut)
                    .await
                    .map(|a| a.duplicate)
                    .map_err(|e| e.to_string());
                (r, ack, subject)
            })),
            Err(e) => publishes.push(Box::pin(std::future::ready((
                Err(e.to_string()),
                ack,
                subject,
            )))),
        }
    }

    async fn published(&mut self, done: (Result<bool, String>, Option<(u64, u32)>, String)) {
        let _ = self.permits.try_recv();
        let (result, ack, subject) = done;
        match result {
            Ok(duplicate) => {
                self.closed.published += 1;
                if duplicate {
                    self.closed.duplicates += 1;
                }
                self.part_done(ack).await;
            }
            Err(e) => {
                let _ = self.fatal.send(RunError::io(
                    format!("publishing to subject `{subject}` on {}", self.url),
                    std::io::Error::other(e),
                ));
                // Not acked: the input message is NAKed when its bridge closes (the run
                // stops on this error), and redelivered.
                let _ = ack;
            }
        }
    }

    async fn part_done(&mut self, ack: Option<(u64, u32)>) {
        let Some((id, parts)) = ack else { return };
        if let Some(to) = &self.forward {
            let _ = to.send(Command::PartDone(id, parts));
            return;
        }
        let Some(h) = self.held_map.get_mut(&id) else {
            return;
        };
        h.parts_done += 1;
        if h.parts_done >= parts {
            self.finish(id, AckKind::Ack).await;
        }
    }

    /// Progress acks for messages held longer than half the ack wait: the host is still
    /// working on them (queued behind others, or in a slow stage).
    async fn keep_alive(&mut self) {
        let due = self.ack_wait / 2;
        let now = Instant::now();
        for h in self.held_map.values_mut() {
            if now.duration_since(h.touched) >= due {
                h.touched = now;
                let _ =
                    tokio::time::timeout(SEND_TIMEOUT, h.acker.ack_with(AckKind::Progress)).await;
            }
        }
    }

    async fn close(
        &mut self,
        pull: &mut Option<(jetstream::consumer::pull::Batch, usize)>,
        publishes: &mut FuturesUnordered<PublishFuture>,
    ) {
        // Messages of a pull request still out are delivered to us whether we read them
        // or not: read them (into `held_map`) so that they are NAKed below, instead of
        // waiting out the ack wait on the server (regression test:
        // sigterm_drains_acks_what_was_written_and_returns_the_rest_at_once). The server
        // sends what it has at once, so a short quiet spell ends the wait; a message
        // published later still reaches another instance, after the ack wait.
        self.pull_limit = 0;
        while pull.is_some() {
            match tokio::time::timeout(PULL_QUIET, next_message(pull)).await {
                Ok(m) => self.delivered(m, pull),
                Err(_) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        while !publishes.is_empty() {
            match tokio::time::timeout_at(deadline, publishes.next()).await {
                Ok(Some(done)) => self.published(done).await,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "{}: {} publishes still unacknowledged after {} s; their input messages will be redelivered",
                        self.url,
                        publishes.len(),
                        CLOSE_TIMEOUT.as_secs()
                    );
                    break;
                }
            }
        }
        // NAKs get what we hold to the other instances at once; with the server away
        // they could not be sent, and the server redelivers after the ack wait anyway.
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let ids: Vec<u64> = self.held_map.keys().copied().collect();
        for id in ids {
            if connected {
                self.finish(id, AckKind::Nak(None)).await;
            } else if self.held_map.remove(&id).is_some() {
                self.held.fetch_sub(1, Relaxed);
            }
        }
        if connected {
            let _ = tokio::time::timeout(SEND_TIMEOUT, self.client.flush()).await;
        }
    }
}

/// How often held messages are looked at for a progress ack. A message gets one once
/// held half the ack wait, so it is acked (or progress-acked) at the latest after
/// 1/2 + 1/4 of the ack wait, with a quarter to spare for the network and the server's
/// clock (progress_acks_keep_slow_messages_from_being_redelivered).
fn progress_period(ack_wait: Duration) -> Duration {
    (ack_wait / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

async fn next_message(
    pull: &mut Option<(jetstream::consumer::pull::Batch, usize)>,
) -> Option<Result<jetstream::Message, async_nats::Error>> {
    match pull {
        Some((b, _)) => b.next().await,
        None => std::future::pending().await,
    }
}

fn is_not_found(message: &str) -> bool {
    message.contains("not found") || message.contains("10059")
}

fn stream_error(url: &str, stream: &str, why: &str) -> JetStreamError {
    if is_not_found(why) {
        JetStreamError::StreamNotFound {
            url: url.to_string(),
            stream: stream.to_string(),
        }
    } else if why.contains("503") || why.contains("no responders") {
        JetStreamError::NoJetStream {
            url: url.to_string(),
        }
    } else {
        JetStreamError::Stream {
            url: url.to_string(),
            stream: stream.to_string(),
            why: why.to_string(),
        }
    }
}
