//! One running child of a process stage: starting it (its own process group, killed
//! with `pipe`), the handshake, one request at a time with a time limit, and stopping it
//! and its process group on every path.

use std::io::{self, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use super::protocol::{read_frames, read_line, trim_eol, Frame, Message};
use super::{ProcessSpec, CLOSE_GRACE, EXIT_GRACE, PROTOCOL_VERSION};

/// How often a request that waits for a reply checks that the child is still there.
const EXIT_POLL: Duration = Duration::from_millis(50);
use crate::plugin::Manifest;

/// How a request to a child went wrong.
pub(super) enum Trouble {
    Closed,
    Garbage(String),
    Timeout(Duration),
}

pub(super) enum StartError {
    /// The program could not be started.
    Spawn(String),
    /// The child refused its config (`{"error": ...}` in the handshake).
    Refused(String),
    /// No valid handshake.
    Handshake(String),
}

/// One running child and its helper threads.
pub(super) struct Child {
    pub(super) os: Option<std::process::Child>,
    pub(super) pid: u32,
    /// Requests for the writer thread; dropping it closes the child's stdin.
    pub(super) input: Option<Sender<Vec<u8>>>,
    pub(super) frames: Receiver<Frame>,
}

impl Child {
    /// Starts a child of `spec` and handshakes with it.
    pub(super) fn start(
        spec: &ProcessSpec,
        config_json: &str,
    ) -> Result<(Child, Manifest), StartError> {
        let config: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| StartError::Refused(format!("config is not JSON: {e}")))?;
        // Checked at every start, restarts included: a pinned script changed since the
        // load must not run (loading_safety.rs:
        // a_pinned_script_changed_after_load_is_refused_at_restart).
        spec.check_program()
            .map_err(|e| StartError::Spawn(e.to_string()))?;
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
    pub(super) fn spawn(spec: &ProcessSpec) -> Result<Child, StartError> {
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
    pub(super) fn request(
        &mut self,
        bytes: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Message, Trouble> {
        // A failed send means the writer stopped (the child closed its stdin); the reply
        // side then tells what happened.
        if let Some(input) = &self.input {
            let _ = input.send(bytes);
        }
        // Waited for in slices, to see a child that exited while something else (a
        // grandchild it started) still holds its stdout: no end of file comes then, and
        // without a `timeout_ms` the worker would wait forever. Its process group is
        // killed after CLOSE_GRACE, which closes the pipe (process_stages.rs:
        // a_grandchild_holding_stdout_does_not_stall_the_stage).
        let started = Instant::now();
        let mut exited: Option<Instant> = None;
        let frame = loop {
            let mut wait = EXIT_POLL;
            if let Some(t) = timeout {
                wait = wait.min(t.saturating_sub(started.elapsed()));
            }
            match self.frames.recv_timeout(wait) {
                Ok(frame) => break frame,
                Err(RecvTimeoutError::Disconnected) => return Err(Trouble::Closed),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(t) = timeout.filter(|t| started.elapsed() >= *t) {
                return Err(Trouble::Timeout(t));
            }
            if exited.is_none() && self.has_exited() {
                exited = Some(Instant::now());
            }
            if exited.is_some_and(|at| at.elapsed() >= CLOSE_GRACE) {
                kill_group(self.pid);
                return Err(Trouble::Closed);
            }
        };
        match frame {
            Frame::Message(m) => Ok(*m),
            Frame::Garbage(g) => Err(Trouble::Garbage(g)),
            Frame::Closed => Err(Trouble::Closed),
        }
    }

    /// Whether the child itself has exited (its status is kept for [`Child::reap`]).
    fn has_exited(&mut self) -> bool {
        self.os
            .as_mut()
            .is_none_or(|os| matches!(os.try_wait(), Ok(Some(_))))
    }

    /// Closes the child's stdin, waits up to `grace` for it to exit, kills it (and its
    /// process group) if it has not, and says how it ended: "exited with status 1".
    pub(super) fn reap(&mut self, grace: Duration) -> Reaped {
        self.input = None;
        match self.os.take() {
            Some(mut os) => reap(&mut os, grace),
            None => Reaped::other("had already been stopped"),
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
pub(super) fn reap(os: &mut std::process::Child, grace: Duration) -> Reaped {
    let deadline = Instant::now() + grace;
    loop {
        match os.try_wait() {
            Ok(Some(status)) => {
                // What it started goes with it, on every path (issue 12).
                kill_group(os.id());
                return Reaped::from_status(status);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break,
        }
    }
    kill_group(os.id());
    let _ = os.kill();
    match os.wait() {
        Ok(status) if grace.is_zero() => Reaped::from_status(status),
        Ok(_) => Reaped::other(format!(
            "did not exit within {} ms and was killed",
            grace.as_millis()
        )),
        Err(e) => Reaped::other(format!("could not be waited for ({e})")),
    }
}

pub(super) fn kill_group(pid: u32) {
    #[cfg(unix)]
    // SAFETY: plain syscall. The group is the child's own (setpgid in pre_exec). Once
    // the child is reaped its id is free again, but not while its group has members
    // (the kernel does not hand out the id of a live process group), so this reaches
    // the child's leftovers or no one.
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// How a child ended: whether it was a clean exit (status 0), and the words for it.
/// Typed, so that no caller decides success by comparing the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reaped {
    /// It exited by itself with status 0.
    pub(super) clean: bool,
    text: String,
}

impl Reaped {
    fn from_status(status: ExitStatus) -> Reaped {
        Reaped {
            clean: status.success(),
            text: describe(status),
        }
    }

    fn other(text: impl Into<String>) -> Reaped {
        Reaped {
            clean: false,
            text: text.into(),
        }
    }

    /// No child to reap.
    pub(super) fn none() -> Reaped {
        Reaped::other(String::new())
    }
}

impl std::fmt::Display for Reaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

pub(super) fn describe(status: ExitStatus) -> String {
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
pub(super) fn write_requests(mut stdin: std::process::ChildStdin, requests: Receiver<Vec<u8>>) {
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

/// The stderr thread: the child's stderr, line by line, with the stage's name in front.
pub(super) fn pass_stderr(stderr: std::process::ChildStderr, prefix: &str) {
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
