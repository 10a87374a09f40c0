//! `pipe publish FILES... --to nats://HOST:PORT/SUBJECT`: splits inputs into batch
//! messages for `pipe run` instances to share.
//!
//! Messages are cut at record boundaries from the input's own bytes as it streams by (a
//! CSV record may span lines inside quotes: see `Splitter`), so memory holds one message
//! whatever the input's size, nothing is re-encoded, and every CSV message repeats the
//! input's header line(s) so it can be read on its own. Each carries `Pipe-Input` (the
//! file as named), `Pipe-Line` (its first record's line there) and `Pipe-Format`, so the
//! worker that reads it names `orders.csv:5003` in errors and dead letters.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;
use crossbeam_channel::unbounded;
use pipe_sdk::codec::Format;

use super::client::{Bridge, PublishJob};
use super::{JetStreamError, HEADER_FORMAT, HEADER_INPUT, HEADER_LINE};
use crate::config::stream::SubjectUrl;

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

/// Cuts an input into messages of `n` records as it is read, so memory holds one
/// message, whatever the input's size.
///
/// CSV: a record ends at a line end outside quotes. Each `"` flips "inside quotes" (an
/// escaped `""` flips twice), which is how RFC 4180 quoting nests; a quote left open runs
/// to the end of the input, as one record, and the worker reports it. The first record is
/// the header, repeated at the head of every message. JSON lines: a record is a line;
/// blank lines are kept inside a message (so lines stay where they were) but are not
/// counted.
struct Splitter<R> {
    input: R,
    format: Format,
    n: usize,
    /// The CSV header's bytes, once read.
    header: Option<Vec<u8>>,
    /// Lines read so far.
    line: u64,
    /// One physical line, reused.
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> Splitter<R> {
    fn new(input: R, format: Format, n: usize) -> Self {
        Splitter {
            input,
            format,
            n,
            header: None,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// Appends the next record's bytes to `out` and returns its first line; `None` at
    /// the end. Blank JSON lines before it are appended too.
    fn record(&mut self, out: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
        let mut first = None;
        let mut in_quotes = false;
        loop {
            self.buf.clear();
            if self.input.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(first);
            }
            self.line += 1;
            out.extend_from_slice(&self.buf);
            match self.format {
                Format::Jsonl => {
                    if !self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(Some(self.line));
                    }
                }
                Format::Csv => {
                    first.get_or_insert(self.line);
                    in_quotes ^= self.buf.iter().filter(|&&b| b == b'"').count() % 2 == 1;
                    if !in_quotes {
                        return Ok(first);
                    }
                }
            }
        }
    }

    /// The next message; `None` once the input is used up.
    fn next_chunk(&mut self) -> std::io::Result<Option<Chunk>> {
        if self.format == Format::Csv && self.header.is_none() {
            let mut h = Vec::new();
            if self.record(&mut h)?.is_none() {
                return Ok(None);
            }
            self.header = Some(h);
        }
        let mut body = self.header.clone().unwrap_or_default();
        let head = body.len();
        let mut line = None;
        let mut records = 0;
        while records < self.n {
            let before = body.len();
            match self.record(&mut body)? {
                Some(l) => {
                    line.get_or_insert(l);
                    records += 1;
                }
                None => {
                    body.truncate(before.max(head)); // trailing blank lines
                    break;
                }
            }
        }
        Ok(line.map(|line| Chunk {
            body,
            line,
            records,
        }))
    }
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
    let to: SubjectUrl = args
        .to
        .parse()
        .map_err(|e: crate::config::stream::AddressError| PublishError::Address(e.into()))?;
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
        let read_err = |source| PublishError::Read {
            input: name.clone(),
            source,
        };
        let input: Box<dyn std::io::Read> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(name).map_err(read_err)?)
        };
        let format = args
            .format
            .or_else(|| {
                (name != "-")
                    .then(|| Format::from_path(Path::new(name)))
                    .flatten()
            })
            .unwrap_or(Format::Csv);
        let mut split = Splitter::new(
            std::io::BufReader::with_capacity(1 << 16, input),
            format,
            args.batch_size,
        );
        let mut any = false;
        while let Some(c) = split.next_chunk().map_err(read_err)? {
            any = true;
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
        if !any {
            tracing::warn!("{name}: no records; nothing published");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], format: Format, n: usize) -> Vec<Chunk> {
        let mut s = Splitter::new(data, format, n);
        std::iter::from_fn(|| s.next_chunk().unwrap()).collect()
    }

    #[test]
    fn csv_is_cut_at_records_with_the_header_repeated() {
        let data = b"id,note\n1,a\n2,\"two\nlines\"\n3,\"say \"\"hi\"\"\"\n4,d";
        let c = split(data, Format::Csv, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].body, b"id,note\n1,a\n2,\"two\nlines\"\n");
        assert_eq!((c[0].line, c[0].records), (2, 2));
        assert_eq!(c[1].body, b"id,note\n3,\"say \"\"hi\"\"\"\n4,d");
        assert_eq!((c[1].line, c[1].records), (5, 2));
        assert!(split(b"id,note\n", Format::Csv, 2).is_empty());
        assert!(split(b"", Format::Csv, 2).is_empty());
    }

    #[test]
    fn csv_cuts_agree_with_the_reader_that_reads_them() {
        // Messages are cut where the host's own CSV reader sees records start, so the
        // lines a worker reports are the lines of the file.
        let data = "a,b\n1,\"x\ny\"\n2,\"\"\"\"\n3,\"p,q\"\r\n4,z\n";
        let mut reader = pipe_sdk::codec::reader(Format::Csv, data.as_bytes(), 0);
        let mut batch = pipe_sdk::Batch::new();
        reader.read_batch(&mut batch, 100, &mut Vec::new()).unwrap();
        let lines: Vec<u64> = batch.rows().map(|r| r.pos().line).collect();
        let ours: Vec<u64> = split(data.as_bytes(), Format::Csv, 1)
            .iter()
            .map(|c| c.line)
            .collect();
        assert_eq!(ours, lines);
        assert_eq!(ours, [2, 4, 5, 6]);
    }

    #[test]
    fn jsonl_is_cut_at_lines_and_keeps_blank_lines_inside() {
        let data = b"{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}\n\n";
        let c = split(data, Format::Jsonl, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].body, b"{\"a\":1}\n\n{\"a\":2}\n");
        assert_eq!((c[0].line, c[0].records), (1, 2));
        assert_eq!(c[1].body, b"{\"a\":3}\n");
        assert_eq!((c[1].line, c[1].records), (4, 1));
    }
}
