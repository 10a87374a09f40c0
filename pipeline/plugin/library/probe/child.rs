//! The probe process's side of the probe (`pipe __probe PLUGIN CONFIG`): map the
//! library from the inherited descriptor, check it, run it once, and report each step
//! on the report pipe, checking after each that the code it ran left stdin, stdout,
//! stderr and (for the initialisers) the thread count alone.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use abi_stable::library::lib_header_from_path;
use pipe_sdk::abi::StageMod_Ref;
use pipe_sdk::{Batch, Output};

use super::{LIBRARY_FD, PROBE_ARG, REPORT_FD};
use crate::plugin::library::describe::describe;

/// The probe's side: `pipe __probe PLUGIN CONFIG`. Returns the exit code when this
/// process was started as a probe, `None` otherwise (then `main` goes on as usual).
pub fn main() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != PROBE_ARG {
        return None;
    }
    let plugin = args.next()?.to_string_lossy().into_owned();
    let config = args.next()?.to_string_lossy().into_owned();
    // SAFETY: descriptor 4 was set up for us by the host (pre_exec in `run`).
    let mut report = unsafe { std::fs::File::from_raw_fd(REPORT_FD) };
    let mut say = |line: &str| {
        let _ = report.write_all(format!("{line}\n").as_bytes());
    };
    let fds_before = std_fds();
    let threads_before = threads();
    // After each step: did the code just run touch what carries the records?
    let checkpoint = |say: &mut dyn FnMut(&str), during: &str, threads_too: bool| {
        let mut problems = Vec::new();
        if stdin_was_read() {
            problems.push(format!(
                "{during} read from standard input, which carries the records"
            ));
        }
        let now = std_fds();
        for (i, name) in ["input", "output", "error"].iter().enumerate() {
            if now[i] != fds_before[i] {
                problems.push(format!("{during} closed or replaced its standard {name}"));
            }
        }
        let started = threads().saturating_sub(threads_before);
        if threads_too && started > 0 {
            problems.push(format!(
                "{during} started {started} thread{}; a stage must not run code before the \
                 host asks it to",
                if started == 1 { "" } else { "s" }
            ));
        }
        if let Some(p) = problems.first() {
            say(&format!("problem {p}"));
            say("ok");
            // SAFETY: ends this process at once, on purpose.
            unsafe { libc::_exit(0) }
        }
    };
    say("step mapping");
    let path = PathBuf::from(format!("/proc/self/fd/{LIBRARY_FD}"));
    let module = lib_header_from_path(&path)
        .and_then(|h| {
            checkpoint(&mut say, "its initialisers", true);
            say("step layout");
            h.init_root_module::<StageMod_Ref>()
        })
        .map_err(|e| describe(e, &path));
    checkpoint(&mut say, "its initialisers", true);
    let module = match module {
        Ok(m) => m,
        Err(message) => {
            say(&format!("library {}", message.replace('\n', "\\n")));
            finish(&mut say)
        }
    };
    let m = (module.manifest())();
    let manifest = serde_json::json!({
        "name": m.name.as_str(),
        "version": m.version.as_str(),
        "description": m.description.as_str(),
        "stateful": m.stateful,
        "sdk_version": m.sdk_version.as_str(),
    });
    say(&format!("manifest {manifest}"));
    // Only a library of the right name is run further: the host refuses the others from
    // the manifest, without running their `new`.
    if m.name.as_str() == plugin {
        say("step instance");
        if let Ok(mut instance) = (module.new())(config.as_str().into()).into_result() {
            checkpoint(&mut say, "its `new`", false);
            say("step batch");
            let mut out = Output::new();
            let _ = instance.process(&Batch::new(), &mut out);
            checkpoint(&mut say, "its `process`", false);
            say("step drop");
            drop(instance);
            checkpoint(&mut say, "dropping its instance", false);
        }
    }
    finish(&mut say)
}

/// Reports `ok` and exits at once (no destructors or `atexit` handlers of the library
/// run here).
fn finish(say: &mut impl FnMut(&str)) -> ! {
    say("ok");
    // SAFETY: ends this process at once, on purpose.
    unsafe { libc::_exit(0) }
}

/// Whether the one byte the host put in our stdin is gone.
fn stdin_was_read() -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
    r == 0 && n == 0
}

/// Device and inode of descriptors 0, 1, 2 (`None`: closed).
fn std_fds() -> [Option<(u64, u64)>; 3] {
    [0, 1, 2].map(|fd| {
        // SAFETY: `st` is written by fstat before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    })
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}
