//! Test plugin `noroot`: a shared library with no `abi_stable` root module, only an
//! ordinary C function. The host must refuse it with an error that names the library
//! (what a user sees when a directory holds some other `.so` by the plugin's name).

/// Not a stage: a plain exported function, so the library is a valid `cdylib`.
#[no_mangle]
pub extern "C" fn hello() -> i32 {
    42
}
