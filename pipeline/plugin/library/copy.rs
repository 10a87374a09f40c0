//! Mapping a library's checked bytes into the host, from a private copy.
//!
//! Every load copies the bytes and opens the copy: `dlopen` caches libraries by path and
//! inode, and abi_stable's `RootModule::load_from*` caches the first module of a type
//! forever, so neither could see a new version of a file it has opened before. On Linux
//! the copy is an anonymous in-memory file (`memfd_create`), opened through a symlink of
//! a unique name in a private per-process directory (mode 0700): no data touches the
//! disk, which made loading faster than writing a copy (see `benches/swap.rs`).
//! Elsewhere, or if that fails, the copy itself goes to that directory. Either way the
//! name is unlinked once the library is mapped.
//! abi_stable never unloads a library, so each reload maps one more copy; the cost is
//! measured by `benches/swap.rs` and given in the README.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use abi_stable::library::lib_header_from_path;
use pipe_sdk::abi::StageMod_Ref;

use super::describe::describe;
use crate::plugin::LoadError;

static LOADS: AtomicU64 = AtomicU64::new(0);

/// How many libraries this process has mapped (each load maps one; none is unmapped).
pub fn libraries_mapped() -> u64 {
    LOADS.load(Ordering::Relaxed)
}

/// The private directory copies are opened from (mode 0700, removed at exit by
/// [`cleanup`]).
fn private_dir() -> Result<&'static Path, LoadError> {
    static DIR: OnceLock<Result<PathBuf, (PathBuf, std::io::ErrorKind, String)>> = OnceLock::new();
    let r = DIR.get_or_init(|| {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("pipe-{}-{nanos:x}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(&dir)
            .map(|_| dir.clone())
            .map_err(|e| (dir, e.kind(), e.to_string()))
    });
    match r {
        Ok(p) => Ok(p.as_path()),
        Err((dir, kind, message)) => Err(LoadError::Io {
            path: dir.clone(),
            source: std::io::Error::new(*kind, format!("cannot create it: {message}")),
        }),
    }
}

/// Removes the private copy directory (copies are unlinked as they load; this removes
/// the directory itself).
pub fn cleanup() {
    if let Ok(dir) = private_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Maps `bytes` (the checked contents of `path`) and returns its stage root module, or
/// why it is not one.
pub(super) fn map(path: &Path, bytes: &[u8]) -> Result<StageMod_Ref, LoadError> {
    let io = |source: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let n = LOADS.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
    let opened = match memory_copy(&name, bytes) {
        // In memory: no data written to disk. `dlopen` recognises libraries by the
        // name it is given before it looks at the file, and descriptor numbers come
        // back after a close, so the copy is opened through a symlink of a name never
        // used before, removed once the library is mapped.
        Some(copy) => {
            let link = private_dir()?.join(format!("{n}-{name}"));
            std::os::unix::fs::symlink(copy.path(), &link).map_err(io)?;
            let opened = open_checked(&link);
            let _ = std::fs::remove_file(&link);
            opened
        }
        None => {
            let copy = private_dir()?.join(format!("{n}-{name}"));
            {
                let mut f = std::fs::File::create(&copy).map_err(io)?;
                f.write_all(bytes).map_err(io)?;
            }
            let opened = open_checked(&copy);
            let _ = std::fs::remove_file(&copy);
            opened
        }
    };
    opened.map_err(|message| LoadError::Library {
        path: path.to_path_buf(),
        message,
    })
}

/// An anonymous in-memory file holding a plugin's bytes (Linux `memfd_create`), reached
/// through `/proc/self/fd`: each is a new inode, and nothing is written to disk. The
/// descriptor is closed on drop; the mapping `dlopen` made keeps the contents alive.
struct MemoryCopy(std::fs::File);

impl MemoryCopy {
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

#[cfg(target_os = "linux")]
fn memory_copy(name: &str, bytes: &[u8]) -> Option<MemoryCopy> {
    use std::os::fd::FromRawFd;
    let cname = std::ffi::CString::new(format!("pipe-{name}")).ok()?;
    // SAFETY: a valid C string; the returned descriptor is owned by the File below.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes).ok()?;
    Path::new("/proc/self/fd").is_dir().then_some(MemoryCopy(f))
}

#[cfg(not(target_os = "linux"))]
fn memory_copy(_name: &str, _bytes: &[u8]) -> Option<MemoryCopy> {
    None
}

/// Opens a library (the private copy at `copy`) and checks it exports a compatible stage
/// root module.
fn open_checked(copy: &Path) -> Result<StageMod_Ref, String> {
    let header = lib_header_from_path(copy).map_err(|e| describe(e, copy))?;
    header
        .init_root_module::<StageMod_Ref>()
        .map_err(|e| describe(e, copy))
}
