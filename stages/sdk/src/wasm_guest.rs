//! The guest side of the WASM batch ABI ([`crate::wasm_abi`]) for a Rust [`Stage`]:
//! what the exports that [`export_stage!`](crate::export_stage) emits on `wasm32` call.
//! Built only for `wasm32`.
//!
//! One WASM instance holds one stage instance (the host makes one instance per worker),
//! so the glue keeps it in a static. A `wasm32-unknown-unknown` module has a single
//! thread, which is what makes [`GuestCell`]'s `Sync` sound.
//!
//! Buffers live as long as the instance and are reused from batch to batch: the argument
//! buffer the host writes into, the decoded input batch, the output and the reply.
//!
//! A panic cannot be caught here (the target aborts on panic, which traps): the panic
//! hook hands the message to the host through the `panic` import first, so the host
//! reports the trap with it, and the host re-creates the instance.

use std::cell::UnsafeCell;
use std::sync::Once;

use crate::batch::Batch;
use crate::hostapi::HostOutput;
use crate::output::Output;
use crate::stage::{parse_config, Stage};
use crate::wasm_abi::{self, Check};

#[link(wasm_import_module = "pipe")]
extern "C" {
    #[link_name = "log"]
    fn host_log(ptr: *const u8, len: usize);
    #[link_name = "panic"]
    fn host_panic(ptr: *const u8, len: usize);
}

/// Sends one line to the host's stderr (as `[stage] text`).
pub fn log(text: &str) {
    // SAFETY: the host reads `len` bytes at `ptr` from this instance's memory, checked.
    unsafe { host_log(text.as_ptr(), text.len()) }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let msg = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "a panic with a non-text payload".to_string()
            };
            let text = match info.location() {
                Some(l) => format!("{msg} (at {}:{})", l.file(), l.line()),
                None => msg,
            };
            // SAFETY: as in `log`.
            unsafe { host_panic(text.as_ptr(), text.len()) }
        }));
    });
}

/// The state of one guest instance.
pub struct Guest<S> {
    stage: Option<S>,
    arg: Vec<u8>,
    input: Batch,
    out: Output,
    reply: Vec<u8>,
}

/// The static a stage's exports share (see the module docs for why it is `Sync`).
pub struct GuestCell<S>(UnsafeCell<Option<Guest<S>>>);

// SAFETY: wasm32-unknown-unknown runs one thread; the host never calls in re-entrantly.
unsafe impl<S> Sync for GuestCell<S> {}

