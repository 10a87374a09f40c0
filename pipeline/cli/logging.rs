//! Messages on stderr through `tracing`: reload reports, warnings, faults.
//!
//! Level: `-q` (warnings), `-qq` (errors), `-v` (debug), `-vv` (trace); without flags,
//! `PIPE_LOG`, then `RUST_LOG` (any `tracing` filter, such as `pipe=debug`), else
//! `info`. Lines read `pipe: message`, `pipe: warning: message`, `pipe: error: message`:
//! no timestamps or module paths, since a shell user reads them as a command's output.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
            Level::INFO => "",
        };
        write!(writer, "pipe: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the stderr logger for `-v` count `verbose` and `-q` count `quiet`.
pub fn init(verbose: u8, quiet: u8) {
    let filter = match (verbose, quiet) {
        (0, 0) => std::env::var("PIPE_LOG")
            .ok()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .and_then(|s| EnvFilter::try_new(s).ok())
            .unwrap_or_else(|| EnvFilter::new("info")),
        (0, 1) => EnvFilter::new("warn"),
        (0, _) => EnvFilter::new("error"),
        (1, _) => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    // The NATS client reports every connection at info level; its warnings (a lost
    // connection, a reconnect) are what a user of `pipe` needs. `-vv` shows it all.
    let filter = if verbose < 2 {
        match "async_nats=warn".parse() {
            Ok(d) => filter.add_directive(d),
            Err(_) => filter,
        }
    } else {
        filter
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Plain)
        .try_init();
}
