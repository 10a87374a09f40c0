//! Process stages (issue 6): a stage that runs as a child process, in any language,
//! speaking JSON lines over its stdin and stdout. The runtime sees an ordinary stage
//! instance ([`StageBox`]); each instance owns one child, so `workers = N` runs N children
//! and order, accounting and error policies are those of `.so` stages.
//!
//! # Protocol, version 1
//!
//! UTF-8, one JSON value per line, each line ending in `\n`. The host writes to the
//! child's stdin and reads its stdout; the child's stderr is free for messages, which the
//! host passes on to its own stderr as `[stage] line`. One request is answered before
//! the next is sent.
//!
//! ```text
//! host → child                                child → host
//! {"pipe":1,"stage":"geo","config":{...}}     {"pipe":1,"name":"geo","version":"1.0.0"}
//!                                               or {"error":"why the config is refused"}
//! {"batch":7,"rows":3}                        {"batch":7,"rows":2,"rejects":[{"row":1,"reason":"..."}]}
//! {"id":1,"country":"de"}                     {"id":1,"country":"de","region":"EU"}
//! {"id":2,"country":"??"}                     {"id":3,"country":"fr","region":"EU"}
//! {"id":3,"country":"fr"}                       or {"batch":7,"error":"why the whole batch failed"}
//! {"end":true}                                {"end":true,"rows":0}   (then exit)
//! ```
//!
//! - **Handshake.** The child answers `pipe` (the protocol version), `name` and `version`,
//!   optionally `description` and `stateful` (true: one worker, every record in order).
//! - **Batches.** A header line with the batch number and the row count, then that many
//!   records. The reply echoes `batch`, gives the row count, then the rows. `rejects`
//!   (optional) sends input rows, by 0-based index in the batch, to the stage's
//!   `on_error` policy with a reason. An `error` reply applies the policy to the whole
//!   batch; the child goes on. Output rows keep the input position (file and line, for
//!   later rejects) of the input row they come from: given by `from` (optional, one input
//!   index per output row), else, when there are as many output rows as input rows not
//!   rejected, the n-th output row comes from the n-th such input row; else unknown.
//! - **End.** `{"end":true}` at the end of the stream; the child may answer with rows (an
//!   aggregate) as for a batch, then exits. Closing stdin without `end` (a hot swap, a
//!   probe at load time, a stop) means: exit now.
//! - Unknown keys are ignored, so later versions can add optional ones.
//!
//! # Isolation
//!
//! A child that exits, crashes, is killed, writes something that is not the protocol on
//! stdout, or does not answer a batch within `timeout_ms` is killed (with its process
//! group); the batch in flight goes to the stage's `on_error` policy and a new child is
//! started before the next batch, after a back-off of 50 ms doubling up to 2 s. After
//! [`MAX_CONSECUTIVE_FAILURES`] failures of one worker's child in a row (starts included)
//! the stage gives up and the run stops with an error naming it ([`ProcessSpec::gave_up`],
//! checked by the runtime). A process stage enforces its own `timeout_ms`, so the
//! runtime's watchdog, which would end the run, leaves it alone.
//!
//! Children never outlive `pipe`: each runs in its own process group (a Ctrl-C in the
//! terminal reaches `pipe`, which drains and ends them in order) with
//! `PR_SET_PDEATHSIG = SIGKILL` on Linux; they are told to end at end of stream, stopped
//! when their instance is dropped, and killed if they do not go within a grace period.
//!
//! # Threads
//!
//! Each child has a writer thread (requests to its stdin), a reader thread (its stdout,
//! cut into replies) and a stderr thread. The worker never blocks on a pipe: a child that
//! stops reading its stdin mid-batch is caught by the timeout like any other hang.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use abi_stable::std_types::{RNone, ROption, RResult, RSlice, RVec};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use pipe_sdk::abi::{ErrorKind, StageBox, StageError, StageObject, StageObject_TO};
use pipe_sdk::codec::{self, Format};
use pipe_sdk::{Batch, Output};
use serde::Deserialize;