impl<S: Stage> GuestCell<S> {
    /// An empty cell, for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> GuestCell<S> {
        GuestCell(UnsafeCell::new(None))
    }

    #[allow(clippy::mut_from_ref)]
    fn get(&self) -> &mut Guest<S> {
        // SAFETY: one thread, and no export calls another, so this is the only reference.
        let g = unsafe { &mut *self.0.get() };
        g.get_or_insert_with(|| Guest {
            stage: None,
            arg: Vec::new(),
            input: Batch::new(),
            out: Output::new(),
            reply: Vec::new(),
        })
    }

    /// `pipe_alloc`: the argument buffer, grown to `len` bytes.
    pub fn alloc(&self, len: u32) -> u32 {
        let g = self.get();
        // Grown, never cleared: zeroing a batch-sized buffer before every batch cost as
        // much as decoding it. The host overwrites the `len` bytes it asked for.
        if g.arg.len() < len as usize {
            g.arg.resize(len as usize, 0);
        }
        g.arg.as_ptr() as u32
    }

    /// The argument the host wrote, after checking it is the buffer `alloc` gave.
    fn arg(buf: &[u8], ptr: u32, len: u32) -> Result<&[u8], String> {
        if ptr != buf.as_ptr() as u32 || len as usize > buf.len() {
            return Err("the argument is not the buffer pipe_alloc returned".into());
        }
        Ok(&buf[..len as usize])
    }

    fn reply(g: &mut Guest<S>) -> u64 {
        wasm_abi::pack(g.reply.as_ptr() as u32, g.reply.len() as u32)
    }

    /// `pipe_manifest`.
    pub fn manifest(&self, manifest: String) -> u64 {
        let g = self.get();
        g.reply.clear();
        g.reply.extend_from_slice(manifest.as_bytes());
        Self::reply(g)
    }

    /// `pipe_new`.
    pub fn new_stage(&self, ptr: u32, len: u32) -> u64 {
        install_panic_hook();
        let g = self.get();
        let made = Self::arg(&g.arg, ptr, len)
            .and_then(|a| std::str::from_utf8(a).map_err(|e| e.to_string()))
            .and_then(|json| parse_config::<S::Config>(json).map_err(|e| e.to_string()))
            .and_then(|c| S::new(c).map_err(|e| e.to_string()));
        g.reply.clear();
        match made {
            Ok(s) => {
                g.stage = Some(s);
                wasm_abi::encode_status(Ok(&[]), &mut g.reply);
            }
            Err(m) => wasm_abi::encode_status(Err(&m), &mut g.reply),
        }
        Self::reply(g)
    }

    /// `pipe_process`.
    pub fn process(&self, ptr: u32, len: u32) -> u64 {
        let g = self.get();
        let r = match Self::arg(&g.arg, ptr, len) {
            Ok(a) => wasm_abi::decode_batch(a, &mut g.input, Check::TrustText)
                .map_err(|e| format!("the host's batch: {e}")),
            Err(e) => Err(e),
        };
        g.reply.clear();
        let r = r.and_then(|()| {
            let stage = g.stage.as_mut().ok_or("pipe_new has not been called")?;
            g.out.clear();
            g.out.begin(&g.input);
            stage
                .process(&g.input, &mut g.out)
                .map_err(|e| e.to_string())
        });
        match r {
            Ok(()) => wasm_abi::encode_output(&g.out, &mut g.reply),
            Err(m) => wasm_abi::encode_status(Err(&m), &mut g.reply),
        }
        Self::reply(g)
    }

    /// `pipe_finish`.
    pub fn finish(&self) -> u64 {
        let g = self.get();
        g.reply.clear();
        g.out.clear();
        let r = match g.stage.as_mut() {
            Some(stage) => stage.finish(&mut g.out).map_err(|e| e.to_string()),
            None => Err("pipe_new has not been called".to_string()),
        };
        match r {
            Ok(()) => wasm_abi::encode_output(&g.out, &mut g.reply),
            Err(m) => wasm_abi::encode_status(Err(&m), &mut g.reply),
        }
        Self::reply(g)
    }

    /// `pipe_export_state`.
    pub fn export_state(&self) -> u64 {
        let g = self.get();
        g.reply.clear();
        let r = match g.stage.as_ref() {
            Some(stage) => stage.export_state().map_err(|e| e.to_string()),
            None => Err("pipe_new has not been called".to_string()),
        };
        match r {
            Ok(state) => {
                let mut payload = Vec::with_capacity(4 + state.as_ref().map_or(0, Vec::len));
                payload.extend_from_slice(&u32::from(state.is_some()).to_le_bytes());
                payload.extend_from_slice(state.as_deref().unwrap_or_default());
                wasm_abi::encode_status(Ok(&payload), &mut g.reply);
            }
            Err(m) => wasm_abi::encode_status(Err(&m), &mut g.reply),
        }
        Self::reply(g)
    }

    /// `pipe_import_state`.
    pub fn import_state(&self, ptr: u32, len: u32) -> u64 {
        let g = self.get();
        let r = match (Self::arg(&g.arg, ptr, len), g.stage.as_mut()) {
            (Ok(state), Some(stage)) => stage.import_state(state).map_err(|e| e.to_string()),
            (Err(e), _) => Err(e),
            (_, None) => Err("pipe_new has not been called".to_string()),
        };
        g.reply.clear();
        match r {
            Ok(()) => wasm_abi::encode_status(Ok(&[]), &mut g.reply),
            Err(m) => wasm_abi::encode_status(Err(&m), &mut g.reply),
        }
        Self::reply(g)
    }
}
