//! Finding, checking and opening stage plugins (DESIGN §5).
//!
//! Every load copies the file and opens the copy: `dlopen` caches libraries by path and
//! inode, and abi_stable's `RootModule::load_from*` caches the first module of a type
//! forever, so neither could see a new version of a file it has opened before. On Linux
//! the copy is an anonymous in-memory file (`memfd_create`), opened through a symlink of
//! a unique name in a private per-process directory (mode 0700): no data touches the
//! disk, which made loading faster than writing a copy (see `benches/swap.rs`).
//! Elsewhere, or if that fails, the copy itself goes to that directory. Either way the
//! name is unlinked once the library is mapped.
//! abi_stable never unloads a library, so each reload maps one more copy; the cost is
//! measured by `benches/swap.rs` and given in the README.
//!
//! Before anything is opened the file is checked: it must not be writable by others
//! (nor its directory), must belong to the user running `pipe` or root, and must match
//! the stage's `sha256` pin when one is set. The bytes that are hashed are the bytes
//! written to the private copy, so the file cannot change between check and load.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use pipe_sdk::abi::{ErrorKind, StageBox, StageMod_Ref, SDK_VERSION};
use sha2::{Digest, Sha256};

/// What a plugin says about itself (host-side copy of the ABI manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The stage name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// One line.
    pub description: String,
    /// Needs one worker and ordered input.
    pub stateful: bool,
    /// The SDK version it was built with.
    pub sdk_version: String,
}

/// A loaded, checked plugin: a factory of stage instances.
#[derive(Clone)]
pub struct Plugin {
    /// The file it was loaded from (not the private copy).
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of the loaded bytes, hex, when the stage pins one (checked equal).
    pub sha256: Option<String>,
    factory: Factory,
}

/// How a plugin makes instances.
#[derive(Clone)]
pub enum Factory {
    /// A `cdylib`'s root module.
    Library(StageMod_Ref),
    /// A child process per instance (see `process.rs`).
    Process(Arc<crate::process::ProcessSpec>),
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// Why a plugin could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not found anywhere on the search path.
    #[error(
        "plugin `{plugin}` not found; looked for {names} in: {places}; build it, or point \
         the stage's `path` or settings.plugin_dir at its directory"
    )]
    NotFound {
        /// The plugin name.
        plugin: String,
        /// File names tried.
        names: String,
        /// Directories tried.
        places: String,
    },
    /// The file could not be read or copied.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file or its directory is writable by others, or owned by someone else.
    #[error("{path}: refusing to load: {message}")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// Why, and how to fix it.
        message: String,
    },
    /// The sha256 pin did not match.
    #[error("{path}: sha256 is {actual}, but the stage pins {expected}; refusing to load")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// Not a loadable library, no root module, or an ABI/layout/version mismatch.
    #[error("{path}: {message}")]
    Library {
        /// The file.
        path: PathBuf,
        /// abi_stable's diagnosis, shortened.
        message: String,
    },
    /// The manifest does not fit the stage.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What did not match.
        message: String,
    },
    /// `new(config)` failed or panicked.
    #[error("{path}: stage `{plugin}` {message}")]
    Instance {
        /// The file.
        path: PathBuf,
        /// The plugin name.
        plugin: String,
        /// What went wrong: `refused its config: ...` or `panicked while starting: ...`.
        message: String,
    },
}

/// The file names a plugin may have on this platform: `libNAME.so`, then `NAME.so`.
pub fn file_names(plugin: &str) -> Vec<String> {
    use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
    let mut v = vec![format!("{DLL_PREFIX}{plugin}{DLL_SUFFIX}")];
    if !DLL_PREFIX.is_empty() {
        v.push(format!("{plugin}{DLL_SUFFIX}"));
    }
    v
}

