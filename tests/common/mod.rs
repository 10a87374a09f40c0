//! Shared helpers of the integration tests: build the plugins once, make a sandbox
//! directory per test, run the real `pipe` binary in it, and check the accounting of
//! every run.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Paths of the plugin builds the tests use.
pub struct Plugins {
    /// Where cargo put the shipped plugins (next to the `pipe` binary under test).
    pub dir: PathBuf,
    /// `tagger` built without and with its `v2` feature, each in its own directory.
    pub tagger_v1: PathBuf,
    pub tagger_v2: PathBuf,
    /// `badabi` with an incompatible layout, and with an old SDK version in its manifest.
    pub badabi_layout: PathBuf,
    pub badabi_old_sdk: PathBuf,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `pipe` binary under test.
pub fn pipe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pipe"))
}

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("build")
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lib_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn stash(dir: &Path, name: &str, tag: &str) -> PathBuf {
    let to_dir = dir.join("test-plugins").join(tag);
    std::fs::create_dir_all(&to_dir).unwrap();
    let to = to_dir.join(lib_name(name));
    std::fs::copy(dir.join(lib_name(name)), &to).unwrap();
    to
}

/// Builds every plugin the tests load (once per test binary) with the same profile as
/// the `pipe` binary under test, so it finds them next to itself.
pub fn plugins() -> &'static Plugins {
    static P: OnceLock<Plugins> = OnceLock::new();
    P.get_or_init(|| {
        let dir = pipe_bin().parent().unwrap().to_path_buf();
        let release = dir.ends_with("release");
        let mut common: Vec<&str> = Vec::new();
        if release {
            common.push("--release");
        }
        let mut all = common.clone();
        for p in [
            "stage-filter",
            "stage-select",
            "stage-compute",
            "stage-mask",
            "stage-dedup",
            "stage-count",
            "stage-validate",
            "test-faulty",
            "test-noroot",
            "test-badabi",
            "test-tagger",
            "test-ctor",
        ] {
            all.push("-p");
            all.push(p);
        }
        cargo_build(&all);
        let badabi_layout = stash(&dir, "badabi", "badabi-layout");
        let tagger_v1 = stash(&dir, "tagger", "tagger-v1");
        let mut v2 = common.clone();
        v2.extend(["-p", "test-tagger", "--features", "v2"]);
        cargo_build(&v2);
        let tagger_v2 = stash(&dir, "tagger", "tagger-v2");
        let mut old = common.clone();
        old.extend(["-p", "test-badabi", "--features", "old_sdk"]);
        cargo_build(&old);
        let badabi_old_sdk = stash(&dir, "badabi", "badabi-old-sdk");
        // Leave the default builds in place for the tests that use them by name.
        let mut back = common.clone();
        back.extend(["-p", "test-tagger", "-p", "test-badabi"]);
        cargo_build(&back);
        Plugins {
            dir,
            tagger_v1,
            tagger_v2,
            badabi_layout,
            badabi_old_sdk,
        }
    })
}

/// A temporary directory for one test, with a `pipelines.toml` and inputs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// What a run of `pipe` gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `--stats=json` object printed on stderr, if any.
    pub fn stats(&self) -> Option<serde_json::Value> {
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with('{') && l.contains("\"written\""))
            .and_then(|l| serde_json::from_str(l).ok())
    }

    /// Asserts `read = written + filtered + dead-lettered + skipped`, per stage and in
    /// total, from `--stats=json`; returns the stats.
    pub fn assert_balanced(&self) -> serde_json::Value {
        self.check_balance(true)
    }

    /// Like [`assert_balanced`], but only the totals and each stage on its own: after a
    /// chain rebuild, stages did not all see the same stream.
    pub fn assert_totals_balanced(&self) -> serde_json::Value {
        self.check_balance(false)
    }

    fn check_balance(&self, linked: bool) -> serde_json::Value {
        let s = self
            .stats()
            .unwrap_or_else(|| panic!("no --stats=json on stderr:\n{}", self.stderr));
        let n =
            |v: &serde_json::Value, k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
        let mut filtered = 0;
        let mut dead = n(&s, "bad_input_dead_lettered");
        let mut skipped = n(&s, "bad_input_skipped");
        let mut prev_out = n(&s, "read") - dead - skipped;
        for st in s["stages"].as_array().unwrap() {
            assert_eq!(
                n(st, "rows_in"),
                n(st, "rows_out") + n(st, "filtered") + n(st, "dead_lettered") + n(st, "skipped"),
                "stage does not balance: {st}"
            );
            if linked {
                assert_eq!(n(st, "rows_in"), prev_out, "rows lost between stages: {s}");
            }
            prev_out = n(st, "rows_out");
            filtered += n(st, "filtered");
            dead += n(st, "dead_lettered");
            skipped += n(st, "skipped");
        }
        if linked {
            assert_eq!(prev_out, n(&s, "written"), "rows lost before the sink: {s}");
        }
        // A run that finished (or drained after a signal) has nothing in flight.
        assert_eq!(n(&s, "in_flight"), 0, "records in flight at the end: {s}");
        assert_eq!(
            n(&s, "read"),
            n(&s, "written") + filtered + dead + skipped,
            "the run does not balance: {s}"
        );
        s
    }

    /// For a run that stopped early (an error, a closed output): the totals balance with
    /// what was in flight when it stopped counted as such.
    pub fn assert_balanced_with_in_flight(&self) -> serde_json::Value {
        let s = self
            .stats()
            .unwrap_or_else(|| panic!("no --stats=json on stderr:\n{}", self.stderr));
        let n = |k: &str| s[k].as_i64().unwrap_or_else(|| panic!("{k} in {s}"));
        let stages = s["stages"].as_array().unwrap();
        let sum = |k: &str| stages.iter().map(|st| st[k].as_i64().unwrap()).sum::<i64>();
        assert_eq!(
            n("read"),
            n("written")
                + sum("filtered")
                + sum("dead_lettered")
                + n("bad_input_dead_lettered")
                + sum("skipped")
                + n("bad_input_skipped")
                + n("in_flight"),
            "{s}"
        );
        s
    }
}

