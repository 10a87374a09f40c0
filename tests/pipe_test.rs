//! `pipe test` through the binary: the shipped pipelines pass their declarative tests,
//! and a wrong expectation fails with a diff and exit 1.

mod common;

use common::Sandbox;

/// The repository's pipelines.toml, with plugins taken from next to the binary under
/// test rather than from `target/release` (which may hold an older build).
fn shipped_config() -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines.toml")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("plugin_dir"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_shipped_pipelines_pass_their_tests() {
    let sb = Sandbox::with_config(&shipped_config());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pipelines");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3);
    let mut args = vec!["test"];
    args.extend(files.iter().map(String::as_str));
    let run = sb.run(&args, "");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{}", run.stdout);
    assert!(!last.starts_with("0 passed"));
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let sb = Sandbox::with_config(&shipped_config());
    sb.write(
        "t.toml",
        "[[tests]]\nname = \"upper\"\nstage = { plugin = \"compute\", config = { set = { c = \"upper(c)\" } } }\ninput = \"c\\nfr\\n\"\nexpected = \"c\\nfr\\n\"\n\n[[tests]]\nname = \"filter\"\nstage = { plugin = \"filter\", config = { where = \"n > 1\" } }\ninput = \"n\\n1\\n2\\n\"\nexpected = \"n\\n2\\n\"\n",
    );
    let run = sb.run(&["test", "t.toml"], "");
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("upper ... FAILED"), "{}", run.stdout);
    assert!(run.stdout.contains("- fr\n"), "{}", run.stdout);
    assert!(run.stdout.contains("+ FR\n"), "{}", run.stdout);
    assert!(run.stdout.contains("filter ... ok"), "{}", run.stdout);
    assert!(
        run.stdout.ends_with("1 passed, 1 failed\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_malformed_test_file_is_a_usage_error() {
    let sb = Sandbox::with_config(&shipped_config());
    sb.write("bad.toml", "[[tests]]\nname = \"x\"\nwat = 1\n");
    let run = sb.run(&["test", "bad.toml"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("bad.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("wat"), "{}", run.stderr);
}

/// Regression: a diff marked every line after the first mismatch as changed, so one
/// missing row showed the rest of the output as removed and added (issue 13, item 15).
#[test]
fn a_diff_marks_only_the_changed_lines() {
    let sb = Sandbox::with_config(&shipped_config());
    sb.write(
        "t.toml",
        "[[tests]]\nname = \"drop three\"\nstage = { plugin = \"filter\", config = { where = \"n != 3\" } }\ninput = \"n\\n1\\n2\\n3\\n4\\n5\\n\"\nexpected = \"n\\n1\\n2\\n3\\n4\\n5\\n\"\n",
    );
    let run = sb.run(&["test", "t.toml"], "");
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("- 3\n"), "{}", run.stdout);
    for same in ["1", "2", "4", "5"] {
        assert!(
            !run.stdout.contains(&format!("- {same}\n"))
                && !run.stdout.contains(&format!("+ {same}\n")),
            "line {same} is the same on both sides:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("  4\n"), "{}", run.stdout);
}
