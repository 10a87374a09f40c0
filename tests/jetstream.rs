//! Scale-out through NATS JetStream (issue 15), against a real `nats-server` that each
//! test starts on a free loopback port with its own store directory, through the real
//! `pipe` binary: publish, run, read the output stream back with `pipe run`.
//!
//! Expected outputs are never written down: they come from running the same stages on
//! the same file without a stream (`pipe run local FILE`), so a test checks that the
//! stream path changes nothing but where records travel.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{plugins, Run, Sandbox};

/// A `nats-server -js` of the test's own, stopped when dropped.
struct NatsServer {
    child: Child,
    url: String,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it is ready. A missing
    /// `nats-server` is a failure, not a skip: `.ci/run` installs it.
    fn start() -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            match spawn_server(port, store.path()) {
                Ok(child) => {
                    return NatsServer {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        store,
                    }
                }
                // The port was taken between our probe and the server's bind.
                Err(seen) if seen.contains("address already in use") => continue,
                Err(seen) => panic!("nats-server did not start:\n{seen}"),
            }
        }
        panic!("no free port for nats-server after 5 attempts");
    }

    /// Stops the server (as a crash would: SIGKILL).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same store.
    fn restart(&mut self) {
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.child = spawn_server(port, self.store.path())
            .unwrap_or_else(|seen| panic!("nats-server did not restart:\n{seen}"));
    }
}

