//! The `input` and `output` keys of a pipeline when they name a JetStream stream, and
//! the `nats://HOST:PORT/SUBJECT` addresses of `pipe publish`.
//!
//! `input` and `output` were format names (`input = "jsonl"`), and still are: a string is
//! a format, a table is an endpoint. So one key says where records come from and how they
//! are encoded, and an old config keeps its meaning:
//!
//! ```toml
//! [pipelines.clean]
//! input  = { nats = "nats://127.0.0.1:4222", stream = "ORDERS", durable = "clean" }
//! output = { nats = "nats://127.0.0.1:4222", stream = "CLEAN", subject = "clean.orders" }
//! ```
//!
//! The table is parsed with its own `deny_unknown_fields` struct (not `#[serde(untagged)]`,
//! whose one error, "data did not match any variant", names no key), so a typo in a key
//! is reported with its name, line and column like everywhere else in the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pipe_sdk::codec::Format;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::PipelinePlan;

/// The `input` key: a format, or a JetStream stream to consume.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKey {
    /// `input = "csv"`: stdin or files in this format.
    Format(Format),
    /// `input = { nats = ..., stream = ... }`.
    JetStream(JetStreamInputConfig),
}

/// The `output` key: a format, or a JetStream stream to publish to.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKey {
    /// `output = "jsonl"`: stdout or `-o` in this format.
    Format(Format),
    /// `output = { nats = ..., stream = ..., subject = ... }`.
    JetStream(JetStreamOutputConfig),
}

impl InputKey {
    /// The record format this key sets, if any.
    pub fn format(&self) -> Option<Format> {
        match self {
            InputKey::Format(f) => Some(*f),
            InputKey::JetStream(j) => j.format,
        }
    }

    /// The stream to consume, if the input is one.
    pub fn jetstream(&self) -> Option<&JetStreamInputConfig> {
        match self {
            InputKey::JetStream(j) => Some(j),
            InputKey::Format(_) => None,
        }
    }
}

impl OutputKey {
    /// The record format this key sets, if any.
    pub fn format(&self) -> Option<Format> {
        match self {
            OutputKey::Format(f) => Some(*f),
            OutputKey::JetStream(j) => j.format,
        }
    }

    /// The stream to publish to, if the output is one.
    pub fn jetstream(&self) -> Option<&JetStreamOutputConfig> {
        match self {
            OutputKey::JetStream(j) => Some(j),
            OutputKey::Format(_) => None,
        }
    }
}

/// `input = { nats = ..., ... }`: consume a stream through a durable pull consumer shared
/// by every `pipe run` that names the same `durable`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamInputConfig {
    /// Server URL, `nats://HOST:PORT` (several separated by commas).
    pub nats: String,
    /// The stream to read.
    pub stream: String,
    /// Only messages on this subject (wildcards allowed); default: the whole stream.
    pub subject: Option<String>,
    /// The durable consumer's name: instances with the same name share the work. Default
    /// `pipe-<pipeline name>`.
    pub durable: Option<String>,
    /// A NATS credentials file (relative to the config file).
    pub creds: Option<PathBuf>,
    /// Format of message bodies without a `Pipe-Format` header (default csv).
    pub format: Option<Format>,
    /// How long the server waits for an ack before redelivering, in ms (default 30000).
    /// Only used when the consumer is created; in-flight messages get progress acks.
    pub ack_wait_ms: Option<u64>,
    /// Messages this instance holds unacknowledged at most (default 64).
    pub max_in_flight: Option<usize>,
    /// End the run (exit 0) once the consumer has nothing left: no message pending and
    /// none unacknowledged by any instance. Default false: run until stopped.
    #[serde(default)]
    pub stop_when_empty: bool,
}

/// `output = { nats = ..., ... }`: publish one message per batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamOutputConfig {
    /// Server URL, `nats://HOST:PORT`.
    pub nats: String,
    /// The stream that must take the messages (checked at start).
    pub stream: String,
    /// The subject to publish on; it must be one of the stream's subjects.
    pub subject: String,
    /// A NATS credentials file (relative to the config file).
    pub creds: Option<PathBuf>,
    /// Message body format (default: the input's).
    pub format: Option<Format>,
}

/// The resolved JetStream input of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamInput {
    /// Server URL(s).
    pub url: String,
    /// The stream.
    pub stream: String,
    /// Filter subject.
    pub subject: Option<String>,
    /// The durable consumer.
    pub durable: String,
    /// Credentials file, resolved against the config file.
    pub creds: Option<PathBuf>,
    /// Format of bodies without a `Pipe-Format` header.
    pub format: Format,
    /// Redelivery delay of unacknowledged messages.
    pub ack_wait: Duration,
    /// Messages held at most.
    pub max_in_flight: usize,
    /// Stop once the consumer has nothing left.
    pub stop_when_empty: bool,
}

