//! `pipe new` end to end: scaffold a stage in a workspace, build it with cargo, find it
//! with `pipe stages`, run it, and run its own generated tests.

mod common;

use std::path::Path;
use std::process::Command;

use common::pipe_bin;

#[test]
fn pipe_new_scaffolds_a_stage_that_builds_is_found_and_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = tempfile::tempdir().unwrap();
    let sdk = root.join("stages/sdk");
    // A user's workspace: the SDK by path, the versions of this repository's lock file.
    std::fs::write(
        ws.path().join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"2\"\nmembers = [\n]\ndefault-members = [\n]\n\n\
             [workspace.package]\nedition = \"2021\"\nlicense = \"MIT\"\n\n\
             [workspace.dependencies]\npipe-sdk = {{ path = {:?} }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\
             serde_json = {{ version = \"1\", features = [\"raw_value\", \"preserve_order\"] }}\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("Cargo.lock"), ws.path().join("Cargo.lock")).unwrap();

    let out = Command::new(pipe_bin())
        .args(["new", "shout", "--root"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stages/shout"));
    let manifest = std::fs::read_to_string(ws.path().join("Cargo.toml")).unwrap();
    assert_eq!(
        manifest.matches("\"stages/shout\"").count(),
        2,
        "{manifest}"
    );
    // A second `pipe new` with the same name is refused and changes nothing.
    let again = Command::new(pipe_bin())
        .args(["new", "shout", "--root"])
        .arg(ws.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // `cargo build` (a plain build builds the default members) and its own tests, sharing
    // this repository's target directory so nothing is compiled twice.
    let target = root.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [vec!["build"], vec!["test", "-p", "stage-shout"]] {
        let out = Command::new(&cargo)
            .args(&args)
            .current_dir(ws.path())
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let lib_dir = target.join("debug");
    let listed = Command::new(pipe_bin())
        .arg("stages")
        .arg(&lib_dir)
        .current_dir(ws.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with("shout "))
        .unwrap_or_else(|| panic!("shout not listed:\n{listed}"));
    assert!(line.contains(" ok "), "{line}");
    assert!(line.contains("0.1.0"), "{line}");

    std::fs::write(
        ws.path().join("pipelines.toml"),
        format!(
            "[settings]\nplugin_dir = {:?}\n[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"shout\"\nconfig = {{ fields = [\"name\"] }}\n",
            lib_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(pipe_bin())
        .args(["run", "--no-watch"])
        .current_dir(ws.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"id,name\n1,ann\n2,bob\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id,name\n1,ANN\n2,BOB\n"
    );
}
