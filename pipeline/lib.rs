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
//!   sink, atomic output, shutdown, watchdog, stats, dead letter.
//! - [`loader`], [`process`]: plugins: find, check and open libraries; process stages.
//! - [`config`]: `pipelines.toml` → a validated [`config::PipelinePlan`]; command-line
//!   options → a resolved [`config::RunPlan`].

pub mod cli;
pub mod config;
pub mod loader;
pub mod ops;
pub mod process;
pub mod reload;
pub mod run;
pub mod tools;
