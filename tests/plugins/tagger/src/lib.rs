//! Test plugin `tagger`: marks every row with the version of the plugin that processed it.
//!
//! The host's hot-swap tests load this library, rebuild it with `--features v2` and watch
//! the output switch from `tag = v1` to `tag = v2` exactly once, in input order, with no
//! row lost or duplicated.
//!
//! - Column `tag`: `"v1"`, or `"v2"` when built with feature `v2` (manifest version
//!   `1.0.0` / `2.0.0`).
//! - Config (all optional, unknown keys refused):
//!   - `label` (string): also append a column `label` holding it (config changes are
//!     swapped like plugin changes: a test can see the new label appear);
//!   - `delay_us` (integer): sleep that many microseconds per batch, to slow a stream down
//!     so a swap lands in the middle of it;
//!   - `count` (bool): append a column `seen`, the number of rows this stage has seen so
//!     far including the row itself.
//! - State: the number of rows seen so far, as a little-endian `u64`, handed from the old
//!   version to the new one at a swap; with `count = true` the `seen` column shows that
//!   the count carried on.
//! - Feature `stateful`: declares the stage stateful in its manifest (one worker).
//! - Built for `wasm32-unknown-unknown` it is a WASM stage (the WASM hot-swap tests);
//!   there `delay_us` is refused, as a WASM stage has no clock.
//!
//! A column the stage writes that the input already has is overwritten in place, so two
//! taggers can be chained.

use std::time::Duration;

use pipe_sdk::prelude::*;

/// The value of column `tag`.
pub const TAG: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

/// The version in the manifest.
pub const VERSION: &str = if cfg!(feature = "v2") {
    "2.0.0"
} else {
    "1.0.0"
};

/// The stage's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaggerConfig {
    /// When set, a column `label` with this value.
    #[serde(default)]
    pub label: Option<String>,
    /// Microseconds to sleep per batch.
    #[serde(default)]
    pub delay_us: u64,
    /// When true, a column `seen` with the running count of rows.
    #[serde(default)]
    pub count: bool,
}

/// The stage.
pub struct Tagger {
    config: TaggerConfig,
    /// Rows seen so far, by this instance and the versions before it.
    seen: u64,
}

/// What the stage writes into one column of a row.
#[derive(Clone, Copy)]
enum Fill {
    Input(usize),
    Tag,
    Label,
    Seen,
}

impl Tagger {
    /// The output columns for `input`'s columns, and where each one's value comes from.
    fn layout(&self, input: &Batch) -> (Vec<String>, Vec<Fill>) {
        let mut names: Vec<String> = input.columns().map(str::to_owned).collect();
        let mut fills: Vec<Fill> = (0..names.len()).map(Fill::Input).collect();
        let mut ours = vec![("tag", Fill::Tag)];
        if self.config.label.is_some() {
            ours.push(("label", Fill::Label));
        }
        if self.config.count {
            ours.push(("seen", Fill::Seen));
        }
        for (name, fill) in ours {
            match names.iter().position(|n| n == name) {
                Some(i) => fills[i] = fill,
                None => {
                    names.push(name.to_owned());
                    fills.push(fill);
                }
            }
        }
        (names, fills)
    }
}

impl Stage for Tagger {
    type Config = TaggerConfig;

    fn new(config: TaggerConfig) -> Result<Self, Error> {
        // Built as WASM (tests/wasm_stages.rs), the stage has no clock to sleep on.
        if cfg!(target_arch = "wasm32") && config.delay_us > 0 {
            return Err(Error::msg(
                "delay_us needs a clock, which a WASM stage has not",
            ));
        }
        Ok(Tagger { config, seen: 0 })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        if self.config.delay_us > 0 {
            std::thread::sleep(Duration::from_micros(self.config.delay_us));
        }
        let (names, fills) = self.layout(input);
        out.columns(&names);
        let label = self.config.label.as_deref().unwrap_or("");
        for row in input.rows() {
            self.seen += 1;
            let mut w = out.row(row);
            for fill in &fills {
                match *fill {
                    Fill::Input(c) => w.copy(row, c),
                    Fill::Tag => w.str(TAG),
                    Fill::Label => w.str(label),
                    Fill::Seen => w.value(Value::Int(self.seen as i64)),
                };
            }
        }
        Ok(())
    }

    fn export_state(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self.seen.to_le_bytes().to_vec()))
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), Error> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| {
            Error::msg(format!(
                "tagger state is a little-endian u64 (8 bytes), got {} bytes",
                state.len()
            ))
        })?;
        self.seen = u64::from_le_bytes(bytes);
        Ok(())
    }
}