/// The resolved JetStream output of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamOutput {
    /// Server URL(s).
    pub url: String,
    /// The stream.
    pub stream: String,
    /// The subject.
    pub subject: String,
    /// Credentials file, resolved against the config file.
    pub creds: Option<PathBuf>,
}

/// A plan's JetStream endpoints (both `None` for a plain run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoints {
    /// Where records come from, when a stream.
    pub input: Option<JetStreamInput>,
    /// Where records go, when a stream.
    pub output: Option<JetStreamOutput>,
}

impl Endpoints {
    /// Resolves the keys of pipeline `pipeline` against the config's directory `base`.
    /// `Err` is a message for the config error (the caller adds the file).
    pub fn resolve(
        pipeline: &str,
        base: &std::path::Path,
        input: Option<&InputKey>,
        output: Option<&OutputKey>,
    ) -> Result<Endpoints, String> {
        let input = match input.and_then(InputKey::jetstream) {
            None => None,
            Some(j) => {
                let at = |what: &str| format!("pipelines.{pipeline}.input: {what}");
                check_url(&j.nats).map_err(|e| at(&e))?;
                let ack_wait = j.ack_wait_ms.unwrap_or(30_000);
                if ack_wait < 100 {
                    return Err(at("ack_wait_ms must be at least 100"));
                }
                let max_in_flight = j.max_in_flight.unwrap_or(64);
                if max_in_flight == 0 {
                    return Err(at("max_in_flight must be at least 1"));
                }
                let durable = j
                    .durable
                    .clone()
                    .unwrap_or_else(|| format!("pipe-{pipeline}"));
                if durable.is_empty() || durable.contains(['.', '*', '>', ' ']) {
                    return Err(at(&format!(
                        "durable `{durable}` must be a plain name (no `.`, `*`, `>` or spaces)"
                    )));
                }
                Some(JetStreamInput {
                    url: j.nats.clone(),
                    stream: j.stream.clone(),
                    subject: j.subject.clone(),
                    durable,
                    creds: j.creds.as_ref().map(|c| base.join(c)),
                    format: j.format.unwrap_or(Format::Csv),
                    ack_wait: Duration::from_millis(ack_wait),
                    max_in_flight,
                    stop_when_empty: j.stop_when_empty,
                })
            }
        };
        let output = match output.and_then(OutputKey::jetstream) {
            None => None,
            Some(j) => {
                let at = |what: &str| format!("pipelines.{pipeline}.output: {what}");
                check_url(&j.nats).map_err(|e| at(&e))?;
                if j.subject.is_empty() || j.subject.contains(['*', '>', ' ']) {
                    return Err(at(&format!(
                        "subject `{}` must be one plain subject (no wildcards)",
                        j.subject
                    )));
                }
                Some(JetStreamOutput {
                    url: j.nats.clone(),
                    stream: j.stream.clone(),
                    subject: j.subject.clone(),
                    creds: j.creds.as_ref().map(|c| base.join(c)),
                })
            }
        };
        Ok(Endpoints { input, output })
    }
}

/// Checks that `url` looks like `nats://HOST:PORT` (or a comma-separated list of them),
/// so that a typo is reported with the config rather than as a connection failure.
pub fn check_url(url: &str) -> Result<(), String> {
    for one in url.split(',') {
        let one = one.trim();
        let rest = one
            .strip_prefix("nats://")
            .or_else(|| one.strip_prefix("tls://"))
            .ok_or_else(|| {
                format!("`{one}` is not a NATS URL: write it as nats://HOST:PORT (e.g. nats://127.0.0.1:4222)")
            })?;
        let host_port = rest.rsplit('@').next().unwrap_or(rest);
        if host_port.is_empty() || host_port.contains('/') {
            return Err(format!(
                "`{one}` is not a NATS URL: write it as nats://HOST:PORT, with no path"
            ));
        }
        if let Some((_, port)) = host_port.rsplit_once(':') {
            if port.parse::<u16>().is_err() {
                return Err(format!("`{one}`: the port `{port}` is not a number"));
            }
        }
    }
    Ok(())
}

/// A `nats://HOST:PORT/SUBJECT` address (`pipe publish --to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectUrl {
    /// `nats://HOST:PORT`.
    pub server: String,
    /// The subject.
    pub subject: String,
}

/// A `nats://HOST:PORT/SUBJECT` address that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{address}` is not a NATS subject address: {why}")]
pub struct AddressError {
    /// What was given.
    pub address: String,
    /// Why.
    pub why: String,
}

impl std::str::FromStr for SubjectUrl {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<SubjectUrl, AddressError> {
        let bad = |why: &str| AddressError {
            address: s.to_string(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix("nats://")
            .ok_or_else(|| bad("it must start with nats://"))?;
        let (host, subject) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no subject: write nats://HOST:PORT/SUBJECT"))?;
        if subject.is_empty() || subject.contains(['*', '>', ' ', '/']) {
            return Err(bad(
                "the subject must be one plain subject such as `orders.in`",
            ));
        }
        let server = format!("nats://{host}");
        check_url(&server).map_err(|e| bad(&e))?;
        Ok(SubjectUrl {
            server,
            subject: subject.to_string(),
        })
    }
}

impl fmt::Display for SubjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.server, self.subject)
    }
}

