//! The runtime alone, in-process, on fake stages (no plugin files): the chain keeps
//! order, a swap switches version exactly at its marker with state handed over, and a
//! rebuild drains the chain and gives the new one the old state by stage name.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use pipe_sdk::prelude::*;
use pipe_sdk::Pos;

use super::chain::{Context, RunningChain, StageSetup};
use super::deadletter::DeadLetter;
use super::feeder::{Command, Feeder, Rebuilt};
use super::markers::{Handover, Msg, SwapOrder, SwapOutcome};
use super::reorder::Reorder;
use super::shutdown::Shutdown;
use super::stats::RunStats;
use super::threads;
use super::watchdog::Watchdog;
use crate::config::{Policy, StageKind, StageSpec};
use crate::plugin::{Backend, Manifest, Plugin};

/// Tags every row with its version label and the running count of rows it has seen
/// (its state, handed over at swaps).
struct Tag {
    label: String,
    seen: u64,
}

#[derive(Deserialize)]
struct TagConfig {
    label: String,
}

impl Stage for Tag {
    type Config = TagConfig;
    fn new(c: TagConfig) -> Result<Self, Error> {
        Ok(Tag {
            label: c.label,
            seen: 0,
        })
    }
    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        out.columns(["id", "label", "seen"]);
        for row in input.rows() {
            self.seen += 1;
            out.row(row)
                .copy(row, 0)
                .str(&self.label)
                .str(&self.seen.to_string());
        }
        Ok(())
    }
    fn export_state(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self.seen.to_le_bytes().to_vec()))
    }
    fn import_state(&mut self, state: &[u8]) -> Result<(), Error> {
        self.seen = u64::from_le_bytes(state.try_into().map_err(Error::msg)?);
        Ok(())
    }
}

struct TagBackend;

impl Backend for TagBackend {
    fn instantiate(
        &self,
        config_json: &str,
    ) -> Result<pipe_sdk::host::StageBox, pipe_sdk::host::StageError> {
        pipe_sdk::testing::instance::<Tag>(serde_json::from_str(config_json).unwrap())
    }
}

fn spec(name: &str, label: &str) -> StageSpec {
    StageSpec {
        name: name.into(),
        kind: StageKind::Plugin {
            plugin: "tag".into(),
            search: vec![],
        },
        workers: 1,
        on_error: Policy::Fail,
        timeout: None,
        memory_mb: None,
        sha256: None,
        config_json: serde_json::json!({ "label": label }).to_string(),
    }
}

fn plugin(version: &str) -> Arc<Plugin> {
    Arc::new(Plugin::new(
        format!("/fake/{version}").into(),
        Manifest {
            name: "tag".into(),
            version: version.into(),
            description: String::new(),
            stateful: true,
            sdk_version: pipe_sdk::host::SDK_VERSION.into(),
        },
        None,
        Arc::new(TagBackend),
    ))
}

fn setup(name: &str, label: &str, version: &str) -> StageSetup {
    let spec = spec(name, label);
    let plugin = plugin(version);
    let instances = vec![plugin.instantiate(&spec.config_json).unwrap()];
    StageSetup {
        spec,
        plugin,
        instances,
    }
}

fn context() -> (Arc<Context>, Receiver<super::RunError>) {
    let (fatal, fatal_rx) = unbounded();
    let ctx = Arc::new(Context {
        stats: Arc::new(RunStats::default()),
        dead: Arc::new(DeadLetter::new(None, vec!["-".into()])),
        fatal,
        channel_capacity: 2,
        watchdog: Arc::new(Watchdog::default()),
        log: |_| {},
        shutdown: Arc::new(Shutdown::default()),
    });
    (ctx, fatal_rx)
}

/// Batches of `per` rows with ids from `from`.
fn batch(from: u64, per: u64) -> Batch {
    let mut b = Batch::with_columns(["id"]);
    for id in from..from + per {
        b.start_row(Pos {
            input: 0,
            line: id + 2,
        });
        b.push_str(&id.to_string());
        b.end_row().unwrap();
    }
    b
}

/// Everything the sink channel delivers, in sequence order: (id, label, seen) per row.
fn collect(rx: Receiver<Msg>) -> Vec<(u64, String, u64)> {
    let mut order = Reorder::new(0);
    let mut rows = Vec::new();
    for msg in rx.iter() {
        order.push(msg.seq(), msg);
        while let Some(m) = order.pop() {
            match m {
                Msg::Batch { batch, .. } => rows.extend(batch.rows().map(|r| {
                    (
                        r.get_str("id").unwrap().parse().unwrap(),
                        r.get_str("label").unwrap().to_string(),
                        r.get_str("seen").unwrap().parse().unwrap(),
                    )
                })),
                Msg::Drain { ack, .. } => {
                    let _ = ack.send(());
                }
                Msg::Swap { .. } => {}
            }
        }
    }
    rows
}

