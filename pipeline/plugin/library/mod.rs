//! Native plugins: a `cdylib` exporting the SDK's stage root module through abi_stable.
//!
//! Loading one: the trust and pin checks (`plugin::trust`), a private copy mapped into
//! the host (`copy`), abi_stable's layout and version checks, then the manifest checks
//! here. Its instances run in the host's threads, so a library is trusted code: what the
//! host can check before running it is done before it is mapped.

mod copy;
mod describe;

use std::path::Path;
use std::sync::Arc;

use pipe_sdk::abi::{StageBox, StageError, StageMod_Ref, SDK_VERSION};

use super::{major_minor, trust, Backend, LoadError, Manifest, Plugin};

pub use copy::{cleanup, libraries_mapped};

/// A mapped library's root module: makes instances in the host.
struct Library(StageMod_Ref);

impl Backend for Library {
    fn instantiate(&self, config_json: &str) -> Result<StageBox, StageError> {
        (self.0.new())(config_json.into()).into_result()
    }
}

/// Loads the library at `path`, expecting it to be stage `plugin`: trust and pin
/// checks, private copy, open, layout and version checks, manifest checks.
pub(crate) fn load(plugin: &str, path: &Path, sha256: Option<&str>) -> Result<Plugin, LoadError> {
    trust::check_trust(path)?;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The bytes that are hashed are the bytes mapped, so the file cannot change between
    // check and load.
    let digest = trust::check_pin(path, &bytes, sha256)?;
    let module = copy::map(path, &bytes)?;
    let m = (module.manifest())();
    let manifest = Manifest {
        name: m.name.to_string(),
        version: m.version.to_string(),
        description: m.description.to_string(),
        stateful: m.stateful,
        sdk_version: m.sdk_version.to_string(),
    };
    check_manifest(path, plugin, &manifest)?;
    Ok(Plugin::new(
        path.to_path_buf(),
        manifest,
        digest,
        Arc::new(Library(module)),
    ))
}

/// The manifest must name stage `plugin` and an SDK of this host's major and minor.
fn check_manifest(path: &Path, plugin: &str, manifest: &Manifest) -> Result<(), LoadError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_library_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libjunk.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let e = load("junk", &p, None).unwrap_err().to_string();
        assert!(e.contains("not a loadable library"), "{e}");
    }

    #[test]
    fn a_manifest_of_another_stage_is_refused() {
        let m = Manifest {
            name: "other".into(),
            version: "1.0.0".into(),
            description: String::new(),
            stateful: false,
            sdk_version: SDK_VERSION.into(),
        };
        let e = check_manifest(Path::new("x.so"), "mine", &m)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this library is stage `other`, not `mine`"),
            "{e}"
        );
    }
}
