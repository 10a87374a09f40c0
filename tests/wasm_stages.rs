//! WASM stages through the real binary (issue 14): the shipped `compute` stage built as
//! `.wasm` gives the `.so`'s output; a loop, a memory bomb, a trap, a panic, an abort and
//! a bad reply each cost one batch and the run goes on with a fresh instance; modules that
//! are not stages never start or never replace a running one; a stateful `.wasm` stage is
//! hot-swapped in a live stream with its state handed over and every record checked.
//!
//! The guests: Rust stages built for `wasm32-unknown-unknown` by the harness below (the
//! same crates the native tests load as `.so`), and `tests/wasm/faults.wat`, a guest
//! written by hand in WebAssembly text (compiled with the `wat` crate).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{assert_clean_stderr, jsonl, plugins, Live, Sandbox};

/// The WASM builds the tests use.
struct Guests {
    compute: PathBuf,
    faulty: PathBuf,
    /// `tagger`, stateful, as version 1 and 2.
    tagger_v1: PathBuf,
    tagger_v2: PathBuf,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo_wasm(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build --target wasm32-unknown-unknown {args:?} failed (is the target \
         installed? `rustup target add wasm32-unknown-unknown`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the WASM guests once per test binary, in the target directory of the `pipe`
/// under test.
fn guests() -> &'static Guests {
    static G: OnceLock<Guests> = OnceLock::new();
    G.get_or_init(|| {
        plugins();
        let target = common::pipe_bin()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        let out = target.join("wasm32-unknown-unknown/release");
        let stash = |name: &str, tag: &str| {
            let dir = target.join("test-plugins").join(tag);
            std::fs::create_dir_all(&dir).unwrap();
            let to = dir.join(format!("{name}.wasm"));
            std::fs::copy(out.join(format!("{name}.wasm")), &to).unwrap();
            to
        };
        cargo_wasm(&["-p", "stage-compute", "-p", "test-faulty"]);
        let compute = stash("compute", "wasm-compute");
        let faulty = stash("faulty", "wasm-faulty");
        cargo_wasm(&["-p", "test-tagger", "--features", "stateful"]);
        let tagger_v1 = stash("tagger", "wasm-tagger-v1");
        cargo_wasm(&["-p", "test-tagger", "--features", "stateful,v2"]);
        let tagger_v2 = stash("tagger", "wasm-tagger-v2");
        Guests {
            compute,
            faulty,
            tagger_v1,
            tagger_v2,
        }
    })
}

/// The hand-written guest, compiled (with its fault cues: see its header).
fn faults_wasm() -> Vec<u8> {
    wat::parse_file(workspace().join("tests/wasm/faults.wat")).unwrap()
}

fn stage_stat(s: &serde_json::Value, k: &str) -> i64 {
    s["stages"][0][k].as_i64().unwrap()
}

/// A sandbox running the WAT guest as stage `faults` with `stage_extra` in its table.
fn faults_sandbox(batch_size: usize, stage_extra: &str) -> Sandbox {
    let sb = Sandbox::with_config(&format!(
        "[settings]\nbatch_size = {batch_size}\n\n[pipelines.default]\ninput = \"csv\"\n\
         dead_letter = \"dl.jsonl\"\n\n[[pipelines.default.stages]]\nplugin = \"faults\"\n\
         path = \"plugins\"\non_error = \"dead-letter\"\n{stage_extra}\n"
    ));
    sb.write("plugins/faults.wasm", faults_wasm());
    sb
}

#[test]
fn compute_built_as_wasm_writes_what_the_so_writes() {
    let g = guests();
    let set = "config = { set = { amount_cents = \"amount * 100\", country = \"upper(country)\", \
               note = \"concat(name, '!')\" } }";
    let input = "id,name,country,amount\n1,ann,de,12.34\n2,bøb,fr,n/a\n3,cy,,7\n";
    let so = Sandbox::with_config(&format!(
        "[pipelines.default]\ninput = \"csv\"\ndead_letter = \"dl.jsonl\"\n\n\
         [[pipelines.default.stages]]\nplugin = \"compute\"\non_error = \"dead-letter\"\n{set}\n"
    ));
    let wasm = Sandbox::with_config(&format!(
        "[pipelines.default]\ninput = \"csv\"\ndead_letter = \"dl.jsonl\"\n\n\
         [[pipelines.default.stages]]\nplugin = \"compute\"\npath = \"compute.wasm\"\n\
         on_error = \"dead-letter\"\n{set}\n"
    ));
    std::fs::copy(&g.compute, wasm.path("compute.wasm")).unwrap();
    let a = so.run(&["run", "--no-watch", "--stats=json"], input);
    let b = wasm.run(&["run", "--no-watch", "--stats=json"], input);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(b.stdout, a.stdout);
    assert!(
        b.stdout.contains("1,ann,DE,12.34,1234,ann!"),
        "{}",
        b.stdout
    );
    assert_eq!(wasm.read("dl.jsonl"), so.read("dl.jsonl"));
    assert!(wasm.read("dl.jsonl").contains("'n/a' is not a number"));
    b.assert_balanced();
    assert_clean_stderr(&b.stderr);
}

#[test]
fn an_infinite_loop_costs_its_batch_within_the_timeout_and_a_fresh_instance_goes_on() {
    let sb = faults_sandbox(2, "timeout_ms = 200");
    // Batches of two: [a, b], [L, c], [d, e]; the second loops forever.
    let r = sb.run(
        &["run", "--no-watch", "--stats=json"],
        "x\na\nb\nLoop\nc\nd\ne\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "x\na\nb\nd\ne\n");
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "dead_lettered"), 2);
    // The stage was busy for the looping call plus three quick ones: the loop was stopped
    // within timeout_ms + 50 ms.
    let busy = s["stages"][0]["busy_ms"].as_f64().unwrap();
    assert!((200.0..250.0).contains(&busy), "busy {busy} ms");
    let dead = jsonl(&sb.read("dl.jsonl"));
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let e = d["error"].as_str().unwrap();
        assert!(e.contains("stopped after timeout_ms = 200 ms"), "{e}");
    }
    assert_eq!(dead[0]["record"]["x"], "Loop");
    // Two instances logged their first batch: the original and the fresh one.
    assert_eq!(
        r.stderr
            .matches("[faults] first batch of this instance")
            .count(),
        2,
        "{}",
        r.stderr
    );
    assert_clean_stderr(&r.stderr);
}

