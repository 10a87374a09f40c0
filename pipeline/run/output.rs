//! Where the output goes until the run succeeds: stdout, a device written in place, or
//! a temporary file in the directory of `-o FILE` that replaces FILE only when the run
//! ends well (a failed or interrupted run leaves an existing FILE untouched).
//!
//! The temporary file is never at a name another user can predict (issue 12: a
//! predictable `.FILE.pipe-PID.tmp`, opened following symlinks and without `O_EXCL`, let
//! anyone who can write to a shared directory make a root run overwrite any file):
//!
//! - On Linux it has no name at all (`O_TMPFILE`): a killed run leaves nothing behind,
//!   since the kernel frees an unnamed file with its last descriptor. At commit it is
//!   linked under a fresh random name (through `/proc/self/fd`, as `linkat(2)` documents)
//!   and renamed over FILE.
//! - Elsewhere, or where the file system refuses `O_TMPFILE`, it is created with
//!   `O_EXCL` under a random name (the `tempfile` crate), which a second signal removes.
//!
//! Before the rename the file takes the replaced file's mode (and owner and group, when
//! running as root), and its data and then the directory are synced, so that after a
//! crash FILE is either the old file or the whole new one.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::shutdown::Shutdown;

/// An output that cannot be opened or committed (exit 2 before the run, 1 after).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct OutputError {
    /// What was being done, with the file.
    pub what: String,
    /// The OS's error.
    #[source]
    pub source: io::Error,
}

fn err(what: String) -> impl FnOnce(io::Error) -> OutputError {
    move |source| OutputError { what, source }
}

/// Where output goes until the run succeeds.
#[derive(Debug)]
pub enum OutputTarget {
    /// Written in place: stdout, or a file that is not a regular file.
    InPlace,
    /// A temporary file that [`OutputTarget::commit`] moves over `dest`.
    File(TempOutput),
}

/// The temporary file of `-o FILE` and what it must become.
#[derive(Debug)]
pub struct TempOutput {
    /// A second descriptor of the file the sink writes, to sync and link it at the end.
    file: File,
    /// Its name: `None` while it is unnamed (`O_TMPFILE`).
    name: Option<PathBuf>,
    /// The file it becomes.
    dest: PathBuf,
    /// The directory of both.
    dir: PathBuf,
    /// The mode, owner and group of the file it replaces, to carry over.
    keep: Option<Kept>,
}

/// What a replaced file keeps.
#[derive(Debug, Clone, Copy)]
struct Kept {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Whether `path` names stdout: none, or `-o -`.
fn is_stdout(path: Option<&Path>) -> bool {
    path.is_none_or(|p| p == Path::new("-"))
}

/// Fails when fd 1 was closed (`pipe run >&-`): the run would otherwise exit 0 having
/// written nothing anywhere.
///
/// Rust's runtime reopens a closed fd 0-2 on `/dev/null` before `main`, read-write, so a
/// closed stdout shows as `/dev/null` opened `O_RDWR`; a shell's `>/dev/null` opens it
/// write-only and is left alone. (Only `<>/dev/null` on fd 1 is mistaken for a closed
/// stdout, and gets the same clear error.)
fn check_stdout_open() -> Result<(), OutputError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let closed = || OutputError {
            what: "cannot write the output".into(),
            source: io::Error::other("stdout is closed; give it a file or name one with -o FILE"),
        };
        // SAFETY: fcntl(F_GETFL) only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(1, libc::F_GETFL) };
        if flags == -1 {
            return Err(closed());
        }
        if flags & libc::O_ACCMODE == libc::O_RDWR {
            let null = std::fs::metadata("/dev/null").ok();
            let fd1 = std::fs::metadata("/proc/self/fd/1")
                .or_else(|_| std::fs::metadata("/dev/fd/1"))
                .ok();
            if let (Some(null), Some(fd1)) = (null, fd1) {
                use std::os::unix::fs::MetadataExt;
                if fd1.file_type().is_char_device() && fd1.rdev() == null.rdev() {
                    return Err(closed());
                }
            }
        }
    }
    Ok(())
}

