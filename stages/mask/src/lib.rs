//! The `mask` stage: hides personal data in chosen fields, keeping every row.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "mask"
//! config = { fields = ["email", "card"], mode = "hash", salt = "s3cret" }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `fields` | list of names | required | the fields to mask; names the input lacks are ignored |
//! | `mode` | `"hash"`, `"redact"` or `"partial"` | `"redact"` | how to mask, see below |
//! | `salt` | string | `""` | `hash` only: prepended to each value before hashing |
//! | `replacement` | string | `"***"` | `redact` only: the text that replaces each value |
//!
//! Modes:
//! - `hash`: the lowercase hex SHA-256 of `salt + value` (64 characters). Equal values
//!   hash equally, so masked data still joins and groups. **Use a secret salt**: without
//!   one, anybody can hash a list of likely emails or phone numbers and look the results
//!   up, which makes an unsalted hash of such data reversible by dictionary.
//! - `redact`: the value becomes `replacement`.
//! - `partial`: an email (one `@`, text on both sides) keeps the first character of its
//!   local part and its domain: `jane@example.com` → `j***@example.com` (a one-character
//!   local part is masked whole: `***@example.com`). Any other value of 8 characters or
//!   more keeps its last 4: `4111111111111111` → `****1111`; shorter values become
//!   `****`. The number of stars is fixed, so the output does not tell the length.
//!
//! Absent, null and empty values are left as they are (there is nothing to hide). Every
//! other value is masked as its text (an int's digits, a nested object's JSON) and comes
//! out as a string.
//!
//! Cost: which columns to mask is worked out once per input schema; masking writes into a
//! buffer reused across rows, so a row allocates nothing.

use pipe_sdk::prelude::*;
use sha2::{Digest, Sha256};

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// The fields to mask.
    pub fields: Vec<String>,
    /// How to mask them.
    #[serde(default)]
    pub mode: Mode,
    /// `hash` only: prepended to each value before hashing.
    #[serde(default)]
    pub salt: Option<String>,
    /// `redact` only: the replacement text.
    #[serde(default)]
    pub replacement: Option<String>,
}

/// How values are masked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Hex SHA-256 of salt + value.
    Hash,
    /// A fixed replacement.
    #[default]
    Redact,
    /// Keep a little: an email's first letter and domain, or a value's last 4 chars.
    Partial,
}

/// The masking function, ready to run.
enum Masker {
    /// A hasher that has already absorbed the salt; cloned per value.
    Hash(Sha256),
    Redact(String),
    Partial,
}

impl Masker {
    /// Masks `text`, writing into `buf` when the result is computed.
    fn apply<'a>(&'a self, text: &str, buf: &'a mut String) -> &'a str {
        buf.clear();
        match self {
            Masker::Hash(salted) => {
                let digest = salted.clone().chain_update(text.as_bytes()).finalize();
                const HEX: &[u8; 16] = b"0123456789abcdef";
                for b in digest {
                    buf.push(HEX[usize::from(b >> 4)] as char);
                    buf.push(HEX[usize::from(b & 15)] as char);
                }
                buf
            }
            Masker::Redact(replacement) => replacement,
            Masker::Partial => {
                partial(text, buf);
                buf
            }
        }
    }
}

/// The `partial` mode. See the module docs.
fn partial(text: &str, buf: &mut String) {
    if let Some((local, domain)) = text.split_once('@') {
        if !local.is_empty() && !domain.is_empty() && !domain.contains('@') {
            let mut chars = local.chars();
            if let (Some(first), Some(_)) = (chars.next(), chars.next()) {
                buf.push(first);
            }
            buf.push_str("***@");
            buf.push_str(domain);
            return;
        }
    }
    buf.push_str("****");
    // The start of the last 4 chars, if the value has at least 8.
    let mut starts = text.char_indices().rev().map(|(i, _)| i);
    if let Some(tail) = starts.nth(3) {
        if starts.nth(3).is_some() {
            buf.push_str(&text[tail..]);
        }
    }
}

/// Which columns of one input schema to mask.
#[derive(Default)]
struct Plan {
    input: Vec<String>,
    masked: Vec<bool>,
    any: bool,
}

