//! The `dedup` stage: drops every row whose key was seen before, keeping the first.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "dedup"
//! config = { key = ["id"] }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `key` | list of names | required | the fields that together identify a record |
//!
//! Key semantics:
//! - Fields are compared by their text, so `1` and `"1"` are the same key (the same data
//!   read as CSV, which has no types, and as JSON lines dedups the same way).
//! - A missing field is part of the key: absent (JSON line without the key, or a key field
//!   the input does not have), JSON `null` and the empty string are three distinct values.
//! - The key is encoded with length prefixes, so `("a,b", "c")` and `("a", "b,c")` never
//!   collide.
//!
//! The stage is stateful (one worker, batches in input order). It remembers every key
//! exactly (no lossy hash: a false duplicate would silently drop a record), so memory
//! grows with the number of distinct keys: about the key's bytes plus ~40 bytes each.
//!
//! # State handover
//!
//! At a hot swap the seen keys go to the new version, in this format (version 1):
//!
//! ```text
//! "DDUP"  u8 version = 1
//! varint n_fields, then n_fields × (varint len, UTF-8 field name)   -- the config's `key`
//! varint n_keys,   then n_keys   × (varint len, encoded key)
//! ```
//!
//! Varints are unsigned LEB128. An encoded key is one varint per field: `0` absent,
//! `1` null, `len + 2` followed by the field's `len` bytes of text. Import checks every
//! byte and refuses state from a stage with another `key` (old keys would mean something
//! else); it never panics on garbage.

use std::collections::HashSet;

use pipe_sdk::prelude::*;
use pipe_sdk::state::{put_bytes, put_key_field, put_str, put_varint, StateReader};

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// The fields that identify a record.
    pub key: Vec<String>,
}

/// The running stage.
pub struct Dedup {
    key: Vec<String>,
    /// Every key seen, encoded (see the module docs).
    seen: HashSet<Box<[u8]>>,
    /// The column of each key field in the current batch (`None`: absent).
    cols: Vec<Option<usize>>,
    /// The key of the current row, reused across rows.
    buf: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"DDUP";
const VERSION: u8 = 1;

/// True when `key` is exactly `fields` well-formed fields.
fn valid_key(key: &[u8], fields: usize) -> bool {
    let mut r = StateReader::new(key, "dedup");
    (0..fields).all(|_| r.key_field().is_ok()) && r.rest() == 0
}

impl Stage for Dedup {
    type Config = DedupConfig;