impl OutputTarget {
    /// Opens `path` (stdout when `None` or `-`) and, for a named temporary file, records
    /// it in `shutdown` for a second signal to remove.
    pub fn open(
        path: Option<&Path>,
        shutdown: &Shutdown,
    ) -> Result<(OutputTarget, Box<dyn Write + Send>), OutputError> {
        let dest = match path {
            Some(p) if !is_stdout(path) => p,
            _ => {
                check_stdout_open()?;
                return Ok((OutputTarget::InPlace, Box::new(io::stdout())));
            }
        };
        // Only a regular file is replaced atomically. A device, a FIFO or a socket
        // (`-o /dev/null`, `-o fifo`) is written in place: renaming a temporary file over
        // it would replace the device itself (as root, even /dev/null). A symlink is
        // followed, so the file it points to is the one replaced.
        let resolved;
        let (dest, keep) = match std::fs::metadata(dest) {
            Ok(md) if !md.is_file() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dest)
                    .map_err(err(format!("cannot write -o {}", dest.display())))?;
                return Ok((OutputTarget::InPlace, Box::new(f)));
            }
            Ok(md) => {
                let keep = kept(&md);
                if dest.is_symlink() {
                    resolved = std::fs::canonicalize(dest)
                        .map_err(err(format!("-o {}", dest.display())))?;
                    (resolved.as_path(), keep)
                } else {
                    (dest, keep)
                }
            }
            Err(_) => (dest, None),
        };
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = dest.file_name().ok_or_else(|| OutputError {
            what: format!("-o {}", dest.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let cannot = || format!("cannot write -o {} (in {})", dest.display(), dir.display());
        let (file, name) = match unnamed_in(&dir) {
            Some(f) => (f, None),
            None => {
                let (f, p) = exclusive_in(&dir, &name.to_string_lossy()).map_err(err(cannot()))?;
                shutdown.set_temp_output(Some(p.clone()));
                (f, Some(p))
            }
        };
        let writer = file.try_clone().map_err(err(cannot()))?;
        Ok((
            OutputTarget::File(TempOutput {
                file,
                name,
                dest: dest.to_path_buf(),
                dir,
                keep,
            }),
            Box::new(writer),
        ))
    }

    /// Moves the finished output into place: carries over the replaced file's mode (and
    /// owner), syncs the data, renames, syncs the directory.
    pub fn commit(&self, shutdown: &Shutdown) -> Result<(), OutputError> {
        let OutputTarget::File(t) = self else {
            return Ok(());
        };
        let what = || format!("moving the output into place ({})", t.dest.display());
        let result = t.commit().map_err(err(what()));
        if result.is_err() {
            self.discard(shutdown);
        }
        shutdown.set_temp_output(None);
        result
    }

    /// Drops the partial output; an existing destination stays untouched.
    pub fn discard(&self, shutdown: &Shutdown) {
        shutdown.set_temp_output(None);
        if let OutputTarget::File(TempOutput { name: Some(p), .. }) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl TempOutput {
    fn commit(&self) -> io::Result<()> {
        if let Some(k) = self.keep {
            set_kept(&self.file, k)?;
        }
        self.file.sync_all()?;
        match &self.name {
            Some(p) => std::fs::rename(p, &self.dest)?,
            None => link_and_rename(&self.file, &self.dir, &self.dest)?,
        }
        // The rename is durable only once the directory is.
        File::open(&self.dir)?.sync_all()
    }
}

/// The mode, owner and group of a replaced file.
fn kept(md: &std::fs::Metadata) -> Option<Kept> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(Kept {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = md;
        None
    }
}

/// Gives `file` the replaced file's owner (root only: nobody else may give a file away)
/// and then its mode (after, since a change of owner clears set-id bits).
fn set_kept(file: &File, k: Kept) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: fchown on a descriptor we own.
            if unsafe { libc::fchown(file.as_raw_fd(), k.uid, k.gid) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(k.mode))?;
    }
    #[cfg(not(unix))]
    let _ = (file, k);
    Ok(())
}

/// An unnamed file in `dir` (Linux `O_TMPFILE`), or `None` where the platform or the
/// file system has none, or `/proc` is missing (needed to link it at the end).
fn unnamed_in(dir: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if !Path::new("/proc/self/fd").is_dir() {
            return None;
        }
        // The mode a new file would get (the umask applies); a replaced file's mode is
        // set at commit.
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o666)
            .open(dir)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        None
    }
}

/// A new file in `dir` under a random name no one else holds (`O_EXCL`, no symlink
/// followed). Its mode is what a new file would get (0666 less the umask).
fn exclusive_in(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    let prefix = format!(".{name}.");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(".pipe.tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let (file, path) = b.tempfile_in(dir)?.keep().map_err(|e| e.error)?;
    Ok((file, path))
}

/// Links the unnamed `file` into `dir` under a fresh random name (`linkat` will not
/// replace a name, so nothing another user made there is followed or reused) and renames
/// that over `dest`.
#[cfg(target_os = "linux")]
fn link_and_rename(file: &File, dir: &Path, dest: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from =
        CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(io::Error::other)?;
    let stem = dest
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let linked = tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(".pipe.tmp")
        .make_in(dir, |p| {
            let to = CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: both paths are NUL-terminated C strings that outlive the call.
            let r = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })?;
    linked.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn link_and_rename(_: &File, _: &Path, _: &Path) -> io::Result<()> {
    unreachable!("unnamed files exist only on Linux")
}