/// Runs `pipe` to the end and returns its exit code and peak resident memory in KiB
/// (`wait4`'s rusage of that one child).
fn run_measuring_rss(sb: &Sandbox, input: &str) -> (i32, i64) {
    sb.write("in.csv", input);
    // Reaped by `wait4` below, which std's `wait` cannot replace: it gives no rusage.
    #[allow(clippy::zombie_processes)]
    let child = sb
        .command(&["run", "in.csv", "--no-watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain libc call on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[test]
fn a_memory_bomb_is_stopped_at_memory_mb_and_the_host_stays_under_the_cap() {
    let sb = faults_sandbox(1, "memory_mb = 64");
    let (code, calm) = run_measuring_rss(&sb, "x\na\nb\n");
    assert_eq!(code, 0);
    let (code, bomb) = run_measuring_rss(&sb, "x\na\nBomb\nb\n");
    assert_eq!(code, 0, "the run goes on after the bomb");
    let dead = jsonl(&sb.read("dl.jsonl"));
    assert_eq!(dead.len(), 1);
    let e = dead[0]["error"].as_str().unwrap();
    assert!(e.contains("memory_mb = 64 MiB"), "{e}");
    // The bomb fills what it gets, so the host's peak grows by about the cap, and no more
    // than the cap and a few MiB.
    let grew_mb = (bomb - calm) as f64 / 1024.0;
    assert!(
        (32.0..64.0 + 8.0).contains(&grew_mb),
        "peak RSS grew by {grew_mb:.1} MiB (calm {calm} KiB, bomb {bomb} KiB)"
    );
}

#[test]
fn traps_panics_aborts_and_bad_replies_cost_one_batch_each() {
    let sb = faults_sandbox(1, "");
    let r = sb.run(
        &["run", "--no-watch", "--stats=json"],
        "x\na\nTrap\nPanic\nXout\nGarbage\nError\nz\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "x\na\nz\n");
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "dead_lettered"), 5);
    assert_eq!(stage_stat(&s, "panics"), 1);
    let errors: Vec<String> = jsonl(&sb.read("dl.jsonl"))
        .iter()
        .map(|d| d["error"].as_str().unwrap().to_string())
        .collect();
    assert!(errors[0].starts_with("trapped (wasm trap:"), "{errors:?}");
    assert_eq!(errors[1], "panicked: boom");
    assert!(
        errors[2].contains("broke the WASM batch ABI") && errors[2].contains("outside its"),
        "{errors:?}"
    );
    assert!(errors[3].contains("broke the WASM batch ABI"), "{errors:?}");
    assert_eq!(errors[4], "refused this batch");
    assert_clean_stderr(&r.stderr);
}

#[test]
fn a_rust_stage_that_panics_or_aborts_as_wasm_costs_one_batch_not_the_run() {
    let g = guests();
    let sb = Sandbox::with_config(
        "[settings]\nbatch_size = 2\n\n[pipelines.default]\ninput = \"csv\"\n\
         dead_letter = \"dl.jsonl\"\n\n[[pipelines.default.stages]]\nplugin = \"faulty\"\n\
         path = \"faulty.wasm\"\non_error = \"dead-letter\"\n\
         config = { field = \"name\", panic_on = \"bad\", abort_on = \"die\" }\n",
    );
    std::fs::copy(&g.faulty, sb.path("faulty.wasm")).unwrap();
    let r = sb.run(
        &["run", "--no-watch", "--stats=json"],
        "id,name\n1,ok\n2,ok\n3,bad\n4,ok\n5,die\n6,ok\n7,ok\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n1,ok\n2,ok\n7,ok\n");
    let s = r.assert_balanced();
    assert_eq!(stage_stat(&s, "dead_lettered"), 4);
    let dead = jsonl(&sb.read("dl.jsonl"));
    // The same panic text and location a native stage reports.
    let e = dead[0]["error"].as_str().unwrap();
    assert!(e.starts_with("panicked: boom on bad (at "), "{e}");
    assert!(e.contains("src/lib.rs:"), "{e}");
    // `std::process::abort()` in a WASM stage is a trap, not the end of the host.
    let e = dead[2]["error"].as_str().unwrap();
    assert!(e.starts_with("trapped (wasm trap:"), "{e}");
    assert_clean_stderr(&r.stderr);
}

#[test]
fn modules_that_are_not_stages_do_not_start() {
    let missing =
        String::from_utf8(std::fs::read(workspace().join("tests/wasm/faults.wat")).unwrap())
            .unwrap()
            .replace("(export \"pipe_process\")", "");
    let sb = faults_sandbox(1, "");
    sb.write("plugins/faults.wasm", wat::parse_str(&missing).unwrap());
    let r = sb.run(&["run", "--no-watch"], "x\na\n");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("does not export `pipe_process`"),
        "{}",
        r.stderr
    );
    assert_clean_stderr(&r.stderr);

    let sb = faults_sandbox(1, "config = { anything = 1 }");
    let r = sb.run(&["run", "--no-watch"], "x\na\n");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("refused its config: this guest takes no config"),
        "{}",
        r.stderr
    );
}

