//! The checks every backend applies to the file it runs code from, once, here: the
//! file and its directory must not be writable by others and must belong to the user
//! running `pipe` or to root, and the bytes must match the stage's `sha256` pin.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::LoadError;

/// Checks that `path` and its directory are safe to load code from.
pub(crate) fn check_trust(path: &Path) -> Result<(), LoadError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = unsafe { libc::geteuid() };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (p, what) in [(path, "file"), (dir, "directory")] {
            let md = std::fs::metadata(p).map_err(|source| LoadError::Io {
                path: p.to_path_buf(),
                source,
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

/// Checks `bytes` (read from `path`) against the stage's pin; returns the digest when
/// there is a pin. Hashing a plugin (8 MB with debug info) costs milliseconds: only when
/// pinned.
pub(crate) fn check_pin(
    path: &Path,
    bytes: &[u8],
    expected: Option<&str>,
) -> Result<Option<String>, LoadError> {
    let Some(expected) = expected else {
        return Ok(None);
    };
    let digest = hex(&Sha256::digest(bytes));
    if expected != digest {
        return Err(LoadError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual: digest,
        });
    }
    Ok(Some(digest))
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

    #[cfg(unix)]
    #[test]
    fn world_writable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_trust(&p).unwrap_err().to_string();
        assert!(e.contains("writable by everyone"), "{e}");
        assert!(e.contains("chmod go-w"), "{e}");
    }

    #[test]
    fn sha_pin_mismatch_is_refused() {
        let p = Path::new("liby.so");
        let e = check_pin(p, b"x", Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pins 0000"), "{e}");
        let digest = hex(&Sha256::digest(b"x"));
        assert_eq!(check_pin(p, b"x", Some(&digest)).unwrap(), Some(digest));
    }
}