/// Starts `nats-server -js` on `port` with its store in `store`; waits until it is ready.
/// `Err`: what it printed instead.
fn spawn_server(port: u16, store: &Path) -> Result<Child, String> {
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}): install it (apt-get install nats-server; .ci/run does)")
        });
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("Server is ready") {
            return Ok(child);
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(seen.join("\n"))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pipelines of these tests: `work` reads stream IN and writes stream OUT; `local`
/// runs the same stages on files; `collect` reads OUT back to stdout.
fn config(url: &str, input_extra: &str, stages: &str) -> String {
    let stage_tables = |p: &str| stages.replace("STAGES", &format!("[[pipelines.{p}.stages]]"));
    format!(
        r#"[settings]
debounce_ms = 100

[pipelines.work]
input = {{ nats = "{url}", stream = "IN", durable = "work", stop_when_empty = true{input_extra} }}
output = {{ nats = "{url}", stream = "OUT", subject = "out.orders" }}
on_bad_input = "dead-letter"
dead_letter = "rejects.jsonl"
{work}

[pipelines.local]
output = "csv"
on_bad_input = "dead-letter"
dead_letter = "local-rejects.jsonl"
{local}

[pipelines.collect]
input = {{ nats = "{url}", stream = "OUT", durable = "collect", stop_when_empty = true }}
output = "csv"
"#,
        work = stage_tables("work"),
        local = stage_tables("local"),
    )
}

const FILTER: &str = "STAGES\nplugin = \"filter\"\nconfig = { where = \"status == 'paid'\" }\n";

fn slow_filter(delay_ms: u64) -> String {
    format!("{FILTER}\nSTAGES\nplugin = \"faulty\"\nconfig = {{ delay_ms = {delay_ms} }}\n")
}

fn run(sb: &Sandbox, args: &[&str]) -> Run {
    sb.run(args, "")
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stderr:\n{}", r.stderr);
    r
}

/// Generates `n` orders into `orders.csv`, plus `extra` appended as is.
fn orders(sb: &Sandbox, n: usize, extra: &str) {
    let r = ok(run(
        sb,
        &["generate", "orders-csv", "--records", &n.to_string()],
    ));
    sb.write("orders.csv", format!("{}{extra}", r.stdout));
}

fn publish(sb: &Sandbox, url: &str, batch: usize) -> Run {
    ok(run(
        sb,
        &[
            "publish",
            "orders.csv",
            "--to",
            &format!("{url}/in.orders"),
            "--create-stream",
            "IN",
            "--batch-size",
            &batch.to_string(),
        ],
    ))
}

fn create_output_stream(sb: &Sandbox, url: &str) {
    ok(run(
        sb,
        &[
            "publish",
            "--to",
            &format!("{url}/out.orders"),
            "--create-stream",
            "OUT",
        ],
    ));
}

/// CSV records (without the header) sorted: instances write messages in any order.
fn sorted_records(csv: &str) -> Vec<String> {
    let mut v: Vec<String> = csv.lines().skip(1).map(str::to_owned).collect();
    v.sort();
    v
}

/// Each id of CSV `text` and how often it appears.
fn id_counts(text: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    for r in rdr.records() {
        *m.entry(r.unwrap()[0].to_string()).or_insert(0) += 1;
    }
    m
}

/// What the stages make of `orders.csv` without a stream.
fn expected(sb: &Sandbox) -> String {
    ok(run(sb, &["run", "local", "orders.csv"])).stdout
}

/// A `pipe run` in the background, with its stderr collected line by line.
struct Worker {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Worker {
    /// Starts `pipe args...` (with `-v`) and waits until its pipeline runs: connected,
    /// consumer open, stages loaded. A fault timed from here lands mid-run however
    /// slow the machine is at starting processes.
    fn start(sb: &Sandbox, args: &[&str]) -> Worker {
        let mut child = sb
            .command(&[&["-v"], args].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pipe");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker {
            child,
            lines,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !w.seen.iter().any(|l| l.contains("running pipeline")) {
            match w
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => w.seen.push(l),
                Err(_) => panic!("pipe run did not start:\n{}", w.seen.join("\n")),
            }
        }
        w
    }

    /// Waits for a stderr line containing `needle`; panics after `secs`.
    fn expect_line(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} in {secs} s:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (at most `secs`) and returns the exit code and stderr.
    fn wait(mut self, secs: u64) -> Run {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "pipe run did not end within {secs} s; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The rest of stderr: the reader thread ends when the pipe closes.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            stdout: String::new(),
            stderr: self.seen.join("\n"),
        }
    }
}

fn stat(r: &Run, key: &str) -> i64 {
    r.stats()
        .unwrap_or_else(|| panic!("no stats:\n{}", r.stderr))[key]
        .as_i64()
        .unwrap()
}

#[test]
fn published_files_run_into_the_output_stream_with_every_record_once() {
    plugins();
    let nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, "", FILTER));
    // Two unreadable records: dead letters must name orders.csv and their line there.
    orders(&sb, 3000, "9001,2026-01-01T00:00:00Z,x\n9002,too,few\n");
    let p = publish(&sb, &nats.url, 250);
    assert!(
        p.stderr.contains("published 3002 records in 13 messages"),
        "{}",
        p.stderr
    );
    create_output_stream(&sb, &nats.url);

    let r = ok(run(&sb, &["run", "work", "--stats=json"]));
    r.assert_balanced();
    assert!(
        r.stderr.contains("13 messages acked, 0 returned"),
        "{}",
        r.stderr
    );

    let out = ok(run(&sb, &["run", "collect"])).stdout;
    let want = expected(&sb);
    assert!(!want.is_empty());
    assert_eq!(sorted_records(&out), sorted_records(&want));
    assert_eq!(out.lines().next(), want.lines().next(), "the header");

    // The same dead letters as the run on the file: same inputs, same lines.
    let dead = common::jsonl(&sb.read("rejects.jsonl"));
    let local = common::jsonl(&sb.read("local-rejects.jsonl"));
    assert_eq!(dead.len(), 2);
    assert_eq!(dead, local);
    assert_eq!(dead[0]["input"], "orders.csv");
    assert_eq!(dead[0]["line"], 3002);
}

