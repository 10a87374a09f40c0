//! Process stages through the real binary (issue 6): programs speaking the JSON-lines
//! protocol as stages, with workers, rejects and policies, isolation (a child that
//! crashes, is killed, exits, writes garbage or hangs never takes `pipe` down), the
//! consecutive-failure limit, hot swap of the script, and no child left behind.
//!
//! The programs are the shipped example `stages/examples/geo.py` and the test stages in
//! `tests/process/` (see their docstrings); every run checks its accounting.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{jsonl, Live, Run, Sandbox};

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .into_owned()
}

/// A sandbox running `faulty.py` as the only stage, 10 records per batch.
fn faulty(stage_keys: &str, config: &str) -> Sandbox {
    Sandbox::with_config(&format!(
        "[settings]\nbatch_size = 10\n\n[pipelines.default]\ndead_letter = \"rejects.jsonl\"\n\n\
         [[pipelines.default.stages]]\ncommand = [\"python3\", {:?}]\n{stage_keys}\nconfig = {config}\n",
        repo_file("tests/process/faulty.py")
    ))
}

/// CSV `id,x` with ids `from..to`.
fn records(from: u64, to: u64) -> String {
    let mut s = String::new();
    for i in from..to {
        s.push_str(&format!("{i},x\n"));
    }
    s
}

fn csv_ids(out: &str) -> Vec<u64> {
    csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect()
}

fn run(sb: &Sandbox, stdin: &str) -> Run {
    sb.run(&["run", "--no-watch", "--stats=json"], stdin)
}

#[test]
fn the_example_geo_stage_adds_regions_and_rejects_unknown_countries() {
    let sb = Sandbox::with_config(&format!(
        "[pipelines.default]\ndead_letter = \"rejects.jsonl\"\n\n[[pipelines.default.stages]]\n\
         command = [\"python3\", {:?}]\non_error = \"dead-letter\"\n\
         config = {{ unknown = \"reject\" }}\n",
        repo_file("stages/examples/geo.py")
    ));
    let mut input = std::fs::read_to_string(repo_file("samples/orders.csv")).unwrap();
    input.push_str("99,2026-11-30T00:00:00Z,zed,zed@example.com,xx,1.00,paid,\n");
    let r = run(&sb, &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stats = r.assert_balanced();
    assert_eq!(stats["stages"][0]["dead_lettered"], 1);
    let mut rdr = csv::Reader::from_reader(r.stdout.as_bytes());
    let header = rdr.headers().unwrap().clone();
    assert_eq!(header.iter().next_back(), Some("region"));
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 61);
    assert_eq!((&rows[0][4], &rows[0][8]), ("de", "Europe"));
    assert_eq!((&rows[2][4], &rows[2][8]), ("in", "Asia"));
    assert!(rows.iter().all(|r| !r[8].is_empty()));
    // The rejected row keeps its file and line; the message went through with a prefix.
    let dead = jsonl(&sb.read("rejects.jsonl"));
    assert_eq!(dead[0]["stage"], "geo");
    assert_eq!(dead[0]["line"], 63);
    assert_eq!(dead[0]["error"], "unknown country code 'XX'");
    assert!(
        r.stderr.contains("[geo] ready: country -> region"),
        "{}",
        r.stderr
    );

    // JSON lines keep their types through the child.
    let events = std::fs::read_to_string(repo_file("samples/events.jsonl")).unwrap();
    let r = sb.run(
        &[
            "run",
            "--no-watch",
            "--stats=json",
            "--input-format",
            "jsonl",
        ],
        &events,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_balanced();
    let out = jsonl(&r.stdout);
    let first = &out[0];
    assert_eq!(first["event_id"], 1);
    assert_eq!(first["mobile"], false);
    assert_eq!(first["region"], "Europe");
    let purchase = out.iter().find(|o| o["items"].is_array()).unwrap();
    assert!(purchase["amount"].is_f64());
}

#[test]
fn two_workers_run_two_children_and_keep_the_order() {
    let sb = faulty("workers = 2", "{ add_pid = true }");
    let r = run(&sb, &format!("id,x\n{}", records(0, 3000)));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_balanced();
    let mut rdr = csv::Reader::from_reader(r.stdout.as_bytes());
    let mut pids = std::collections::BTreeSet::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(rec[0].parse::<usize>().unwrap(), i, "order broken");
        pids.insert(rec[2].to_string());
    }
    assert_eq!(pids.len(), 2, "two children did the work: {pids:?}");
}

