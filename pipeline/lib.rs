//! `pipe`, the host: it reads records, runs them through plugin stages and writes them
//! out, and replaces stages while the data flows.
//!
//! # Layout
//! The folders are the layers; each depends only on those listed after it.
//! - [`cli`]: the command line: clap types, one function per subcommand, the exit-code
//!   map, logging.
//! - [`ops`]: live operations: `/metrics`, `/health`, `/stages` over HTTP.
//! - [`tools`]: `pipe bench`, `generate`, `new`, `test`.
//! - [`reload`]: hot reload: file watching, the coordinator, the pure plan diff.
//! - [`run`]: one run: source, feeder, chain (dispatchers and workers), markers, policy,
//!   sink, atomic output, shutdown, watchdog, stats, dead letter; `run::jetstream`: NATS
//!   JetStream streams as a run's input and output (called at its source, feeder and
//!   sink), acks after the sink, `pipe publish`.
//! - [`plugin`]: the one `Plugin` and its one load path: find, check (trust, sha256,
//!   structure, probe, ABI layout, manifest) and open; a backend per kind of stage
//!   (`plugin::library`: native `cdylib`; `plugin::process`: children speaking JSON
//!   lines).
//! - [`config`]: `pipelines.toml` → a validated [`config::PipelinePlan`]; command-line
//!   options → a resolved [`config::RunPlan`]; `config::stream`: the stream endpoints of a
//!   pipeline.

pub mod cli;
pub mod config;
pub mod ops;
pub mod plugin;
pub mod reload;
pub mod run;
pub mod tools;