use crate::config::{StageKind, StageSpec};
use crate::loader::{self, LoadError, Manifest, Plugin};

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Failures of one worker's child in a row (a failed batch or a failed start) after which
/// the stage gives up and the run stops. A successful reply resets the count.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// The wait before the first restart; it doubles with each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest wait before a restart.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a child may take to start and answer the handshake (or `timeout_ms` if that
/// is longer): interpreters that import large libraries take seconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child told to stop (stdin closed) may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long a child whose stdout closed may take to exit before it is killed (to tell an
/// exit status from a child that only closed its stdout).
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// The longest line the host reads from a child; a longer one is garbage.
const LINE_LIMIT: u64 = 1 << 30;

/// What it takes to start one child of a process stage, shared by all its instances.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The stage's name, for messages and the stderr prefix.
    pub stage: String,
    /// `timeout_ms`: the longest a child may take to answer one batch.
    pub timeout: Option<Duration>,
    /// Set once a worker's child failed [`MAX_CONSECUTIVE_FAILURES`] times in a row.
    gave_up: OnceLock<String>,
}

impl ProcessSpec {
    /// A spec for stage `stage` running `argv`.
    pub fn new(stage: &str, argv: Vec<String>, timeout: Option<Duration>) -> ProcessSpec {
        ProcessSpec {
            argv,
            stage: stage.to_string(),
            timeout,
            gave_up: OnceLock::new(),
        }
    }

    /// Why the stage gave up, once its children failed too often in a row: the runtime
    /// then stops the run with this message (`RunError::Stage`).
    pub fn gave_up(&self) -> Option<&str> {
        self.gave_up.get().map(String::as_str)
    }

    fn handshake_timeout(&self) -> Duration {
        self.timeout
            .map_or(HANDSHAKE_TIMEOUT, |t| t.max(HANDSHAKE_TIMEOUT))
    }

    fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// The file that stands for a process stage's program, hashed, pinned and watched for
/// hot swaps: the first argument that names an existing file (the script of an
/// interpreter: `["python3", "geo.py", "regions.csv"]` is `geo.py`), else the program
/// itself, found on `PATH` when it is a bare name.
pub fn program_file(argv: &[String]) -> Option<PathBuf> {
    if let Some(script) = argv.iter().skip(1).map(Path::new).find(|p| p.is_file()) {
        return Some(script.to_path_buf());
    }
    let program = Path::new(argv.first()?);
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Loads a process stage: finds and checks its program file (trust, `sha256` pin), starts
/// one child to read its handshake, and returns a plugin whose instances are children.
pub fn load(spec: &StageSpec) -> Result<Plugin, LoadError> {
    let StageKind::Command { argv } = &spec.kind else {
        return Err(LoadError::Manifest {
            path: PathBuf::from(spec.plugin_label()),
            message: "not a process stage".into(),
        });
    };
    let path = program_file(argv).ok_or_else(|| LoadError::Io {
        path: PathBuf::from(&argv[0]),
        message: "no such program: not a file, and not found on PATH; fix `command`".into(),
    })?;
    // The same checks as a plugin library for a file the command names; a program found
    // on PATH is the user's own choice, as in their shell.
    if argv.iter().any(|a| Path::new(a) == path) {
        loader::check_trust(&path)?;
    }
    let sha256 = match &spec.sha256 {
        Some(expected) => {
            let actual = loader::file_sha256(&path).map_err(|e| LoadError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if *expected != actual {
                return Err(LoadError::Checksum {
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
            Some(actual)
        }
        None => None,
    };
    let process = Arc::new(ProcessSpec::new(&spec.name, argv.clone(), spec.timeout));
    // The probe child only tells us who it is; instances start their own.
    let (probe, hello) = Child::start(&process, &spec.config_json).map_err(|e| match e {
        StartError::Refused(message) => LoadError::Instance {
            path: path.clone(),
            plugin: spec.name.clone(),
            message: format!("refused its config: {message}"),
        },
        StartError::Spawn(message) => LoadError::Io {
            path: path.clone(),
            message,
        },
        StartError::Handshake(message) => LoadError::Manifest {
            path: path.clone(),
            message,
        },
    })?;
    drop(probe);
    Ok(Plugin::from_process(path, hello, sha256, process))
}

/// Starts one child and handshakes with it: one instance of a process stage.
pub fn spawn(spec: &Arc<ProcessSpec>, config_json: &str) -> Result<StageBox, StageError> {
    if let Some(why) = spec.gave_up() {
        return Err(failed(why.to_string()));
    }
    let (child, _) = Child::start(spec, config_json).map_err(|e| match e {
        StartError::Refused(m) => StageError {
            kind: ErrorKind::Config,
            message: m.into(),
        },
        StartError::Spawn(m) | StartError::Handshake(m) => failed(m),
    })?;
    let stage = ProcessStage {
        spec: spec.clone(),
        config_json: config_json.to_string(),
        child: Some(child),
        failures: 0,
        batches: 0,
    };
    Ok(StageObject_TO::from_value(
        stage,
        abi_stable::sabi_trait::TD_Opaque,
    ))
}

fn failed(message: String) -> StageError {
    StageError {
        kind: ErrorKind::Failed,
        message: message.into(),
    }
}

/// A message line from a child, with every key the protocol knows; the context decides
/// which must be there.
#[derive(Debug, Default, Deserialize)]
struct Header {
    pipe: Option<u64>,
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    stateful: Option<bool>,
    batch: Option<u64>,
    end: Option<bool>,
    rows: Option<u64>,
    rejects: Option<Vec<RejectMsg>>,
    from: Option<Vec<u64>>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RejectMsg {
    row: u64,
    reason: String,
}

/// A header line from a child and the `rows` record lines after it.
struct Message {
    header: Header,
    /// The header line, shortened, for messages.
    line: String,
    body: Vec<u8>,
    rows: usize,
}

/// What the reader thread hands over.
enum Frame {
    /// A message (boxed: it is much larger than the other variants).
    Message(Box<Message>),
    /// Something that is not the protocol; the reader stopped.
    Garbage(String),
    /// The child's stdout closed.
    Closed,
}

/// How a request to a child went wrong.
enum Trouble {
    Closed,
    Garbage(String),
    Timeout(Duration),
}

enum StartError {
    /// The program could not be started.
    Spawn(String),
    /// The child refused its config (`{"error": ...}` in the handshake).
    Refused(String),
    /// No valid handshake.
    Handshake(String),
}

/// One running child and its helper threads.
struct Child {
    os: Option<std::process::Child>,
    pid: u32,
    /// Requests for the writer thread; dropping it closes the child's stdin.
    input: Option<Sender<Vec<u8>>>,
    frames: Receiver<Frame>,
}

impl Child {
    /// Starts a child of `spec` and handshakes with it.
    fn start(spec: &ProcessSpec, config_json: &str) -> Result<(Child, Manifest), StartError> {
        let config: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| StartError::Refused(format!("config is not JSON: {e}")))?;
        let mut child = Child::spawn(spec)?;
        let hello = serde_json::json!({
            "pipe": PROTOCOL_VERSION,
            "stage": spec.stage,
            "config": config,
        });
        let mut line = hello.to_string().into_bytes();
        line.push(b'\n');
        let header = match child.request(line, Some(spec.handshake_timeout())) {
            Ok(Message { header, line, .. }) => {
                if let Some(e) = header.error {
                    return Err(StartError::Refused(e));
                }
                if header.pipe.is_none() || header.name.is_none() || header.version.is_none() {
                    return Err(StartError::Handshake(format!(
                        "answered the handshake with `{line}`; expected \
                         {{\"pipe\": {PROTOCOL_VERSION}, \"name\": ..., \"version\": ...}} \
                         (see \"Process stages\" in the README)"
                    )));
                }
                header
            }
            Err(Trouble::Closed) => {
                let status = child.reap(CLOSE_GRACE);
                return Err(StartError::Handshake(format!(
                    "the program {status} before the handshake (its stderr, if any, is \
                     above with the prefix [{}])",
                    spec.stage
                )));
            }
            Err(Trouble::Garbage(g)) => {
                return Err(StartError::Handshake(format!(
                    "in the handshake, the program {g}"
                )))
            }
            Err(Trouble::Timeout(t)) => {
                return Err(StartError::Handshake(format!(
                    "the program did not answer the handshake within {} s",
                    t.as_secs_f64()
                )))
            }
        };
        if header.pipe != Some(PROTOCOL_VERSION) {
            return Err(StartError::Handshake(format!(
                "the program speaks protocol version {}, but this pipe speaks version \
                 {PROTOCOL_VERSION}",
                header.pipe.unwrap_or(0)
            )));
        }
        let manifest = Manifest {
            name: header.name.unwrap_or_default(),
            version: header.version.unwrap_or_default(),
            description: header.description.unwrap_or_default(),
            stateful: header.stateful.unwrap_or(false),
            sdk_version: format!("process protocol {PROTOCOL_VERSION}"),
        };
        Ok((child, manifest))
    }

    /// Starts the program with its three helper threads.
    fn spawn(spec: &ProcessSpec) -> Result<Child, StartError> {
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            #[cfg(target_os = "linux")]
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // Its own process group: a terminal's Ctrl-C goes to `pipe`, which
                    // ends the children in order; and a kill reaches grandchildren too.
                    if libc::setpgid(0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    #[cfg(target_os = "linux")]
                    {
                        // The signal comes when the *thread* that started the child ends.
                        // Children are started by threads that outlive them: the main
                        // thread, the reload coordinator, or the worker owning the instance.
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        // `pipe` died before the line above: do not run as an orphan.
                        if libc::getppid() != parent {
                            return Err(io::Error::other("pipe has exited"));
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut os = cmd.spawn().map_err(|e| {
            StartError::Spawn(format!(
                "cannot start `{}`: {e}{}",
                spec.command_line(),
                if e.kind() == io::ErrorKind::NotFound {
                    "; is the program installed and on PATH?"
                } else {
                    ""
                }
            ))
        })?;
        let pid = os.id();
        let (stdin, stdout, stderr) = match (os.stdin.take(), os.stdout.take(), os.stderr.take()) {
            (Some(i), Some(o), Some(e)) => (i, o, e),
            _ => {
                let _ = os.kill();
                let _ = os.wait();
                return Err(StartError::Spawn("the child's pipes are missing".into()));
            }
        };
        // Unbounded, so that sending never blocks the worker, even when a child that
        // answered early has not read the previous request yet.
        let (input, requests) = unbounded::<Vec<u8>>();
        let (frames_tx, frames) = bounded::<Frame>(1);
        let name = |what: &str| format!("{}#{pid}-{what}", spec.stage);
        let started = std::thread::Builder::new()
            .name(name("in"))
            .spawn(move || write_requests(stdin, requests))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name(name("out"))
                    .spawn(move || read_frames(stdout, frames_tx))
            })
            .and_then(|_| {
                let prefix = format!("[{}] ", spec.stage);
                std::thread::Builder::new()
                    .name(name("err"))
                    .spawn(move || pass_stderr(stderr, &prefix))
            });
        let child = Child {
            os: Some(os),
            pid,
            input: Some(input),
            frames,
        };
        match started {
            Ok(_) => Ok(child),
            Err(e) => Err(StartError::Spawn(format!("cannot start a thread: {e}"))),
        }
    }

    /// Sends one request and waits for the reply, at most `timeout`.
    fn request(&mut self, bytes: Vec<u8>, timeout: Option<Duration>) -> Result<Message, Trouble> {
        // A failed send means the writer stopped (the child closed its stdin); the reply
        // side then tells what happened.
        if let Some(input) = &self.input {
            let _ = input.send(bytes);
        }
        let frame = match timeout {
            Some(t) => self.frames.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => Trouble::Timeout(t),
                RecvTimeoutError::Disconnected => Trouble::Closed,
            })?,
            None => self.frames.recv().map_err(|_| Trouble::Closed)?,
        };
        match frame {
            Frame::Message(m) => Ok(*m),
            Frame::Garbage(g) => Err(Trouble::Garbage(g)),
            Frame::Closed => Err(Trouble::Closed),
        }
    }

    /// Closes the child's stdin, waits up to `grace` for it to exit, kills it (and its
    /// process group) if it has not, and says how it ended: "exited with status 1".
    fn reap(&mut self, grace: Duration) -> String {
        self.input = None;
        match self.os.take() {
            Some(mut os) => reap(&mut os, grace),
            None => "had already been stopped".into(),
        }
    }
}

impl Drop for Child {
    /// Stops the child without holding up the caller (a worker at a hot swap): its stdin
    /// is closed at once and a helper thread reaps it, killing it after a grace period.
    fn drop(&mut self) {
        self.input = None;
        let Some(mut os) = self.os.take() else {
            return;
        };
        let pid = self.pid;
        let reaper = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || reap(&mut os, EXIT_GRACE));
        if let Err(e) = reaper {
            // No thread to wait in: kill now rather than leave the child behind.
            tracing::debug!("cannot start a thread to stop child {pid}: {e}");
            kill_group(pid);
        }
    }
}

/// Waits up to `grace` for a child whose stdin is closed to exit, then kills it and its
/// process group; says how it ended ("exited with status 1").
fn reap(os: &mut std::process::Child, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        match os.try_wait() {
            Ok(Some(status)) => return describe(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break,
        }
    }
    kill_group(os.id());
    let _ = os.kill();
    match os.wait() {
        Ok(status) if grace.is_zero() => describe(status),
        Ok(_) => format!(
            "did not exit within {} ms and was killed",
            grace.as_millis()
        ),
        Err(e) => format!("could not be waited for ({e})"),
    }
}

fn kill_group(pid: u32) {
    #[cfg(unix)]
    // SAFETY: plain syscall; the group is the child's own (setpgid in pre_exec) and the
    // child is not reaped yet, so its id cannot have been reused.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGPIPE => " (SIGPIPE)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    format!("ended ({status})")
}

/// The writer thread: requests to the child's stdin, in order. Ends (closing the stdin)
/// when the requests end or the child stops reading.
fn write_requests(mut stdin: std::process::ChildStdin, requests: Receiver<Vec<u8>>) {
    for bytes in requests {
        if stdin
            .write_all(&bytes)
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return;
        }
    }
}

/// The reader thread: cuts the child's stdout into messages (a header line and the
/// record lines it announces).
fn read_frames(stdout: std::process::ChildStdout, frames: Sender<Frame>) {
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

fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    r.take(LINE_LIMIT).read_until(b'\n', buf)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn shorten(text: &[u8]) -> String {
    let s = String::from_utf8_lossy(text);
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.into_owned(),
    }
}

/// The stderr thread: the child's stderr, line by line, with the stage's name in front.
fn pass_stderr(stderr: std::process::ChildStderr, prefix: &str) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut r, &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut err = io::stderr().lock();
        let _ = err
            .write_all(prefix.as_bytes())
            .and_then(|()| err.write_all(trim_eol(&line)))
            .and_then(|()| err.write_all(b"\n"));
    }
}

/// One instance of a process stage: a child, restarted after failures.
struct ProcessStage {
    spec: Arc<ProcessSpec>,
    config_json: String,
    /// `None` between a failure and the restart before the next request.
    child: Option<Child>,
    /// Failures in a row (batches and starts).
    failures: u32,
    /// Batches sent, to number them.
    batches: u64,
}

/// Why a reply cannot be used.
enum Verdict {
    /// The stage failed the batch itself (`error`): the child is fine.
    Refused(String),
    /// The reply breaks the protocol: the child cannot be trusted any more.
    Garbage(String),
}

impl ProcessStage {
    /// The running child, restarted (with back-off) when the last one failed.
    fn child(&mut self) -> Result<&mut Child, StageError> {
        while self.child.is_none() {
            if let Some(why) = self.spec.gave_up() {
                return Err(failed(why.to_string()));
            }
            std::thread::sleep(backoff(self.failures));
            match Child::start(&self.spec, &self.config_json) {
                Ok((child, _)) => self.child = Some(child),
                Err(StartError::Spawn(m) | StartError::Refused(m) | StartError::Handshake(m)) => {
                    self.count_failure(&format!("a new child failed to start: {m}"))?;
                }
            }
        }
        self.child
            .as_mut()
            .ok_or_else(|| failed("no child process".into()))
    }

