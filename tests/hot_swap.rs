//! Hot swap through the real binary with real rebuilt plugins (DESIGN §7, issue 3):
//! a stage is replaced while records stream in on stdin; nothing is lost, duplicated or
//! reordered; the output switches version once per swap; bad versions never replace a
//! good one; state and config changes are handed over.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{plugins, Live, Sandbox};

fn records(from: u64, to: u64) -> String {
    let mut s = String::with_capacity(((to - from) * 10) as usize);
    for i in from..to {
        s.push_str(&i.to_string());
        s.push_str(",x\n");
    }
    s
}

/// The four ways a new file arrives, as users and tools do it.
fn install(src: &Path, dest: &Path, how: usize) {
    match how % 4 {
        // cp over the file (truncate and write in place).
        0 => {
            std::fs::copy(src, dest).unwrap();
        }
        // Rewrite in place with several writes, as a slow writer would.
        1 => {
            let bytes = std::fs::read(src).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(dest)
                .unwrap();
            for chunk in bytes.chunks(bytes.len() / 3 + 1) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Write beside it, then rename over it (cargo, deploy tools).
        2 => {
            let tmp = dest.with_extension("tmp-new");
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, dest).unwrap();
        }
        // Delete, then create.
        _ => {
            std::fs::remove_file(dest).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::copy(src, dest).unwrap();
        }
    }
}

fn tagger_sandbox(extra_config: &str) -> Sandbox {
    let p = plugins();
    let sb = Sandbox::with_config(&format!(
        "[settings]\ndebounce_ms = 100\n\n[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"tagger\"\npath = \"plugins\"\n{extra_config}"
    ));
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    std::fs::copy(&p.tagger_v1, sb.path("plugins/libtagger.so")).unwrap();
    sb
}

/// Checks that `out` (CSV `id,x,tag...`) holds ids 0..n once each in order, and returns
/// the tag of each row.
fn check_ids_and_tags(out: &str, n: u64) -> Vec<String> {
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let tag_col = headers
        .iter()
        .position(|h| h == "tag")
        .expect("a tag column");
    let mut tags = Vec::with_capacity(n as usize);
    for (expected, rec) in rdr.records().enumerate() {
        let rec = rec.unwrap();
        assert_eq!(
            rec[0].parse::<u64>().unwrap(),
            expected as u64,
            "record out of order, lost or duplicated"
        );
        tags.push(rec[tag_col].to_string());
    }
    assert_eq!(tags.len() as u64, n, "wrong number of records out");
    tags
}

/// (tag, length) of each run of equal tags.
fn runs(tags: &[String]) -> Vec<(String, usize)> {
    let mut v: Vec<(String, usize)> = Vec::new();
    for t in tags {
        match v.last_mut() {
            Some((last, n)) if last == t => *n += 1,
            _ => v.push((t.clone(), 1)),
        }
    }
    v
}

fn switches(tags: &[String]) -> usize {
    tags.windows(2).filter(|w| w[0] != w[1]).count()
}

#[test]
fn a_million_records_survive_twenty_one_swaps_in_order() {
    let p = plugins();
    let sb = tagger_sandbox("workers = 2\n");
    let dest = sb.path("plugins/libtagger.so");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    let total: u64 = 1_100_000; // 22 chunks: one before each of 21 swaps and one after the last
    let chunk = 50_000;
    let swaps = 21;
    let mut next = 0;
    for k in 0..swaps {
        live.write(&records(next, next + chunk));
        next += chunk;
        let (src, to) = if k % 2 == 0 {
            (&p.tagger_v2, "2.0.0")
        } else {
            (&p.tagger_v1, "1.0.0")
        };
        install(src, &dest, k);
        let line = live.expect_line("swapped stage `tagger`", 60);
        assert!(line.contains(&format!("-> {to}")), "{line}");
        assert!(line.contains("drained"), "{line}");
        assert!(line.contains("paused"), "{line}");
    }
    live.write(&records(next, total));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let tags = check_ids_and_tags(&out, total);
    assert_eq!(tags[0], "v1");
    // One switch per swap: every batch was processed wholly by one version and the
    // versions follow each other in input order.
    assert_eq!(
        switches(&tags),
        swaps,
        "tags switched {} times; runs: {:?}; stderr:\n{err}",
        switches(&tags),
        runs(&tags)
    );
    assert_eq!(tags.last().unwrap(), "v2");
    let stats = common::Run {
        code,
        stdout: String::new(),
        stderr: err,
    }
    .assert_balanced();
    assert_eq!(stats["stages"][0]["swaps"], swaps as u64);
    assert!(!stats.to_string().contains("panicked at"));
}

