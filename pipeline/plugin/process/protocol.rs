//! The protocol's messages on the host side: requests encoded from batches, the
//! reader thread that cuts a child's stdout into messages, and the checks that turn a
//! reply into output rows and rejects (the protocol itself is described in `mod.rs`).

use std::io::{self, BufRead, BufReader, Read, Write};

use crossbeam_channel::Sender;
use pipe_sdk::abi::StageError;
use pipe_sdk::codec::{self, Format};
use pipe_sdk::{Batch, Output};
use serde::Deserialize;

use super::failed;

/// The longest line the host reads from a child; a longer one is garbage.
const LINE_LIMIT: u64 = 1 << 30;

/// A message line from a child, with every key the protocol knows; the context decides
/// which must be there.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Header {
    pub(super) pipe: Option<u64>,
    pub(super) name: Option<String>,
    pub(super) version: Option<String>,
    pub(super) description: Option<String>,
    pub(super) stateful: Option<bool>,
    pub(super) batch: Option<u64>,
    pub(super) end: Option<bool>,
    pub(super) rows: Option<u64>,
    pub(super) rejects: Option<Vec<RejectMsg>>,
    pub(super) from: Option<Vec<u64>>,
    pub(super) error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RejectMsg {
    pub(super) row: u64,
    pub(super) reason: String,
}

/// A header line from a child and the `rows` record lines after it.
pub(super) struct Message {
    pub(super) header: Header,
    /// The header line, shortened, for messages.
    pub(super) line: String,
    pub(super) body: Vec<u8>,
    pub(super) rows: usize,
}

/// What the reader thread hands over.
pub(super) enum Frame {
    /// A message (boxed: it is much larger than the other variants).
    Message(Box<Message>),
    /// Something that is not the protocol; the reader stopped.
    Garbage(String),
    /// The child's stdout closed.
    Closed,
}

/// Why a reply cannot be used.
pub(super) enum Verdict {
    /// The stage failed the batch itself (`error`): the child is fine.
    Refused(String),
    /// The reply breaks the protocol: the child cannot be trusted any more.
    Garbage(String),
}

/// The reader thread: cuts the child's stdout into messages (a header line and the
/// record lines it announces).
pub(super) fn read_frames(stdout: std::process::ChildStdout, frames: Sender<Frame>) {
    let mut r = BufReader::with_capacity(1 << 16, stdout);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match read_line(&mut r, &mut line) {
            Ok(0) | Err(_) => {
                let _ = frames.send(Frame::Closed);
                return;
            }
            Ok(_) => {}
        }
        let text = trim_eol(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let header: Header = match serde_json::from_slice(text) {
            Ok(h) => h,
            Err(e) => {
                let _ = frames.send(Frame::Garbage(format!(
                    "wrote `{}` on its stdout, which is not a protocol message ({e}); \
                     write messages to stderr, not stdout",
                    shorten(text)
                )));
                return;
            }
        };
        let rows = header.rows.unwrap_or(0) as usize;
        let mut body = Vec::new();
        for _ in 0..rows {
            match read_line(&mut r, &mut body) {
                Ok(0) | Err(_) => {
                    let _ = frames.send(Frame::Closed);
                    return;
                }
                Ok(n) if n as u64 >= LINE_LIMIT => {
                    let _ = frames.send(Frame::Garbage(format!(
                        "wrote a line longer than {LINE_LIMIT} bytes"
                    )));
                    return;
                }
                Ok(_) => {}
            }
        }
        let msg = Frame::Message(Box::new(Message {
            header,
            line: shorten(text),
            body,
            rows,
        }));
        if frames.send(msg).is_err() {
            return;
        }
    }
}

pub(super) fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    r.take(LINE_LIMIT).read_until(b'\n', buf)
}

pub(super) fn trim_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

pub(super) fn shorten(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(text);
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.into_owned(),
    }
}

