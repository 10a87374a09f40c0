//! Loading plugins and configs through the real binary (DESIGN §5, §9, §10; issue 4):
//! every file that is not a usable stage, every untrusted or mis-pinned file and every
//! config mistake is refused before any record is read, with the path (or line and
//! column) in the message and what to do about it. `pipe run` exits 2 on these, `pipe
//! check` exits 1; `pipe check` and `pipe stages` list what loads.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{assert_clean_stderr, plugins, Run, Sandbox};
use sha2::{Digest, Sha256};

/// The stages shipped in `stages/`, by plugin name.
const SHIPPED: [&str; 7] = [
    "filter", "select", "compute", "mask", "dedup", "count", "validate",
];

/// A one-stage pipeline of `plugin` looked for in `./plugins` first, with `extra` keys.
fn stage_config(plugin: &str, extra: &str) -> String {
    format!(
        "[settings]\nwatch = false\n\n[pipelines.default]\n\n\
         [[pipelines.default.stages]]\nplugin = \"{plugin}\"\npath = \"plugins\"\n{extra}\n"
    )
}

/// Copies `from` to `plugins/<name>` in the sandbox with mode 0755 (in a 0755 directory),
/// so that only what a test changes can make it untrusted.
fn install(sb: &Sandbox, from: &Path, name: &str) -> PathBuf {
    let dir = sb.path("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

fn install_bytes(sb: &Sandbox, bytes: &[u8], name: &str) -> PathBuf {
    let src = sb.path("source.bin");
    std::fs::write(&src, bytes).unwrap();
    let to = install(sb, &src, name);
    std::fs::remove_file(src).unwrap();
    to
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `pipe run` refuses to start (exit 2, no output) and `pipe check` fails (exit 1), both
/// with the same one-line error; returns it without the `pipe: error: ` prefix.
fn refused(sb: &Sandbox) -> String {
    sb.write("in.csv", "id,name\n1,a\n");
    let run = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(run.code, 2, "pipe run: {}", run.stderr);
    assert_eq!(run.stdout, "", "no output from a run that cannot start");
    assert!(run.stats().is_none(), "no run, no stats: {}", run.stderr);
    assert_clean_stderr(&run.stderr);
    let check = sb.run(&["check"], "");
    assert_eq!(check.code, 1, "pipe check: {}", check.stderr);
    assert_eq!(check.stdout, "");
    assert_eq!(check.stderr, run.stderr, "check and run say the same");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    lines[0]
        .strip_prefix("pipe: error: ")
        .unwrap_or_else(|| panic!("{}", run.stderr))
        .to_string()
}

/// The pipeline runs: exit 0, the record comes out, and the stats balance.
fn runs(sb: &Sandbox) {
    sb.write("in.csv", "id,name\n1,a\n");
    let r = sb.run(&["run", "in.csv", "--no-watch", "--stats=json"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,name\n1,a\n");
    r.assert_balanced();
    let check = sb.run(&["check"], "");
    assert_eq!(check.code, 0, "{}", check.stderr);
}

fn exe_dir() -> PathBuf {
    plugins().dir.clone()
}

// ---------------------------------------------------------------------------------------
// Files that are not usable stages.

#[test]
fn a_missing_plugin_lists_every_place_looked_in() {
    let sb = Sandbox::with_config(
        "[settings]\nplugin_dir = \"lib/plugins\"\n\n[pipelines.default]\n\n\
         [[pipelines.default.stages]]\nplugin = \"nope\"\nname = \"first\"\npath = \"mine\"\n",
    );
    assert_eq!(
        refused(&sb),
        format!(
            "stage `first`: plugin `nope` not found; looked for libnope.so or nope.so or nope.wasm in: \
             ./mine, ./lib/plugins, {}; build it, or point the stage's `path` or \
             settings.plugin_dir at its directory",
            exe_dir().display()
        )
    );
}

/// Regression: dlopen's message named the private copy that was opened, not the user's
/// file.
#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let sb = Sandbox::with_config(&stage_config("junk", ""));
    install_bytes(&sb, b"#!/bin/sh\necho hello\n", "libjunk.so");
    let e = refused(&sb);
    assert!(
        e.starts_with("stage `junk`: ./plugins/libjunk.so: not a loadable library: "),
        "{e}"
    );
    assert!(
        e.ends_with("; rebuild the plugin, or copy it again if a copy was cut short"),
        "{e}"
    );
    // dlopen names the private copy it opened, which the user never made and which is
    // already gone.
    assert_eq!(e.matches(".so").count(), 1, "one path, the user's: {e}");
}

/// Regression: a library cut short in its program headers (a copy caught early) must be
/// refused, not crash the host.
#[test]
fn a_truncated_library_is_refused() {
    let sb = Sandbox::with_config(&stage_config("faulty", ""));
    let elf = std::fs::read(exe_dir().join("libfaulty.so")).unwrap();
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    assert!(phnum >= 2, "{phnum} program headers");
    let cut = phoff + phentsize * (phnum / 2) + 3;
    install_bytes(&sb, &elf[..cut], "libfaulty.so");
    let e = refused(&sb);
    assert!(
        e.starts_with("stage `faulty`: ./plugins/libfaulty.so: not a loadable library: "),
        "{e}"
    );
    assert_eq!(e.matches(".so").count(), 1, "one path, the user's: {e}");
}

#[test]
fn a_library_with_no_root_module_is_refused() {
    let sb = Sandbox::with_config(&stage_config("noroot", ""));
    install(&sb, &exe_dir().join("libnoroot.so"), "libnoroot.so");
    assert_eq!(
        refused(&sb),
        "stage `noroot`: ./plugins/libnoroot.so: not a pipe stage: the library exports no \
         `stage` root module (was it built with pipe_sdk::export_stage!?)"
    );
}

/// Regression: the layout error showed abi_stable's type-layout dump.
#[test]
fn a_library_with_another_layout_is_refused() {
    let sb = Sandbox::with_config(&stage_config("badabi", ""));
    install(&sb, &plugins().badabi_layout, "libbadabi.so");
    assert_eq!(
        refused(&sb),
        "stage `badabi`: ./plugins/libbadabi.so: the library's stage ABI does not match \
         this pipe's (layout check failed: mismatched type: expected `StageMod`, found \
         `BadMod`); rebuild it against the current pipe-sdk"
    );
}

#[test]
fn a_library_built_against_an_old_sdk_is_refused() {
    let sb = Sandbox::with_config(&stage_config("badabi", ""));
    install(&sb, &plugins().badabi_old_sdk, "libbadabi.so");
    let version = env!("CARGO_PKG_VERSION");
    let major_minor = version.rsplit_once('.').unwrap().0;
    assert_eq!(
        refused(&sb),
        format!(
            "stage `badabi`: ./plugins/libbadabi.so: built against pipe-sdk 0.0.1, but this \
             pipe needs pipe-sdk {major_minor}.x; rebuild the plugin against the current SDK"
        )
    );
}

#[test]
fn a_library_that_is_another_stage_is_refused() {
    let sb = Sandbox::with_config(&stage_config("tagger", ""));
    install(&sb, &exe_dir().join("libfaulty.so"), "libtagger.so");
    assert_eq!(
        refused(&sb),
        "stage `tagger`: ./plugins/libtagger.so: this library is stage `faulty`, not \
         `tagger`; fix `plugin` in the config or the file name"
    );
}

// ---------------------------------------------------------------------------------------
// Trust: permissions and sha256 pins.

#[test]
fn a_plugin_writable_by_others_is_refused_until_chmod_go_w() {
    for (mode, who) in [(0o775, "its group"), (0o757, "everyone")] {
        let sb = Sandbox::with_config(&stage_config("faulty", ""));
        let lib = install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
        chmod(&lib, mode);
        assert_eq!(
            refused(&sb),
            format!(
                "stage `faulty`: ./plugins/libfaulty.so: refusing to load: the file is \
                 writable by {who} (mode {mode:o}); run `chmod go-w ./plugins/libfaulty.so`"
            )
        );
        // The advice works.
        let status = std::process::Command::new("chmod")
            .args(["go-w", "plugins/libfaulty.so"])
            .current_dir(sb.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        runs(&sb);
    }
}

#[test]
fn a_plugin_directory_writable_by_others_is_refused_until_chmod_go_w() {
    for (mode, who) in [(0o775, "its group"), (0o777, "everyone")] {
        let sb = Sandbox::with_config(&stage_config("faulty", ""));
        install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
        chmod(&sb.path("plugins"), mode);
        assert_eq!(
            refused(&sb),
            format!(
                "stage `faulty`: ./plugins: refusing to load: the directory is writable by \
                 {who} (mode {mode:o}); run `chmod go-w ./plugins`"
            )
        );
        let status = std::process::Command::new("chmod")
            .args(["go-w", "./plugins"])
            .current_dir(sb.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        runs(&sb);
    }
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_matching_sha256_pin_loads() {
    let sb = Sandbox::new();
    let lib = install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    let digest = sha256_hex(&lib);
    sb.write(
        "pipelines.toml",
        stage_config("faulty", &format!("sha256 = \"{digest}\"")),
    );
    runs(&sb);
    // Hex digits in either case.
    sb.write(
        "pipelines.toml",
        stage_config(
            "faulty",
            &format!("sha256 = \"{}\"", digest.to_ascii_uppercase()),
        ),
    );
    runs(&sb);
}

#[test]
fn a_mismatched_sha256_pin_is_refused_showing_both_digests() {
    let sb = Sandbox::new();
    let lib = install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    let actual = sha256_hex(&lib);
    // The digest of another build: one digit off.
    let pinned = format!(
        "{}{}",
        if actual.starts_with('0') { '1' } else { '0' },
        &actual[1..]
    );
    sb.write(
        "pipelines.toml",
        stage_config("faulty", &format!("sha256 = \"{pinned}\"")),
    );
    assert_eq!(
        refused(&sb),
        format!(
            "stage `faulty`: ./plugins/libfaulty.so: sha256 is {actual}, but the stage pins \
             {pinned}; refusing to load"
        )
    );
}

#[test]
fn a_malformed_sha256_pin_is_a_config_error() {
    let sb = Sandbox::with_config(&stage_config("faulty", "sha256 = \"abc\""));
    install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    assert_eq!(
        refused(&sb),
        "pipelines.toml: pipelines.default.stages[0]: sha256 must be 64 hex digits"
    );
}

// ---------------------------------------------------------------------------------------
// pipe check and pipe stages.

#[test]
fn pipe_check_lists_every_stage_with_name_version_and_path() {
    let sb = Sandbox::with_config(
        "[settings]\nwatch = false\n\n[pipelines.default]\ndescription = \"two stages\"\n\n\
         [[pipelines.default.stages]]\nplugin = \"faulty\"\nname = \"gate\"\npath = \
         \"plugins\"\nworkers = 2\n\n\
         [[pipelines.default.stages]]\nplugin = \"filter\"\nconfig = { where = \"id > 1\" }\n\n\
         [pipelines.other]\n",
    );
    install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    let r = sb.run(&["check"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "");
    let lines: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let filter = exe_dir().join("libfilter.so");
    let filter = filter.to_str().unwrap();
    assert_eq!(
        lines,
        vec![
            vec![
                "pipeline",
                "`default`",
                "(two",
                "stages):",
                "2",
                "stages,",
                "ok"
            ],
            vec![
                "gate",
                "faulty",
                "1.0.0",
                "2",
                "workers",
                "./plugins/libfaulty.so"
            ],
            vec![
                "filter",
                "filter",
                env!("CARGO_PKG_VERSION"),
                "1",
                "worker",
                filter
            ],
        ],
        "{}",
        r.stdout
    );

    let r = sb.run(&["check", "other"], "");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "pipeline `other`: 0 stages, ok\n");

    let r = sb.run(&["check", "nosuch"], "");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "pipe: error: pipelines.toml: no pipeline `nosuch`; the file defines: default, other\n"
    );
}

#[test]
fn pipe_stages_lists_the_shipped_plugins_with_versions() {
    let p = plugins();
    let sb = Sandbox::new();
    let r = sb.run(&["stages"], "");
    // The test plugins that cannot load (badabi, noroot) are next to `pipe` too.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr, "");
    for name in SHIPPED {
        let path = p.dir.join(format!("lib{name}.so"));
        let path = path.to_str().unwrap();
        let line = r
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{}", r.stdout));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            words[..4],
            [name, env!("CARGO_PKG_VERSION"), "ok", path],
            "{line}"
        );
        assert!(words.len() > 4, "a description: {line}");
    }
    for name in ["badabi", "noroot"] {
        let path = p.dir.join(format!("lib{name}.so"));
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{}", r.stdout));
        assert!(
            line.starts_with(&format!("{name:<12} ?        FAIL {}: ", path.display())),
            "{line}"
        );
    }
    assert_clean_stderr(&r.stdout);
}

#[test]
fn pipe_stages_looks_in_the_plugin_dir_and_given_directories() {
    let sb = Sandbox::with_config("[settings]\nplugin_dir = \"plugins\"\n");
    install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    std::fs::create_dir_all(sb.path("more")).unwrap();
    std::fs::copy(exe_dir().join("libtagger.so"), sb.path("more/libtagger.so")).unwrap();
    let r = sb.run(&["stages", "more"], "");
    assert_eq!(r.stderr, "");
    let listed: Vec<(String, String)> = r
        .stdout
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[3].to_string())
        })
        .collect();
    assert!(
        listed.contains(&("tagger".into(), "more/libtagger.so".into())),
        "{}",
        r.stdout
    );
    assert!(
        listed.contains(&("faulty".into(), "./plugins/libfaulty.so".into())),
        "{}",
        r.stdout
    );
}

/// Regression: `pipe stages | head -1` panicked ("failed printing to stdout").
#[test]
fn listings_to_a_closed_stdout_end_quietly() {
    let sb = Sandbox::with_config(&stage_config("faulty", ""));
    install(&sb, &exe_dir().join("libfaulty.so"), "libfaulty.so");
    for args in [&["stages"][..], &["check"][..]] {
        // A pipe whose reader is already gone, as `pipe stages | head -0` would be.
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors; the read end is closed at once and the
        // write end is owned by the Stdio from here on.
        let stdout = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            libc::close(fds[0]);
            use std::os::fd::FromRawFd;
            Stdio::from(std::os::fd::OwnedFd::from_raw_fd(fds[1]))
        };
        let out = sb
            .command(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(r.code, 0, "pipe {args:?}: {}", r.stderr);
        assert_eq!(r.stderr, "", "pipe {args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Config errors.

/// The error `pipe run` and `pipe check` give for `config` as `pipelines.toml`.
fn config_error(config: &str) -> String {
    let sb = Sandbox::with_config(config);
    refused(&sb)
}

#[test]
fn unknown_keys_are_errors_with_line_and_column() {
    assert_eq!(
        config_error(
            "[pipelines.default]\n\n[[pipelines.default.stages]]\nplugin = \"filter\"\n\
             wokers = 2\n"
        ),
        "pipelines.toml: line 5, column 1: unknown field `wokers`, expected one of \
         `plugin`, `command`, `name`, `path`, `workers`, `on_error`, `timeout_ms`, `memory_mb`, `sha256`, \
         `config`"
    );
    assert_eq!(
        config_error("[settings]\nbatchsize = 10\n\n[pipelines.default]\n"),
        "pipelines.toml: line 2, column 1: unknown field `batchsize`, expected one of \
         `plugin_dir`, `batch_size`, `channel_capacity`, `watch`, `debounce_ms`, \
         `max_record_bytes`, `listen`"
    );
    assert_eq!(
        config_error("[pipelines.default]\n  on_bad_inptu = \"skip\"\n"),
        "pipelines.toml: line 2, column 3: unknown field `on_bad_inptu`, expected one of \
         `description`, `input`, `output`, `dead_letter`, `on_bad_input`, `stages`"
    );
}

#[test]
fn bad_values_and_bad_toml_are_errors_with_line_and_column() {
    assert_eq!(
        config_error(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\n\
             on_error = \"ignore\"\n"
        ),
        "pipelines.toml: line 4, column 12: unknown variant `ignore`, expected one of \
         `fail`, `skip`, `dead-letter`"
    );
    assert_eq!(
        config_error("[pipelines.default\n"),
        "pipelines.toml: line 1, column 19: unclosed table, expected `]`"
    );
}

#[test]
fn a_stage_config_with_an_unknown_key_names_the_key() {
    let filter = exe_dir().join("libfilter.so");
    assert_eq!(
        config_error(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\n\
             config = { wher = \"id > 1\" }\n"
        ),
        format!(
            "stage `filter`: {}: stage `filter` refused its config: bad config at `wher`: \
             unknown field `wher`, expected `where`",
            filter.display()
        )
    );
}

#[test]
fn a_bad_filter_expression_gives_its_position() {
    let filter = exe_dir().join("libfilter.so");
    assert_eq!(
        config_error(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\n\
             name = \"paid\"\nconfig = { where = \"status == 'paid' && (amount > 100\" }\n"
        ),
        format!(
            "stage `paid`: {}: stage `filter` refused its config: bad config at `where`: \
             expected ')' at column 34 in \"status == 'paid' && (amount > 100\"",
            filter.display()
        )
    );
    assert_eq!(
        config_error(
            "[pipelines.default]\n[[pipelines.default.stages]]\nplugin = \"filter\"\n\
             config = { where = \"uper(country) == 'DE'\" }\n"
        ),
        format!(
            "stage `filter`: {}: stage `filter` refused its config: bad config at `where`: \
             unknown function 'uper' at column 1 in \"uper(country) == 'DE'\"; did you mean \
             'upper'?",
            filter.display()
        )
    );
}

#[test]
fn a_missing_config_file_is_named() {
    // `pipe run` with no config named and none here converts (daily.rs:
    // `with_no_config_file_run_converts`); a named one must exist.
    let sb = Sandbox::new();
    let r = sb.run(
        &["run", "-c", "pipelines.toml", "--no-watch", "--stats=json"],
        "id\n1\n",
    );
    assert_eq!(r.code, 2);
    assert_eq!(
        r.stderr,
        "pipe: error: cannot read config pipelines.toml: No such file or directory (os error 2); \
         name one with -c FILE or $PIPE_CONFIG, or run pipe where its pipelines.toml is\n"
    );
    let r = sb.run(&["check"], "");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "pipe: error: cannot read config pipelines.toml: No such file or directory (os error 2); \
         name one with -c FILE or $PIPE_CONFIG, or run pipe where its pipelines.toml is\n"
    );
    let r = sb.run(&["check", "-c", "conf/p.toml"], "");
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "pipe: error: cannot read config conf/p.toml: No such file or directory (os error 2); \
         name one with -c FILE or $PIPE_CONFIG, or run pipe where its pipelines.toml is\n"
    );
}
