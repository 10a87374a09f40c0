//! Live operations through the real binary (issue 16): `pipe run --listen` serves
//! `/metrics`, `/health` and `/stages` while records stream in; a real HTTP client
//! (`curl`) scrapes them, and Prometheus's own checker (`promtool check metrics`, from
//! Debian's `prometheus` package, which .ci/run installs) validates the text format.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Live, Sandbox};

const CONFIG: &str = "[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"filter\"\nname = \"big\"\nconfig = { where = \"n >= 50\" }\n";

/// GET `url` with curl: (status, body).
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl is needed by these tests (apt-get install -y curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `name{labels}` (or `name` with `labels` empty).
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    metrics.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// The address the run printed ("serving ... on http://ADDR").
fn listening(live: &mut Live) -> String {
    let line = live.expect_line("serving /metrics", 60);
    line.rsplit_once("http://")
        .expect("an address")
        .1
        .trim()
        .to_string()
}

fn input(from: u64, to: u64) -> String {
    (from..to).map(|i| format!("{i}\n")).collect()
}

#[test]
fn metrics_are_scraped_during_a_live_run_and_pass_promtool() {
    let sb = Sandbox::with_config(CONFIG);
    let mut live = Live::start(&sb, &["run", "--no-watch", "--listen", "127.0.0.1:0"]);
    let addr = listening(&mut live);
    let text = format!("n\n{}", input(0, 1000));
    live.write(&text);

    // The run is still going (stdin is open): wait until the stage has seen every record.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (code, body) = get(&format!("http://{addr}/metrics"));
        assert_eq!(code, 200, "{body}");
        if sample(&body, "pipe_stage_records_in_total", "stage=\"big\"") == Some(1000.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "records never reached the stage:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let big = "stage=\"big\"";
    assert_eq!(
        sample(&metrics, "pipe_reader_records_total", ""),
        Some(1000.0)
    );
    assert_eq!(
        sample(&metrics, "pipe_reader_bytes_total", ""),
        Some(text.len() as f64)
    );
    assert_eq!(
        sample(&metrics, "pipe_stage_records_out_total", big),
        Some(950.0)
    );
    assert_eq!(
        sample(&metrics, "pipe_stage_records_filtered", big),
        Some(50.0)
    );
    assert_eq!(
        sample(&metrics, "pipe_stage_records_dead_lettered_total", big),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "pipe_stage_swaps_total", big), Some(0.0));
    assert!(sample(&metrics, "pipe_stage_batches_total", big).unwrap() >= 1.0);
    assert!(sample(&metrics, "pipe_stage_busy_seconds_total", big).unwrap() > 0.0);
    assert!(metrics.contains("pipe_stage_info{stage=\"big\",plugin=\"filter\",version=\""));

    // Prometheus's own parser and linter.
    let file = sb.write("scrape.prom", &metrics);
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool is needed by this test (apt-get install -y prometheus)");
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Health while the input is idle, and the chain.
    let (code, body) = get(&format!("http://{addr}/health"));
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["records_read"], 1000);
    let (code, body) = get(&format!("http://{addr}/stages"));
    assert_eq!(code, 200);
    let stages: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &stages[0];
    assert_eq!(s["stage"], "big");
    assert_eq!(s["plugin"], "filter");
    assert_eq!(s["stateful"], false);
    assert_eq!(s["workers"], 1);
    assert!(s["path"].as_str().unwrap().ends_with(&format!(
        "{}filter{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )));
    let version = s["version"].as_str().unwrap();
    assert!(metrics.contains(&format!(
        "pipe_stage_info{{stage=\"big\",plugin=\"filter\",version=\"{version}\"}} 1"
    )));
    assert_eq!(get(&format!("http://{addr}/nope")).0, 404);

    // More records after the scrape are counted too; the run ends normally.
    live.write(&input(1000, 1100));
    let (code, out, stderr) = live.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.lines().count(), 1 + 950 + 100, "{stderr}");
}

#[test]
fn settings_listen_serves_too() {
    let sb = Sandbox::with_config(&format!("[settings]\nlisten = \"127.0.0.1:0\"\n\n{CONFIG}"));
    let mut live = Live::start(&sb, &["run", "--no-watch"]);
    let addr = listening(&mut live);
    let (code, body) = get(&format!("http://{addr}/health"));
    assert_eq!(code, 200, "{body}");
    let (code, _, stderr) = live.finish();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_taken_listen_address_fails_before_reading() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sb = Sandbox::with_config(CONFIG);
    let run = sb.run(&["run", "--no-watch", "--listen", &addr], "n\n100\n");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stdout, "",
        "nothing is written when the run cannot start"
    );
}

/// `pipe ctl ARGS...` against the run at `addr`: (exit code, stdout, stderr).
fn ctl(sb: &Sandbox, addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = sb
        .command(&[&["ctl", "--addr", addr], args].concat())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the stage `tagger` has taken `n` records in, and returns the scrape.
fn wait_in(addr: &str, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&format!("http://{addr}/metrics"));
        if sample(&body, "pipe_stage_records_in_total", "stage=\"tagger\"") == Some(n as f64) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "stage never saw {n} records:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctl_swaps_a_stage_to_a_file_and_rolls_it_back_at_markers() {
    let p = common::plugins();
    let sb = Sandbox::with_config(
        "[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"tagger\"\npath = \"plugins\"\n",
    );
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    std::fs::copy(&p.tagger_v1, sb.path("plugins/libtagger.so")).unwrap();
    let mut live = Live::start(&sb, &["run", "--listen", "127.0.0.1:0"]);
    let addr = listening(&mut live);
    let v2 = p.tagger_v2.display().to_string();

    // Nothing to roll back to yet: refused, exit 1, and the run goes on.
    let (code, _, err) = ctl(&sb, &addr, &["rollback", "tagger"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing to roll back to"), "{err}");
    // A file that is not a plugin: refused, counted, v1 keeps running.
    let junk = sb.write("junk.so", "not a library");
    let (code, _, err) = ctl(&sb, &addr, &["swap", "tagger", junk.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");

    let status = |sb: &Sandbox| -> serde_json::Value {
        let (code, out, err) = ctl(sb, &addr, &["status"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let before = status(&sb);
    assert_eq!(
        before["stages"][0]["last_swap_unix_s"],
        serde_json::Value::Null
    );

    live.write("id,x\n");
    live.write(&(0..300).map(|i| format!("{i},x\n")).collect::<String>());
    wait_in(&addr, 300);
    let (code, out, err) = ctl(&sb, &addr, &["swap", "tagger", &v2]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("swapped stage `tagger`"), "{out}");
    let after = status(&sb);
    assert_eq!(after["health"]["status"], "ok");
    assert_eq!(after["stages"][0]["swaps"], 1);
    assert_ne!(
        after["stages"][0]["version"],
        before["stages"][0]["version"]
    );
    assert_eq!(after["stages"][0]["path"], v2.as_str());
    assert!(after["stages"][0]["last_swap_unix_s"].as_f64().unwrap() > 0.0);

    live.write(&(300..600).map(|i| format!("{i},x\n")).collect::<String>());
    wait_in(&addr, 600);
    let (code, out, err) = ctl(&sb, &addr, &["rollback", "tagger"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("rolled back: swapped stage `tagger`"),
        "{out}"
    );
    let back = status(&sb);
    assert_eq!(back["stages"][0]["version"], before["stages"][0]["version"]);
    assert_eq!(back["stages"][0]["swaps"], 2);

    live.write(&(600..900).map(|i| format!("{i},x\n")).collect::<String>());
    let metrics = wait_in(&addr, 900);
    let tagger = "stage=\"tagger\"";
    assert_eq!(
        sample(&metrics, "pipe_stage_swaps_total", tagger),
        Some(2.0)
    );
    assert_eq!(
        sample(&metrics, "pipe_stage_swaps_refused_total", tagger),
        Some(1.0)
    );
    let orders = |labels: &str| sample(&metrics, "pipe_ctl_orders_total", labels);
    assert_eq!(orders("command=\"swap\",result=\"done\""), Some(1.0));
    assert_eq!(orders("command=\"swap\",result=\"refused\""), Some(1.0));
    assert_eq!(orders("command=\"rollback\",result=\"done\""), Some(1.0));
    assert_eq!(orders("command=\"rollback\",result=\"refused\""), Some(1.0));

    let (code, out, stderr) = live.finish();
    assert_eq!(code, 0, "{stderr}");
    // Every record once, in order, and each on the version that ran when it arrived.
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let tag = rdr
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "tag")
        .unwrap();
    let rows: Vec<(u64, String)> = rdr
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].parse().unwrap(), r[tag].to_string())
        })
        .collect();
    assert_eq!(rows.len(), 900);
    for (i, (id, t)) in rows.iter().enumerate() {
        assert_eq!(*id, i as u64, "lost, duplicated or reordered");
        let want = if (300..600).contains(&i) { "v2" } else { "v1" };
        assert_eq!(t, want, "record {i}");
    }
}

#[test]
fn ctl_without_hot_reload_refuses_and_without_a_run_fails_to_connect() {
    let sb = Sandbox::with_config(CONFIG);
    let mut live = Live::start(&sb, &["run", "--no-watch", "--listen", "127.0.0.1:0"]);
    let addr = listening(&mut live);
    let (code, _, err) = ctl(&sb, &addr, &["swap", "big"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("hot reload is off"), "{err}");
    let (code, _, _) = live.finish();
    assert_eq!(code, 0);
    let (code, _, err) = ctl(&sb, &addr, &["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach a running pipe"), "{err}");
}
