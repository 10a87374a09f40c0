//! Loads the built `libbadabi` the way the host does and checks that it is refused for
//! the reason it exists: the layout check (default build) or its manifest's SDK version
//! (`--features old_sdk`).

use std::path::PathBuf;

use abi_stable::library::lib_header_from_path;
use pipe_sdk::abi::StageMod_Ref;

/// The cdylib cargo built for this test run: it sits next to the test binary in `deps/`.
fn built_library(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let file = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let deps = exe.parent().unwrap();
    [deps.join(&file), deps.parent().unwrap().join(&file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} not found next to {}", exe.display()))
}

#[test]
#[cfg(not(feature = "old_sdk"))]
fn loading_as_stage_mod_fails_the_layout_check() {
    let header = lib_header_from_path(&built_library("badabi")).unwrap();
    match header.init_root_module::<StageMod_Ref>() {
        Err(abi_stable::library::LibraryError::AbiInstability(e)) => {
            let text = e.to_string();
            assert!(!text.is_empty());
        }
        Err(other) => panic!("expected AbiInstability, got {other}"),
        Ok(_) => panic!("a root module with another layout was accepted"),
    }
}

#[test]
#[cfg(feature = "old_sdk")]
fn loads_but_the_manifest_claims_sdk_0_0_1() {
    let header = lib_header_from_path(&built_library("badabi")).unwrap();
    let module = header.init_root_module::<StageMod_Ref>().unwrap();
    let manifest = module.manifest()();
    assert_eq!(manifest.name.as_str(), "badabi");
    assert_eq!(manifest.sdk_version.as_str(), "0.0.1");
    assert_ne!(manifest.sdk_version.as_str(), pipe_sdk::abi::SDK_VERSION);
    let err = module.new()("{}".into()).into_result().err().unwrap();
    assert!(err.message.contains("too old"), "{}", err.message);
}
