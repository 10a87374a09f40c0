//! `pipe publish FILES... --to nats://HOST:PORT/SUBJECT`: splits inputs into batch
//! messages for `pipe run` instances to share.
//!
//! Messages are cut at record boundaries from the input's own bytes (a CSV record may
//! span lines inside quotes, so CSV is cut where the csv crate says a record starts):
//! nothing is re-encoded, and every CSV message repeats the input's header line(s) so it
//! can be read on its own. Each carries `Pipe-Input` (the file as named), `Pipe-Line`
//! (its first record's line there) and `Pipe-Format`, so the worker that reads it names
//! `orders.csv:5003` in errors and dead letters.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;
use crossbeam_channel::unbounded;
use pipe_sdk::codec::Format;

use super::client::{Bridge, PublishJob};
use super::config::SubjectUrl;
use super::{JetStreamError, HEADER_FORMAT, HEADER_INPUT, HEADER_LINE};

/// `pipe publish`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    pipe publish orders.csv --to nats://127.0.0.1:4222/orders.in --create-stream ORDERS\n  \
    pipe publish part-*.jsonl --to nats://127.0.0.1:4222/events.in --batch-size 2000\n  \
    pipe publish --to nats://127.0.0.1:4222/orders.out --create-stream CLEAN   (only create)")]
pub struct PublishArgs {
    /// Input files (`-` for stdin); none with --create-stream only creates the stream.
    pub files: Vec<String>,
    /// Where to publish: nats://HOST:PORT/SUBJECT.
    #[arg(long, value_name = "URL/SUBJECT")]
    pub to: String,
    /// Records per message (default 1024).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub batch_size: usize,
    /// Input format when the file name does not say (default csv).
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// Create stream NAME taking SUBJECT if it does not exist (10-minute duplicate
    /// window); check that it takes SUBJECT if it does.
    #[arg(long, value_name = "NAME")]
    pub create_stream: Option<String>,
}

/// One message's worth of an input.
struct Chunk {
    body: Vec<u8>,
    line: u64,
    records: usize,
}

/// Splits `data` (CSV) into bodies of `n` records, each with the header.
fn split_csv(data: &[u8], n: usize) -> Vec<Chunk> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut rec = csv::ByteRecord::new();
    // (byte offset, line) of each record's start; the first record is the header.
    let mut starts: Vec<(usize, u64)> = Vec::new();
    loop {
        let at = rdr.position().clone();
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {
                let p = rec.position().unwrap_or(&at);
                starts.push((p.byte() as usize, p.line()));
            }
            // A read error in a byte slice is a malformed record: stop cutting there and
            // leave the rest in the last message, where the worker reports it.
            Ok(false) | Err(_) => break,
        }
    }
    if starts.len() < 2 {
        return Vec::new(); // no records
    }
    let header = &data[..starts[1].0];
    let records = &starts[1..];
    records
        .chunks(n)
        .enumerate()
        .map(|(i, c)| {
            let from = c[0].0;
            let to = records.get((i + 1) * n).map_or(data.len(), |s| s.0);
            let mut body = Vec::with_capacity(header.len() + to - from);
            body.extend_from_slice(header);
            body.extend_from_slice(&data[from..to]);
            Chunk {
                body,
                line: c[0].1,
                records: c.len(),
            }
        })
        .collect()
}

/// Splits `data` (JSON lines) into bodies of `n` non-blank lines.
fn split_jsonl(data: &[u8], n: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut count = 0usize;
    let mut line = 0u64;
    let mut pos = 0usize;
    while pos < data.len() {
        let end = memchr_newline(&data[pos..]).map_or(data.len(), |i| pos + i + 1);
        line += 1;
        if !data[pos..end].iter().all(u8::is_ascii_whitespace) {
            if count == 0 {
                start = pos;
                start_line = line;
            }
            count += 1;
            if count == n {
                chunks.push(Chunk {
                    body: data[start..end].to_vec(),
                    line: start_line,
                    records: count,
                });
                count = 0;
            }
        }
        pos = end;
    }
    if count > 0 {
        chunks.push(Chunk {
            body: data[start..].to_vec(),
            line: start_line,
            records: count,
        });
    }
    chunks
}