#[test]
fn bad_new_versions_never_replace_a_good_one() {
    let p = plugins();
    let sb = tagger_sandbox("");
    let dest = sb.path("plugins/libtagger.so");
    let good = std::fs::read(&p.tagger_v1).unwrap();
    let junk_dir = sb.path("junk");
    std::fs::create_dir_all(&junk_dir).unwrap();
    let write_junk = |name: &str, bytes: &[u8]| {
        let f = junk_dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        f
    };
    let cases: Vec<(&str, std::path::PathBuf, &str)> = vec![
        (
            "truncated",
            // Cut inside the program headers: what a copy caught early looks like.
            write_junk("truncated.so", &good[..200]),
            "not a loadable library",
        ),
        (
            "not a library",
            write_junk("text.so", b"#!/bin/sh\necho hello\n"),
            "not a loadable library",
        ),
        ("no root module", p.dir.join("libnoroot.so"), "exports no"),
        (
            "layout mismatch",
            p.badabi_layout.clone(),
            "layout check failed",
        ),
        ("old sdk", p.badabi_old_sdk.clone(), "pipe-sdk 0.0.1"),
        (
            "another stage",
            p.dir.join("libfaulty.so"),
            "this library is stage `faulty`, not `tagger`",
        ),
    ];
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    let mut next = 0;
    for (i, (what, file, reason)) in cases.iter().enumerate() {
        live.write(&records(next, next + 1000));
        next += 1000;
        install(file, &dest, i);
        let line = live.expect_line("reload of stage `tagger` refused", 30);
        assert!(line.contains(reason), "{what}: {line}");
        assert!(
            line.contains("libtagger.so"),
            "{what}: the message names the path: {line}"
        );
        assert!(line.contains("1.0.0 keeps running"), "{what}: {line}");
    }
    live.write(&records(next, next + 1000));
    next += 1000;
    // Every load copied the file (in memory, or into the private directory, unlinked
    // once mapped) and refused or opened it: no copy is left on disk while the run goes on.
    for dir in std::fs::read_dir(sb.path("run")).unwrap() {
        let dir = dir.unwrap().path();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(
            left.is_empty(),
            "plugin copies left behind in {dir:?}: {left:?}"
        );
    }
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_dir(sb.path("run")).unwrap().next().is_none(),
        "the private directory is removed at exit"
    );
    let tags = check_ids_and_tags(&out, next);
    assert!(
        tags.iter().all(|t| t == "v1"),
        "a bad version replaced the good one"
    );
    let stats = common::Run {
        code,
        stdout: String::new(),
        stderr: err.clone(),
    }
    .assert_balanced();
    assert_eq!(stats["stages"][0]["swaps_refused"], cases.len() as u64);
    assert_eq!(stats["stages"][0]["swaps"], 0);
    assert!(!err.contains("panicked at"), "{err}");
}

fn set_config(sb: &Sandbox, text: &str) {
    // Rename over the file, as editors do.
    let tmp = sb.path("pipelines.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, sb.path("pipelines.toml")).unwrap();
}

fn tagger_config(stage_config: &str) -> String {
    format!(
        "[settings]\ndebounce_ms = 100\n\n[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"tagger\"\npath = \"plugins\"\nconfig = {stage_config}\n"
    )
}

#[test]
fn config_changes_swap_the_stage_and_bad_configs_change_nothing() {
    let sb = tagger_sandbox("config = { label = \"one\" }\n");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 3000));
    set_config(&sb, &tagger_config("{ label = \"two\" }"));
    // The message names the changed config key, not the unchanged plugin file (issue
    // 13, item 14).
    let l = live.expect_line("swapped stage `tagger` 1.0.0 -> 1.0.0", 30);
    assert!(l.contains("(config changed: config.label)"), "{l}");
    live.write(&records(3000, 6000));
    // A config the stage refuses (unknown key) and one that does not parse.
    set_config(&sb, &tagger_config("{ label = \"three\", bogus = 1 }"));
    let l = live.expect_line("refused", 30);
    assert!(l.contains("bogus"), "{l}");
    live.write(&records(6000, 7000));
    set_config(&sb, "[pipelines.default\n");
    let l = live.expect_line("config change ignored", 30);
    assert!(l.contains("line 1"), "{l}");
    live.write(&records(7000, 8000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let mut rdr = csv::Reader::from_reader(out.as_bytes());
    let labels: Vec<String> = rdr.records().map(|r| r.unwrap()[3].to_string()).collect();
    assert_eq!(labels.len(), 8000);
    let first_two = labels
        .iter()
        .position(|l| l == "two")
        .expect("label switched");
    assert!(labels[..first_two].iter().all(|l| l == "one"));
    assert!(
        labels[first_two..].iter().all(|l| l == "two"),
        "label changed back or again"
    );
    assert!(first_two <= 3000);
}

#[test]
fn adding_a_stage_rebuilds_the_chain_without_losing_records() {
    let sb = tagger_sandbox("");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 5000));
    set_config(
        &sb,
        &format!(
            "{}\n[[pipelines.default.stages]]\nplugin = \"filter\"\nconfig = {{ where = \"id % 2 == 0\" }}\n",
            tagger_config("{}")
        ),
    );
    live.expect_line("rebuilt", 30);
    live.write(&records(5000, 10000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let ids: Vec<u64> = csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    // Before the rebuild every id; after it only even ones; never a duplicate.
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "order or duplicates broken"
    );
    let cut = ids.iter().position(|&i| i >= 5000).unwrap_or(ids.len());
    assert!(ids[..cut].len() <= 5000);
    assert!(ids[cut..].iter().all(|i| i % 2 == 0));
    assert!(ids.contains(&9998));
    common::Run {
        code,
        stdout: String::new(),
        stderr: err,
    }
    .assert_totals_balanced();
}