#[test]
fn a_swap_switches_exactly_at_its_marker_and_hands_the_state_over() {
    let (ctx, fatal) = context();
    let (sink_tx, sink_rx) = bounded(64);
    let chain = RunningChain::spawn(vec![setup("tag", "v1", "1.0.0")], &ctx, 0, sink_tx).unwrap();
    let collector = std::thread::spawn(move || collect(sink_rx));
    let (reply, outcome) = bounded::<SwapOutcome>(1);
    let new = setup("tag", "v2", "2.0.0");
    let order = Arc::new(SwapOrder::new(new.plugin, new.spec, new.instances, reply));
    let mut seq = 0;
    for i in 0..10 {
        if i == 4 {
            chain
                .head
                .send(Msg::Swap {
                    seq,
                    stage: "tag".into(),
                    order: order.clone(),
                })
                .unwrap();
            seq += 1;
        }
        chain
            .head
            .send(Msg::Batch {
                seq,
                batch: batch(i * 5, 5),
            })
            .unwrap();
        seq += 1;
    }
    chain.join().unwrap();
    let rows = collector.join().unwrap();
    assert!(fatal.try_recv().is_err());
    let out = outcome.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((out.from.as_str(), out.to.as_str()), ("1.0.0", "2.0.0"));
    assert_eq!(out.state, Handover::HandedOver);
    assert!(out.refused.is_none());
    // Every row once, in order; the first 20 on v1, the rest on v2; the count goes on.
    assert_eq!(rows.len(), 50);
    for (i, (id, label, seen)) in rows.iter().enumerate() {
        assert_eq!(*id, i as u64);
        assert_eq!(label, if i < 20 { "v1" } else { "v2" }, "row {i}");
        assert_eq!(*seen, i as u64 + 1, "state lost at row {i}");
    }
    assert_eq!(
        ctx.stats
            .stage("tag", 1)
            .swaps
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn state_that_does_not_fit_starts_the_new_version_fresh_and_says_why() {
    let mut new = setup("tag", "v2", "2.0.0").instances.pop().unwrap();
    let refused = super::markers::hand_over(Ok(Some(vec![1, 2, 3])), &mut new, true);
    assert!(
        matches!(refused, Handover::StartedFresh(ref why) if why.contains("refused the old state")),
        "{refused:?}"
    );
    let not_exported = super::markers::hand_over(Err("boom".into()), &mut new, true);
    assert!(
        matches!(not_exported, Handover::StartedFresh(ref why) if why.contains("could not export")),
        "{not_exported:?}"
    );
    assert_eq!(
        super::markers::hand_over(Ok(Some(7u64.to_le_bytes().to_vec())), &mut new, true),
        Handover::HandedOver
    );
    assert_eq!(
        super::markers::hand_over(Ok(None), &mut new, false),
        Handover::NoState
    );
}

#[test]
fn a_rebuild_drains_the_chain_and_the_new_chain_takes_the_state_by_name() {
    let (ctx, fatal) = context();
    let (sink_tx, sink_rx) = bounded(64);
    let chain =
        RunningChain::spawn(vec![setup("tag", "v1", "1.0.0")], &ctx, 0, sink_tx.clone()).unwrap();
    let (batches_tx, batches) = bounded::<Batch>(2);
    let (go_tx, go_rx) = bounded::<()>(1);
    // The reader: 4 batches, a pause for the rebuild, 4 more.
    let reader = threads::spawn("reader", move || {
        for i in 0..8 {
            if i == 4 {
                let _ = go_rx.recv();
            }
            batches_tx.send(batch(i * 10, 10)).unwrap();
        }
        Ok(())
    })
    .unwrap();
    let (commands_tx, commands) = unbounded::<Command>();
    let (_sig_tx, signals) = bounded::<i32>(1);
    let feeder = Feeder {
        batches,
        reader,
        commands,
        signals,
        chain,
        sink: sink_tx,
        ctx: ctx.clone(),
        acks: None,
    };
    let feeder = threads::spawn("feeder", move || feeder.run()).unwrap();
    let collector = std::thread::spawn(move || collect(sink_rx));
    // Wait until the first 4 batches are in, then rebuild the chain with a new `tag`,
    // whose count goes on from the old one's.
    while ctx
        .stats
        .source
        .read
        .load(std::sync::atomic::Ordering::Relaxed)
        < 40
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (done, rebuilt) = bounded::<Rebuilt>(1);
    commands_tx
        .send(Command::Rebuild {
            stages: vec![setup("tag", "v2", "2.0.0")],
            done,
        })
        .unwrap();
    let r = rebuilt.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(r.names, ["tag"]);
    assert_eq!(r.states, [("tag".to_string(), Handover::HandedOver)]);
    go_tx.send(()).unwrap();
    drop(commands_tx);
    threads::join(feeder).unwrap();
    let rows = collector.join().unwrap();
    assert!(fatal.try_recv().is_err());
    assert_eq!(rows.len(), 80);
    for (i, (id, label, seen)) in rows.iter().enumerate() {
        assert_eq!(*id, i as u64, "order");
        assert_eq!(label, if i < 40 { "v1" } else { "v2" }, "row {i}");
        assert_eq!(*seen, i as u64 + 1, "state lost at row {i}");
    }
}

/// The tests' own sink puts batches in order (so their order checks mean something).
#[test]
fn the_test_sink_puts_batches_in_order() {
    let (tx, rx): (Sender<Msg>, _) = bounded(8);
    for seq in [2u64, 0, 1] {
        let mut b = Batch::with_columns(["id", "label", "seen"]);
        b.start_row(Pos::default());
        b.push_str(&seq.to_string());
        b.push_str("x");
        b.push_str("1");
        b.end_row().unwrap();
        tx.send(Msg::Batch { seq, batch: b }).unwrap();
    }
    drop(tx);
    let ids: Vec<u64> = collect(rx).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, [0, 1, 2]);
}