/// A batch request: the header line and one JSON line per record.
pub(super) fn encode_batch(id: u64, input: &Batch) -> Result<Vec<u8>, StageError> {
    let mut buf = Vec::with_capacity(input.data_len() * 2 + 64);
    let _ = writeln!(buf, "{{\"batch\":{id},\"rows\":{}}}", input.len());
    let mut w = codec::writer(Format::Jsonl, &mut buf);
    w.write_batch(input)
        .and_then(|()| w.flush().map_err(codec::WriteError::Io))
        .map_err(|e| failed(format!("cannot encode the batch for the child: {e}")))?;
    drop(w);
    Ok(buf)
}

/// Parses `rows` JSON lines from a reply into a batch.
pub(super) fn parse_rows(body: &[u8], rows: usize) -> Result<Batch, String> {
    let mut batch = Batch::new();
    if rows == 0 {
        return Ok(batch);
    }
    let mut bad = Vec::new();
    codec::reader(Format::Jsonl, body, 0)
        .read_batch(&mut batch, rows, &mut bad)
        .map_err(|e| format!("sent rows that cannot be read: {e}"))?;
    if let Some(b) = bad.first() {
        return Err(format!(
            "sent a row that is not a JSON object (row {} of its reply: {})",
            b.pos.line, b.reason
        ));
    }
    if batch.len() != rows {
        return Err(format!(
            "announced {rows} rows but sent {} (blank lines are not rows)",
            batch.len()
        ));
    }
    Ok(batch)
}

/// Checks a reply to batch `id` and writes its rows and rejects to `out`.
pub(super) fn batch_reply(
    id: u64,
    input: &Batch,
    reply: Message,
    out: &mut Output,
) -> Result<(), Verdict> {
    let Message {
        header,
        line,
        body,
        rows,
    } = reply;
    if header.batch != Some(id) || header.end.is_some() {
        return Err(Verdict::Garbage(format!(
            "answered `{line}` where the reply to batch {id} was due \
             ({{\"batch\": {id}, \"rows\": N}} and N records)"
        )));
    }
    if let Some(e) = header.error {
        return Err(Verdict::Refused(e));
    }
    let garbage = |m: String| Verdict::Garbage(m);
    let n = input.len();
    let mut rejected = vec![false; n];
    for r in header.rejects.as_deref().unwrap_or_default() {
        let Some(flag) = rejected.get_mut(r.row as usize) else {
            return Err(garbage(format!(
                "rejected row {} of a batch of {n} rows",
                r.row
            )));
        };
        *flag = true;
        out.reject(input.row(r.row as usize), &r.reason);
    }
    let parsed = parse_rows(&body, rows).map_err(garbage)?;
    let sources: Vec<Option<usize>> = match &header.from {
        Some(from) => {
            if from.len() != rows {
                return Err(garbage(format!(
                    "gave `from` for {} rows but sent {rows}",
                    from.len()
                )));
            }
            let mut v = Vec::with_capacity(rows);
            for &i in from {
                if i as usize >= n {
                    return Err(garbage(format!(
                        "said a row comes `from` row {i} of a batch of {n} rows"
                    )));
                }
                v.push(Some(i as usize));
            }
            v
        }
        None => {
            let kept: Vec<usize> = (0..n).filter(|&i| !rejected[i]).collect();
            if kept.len() == rows {
                kept.into_iter().map(Some).collect()
            } else {
                vec![None; rows]
            }
        }
    };
    out.columns(parsed.columns());
    for (i, source) in sources.into_iter().enumerate() {
        let row = parsed.row(i);
        let mut w = match source {
            Some(s) => out.row(input.row(s)),
            None => out.new_row(),
        };
        for c in 0..parsed.width() {
            w.copy(row, c);
        }
    }
    Ok(())
}