/// The running stage.
pub struct Mask {
    fields: Vec<String>,
    masker: Masker,
    plan: Option<Plan>,
    /// Reused for every masked value.
    buf: String,
}

impl Stage for Mask {
    type Config = MaskConfig;

    fn new(config: MaskConfig) -> Result<Self, Error> {
        if config.fields.is_empty() {
            return Err(Error::msg(
                "bad config at `fields`: the list is empty; name the fields to mask",
            ));
        }
        if config.fields.iter().any(String::is_empty) {
            return Err(Error::msg(
                "bad config at `fields`: field names cannot be empty",
            ));
        }
        if config.salt.is_some() && config.mode != Mode::Hash {
            return Err(Error::msg(
                "bad config at `salt`: a salt only applies to mode = \"hash\"",
            ));
        }
        if config.replacement.is_some() && config.mode != Mode::Redact {
            return Err(Error::msg(
                "bad config at `replacement`: a replacement only applies to mode = \"redact\"",
            ));
        }
        let masker = match config.mode {
            Mode::Hash => Masker::Hash(Sha256::new_with_prefix(config.salt.unwrap_or_default())),
            Mode::Redact => Masker::Redact(config.replacement.unwrap_or_else(|| "***".into())),
            Mode::Partial => Masker::Partial,
        };
        Ok(Mask {
            fields: config.fields,
            masker,
            plan: None,
            buf: String::new(),
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        let cached = self
            .plan
            .as_ref()
            .is_some_and(|p| input.columns().eq(p.input.iter().map(String::as_str)));
        if !cached {
            let masked: Vec<bool> = input
                .columns()
                .map(|c| self.fields.iter().any(|f| f == c))
                .collect();
            self.plan = Some(Plan {
                input: input.columns().map(str::to_owned).collect(),
                any: masked.contains(&true),
                masked,
            });
        }
        let Some(plan) = &self.plan else {
            return Ok(());
        };
        out.columns_like(input);
        if !plan.any {
            for row in input.rows() {
                out.push(row);
            }
            return Ok(());
        }
        for row in input.rows() {
            let mut w = out.row(row);
            for (c, &masked) in plan.masked.iter().enumerate() {
                let (kind, text) = row.raw(c);
                if masked && !matches!(kind, Kind::Absent | Kind::Null) && !text.is_empty() {
                    w.str(self.masker.apply(text, &mut self.buf));
                } else {
                    w.copy(row, c);
                }
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Mask,
    name = "mask",
    description = "masks fields: salted SHA-256, redaction or partial (j***@example.com)"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::codec::Format;
    use pipe_sdk::testing::{instance, run, run_csv, run_jsonl};
    use serde_json::json;

    fn config_error(config: serde_json::Value) -> String {
        match instance::<Mask>(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.message.to_string(),
        }
    }

    fn partial_of(s: &str) -> String {
        let mut buf = String::new();
        partial(s, &mut buf);
        buf
    }

    // SHA-256("abc"), the FIPS 180-2 test vector.
    const SHA_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn hash_is_hex_sha256_of_salt_then_value() {
        let out = run_csv::<Mask>(
            json!({"fields": ["v"], "mode": "hash", "salt": "a"}),
            "id,v\n1,bc\n",
        )
        .unwrap();
        assert_eq!(out.csv(), format!("id,v\n1,{SHA_ABC}\n"));
        let out = run_csv::<Mask>(json!({"fields": ["v"], "mode": "hash"}), "v\nabc\n").unwrap();
        assert_eq!(out.csv(), format!("v\n{SHA_ABC}\n"));
    }

    #[test]
    fn equal_values_hash_equally_and_salt_changes_the_hash() {
        let input = "email\nann@x.org\nann@x.org\nbob@x.org\n";
        let a = run_csv::<Mask>(
            json!({"fields": ["email"], "mode": "hash", "salt": "1"}),
            input,
        );
        let b = run_csv::<Mask>(
            json!({"fields": ["email"], "mode": "hash", "salt": "2"}),
            input,
        );
        let a = a.unwrap().csv();
        let lines: Vec<&str> = a.lines().collect();
        assert_eq!(lines[1], lines[2]);
        assert_ne!(lines[1], lines[3]);
        assert_ne!(a, b.unwrap().csv());
    }

    #[test]
    fn redact_with_default_and_custom_replacement() {
        let input = "id,email,note\n1,ann@x.org,hi\n2,,yo\n";
        let out = run_csv::<Mask>(json!({"fields": ["email", "note"]}), input).unwrap();
        assert_eq!(out.csv(), "id,email,note\n1,***,***\n2,,***\n");
        let out = run_csv::<Mask>(
            json!({"fields": ["note"], "mode": "redact", "replacement": "[hidden]"}),
            input,
        )
        .unwrap();
        assert_eq!(
            out.csv(),
            "id,email,note\n1,ann@x.org,[hidden]\n2,,[hidden]\n"
        );
    }

    #[test]
    fn partial_masks_emails_and_keeps_last_four_of_long_values() {
        assert_eq!(partial_of("jane@example.com"), "j***@example.com");
        assert_eq!(partial_of("j@example.com"), "***@example.com");
        assert_eq!(partial_of("4111111111111111"), "****1111");
        assert_eq!(partial_of("12345678"), "****5678");
        assert_eq!(partial_of("1234567"), "****");
        assert_eq!(partial_of("a@b@c"), "****");
        assert_eq!(partial_of("@example.com"), "****.com");
        // Characters, not bytes.
        assert_eq!(partial_of("ééééééééé"), "****éééé");
        assert_eq!(partial_of("élodie@exemple.fr"), "é***@exemple.fr");
    }

    #[test]
    fn jsonl_leaves_absent_and_null_and_masks_other_kinds_as_strings() {
        let input = "{\"id\":1,\"email\":\"jane@example.com\",\"card\":4111111111111111}\n\
                     {\"id\":2,\"email\":null}\n\
                     {\"id\":3,\"card\":{\"n\":\"12345678\"}}\n";
        let out = run_jsonl::<Mask>(
            json!({"fields": ["email", "card"], "mode": "partial"}),
            input,
        );
        assert_eq!(
            out.unwrap().jsonl(),
            "{\"id\":1,\"email\":\"j***@example.com\",\"card\":\"****1111\"}\n\
             {\"id\":2,\"email\":null}\n\
             {\"id\":3,\"card\":\"****78\\\"}\"}\n"
        );
    }

    #[test]
    fn input_without_the_fields_passes_unchanged() {
        let input = "{\"id\":1,\"n\":1.50}\n";
        let out = run_jsonl::<Mask>(json!({"fields": ["email"]}), input).unwrap();
        assert_eq!(out.jsonl(), input);
    }

    #[test]
    fn multi_batch_runs_keep_rows_and_lines() {
        let input = "id,email\n1,ann@x.org\n2,bob@y.org\n3,\n4,dan@z.org\n5,eve@w.org\n";
        let out = run::<Mask>(
            json!({"fields": ["email"], "mode": "partial"}),
            Format::Csv,
            input,
            2,
        )
        .unwrap();
        assert_eq!(out.batches.len(), 3);
        assert_eq!(
            out.csv(),
            "id,email\n1,a***@x.org\n2,b***@y.org\n3,\n4,d***@z.org\n5,e***@w.org\n"
        );
        let lines: Vec<u64> = out
            .batches
            .iter()
            .flat_map(|b| b.rows().map(|r| r.pos().line))
            .collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert!(config_error(json!({})).contains("missing field `fields`"));
        assert_eq!(
            config_error(json!({"fields": []})),
            "bad config at `fields`: the list is empty; name the fields to mask"
        );
        assert_eq!(
            config_error(json!({"fields": ["a"], "mode": "partial", "salt": "x"})),
            "bad config at `salt`: a salt only applies to mode = \"hash\""
        );
        assert_eq!(
            config_error(json!({"fields": ["a"], "mode": "hash", "replacement": "x"})),
            "bad config at `replacement`: a replacement only applies to mode = \"redact\""
        );
        let mode = config_error(json!({"fields": ["a"], "mode": "scramble"}));
        assert!(
            mode.starts_with("bad config at `mode`: unknown variant `scramble`"),
            "{mode}"
        );
        assert!(config_error(json!({"fields": ["a"], "sallt": "x"})).contains("sallt"));
    }
}