/// Checks CSV `id,x,tag,seen` holds ids 0..n once each in order with `seen` = id + 1
/// (the count carried over every swap); returns the tags.
fn check_counted(out: &str, n: u64) -> Vec<String> {
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "x", "tag", "seen"]
    );
    let mut tags = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(
            rec[0].parse::<u64>().unwrap(),
            i as u64,
            "lost or reordered"
        );
        assert_eq!(
            rec[3].parse::<u64>().unwrap(),
            i as u64 + 1,
            "the count did not carry over"
        );
        tags.push(rec[2].to_string());
    }
    assert_eq!(tags.len() as u64, n);
    tags
}

fn records(from: u64, to: u64) -> String {
    (from..to).map(|i| format!("{i},x\n")).collect()
}

#[test]
fn a_stateful_wasm_stage_is_hot_swapped_in_a_live_stream_with_its_state() {
    let g = guests();
    let sb = Sandbox::with_config(
        "[settings]\ndebounce_ms = 100\nbatch_size = 100\n\n[pipelines.default]\n\
         input = \"csv\"\n\n[[pipelines.default.stages]]\nplugin = \"tagger\"\n\
         path = \"plugins\"\nconfig = { count = true }\n",
    );
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    let dest = sb.path("plugins/tagger.wasm");
    std::fs::copy(&g.tagger_v1, &dest).unwrap();
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 20_000));

    // The same bytes again: not a new version, nothing happens (the next swap reported
    // below is v1 -> v2, and the run counts one swap).
    std::fs::copy(&g.tagger_v1, &dest).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // A module that does not compile, then one that lacks an export: refused, v1 runs on.
    std::fs::write(&dest, b"\0asm\x01\0\0\0 not really").unwrap();
    let line = live.expect_line("reload of stage `tagger` refused", 60);
    assert!(line.contains("not a WASM module pipe can run"), "{line}");
    live.write(&records(20_000, 30_000));
    std::fs::write(
        &dest,
        wat::parse_str("(module (memory (export \"memory\") 1))").unwrap(),
    )
    .unwrap();
    let line = live.expect_line("reload of stage `tagger` refused", 60);
    assert!(line.contains("does not export"), "{line}");
    live.write(&records(30_000, 40_000));

    // The real v2, written beside and renamed over (as cargo and deploy tools do).
    let tmp = sb.path("plugins/tagger.wasm.new");
    std::fs::copy(&g.tagger_v2, &tmp).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
    let line = live.expect_line("swapped stage `tagger`", 60);
    assert!(line.contains("1.0.0 -> 2.0.0"), "{line}");
    assert!(line.contains("state handed over"), "{line}");
    live.write(&records(40_000, 60_000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let tags = check_counted(&out, 60_000);
    let stats = err
        .lines()
        .rev()
        .find(|l| l.starts_with('{') && l.contains("\"written\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .expect("--stats=json");
    assert_eq!(stats["stages"][0]["swaps"], 1, "{stats}");
    assert_eq!(stats["stages"][0]["swaps_refused"], 2, "{stats}");
    // Every record went through one version, v1 then v2, switching once.
    let switches = tags.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "{err}");
    assert_eq!(tags[0], "v1");
    assert_eq!(tags[59_999], "v2");
    assert!(
        tags[..40_000].iter().all(|t| t == "v1"),
        "v2 before the swap"
    );
    assert_clean_stderr(&err);
}

#[test]
fn a_wasm_stage_config_change_is_swapped_with_its_new_limits() {
    let sb = faults_sandbox(1, "timeout_ms = 5000");
    let mut live = Live::start(&sb, &["run", "-v"]);
    live.write("x\na\n");
    live.expect_line("first batch of this instance", 60);
    // Tighten the limit: the stage is swapped, and the new limit applies to the next loop.
    let cfg = sb
        .read("pipelines.toml")
        .replace("timeout_ms = 5000", "timeout_ms = 100");
    sb.write("pipelines.toml", cfg);
    live.expect_line("swapped stage `faults`", 60);
    live.write("Loop\nb\n");
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "x\na\nb\n");
    assert!(
        sb.read("dl.jsonl").contains("timeout_ms = 100 ms"),
        "{}",
        sb.read("dl.jsonl")
    );
}

#[test]
fn pipe_new_wasm_scaffolds_a_stage_that_builds_as_wasm_and_runs() {
    let root = workspace();
    let ws = tempfile::tempdir().unwrap();
    // A user's workspace: the SDK by path, the versions of this repository's lock file.
    std::fs::write(
        ws.path().join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [\n]\ndefault-members = [\n]\n\n\
             [workspace.package]\nedition = \"2021\"\nlicense = \"MIT\"\n\n\
             [workspace.dependencies]\npipe-sdk = {{ path = {:?} }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\
             serde_json = {{ version = \"1\", features = [\"raw_value\", \"preserve_order\"] }}\n",
            root.join("stages/sdk").display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), ws.path().join("Cargo.lock")).unwrap();
    let out = Command::new(common::pipe_bin())
        .args(["new", "yell", "--wasm", "--root"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("cargo build --target wasm32-unknown-unknown --release -p stage-yell"),
        "{said}"
    );
    // The command it prints, sharing this repository's target directory.
    let target = root.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-unknown-unknown",
            "--release",
            "-p",
            "stage-yell",
        ])
        .current_dir(ws.path())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let sb = Sandbox::with_config(
        "[pipelines.default]\ninput = \"csv\"\n\n[[pipelines.default.stages]]\n\
         plugin = \"yell\"\npath = \"yell.wasm\"\nconfig = { fields = [\"name\"] }\n",
    );
    std::fs::copy(
        target.join("wasm32-unknown-unknown/release/yell.wasm"),
        sb.path("yell.wasm"),
    )
    .unwrap();
    let r = sb.run(&["run", "--no-watch"], "id,name\n1,ann\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n1,ANN\n");
}

