//! The probe: a library is mapped first in a child process, never first in the host.
//!
//! Mapping a library runs its initialisers (ELF constructors), and abi_stable's checks
//! and the stage's `new` run its code too. A constructor that crashes, calls `exit`,
//! sleeps holding the dynamic loader's lock, reads the host's stdin, closes its stdout or
//! starts a thread would do so inside `pipe` (issue 11). So the host first runs the
//! `pipe` executable itself in a hidden mode (`pipe __probe PLUGIN CONFIG`), handing it
//! the checked bytes as an inherited, sealed in-memory file (descriptor 3) and a report
//! pipe (descriptor 4). The probe maps the library, checks its layout and manifest,
//! creates one instance with the stage's config, passes an empty batch through it, and
//! reports each step as a line on the report pipe. Its stdin is a pipe holding one byte
//! and then closed (a byte gone at the end means it read stdin), its stdout a pipe that
//! must stay empty. Only when the probe ends cleanly within [`PROBE_TIMEOUT`] does the
//! host map the same bytes (the in-memory file is sealed: the probe cannot change them).
//!
//! What the probe cannot see: code that behaves while probed and misbehaves later (a
//! crash in `process` on some record, a constructor that checks for its host). That is
//! the line between native stages (trusted code, checked for accidents) and process or
//! WASM stages (isolated); the README says so.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::plugin::Manifest;

mod child;
pub use child::main;

/// How long a probe may take: mapping, checks, one instance and an empty batch take a
/// few milliseconds; a constructor that sleeps or hangs is killed after this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The hidden first argument that makes `pipe` a probe.
const PROBE_ARG: &str = "__probe";
/// The descriptor the probe finds the library's bytes on.
const LIBRARY_FD: RawFd = 3;
/// The descriptor the probe writes its report to.
const REPORT_FD: RawFd = 4;

/// Why a probe refused a library.
pub(super) enum Refusal {
    /// Mapped without incident, but not a usable stage (no root module, another layout):
    /// the same message the host would have given.
    Library(String),
    /// What the library did to the process that probed it.
    Unsafe(String),
}

/// Probes the library held by `library` (a sealed in-memory file) as stage `plugin`
/// with `config_json`; returns its manifest when the probe ended cleanly.
pub(super) fn run(library: &OwnedFd, plugin: &str, config_json: &str) -> Result<Manifest, Refusal> {
    let unsafe_ = |m: String| Refusal::Unsafe(m);
    let exe = probe_program().ok_or_else(|| {
        unsafe_("cannot find the `pipe` executable to probe the library in".into())
    })?;
    let io =
        |what: &str, e: std::io::Error| unsafe_(format!("cannot start the probe: {what}: {e}"));
    let (report_r, report_w) = pipe().map_err(|e| io("pipe", e))?;
    // Stdin: one byte, then end of file. A probe that leaves the byte did not read it.
    let (stdin_r, stdin_w) = pipe().map_err(|e| io("pipe", e))?;
    std::fs::File::from(stdin_w)
        .write_all(b"?")
        .map_err(|e| io("stdin", e))?;
    let stdin_kept = stdin_r.try_clone().map_err(|e| io("dup", e))?;

    let mut cmd = Command::new(&exe);
    cmd.arg(PROBE_ARG)
        .arg(plugin)
        .arg(config_json)
        .stdin(Stdio::from(stdin_r))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let lib_fd = library.as_raw_fd();
    let report_fd = report_w.as_raw_fd();
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Its own process group, so a timeout kills what it started too; and it
                // dies with the thread that started it.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Move both out of the way first: either may sit on 3 or 4.
                let lib = libc::fcntl(lib_fd, libc::F_DUPFD_CLOEXEC, 10);
                let rep = libc::fcntl(report_fd, libc::F_DUPFD_CLOEXEC, 10);
                if lib < 0
                    || rep < 0
                    || libc::dup2(lib, LIBRARY_FD) < 0
                    || libc::dup2(rep, REPORT_FD) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| io(&exe.display().to_string(), e))?;
    drop(report_w);
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        let _ = child.wait();
        return Err(unsafe_(
            "cannot start the probe: its pipes are missing".into(),
        ));
    };
    let mut streams = [
        Stream::new(report_r),
        Stream::new(OwnedFd::from(stdout)),
        Stream::new(OwnedFd::from(stderr)),
    ];
    let mut status = None;
    let mut timed_out = false;
    loop {
        poll(&mut streams, Duration::from_millis(20));
        if let Ok(Some(s)) = child.try_wait() {
            // Whatever it wrote before it ended is in the pipes now.
            poll(&mut streams, Duration::ZERO);
            status = Some(s);
            break;
        }
        if started.elapsed() >= PROBE_TIMEOUT {
            timed_out = true;
            break;
        }
    }
    // On every path: a probe's leftovers (a process its constructor forked) go too.
    kill_group(pid);
    let status = match status {
        Some(s) => s,
        None => child.wait().map_err(|e| io("wait", e))?,
    };
    let [report, stdout, stderr] = streams.map(|s| s.data);
    let report = String::from_utf8_lossy(&report);
    tracing::debug!(
        "probe of `{plugin}` took {:.1} ms: {}",
        started.elapsed().as_secs_f64() * 1e3,
        report.trim().replace('\n', ", ")
    );
    let stdin_read = {
        let mut byte = [0u8; 1];
        !matches!(std::fs::File::from(stdin_kept).read(&mut byte), Ok(1))
    };
    judge(&Verdict {
        report: &report,
        status,
        timed_out,
        stdout: &stdout,
        stderr: &stderr,
        stdin_read,
    })
}

