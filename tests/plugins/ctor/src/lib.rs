//! Test plugin `ctor`: a pass-through stage whose ELF constructor misbehaves on cue, to
//! show that the host probes a library in a child process before it maps it (issue 11).
//!
//! The constructor reads the file named by `PIPE_TEST_CTOR_FILE` (default: `ctor-mode`
//! in the current directory, the test's sandbox) when the library is mapped (so a test can change the behaviour of the next mapping while a run goes on)
//! and does what it says:
//! - `crash`: SIGSEGV; `exit`: `exit(3)`; `hang`: sleeps for ten minutes;
//! - `stdin`: reads one byte of standard input; `stdout`: closes standard output;
//!   `print`: writes a line on standard output; `thread`: starts a thread;
//! - `mark`: creates the file named by `PIPE_TEST_CTOR_MARK` (default: `ctor-mark`),
//!   to show that code ran;
//! - anything else, or no variable: nothing.
//!
//! The stage copies every row and adds column `ctor` = `"ok"`.

use std::time::Duration;

use pipe_sdk::prelude::*;

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    let file = std::env::var_os("PIPE_TEST_CTOR_FILE").unwrap_or_else(|| "ctor-mode".into());
    let mode = std::fs::read_to_string(file).unwrap_or_default();
    // SAFETY: each arm misbehaves on purpose, with plain libc calls.
    unsafe {
        match mode.trim() {
            // A real fault: `raise` would be swallowed by the Rust runtime's handler.
            "crash" => std::ptr::null_mut::<u8>().write_volatile(1),
            "exit" => libc::exit(3),
            "hang" => std::thread::sleep(Duration::from_secs(600)),
            "stdin" => {
                let mut b = [0u8; 1];
                libc::read(0, b.as_mut_ptr().cast(), 1);
            }
            "stdout" => {
                libc::close(1);
            }
            "print" => {
                libc::write(1, b"hello from a constructor\n".as_ptr().cast(), 25);
            }
            "thread" => {
                std::thread::spawn(|| loop {
                    std::thread::sleep(Duration::from_secs(1));
                });
            }
            "mark" => {
                let mark =
                    std::env::var_os("PIPE_TEST_CTOR_MARK").unwrap_or_else(|| "ctor-mark".into());
                let _ = std::fs::write(mark, b"ran");
            }
            _ => {}
        }
    }
}

/// The stage: a copy of each row plus `ctor = "ok"`.
pub struct Ctor;

impl Stage for Ctor {
    type Config = serde::de::IgnoredAny;

    fn new(_config: serde::de::IgnoredAny) -> Result<Self, Error> {
        Ok(Ctor)
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        let mut names: Vec<String> = input.columns().map(str::to_owned).collect();
        names.push("ctor".into());
        out.columns(&names);
        for row in input.rows() {
            let mut w = out.row(row);
            for c in 0..input.width() {
                w.copy(row, c);
            }
            w.str("ok");
        }
        Ok(())
    }
}

export_stage!(
    Ctor,
    name = "ctor",
    description = "a constructor that misbehaves on cue (test plugin)",
);