    fn new(config: DedupConfig) -> Result<Self, Error> {
        if config.key.is_empty() {
            return Err(Error::msg(
                "bad config at `key`: the list is empty; name the fields that identify a record",
            ));
        }
        for (i, k) in config.key.iter().enumerate() {
            if k.is_empty() {
                return Err(Error::msg(
                    "bad config at `key`: field names cannot be empty",
                ));
            }
            if config.key[..i].contains(k) {
                return Err(Error::msg(format!(
                    "bad config at `key`: `{k}` is listed twice"
                )));
            }
        }
        Ok(Dedup {
            key: config.key,
            seen: HashSet::new(),
            cols: Vec::new(),
            buf: Vec::new(),
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        self.cols.clear();
        self.cols.extend(self.key.iter().map(|k| input.column(k)));
        out.columns_like(input);
        for row in input.rows() {
            self.buf.clear();
            for col in &self.cols {
                match *col {
                    Some(c) => {
                        let (kind, text) = row.raw(c);
                        put_key_field(&mut self.buf, kind, text);
                    }
                    None => put_key_field(&mut self.buf, Kind::Absent, ""),
                }
            }
            // Allocate only for a key not seen before.
            if !self.seen.contains(self.buf.as_slice()) {
                self.seen.insert(self.buf.as_slice().into());
                out.push(row);
            }
        }
        Ok(())
    }

    fn export_state(&self) -> Result<Option<Vec<u8>>, Error> {
        let bytes: usize = self.seen.iter().map(|k| k.len() + 2).sum();
        let mut out = Vec::with_capacity(bytes + 64);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(&mut out, self.key.len() as u64);
        for k in &self.key {
            put_str(&mut out, k);
        }
        put_varint(&mut out, self.seen.len() as u64);
        for k in &self.seen {
            put_bytes(&mut out, k);
        }
        Ok(Some(out))
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), Error> {
        if state.len() < 5 || &state[..4] != MAGIC {
            return Err(Error::msg("dedup state: not a dedup state (bad magic)"));
        }
        if state[4] != VERSION {
            return Err(Error::msg(format!(
                "dedup state: version {} is not supported (this is version {VERSION})",
                state[4]
            )));
        }
        let mut r = StateReader::new(&state[5..], "dedup");
        let fields = r.strs()?;
        if !fields.iter().eq(self.key.iter()) {
            return Err(Error::msg(format!(
                "dedup state: it was kept for key {fields:?}, but this stage's key is {:?}; \
                 the seen keys cannot carry over",
                self.key
            )));
        }
        let n_keys = r.varint()?;
        // Decode into a separate set so a bad state leaves this one untouched. Each key
        // takes at least one byte, which bounds what garbage can make us reserve.
        let mut keys: HashSet<Box<[u8]>> =
            HashSet::with_capacity(n_keys.min(r.rest() as u64) as usize);
        for _ in 0..n_keys {
            let key = r.len_bytes()?;
            if !valid_key(key, self.key.len()) {
                return Err(r.error("a key is malformed"));
            }
            keys.insert(key.into());
        }
        r.finish()?;
        self.seen.extend(keys);
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Dedup,
    name = "dedup",
    description = "drops records whose key fields were seen before",
    stateful = true
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::abi::{ErrorKind, StageBox};
    use pipe_sdk::codec::Format;
    use pipe_sdk::parse_config;
    use pipe_sdk::testing::{self, instance, run, run_csv, run_instance, run_jsonl};
    use serde_json::json;

    fn config_error(config: serde_json::Value) -> String {
        match instance::<Dedup>(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.message.to_string(),
        }
    }

    fn dedup(key: &[&str]) -> Dedup {
        let config = parse_config(&json!({ "key": key }).to_string()).unwrap();
        Dedup::new(config).unwrap()
    }

    fn export(stage: &StageBox) -> Vec<u8> {
        testing::export_state(stage).unwrap().unwrap()
    }

    const ORDERS: &str = "id,amount\n1,10\n2,20\n1,11\n3,30\n2,21\n4,40\n";

    #[test]
    fn keeps_the_first_row_of_each_key_csv() {
        let out = run_csv::<Dedup>(json!({"key": ["id"]}), ORDERS).unwrap();
        assert_eq!(out.csv(), "id,amount\n1,10\n2,20\n3,30\n4,40\n");
    }

    #[test]
    fn remembers_keys_across_small_batches() {
        let out = run::<Dedup>(json!({"key": ["id"]}), Format::Csv, ORDERS, 2).unwrap();
        assert_eq!(out.csv(), "id,amount\n1,10\n2,20\n3,30\n4,40\n");
        let lines: Vec<u64> = out
            .batches
            .iter()
            .flat_map(|b| b.rows().map(|r| r.pos().line))
            .collect();
        assert_eq!(lines, [2, 3, 5, 7]);
    }

    #[test]
    fn multi_field_keys_do_not_collide_on_separators() {
        let input = "a,b,n\n\"x,y\",z,1\nx,\"y,z\",2\nxy,z,3\nx,yz,4\n\"x,y\",z,5\n";
        let out = run_csv::<Dedup>(json!({"key": ["a", "b"]}), input).unwrap();
        assert_eq!(
            out.csv(),
            "a,b,n\n\"x,y\",z,1\nx,\"y,z\",2\nxy,z,3\nx,yz,4\n"
        );
    }

    #[test]
    fn absent_null_and_empty_are_distinct_but_types_are_not() {
        let input = "{\"id\":1}\n{\"id\":1,\"k\":\"\"}\n{\"id\":1,\"k\":null}\n\
                     {\"id\":\"1\"}\n{\"id\":1,\"k\":null}\n{\"id\":1,\"k\":\"\"}\n";
        let out = run_jsonl::<Dedup>(json!({"key": ["id", "k"]}), input).unwrap();
        assert_eq!(
            out.jsonl(),
            "{\"id\":1}\n{\"id\":1,\"k\":\"\"}\n{\"id\":1,\"k\":null}\n"
        );
    }

    #[test]
    fn key_field_missing_from_the_input_counts_as_absent() {
        let out = run_csv::<Dedup>(json!({"key": ["nope"]}), ORDERS).unwrap();
        assert_eq!(out.csv(), "id,amount\n1,10\n");
    }

    #[test]
    fn state_survives_a_swap() {
        let config = json!({"key": ["id"]});
        let mut old = instance::<Dedup>(config.clone()).unwrap();
        let first = run_instance(&mut old, Format::Csv, "id\n1\n2\n1\n", 2).unwrap();
        assert_eq!(first.csv(), "id\n1\n2\n");
        let state = export(&old);
        assert!(state.starts_with(b"DDUP\x01"));

        let mut new = instance::<Dedup>(config).unwrap();
        testing::import_state(&mut new, &state).unwrap();
        let second = run_instance(&mut new, Format::Csv, "id\n2\n3\n1\n3\n4\n", 2).unwrap();
        assert_eq!(second.csv(), "id\n3\n4\n");
        // And the new instance's state holds all four keys.
        let mut again = dedup(&["id"]);
        again.import_state(&export(&new)).unwrap();
        assert_eq!(again.seen.len(), 4);
    }

    #[test]
    fn empty_state_round_trips() {
        let d = dedup(&["a", "b"]);
        let state = d.export_state().unwrap().unwrap();
        let mut e = dedup(&["a", "b"]);
        e.import_state(&state).unwrap();
        assert!(e.seen.is_empty());
    }

    #[test]
    fn import_refuses_state_for_another_key() {
        let mut d = dedup(&["id"]);
        d.seen.insert(vec![3, b'x'].into());
        let state = d.export_state().unwrap().unwrap();
        let err = dedup(&["email"]).import_state(&state).unwrap_err();
        assert_eq!(
            err.message(),
            "dedup state: it was kept for key [\"id\"], but this stage's key is [\"email\"]; \
             the seen keys cannot carry over"
        );
    }

    #[test]
    fn import_of_garbage_is_an_error_never_a_panic() {
        let mut d = dedup(&["id", "k"]);
        for key in [&[3, b'a', 0][..], &[1, 1], &[5, b'a', b'b', b'c', 2]] {
            d.seen.insert(key.into());
        }
        let state = d.export_state().unwrap().unwrap();
        assert!(dedup(&["id", "k"]).import_state(&state).is_ok());

        let err = |bytes: &[u8]| dedup(&["id", "k"]).import_state(bytes).unwrap_err();
        assert_eq!(
            err(b"").message(),
            "dedup state: not a dedup state (bad magic)"
        );
        assert_eq!(
            err(b"DDUP\x02").message(),
            "dedup state: version 2 is not supported (this is version 1)"
        );
        // Every truncation is refused.
        for n in 0..state.len() {
            assert!(
                dedup(&["id", "k"]).import_state(&state[..n]).is_err(),
                "{n}"
            );
        }
        let mut long = state.clone();
        long.push(0);
        assert_eq!(
            err(&long).message(),
            "dedup state: 1 unexpected bytes at the end"
        );
        // A key with the wrong number of fields.
        // "DDUP" 1, fields [id, k] take 11 bytes; then one key of one field (null).
        let mut bad = state[..11].to_vec();
        bad.extend_from_slice(&[1, 1, 1]);
        assert_eq!(err(&bad).message(), "dedup state: a key is malformed");
        bad.truncate(11);
        bad.extend_from_slice(&[1, 2, 1, 1]);
        assert!(dedup(&["id", "k"]).import_state(&bad).is_ok());
        bad.truncate(11);
        bad.extend_from_slice(&[1, 3, 1, 1, 1]);
        assert!(dedup(&["id", "k"]).import_state(&bad).is_err());
        // A huge count and length must not allocate or overflow.
        let huge = b"DDUP\x01\x02\x02id\x01k\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x7f";
        assert!(err(huge).message().contains("truncated"));
        let overlong = b"DDUP\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff";
        assert!(err(overlong).message().contains("out of range"));
        // Random bytes behind a valid header, and every single-byte corruption.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..200 {
            let mut bytes = b"DDUP\x01".to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let _ = dedup(&["id", "k"]).import_state(&bytes);
        }
        for i in 0..state.len() {
            let mut bytes = state.clone();
            bytes[i] ^= 0x5a;
            let _ = dedup(&["id", "k"]).import_state(&bytes);
        }
    }

    #[test]
    fn import_error_crosses_the_abi_as_a_state_error() {
        let mut stage = instance::<Dedup>(json!({"key": ["id"]})).unwrap();
        let err = testing::import_state(&mut stage, b"nonsense").unwrap_err();
        assert_eq!(err.kind, ErrorKind::State);
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert!(config_error(json!({})).contains("missing field `key`"));
        assert_eq!(
            config_error(json!({"key": []})),
            "bad config at `key`: the list is empty; name the fields that identify a record"
        );
        assert_eq!(
            config_error(json!({"key": ["a", "a"]})),
            "bad config at `key`: `a` is listed twice"
        );
        assert!(config_error(json!({"key": "id"})).starts_with("bad config at `key`"));
        assert!(config_error(json!({"key": ["id"], "keys": ["x"]})).contains("keys"));
    }
}