    /// Counts one failure; `Err` once there have been too many in a row.
    fn count_failure(&mut self, what: &str) -> Result<(), StageError> {
        self.failures += 1;
        if self.failures >= MAX_CONSECUTIVE_FAILURES {
            let why = format!(
                "gave up: its child process failed {} times in a row, the last time: {what}. \
                 Run `{}` by hand to see why",
                self.failures,
                self.spec.command_line()
            );
            let why = self.spec.gave_up.get_or_init(|| why).clone();
            return Err(failed(why));
        }
        tracing::warn!(
            "stage `{}`: {what}; restarting it in {} ms (failure {} of {} in a row)",
            self.spec.stage,
            backoff(self.failures).as_millis(),
            self.failures,
            MAX_CONSECUTIVE_FAILURES
        );
        Ok(())
    }

    /// The child failed a request: kill it, count it, and say what happened.
    fn lost_child(&mut self, trouble: Trouble, during: &str) -> StageError {
        let mut child = self.child.take();
        let mut status = |grace| child.as_mut().map_or_else(String::new, |c| c.reap(grace));
        let what = match trouble {
            Trouble::Closed => format!("its child process {} {during}", status(CLOSE_GRACE)),
            Trouble::Garbage(g) => {
                status(Duration::ZERO);
                format!("its child process {g} {during}; killed it")
            }
            Trouble::Timeout(t) => {
                status(Duration::ZERO);
                format!(
                    "its child process did not answer within {} ms (timeout_ms) {during}; \
                     killed it",
                    t.as_millis()
                )
            }
        };
        match self.count_failure(&what) {
            Ok(()) => failed(what),
            Err(gave_up) => gave_up,
        }
    }

