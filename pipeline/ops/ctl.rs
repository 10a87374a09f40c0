//! `pipe ctl`: orders to a running `pipe run --listen ADDR` over its HTTP endpoints, and
//! the server side that hands them to the reload coordinator.
//!
//! The orders go to the coordinator's own thread (see `reload::CtlRequest`), so a swap
//! from `pipe ctl` has exactly the guarantees of a swap from a file change: loaded beside
//! the running version, drained at a marker, state handed over, reported; and it never
//! races one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::Response;
use crate::reload::{CtlCommand, CtlRequest};

/// How long an order may wait for its swap: the marker must reach the stage, which waits
/// behind the batches already queued, so this is generous.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Counters of `pipe ctl` orders, for `/metrics`.
#[derive(Debug, Default)]
pub struct CtlCounters {
    /// `[swap, rollback]` × `[done, refused]`.
    counts: [[AtomicU64; 2]; 2],
}

impl CtlCounters {
    /// The samples of `pipe_ctl_orders_total`: (labels, value).
    pub fn samples(&self) -> Vec<(String, f64)> {
        let mut v = Vec::new();
        for (ci, command) in ["swap", "rollback"].iter().enumerate() {
            for (ri, result) in ["done", "refused"].iter().enumerate() {
                v.push((
                    format!("command=\"{command}\",result=\"{result}\""),
                    self.counts[ci][ri].load(Relaxed) as f64,
                ));
            }
        }
        v
    }
}

/// Serves `POST /ctl/swap?stage=S[&file=F]` and `POST /ctl/rollback?stage=S`.
pub fn order(
    ctl: Option<&Sender<CtlRequest>>,
    counters: &CtlCounters,
    method: &str,
    action: &str,
    query: &str,
) -> Response {
    if method != "POST" {
        return (
            405,
            "text/plain",
            "orders are POSTed (use `pipe ctl`)\n".into(),
        );
    }
    let Some(ctl) = ctl else {
        return (
            409,
            "text/plain",
            "hot reload is off in this run (--no-watch or settings.watch = false): no swaps\n"
                .into(),
        );
    };
    let Some(stage) = param(query, "stage") else {
        return (409, "text/plain", "which stage? (?stage=NAME)\n".into());
    };
    let (command, ci) = match action {
        "swap" => (
            CtlCommand::Swap {
                stage,
                file: param(query, "file").map(PathBuf::from),
            },
            0,
        ),
        "rollback" => (CtlCommand::Rollback { stage }, 1),
        _ => return (404, "text/plain", "orders: swap, rollback\n".into()),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    if ctl.send(CtlRequest { command, reply }).is_err() {
        return (409, "text/plain", "the run is ending\n".into());
    }
    match answer.recv_timeout(ORDER_TIMEOUT) {
        Ok(Ok(report)) => {
            counters.counts[ci][0].fetch_add(1, Relaxed);
            (200, "text/plain", format!("{report}\n"))
        }
        Ok(Err(why)) => {
            counters.counts[ci][1].fetch_add(1, Relaxed);
            (409, "text/plain", format!("refused: {why}\n"))
        }
        Err(_) => (
            409,
            "text/plain",
            "no answer in time: the swap may still happen (see the run's log)\n".into(),
        ),
    }
}

/// The value of `key` in a query string, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                // Bytes, not a str slice: a `%` before a multi-byte character must not panic.
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A `pipe ctl` order could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error(
        "cannot reach a running pipe at {addr}: {source} (is it running with --listen {addr}?)"
    )]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The answer was cut or malformed.
    #[error("bad answer from {addr}: {why}")]
    Answer {
        /// The address.
        addr: String,
        /// Why.
        why: String,
    },
}

/// What `pipe ctl` asks.
#[derive(Debug, Clone)]
pub enum Order {
    /// The chain and health.
    Status,
    /// Swap a stage, from its own file or from `file`.
    Swap(String, Option<PathBuf>),
    /// Roll a stage back to its previous version.
    Rollback(String),
}

/// Sends `order` to the run at `addr`: (HTTP status, body).
pub fn send(addr: &str, order: &Order) -> Result<(u16, String), ClientError> {
    let (method, target) = match order {
        Order::Status => ("GET", "/ctl/status".to_string()),
        Order::Swap(stage, file) => (
            "POST",
            match file {
                // The run resolves the file from its own working directory: send it
                // absolute.
                Some(f) => format!(
                    "/ctl/swap?stage={}&file={}",
                    encode(stage),
                    encode(
                        &std::path::absolute(f)
                            .unwrap_or_else(|_| f.clone())
                            .display()
                            .to_string()
                    )
                ),
                None => format!("/ctl/swap?stage={}", encode(stage)),
            },
        ),
        Order::Rollback(stage) => ("POST", format!("/ctl/rollback?stage={}", encode(stage))),
    };
    let connect = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(connect)?;
    stream
        .set_read_timeout(Some(ORDER_TIMEOUT + Duration::from_secs(5)))
        .map_err(connect)?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(connect)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(connect)?;
    let bad = |why: &str| ClientError::Answer {
        addr: addr.to_string(),
        why: why.to_string(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_round_trip_through_percent_encoding() {
        let file = "/tmp/a b/lib%x.so";
        let q = format!("stage=s&file={}", encode(file));
        assert_eq!(param(&q, "file").as_deref(), Some(file));
        assert_eq!(param(&q, "stage").as_deref(), Some("s"));
        assert_eq!(param(&q, "nope"), None);
    }
}
