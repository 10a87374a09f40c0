//! In-process tests of the WASM backend with the hand-written guest `tests/wasm/faults.wat`
//! (its header lists the faults a batch's first byte picks). The same faults through the
//! real binary: `tests/wasm_stages.rs`.

use pipe_sdk::host::HostOutput;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pipe_sdk::abi::{ErrorKind, StageBox};
use pipe_sdk::{Batch, Output, Pos};

use super::*;
use crate::plugin::{self, file_spec};

const FAULTS: &str = include_str!("../../../tests/wasm/faults.wat");

/// Writes `wat` compiled to a module named `name.wasm` in a fresh directory.
fn module(wat: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    (dir, path)
}

fn spec(path: &Path, memory_mb: Option<u64>, timeout_ms: Option<u64>) -> StageSpec {
    let mut s = file_spec("faults", path);
    s.memory_mb = memory_mb;
    s.timeout = timeout_ms.map(Duration::from_millis);
    s
}

fn batch(first: &str) -> Batch {
    let mut b = Batch::with_columns(["x", "y"]);
    for (i, v) in [first, "b", "c"].iter().enumerate() {
        b.start_row(Pos {
            input: 0,
            line: i as u64 + 2,
        });
        b.push_str(v);
        b.push_str("ü");
        b.end_row().unwrap();
    }
    b
}

fn run(inst: &mut StageBox, first: &str) -> Result<Batch, StageError> {
    let input = batch(first);
    let mut out = Output::new();
    out.begin(&input);
    inst.process(&input, &mut out).into_result()?;
    Ok(out.resolve(input))
}

fn faults(memory_mb: Option<u64>, timeout_ms: Option<u64>) -> (tempfile::TempDir, StageBox) {
    let (dir, path) = module(FAULTS, "faults");
    let p = plugin::load(&spec(&path, memory_mb, timeout_ms)).unwrap();
    assert_eq!(p.manifest.name, "faults");
    assert_eq!(p.manifest.version, "1.0.0");
    assert_eq!(p.watchdog_timeout(Some(Duration::from_secs(1))), None);
    let inst = p.instantiate("{}").unwrap();
    (dir, inst)
}

#[test]
fn a_wat_guest_passes_rows_through_as_kept_indexes() {
    let (_d, mut inst) = faults(None, None);
    let out = run(&mut inst, "a").unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out.row(0).get_str("x"), Some("a"));
    assert_eq!(out.row(2).get_str("y"), Some("ü"));
    assert_eq!(out.row(2).pos().line, 4);
    assert!(inst.finish(&mut Output::new()).is_ok());
    assert!(inst.export_state().is_ok());
}

#[test]
fn an_infinite_loop_is_stopped_at_the_timeout_and_the_next_batch_runs() {
    let (_d, mut inst) = faults(None, Some(100));
    let t = Instant::now();
    let e = run(&mut inst, "L").unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.message.contains("timeout_ms = 100 ms"), "{e}");
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(150),
        "stopped after {took:?}"
    );
    assert_eq!(run(&mut inst, "a").unwrap().len(), 3);
}

#[test]
fn a_memory_bomb_is_stopped_at_memory_mb() {
    let (_d, mut inst) = faults(Some(8), None);
    let e = run(&mut inst, "B").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.message.contains("memory_mb = 8 MiB"), "{e}");
    assert_eq!(run(&mut inst, "a").unwrap().len(), 3);
}

#[test]
fn traps_and_panics_fail_the_batch_and_the_instance_is_replaced() {
    let (_d, mut inst) = faults(None, None);
    let e = run(&mut inst, "T").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(e.message.contains("trapped (wasm trap:"), "{e}");
    assert_eq!(run(&mut inst, "a").unwrap().len(), 3);
    let e = run(&mut inst, "P").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Panicked);
    assert_eq!(e.message.as_str(), "boom");
    assert_eq!(run(&mut inst, "a").unwrap().len(), 3);
}

#[test]
fn bad_replies_and_refusals_fail_the_batch_only() {
    let (_d, mut inst) = faults(None, None);
    let e = run(&mut inst, "X").unwrap_err();
    assert!(e.message.contains("outside its"), "{e}");
    let e = run(&mut inst, "G").unwrap_err();
    assert!(e.message.contains("broke the WASM batch ABI"), "{e}");
    let e = run(&mut inst, "E").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert_eq!(e.message.as_str(), "refused this batch");
    assert_eq!(run(&mut inst, "a").unwrap().len(), 3);
}

#[test]
fn a_refused_config_is_a_config_error() {
    let (_d, path) = module(FAULTS, "faults");
    let p = plugin::load(&spec(&path, None, None)).unwrap();
    let Err(e) = p.instantiate(r#"{"x":1}"#) else {
        panic!("a config the guest refuses was taken")
    };
    let e = e.to_string();
    assert!(
        e.contains("refused its config: this guest takes no config"),
        "{e}"
    );
}

#[test]
fn modules_that_are_not_stages_are_refused_with_what_is_wrong() {
    let missing = FAULTS.replace("(export \"pipe_process\")", "");
    let (_d, path) = module(&missing, "faults");
    let e = plugin::load(&spec(&path, None, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not export `pipe_process`"), "{e}");

    let wasi = FAULTS.replace(
        "(import \"pipe\" \"log\"",
        "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))\n  (import \"pipe\" \"log\"",
    );
    let (_d, path) = module(&wasi, "faults");
    let e = plugin::load(&spec(&path, None, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("imports `wasi_snapshot_preview1.fd_write`") && e.contains("no WASI"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.wasm");
    std::fs::write(&path, b"\0asm junk").unwrap();
    let e = plugin::load(&spec(&path, None, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a WASM module pipe can run"), "{e}");

    let (_d, path) = module(FAULTS, "faults");
    let mut other = spec(&path, None, None);
    other.kind = crate::config::StageKind::Plugin {
        plugin: "other".into(),
        search: vec![path.clone()],
    };
    let e = plugin::load(&other).unwrap_err().to_string();
    assert!(
        e.contains("this module is stage `faults`, not `other`"),
        "{e}"
    );
}

#[test]
fn a_module_needing_more_memory_than_its_cap_at_start_is_refused() {
    let big = FAULTS.replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 64)",
    );
    let (_d, path) = module(&big, "faults");
    let e = plugin::load(&spec(&path, Some(1), None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory_mb = 1 MiB"), "{e}");
}

#[test]
fn a_plugin_name_finds_its_wasm_file() {
    let (dir, path) = module(FAULTS, "faults");
    let found = plugin::find("faults", &[dir.path().to_path_buf()]).unwrap();
    assert_eq!(found, path);
    assert!(is_wasm(&found));
}
