//! `pipe new NAME`: a new stage crate in `stages/NAME`, registered in the workspace, that
//! builds with `cargo build --release` and is found by `pipe stages` with no other step.
//!
//! The template is the README's "writing a stage" example (a stage that upper-cases the
//! fields it is given) with its in-process test, so a new stage starts from code that
//! works and shows every part of the SDK a stage needs.

use std::path::{Path, PathBuf};

/// Why a scaffold could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid crate/library name.
    #[error("`{0}` is not a valid stage name: use lower-case letters, digits and `_`, starting with a letter")]
    BadName(String),
    /// Not at the root of a workspace.
    #[error(
        "{0} has no [workspace] Cargo.toml: run `pipe new` at the root of your pipe workspace"
    )]
    NoWorkspace(PathBuf),
    /// The directory exists.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The workspace manifest has no members list to add to.
    #[error("{0}: no `members = [` list found; add \"stages/NAME\" to it by hand")]
    NoMembers(PathBuf),
}

fn valid(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "stage-{name}"
version = "0.1.0"
edition.workspace = true
license.workspace = true
publish = false

[lib]
name = "{name}"
# cdylib: the plugin pipe loads; rlib: for in-process tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
pipe-sdk.workspace = true
serde.workspace = true

[dev-dependencies]
pipe-sdk = {{ workspace = true, features = ["codec"] }}
serde_json.workspace = true
"#
    )
}

fn source(name: &str) -> String {
    let ty: String = name
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!(
        r#"//! `{name}`: upper-cases the fields named in its config.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "{name}"
//! config = {{ fields = ["country"] }}
//! ```
use pipe_sdk::prelude::*;

/// The stage's config: the `config` table of the stage in `pipelines.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {{
    fields: Vec<String>,
}}

/// The stage.
pub struct {ty} {{
    fields: Vec<String>,
}}

impl Stage for {ty} {{
    type Config = Config;

    fn new(config: Config) -> Result<Self, Error> {{
        Ok({ty} {{ fields: config.fields }})
    }}

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {{
        out.columns_like(input);
        let cols: Vec<Option<usize>> = self.fields.iter().map(|f| input.column(f)).collect();
        for row in input.rows() {{
            let mut w = out.row(row);
            for c in 0..input.width() {{
                match row.value(c) {{
                    Value::Str(s) if cols.contains(&Some(c)) => w.str(&s.to_uppercase()),
                    _ => w.copy(row, c),
                }};
            }}
        }}
        Ok(())
    }}
}}

export_stage!({ty}, name = "{name}", description = "upper-cases the given fields");

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn upper_cases_the_given_fields_only() {{
        let out = pipe_sdk::testing::run_csv::<{ty}>(
            serde_json::json!({{ "fields": ["name"] }}),
            "id,name,city\n1,ann,paris\n",
        )
        .unwrap();
        assert_eq!(out.csv(), "id,name,city\n1,ANN,paris\n");
    }}

    #[test]
    fn unknown_config_keys_are_refused() {{
        let err = pipe_sdk::testing::instance::<{ty}>(serde_json::json!({{ "feilds": [] }}))
            .err()
            .expect("a config error");
        assert!(err.message.contains("feilds"), "{{}}", err.message);
    }}
}}
"#
    )
}

/// Adds `entry` to the list `key = [` in a Cargo manifest's text; false if not found.
fn add_to_list(text: &mut String, key: &str, entry: &str) -> bool {
    let needle = format!("\n{key} = [");
    let Some(at) = text.find(&needle).map(|i| i + needle.len()) else {
        return false;
    };
    let line = format!("\n    \"{entry}\",");
    if text[at..]
        .split(']')
        .next()
        .is_some_and(|l| l.contains(&format!("\"{entry}\"")))
    {
        return true;
    }
    text.insert_str(at, &line);
    true
}

/// Creates `stages/NAME` under `root` and registers it in `root/Cargo.toml`. Returns the
/// new directory.
pub fn new_stage(root: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    if !valid(name) {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let cargo = root.join("Cargo.toml");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    let mut text = std::fs::read_to_string(&cargo)
        .map_err(|_| ScaffoldError::NoWorkspace(root.to_path_buf()))?;
    if !text.contains("[workspace]") {
        return Err(ScaffoldError::NoWorkspace(root.to_path_buf()));
    }
    let dir = root.join("stages").join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let entry = format!("stages/{name}");
    if !add_to_list(&mut text, "members", &entry) {
        return Err(ScaffoldError::NoMembers(cargo));
    }
    // default-members decides what a plain `cargo build --release` builds.
    add_to_list(&mut text, "default-members", &entry);
    std::fs::create_dir_all(dir.join("src")).map_err(io(&dir))?;
    std::fs::write(dir.join("Cargo.toml"), manifest(name)).map_err(io(&dir.join("Cargo.toml")))?;
    std::fs::write(dir.join("src/lib.rs"), source(name)).map_err(io(&dir.join("src/lib.rs")))?;
    std::fs::write(&cargo, text).map_err(io(&cargo))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid("geo"));
        assert!(valid("geo_ip2"));
        assert!(!valid("Geo"));
        assert!(!valid("2geo"));
        assert!(!valid("geo-ip"));
        assert!(!valid(""));
    }

    #[test]
    fn registers_in_members_and_default_members_once() {
        let mut t = "[workspace]\nmembers = [\n    \".\",\n]\ndefault-members = [\n    \".\",\n]\n"
            .to_string();
        assert!(add_to_list(&mut t, "members", "stages/x"));
        assert!(add_to_list(&mut t, "default-members", "stages/x"));
        assert!(add_to_list(&mut t, "members", "stages/x"));
        assert_eq!(t.matches("\"stages/x\"").count(), 2, "{t}");
    }
}
