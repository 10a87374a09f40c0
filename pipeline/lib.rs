//! `pipe`, the host: it reads records, runs them through plugin stages and writes them
//! out, and replaces stages while the data flows.
//!
//! # Layout
//! - `config`: `pipelines.toml` → a validated, resolved [`config::PipelinePlan`].
//! - `loader`: find, check (trust, sha256, ABI layout, manifest) and open plugins.
//! - `engine`: one run end to end: reader, feeder, chain, sink; exit outcome.
//! - `runtime`: the chain's dispatchers and workers, swap and drain markers, the
//!   timeout watchdog.
//! - `watch`: hot reload: file watching, debounce, side-by-side load, swap or rebuild.
//! - `deadletter`: the dead-letter file.
//! - `stats`: counters and the accounting identity.
//! - `process`: process stages: children speaking JSON lines over stdin/stdout.
//! - `progress`: the progress bar.
//! - `bench`, `generate`: `pipe bench` with its bare-loop baselines; sample data.
//! - `scaffold`: `pipe new`; `testfile`: `pipe test`.
//! - `cli`, `commands`: the command line and the subcommands besides `run`.
//! - `error`: errors that end a run.
//! - `logging`: stderr messages through `tracing`, `-v`/`-q`, `PIPE_LOG`.
//! - `jetstream`: scale-out: NATS JetStream streams as input and output, `pipe publish`,
//!   acks after the sink.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deadletter;
pub mod engine;
pub mod error;
pub mod generate;
pub mod jetstream;
pub mod loader;
pub mod logging;
pub mod process;
pub mod progress;
pub mod runtime;
pub mod scaffold;
pub mod stats;
pub mod testfile;
pub mod watch;
