//! Native plugins: a `cdylib` exporting the SDK's stage root module through abi_stable.
//!
//! Loading one, in order, each step on the bytes the previous one checked:
//! 1. open once and check the file, its directories and the `sha256` pin
//!    (`plugin::trust`);
//! 2. identical bytes already mapped are not mapped again: the module is reused (a
//!    reload of an unchanged file costs a read and a hash);
//! 3. the structure check (`elf`): a complete shared object for this machine;
//! 4. the probe (`probe`): the library mapped, checked and run once in a child process;
//! 5. the manifest checks, then the same sealed bytes mapped into the host (`copy`).
//!
//! Its instances run in the host's threads: a library is trusted code, and these steps
//! keep accidents (a half-copied file, a crashing constructor) out of the host.

mod copy;
pub(super) mod describe;
mod elf;
pub mod probe;

use std::path::Path;
use std::sync::{Arc, Mutex};

use pipe_sdk::abi::{StageBox, StageError, StageMod_Ref};

use super::{check_manifest, trust, Artifact, Backend, LoadError, Manifest, Plugin};

pub use copy::{cleanup, libraries_mapped};

/// A mapped library's root module: makes instances in the host.
struct Library(StageMod_Ref);

impl Backend for Library {
    fn instantiate(&self, config_json: &str) -> Result<StageBox, StageError> {
        (self.0.new())(config_json.into()).into_result()
    }
}

/// Every library this process mapped, by the SHA-256 of its bytes. Never shrinks:
/// abi_stable never unmaps a library either.
static MAPPED: Mutex<Vec<(String, StageMod_Ref)>> = Mutex::new(Vec::new());

/// Loads the library at `path`, expecting it to be stage `plugin` configured with
/// `config_json` (for the probe's instance): the steps in the module doc.
pub(crate) fn load(
    plugin: &str,
    path: &Path,
    sha256: Option<&str>,
    config_json: &str,
) -> Result<Plugin, LoadError> {
    let bytes = trust::open_verified(path)?.bytes;
    let digest = trust::sha256_hex(&bytes);
    let pinned = trust::check_pin(path, &digest, sha256)?;
    let known = MAPPED
        .lock()
        .ok()
        .and_then(|m| m.iter().find(|(d, _)| *d == digest).map(|(_, m)| *m));
    let module = match known {
        Some(module) => {
            tracing::debug!("{}: these bytes are mapped already", path.display());
            module
        }
        None => {
            let module = map_new(plugin, path, &bytes, config_json)?;
            if let Ok(mut m) = MAPPED.lock() {
                m.push((digest.clone(), module));
            }
            module
        }
    };
    let manifest = manifest_of(module);
    check_manifest(path, plugin, &manifest, Artifact::Library)?;
    Ok(Plugin::new(
        path.to_path_buf(),
        manifest,
        pinned,
        Arc::new(Library(module)),
    )
    .with_digest(digest))
}

/// Steps 3 to 5 for bytes never mapped before.
fn map_new(
    plugin: &str,
    path: &Path,
    bytes: &[u8],
    config_json: &str,
) -> Result<StageMod_Ref, LoadError> {
    let library = |message: String| LoadError::Library {
        path: path.to_path_buf(),
        message,
    };
    elf::check(bytes).map_err(|m| {
        library(if m.starts_with("not an ELF file") {
            format!(
                "not a loadable library: {m}; rebuild the plugin, or copy it again if a \
                 copy was cut short"
            )
        } else {
            format!("not a loadable library: {m}")
        })
    })?;
    let name = path
        .file_name()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy());
    let copy = copy::SealedCopy::new(&name, bytes).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let probed = probe::run(copy.fd(), plugin, config_json).map_err(|r| match r {
        probe::Refusal::Library(m) => library(m),
        probe::Refusal::Unsafe(message) => LoadError::Probe {
            path: path.to_path_buf(),
            message,
        },
    })?;
    // Refused from what the probe saw, before the host maps anything.
    check_manifest(path, plugin, &probed, Artifact::Library)?;
    copy::map(path, &copy)
}

fn manifest_of(module: StageMod_Ref) -> Manifest {
    let m = (module.manifest())();
    Manifest {
        name: m.name.to_string(),
        version: m.version.to_string(),
        description: m.description.to_string(),
        stateful: m.stateful,
        sdk_version: m.sdk_version.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libjunk.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let e = load("junk", &p, None, "{}").unwrap_err().to_string();
        assert!(e.contains("not a loadable library"), "{e}");
    }

    #[test]
    fn a_manifest_of_another_stage_is_refused() {
        let m = Manifest {
            name: "other".into(),
            version: "1.0.0".into(),
            description: String::new(),
            stateful: false,
            sdk_version: pipe_sdk::abi::SDK_VERSION.into(),
        };
        let e = check_manifest(Path::new("x.so"), "mine", &m, Artifact::Library)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this library is stage `other`, not `mine`"),
            "{e}"
        );
    }
}