#[test]
fn rejects_and_failed_batches_follow_the_stage_policy() {
    let input = format!("id,x\n{}", records(0, 50));
    // dead-letter: the rejected row and the whole failed batch, with reasons and lines.
    let sb = faulty(
        "on_error = \"dead-letter\"",
        "{ reject_on = \"7\", error_on = \"23\" }",
    );
    let r = run(&sb, &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stats = r.assert_balanced();
    assert_eq!(stats["stages"][0]["dead_lettered"], 11);
    assert_eq!(stats["written"], 39);
    let dead = jsonl(&sb.read("rejects.jsonl"));
    assert_eq!(dead[0]["error"], "rejected 7");
    assert_eq!(dead[0]["line"], 9);
    assert_eq!(dead[0]["record"]["id"], "7");
    assert!(dead[1..].iter().all(|d| d["error"] == "refused row 23"));
    let ids = csv_ids(&r.stdout);
    assert!(!ids.contains(&7) && !ids.contains(&25) && ids.contains(&30));

    // skip: counted and dropped.
    let sb = faulty("on_error = \"skip\"", "{ reject_on = \"7\" }");
    let r = run(&sb, &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.assert_balanced()["stages"][0]["skipped"], 1);

    // Rows a stage writes at the end of the stream come last, with no input position.
    let sb = faulty("", "{ emit_in_finish = 2 }");
    let r = run(&sb, &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.assert_balanced()["written"], 52);
    assert!(
        r.stdout.ends_with("49,x\nfinish-0,\nfinish-1,\n"),
        "{}",
        r.stdout
    );

    // fail: the run stops, naming the stage, the record and the reason.
    let sb = faulty("", "{ reject_on = \"7\" }");
    let r = run(&sb, &input);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("stage `faulty` failed on the record at -:9: rejected 7"),
        "{}",
        r.stderr
    );
}

/// Runs `faulty.py` with `fault_on = "17"` under dead-letter: the batch holding id 17
/// (ids 10..20) goes to the dead-letter file with `reason`, a new child takes the rest.
fn survives(fault: &str, reason: &str) -> Run {
    let sb = faulty(
        "on_error = \"dead-letter\"\ntimeout_ms = 500",
        &format!("{{ {fault}_on = \"17\" }}"),
    );
    let r = run(&sb, &format!("id,x\n{}", records(0, 50)));
    assert_eq!(r.code, 0, "{fault}: {}", r.stderr);
    let stats = r.assert_balanced();
    assert_eq!(stats["stages"][0]["dead_lettered"], 10, "{fault}: {stats}");
    let ids = csv_ids(&r.stdout);
    let expected: Vec<u64> = (0..10).chain(20..50).collect();
    assert_eq!(ids, expected, "{fault}");
    let dead = jsonl(&sb.read("rejects.jsonl"));
    assert_eq!(dead.len(), 10);
    let error = dead[0]["error"].as_str().unwrap();
    assert!(error.contains(reason), "{fault}: {error}");
    assert!(error.contains("while processing this batch"), "{error}");
    assert!(
        r.stderr
            .contains("restarting it in 50 ms (failure 1 of 5 in a row)"),
        "{fault}: {}",
        r.stderr
    );
    r
}