#[test]
fn dedup_keeps_its_seen_keys_across_a_swap() {
    let p = plugins();
    let sb = Sandbox::with_config(
        "[settings]\ndebounce_ms = 100\n[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"dedup\"\npath = \"plugins\"\nconfig = { key = [\"id\"] }\n",
    );
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    let lib = p.dir.join("libdedup.so");
    std::fs::copy(&lib, sb.path("plugins/libdedup.so")).unwrap();
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 2000));
    // Another build of the same code: identical bytes are not a new version (issue 11).
    let mut rebuilt = std::fs::read(&lib).unwrap();
    rebuilt.push(0);
    let rebuilt_path = sb.path("libdedup-rebuilt.so");
    std::fs::write(&rebuilt_path, rebuilt).unwrap();
    install(&rebuilt_path, &sb.path("plugins/libdedup.so"), 2);
    let line = live.expect_line("swapped stage `dedup`", 30);
    assert!(line.contains("state handed over"), "{line}");
    // Every one of these was seen before the swap.
    live.write(&records(0, 2000));
    live.write(&records(2000, 2100));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let ids: Vec<u64> = csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(ids, (0..2100).collect::<Vec<_>>());
}

#[test]
fn no_watch_turns_hot_reload_off() {
    let p = plugins();
    let sb = tagger_sandbox("");
    let mut live = Live::start(&sb, &["run", "-v", "--no-watch"]);
    live.write("id,x\n");
    live.write(&records(0, 1000));
    install(&p.tagger_v2, &sb.path("plugins/libtagger.so"), 0);
    std::thread::sleep(Duration::from_millis(600));
    live.write(&records(1000, 2000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("swapped"), "{err}");
    let tags = check_ids_and_tags(&out, 2000);
    assert!(tags.iter().all(|t| t == "v1"));
}

#[test]
fn a_new_version_whose_new_panics_or_fails_is_refused() {
    let config = |extra: &str| {
        format!(
            "[settings]\ndebounce_ms = 100\n\n[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"faulty\"\nconfig = {{ {extra} }}\n"
        )
    };
    let sb = Sandbox::with_config(&config(""));
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 1000));
    set_config(&sb, &config("panic_in_new = true"));
    let l = live.expect_line("reload of stage `faulty` refused", 30);
    assert!(l.contains("panicked"), "{l}");
    assert!(
        l.contains("src/lib.rs:"),
        "the panic's location is given: {l}"
    );
    assert!(l.contains("libfaulty.so"), "{l}");
    live.write(&records(1000, 2000));
    set_config(&sb, &config("error_in_new = true"));
    let l = live.expect_line("reload of stage `faulty` refused", 30);
    assert!(l.contains("config refused"), "{l}");
    live.write(&records(2000, 3000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked at"), "{err}");
    let ids: Vec<u64> = csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..3000).collect::<Vec<_>>(),
        "the old version kept serving"
    );
    let stats = common::Run {
        code,
        stdout: String::new(),
        stderr: err,
    }
    .assert_balanced();
    assert_eq!(stats["stages"][0]["swaps_refused"], 2);
}

#[test]
fn a_stage_added_by_a_rebuild_is_watched_too() {
    let p = plugins();
    let sb = tagger_sandbox("");
    std::fs::create_dir_all(sb.path("more")).unwrap();
    std::fs::copy(&p.tagger_v1, sb.path("more/libtagger.so")).unwrap();
    let mut live = Live::start(&sb, &["run", "-v"]);
    live.write("id,x\n");
    live.write(&records(0, 1000));
    set_config(
        &sb,
        &format!(
            // The second tagger writes `tag` over the first's: the CSV header stays.
            "{}\n[[pipelines.default.stages]]\nplugin = \"tagger\"\nname = \"second\"\npath = \"more\"\n",
            tagger_config("{}")
        ),
    );
    live.expect_line("rebuilt", 30);
    live.write(&records(1000, 2000));
    install(&p.tagger_v2, &sb.path("more/libtagger.so"), 2);
    let l = live.expect_line("swapped stage `second`", 30);
    assert!(l.contains("1.0.0 -> 2.0.0"), "{l}");
    live.write(&records(2000, 3000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("2999,x,v2\n"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
}
