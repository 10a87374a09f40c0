//! The `select` stage: keep, drop and rename fields.
//!
//! Either list the fields to keep, in the order they should come out, or the fields to
//! drop; then optionally rename some of what is left.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "select"
//! config = { keep = ["id", "country", "amount"] }
//!
//! [[pipelines.default.stages]]
//! plugin = "select"
//! config = { drop = ["note"], rename = { user = "customer" } }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `keep` | list of names | — | output exactly these fields, in this order; a kept field the input lacks is an absent cell (empty in CSV, left out in JSON lines) |
//! | `drop` | list of names | — | output every field but these, in input order; names the input lacks are ignored |
//! | `rename` | table `old = "new"` | `{}` | applied after `keep`/`drop`, all at once (so `{ a = "b", b = "a" }` swaps) |
//!
//! `keep` and `drop` together is a config error, as is a config that does nothing. With
//! `keep`, every clash is known up front and refused by the config check. With `drop` (or
//! `rename` alone) the fields depend on the input, so a rename onto a field the input
//! still has (`rename = { user = "customer" }` on input that has a `customer`) fails the
//! first batch whose fields clash, with a message saying what to drop. The check is per
//! batch schema: with JSON lines, a batch whose lines between them carry both fields
//! clashes even when no single line has both.
//!
//! Cost: the output plan (which input column feeds which output column) is built once
//! per input schema and cached; a rename-only plan copies each row as one block.

use std::collections::{BTreeMap, HashSet};

use pipe_sdk::prelude::*;

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    /// The fields to output, in output order.
    #[serde(default)]
    pub keep: Option<Vec<String>>,
    /// The fields to leave out.
    #[serde(default)]
    pub drop: Option<Vec<String>>,
    /// `old name -> new name`, applied after `keep`/`drop`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Which fields pass, as validated from the config.
#[derive(Debug)]
enum Fields {
    /// Exactly these, in this order; `names` are their output names (renamed).
    Keep {
        fields: Vec<String>,
        names: Vec<String>,
    },
    /// Every input field but these.
    Drop(HashSet<String>),
}

/// How one input schema maps to the output.
#[derive(Debug, Default)]
struct Plan {
    /// The input columns this plan was built for.
    input: Vec<String>,
    /// For each output column, the input column it copies (`None`: absent).
    sources: Vec<Option<usize>>,
    /// The output column names.
    names: Vec<String>,
    /// `sources` is `0..width` of the input: rows can be copied whole.
    whole_rows: bool,
    /// The schema clashes with `rename`: every batch of it fails with this message.
    clash: Option<String>,
}

/// The running stage.
pub struct Select {
    fields: Fields,
    rename: BTreeMap<String, String>,
    /// The plan for the last input schema seen; `None` before the first batch.
    plan: Option<Plan>,
}

fn bad(path: &str, msg: impl std::fmt::Display) -> Error {
    Error::msg(format!("bad config at `{path}`: {msg}"))
}

/// Returns the first name listed twice.
fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = HashSet::new();
    names.into_iter().find(|n| !seen.insert(n.as_str()))
}

impl Select {
    fn renamed<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.get(name).map_or(name, String::as_str)
    }

    fn build_plan(&self, input: &Batch) -> Plan {
        let mut plan = Plan {
            input: input.columns().map(str::to_owned).collect(),
            ..Plan::default()
        };
        match &self.fields {
            Fields::Keep { fields, names } => {
                plan.sources = fields.iter().map(|f| input.column(f)).collect();
                plan.names = names.clone();
            }
            Fields::Drop(drop) => {
                for (i, name) in input.columns().enumerate() {
                    if !drop.contains(name) {
                        plan.sources.push(Some(i));
                        plan.names.push(self.renamed(name).to_owned());
                    }
                }
                // A renamed field whose new name is also an output name of another field.
                for (i, src) in plan.sources.iter().enumerate() {
                    let Some(src) = *src else { continue };
                    let old = input.column_name(src);
                    let Some(new) = self.rename.get(old) else {
                        continue;
                    };
                    let other = plan
                        .names
                        .iter()
                        .enumerate()
                        .any(|(j, n)| j != i && n == new);
                    if other {
                        plan.clash = Some(format!(
                            "select: cannot rename `{old}` to `{new}`: the input already has \
                             a field `{new}`; add it to `drop`, or rename it as well"
                        ));
                        break;
                    }
                }
            }
        }
        plan.whole_rows = plan.sources.len() == input.width()
            && plan.sources.iter().enumerate().all(|(i, s)| *s == Some(i));
        plan
    }
}