export_stage!(
    Tagger,
    name = "tagger",
    description = "appends the plugin's version as column `tag` (test plugin)",
    stateful = cfg!(feature = "stateful"),
    version = VERSION,
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::abi::ErrorKind;
    use pipe_sdk::codec::Format;
    use pipe_sdk::testing::{instance, run_csv, run_instance, run_jsonl};
    use serde_json::json;

    #[test]
    fn appends_tag_with_the_built_version() {
        let out = run_csv::<Tagger>(json!({}), "id,name\n1,ann\n2,bob\n").unwrap();
        assert_eq!(
            out.csv(),
            format!("id,name,tag\n1,ann,{TAG}\n2,bob,{TAG}\n")
        );
        assert!(out.rejects.is_empty());
    }

    #[test]
    fn manifest_names_the_built_version() {
        let m = __pipe_stage_export::stage_manifest();
        assert_eq!(m.name.as_str(), "tagger");
        assert_eq!(m.version.as_str(), VERSION);
        assert_eq!(m.stateful, cfg!(feature = "stateful"));
        assert_eq!(m.sdk_version.as_str(), pipe_sdk::abi::SDK_VERSION);
        if cfg!(feature = "v2") {
            assert_eq!((TAG, VERSION), ("v2", "2.0.0"));
        } else {
            assert_eq!((TAG, VERSION), ("v1", "1.0.0"));
        }
    }

    #[test]
    fn label_and_count_columns_only_when_configured() {
        let out = run_jsonl::<Tagger>(
            json!({"label": "blue", "count": true}),
            "{\"id\":1}\n{\"id\":2}\n",
        )
        .unwrap();
        assert_eq!(
            out.jsonl(),
            format!(
                "{{\"id\":1,\"tag\":\"{TAG}\",\"label\":\"blue\",\"seen\":1}}\n\
                 {{\"id\":2,\"tag\":\"{TAG}\",\"label\":\"blue\",\"seen\":2}}\n"
            )
        );
    }

    #[test]
    fn an_existing_tag_column_is_overwritten_in_place() {
        let out = run_csv::<Tagger>(json!({}), "tag,id\nold,1\n").unwrap();
        assert_eq!(out.csv(), format!("tag,id\n{TAG},1\n"));
    }

    #[test]
    fn jsonl_keeps_the_input_kinds() {
        let out = run_jsonl::<Tagger>(json!({}), "{\"a\":1.50,\"b\":[1],\"c\":null}\n").unwrap();
        assert_eq!(
            out.jsonl(),
            format!("{{\"a\":1.50,\"b\":[1],\"c\":null,\"tag\":\"{TAG}\"}}\n")
        );
    }

    #[test]
    fn count_carries_across_a_state_handover() {
        let config = json!({"count": true});
        let mut old = instance::<Tagger>(config.clone()).unwrap();
        let first = run_instance(&mut old, Format::Csv, "id\na\nb\nc\n", 2).unwrap();
        assert!(
            first.csv().ends_with(&format!("c,{TAG},3\n")),
            "{}",
            first.csv()
        );

        let state = old
            .export_state()
            .into_result()
            .unwrap()
            .into_option()
            .unwrap();
        assert_eq!(state.as_slice(), 3u64.to_le_bytes());
        drop(old);

        let mut new = instance::<Tagger>(config).unwrap();
        new.import_state(state.as_slice().into())
            .into_result()
            .unwrap();
        let second = run_instance(&mut new, Format::Csv, "id\nd\ne\n", 2).unwrap();
        assert_eq!(second.csv(), format!("id,tag,seen\nd,{TAG},4\ne,{TAG},5\n"));
    }

    #[test]
    fn state_of_the_wrong_size_is_refused() {
        let mut t = instance::<Tagger>(json!({})).unwrap();
        let err = t
            .import_state([1u8, 2, 3][..].into())
            .into_result()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::State);
        assert!(err.message.contains("got 3 bytes"), "{}", err.message);
    }

    #[test]
    fn unknown_config_key_is_refused_by_name() {
        let err = instance::<Tagger>(json!({"stateful": true})).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("stateful"), "{}", err.message);
    }

    #[test]
    fn delay_us_sleeps_once_per_batch() {
        let start = std::time::Instant::now();
        let out = pipe_sdk::testing::run::<Tagger>(
            json!({"delay_us": 20_000}),
            Format::Csv,
            "id\n1\n2\n3\n",
            1,
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert!(start.elapsed() >= Duration::from_millis(60));
    }
}
