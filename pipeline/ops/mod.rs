//! Live operations: while `pipe run --listen ADDR` runs, a small HTTP server answers
//! `GET /metrics` (the Prometheus text format), `GET /health` (200, or 503 with the
//! reasons) and `GET /stages` (the chain as JSON).
//!
//! # Layout
//! - `http`: a minimal HTTP/1.1 responder on a std `TcpListener` (one thread, one
//!   request per connection). Hand-rolled rather than a server crate: it serves three
//!   read-only GETs to a scraper, and adds no dependency to the build.
//! - `metrics`: renders the run's counters in the Prometheus text format.
//! - `health`: the health verdict and the `/stages` document.
//! - `ctl`: `pipe ctl` (status, swap, rollback): the client, and the endpoints that hand
//!   orders to the reload coordinator.
//!
//! Everything here only reads the run's [`Probe`]: atomics and a few short locks the
//! run takes once per stage or per swap, never per record, so a scraper polling every
//! 100 ms does not slow the stream (benches/ops.sh measures it).

mod ctl;
mod health;
mod http;
mod metrics;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crossbeam_channel::Sender;

pub use ctl::{send, ClientError, CtlCounters, Order};
pub use health::{health, stages_json, Health};
pub use http::Server;
pub use metrics::render;

use crate::reload::{CtlRequest, LiveChain, LiveStage};
use crate::run::Probe;

/// The operations server could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (pick another address, or port 0 for any free one)"
    )]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the operations server: {0}")]
    Thread(std::io::Error),
}

/// Binds `addr` before the run starts, so that a taken port fails the run before any
/// record is read.
pub fn bind(addr: &str) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr).map_err(|source| OpsError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// How `ops` steers a run with hot reload on: orders to the coordinator, and the chain
/// it publishes after each swap.
pub struct Steering {
    /// `pipe ctl` orders.
    pub ctl: Sender<CtlRequest>,
    /// The chain as the coordinator last left it.
    pub chain: LiveChain,
}

/// What the endpoints read: the run, and the coordinator's chain when there is one.
pub struct View {
    probe: Probe,
    chain: Option<LiveChain>,
}

impl View {
    /// The stages running now, in order: the coordinator's view when hot reload is on
    /// (it follows swaps and rebuilds), else the chain as loaded.
    pub fn stages(&self) -> Vec<LiveStage> {
        let published = self
            .chain
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        if !published.is_empty() {
            return published;
        }
        self.probe
            .plan
            .stages
            .iter()
            .zip(&self.probe.loaded)
            .map(|(spec, (plugin, workers))| LiveStage {
                name: spec.name.clone(),
                plugin: plugin.clone(),
                workers: *workers,
                last_swap: None,
            })
            .collect()
    }
}

/// Serves the endpoints for `probe` on `listener` until the returned [`Server`] is
/// dropped; `steering` (present when hot reload is on) takes `pipe ctl` orders.
pub fn serve(
    listener: TcpListener,
    probe: Probe,
    steering: Option<Steering>,
) -> Result<Server, OpsError> {
    let counters = Arc::new(CtlCounters::default());
    let (ctl, chain) = match steering {
        Some(s) => (Some(s.ctl), Some(s.chain)),
        None => (None, None),
    };
    let view = View { probe, chain };
    Server::start(listener, move |method, path| {
        route(&view, ctl.as_ref(), &counters, method, path)
    })
    .map_err(OpsError::Thread)
}

/// The address actually bound (port 0 resolved), for the log line tests read.
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

/// One response: status, content type, body.
pub type Response = (u16, &'static str, String);

fn route(
    view: &View,
    ctl: Option<&Sender<CtlRequest>>,
    counters: &CtlCounters,
    method: &str,
    target: &str,
) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(action) = path.strip_prefix("/ctl/").filter(|a| *a != "status") {
        return ctl::order(ctl, counters, method, action, query);
    }
    match path {
        "/metrics" => {
            let mut text = render(view);
            metrics::family(
                &mut text,
                "pipe_ctl_orders_total",
                "counter",
                "Orders from pipe ctl, by command and result.",
                &counters
                    .samples()
                    .iter()
                    .map(|(l, v)| (l.as_str(), *v))
                    .collect::<Vec<_>>(),
            );
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        "/ctl/status" => {
            let h = health(view);
            let body = format!(
                "{{\"health\":{},\"stages\":{}}}\n",
                h.to_json().trim_end(),
                stages_json(view).trim_end()
            );
            (200, "application/json", body)
        }
        "/health" => {
            let h = health(view);
            let status = if h.ok { 200 } else { 503 };
            (status, "application/json", h.to_json())
        }
        "/stages" => (200, "application/json", stages_json(view)),
        _ => (
            404,
            "text/plain; charset=utf-8",
            "not found: try /metrics, /health, /stages or /ctl/status\n".into(),
        ),
    }
}
