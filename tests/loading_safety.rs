//! Loading a plugin can never take the host down, and never loads what it did not check
//! (issue 11), through the real binary: truncated and half-written libraries, libraries
//! whose constructors misbehave (the `ctor` test plugin), FIFOs and directories, a
//! library for another CPU, a symlink into a world-writable directory, a replacement by
//! another user, a pinned process stage whose script changed, and identical swaps. Each
//! at start-up and, where it applies, as a hot-swap replacement in a live stream: the
//! host never dies, the message names the file and the reason, every record comes out
//! once, and the old version keeps serving.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{assert_clean_stderr, plugins, Live, Run, Sandbox};

fn ctor_lib() -> PathBuf {
    plugins().dir.join("libctor.so")
}

fn ctor_bytes() -> Vec<u8> {
    std::fs::read(ctor_lib()).unwrap()
}

/// Another build of `ctor`: its bytes with `tag` appended (outside every segment), so
/// that it is a new version to the host.
fn ctor_build(tag: u32) -> Vec<u8> {
    let mut b = ctor_bytes();
    b.extend_from_slice(&tag.to_le_bytes());
    b
}

fn sandbox(watch: bool) -> Sandbox {
    let sb = Sandbox::with_config(&format!(
        "[settings]\nwatch = {watch}\ndebounce_ms = 100\n\n[pipelines.default]\n\n\
         [[pipelines.default.stages]]\nplugin = \"ctor\"\npath = \"plugins\"\n"
    ));
    std::fs::create_dir_all(sb.path("plugins")).unwrap();
    std::fs::set_permissions(sb.path("plugins"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(sb.path("plugins/libctor.so"), ctor_bytes()).unwrap();
    sb
}

/// Writes `bytes` beside `dest` and renames them over it, as deploy tools do.
fn replace(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

fn records(from: u64, to: u64) -> String {
    (from..to).map(|i| format!("{i},x\n")).collect()
}

/// The ids of CSV output `id,x,ctor`: each of 0..n once, in order.
fn assert_ids(out: &str, n: u64) {
    let ids: Vec<u64> = csv::Reader::from_reader(out.as_bytes())
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(ids.len() as u64, n, "records lost or duplicated");
    assert!(ids.iter().copied().eq(0..n), "records out of order");
}

/// `pipe run` at start-up: refused with exit 2, nothing on stdout, stdin left alone;
/// returns the message without its `pipe: error: ` prefix.
fn refused_at_start(sb: &Sandbox) -> String {
    let r = sb.run(&["run", "--no-watch"], "id,x\n1,a\n");
    assert_eq!(r.code, 2, "pipe run: {}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_clean_stderr(&r.stderr);
    let line = r.stderr.lines().next().unwrap_or_default().to_string();
    line.strip_prefix("pipe: error: ")
        .unwrap_or_else(|| panic!("{}", r.stderr))
        .to_string()
}

fn runs_at_start(sb: &Sandbox) -> Run {
    let r = sb.run(&["run", "--no-watch", "--stats=json"], "id,x\n1,a\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "id,x,ctor\n1,a,ok\n");
    r.assert_balanced();
    r
}

// ---------------------------------------------------------------------------------------
// Incomplete files.

#[test]
fn a_library_cut_at_any_length_is_refused_without_a_crash() {
    let sb = sandbox(false);
    let whole = ctor_bytes();
    let mut cuts: Vec<usize> = vec![0, 1, 3, 4, 16, 63, 64, 65, 200, 1000, 4096];
    cuts.extend((1..32).map(|i| whole.len() * i / 32));
    cuts.push(whole.len() - 1);
    for cut in cuts {
        std::fs::write(sb.path("plugins/libctor.so"), &whole[..cut]).unwrap();
        let e = refused_at_start(&sb);
        let expected = if cut < 4 {
            "not an ELF file".to_string()
        } else {
            format!("incomplete: the file is {cut} bytes, its ")
        };
        assert!(
            e.starts_with("stage `ctor`: ./plugins/libctor.so: not a loadable library: ")
                && e.contains(&expected),
            "cut at {cut}: {e}"
        );
        if cut >= 64 {
            assert!(e.ends_with("; is it still being written?"), "{e}");
        }
    }
    std::fs::write(sb.path("plugins/libctor.so"), &whole).unwrap();
    runs_at_start(&sb);
}

#[test]
fn a_library_written_in_place_slowly_swaps_in_once_complete() {
    let sb = sandbox(true);
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 1000));
    let bytes = ctor_build(1);
    let dest = sb.path("plugins/libctor.so");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&dest)
            .unwrap();
        // Slower than debounce_ms (100): each pause shows the host a part of the file.
        for chunk in bytes.chunks(bytes.len() / 3 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    let line = live.expect_line("refused", 30);
    assert!(
        line.contains("./plugins/libctor.so") || line.contains("libctor.so"),
        "{line}"
    );
    assert!(line.contains("incomplete: the file is"), "{line}");
    live.expect_line("swapped stage `ctor`", 30);
    live.write(&records(1000, 2000));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert_ids(&out, 2000);
    assert_clean_stderr(&err);
}

// ---------------------------------------------------------------------------------------
// Constructors: run first in a probe process, never first in the host.

/// (mode, what the refusal says)
const MISBEHAVIOURS: [(&str, &str); 7] = [
    ("crash", "its initialisers crashed with SIGSEGV"),
    ("exit", "its initialisers ended the process (exit status 3)"),
    ("stdin", "its initialisers read from standard input"),
    (
        "stdout",
        "its initialisers closed or replaced its standard output",
    ),
    (
        "print",
        "wrote to standard output (`hello from a constructor`)",
    ),
    ("thread", "its initialisers started 1 thread"),
    ("hang", "its initialisers did not finish within 5 s"),
];

#[test]
fn misbehaving_constructors_are_refused_at_start_up() {
    let sb = sandbox(false);
    runs_at_start(&sb);
    for (mode, says) in MISBEHAVIOURS {
        sb.write("ctor-mode", mode);
        let t = Instant::now();
        let e = refused_at_start(&sb);
        assert!(
            e.starts_with("stage `ctor`: ./plugins/libctor.so: refusing to load: "),
            "{mode}: {e}"
        );
        assert!(e.contains(says), "{mode}: {e}");
        assert!(e.contains("nothing was loaded into pipe"), "{mode}: {e}");
        assert!(t.elapsed() < Duration::from_secs(15), "{mode}: slow");
    }
}

#[test]
fn misbehaving_constructors_are_refused_as_hot_swaps_and_the_old_version_serves_on() {
    let sb = sandbox(true);
    let dest = sb.path("plugins/libctor.so");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    let mut next = 0;
    for (i, (mode, says)) in MISBEHAVIOURS.iter().enumerate() {
        live.write(&records(next, next + 500));
        next += 500;
        sb.write("ctor-mode", mode);
        replace(&dest, &ctor_build(i as u32 + 10));
        let line = live.expect_line("reload of stage `ctor` refused", 30);
        assert!(
            line.contains("libctor.so: refusing to load: "),
            "{mode}: {line}"
        );
        assert!(line.contains(says), "{mode}: {line}");
        std::fs::remove_file(sb.path("ctor-mode")).unwrap();
    }
    // A good version still swaps in after all that.
    live.write(&records(next, next + 500));
    next += 500;
    replace(&dest, &ctor_build(99));
    live.expect_line("swapped stage `ctor`", 30);
    live.write(&records(next, next + 500));
    next += 500;
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert_ids(&out, next);
    assert_clean_stderr(&err);
    let stats = Run {
        code,
        stdout: String::new(),
        stderr: err,
    }
    .assert_balanced();
    assert_eq!(stats["stages"][0]["swaps"], 1);
}

// ---------------------------------------------------------------------------------------
// Not a file, not for this machine, not in a trusted place.

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn a_fifo_or_a_directory_says_what_it_is_and_never_blocks() {
    let sb = sandbox(false);
    let dest = sb.path("plugins/libctor.so");
    std::fs::remove_file(&dest).unwrap();
    mkfifo(&dest);
    assert_eq!(
        refused_at_start(&sb),
        "stage `ctor`: ./plugins/libctor.so: refusing to load: it is a FIFO (named pipe), \
         not a plugin file"
    );
    std::fs::remove_file(&dest).unwrap();
    std::fs::create_dir(&dest).unwrap();
    assert_eq!(
        refused_at_start(&sb),
        "stage `ctor`: ./plugins/libctor.so: refusing to load: it is a directory, not a \
         plugin file"
    );
}

#[test]
fn a_fifo_renamed_over_a_plugin_is_refused_and_later_swaps_still_happen() {
    let sb = sandbox(true);
    let dest = sb.path("plugins/libctor.so");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 500));
    let fifo = sb.path("plugins/fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &dest).unwrap();
    let line = live.expect_line("reload of stage `ctor` refused", 30);
    assert!(
        line.contains("it is a FIFO (named pipe), not a plugin file"),
        "{line}"
    );
    live.write(&records(500, 1000));
    replace(&dest, &ctor_build(7));
    live.expect_line("swapped stage `ctor`", 30);
    live.write(&records(1000, 1500));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert_ids(&out, 1500);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_library_for_another_cpu_is_refused_naming_the_machine() {
    let sb = sandbox(false);
    let mut bytes = ctor_bytes();
    // e_machine: AArch64.
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    std::fs::write(sb.path("plugins/libctor.so"), &bytes).unwrap();
    assert_eq!(
        refused_at_start(&sb),
        "stage `ctor`: ./plugins/libctor.so: not a loadable library: a library for AArch64 \
         (ARM 64-bit) (ELF machine 183), but this machine is x86-64; build the plugin for \
         this machine"
    );
}

#[test]
fn a_plugin_symlinked_into_a_world_writable_directory_is_refused() {
    let sb = sandbox(false);
    let open = sb.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(open.join("libctor.so"), ctor_bytes()).unwrap();
    let dest = sb.path("plugins/libctor.so");
    std::fs::remove_file(&dest).unwrap();
    std::os::unix::fs::symlink(open.join("libctor.so"), &dest).unwrap();
    let e = refused_at_start(&sb);
    let real = open.canonicalize().unwrap();
    assert_eq!(
        e,
        format!(
            "stage `ctor`: {}: refusing to load: the directory is writable by everyone \
             (mode 777); run `chmod go-w {}`",
            real.display(),
            real.display()
        )
    );
}

/// Another user may add files to a sticky directory (like /tmp) but not replace ours;
/// whatever it slips in while ours is briefly gone (a delete-then-create install) is
/// its file, refused on the descriptor that was opened, before any of it runs: not even
/// the probe runs it.
#[test]
fn a_replacement_by_another_user_never_runs() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("needs root and setpriv; skipped");
        return;
    }
    let sb = Sandbox::with_config(
        "[settings]\ndebounce_ms = 50\n\n[pipelines.default]\n\n\
         [[pipelines.default.stages]]\nplugin = \"ctor\"\npath = \"drop\"\n",
    );
    let drop_dir = sb.path("drop");
    std::fs::create_dir(&drop_dir).unwrap();
    std::fs::set_permissions(&drop_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The sandbox itself must let `nobody` reach `drop/`.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = drop_dir.join("libctor.so");
    std::fs::write(&dest, ctor_bytes()).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The other user's library: runs code (leaves a mark) as soon as it is mapped.
    let evil = sb.path("evil.so");
    std::fs::write(&evil, ctor_build(666)).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The good library is mapped at start-up, before `mark` is set; the same bytes
    // written back later are not mapped again. So a mark means the other user's code ran.
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    sb.write("ctor-mode", "mark");
    let attacker = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            &format!(
                "end=$(($(date +%s) + 4)); while [ $(date +%s) -lt $end ]; do \
                 cp {evil} {drop}/.x 2>/dev/null && mv -f {drop}/.x {dest} 2>/dev/null; \
                 done",
                evil = evil.display(),
                drop = drop_dir.display(),
                dest = dest.display()
            ),
        ])
        .spawn()
        .unwrap();
    let mut next = 0;
    let mut refusals = 0;
    for _ in 0..20 {
        live.write(&records(next, next + 100));
        next += 100;
        // Delete-then-create: the gap another user can race into.
        let _ = std::fs::remove_file(&dest);
        std::thread::sleep(Duration::from_millis(20));
        let _ = std::fs::write(&dest, ctor_bytes());
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut attacker = attacker;
    attacker.wait().unwrap();
    live.write(&records(next, next + 100));
    next += 100;
    let (code, out, err) = live.finish();
    for l in err.lines() {
        if l.contains("belongs to user id 65534") {
            refusals += 1;
        }
    }
    assert_eq!(code, 0, "{err}");
    assert_ids(&out, next);
    assert!(
        !sb.path("ctor-mark").exists(),
        "the other user's library ran:\n{err}"
    );
    eprintln!("{refusals} replacements by another user refused");
}

// ---------------------------------------------------------------------------------------
// Process stages: the pinned program is checked at every start.

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_pinned_script_changed_after_load_is_refused_at_restart() {
    let script =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/process/faulty.py"))
            .unwrap();
    let sb = Sandbox::new();
    let path = sb.write("faulty.py", &script);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    sb.write(
        "pipelines.toml",
        format!(
            "[pipelines.default]\n[[pipelines.default.stages]]\n\
             command = [\"python3\", \"faulty.py\"]\nsha256 = \"{}\"\non_error = \"skip\"\n\
             config = {{ crash_on = \"die\" }}\n",
            sha256_hex(&script)
        ),
    );
    let mut live = Live::start(&sb, &["run", "-v", "--no-watch", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 100));
    // The script changes under the running stage: a restart must not run it.
    let mut changed = script.clone();
    changed.extend_from_slice(b"\nopen('changed-ran', 'w').close()\n");
    std::fs::write(&path, &changed).unwrap();
    live.write("die,x\n");
    live.expect_line("restarting it", 30);
    // The next batch needs a new child.
    live.write(&records(100, 200));
    let line = live.expect_line("failed to start", 30);
    assert!(line.contains("faulty.py: sha256 is"), "{line}");
    assert!(line.contains("but the stage pins"), "{line}");
    let (code, _out, err) = live.finish();
    assert_eq!(code, 1, "the stage gives up: {err}");
    assert!(err.contains("gave up"), "{err}");
    assert!(!sb.path("changed-ran").exists(), "the changed script ran");
}

// ---------------------------------------------------------------------------------------
// Identical bytes are not a new version.

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `swaps` rewrites of the plugin, identical or each a new build; returns the RSS of
/// the run before and after, in kB.
fn swap_many(swaps: u32, identical: bool) -> (u64, u64) {
    let sb = sandbox(true);
    sb.write(
        "pipelines.toml",
        "[settings]\ndebounce_ms = 20\n\n[pipelines.default]\n\n\
         [[pipelines.default.stages]]\nplugin = \"ctor\"\npath = \"plugins\"\n",
    );
    let dest = sb.path("plugins/libctor.so");
    let mut live = Live::start(&sb, &["run", "-v", "--stats=json"]);
    live.write("id,x\n");
    live.write(&records(0, 10));
    let pid = live.child.id();
    // One swap first, so both runs start from the same state.
    replace(&dest, &ctor_build(0));
    live.expect_line("swapped stage `ctor`", 30);
    // The allocator keeps the buffers of the first reloads (the file is read into
    // memory each time): measure from a warm state.
    for _ in 0..20 {
        replace(&dest, &ctor_build(0));
        live.expect_line("is unchanged", 30);
    }
    let before = rss_kb(pid);
    for i in 0..swaps {
        let bytes = if identical {
            ctor_build(0)
        } else {
            ctor_build(i + 1)
        };
        replace(&dest, &bytes);
        live.expect_line(
            if identical {
                "is unchanged"
            } else {
                "swapped stage `ctor`"
            },
            30,
        );
    }
    let after = rss_kb(pid);
    live.write(&records(10, 20));
    let (code, out, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    assert_ids(&out, 20);
    if identical {
        assert_eq!(err.matches("swapped stage").count(), 1, "{err}");
    }
    (before, after)
}

#[test]
fn two_hundred_identical_swaps_map_nothing_new() {
    let (before, after) = swap_many(200, true);
    eprintln!("RSS over 200 identical swaps (after 20 to warm up): {before} kB -> {after} kB");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
}

/// The figure the README gives for a real swap (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn rss_over_two_hundred_real_swaps() {
    let (before, after) = swap_many(200, false);
    eprintln!(
        "RSS over 200 real swaps: {before} kB -> {after} kB ({} kB per swap)",
        (after.saturating_sub(before)) / 200
    );
}

// ---------------------------------------------------------------------------------------
// No litter.

#[test]
fn private_directories_of_dead_runs_are_swept_at_the_next_start() {
    let sb = sandbox(true);
    let run = sb.path("run");
    std::fs::create_dir_all(&run).unwrap();
    // What a `pipe` killed with SIGKILL leaves: pid above the kernel's maximum, so dead.
    let dead = run.join("pipe-999999999-1f");
    std::fs::create_dir(&dead).unwrap();
    std::fs::set_permissions(&dead, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/proc/self/fd/9", dead.join("0-libctor.so")).unwrap();
    let mut live = Live::start(&sb, &["run", "-v"]);
    live.write("id,x\n1,a\n");
    assert!(!dead.exists(), "the dead run's directory is still there");
    let (code, _, err) = live.finish();
    assert_eq!(code, 0, "{err}");
    let left: Vec<_> = std::fs::read_dir(&run).unwrap().collect();
    assert!(left.is_empty(), "litter: {left:?}");
}