impl Stage for Select {
    type Config = SelectConfig;

    fn new(config: SelectConfig) -> Result<Self, Error> {
        let SelectConfig { keep, drop, rename } = config;
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (old, new) in &rename {
            if old.is_empty() || new.is_empty() {
                return Err(bad("rename", "field names cannot be empty"));
            }
            if let Some(first) = targets.insert(new, old) {
                return Err(bad(
                    &format!("rename.{old}"),
                    format!("`{first}` and `{old}` are both renamed to `{new}`"),
                ));
            }
        }
        let fields = match (keep, drop) {
            (Some(_), Some(_)) => {
                return Err(Error::msg(
                    "bad config: `keep` and `drop` cannot be used together; list either the \
                     fields to keep or the fields to drop",
                ))
            }
            (Some(keep), None) => {
                if keep.is_empty() {
                    return Err(bad("keep", "the list is empty; name at least one field"));
                }
                if let Some(d) = first_duplicate(&keep) {
                    return Err(bad("keep", format!("`{d}` is listed twice")));
                }
                for old in rename.keys() {
                    if !keep.contains(old) {
                        return Err(bad(
                            &format!("rename.{old}"),
                            format!("`{old}` is not in `keep`; only kept fields can be renamed"),
                        ));
                    }
                }
                let names: Vec<String> = keep
                    .iter()
                    .map(|k| rename.get(k).unwrap_or(k).clone())
                    .collect();
                if let Some(d) = first_duplicate(&names) {
                    let old = keep
                        .iter()
                        .find(|k| rename.get(*k) == Some(d))
                        .map_or(d.as_str(), String::as_str);
                    return Err(bad(
                        &format!("rename.{old}"),
                        format!("renaming `{old}` to `{d}` clashes with the kept field `{d}`"),
                    ));
                }
                Fields::Keep {
                    fields: keep,
                    names,
                }
            }
            (None, drop) => {
                let drop: HashSet<String> = drop.unwrap_or_default().into_iter().collect();
                if drop.is_empty() && rename.is_empty() {
                    return Err(Error::msg(
                        "bad config: nothing to do; set `keep`, `drop` or `rename`",
                    ));
                }
                for old in rename.keys() {
                    if drop.contains(old) {
                        return Err(bad(
                            &format!("rename.{old}"),
                            format!("`{old}` is in `drop`; a dropped field cannot be renamed"),
                        ));
                    }
                }
                Fields::Drop(drop)
            }
        };
        Ok(Select {
            fields,
            rename,
            plan: None,
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        let cached = self
            .plan
            .as_ref()
            .is_some_and(|p| input.columns().eq(p.input.iter().map(String::as_str)));
        if !cached {
            self.plan = Some(self.build_plan(input));
        }
        let Some(plan) = &self.plan else {
            return Ok(());
        };
        if let Some(msg) = &plan.clash {
            return Err(Error::msg(msg));
        }
        // `Output::columns` rebuilds the names; skip that when the host's reused output
        // already has them.
        if !out
            .batch()
            .columns()
            .eq(plan.names.iter().map(String::as_str))
        {
            out.columns(&plan.names);
        }
        if plan.whole_rows {
            for row in input.rows() {
                out.push(row);
            }
        } else {
            for row in input.rows() {
                let mut w = out.row(row);
                for src in &plan.sources {
                    match *src {
                        Some(c) => w.copy(row, c),
                        None => w.raw(Kind::Absent, ""),
                    };
                }
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Select,
    name = "select",
    description = "keeps, drops and renames fields"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::codec::Format;
    use pipe_sdk::testing::{instance, run, run_csv, run_instance, run_jsonl};
    use serde_json::json;

    const CSV: &str = "id,user,country,amount,note\n\
                       1,ann,FR,10.5,hi\n\
                       2,bob,DE,20,\n\
                       3,cy,FR,7,\"a, b\"\n";

    fn config_error(config: serde_json::Value) -> String {
        match instance::<Select>(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.message.to_string(),
        }
    }

    #[test]
    fn keep_outputs_fields_in_keep_order() {
        let out = run_csv::<Select>(json!({"keep": ["amount", "id"]}), CSV).unwrap();
        assert_eq!(out.csv(), "amount,id\n10.5,1\n20,2\n7,3\n");
    }

    #[test]
    fn kept_field_missing_from_input_is_absent() {
        let out = run_csv::<Select>(json!({"keep": ["id", "zip"]}), CSV).unwrap();
        assert_eq!(out.csv(), "id,zip\n1,\n2,\n3,\n");
        let out = run_jsonl::<Select>(
            json!({"keep": ["id", "zip"]}),
            "{\"id\":1,\"zip\":\"75001\"}\n{\"id\":2}\n",
        )
        .unwrap();
        assert_eq!(out.jsonl(), "{\"id\":1,\"zip\":\"75001\"}\n{\"id\":2}\n");
    }

    #[test]
    fn drop_and_rename_csv() {
        let out = run_csv::<Select>(
            json!({"drop": ["note", "country"], "rename": {"user": "customer"}}),
            CSV,
        )
        .unwrap();
        assert_eq!(
            out.csv(),
            "id,customer,amount\n1,ann,10.5\n2,bob,20\n3,cy,7\n"
        );
    }

    #[test]
    fn jsonl_keeps_types_and_key_order() {
        let input = "{\"id\":1,\"user\":\"ann\",\"paid\":true,\"tags\":[1,2],\"x\":null}\n";
        let out = run_jsonl::<Select>(json!({"keep": ["tags", "paid", "x", "id"]}), input);
        assert_eq!(
            out.unwrap().jsonl(),
            "{\"tags\":[1,2],\"paid\":true,\"x\":null,\"id\":1}\n"
        );
        let out = run_jsonl::<Select>(json!({"drop": ["user"]}), input).unwrap();
        assert_eq!(
            out.jsonl(),
            "{\"id\":1,\"paid\":true,\"tags\":[1,2],\"x\":null}\n"
        );
    }

    #[test]
    fn rename_only_copies_whole_rows_and_swaps() {
        let out = run_csv::<Select>(json!({"rename": {"id": "user", "user": "id"}}), CSV);
        let text = out.unwrap().csv();
        assert!(text.starts_with("user,id,country,amount,note\n1,ann,FR,10.5,hi\n"));
        assert!(text.ends_with("3,cy,FR,7,\"a, b\"\n"));
    }

    #[test]
    fn rename_of_a_field_the_input_lacks_is_a_no_op() {
        let out = run_csv::<Select>(json!({"rename": {"email": "mail"}}), "id\n1\n").unwrap();
        assert_eq!(out.csv(), "id\n1\n");
    }

    #[test]
    fn keep_with_rename() {
        let out = run_csv::<Select>(
            json!({"keep": ["user", "amount"], "rename": {"user": "customer"}}),
            CSV,
        )
        .unwrap();
        assert_eq!(out.csv(), "customer,amount\nann,10.5\nbob,20\ncy,7\n");
    }

    #[test]
    fn rename_onto_a_present_field_fails_the_batch() {
        let err = run_csv::<Select>(json!({"rename": {"user": "country"}}), CSV).unwrap_err();
        assert_eq!(
            err.message.as_str(),
            "select: cannot rename `user` to `country`: the input already has a field \
             `country`; add it to `drop`, or rename it as well"
        );
        // Dropping the other field resolves it.
        let out = run_csv::<Select>(
            json!({"drop": ["country", "note", "amount"], "rename": {"user": "country"}}),
            CSV,
        )
        .unwrap();
        assert_eq!(out.csv(), "id,country\n1,ann\n2,bob\n3,cy\n");
    }

    #[test]
    fn clash_is_found_at_the_first_batch_that_shows_it() {
        let mut stage = instance::<Select>(json!({"rename": {"user": "customer"}})).unwrap();
        let ok = run_instance(&mut stage, Format::Jsonl, "{\"user\":\"ann\"}\n", 1).unwrap();
        assert_eq!(ok.jsonl(), "{\"customer\":\"ann\"}\n");
        let input = "{\"user\":\"bob\"}\n{\"user\":\"cy\",\"customer\":\"x\"}\n";
        let err = run_instance(&mut stage, Format::Jsonl, input, 1).unwrap_err();
        assert!(
            err.message.contains("cannot rename `user` to `customer`"),
            "{err}"
        );
        // The check is per batch schema: lines that never hold both fields together pass
        // when they land in different batches.
        let apart = "{\"user\":\"ann\"}\n{\"customer\":\"cy\"}\n";
        let config = json!({"rename": {"user": "customer"}});
        assert!(run::<Select>(config.clone(), Format::Jsonl, apart, 1).is_ok());
        assert!(run::<Select>(config, Format::Jsonl, apart, 2).is_err());
    }

    #[test]
    fn multi_batch_runs_with_changing_schemas() {
        let input =
            "{\"a\":1,\"b\":2}\n{\"a\":3,\"b\":4}\n{\"b\":5,\"c\":6}\n{\"c\":7}\n{\"a\":8}\n";
        let out = run::<Select>(json!({"drop": ["b"]}), Format::Jsonl, input, 2).unwrap();
        assert_eq!(
            out.jsonl(),
            "{\"a\":1}\n{\"a\":3}\n{\"c\":6}\n{\"c\":7}\n{\"a\":8}\n"
        );
        assert_eq!(out.batches.len(), 3);
        let out = run::<Select>(json!({"keep": ["note", "id"]}), Format::Csv, CSV, 2).unwrap();
        assert_eq!(out.csv(), "note,id\nhi,1\n,2\n\"a, b\",3\n");
        assert_eq!(out.batches.len(), 2);
    }

    #[test]
    fn rows_keep_their_input_line() {
        let out = run_csv::<Select>(json!({"keep": ["id"]}), CSV).unwrap();
        let lines: Vec<u64> = out.batches[0].rows().map(|r| r.pos().line).collect();
        assert_eq!(lines, [2, 3, 4]);
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert_eq!(
            config_error(json!({"keep": ["a"], "drop": ["b"]})),
            "bad config: `keep` and `drop` cannot be used together; list either the fields \
             to keep or the fields to drop"
        );
        assert_eq!(
            config_error(json!({})),
            "bad config: nothing to do; set `keep`, `drop` or `rename`"
        );
        assert_eq!(
            config_error(json!({"keep": []})),
            "bad config at `keep`: the list is empty; name at least one field"
        );
        assert_eq!(
            config_error(json!({"keep": ["a", "b", "a"]})),
            "bad config at `keep`: `a` is listed twice"
        );
        assert_eq!(
            config_error(json!({"keep": ["a", "b"], "rename": {"a": "b"}})),
            "bad config at `rename.a`: renaming `a` to `b` clashes with the kept field `b`"
        );
        assert_eq!(
            config_error(json!({"keep": ["a"], "rename": {"b": "c"}})),
            "bad config at `rename.b`: `b` is not in `keep`; only kept fields can be renamed"
        );
        assert_eq!(
            config_error(json!({"drop": ["a"], "rename": {"a": "c"}})),
            "bad config at `rename.a`: `a` is in `drop`; a dropped field cannot be renamed"
        );
        assert_eq!(
            config_error(json!({"rename": {"a": "x", "b": "x"}})),
            "bad config at `rename.b`: `a` and `b` are both renamed to `x`"
        );
        assert_eq!(
            config_error(json!({"rename": {"a": ""}})),
            "bad config at `rename`: field names cannot be empty"
        );
        let unknown = config_error(json!({"kep": ["a"]}));
        assert!(unknown.contains("kep"), "{unknown}");
        let wrong_type = config_error(json!({"keep": "a"}));
        assert!(
            wrong_type.starts_with("bad config at `keep`"),
            "{wrong_type}"
        );
    }
}
