//! The sandbox a WASM stage runs in: the one wasmtime engine and its epoch ticker, the
//! per-instance limits (memory cap, per-call deadline), the only two imports a guest gets
//! (`pipe.log`, `pipe.panic`), and [`Sandboxed`], one live instance whose calls come back
//! as a reply or a [`Fault`].
//!
//! Why one engine for the process: compiled code belongs to an engine, and epoch
//! interruption needs a thread that ticks the engine's clock. One engine means one ticker
//! thread however many WASM stages and workers run, and a module compiled for a hot swap
//! runs beside the old one in the same engine. The ticker wakes every [`TICK`]; a call's
//! deadline is counted in ticks, so a guest is stopped between `timeout_ms` and
//! `timeout_ms` + one tick after its call began.
//!
//! Why a trap is not the end of the run: wasmtime unwinds a trap (an `unreachable`, an
//! out-of-bounds access, the epoch deadline, a refused `memory.grow`) back to the host
//! call as an error; the guest's memory is its own, so the host is untouched. The
//! instance, caught mid-call, is dropped and a fresh one made (see `stage.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use pipe_sdk::wasm_abi;
use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Trap,
    TypedFunc,
};

/// The epoch ticker's period: the granularity of `timeout_ms`. 5 ms keeps a timed-out
/// batch well inside the `timeout_ms` + 50 ms the README promises, at 200 wake-ups a
/// second of a thread that does nothing else.
pub const TICK: Duration = Duration::from_millis(5);

/// The memory cap of an instance when the stage sets no `memory_mb`.
pub const DEFAULT_MEMORY_MB: u64 = 128;

/// The per-batch deadline when the stage sets no `timeout_ms`. A native stage without a
/// limit can hang a run forever; a WASM stage can be stopped, so it always has one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `log` line passed on; a longer one is cut (a guest cannot flood stderr
/// with one call).
const LOG_LIMIT: usize = 16 * 1024;