fn memchr_newline(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// Why `pipe publish` failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `--to` does not parse.
    #[error(transparent)]
    Address(JetStreamError),
    /// `--batch-size 0`.
    #[error("--batch-size must be at least 1")]
    BatchSize,
    /// Nothing to do.
    #[error(
        "name files to publish (`-` for stdin), or --create-stream NAME to only create the stream"
    )]
    Nothing,
    /// Connecting, or checking or creating the stream.
    #[error(transparent)]
    JetStream(#[from] JetStreamError),
    /// An input could not be read.
    #[error("cannot read {input}: {source}")]
    Read {
        /// The input (`-`: stdin).
        input: String,
        /// Why.
        source: std::io::Error,
    },
    /// No stream takes the subject.
    #[error(
        "no JetStream stream on {server} takes subject `{subject}`: create one with --create-stream NAME"
    )]
    NoStream {
        /// The server.
        server: String,
        /// The subject.
        subject: String,
    },
    /// The server refused a message.
    #[error(transparent)]
    Publish(crate::run::RunError),
}

impl PublishError {
    /// Whether the command line was at fault (exit 2) rather than the work (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PublishError::Address(_) | PublishError::BatchSize | PublishError::Nothing
        )
    }
}

/// What was published.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Records.
    pub records: usize,
    /// Messages stored by the stream.
    pub messages: u64,
    /// Inputs read.
    pub inputs: usize,
}

/// Runs `pipe publish`: every input split into messages, each stored by the stream
/// before this returns.
pub fn run(args: &PublishArgs) -> Result<Published, PublishError> {
    let to: SubjectUrl = args.to.parse().map_err(PublishError::Address)?;
    if args.batch_size == 0 {
        return Err(PublishError::BatchSize);
    }
    if args.files.is_empty() && args.create_stream.is_none() {
        return Err(PublishError::Nothing);
    }
    let (fatal_tx, fatal_rx) = unbounded();
    let bridge = Bridge::connect(&to.server, args.creds.as_deref(), fatal_tx)?;
    if let Some(stream) = &args.create_stream {
        bridge.check_stream(stream, &to.subject, true)?;
    }
    let mut records = 0usize;
    for name in &args.files {
        let data = read_input(name)?;
        let format = args
            .format
            .or_else(|| {
                (name != "-")
                    .then(|| Format::from_path(Path::new(name)))
                    .flatten()
            })
            .unwrap_or(Format::Csv);
        let chunks = match format {
            Format::Csv => split_csv(&data, args.batch_size),
            Format::Jsonl => split_jsonl(&data, args.batch_size),
        };
        if chunks.is_empty() {
            tracing::warn!("{name}: no records; nothing published");
        }
        for c in chunks {
            if let Ok(e) = fatal_rx.try_recv() {
                bridge.close();
                return Err(explain(e, &to));
            }
            records += c.records;
            bridge.publish(PublishJob {
                subject: to.subject.clone(),
                msg_id: None,
                headers: vec![
                    (HEADER_INPUT, name.clone()),
                    (HEADER_LINE, c.line.to_string()),
                    (HEADER_FORMAT, format.to_string()),
                ],
                payload: Some(Bytes::from(c.body)),
                ack: None,
            });
        }
    }
    let closed = bridge.close();
    if let Ok(e) = fatal_rx.try_recv() {
        return Err(explain(e, &to));
    }
    Ok(Published {
        records,
        messages: closed.published,
        inputs: args.files.len(),
    })
}

/// A publish error, with what to do when no stream takes the subject.
fn explain(e: crate::run::RunError, to: &SubjectUrl) -> PublishError {
    let text = e.to_string();
    if text.contains("no responders") || text.contains("no stream found") {
        PublishError::NoStream {
            server: to.server.clone(),
            subject: to.subject.clone(),
        }
    } else {
        PublishError::Publish(e)
    }
}

fn read_input(name: &str) -> Result<Vec<u8>, PublishError> {
    let read = if name == "-" {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).map(|_| data)
    } else {
        std::fs::read(name)
    };
    read.map_err(|source| PublishError::Read {
        input: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_cut_at_records_with_the_header_repeated() {
        let data = b"id,note\n1,a\n2,\"two\nlines\"\n3,c\n4,d\n";
        let c = split_csv(data, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].body, b"id,note\n1,a\n2,\"two\nlines\"\n");
        assert_eq!((c[0].line, c[0].records), (2, 2));
        assert_eq!(c[1].body, b"id,note\n3,c\n4,d\n");
        assert_eq!((c[1].line, c[1].records), (5, 2));
        assert!(split_csv(b"id,note\n", 2).is_empty());
    }

    #[test]
    fn jsonl_is_cut_at_lines_and_keeps_blank_lines_inside() {
        let data = b"{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}";
        let c = split_jsonl(data, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].body, b"{\"a\":1}\n\n{\"a\":2}\n");
        assert_eq!((c[0].line, c[0].records), (1, 2));
        assert_eq!(c[1].body, b"{\"a\":3}");
        assert_eq!((c[1].line, c[1].records), (4, 1));
    }
}
