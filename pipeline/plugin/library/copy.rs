//! Mapping a library's checked bytes into the host, from a private copy.
//!
//! Every new version is copied and the copy opened: `dlopen` caches libraries by path
//! and inode, and abi_stable's `RootModule::load_from*` caches the first module of a
//! type forever, so neither could see a new version of a file it has opened before. The
//! copy is a sealed anonymous in-memory file (`memfd_create`), opened through a symlink
//! of a unique name in a private per-process directory (mode 0700): no data touches the
//! disk, which made loading faster than writing a copy (see `benches/swap.rs`). The name
//! is unlinked once the library is mapped. The directory is removed at exit, and the
//! directories of `pipe` processes that died without removing theirs are swept when the
//! next one creates its own ([`sweep`]).
//! abi_stable never unloads a library, so each new version maps one more copy (the cost
//! is measured and given in the README); identical bytes are mapped once (`library`).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use abi_stable::library::lib_header_from_path;
use pipe_sdk::abi::StageMod_Ref;

use super::describe::describe;
use crate::plugin::LoadError;

static LOADS: AtomicU64 = AtomicU64::new(0);

/// How many libraries this process has mapped (each new version maps one; none is
/// unmapped).
pub fn libraries_mapped() -> u64 {
    LOADS.load(Ordering::Relaxed)
}

/// The prefix of private directory names: `pipe-PID-NANOS`.
const DIR_PREFIX: &str = "pipe-";

/// The private directory copies are opened from (mode 0700, removed at exit by
/// [`cleanup`]).
fn private_dir() -> Result<&'static Path, LoadError> {
    type Made = Result<PathBuf, (PathBuf, std::io::ErrorKind, String)>;
    static DIR: OnceLock<Made> = OnceLock::new();
    let r = DIR.get_or_init(|| {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        sweep(&base);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("{DIR_PREFIX}{}-{nanos:x}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
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

/// Removes the private directories in `base` left by `pipe` processes that died without
/// removing theirs (a crash, SIGKILL): only directories named `pipe-PID-HEX`, owned by
/// us, mode 0700, holding nothing but symlinks, whose process is gone.
pub(super) fn sweep(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: plain syscall.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some((pid, nanos)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), true) = (
            pid.parse::<libc::pid_t>(),
            !nanos.is_empty() && nanos.bytes().all(|b| b.is_ascii_hexdigit()),
        ) else {
            continue;
        };
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !md.is_dir() || md.uid() != uid || md.mode() & 0o777 != 0o700 {
            continue;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
        if alive {
            continue;
        }
        let ours = std::fs::read_dir(e.path()).is_ok_and(|d| {
            d.flatten()
                .all(|f| f.file_type().is_ok_and(|t| t.is_symlink()))
        });
        if ours {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes the private copy directory (copies are unlinked as they load; this removes
/// the directory itself).
pub fn cleanup() {
    if let Ok(dir) = private_dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A library's checked bytes in an anonymous in-memory file (Linux `memfd_create`),
/// sealed against any change: the probe process gets this descriptor, and the host maps
/// the same one afterwards, so what was probed is what runs. Nothing is written to disk.
/// The descriptor is closed on drop; the mapping `dlopen` made keeps what it needs.
pub(super) struct SealedCopy(OwnedFd);

impl SealedCopy {
    /// Copies `bytes` (the contents of the user's file `name`) and seals the copy.
    pub(super) fn new(name: &str, bytes: &[u8]) -> std::io::Result<SealedCopy> {
        let cname = CString::new(format!("pipe-{name}")).map_err(std::io::Error::other)?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(bytes)?;
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain fcntl on our descriptor.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SealedCopy(OwnedFd::from(f)))
    }

    /// The descriptor, for the probe to inherit.
    pub(super) fn fd(&self) -> &OwnedFd {
        &self.0
    }
}

/// Maps the sealed copy of `path`'s checked bytes and returns its stage root module,
/// or why it is not one.
pub(super) fn map(path: &Path, copy: &SealedCopy) -> Result<StageMod_Ref, LoadError> {
    let n = LOADS.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
    // `dlopen` recognises libraries by the name it is given before it looks at the
    // file, and descriptor numbers come back after a close, so the copy is opened
    // through a symlink of a name never used before, removed once the library is mapped.
    let link = private_dir()?.join(format!("{n}-{name}"));
    let target = format!("/proc/self/fd/{}", copy.0.as_raw_fd());
    std::os::unix::fs::symlink(target, &link).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opened = open_checked(&link);
    let _ = std::fs::remove_file(&link);
    opened.map_err(|message| LoadError::Library {
        path: path.to_path_buf(),
        message,
    })
}

/// Opens a library (the private copy at `copy`) and checks it exports a compatible stage
/// root module.
fn open_checked(copy: &Path) -> Result<StageMod_Ref, String> {
    let header = lib_header_from_path(copy).map_err(|e| describe(e, copy))?;
    header
        .init_root_module::<StageMod_Ref>()
        .map_err(|e| describe(e, copy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_dead_processes_private_directories_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let make = |name: &str, mode: u32| {
            let d = base.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::symlink("/proc/self/fd/9", d.join("0-libx.so")).unwrap();
            d
        };
        // A pid above the kernel's maximum (4194304) is never alive.
        let dead = make("pipe-999999999-1f", 0o700);
        let alive = make(&format!("pipe-{}-1f", std::process::id()), 0o700);
        let other_mode = make("pipe-999999998-1f", 0o755);
        let not_ours = make("pipe-999999997-xyz", 0o700);
        let with_a_file = make("pipe-999999996-2a", 0o700);
        std::fs::write(with_a_file.join("data"), b"keep").unwrap();
        sweep(base.path());
        assert!(!dead.exists());
        for kept in [alive, other_mode, not_ours, with_a_file] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }
}