/// The process's engine, with its epoch ticker started on first use.
pub fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.epoch_interruption(true);
            let engine = Engine::new(&config).map_err(|e| format!("wasmtime: {e}"))?;
            let ticking = engine.clone();
            std::thread::Builder::new()
                .name("wasm epoch".into())
                .spawn(move || loop {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                })
                .map_err(|e| format!("cannot start the WASM epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// What a stage's instances may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
    /// The longest one call into the guest may run.
    pub timeout: Duration,
}

impl Limits {
    /// The limits a stage asks for (`memory_mb`, `timeout_ms`), with the defaults.
    pub fn new(memory_mb: Option<u64>, timeout: Option<Duration>) -> Limits {
        let mb = memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        Limits {
            memory_bytes: usize::try_from(mb << 20).unwrap_or(usize::MAX),
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }

    /// The memory cap in MiB, for messages.
    pub fn memory_mb(&self) -> u64 {
        (self.memory_bytes >> 20) as u64
    }

    /// The deadline in epoch ticks: the call is stopped after `timeout` and within one
    /// tick of it (the first tick may come at once, hence the extra one).
    fn ticks(&self) -> u64 {
        (self.timeout.as_nanos() / TICK.as_nanos()) as u64 + 1
    }
}

/// What the host keeps for one instance: its store's data.
pub struct Host {
    /// The stage's name, the prefix of its `log` lines.
    stage: String,
    memory_bytes: usize,
    /// Set when the guest asked for more memory than the cap (the call then traps).
    over_memory: bool,
    /// The message of the guest's last panic (the `panic` import), if it is trapping.
    panic: Option<String>,
}

impl ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.over_memory = true;
            // An error, not `Ok(false)`: `memory.grow` then traps instead of returning
            // -1, so a guest that ignores a failed grow is stopped all the same.
            return Err(wasmtime::Error::msg("memory_mb reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references (8 bytes each); a stage needs a few hundred.
        Ok(desired <= 1 << 16)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Reads `len` bytes at `ptr` of the calling instance's memory, or `None` when they are
/// not all inside it.
fn guest_bytes(caller: &mut Caller<'_, Host>, ptr: u32, len: u32) -> Option<String> {
    let memory = caller.get_export("memory")?.into_memory()?;
    let data = memory.data(&*caller);
    let start = ptr as usize;
    let bytes = data.get(start..start.checked_add(len as usize)?)?;
    let bytes = &bytes[..bytes.len().min(LOG_LIMIT)];
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// The imports every guest may use, and nothing else (no WASI: no files, network, clock
/// or environment).
pub fn linker(engine: &Engine) -> Result<Linker<Host>, String> {
    let mut linker = Linker::new(engine);
    linker
        .func_wrap(
            wasm_abi::IMPORT_MODULE,
            "log",
            |mut caller: Caller<'_, Host>, ptr: u32, len: u32| {
                if let Some(text) = guest_bytes(&mut caller, ptr, len) {
                    let stage = &caller.data().stage;
                    for line in text.lines() {
                        eprintln!("[{stage}] {line}");
                    }
                }
            },
        )
        .map_err(|e| e.to_string())?;
    linker
        .func_wrap(
            wasm_abi::IMPORT_MODULE,
            "panic",
            |mut caller: Caller<'_, Host>, ptr: u32, len: u32| {
                let text = guest_bytes(&mut caller, ptr, len);
                caller.data_mut().panic = text;
            },
        )
        .map_err(|e| e.to_string())?;
    Ok(linker)
}

/// How a call into the guest went wrong, beyond the guest's own refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The guest panicked (its message came through `pipe.panic`) and trapped.
    Panic(String),
    /// The call ran past the deadline.
    Timeout(Duration),
    /// The guest asked for more memory than the cap.
    Memory(u64),
    /// Any other trap (`unreachable`, out-of-bounds access, stack overflow, ...).
    Trap(String),
    /// The reply broke the ABI (out of the guest's memory, or malformed).
    BadReply(String),
}

impl Fault {
    /// Whether the instance must be replaced: after a trap it was stopped mid-call, and
    /// its memory may be half-updated. A bad reply leaves it usable.
    pub fn poisons(&self) -> bool {
        !matches!(self, Fault::BadReply(_))
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Panic(m) => f.write_str(m),
            Fault::Timeout(t) => write!(
                f,
                "stopped after timeout_ms = {} ms; the instance was re-created",
                t.as_millis()
            ),
            Fault::Memory(mb) => write!(
                f,
                "ran out of memory: it asked for more than memory_mb = {mb} MiB; the instance \
                 was re-created"
            ),
            Fault::Trap(m) => write!(f, "trapped ({m}); the instance was re-created"),
            Fault::BadReply(m) => write!(f, "broke the WASM batch ABI: {m}"),
        }
    }
}

/// The typed exports of the ABI (see `pipe_sdk::wasm_abi`).
#[derive(Clone)]
struct Exports {
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    manifest: TypedFunc<(), u64>,
    new: TypedFunc<(u32, u32), u64>,
    process: TypedFunc<(u32, u32), u64>,
    finish: TypedFunc<(), u64>,
    export_state: TypedFunc<(), u64>,
    import_state: TypedFunc<(u32, u32), u64>,
}

/// One live instance of a module, in its own store, under its limits.
pub struct Sandboxed {
    store: Store<Host>,
    exports: Exports,
    limits: Limits,
}

/// The name of every export the ABI requires.
pub const REQUIRED_EXPORTS: [&str; 8] = [
    "memory",
    "pipe_alloc",
    "pipe_manifest",
    "pipe_new",
    "pipe_process",
    "pipe_finish",
    "pipe_export_state",
    "pipe_import_state",
];

impl Sandboxed {
    /// Instantiates `pre` in a new store with `limits` (the module's start function runs
    /// under them too).
    pub fn start(
        pre: &InstancePre<Host>,
        module: &Module,
        stage: &str,
        limits: Limits,
    ) -> Result<Sandboxed, Fault> {
        let host = Host {
            stage: stage.to_string(),
            memory_bytes: limits.memory_bytes,
            over_memory: false,
            panic: None,
        };
        let mut store = Store::new(module.engine(), host);
        store.limiter(|h| h);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(limits.ticks());
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&mut store, &limits, e))?;
        let bad = |what: &str, e: wasmtime::Error| {
            Fault::BadReply(format!("the export `{what}` is missing or mistyped: {e}"))
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| Fault::BadReply("the module exports no `memory`".into()))?;
        macro_rules! typed {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|e| bad($name, e))?
            };
        }
        let exports = Exports {
            memory,
            alloc: typed!("pipe_alloc"),
            manifest: typed!("pipe_manifest"),
            new: typed!("pipe_new"),
            process: typed!("pipe_process"),
            finish: typed!("pipe_finish"),
            export_state: typed!("pipe_export_state"),
            import_state: typed!("pipe_import_state"),
        };
        Ok(Sandboxed {
            store,
            exports,
            limits,
        })
    }

    /// Arms the deadline and clears the fault flags before a call.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.limits.ticks());
        let h = self.store.data_mut();
        h.over_memory = false;
        h.panic = None;
    }

    /// The reply a call returned, as a slice of guest memory.
    fn reply(&self, packed: u64, export: &str) -> Result<&[u8], Fault> {
        let (ptr, len) = wasm_abi::unpack(packed);
        let data = self.exports.memory.data(&self.store);
        let start = ptr as usize;
        start
            .checked_add(len as usize)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| {
                Fault::BadReply(format!(
                    "`{export}` replied with {len} bytes at {ptr}, outside its {} bytes of memory",
                    data.len()
                ))
            })
    }

    /// Copies `len` bytes made by `fill` into a buffer the guest allocates; returns its
    /// address.
    fn write_arg(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<u32, Fault> {
        let len32 = u32::try_from(len)
            .map_err(|_| Fault::BadReply(format!("an argument of {len} bytes is too large")))?;
        self.arm();
        let ptr = self
            .exports
            .alloc
            .call(&mut self.store, len32)
            .map_err(|e| self.fault(e))?;
        if ptr == 0 && len > 0 {
            return Err(Fault::BadReply(format!(
                "`pipe_alloc` could not give {len} bytes"
            )));
        }
        let data = self.exports.memory.data_mut(&mut self.store);
        let data_len = data.len();
        let dst = data
            .get_mut(ptr as usize..ptr as usize + len)
            .ok_or_else(|| {
                Fault::BadReply(format!(
                    "`pipe_alloc` gave {len} bytes at {ptr}, outside its {data_len} bytes of memory"
                ))
            })?;
        fill(dst).map_err(Fault::BadReply)?;
        Ok(ptr)
    }

    fn fault(&mut self, e: wasmtime::Error) -> Fault {
        classify(&mut self.store, &self.limits, e)
    }

    /// Calls `pipe_manifest`; returns its JSON text.
    pub fn manifest(&mut self) -> Result<String, Fault> {
        self.arm();
        let packed = self
            .exports
            .manifest
            .call(&mut self.store, ())
            .map_err(|e| self.fault(e))?;
        let bytes = self.reply(packed, "pipe_manifest")?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Fault::BadReply("the manifest is not UTF-8".into()))
    }

    /// Calls a `(ptr, len) -> reply` export with `len` bytes written by `fill`, then
    /// `read` on the reply.
    fn call_with<T>(
        &mut self,
        export: &str,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
        read: impl FnOnce(&[u8]) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let ptr = self.write_arg(len, fill)?;
        let f = match export {
            "pipe_new" => self.exports.new.clone(),
            "pipe_process" => self.exports.process.clone(),
            _ => self.exports.import_state.clone(),
        };
        self.arm();
        let packed = f
            .call(&mut self.store, (ptr, len as u32))
            .map_err(|e| self.fault(e))?;
        read(self.reply(packed, export)?)
    }

    /// Calls a `() -> reply` export, then `read` on the reply.
    fn call<T>(
        &mut self,
        export: &str,
        read: impl FnOnce(&[u8]) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let f = match export {
            "pipe_finish" => self.exports.finish.clone(),
            _ => self.exports.export_state.clone(),
        };
        self.arm();
        let packed = f.call(&mut self.store, ()).map_err(|e| self.fault(e))?;
        read(self.reply(packed, export)?)
    }

    /// `pipe_new(config)`: `Ok(Err(message))` when the stage refuses its config.
    pub fn create(&mut self, config_json: &str) -> Result<Result<(), String>, Fault> {
        self.call_with(
            "pipe_new",
            config_json.len(),
            |dst| {
                dst.copy_from_slice(config_json.as_bytes());
                Ok(())
            },
            |reply| Ok(status(reply, "pipe_new")?.map(|_| ())),
        )
    }

    /// `pipe_process(batch)`, its reply decoded into `out`.
    pub fn process(
        &mut self,
        input: &pipe_sdk::Batch,
        out: &mut pipe_sdk::Output,
    ) -> Result<Result<(), String>, Fault> {
        self.call_with(
            "pipe_process",
            wasm_abi::encoded_batch_len(input),
            |dst| wasm_abi::write_batch(input, dst).map_err(|e| e.to_string()),
            |reply| {
                wasm_abi::decode_output(reply, Some(input), out)
                    .map_err(|e| Fault::BadReply(format!("`pipe_process`: {e}")))
            },
        )
    }

    /// `pipe_finish()`, its reply decoded into `out`.
    pub fn finish(&mut self, out: &mut pipe_sdk::Output) -> Result<Result<(), String>, Fault> {
        self.call("pipe_finish", |reply| {
            wasm_abi::decode_output(reply, None, out)
                .map_err(|e| Fault::BadReply(format!("`pipe_finish`: {e}")))
        })
    }

    /// `pipe_export_state()`: the state, if the stage keeps one.
    pub fn export_state(&mut self) -> Result<Result<Option<Vec<u8>>, String>, Fault> {
        self.call("pipe_export_state", |reply| {
            Ok(match status(reply, "pipe_export_state")? {
                Ok(payload) => {
                    let (flag, state) = payload.split_at_checked(4).ok_or_else(|| {
                        Fault::BadReply("`pipe_export_state`: no state flag".into())
                    })?;
                    match flag {
                        [0, 0, 0, 0] => Ok(None),
                        [1, 0, 0, 0] => Ok(Some(state.to_vec())),
                        _ => {
                            return Err(Fault::BadReply(
                                "`pipe_export_state`: the state flag is neither 0 nor 1".into(),
                            ))
                        }
                    }
                }
                Err(m) => Err(m),
            })
        })
    }

    /// `pipe_import_state(state)`.
    pub fn import_state(&mut self, state: &[u8]) -> Result<Result<(), String>, Fault> {
        self.call_with(
            "pipe_import_state",
            state.len(),
            |dst| {
                dst.copy_from_slice(state);
                Ok(())
            },
            |reply| Ok(status(reply, "pipe_import_state")?.map(|_| ())),
        )
    }
}

fn status<'a>(reply: &'a [u8], export: &str) -> Result<Result<&'a [u8], String>, Fault> {
    wasm_abi::decode_status(reply).map_err(|e| Fault::BadReply(format!("`{export}`: {e}")))
}

/// Tells what stopped a call: the memory cap, the deadline, a panic, another trap.
fn classify(store: &mut Store<Host>, limits: &Limits, e: wasmtime::Error) -> Fault {
    let host = store.data_mut();
    if host.over_memory {
        return Fault::Memory(limits.memory_mb());
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Fault::Timeout(limits.timeout);
    }
    if let Some(message) = host.panic.take() {
        return Fault::Panic(message);
    }
    match e.downcast_ref::<Trap>() {
        Some(trap) => Fault::Trap(trap.to_string()),
        None => Fault::Trap(e.root_cause().to_string()),
    }
}