/// What the host saw of one probe.
struct Verdict<'a> {
    report: &'a str,
    status: ExitStatus,
    timed_out: bool,
    stdout: &'a [u8],
    stderr: &'a [u8],
    stdin_read: bool,
}

/// Turns what a probe did into the library's manifest or a refusal that says what
/// happened and during which step.
fn judge(v: &Verdict<'_>) -> Result<Manifest, Refusal> {
    let mut step = "mapping";
    let mut manifest = None;
    let mut ok = false;
    let mut problem = None;
    for line in v.report.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "step" => step = step_of(rest),
            "library" => return Err(Refusal::Library(rest.replace("\\n", "\n"))),
            "manifest" => manifest = parse_manifest(rest),
            "problem" => problem = Some(rest.to_string()),
            "ok" => ok = true,
            _ => {}
        }
    }
    let during = match step {
        "mapping" => "its initialisers",
        "layout" => "its root module",
        "instance" => "its `new`",
        "batch" => "its `process` on an empty batch",
        "drop" => "dropping its instance",
        _ => "the library",
    };
    let said = last_line(v.stderr);
    let refuse = |what: String| {
        Err(Refusal::Unsafe(format!(
            "{what} (in a probe process; nothing was loaded into pipe){said}"
        )))
    };
    if v.timed_out {
        return refuse(format!(
            "{during} did not finish within {} s",
            PROBE_TIMEOUT.as_secs()
        ));
    }
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = v.status.signal() {
            return refuse(format!("{during} crashed with {}", signal_name(sig)));
        }
    }
    if !ok {
        return refuse(format!(
            "{during} ended the process (exit status {})",
            v.status.code().unwrap_or(-1)
        ));
    }
    if let Some(p) = problem {
        return refuse(p);
    }
    if !v.stdout.is_empty() {
        return refuse(format!(
            "the library wrote to standard output (`{}`), which carries the records",
            shorten(v.stdout)
        ));
    }
    if v.stdin_read {
        return refuse("the library read from standard input, which carries the records".into());
    }
    match manifest {
        Some(m) => Ok(m),
        None => refuse("the probe sent no manifest".into()),
    }
}

fn step_of(s: &str) -> &'static str {
    match s {
        "layout" => "layout",
        "instance" => "instance",
        "batch" => "batch",
        "drop" => "drop",
        _ => "mapping",
    }
}

fn parse_manifest(json: &str) -> Option<Manifest> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Some(Manifest {
        name: s("name"),
        version: s("version"),
        description: s("description"),
        stateful: v["stateful"].as_bool().unwrap_or(false),
        sdk_version: s("sdk_version"),
    })
}

fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!("; it said: {}", shorten(l.trim().as_bytes())),
        None => String::new(),
    }
}

fn shorten(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTRAP => "SIGTRAP",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// One pipe from the probe, read as it fills.
struct Stream {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
}

impl Stream {
    fn new(fd: OwnedFd) -> Stream {
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Stream {
            fd: Some(fd),
            data: Vec::new(),
        }
    }
}

/// Waits up to `wait` for any stream to have data, and reads what is there. A stream
/// at its end is closed. At most 64 KB is kept of each.
fn poll(streams: &mut [Stream], wait: Duration) {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .filter_map(|s| s.fd.as_ref())
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    // SAFETY: `fds` is a valid array of its length.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            wait.as_millis() as i32,
        );
    }
    for s in streams.iter_mut() {
        let Some(fd) = &s.fd else { continue };
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a buffer of its length from a descriptor we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                if s.data.len() < 1 << 16 {
                    s.data.extend_from_slice(&buf[..n as usize]);
                }
                continue;
            }
            if n == 0 {
                s.fd = None;
            }
            break;
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn kill_group(pid: libc::pid_t) {
    // SAFETY: plain syscall on the probe's own group (setpgid in pre_exec).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// The `pipe` executable to run the probe with: this one, or (for benches and tests
/// that load plugins through the library crate) a `pipe` next to it or one level up.
fn probe_program() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let is_pipe = |p: &Path| p.file_name().and_then(|n| n.to_str()) == Some("pipe");
    if is_pipe(&exe) {
        // Through /proc: the file may have been replaced since (a rebuild), this one not.
        return Some(PathBuf::from("/proc/self/exe"));
    }
    let dir = exe.parent()?;
    [dir.join("pipe"), dir.parent()?.join("pipe")]
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn verdict<'a>(report: &'a str, raw_status: i32) -> Verdict<'a> {
        Verdict {
            report,
            status: ExitStatus::from_raw(raw_status),
            timed_out: false,
            stdout: b"",
            stderr: b"",
            stdin_read: false,
        }
    }

    fn unsafe_message(v: &Verdict<'_>) -> String {
        match judge(v) {
            Err(Refusal::Unsafe(m)) => m,
            Err(Refusal::Library(m)) => panic!("library: {m}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_crash_is_named_with_its_signal_and_step() {
        let m = unsafe_message(&verdict("step mapping\n", libc::SIGSEGV));
        assert!(
            m.starts_with("its initialisers crashed with SIGSEGV"),
            "{m}"
        );
        let m = unsafe_message(&verdict(
            "step mapping\nstep layout\nmanifest {}\nstep instance\n",
            libc::SIGABRT,
        ));
        assert!(m.starts_with("its `new` crashed with SIGABRT"), "{m}");
    }

    #[test]
    fn an_exit_a_hang_and_stray_output_are_refusals() {
        let m = unsafe_message(&verdict("step mapping\n", 3 << 8));
        assert!(
            m.starts_with("its initialisers ended the process (exit status 3)"),
            "{m}"
        );
        let mut v = verdict("step mapping\n", libc::SIGKILL);
        v.timed_out = true;
        assert!(unsafe_message(&v).contains("did not finish within 5 s"));
        let mut v = verdict("step mapping\nmanifest {}\nok\n", 0);
        v.stdout = b"hello";
        assert!(unsafe_message(&v).contains("wrote to standard output (`hello`)"));
        let mut v = verdict("step mapping\nmanifest {}\nok\n", 0);
        v.stdin_read = true;
        assert!(unsafe_message(&v).contains("read from standard input"));
    }

    #[test]
    fn a_clean_probe_gives_the_manifest() {
        let v = verdict(
            "step mapping\nstep layout\nmanifest {\"name\":\"x\",\"version\":\"1.0.0\"}\nok\n",
            0,
        );
        match judge(&v) {
            Ok(m) => assert_eq!((m.name.as_str(), m.version.as_str()), ("x", "1.0.0")),
            Err(_) => panic!("refused"),
        }
    }
}
