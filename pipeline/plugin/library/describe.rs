//! abi_stable's loading errors in a user's words: one line that names the user's file
//! (never the private copy, which is gone by the time the message is read) and says what
//! to do, without the type-layout dumps abi_stable prints.

use std::path::Path;

use abi_stable::library::{LibraryError, RootModule};
use pipe_sdk::abi::StageMod_Ref;

/// abi_stable's error `e` from opening the private copy at `copy`, in a user's words.
pub(crate) fn describe(e: LibraryError, copy: &Path) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reports_shrink_to_their_mismatches() {
        let report = "Error: mismatched type\n  Expected:\n  StageMod\n  Found:\n  BadMod\n\
                      Type Layout: lots of lines\n";
        assert_eq!(
            layout_mismatches(report),
            ["mismatched type: expected `StageMod`, found `BadMod`"]
        );
    }
}