impl Sandbox {
    /// An empty sandbox.
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A sandbox with `config` as its `pipelines.toml`.
    pub fn with_config(config: &str) -> Sandbox {
        let s = Sandbox::new();
        s.write("pipelines.toml", config);
        s
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// A `pipe` command in this sandbox (plugins built).
    pub fn command(&self, args: &[&str]) -> Command {
        plugins();
        let mut c = Command::new(pipe_bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("PIPE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("PIPE_LOG");
        c
    }

    /// Runs `pipe args...` with `stdin` and waits.
    pub fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pipe");
        let mut sin = child.stdin.take().unwrap();
        let input = stdin.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = sin.write_all(&input);
        });
        let out: Output = child.wait_with_output().unwrap();
        let _ = writer.join();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Parses JSON lines.
pub fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A `pipe run` streaming from a stdin the test controls, with stderr lines as they come.
///
/// It runs in its own process group (as a shell gives a pipeline, so a "terminal" Ctrl-C
/// can be sent to it without reaching the test runner), with its private plugin-copy
/// directory inside the sandbox (`run/`), so tests can look at it. With `-v` among the
/// arguments, `start` waits until the run is under way: a change made before the stages
/// are loaded and the watcher runs would race with the start.
pub struct Live {
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Live {
    pub fn start(sb: &Sandbox, args: &[&str]) -> Live {
        use std::io::{BufRead, BufReader, Read};
        let private = sb.path("run");
        std::fs::create_dir_all(&private).unwrap();
        let mut cmd = sb.command(args);
        cmd.env("XDG_RUNTIME_DIR", &private).env("TMPDIR", &private);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pipe");
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            out.read_to_string(&mut s).unwrap();
            s
        });
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut live = Live {
            child,
            stdin,
            stderr: rx,
            seen: Vec::new(),
            stdout: Some(stdout),
        };
        if args.contains(&"-v") {
            live.expect_line("running pipeline", 60);
        }
        live
    }

    /// Writes to the run's stdin.
    pub fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a stderr line containing `needle`; panics after `secs`.
    pub fn expect_line(&mut self, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {secs} s; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Closes stdin and waits; returns (exit code, stdout, all stderr).
    pub fn finish(mut self) -> (i32, String, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        let out = self.stdout.take().unwrap().join().unwrap();
        while let Ok(l) = self
            .stderr
            .recv_timeout(std::time::Duration::from_millis(500))
        {
            self.seen.push(l);
        }
        (status.code().unwrap_or(-1), out, self.seen.join("\n"))
    }
}

/// Nothing a user should not see on stderr: no panic report, no backtrace hint, no Rust
/// debug formatting of errors or layouts.
pub fn assert_clean_stderr(stderr: &str) {
    for bad in [
        "panicked at",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Type Layout",
        "Os {",
        "Custom {",
        "kind: ",
        "Error {",
        "Some(",
    ] {
        assert!(
            !stderr.contains(bad),
            "stderr shows {bad:?} to the user:\n{stderr}"
        );
    }
}