    fn run_batch(&mut self, input: &Batch, out: &mut Output) -> Result<(), StageError> {
        if input.is_empty() {
            // Nothing for the child to do. The output gets no columns rather than the
            // input's: a stage that adds a field would otherwise fix a CSV header without
            // it before its first rows arrive.
            return Ok(());
        }
        let timeout = self.spec.timeout;
        self.batches += 1;
        let id = self.batches;
        let request = encode_batch(id, input)?;
        let child = self.child()?;
        let reply = match child.request(request, timeout) {
            Ok(m) => m,
            Err(t) => return Err(self.lost_child(t, "while processing this batch")),
        };
        match batch_reply(id, input, reply, out) {
            Ok(()) => {
                self.failures = 0;
                Ok(())
            }
            Err(Verdict::Refused(why)) => {
                self.failures = 0;
                Err(failed(why))
            }
            Err(Verdict::Garbage(g)) => {
                Err(self.lost_child(Trouble::Garbage(g), "in its reply to this batch"))
            }
        }
    }

    fn finish_stream(&mut self, out: &mut Output) -> Result<(), StageError> {
        let timeout = self.spec.timeout;
        let child = self.child()?;
        let reply = child.request(b"{\"end\":true}\n".to_vec(), timeout);
        let result = match reply {
            Ok(Message {
                header,
                line,
                body,
                rows,
            }) => {
                if let Some(e) = header.error {
                    Err(failed(e))
                } else if header.end != Some(true) {
                    Err(failed(format!(
                        "its child process answered `{line}` to the end of the stream; \
                         expected {{\"end\": true, \"rows\": N}} and N records"
                    )))
                } else {
                    end_rows(&body, rows, out).map_err(failed)
                }
            }
            // Exiting at the end of the stream without a word is fine: no rows to add.
            Err(Trouble::Closed) => {
                let status = self
                    .child
                    .as_mut()
                    .map_or_else(String::new, |c| c.reap(EXIT_GRACE));
                if status == "exited with status 0" {
                    Ok(())
                } else {
                    Err(failed(format!(
                        "its child process {status} at the end of the stream"
                    )))
                }
            }
            Err(t) => return Err(self.lost_child(t, "at the end of the stream")),
        };
        if let Some(mut child) = self.child.take() {
            child.reap(EXIT_GRACE);
        }
        result
    }
}

impl StageObject for ProcessStage {
    fn process(&mut self, input: &Batch, out: &mut Output) -> RResult<(), StageError> {
        self.run_batch(input, out).into()
    }