/// Finds plugin `plugin` in `search` (each a directory, or the file itself).
pub fn find(plugin: &str, search: &[PathBuf]) -> Result<PathBuf, LoadError> {
    let names = file_names(plugin);
    for place in search {
        if place.is_file() {
            return Ok(place.clone());
        }
        for n in &names {
            let p = place.join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(LoadError::NotFound {
        plugin: plugin.to_string(),
        names: names.join(" or "),
        places: if search.is_empty() {
            "(no directories)".into()
        } else {
            search
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Checks that `path` and its directory are safe to load code from.
pub fn check_trust(path: &Path) -> Result<(), LoadError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = unsafe { libc::geteuid() };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (p, what) in [(path, "file"), (dir, "directory")] {
            let md = std::fs::metadata(p).map_err(|e| LoadError::Io {
                path: p.to_path_buf(),
                message: e.to_string(),
            })?;
            let mode = md.mode();
            // A sticky directory (like /tmp) lets others create files but not replace
            // ours; the file's own checks still apply.
            let sticky = what == "directory" && mode & 0o1000 != 0;
            if mode & 0o022 != 0 && !sticky {
                return Err(LoadError::Untrusted {
                    path: p.to_path_buf(),
                    message: format!(
                        "the {what} is writable by {} (mode {:o}); run `chmod go-w {}`",
                        if mode & 0o002 != 0 {
                            "everyone"
                        } else {
                            "its group"
                        },
                        mode & 0o7777,
                        p.display()
                    ),
                });
            }
            if md.uid() != uid && md.uid() != 0 {
                return Err(LoadError::Untrusted {
                    path: p.to_path_buf(),
                    message: format!(
                        "the {what} belongs to user id {}, not to you ({uid}) or root; \
                         copy it somewhere you own",
                        md.uid()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The private directory copies are opened from (mode 0700, removed at exit by
/// [`cleanup`]).
fn private_dir() -> Result<&'static Path, LoadError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
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
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))
    });
    match r {
        Ok(p) => Ok(p.as_path()),
        Err(m) => Err(LoadError::Io {
            path: std::env::temp_dir(),
            message: m.clone(),
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

/// How many libraries this process has mapped (each load maps one; none is unmapped).
pub fn libraries_mapped() -> u64 {
    LOADS.load(Ordering::Relaxed)
}

static LOADS: AtomicU64 = AtomicU64::new(0);

/// Reads `p`'s major and minor version ("0.1.3" -> (0, 1)).
fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Plugin {
    /// Loads the plugin at `path`, expecting it to be stage `plugin`: trust and pin
    /// checks, private copy, open, layout and version checks, manifest checks.
    pub fn load(plugin: &str, path: &Path, sha256: Option<&str>) -> Result<Plugin, LoadError> {
        check_trust(path)?;
        let io = |e: std::io::Error| LoadError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let bytes = std::fs::read(path).map_err(io)?;
        // Hashing a plugin (8 MB with debug info) costs milliseconds: only when pinned.
        let digest = match sha256 {
            Some(expected) => {
                let digest = hex(&Sha256::digest(&bytes));
                if expected != digest {
                    return Err(LoadError::Checksum {
                        path: path.to_path_buf(),
                        expected: expected.to_string(),
                        actual: digest,
                    });
                }
                Some(digest)
            }
            None => None,
        };
        let n = LOADS.fetch_add(1, Ordering::Relaxed);
        let name = path
            .file_name()
            .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
        let opened = match memory_copy(&name, &bytes) {
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
                    f.write_all(&bytes).map_err(io)?;
                }
                let opened = open_checked(&copy);
                let _ = std::fs::remove_file(&copy);
                opened
            }
        };
        let module = opened.map_err(|message| LoadError::Library {
            path: path.to_path_buf(),
            message,
        })?;
        let m = (module.manifest())();
        let manifest = Manifest {
            name: m.name.to_string(),
            version: m.version.to_string(),
            description: m.description.to_string(),
            stateful: m.stateful,
            sdk_version: m.sdk_version.to_string(),
        };
        let bad = |message: String| LoadError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        if major_minor(&manifest.sdk_version) != major_minor(SDK_VERSION) {
            return Err(bad(format!(
                "built against pipe-sdk {}, but this pipe needs pipe-sdk {}.x; rebuild the \
                 plugin against the current SDK",
                manifest.sdk_version,
                SDK_VERSION.rsplit_once('.').map_or(SDK_VERSION, |(a, _)| a)
            )));
        }
        if manifest.name != plugin {
            return Err(bad(format!(
                "this library is stage `{}`, not `{plugin}`; fix `plugin` in the config or \
                 the file name",
                manifest.name
            )));
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            manifest,
            sha256: digest,
            factory: Factory::Library(module),
        })
    }

    /// Creates one instance with `config_json`.
    pub fn instantiate(&self, config_json: &str) -> Result<StageBox, LoadError> {
        let made = match &self.factory {
            Factory::Library(module) => (module.new())(config_json.into()).into_result(),
            Factory::Process(spec) => crate::process::spawn(spec, config_json),
        };
        made.map_err(|e| LoadError::Instance {
            path: self.path.clone(),
            plugin: self.manifest.name.clone(),
            // A panic is not the config's fault: saying "refused its config" would send
            // the user looking for a typo (faults.rs: a_panic_in_new_is_a_start_error).
            message: if e.kind == ErrorKind::Panicked {
                format!(
                    "panicked while starting: {}; this is a bug in the plugin",
                    e.message
                )
            } else {
                format!("refused its config: {e}")
            },
        })
    }

    /// The per-batch limit the runtime's watchdog enforces for this plugin's instances.
    /// A process stage enforces `timeout_ms` itself (it kills the hung child and applies
    /// the stage's policy to the batch), so the watchdog, which ends the run, leaves it
    /// alone: the two would race.
    pub fn watchdog_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        match &self.factory {
            Factory::Library(_) => timeout,
            Factory::Process(_) => None,
        }
    }

    /// Why this plugin's instances must not run on: set when a process stage's children
    /// failed too many times in a row (see `process.rs`). The runtime then stops the run.
    pub fn gave_up(&self) -> Option<&str> {
        match &self.factory {
            Factory::Library(_) => None,
            Factory::Process(spec) => spec.gave_up(),
        }
    }

    /// A plugin whose instances are child processes: `manifest` comes from the
    /// program's handshake, `path` is the program file.
    pub fn from_process(
        path: PathBuf,
        manifest: Manifest,
        sha256: Option<String>,
        spec: Arc<crate::process::ProcessSpec>,
    ) -> Plugin {
        Plugin {
            path,
            manifest,
            sha256,
            factory: Factory::Process(spec),
        }
    }
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

/// abi_stable's errors, in a user's words. The private copy's path is left out: the
/// message names the user's file, and the copy is gone by the time it is read.
fn describe(e: LibraryError, copy: &Path) -> String {
    match e {
        LibraryError::OpenError { err, .. } => {
            let text = err.to_string();
            let copy = format!("{}: ", copy.display());
            format!(
                "not a loadable library: {}; rebuild the plugin, or copy it again if a copy \
                 was cut short",
                text.replace(&copy, "").trim()
            )
        }
        LibraryError::GetSymbolError { .. } => format!(
            "not a pipe stage: the library exports no `{}` root module (was it built with \
             pipe_sdk::export_stage!?)",
            StageMod_Ref::NAME
        ),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "built against pipe-sdk {actual_version}, but this pipe needs a version \
             compatible with {expected_version}; rebuild the plugin"
        ),
        LibraryError::AbiInstability(report) => {
            let found = layout_mismatches(&report.to_string());
            format!(
                "the library's stage ABI does not match this pipe's (layout check failed{}); \
                 rebuild it against the current pipe-sdk",
                if found.is_empty() {
                    String::new()
                } else {
                    format!(": {}", found.join("; "))
                }
            )
        }
        other => {
            let text = other.to_string();
            let short: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(4)
                .collect();
            short.join(" / ")
        }
    }
}

/// The mismatches of an abi_stable layout report, one line each (`mismatched type:
/// expected `StageMod`, found `BadMod``), without the type layouts it dumps around them
/// (regression test: loading.rs, `a_library_with_another_layout_is_refused`).
fn layout_mismatches(report: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = report.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(what) = line.strip_prefix("Error:") else {
            continue;
        };
        let mut expected = None;
        let mut actual = None;
        while let Some(l) = lines.next() {
            match l {
                "Expected:" => expected = lines.next(),
                "Found:" => {
                    actual = lines.next();
                    break;
                }
                _ => {}
            }
        }
        found.push(match (expected, actual) {
            (Some(e), Some(a)) => format!("{}: expected `{e}`, found `{a}`", what.trim()),
            _ => what.trim().to_string(),
        });
    }
    found.dedup();
    found
}

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of a file, hex (for `pipe stages`).
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_lists_every_place() {
        let e = find("nope", &[PathBuf::from("/a"), PathBuf::from("/b")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("libnope.so or nope.so"), "{e}");
        assert!(e.contains("/a, /b"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libjunk.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let e = Plugin::load("junk", &p, None).unwrap_err().to_string();
        assert!(e.contains("not a loadable library"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn world_writable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Plugin::load("x", &p, None).unwrap_err().to_string();
        assert!(e.contains("writable by everyone"), "{e}");
        assert!(e.contains("chmod go-w"), "{e}");
    }

    #[test]
    fn sha_pin_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("liby.so");
        std::fs::write(&p, b"x").unwrap();
        let e = Plugin::load("y", &p, Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pins 0000"), "{e}");
    }
}
