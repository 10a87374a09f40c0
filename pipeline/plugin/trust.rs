//! The checks every backend applies to the file it runs code from, once, here.
//!
//! [`open_verified`] opens the file once and checks what it opened, never a path that
//! could point elsewhere a moment later: the file's real location is resolved, every
//! directory from `/` down to it is opened without following links and checked on its
//! descriptor (owned by you or root; writable by others only if sticky, like `/tmp`),
//! the file itself is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO renamed over a
//! plugin cannot block the loader), must be a regular file, is checked on its
//! descriptor (owned by you or root, writable by no one else), and its bytes are read
//! from that descriptor. Everything after (the `sha256` pin, the structure check, the
//! probe, the mapping) works on those bytes, so the file cannot change between the
//! checks and the load.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::LoadError;

/// A file checked by [`open_verified`] and the bytes read from it.
pub(crate) struct Verified {
    /// Its contents, read from the checked descriptor.
    pub bytes: Vec<u8>,
}

/// Opens `path` once, checks it and every directory above its real location, and
/// reads it (see the module doc). `path` is what messages name.
pub(crate) fn open_verified(path: &Path) -> Result<Verified, LoadError> {
    let io = |source: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let real = std::fs::canonicalize(path).map_err(io)?;
    let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
        return Err(LoadError::Untrusted {
            path: path.to_path_buf(),
            message: "not a file".into(),
        });
    };
    // The directory as the user named it, when it is the one the file is in: messages
    // say `./plugins`, not `/home/me/project/plugins`.
    let given_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let own_dir = if !path.is_symlink() && given_dir.canonicalize().ok().as_deref() == Some(parent)
    {
        given_dir.to_path_buf()
    } else {
        parent.to_path_buf()
    };
    let dir = open_dirs(parent, &own_dir)?;
    let fd = openat(
        &dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            // It was a file when its real location was resolved, and is a link now.
            LoadError::Untrusted {
                path: path.to_path_buf(),
                message: "the file was replaced by a symbolic link while it was being                           checked; try again"
                    .into(),
            }
        } else {
            io(e)
        }
    })?;
    let st = fstat(&fd).map_err(io)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
            what: file_type(st.st_mode),
        });
    }
    check_owner_and_mode(path, "file", &st)?;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::with_capacity(st.st_size.max(0) as usize);
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(Verified { bytes })
}

/// Opens every directory from `/` down to `dir` (a real path: no links) without
/// following links, checks each on its descriptor, and returns the last. `own` is how
/// messages name `dir` itself.
fn open_dirs(dir: &Path, own: &Path) -> Result<OwnedFd, LoadError> {
    let root = Path::new("/");
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let io = |p: &Path, source: std::io::Error| LoadError::Io {
        path: p.to_path_buf(),
        source,
    };
    let c = CString::new("/").unwrap_or_default();
    // SAFETY: a valid C string; the descriptor is owned below.
    let raw = unsafe { libc::open(c.as_ptr(), flags) };
    if raw < 0 {
        return Err(io(root, std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let mut fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut at = PathBuf::from("/");
    let mut chain = vec![(at.clone(), fstat(&fd).map_err(|e| io(root, e))?)];
    for part in dir.components().skip(1) {
        let name = part.as_os_str();
        at.push(name);
        fd = openat(&fd, name, flags).map_err(|e| io(&at, e))?;
        chain.push((at.clone(), fstat(&fd).map_err(|e| io(&at, e))?));
    }
    // The file's own directory first, then up to `/`: the message names the nearest
    // problem, the one the user most likely made.
    for (p, st) in chain.iter().rev() {
        let shown = if p == dir { own } else { p.as_path() };
        check_owner_and_mode(shown, "directory", st)?;
    }
    Ok(fd)
}

fn openat(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let c = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid directory descriptor and C string; the result is owned below.
    let raw = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    use std::os::fd::AsRawFd;
    // SAFETY: `st` is written by fstat before it is read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// What a file that is not a regular file is, for messages.
fn file_type(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

/// The file or directory `st` (named `path` in messages) must belong to the user
/// running `pipe` or to root, and be writable by no one else (a directory: unless it is
/// sticky, like `/tmp`, which lets others add files but not replace ours).
fn check_owner_and_mode(path: &Path, what: &str, st: &libc::stat) -> Result<(), LoadError> {
    // SAFETY: plain syscall.
    let uid = unsafe { libc::geteuid() };
    let mode = st.st_mode;
    let sticky = what == "directory" && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(LoadError::Untrusted {
            path: path.to_path_buf(),
            message: format!(
                "the {what} is writable by {} (mode {:o}); run `chmod go-w {}`",
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                mode & 0o7777,
                path.display()
            ),
        });
    }
    if st.st_uid != uid && st.st_uid != 0 {
        return Err(LoadError::Untrusted {
            path: path.to_path_buf(),
            message: format!(
                "the {what} belongs to user id {}, not to you ({uid}) or root; copy it \
                 somewhere you own",
                st.st_uid
            ),
        });
    }
    Ok(())
}

/// SHA-256 of `bytes`, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Checks `digest` (of the bytes read from `path`) against the stage's pin; returns
/// the digest when there is a pin.
pub(crate) fn check_pin(
    path: &Path,
    digest: &str,
    expected: Option<&str>,
) -> Result<Option<String>, LoadError> {
    let Some(expected) = expected else {
        return Ok(None);
    };
    if expected != digest {
        return Err(LoadError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual: digest.to_string(),
        });
    }
    Ok(Some(digest.to_string()))
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

    use std::os::unix::fs::PermissionsExt;

    fn refusal(p: &Path) -> String {
        match open_verified(p) {
            Ok(_) => panic!("{} was accepted", p.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn world_writable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = refusal(&p);
        assert!(e.contains("writable by everyone"), "{e}");
        assert!(e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open_verified(&p).unwrap().bytes, b"x");
    }

    #[test]
    fn fifos_and_directories_say_what_they_are_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libf.so");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(refusal(&fifo).ends_with("is a FIFO (named pipe), not a plugin file"));
        let sub = dir.path().join("libd.so");
        std::fs::create_dir(&sub).unwrap();
        assert!(refusal(&sub).ends_with("is a directory, not a plugin file"));
    }

    #[test]
    fn a_link_into_a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(open.join("libx.so"), b"x").unwrap();
        let link = dir.path().join("libx.so");
        std::os::unix::fs::symlink(open.join("libx.so"), &link).unwrap();
        let e = refusal(&link);
        assert!(
            e.contains("/open: refusing to load: the directory is writable by everyone"),
            "{e}"
        );
    }

    #[test]
    fn sha_pin_mismatch_is_refused() {
        let p = Path::new("liby.so");
        let digest = sha256_hex(b"x");
        let e = check_pin(p, &digest, Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pins 0000"), "{e}");
        assert_eq!(check_pin(p, &digest, Some(&digest)).unwrap(), Some(digest));
    }
}