/// The shipped `sandboxed` pipeline (compute as WASM) writes what the same pipeline with
/// the native compute writes, on the shipped sample.
#[test]
fn the_shipped_sandboxed_pipeline_matches_its_native_twin() {
    let g = guests();
    let shipped = std::fs::read_to_string(workspace().join("pipelines.toml")).unwrap();
    let wasm_path = "path = \"target/wasm32-unknown-unknown/release/compute.wasm\"";
    assert!(shipped.contains(wasm_path), "the shipped WASM stage moved");
    let config = |path_line: &str| {
        shipped
            .lines()
            .filter(|l| !l.trim_start().starts_with("plugin_dir"))
            .map(|l| if l == wasm_path { path_line } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let sample = std::fs::read_to_string(workspace().join("samples/orders.csv")).unwrap();
    let wasm = Sandbox::with_config(&config(&format!(
        "path = {:?}",
        g.compute.display().to_string()
    )));
    let native = Sandbox::with_config(&config(""));
    let a = wasm.run(&["run", "sandboxed", "--no-watch", "--stats=json"], &sample);
    let b = native.run(&["run", "sandboxed", "--no-watch"], &sample);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(a.stdout, b.stdout);
    assert!(a.stdout.lines().count() > 5);
    a.assert_balanced();
}
