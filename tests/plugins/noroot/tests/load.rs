//! Loads the built `libnoroot` the way the host does: opening it works, finding an
//! `abi_stable` root module in it does not.

use std::path::PathBuf;

use abi_stable::library::{lib_header_from_path, LibraryError, RawLibrary};

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
fn has_no_root_module() {
    let path = built_library("noroot");
    match lib_header_from_path(&path) {
        Err(LibraryError::GetSymbolError { library, .. }) => assert_eq!(library, path),
        Err(other) => panic!("expected a missing-symbol error, got {other}"),
        Ok(_) => panic!("found a root module in noroot"),
    }
}

#[test]
fn is_a_loadable_library_with_hello() {
    let lib = RawLibrary::load_at(&built_library("noroot")).unwrap();
    let hello = unsafe { lib.get::<extern "C" fn() -> i32>(b"hello\0") }.unwrap();
    assert_eq!(hello(), 42);
}