#[test]
fn a_crashing_child_is_restarted_and_its_traceback_shown() {
    let r = survives("crash", "its child process exited with status 1");
    assert!(
        r.stderr.contains("[faulty] RuntimeError: boom on 17"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_killed_child_is_restarted() {
    survives("kill", "was killed by signal 9 (SIGKILL)");
}

#[test]
fn a_child_that_exits_mid_batch_is_restarted() {
    survives("exit", "its child process exited with status 0");
}

#[test]
fn a_child_writing_garbage_is_killed_and_restarted() {
    survives("garbage", "which is not a protocol message");
}

#[test]
fn a_hung_child_is_killed_at_the_timeout_and_restarted() {
    let t = Instant::now();
    survives("hang", "did not answer within 500 ms (timeout_ms)");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_child_that_keeps_failing_stops_the_run_after_five_failures() {
    let sb = faulty("on_error = \"skip\"", "{ crash_on = \"*\" }");
    let t = Instant::now();
    let r = run(&sb, &format!("id,x\n{}", records(0, 200)));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "pipe: error: stage `faulty` gave up: its child process failed 5 times in a row, \
             the last time: its child process exited with status 1"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("by hand to see why"), "{}", r.stderr);
    assert!(r.stderr.contains("failure 4 of 5 in a row"), "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn programs_that_cannot_start_or_handshake_are_configuration_errors() {
    let cases = [
        (
            "command = [\"no-such-program-for-pipe\"]\nconfig = {}".to_string(),
            "not found on PATH",
        ),
        (
            format!(
                "command = [\"python3\", {:?}]\nconfig = {{ bogus = 1 }}",
                repo_file("tests/process/faulty.py")
            ),
            "refused its config: unknown config keys: ['bogus']",
        ),
        (
            format!(
                "command = [\"python3\", {:?}]\nconfig = {{ fail_start = true }}",
                repo_file("tests/process/faulty.py")
            ),
            "exited with status 3 before the handshake",
        ),
        (
            format!(
                "command = [\"python3\", {:?}]\nconfig = {{ bad_hello = true }}",
                repo_file("tests/process/faulty.py")
            ),
            "answered the handshake with `{\"hello\": \"world\"}`",
        ),
        (
            format!(
                "command = [\"python3\", {:?}]\nsha256 = \"{}\"\nconfig = {{}}",
                repo_file("tests/process/faulty.py"),
                "0".repeat(64)
            ),
            "but the stage pins 0000",
        ),
    ];
    for (stage, expected) in cases {
        let sb = Sandbox::with_config(&format!(
            "[pipelines.default]\n[[pipelines.default.stages]]\nname = \"s\"\n{stage}\n"
        ));
        let r = run(&sb, "id\n1\n");
        assert_eq!(r.code, 2, "{stage}: {}", r.stderr);
        assert!(r.stderr.contains("stage `s`"), "{}", r.stderr);
        assert!(r.stderr.contains(expected), "{stage}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }
    // The start failure's own words are passed through.
    let sb = faulty("", "{ fail_start = true }");
    let r = run(&sb, "id\n1\n");
    assert!(
        r.stderr
            .contains("[faulty] faulty: failing at start as asked"),
        "{}",
        r.stderr
    );
}

fn set_file(path: &Path, text: &str) {
    // Rename over the file, as editors and deploy tools do.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tagger_config(script: &Path, label: &str) -> String {
    format!(
        "[settings]\ndebounce_ms = 100\n\n[pipelines.default]\n\n[[pipelines.default.stages]]\n\
         command = [\"python3\", {:?}]\nworkers = 2\nconfig = {{ label = {label:?} }}\n",
        script.to_string_lossy()
    )
}

#[test]
fn editing_the_script_swaps_the_stage_without_losing_a_record() {
    let sb = Sandbox::new();
    let v1 = std::fs::read_to_string(repo_file("tests/process/tagger.py")).unwrap();
    let v2 = v1
        .replace("TAG = \"v1\"", "TAG = \"v2\"")
        .replace("VERSION = \"1.0.0\"", "VERSION = \"2.0.0\"");
    let script: PathBuf = sb.write("stage/tagger.py", &v1);
    sb.write("pipelines.toml", tagger_config(&script, "one"));
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 3000));
    set_file(&script, &v2);
    let line = live.expect_line("swapped stage `tagger`", 60);
    assert!(line.contains("1.0.0 -> 2.0.0"), "{line}");
    live.write(&records(3000, 6000));
    // A version that cannot start never replaces a good one.
    set_file(&script, "import sys\nsys.exit('broken version')\n");
    let line = live.expect_line("reload of stage `tagger` refused", 60);
    assert!(line.contains("before the handshake"), "{line}");
    assert!(line.contains("2.0.0 keeps running"), "{line}");
    live.write(&records(6000, 7000));
    // The running version's bytes back again are not a new version (issue 11).
    set_file(&script, &v2);
    live.expect_line("tagger.py is unchanged", 60);
    // A config change is swapped in the same way: new children with the new config.
    set_file(&sb.path("pipelines.toml"), &tagger_config(&script, "two"));
    live.expect_line("swapped stage `tagger` 2.0.0 -> 2.0.0", 60);
    live.write(&records(7000, 9000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let mut tags = Vec::new();
    let mut labels = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(
            rec[0].parse::<usize>().unwrap(),
            i,
            "lost, duplicated or reordered"
        );
        tags.push(rec[2].to_string());
        labels.push(rec[3].to_string());
    }
    assert_eq!(tags.len(), 9000);
    let switch = |v: &[String]| v.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!((tags[0].as_str(), tags[8999].as_str()), ("v1", "v2"));
    assert_eq!(
        switch(&tags),
        1,
        "every batch is processed wholly by one version"
    );
    // Records written after the swap was reported all went to the new version.
    assert!(tags.iter().position(|t| t == "v2") <= Some(3000));
    assert!(labels.iter().position(|l| l == "two") <= Some(7000));
    assert_eq!((labels[0].as_str(), labels[8999].as_str()), ("one", "two"));
    assert_eq!(switch(&labels), 1);
    assert!(err.contains("[tagger] broken version"), "{err}");
    let stats = Run {
        code,
        stdout: String::new(),
        stderr: err,
    }
    .assert_balanced();
    // v1 -> v2 and the config change; v2's bytes written back were no new version.
    assert_eq!(stats["stages"][0]["swaps"], 2);
    assert_eq!(stats["stages"][0]["swaps_refused"], 1);
}

fn alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped by whoever inherited it) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

fn wait_until_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn children_do_not_outlive_pipe_on_ctrl_c_sigterm_or_sigkill() {
    // (signal, to the whole process group as a terminal's Ctrl-C does, exit code)
    let cases = [
        (libc::SIGINT, true, 130),
        (libc::SIGTERM, false, 143),
        (libc::SIGKILL, false, -1),
    ];
    for (signal, group, code) in cases {
        let sb = Sandbox::new();
        std::fs::create_dir(sb.path("pids")).unwrap();
        sb.write(
            "pipelines.toml",
            format!(
                "[pipelines.default]\n[[pipelines.default.stages]]\n\
                 command = [\"python3\", {:?}]\nworkers = 2\nconfig = {{ pid_dir = {:?} }}\n",
                repo_file("tests/process/faulty.py"),
                sb.path("pids").to_string_lossy()
            ),
        );
        let mut live = Live::start(&sb, &["run", "-v", "--no-watch"]);
        live.write("id,x\n");
        live.write(&records(0, 100));
        // Two workers, two children: the child started at load for the handshake is
        // the first worker's (issue 13).
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids(&sb.path("pids")).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let children = pids(&sb.path("pids"));
        assert_eq!(children.len(), 2, "{children:?}");
        assert_eq!(children.iter().filter(|&&p| alive(p)).count(), 2);
        let pid = live.child.id() as libc::pid_t;
        // SAFETY: a plain syscall on our own child (or its group, which it leads).
        unsafe {
            libc::kill(if group { -pid } else { pid }, signal);
        }
        let (exit, _, err) = live.finish();
        assert_eq!(exit, code, "{err}");
        assert_eq!(wait_until_gone(&children), Vec::<u32>::new(), "{err}");
        // The children have their own process group: a Ctrl-C reaches `pipe` only,
        // which ends them in order instead of interrupting them mid-batch.
        assert!(!err.contains("KeyboardInterrupt"), "{err}");
    }
}

/// A stage whose child starts a grandchild that keeps the child's stdout open, then
/// exits on the row `die`.
const GRANDPARENT: &str = r#"
import json, os, subprocess, sys
hello = json.loads(sys.stdin.readline())
p = subprocess.Popen(["sleep", "600"])
with open("grandchildren", "a") as f:
    f.write(f"{p.pid}\n")
print(json.dumps({"pipe": 1, "name": "gp", "version": "1.0.0"}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("end"):
        break
    rows = [json.loads(sys.stdin.readline()) for _ in range(msg["rows"])]
    if any(r.get("id") == "die" for r in rows):
        os._exit(1)
    print(json.dumps({"batch": msg["batch"], "rows": len(rows)}))
    for r in rows:
        print(json.dumps(r))
    sys.stdout.flush()
"#;

/// Regression (issue 12): a child that exited while a grandchild held its stdout stalled
/// its worker forever when the stage had no `timeout_ms`; and grandchildren outlived it.
#[cfg(target_os = "linux")]
#[test]
fn a_grandchild_holding_stdout_does_not_stall_the_stage() {
    let sb = Sandbox::new();
    sb.write("gp.py", GRANDPARENT);
    sb.write(
        "pipelines.toml",
        "[pipelines.default]\n[[pipelines.default.stages]]\n\
         command = [\"python3\", \"gp.py\"]\non_error = \"skip\"\n",
    );
    let mut live = Live::start(&sb, &["run", "-v", "--no-watch", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 100));
    live.write("die,x\n");
    let t = Instant::now();
    live.expect_line("restarting it", 20);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    live.write(&records(100, 200));
    let (code, _out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    Run {
        code,
        stdout: String::new(),
        stderr: err.clone(),
    }
    .assert_balanced();
    let grandchildren: Vec<u32> = sb
        .read("grandchildren")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(grandchildren.len() >= 2, "{grandchildren:?}");
    assert_eq!(wait_until_gone(&grandchildren), Vec::<u32>::new(), "{err}");
}