/// Writes the rows of an end-of-stream reply (made by the stage: no input position).
pub(super) fn end_rows(body: &[u8], rows: usize, out: &mut Output) -> Result<(), String> {
    let parsed =
        parse_rows(body, rows).map_err(|m| format!("its child process, at the end: {m}"))?;
    out.columns(parsed.columns());
    for row in parsed.rows() {
        let mut w = out.new_row();
        for c in 0..parsed.width() {
            w.copy(row, c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::{Pos, Value};

    fn input() -> Batch {
        let mut b = Batch::with_columns(["id", "country"]);
        for (i, c) in ["de", "??", "fr"].iter().enumerate() {
            b.start_row(Pos {
                input: 0,
                line: i as u64 + 2,
            });
            b.push_value(Value::Int(i as i64 + 1));
            b.push_str(c);
            b.end_row().unwrap();
        }
        b
    }

    fn message(header: &str, body: &str) -> Message {
        let header: Header = serde_json::from_str(header).unwrap();
        let rows = header.rows.unwrap_or(0) as usize;
        Message {
            header,
            line: String::new(),
            body: body.as_bytes().to_vec(),
            rows,
        }
    }

    #[test]
    fn batches_go_out_as_a_header_and_json_lines() {
        let text = String::from_utf8(encode_batch(7, &input()).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"batch\":7,\"rows\":3}\n{\"id\":1,\"country\":\"de\"}\n\
             {\"id\":2,\"country\":\"??\"}\n{\"id\":3,\"country\":\"fr\"}\n"
        );
    }

    #[test]
    fn rows_keep_the_position_of_the_input_rows_left_after_rejects() {
        let mut out = Output::new();
        let reply = message(
            r#"{"batch":1,"rows":2,"rejects":[{"row":1,"reason":"unknown"}]}"#,
            "{\"id\":1,\"region\":\"EU\"}\n{\"id\":3,\"region\":\"EU\"}\n",
        );
        assert!(batch_reply(1, &input(), reply, &mut out).is_ok());
        let b = out.batch();
        assert_eq!(b.columns().collect::<Vec<_>>(), ["id", "region"]);
        assert_eq!(b.row(1).get("id"), Value::Int(3));
        assert_eq!(b.row(1).pos().line, 4);
        assert_eq!(out.rejects().len(), 1);
        assert_eq!(out.rejects()[0].row, 1);
    }

    #[test]
    fn from_gives_positions_and_unknown_counts_give_none() {
        let mut out = Output::new();
        let reply = message(r#"{"batch":1,"rows":1,"from":[2]}"#, "{\"id\":3}\n");
        assert!(batch_reply(1, &input(), reply, &mut out).is_ok());
        assert_eq!(out.batch().row(0).pos().line, 4);
        let mut out = Output::new();
        let reply = message(r#"{"batch":1,"rows":1}"#, "{\"id\":3}\n");
        assert!(batch_reply(1, &input(), reply, &mut out).is_ok());
        assert_eq!(out.batch().row(0).pos().line, 0);
    }

    #[test]
    fn replies_that_break_the_protocol_are_garbage() {
        let cases = [
            (r#"{"batch":2,"rows":0}"#, "", "reply to batch 1"),
            (r#"{"id":1}"#, "", "reply to batch 1"),
            (r#"{"batch":1,"rows":1}"#, "[1]\n", "not a JSON object"),
            (r#"{"batch":1,"rows":2}"#, "{}\n\n", "announced 2 rows"),
            (
                r#"{"batch":1,"rows":0,"rejects":[{"row":9,"reason":"x"}]}"#,
                "",
                "rejected row 9",
            ),
            (r#"{"batch":1,"rows":1,"from":[5]}"#, "{}\n", "from"),
        ];
        for (header, body, expected) in cases {
            let mut out = Output::new();
            match batch_reply(1, &input(), message(header, body), &mut out) {
                Err(Verdict::Garbage(m)) => assert!(m.contains(expected), "{header}: {m}"),
                _ => panic!("{header}: accepted"),
            }
        }
        let mut out = Output::new();
        match batch_reply(
            1,
            &input(),
            message(r#"{"batch":1,"error":"no"}"#, ""),
            &mut out,
        ) {
            Err(Verdict::Refused(m)) => assert_eq!(m, "no"),
            _ => panic!("an error reply is the stage's verdict"),
        }
    }
}