#[test]
fn a_redelivered_batch_is_dropped_by_the_output_streams_duplicate_window() {
    plugins();
    let nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, "", FILTER));
    orders(&sb, 2000, "");
    publish(&sb, &nats.url, 100);
    create_output_stream(&sb, &nats.url);
    let first = ok(run(&sb, &["run", "work"]));
    assert!(
        first.stderr.contains("20 published, 0 of them dropped"),
        "{}",
        first.stderr
    );
    // A second consumer delivers every message again, as a redelivery after a crash
    // would: the same input message and batch give the same message id.
    let again = sb
        .read("pipelines.toml")
        .replace("durable = \"work\"", "durable = \"again\"");
    sb.write("pipelines.toml", again);
    let second = ok(run(&sb, &["run", "work"]));
    assert!(
        second
            .stderr
            .contains("20 published, 20 of them dropped as duplicates"),
        "{}",
        second.stderr
    );
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn kill_9_mid_run_loses_nothing_and_a_restart_finishes_the_job() {
    plugins();
    let nats = NatsServer::start();
    // Short ack wait: the killed run's messages come back within a second.
    let sb = Sandbox::with_config(&config(
        &nats.url,
        ", ack_wait_ms = 1000, max_in_flight = 8",
        &slow_filter(40),
    ));
    orders(&sb, 6000, "");
    publish(&sb, &nats.url, 50);
    create_output_stream(&sb, &nats.url);
    let w = Worker::start(&sb, &["run", "work", "--stats=json"]);
    std::thread::sleep(Duration::from_millis(1500));
    w.signal(libc::SIGKILL);
    let killed = w.wait(10);
    assert_eq!(killed.code, 128 + libc::SIGKILL, "{}", killed.stderr);

    let r = ok(run(&sb, &["run", "work", "--stats=json"]));
    r.assert_balanced();
    assert!(
        stat(&r, "read") < 6000,
        "the killed run did part of the job: {}",
        r.stderr
    );
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    let want = expected(&sb);
    assert_eq!(sorted_records(&out), sorted_records(&want));
    assert!(id_counts(&out).values().all(|&n| n == 1));
}