/// A string or a table: see the module docs.
struct KeyVisitor<T>(&'static str, std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for KeyVisitor<T> {
    type Value = Result<Format, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a format (\"csv\" or \"jsonl\") or a table such as {{ nats = \"nats://127.0.0.1:4222\", stream = \"NAME\"{} }}",
            self.0
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.parse::<Format>().map(Ok).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Err)
    }
}

impl<'de> Deserialize<'de> for InputKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InputKey, D::Error> {
        d.deserialize_any(KeyVisitor::<JetStreamInputConfig>(
            ", durable = \"NAME\"",
            std::marker::PhantomData,
        ))
        .map(|r| r.map_or_else(InputKey::JetStream, InputKey::Format))
    }
}

impl<'de> Deserialize<'de> for OutputKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OutputKey, D::Error> {
        d.deserialize_any(KeyVisitor::<JetStreamOutputConfig>(
            ", subject = \"SUBJECT\"",
            std::marker::PhantomData,
        ))
        .map(|r| r.map_or_else(OutputKey::JetStream, OutputKey::Format))
    }
}

/// The input names of a run whose pipeline reads a stream: one label for the stream
/// (messages add their own inputs as they come). `None` for other pipelines. Refused:
/// `-o` when the output is a stream; with a stream input, files on the command line
/// (the stream is the input), and `-o FILE`, which appears
/// only when the run ends, while messages are acknowledged as their records are
/// written (a run killed before the end would have acknowledged records it never
/// delivered).
pub fn resolve_inputs(
    plan: &PipelinePlan,
    files: &[String],
    output: Option<&Path>,
) -> Result<Option<Vec<String>>, String> {
    if let (Some(out), Some(f)) = (&plan.jetstream.output, output) {
        return Err(format!(
            "pipeline `{}` writes to stream `{}` on {} (its `output`): -o {} has no place \
             in it",
            plan.name,
            out.stream,
            out.url,
            f.display()
        ));
    }
    let Some(input) = &plan.jetstream.input else {
        return Ok(None);
    };
    if !files.is_empty() {
        return Err(format!(
            "pipeline `{}` reads stream `{}` on {} (its `input`): give no input files ({})",
            plan.name,
            input.stream,
            input.url,
            files.join(" ")
        ));
    }
    if let Some(f) = output {
        return Err(format!(
            "pipeline `{}` reads stream `{}`, whose messages are acknowledged as their \
             records are written, but -o {} appears only when the run ends: write to \
             stdout (`> {}`) or to an output stream",
            plan.name,
            input.stream,
            f.display(),
            f.display()
        ));
    }
    Ok(Some(vec![format!("{}/{}", input.url, input.stream)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        input: InputKey,
        output: Option<OutputKey>,
    }

    #[test]
    fn a_string_is_still_a_format() {
        let d: Doc = toml::from_str("input = \"jsonl\"\noutput = \"csv\"").unwrap();
        assert_eq!(d.input, InputKey::Format(Format::Jsonl));
        assert_eq!(d.output, Some(OutputKey::Format(Format::Csv)));
    }

    #[test]
    fn a_table_is_a_stream() {
        let d: Doc = toml::from_str(
            "input = { nats = \"nats://127.0.0.1:4222\", stream = \"IN\", durable = \"w\", stop_when_empty = true }",
        )
        .unwrap();
        let j = d.input.jetstream().unwrap();
        assert_eq!(j.stream, "IN");
        assert!(j.stop_when_empty);
        let e = Endpoints::resolve("p", std::path::Path::new("."), Some(&d.input), None).unwrap();
        let i = e.input.unwrap();
        assert_eq!(i.durable, "w");
        assert_eq!(i.max_in_flight, 64);
    }

    #[test]
    fn a_typo_in_a_key_is_named() {
        let e = toml::from_str::<Doc>(
            "input = { nats = \"nats://127.0.0.1:4222\", stream = \"IN\", durabel = \"w\" }",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("durabel"), "{e}");
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("nats://a:1,nats://b:2").is_ok());
        assert!(check_url("http://127.0.0.1:4222")
            .unwrap_err()
            .contains("nats://HOST:PORT"));
        assert!(check_url("nats://127.0.0.1:port")
            .unwrap_err()
            .contains("port"));
        let a: SubjectUrl = "nats://127.0.0.1:4222/orders.in".parse().unwrap();
        assert_eq!(a.server, "nats://127.0.0.1:4222");
        assert_eq!(a.subject, "orders.in");
        assert!("nats://127.0.0.1:4222".parse::<SubjectUrl>().is_err());
        assert!("nats://h:1/a.*".parse::<SubjectUrl>().is_err());
    }
}
