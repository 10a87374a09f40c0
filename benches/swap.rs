//! Hot-swap cost (issue 3.8), measured on the real `pipe` binary with the real release
//! `tagger` plugin rebuilt as v1 and v2, while records stream in on a stdin we control:
//!
//! - **latency**: from the new file being in place (renamed over the old one, as cargo
//!   and deploy tools do) to the first output row tagged by the new version. It includes
//!   the debounce (`settings.debounce_ms`, set here to `PIPE_BENCH_DEBOUNCE_MS`, default
//!   50; the shipped default is 300), the side-by-side load (read, in-memory copy,
//!   `dlopen`, layout check, `new`), the marker's trip through the chain and the sink.
//! - **pause**: how long the stage's dispatcher stopped for the swap, from the swap
//!   report on stderr (`swapped stage ... paused X ms`).
//! - **memory**: `VmRSS` and `VmSize` of the `pipe` process from `/proc/<pid>/status`
//!   over the swaps, and the mapped copies of the library (abi_stable never unloads a
//!   library; each load maps one more copy).
//!
//! The stream is checked as it goes: ids in order with none lost or duplicated, the tag
//! switching exactly once per swap, and the run's `--stats=json` counting every swap.
//!
//! A plain `harness = false` program (criterion's repeated iterations do not fit a
//! process that lives across 200 swaps). Run: `cargo bench --bench swap` (200 swaps,
//! about a minute); `PIPE_BENCH_SWAPS=10 cargo bench --bench swap` for a quick check.
//! Under `cargo test --benches` (no `--bench` argument) it does 2 swaps.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::fmt_ns;

/// Rows written to stdin per burst, and the pause between bursts: a steady trickle of
/// ~40,000 records/s that keeps the chain busy without saturating a 2-core machine.
const BURST: u64 = 40;
const BURST_EVERY: Duration = Duration::from_millis(1);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds `tagger` as v1 and v2 and stashes each under `target/bench-plugins/`; leaves
/// the default (v1) build in place for the tests that use it by name.
fn taggers() -> (PathBuf, PathBuf) {
    let dir = common::profile_dir();
    let stash = |tag: &str| {
        let to = common::target_dir().join("bench-plugins").join(tag);
        std::fs::create_dir_all(&to).expect("creating target/bench-plugins");
        let to = to.join(common::lib_name("tagger"));
        std::fs::copy(dir.join(common::lib_name("tagger")), &to).expect("stashing tagger");
        to
    };
    common::cargo_build(&["-p", "test-tagger"]);
    let v1 = stash("tagger-v1");
    common::cargo_build(&["-p", "test-tagger", "--features", "v2"]);
    let v2 = stash("tagger-v2");
    common::cargo_build(&["-p", "test-tagger"]);
    (v1, v2)
}

/// The `pipe` binary cargo built for this bench (release), built now if missing.
fn pipe_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipe"));
    if !bin.is_file() {
        common::cargo_build(&["--bin", "pipe"]);
    }
    bin
}

/// `VmRSS` and `VmSize` of `pid`, in kB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmSize:"))
}

/// Distinct tagger copies mapped into `pid`.
fn mapped_copies(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut files: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("tagger"))
        .collect();
    files.sort_unstable();
    files.dedup();
    files.len()
}

/// Renames a copy of `src` over `dest` and returns the moment it is in place.
fn install(src: &Path, dest: &Path) -> Instant {
    let tmp = dest.with_extension("so.new");
    std::fs::copy(src, &tmp).expect("copying the new version");
    std::fs::rename(&tmp, dest).expect("renaming it into place");
    Instant::now()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn stats_row(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {} | {} | {} |",
        fmt_ns(percentile(&v, 0.0)),
        fmt_ns(percentile(&v, 0.5)),
        fmt_ns(percentile(&v, 0.9)),
        fmt_ns(percentile(&v, 1.0)),
    );
}

/// "... paused 0.42 ms ..." → 0.42 ms in ns; "drained 3 batches" → 3.
fn parse_report(line: &str) -> (f64, u64) {
    let after = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    };
    let pause_ms: f64 = after("paused ").parse().unwrap_or(f64::NAN);
    let drained: u64 = after("drained ").parse().unwrap_or(0);
    (pause_ms * 1e6, drained)
}