#[test]
fn sigterm_drains_acks_what_was_written_and_returns_the_rest_at_once() {
    plugins();
    let nats = NatsServer::start();
    // A long ack wait: if the stopped run did not hand its unwritten messages back, the
    // next run would wait a minute for them. It holds more messages (64) than its chain
    // has room for, so some are still unread when the signal comes.
    let sb = Sandbox::with_config(&config(
        &nats.url,
        ", ack_wait_ms = 60000, max_in_flight = 64",
        &slow_filter(40),
    ));
    orders(&sb, 6000, "");
    publish(&sb, &nats.url, 50);
    create_output_stream(&sb, &nats.url);
    let w = Worker::start(&sb, &["run", "work", "--stats=json"]);
    std::thread::sleep(Duration::from_millis(1500));
    w.signal(libc::SIGTERM);
    let stopped = w.wait(20);
    assert_eq!(stopped.code, 143, "{}", stopped.stderr);
    stopped.assert_balanced();
    assert!(
        !stopped.stderr.contains(" 0 returned"),
        "it held unwritten messages: {}",
        stopped.stderr
    );

    let started = Instant::now();
    let rest = ok(run(&sb, &["run", "work", "--stats=json"]));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the ack wait"
    );
    rest.assert_balanced();
    // What the first run wrote it acked; what it did not, the second read: together,
    // every record once.
    assert_eq!(stat(&stopped, "read") + stat(&rest, "read"), 6000);
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn three_instances_share_one_job() {
    plugins();
    let nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, ", max_in_flight = 4", &slow_filter(10)));
    orders(&sb, 9000, "");
    publish(&sb, &nats.url, 50);
    create_output_stream(&sb, &nats.url);
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&sb, &["run", "work", "--stats=json"]))
        .collect();
    let runs: Vec<Run> = workers.into_iter().map(|w| w.wait(120)).collect();
    let mut read = 0;
    for r in &runs {
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_balanced();
        assert!(stat(r, "read") > 0, "an instance got no work: {}", r.stderr);
        read += stat(r, "read");
    }
    assert_eq!(read, 9000);
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn one_of_three_killed_one_stopped_one_hot_swapped_every_record_once() {
    let p = plugins();
    let nats = NatsServer::start();
    let stages = "STAGES\nplugin = \"tagger\"\npath = \"plugins\"\nSTAGES\nplugin = \"faulty\"\nconfig = { delay_ms = 20 }\n";
    let sb = Sandbox::with_config(&config(
        &nats.url,
        ", ack_wait_ms = 1500, max_in_flight = 8",
        stages,
    ));
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    std::fs::copy(&p.tagger_v1, sb.path("plugins/libtagger.so")).unwrap();
    // The instance that is swapped loads its own copy of the plugin.
    let swapped = sb.path("swap");
    std::fs::create_dir_all(swapped.join("plugins")).unwrap();
    std::fs::copy(&p.tagger_v1, swapped.join("plugins/libtagger.so")).unwrap();
    std::fs::write(swapped.join("pipelines.toml"), sb.read("pipelines.toml")).unwrap();
    orders(&sb, 20_000, "");
    publish(&sb, &nats.url, 50);
    create_output_stream(&sb, &nats.url);

    let killed = Worker::start(&sb, &["run", "work", "--stats=json"]);
    let stopped = Worker::start(&sb, &["run", "work", "--stats=json"]);
    let cfg = swapped.join("pipelines.toml");
    let hot = Worker::start(
        &sb,
        &["run", "-c", cfg.to_str().unwrap(), "work", "--stats=json"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    killed.signal(libc::SIGKILL);
    std::fs::copy(&p.tagger_v2, swapped.join("plugins/libtagger.so")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stopped.signal(libc::SIGTERM);

    assert_eq!(killed.wait(10).code, 128 + libc::SIGKILL);
    let stopped = stopped.wait(30);
    assert_eq!(stopped.code, 143, "{}", stopped.stderr);
    stopped.assert_balanced();
    let hot = hot.wait(180);
    assert_eq!(hot.code, 0, "{}", hot.stderr);
    hot.assert_balanced();
    assert!(
        hot.stderr.contains("swapped stage `tagger`"),
        "{}",
        hot.stderr
    );

    let out = ok(run(&sb, &["run", "collect"])).stdout;
    let ids = id_counts(&out);
    assert_eq!(ids.len(), 20_000, "records lost");
    assert!(ids.values().all(|&n| n == 1), "records duplicated");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let tag = rdr
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "tag")
        .expect("a tag column");
    let tags: Vec<String> = rdr.records().map(|r| r.unwrap()[tag].to_string()).collect();
    assert!(
        tags.iter().any(|t| t == "v1") && tags.iter().any(|t| t == "v2"),
        "both versions wrote"
    );
}

#[test]
fn bad_urls_and_missing_streams_are_named() {
    plugins();
    let nats = NatsServer::start();
    let closed_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sb = Sandbox::with_config(&format!(
        r#"[pipelines.down]
input = {{ nats = "nats://127.0.0.1:{closed_port}", stream = "IN" }}
[pipelines.nostream]
input = {{ nats = "{url}", stream = "NOPE" }}
[pipelines.nooutput]
input = {{ nats = "{url}", stream = "IN" }}
output = {{ nats = "{url}", stream = "MISSING", subject = "x.y" }}
[pipelines.wrongsubject]
input = {{ nats = "{url}", stream = "IN" }}
output = {{ nats = "{url}", stream = "IN", subject = "elsewhere" }}
[pipelines.stateful]
input = {{ nats = "{url}", stream = "IN" }}
[[pipelines.stateful.stages]]
plugin = "dedup"
config = {{ key = ["id"] }}
"#,
        url = nats.url
    ));
    orders(&sb, 10, "");
    publish(&sb, &nats.url, 5);
    let cases: &[(&str, &[&str])] = &[
        (
            "down",
            &[
                "pipeline `down`, input",
                "cannot connect to NATS at nats://127.0.0.1:",
                "nats-server",
            ],
        ),
        (
            "nostream",
            &[
                "pipeline `nostream`, input",
                "stream `NOPE` not found on nats://127.0.0.1:",
                "--create-stream NOPE",
            ],
        ),
        (
            "nooutput",
            &["pipeline `nooutput`, output", "stream `MISSING` not found"],
        ),
        (
            "wrongsubject",
            &[
                "pipeline `wrongsubject`, output",
                "does not take subject `elsewhere`",
                "in.orders",
            ],
        ),
        (
            "stateful",
            &[
                "stage `dedup` is stateful",
                "consumer `pipe-stateful`",
                "each instance would see only part of the keys",
            ],
        ),
    ];
    for (pipeline, needles) in cases {
        let r = run(&sb, &["run", pipeline]);
        assert_eq!(r.code, 2, "{pipeline}: {}", r.stderr);
        common::assert_clean_stderr(&r.stderr);
        for n in *needles {
            assert!(r.stderr.contains(n), "{pipeline}: no {n:?} in {}", r.stderr);
        }
    }
    // `pipe check` refuses what `pipe run` refuses.
    let r = run(&sb, &["check", "stateful"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("stage `dedup` is stateful"),
        "{}",
        r.stderr
    );
    // A typo in the URL is a config error, found before connecting.
    sb.write(
        "bad.toml",
        "[pipelines.p]\ninput = { nats = \"nats//127.0.0.1:4222\", stream = \"IN\" }\n",
    );
    let r = run(&sb, &["run", "-c", "bad.toml", "p"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("bad.toml: pipelines.p.input: `nats//127.0.0.1:4222` is not a NATS URL"),
        "{}",
        r.stderr
    );
    // Files named while the pipeline reads a stream.
    let r = run(&sb, &["run", "nostream", "orders.csv"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("give no input files"), "{}", r.stderr);
    // Publishing to a subject no stream takes.
    let r = run(
        &sb,
        &[
            "publish",
            "orders.csv",
            "--to",
            &format!("{}/nobody.here", nats.url),
        ],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no JetStream stream on nats://127.0.0.1:"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("takes subject `nobody.here`"),
        "{}",
        r.stderr
    );
    let r = run(&sb, &["publish", "orders.csv", "--to", "127.0.0.1:4222/x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("must start with nats://"), "{}", r.stderr);
}

#[test]
fn dash_o_is_refused_when_a_stream_is_the_input_or_the_output() {
    plugins();
    let nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, "", FILTER));
    orders(&sb, 10, "");
    publish(&sb, &nats.url, 5);
    let r = run(&sb, &["run", "collect", "-o", "out.csv"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("-o out.csv appears only when the run ends"),
        "{}",
        r.stderr
    );
    assert!(!Path::new(&sb.path("out.csv")).exists());
    // A stream output has no use for -o either.
    let r = run(&sb, &["run", "work", "-o", "out.csv"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("writes to stream `OUT`"), "{}", r.stderr);
    assert!(!Path::new(&sb.path("out.csv")).exists());
}

#[test]
fn progress_acks_keep_slow_messages_from_being_redelivered() {
    plugins();
    let nats = NatsServer::start();
    // A 300 ms ack wait and a stage taking 100 ms a batch: with 16 messages held, the
    // last waits about 1.6 s, five ack waits. Without progress acks the server would
    // deliver them again (read > 2000, duplicates dropped).
    let sb = Sandbox::with_config(&config(
        &nats.url,
        ", ack_wait_ms = 300, max_in_flight = 16",
        &slow_filter(100),
    ));
    orders(&sb, 2000, "");
    publish(&sb, &nats.url, 100);
    create_output_stream(&sb, &nats.url);
    let r = ok(run(&sb, &["run", "work", "--stats=json"]));
    r.assert_balanced();
    assert_eq!(
        stat(&r, "read"),
        2000,
        "messages were delivered again: {}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("20 published, 0 of them dropped as duplicates"),
        "{}",
        r.stderr
    );
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn input_and_output_on_different_servers() {
    plugins();
    let input = NatsServer::start();
    let output = NatsServer::start();
    // `work` reads from the first server and writes to the second: the input messages
    // are acked on the first as the second stores the output.
    let text = config(&input.url, "", FILTER).replacen(
        &format!("output = {{ nats = \"{}\"", input.url),
        &format!("output = {{ nats = \"{}\"", output.url),
        1,
    );
    let text = text.replace(
        &format!("input = {{ nats = \"{}\", stream = \"OUT\"", input.url),
        &format!("input = {{ nats = \"{}\", stream = \"OUT\"", output.url),
    );
    let sb = Sandbox::with_config(&text);
    orders(&sb, 1000, "");
    publish(&sb, &input.url, 100);
    create_output_stream(&sb, &output.url);
    let r = ok(run(&sb, &["run", "work", "--stats=json"]));
    r.assert_balanced();
    assert!(
        r.stderr.contains("10 messages acked, 0 returned"),
        "{}",
        r.stderr
    );
    // Acked on the input server: a second run finds nothing left.
    let again = ok(run(&sb, &["run", "work", "--stats=json"]));
    assert_eq!(stat(&again, "read"), 0, "{}", again.stderr);
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn a_reload_that_brings_a_stateful_stage_onto_a_shared_stream_is_refused() {
    plugins();
    let nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, "", &slow_filter(50)));
    orders(&sb, 4000, "");
    publish(&sb, &nats.url, 100);
    create_output_stream(&sb, &nats.url);
    let mut w = Worker::start(&sb, &["run", "work", "--stats=json"]);
    // The start-time refusal must hold for a stage added while the run goes on.
    let edited = sb.read("pipelines.toml").replace(
        "[pipelines.local]",
        "[[pipelines.work.stages]]\nplugin = \"dedup\"\nconfig = { key = [\"id\"] }\n\n[pipelines.local]",
    );
    sb.write("pipelines.toml", edited);
    let line = w.expect_line("config change ignored", 30);
    assert!(line.contains("stage `dedup` is stateful"), "{line}");
    let r = w.wait(60);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_balanced();
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn files_can_be_written_to_a_stream() {
    plugins();
    let nats = NatsServer::start();
    let text = config(&nats.url, "", FILTER)
        + &format!(
            "\n[pipelines.tostream]\noutput = {{ nats = \"{}\", stream = \"OUT\", subject = \"out.orders\" }}\n{}",
            nats.url,
            FILTER.replace("STAGES", "[[pipelines.tostream.stages]]")
        );
    let sb = Sandbox::with_config(&text);
    orders(&sb, 3000, "");
    create_output_stream(&sb, &nats.url);
    let r = ok(run(
        &sb,
        &[
            "run",
            "tostream",
            "orders.csv",
            "--batch-size",
            "500",
            "--stats=json",
        ],
    ));
    r.assert_balanced();
    // One message per batch of the file: 3000 records in batches of 500.
    assert!(r.stderr.contains("6 published"), "{}", r.stderr);
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
}

#[test]
fn a_server_that_goes_away_fails_the_run_and_loses_nothing() {
    plugins();
    let mut nats = NatsServer::start();
    let sb = Sandbox::with_config(&config(&nats.url, ", ack_wait_ms = 1000", &slow_filter(50)));
    orders(&sb, 5000, "");
    publish(&sb, &nats.url, 50);
    create_output_stream(&sb, &nats.url);
    let w = Worker::start(&sb, &["run", "work", "--stats=json"]);
    std::thread::sleep(Duration::from_millis(1000));
    nats.kill();
    // It must end by itself, with an error naming the server, not hang.
    let r = w.wait(60);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&nats.url), "{}", r.stderr);
    common::assert_clean_stderr(&r.stderr);
    // Back on its store: what the failed run did not finish is delivered again.
    nats.restart();
    let rest = ok(run(&sb, &["run", "work", "--stats=json"]));
    rest.assert_balanced();
    let out = ok(run(&sb, &["run", "collect"])).stdout;
    assert_eq!(sorted_records(&out), sorted_records(&expected(&sb)));
    assert!(id_counts(&out).values().all(|&n| n == 1));
}