    fn finish(&mut self, out: &mut Output) -> RResult<(), StageError> {
        self.finish_stream(out).into()
    }

    fn export_state(&self) -> RResult<ROption<RVec<u8>>, StageError> {
        // Protocol 1 has no state hand-over: a new version starts fresh.
        RResult::ROk(RNone)
    }

    fn import_state(&mut self, _state: RSlice<'_, u8>) -> RResult<(), StageError> {
        RResult::ROk(())
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    BACKOFF_FIRST
        .saturating_mul(1 << (failures - 1).min(16))
        .min(BACKOFF_MAX)
}

/// A batch request: the header line and one JSON line per record.
fn encode_batch(id: u64, input: &Batch) -> Result<Vec<u8>, StageError> {
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
fn parse_rows(body: &[u8], rows: usize) -> Result<Batch, String> {
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
fn batch_reply(id: u64, input: &Batch, reply: Message, out: &mut Output) -> Result<(), Verdict> {
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
fn end_rows(body: &[u8], rows: usize, out: &mut Output) -> Result<(), String> {
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
    use pipe_sdk::host::HostOutput;
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

    #[test]
    fn the_program_file_is_the_script_or_the_program_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("geo.py");
        std::fs::write(&script, "").unwrap();
        let s = script.to_string_lossy().into_owned();
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            program_file(&argv(&["python3", "-u", &s, "x"])),
            Some(script)
        );
        let sh = program_file(&argv(&["sh", "-c", "exit 0"])).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(program_file(&argv(&["./no/such/program"])), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(3), Duration::from_millis(200));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }

    /// A stage that upper-cases `country` in a few lines of Python, through the real
    /// protocol.
    const UPPER: &str = r#"
import json, sys
hello = json.loads(sys.stdin.readline())
print(json.dumps({"pipe": 1, "name": "upper", "version": "0.1.0"}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("end"):
        break
    rows = [json.loads(sys.stdin.readline()) for _ in range(msg["rows"])]
    if any(r["country"] == "hang" for r in rows):
        import time; time.sleep(60)
    for r in rows:
        r["country"] = r["country"].upper()
    print(json.dumps({"batch": msg["batch"], "rows": len(rows)}))
    for r in rows:
        print(json.dumps(r))
    sys.stdout.flush()
"#;

    fn upper(timeout: Option<Duration>) -> Option<Arc<ProcessSpec>> {
        let python = program_file(&["python3".to_string()])?;
        Some(Arc::new(ProcessSpec::new(
            "upper",
            vec![
                python.to_string_lossy().into_owned(),
                "-c".into(),
                UPPER.into(),
            ],
            timeout,
        )))
    }

    #[test]
    fn a_child_processes_batches_and_a_hung_one_is_killed_at_the_timeout() {
        let Some(spec) = upper(Some(Duration::from_millis(500))) else {
            eprintln!("no python3 on PATH; skipped");
            return;
        };
        let mut stage = spawn(&spec, "{}").unwrap();
        let mut out = Output::new();
        stage.process(&input(), &mut out).into_result().unwrap();
        assert_eq!(out.batch().row(2).get_str("country"), Some("FR"));
        assert_eq!(out.batch().row(2).pos().line, 4);

        let mut hang = Batch::with_columns(["country"]);
        hang.start_row(Pos::default());
        hang.push_str("hang");
        hang.end_row().unwrap();
        let t = Instant::now();
        let e = stage.process(&hang, &mut out).into_result().unwrap_err();
        assert!(e.message.contains("did not answer within 500 ms"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // The next batch gets a new child.
        out.clear();
        stage.process(&input(), &mut out).into_result().unwrap();
        assert_eq!(out.batch().len(), 3);
        out.clear();
        stage.finish(&mut out).into_result().unwrap();
        assert!(out.batch().is_empty());
    }
}