/// Where a load's time would go, step by step, redone here on the same file (median of
/// `runs`), next to the whole `plugin::load` call and to `new`. `plugin::load` hashes
/// every file (identical bytes are not mapped twice) and copies into memory, not to disk;
/// each of its loads here is of a new build (the file with `i` appended), so that it maps
/// and probes (a child process maps the library first) every time.
fn load_breakdown(lib: &Path, runs: usize) {
    use abi_stable::library::lib_header_from_path;
    use pipe_sdk::abi::StageMod_Ref;
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut steps: Vec<(&str, Vec<f64>)> = [
        "read the file",
        "sha256 of it",
        "write the private copy",
        "dlopen + layout check (init_root_module)",
        "plugin::load, all of it",
        "Plugin::instantiate (new)",
    ]
    .into_iter()
    .map(|s| (s, Vec::new()))
    .collect();
    let ns = |t: Instant| t.elapsed().as_nanos() as f64;
    for i in 0..runs {
        let t = Instant::now();
        let bytes = std::fs::read(lib).expect("reading the plugin");
        steps[0].1.push(ns(t));
        let t = Instant::now();
        let digest = Sha256::digest(&bytes);
        steps[1].1.push(ns(t));
        assert_eq!(digest.len(), 32);
        let copy = dir
            .path()
            .join(format!("{i}-{}", common::lib_name("tagger")));
        let t = Instant::now();
        std::fs::write(&copy, &bytes).expect("writing the copy");
        steps[2].1.push(ns(t));
        let t = Instant::now();
        let module = lib_header_from_path(&copy)
            .and_then(|h| h.init_root_module::<StageMod_Ref>())
            .expect("opening the copy");
        steps[3].1.push(ns(t));
        let _ = std::fs::remove_file(&copy);
        assert_eq!((module.manifest())().name.as_str(), "tagger");
        let build = dir.path().join(format!("build-{i}"));
        std::fs::create_dir(&build).expect("a build dir");
        let new_build = build.join(common::lib_name("tagger"));
        let mut new_bytes = bytes.clone();
        new_bytes.extend_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(&new_build, &new_bytes).expect("writing a new build");
        let t = Instant::now();
        let plugin = pipe::plugin::load(&pipe::plugin::file_spec("tagger", &new_build))
            .expect("loading tagger");
        steps[4].1.push(ns(t));
        let t = Instant::now();
        let instance = plugin.instantiate("{}").expect("a tagger instance");
        steps[5].1.push(ns(t));
        drop(instance);
    }
    println!(
        "\n### the load, step by step ({runs} loads of the {:.1} MB tagger in this process, \
         copies in {})\n",
        common::file_len(lib) as f64 / 1e6,
        std::env::temp_dir().display()
    );
    println!("| step | min | median | p90 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in steps {
        stats_row(name, v);
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let swaps = if bench_mode {
        env_number("PIPE_BENCH_SWAPS", 200)
    } else {
        2
    };
    let debounce_ms = env_number("PIPE_BENCH_DEBOUNCE_MS", 50);
    let (v1, v2) = taggers();
    let pipe = pipe_bin();

    let sandbox = tempfile::tempdir().expect("a temp dir");
    let plugins = sandbox.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let dest = plugins.join(common::lib_name("tagger"));
    std::fs::copy(&v1, &dest).expect("installing v1");
    std::fs::write(
        sandbox.path().join("pipelines.toml"),
        format!(
            "[settings]\ndebounce_ms = {debounce_ms}\n\n[pipelines.default]\n\n\
             [[pipelines.default.stages]]\nplugin = \"tagger\"\npath = \"plugins\"\n"
        ),
    )
    .expect("writing pipelines.toml");

    let mut child = Command::new(&pipe)
        .args(["run", "-v", "--stats=json"])
        .current_dir(sandbox.path())
        .env_remove("PIPE_CONFIG")
        .env_remove("PIPE_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pipe");
    let pid = child.id();

    // stderr: every line, with the moment it arrived.
    let (err_tx, err_rx) = mpsc::channel::<(Instant, String)>();
    let stderr = child.stderr.take().expect("stderr");
    let err_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push(line.clone());
            let _ = err_tx.send((Instant::now(), line));
        }
        all
    });
    let wait_line = |needle: &str| -> (Instant, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match err_rx.recv_timeout(left) {
                Ok((t, l)) if l.contains(needle) => return (t, l),
                Ok(_) => {}
                Err(_) => panic!("no stderr line with {needle:?} within 60 s"),
            }
        }
    };
    wait_line("running pipeline");

    // stdout: check ids and note each change of tag with its moment.
    let (tag_tx, tag_rx) = mpsc::channel::<(Instant, String)>();
    let stdout = child.stdout.take().expect("stdout");
    let out_thread = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut tag = String::new();
        let mut switches = 0u64;
        for line in BufReader::new(stdout).lines().skip(1) {
            let Ok(line) = line else { break };
            let mut parts = line.split(',');
            let id: u64 = parts.next().and_then(|s| s.parse().ok()).expect("an id");
            assert_eq!(id, next, "a record was lost, duplicated or reordered");
            next += 1;
            let t = parts.nth(1).unwrap_or("");
            if t != tag {
                if !tag.is_empty() {
                    switches += 1;
                }
                tag = t.to_string();
                let _ = tag_tx.send((Instant::now(), tag.clone()));
            }
        }
        (next, switches)
    });

    // stdin: a steady trickle until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = {
        let stop = stop.clone();
        let written = written.clone();
        std::thread::spawn(move || {
            stdin.write_all(b"id,x\n").expect("writing to pipe");
            let mut id = 0u64;
            let mut buf = String::new();
            while !stop.load(Ordering::Relaxed) {
                buf.clear();
                for _ in 0..BURST {
                    buf.push_str(&id.to_string());
                    buf.push_str(",x\n");
                    id += 1;
                }
                stdin.write_all(buf.as_bytes()).expect("writing to pipe");
                written.store(id, Ordering::Relaxed);
                std::thread::sleep(BURST_EVERY);
            }
            id
        })
    };

    let (_, first) = tag_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("first rows");
    assert_eq!(first, "v1");
    std::thread::sleep(Duration::from_millis(200)); // let the start-up settle
    let (rss0, vm0) = memory(pid);
    let mut samples = vec![(0u64, rss0, vm0)];
    let mut latency = Vec::new();
    let mut to_report = Vec::new();
    let mut pause = Vec::new();
    let mut drained = Vec::new();
    for k in 0..swaps {
        let (src, tag, version) = if k % 2 == 0 {
            (&v2, "v2", "2.0.0")
        } else {
            (&v1, "v1", "1.0.0")
        };
        let t0 = install(src, &dest);
        let (t_line, line) = wait_line("swapped stage `tagger`");
        assert!(line.contains(&format!("-> {version}")), "{line}");
        let (p, d) = parse_report(&line);
        let (t_row, seen) = tag_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("rows from the new version");
        assert_eq!(seen, tag, "the tag switched to the wrong version");
        latency.push(t_row.duration_since(t0).as_nanos() as f64);
        to_report.push(t_line.saturating_duration_since(t0).as_nanos() as f64);
        pause.push(p);
        drained.push(d as f64);
        if (k + 1) % 10 == 0 || k + 1 == swaps {
            let (rss, vm) = memory(pid);
            samples.push((k + 1, rss, vm));
        }
        // A little traffic on the new version before the next file arrives.
        std::thread::sleep(Duration::from_millis(10));
    }
    let copies = mapped_copies(pid);

    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().expect("writer");
    let status = child.wait().expect("pipe exits");
    let (rows, switches) = out_thread.join().expect("stdout reader");
    let stderr_lines = err_thread.join().expect("stderr reader");
    assert!(
        status.success(),
        "pipe failed:\n{}",
        stderr_lines.join("\n")
    );
    assert_eq!(rows, sent, "records lost: sent {sent}, got {rows}");
    assert_eq!(
        switches, swaps,
        "the tag switched {switches} times for {swaps} swaps"
    );
    let stats: serde_json::Value = stderr_lines
        .iter()
        .rev()
        .find(|l| l.starts_with('{') && l.contains("\"written\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("--stats=json on stderr");
    assert_eq!(stats["stages"][0]["swaps"], swaps);
    let _ = written.load(Ordering::Relaxed);

    let debounce_ns = debounce_ms as f64 * 1e6;
    println!(
        "\n## hot swap: tagger v1 <-> v2 on a live stdin stream, {swaps} swaps, \
         debounce {debounce_ms} ms, {} records streamed, none lost\n",
        rows
    );
    println!("| per swap | min | median | p90 | max |");
    println!("|---|---:|---:|---:|---:|");
    stats_row(
        "new file in place → first row from the new version",
        latency.clone(),
    );
    stats_row(
        "  same, minus the debounce",
        latency.iter().map(|l| l - debounce_ns).collect(),
    );
    stats_row("new file in place → swap report on stderr", to_report);
    stats_row("stage pause (swap report)", pause);
    drained.sort_by(f64::total_cmp);
    println!(
        "\nbatches drained on the old version per swap: median {}, max {}",
        percentile(&drained, 0.5),
        percentile(&drained, 1.0)
    );

    println!("\n| after swaps | VmRSS | VmSize |");
    println!("|---:|---:|---:|");
    for (k, rss, vm) in &samples {
        if *k == 0 || *k == swaps || samples.len() <= 12 || k % 50 == 0 {
            println!(
                "| {k} | {:.1} MB | {:.1} MB |",
                *rss as f64 / 1024.0,
                *vm as f64 / 1024.0
            );
        }
    }
    let (rss_end, vm_end) = (samples.last().unwrap().1, samples.last().unwrap().2);
    let per = |a: u64, b: u64, n: u64| (b as f64 - a as f64) / n.max(1) as f64;
    let lib_kb = common::file_len(&v1) as f64 / 1024.0;
    println!(
        "\nper swap, all {swaps}: VmRSS +{:.0} kB, VmSize +{:.0} kB (the plugin file is {:.0} kB; \
         {copies} copies of it mapped at the end)",
        per(rss0, rss_end, swaps),
        per(vm0, vm_end, swaps),
        lib_kb
    );
    // The first swaps also touch pages once (v2's code, allocator arenas): the second
    // half shows the steady growth.
    if let Some(mid) = samples.iter().find(|s| s.0 * 2 >= swaps && s.0 < swaps) {
        println!(
            "per swap, swaps {}..{swaps}: VmRSS +{:.0} kB, VmSize +{:.0} kB",
            mid.0,
            per(mid.1, rss_end, swaps - mid.0),
            per(mid.2, vm_end, swaps - mid.0)
        );
    }
    if bench_mode {
        load_breakdown(&v1, 20);
    }
}
