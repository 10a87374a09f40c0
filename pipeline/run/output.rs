//! Where the output goes until the run succeeds: stdout, a device written in place, or
//! a temporary file beside `-o FILE` that is renamed over it only when the run ends well
//! (a failed or interrupted run leaves an existing FILE untouched).

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
    /// A temporary file, renamed over `dest` by [`OutputTarget::commit`].
    File {
        /// The temporary file.
        tmp: PathBuf,
        /// The file it becomes.
        dest: PathBuf,
    },
}

impl OutputTarget {
    /// Opens `path` (stdout when `None`) and records the temporary file in `shutdown`,
    /// for a second signal to remove.
    pub fn open(
        path: Option<&Path>,
        shutdown: &Shutdown,
    ) -> Result<(OutputTarget, Box<dyn Write + Send>), OutputError> {
        let Some(dest) = path else {
            return Ok((OutputTarget::InPlace, Box::new(io::stdout())));
        };
        // Only a regular file is replaced atomically. A device, a FIFO or a socket
        // (`-o /dev/null`, `-o fifo`) is written in place: renaming a temporary file over
        // it would replace the device itself (as root, even /dev/null). A symlink is
        // followed, so the file it points to is the one replaced.
        let resolved;
        let dest = match std::fs::metadata(dest) {
            Ok(md) if !md.is_file() => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dest)
                    .map_err(err(format!("cannot write -o {}", dest.display())))?;
                return Ok((OutputTarget::InPlace, Box::new(f)));
            }
            Ok(_) if dest.is_symlink() => {
                resolved =
                    std::fs::canonicalize(dest).map_err(err(format!("-o {}", dest.display())))?;
                resolved.as_path()
            }
            _ => dest,
        };
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest.file_name().ok_or_else(|| OutputError {
            what: format!("-o {}", dest.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let tmp = dir.join(format!(
            ".{}.pipe-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = File::create(&tmp).map_err(err(format!(
            "cannot write {} (for -o {})",
            tmp.display(),
            dest.display()
        )))?;
        shutdown.set_temp_output(Some(tmp.clone()));
        Ok((
            OutputTarget::File {
                tmp,
                dest: dest.to_path_buf(),
            },
            Box::new(f),
        ))
    }

    /// Moves the finished output into place.
    pub fn commit(&self, shutdown: &Shutdown) -> Result<(), OutputError> {
        shutdown.set_temp_output(None);
        match self {
            OutputTarget::InPlace => Ok(()),
            OutputTarget::File { tmp, dest } => std::fs::rename(tmp, dest).map_err(err(format!(
                "moving the output into place ({})",
                dest.display()
            ))),
        }
    }

    /// Drops the partial output; an existing destination stays untouched.
    pub fn discard(&self, shutdown: &Shutdown) {
        shutdown.set_temp_output(None);
        if let OutputTarget::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
