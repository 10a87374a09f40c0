//! The `compute` stage: sets fields to the values of expressions.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "compute"
//! config = { set = { amount_cents = "amount * 100", country = "upper(country)" } }
//! ```
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `set` | table `field = "expression"` | the fields to set, in the order written; expressions are in the `pipe-expr` language |
//!
//! - **Order.** Assignments run in the order written, and each sees the fields set
//!   before it in the same record: with `set = { net = "price * qty", gross = "net *
//!   1.2" }`, `gross` uses the new `net`. A field read before it is set (or by its own
//!   expression, as in `country = "upper(country)"`) is the input's.
//! - **Placement.** Setting a field the input has replaces its value in place, in the
//!   same column; a new field is added after the input's fields, in the order written.
//! - **Values.** Whole numbers are written as ints, exact decimals with their exact text
//!   (`amount * 100` on `12.34` is `1234`), text as text, bools as bools. A missing
//!   result (arithmetic on a missing field, `upper` of one) is written as `null`: an
//!   empty cell in CSV. An expression that is just a field (`copy = "price"`) copies
//!   the cell as it is, type and text.
//! - **Errors.** An expression that does not compile refuses the config, naming the key:
//!   ``bad config at `set.amount_cents`: expected a value at column 10 in "amount * "``.
//!   A record an expression cannot be evaluated on (arithmetic on text that is not a
//!   number, division by zero) goes to the stage's `on_error` policy, with a reason
//!   naming the field being set: ``set.amount_cents: `amount * 100`: 'n/a' is not a
//!   number``; none of its fields are set.
//!
//! Cost: expressions are compiled once per instance; field names are mapped to columns
//! and the output layout is planned once per input schema. Per record, numbers and
//! field reads allocate nothing; only text functions that make new text (`upper`,
//! `concat`, ...) do.

use std::fmt;

use pipe_expr::{Expr, Fields, Val};
use pipe_sdk::prelude::*;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    /// The fields to set, in the order written.
    pub set: Assignments,
}

/// `field = "expression"` pairs in the order written (the host keeps the TOML table's
/// order in the JSON it passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignments(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Assignments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Assignments, D::Error> {
        d.deserialize_map(AssignmentsVisitor)
    }
}

struct AssignmentsVisitor;

impl<'de> Visitor<'de> for AssignmentsVisitor {
    type Value = Assignments;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of `field = \"expression\"`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Assignments, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some(field) = map.next_key::<String>()? {
            let ExprText(expr) = map.next_value()?;
            if field.is_empty() {
                return Err(de::Error::custom("a field name cannot be empty"));
            }
            if pairs.iter().any(|(f, _)| *f == field) {
                return Err(de::Error::custom(format!("`{field}` is set twice")));
            }
            pairs.push((field, expr));
        }
        Ok(Assignments(pairs))
    }
}

/// An expression's text, with a type error that says what is wanted.
struct ExprText(String);

impl<'de> Deserialize<'de> for ExprText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ExprText, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ExprText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an expression in a string, such as \"amount * 100\" or \"'EUR'\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ExprText, E> {
                Ok(ExprText(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where an expression's field slot reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ref {
    /// The value set by assignment `j`, earlier in the same record.
    Set(usize),
    /// Input field number `k` of [`Compute::inputs`].
    Input(usize),
}

/// One assignment, compiled.
struct Assignment {
    field: String,
    expr: Expr,
    /// Per slot of `expr`, where it reads.
    refs: Vec<Ref>,
}

/// Where an output column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Input column `c`, copied as it is.
    Copy(usize),
    /// Input column `c`, read by an assignment that is just that field: copied with its
    /// type and text, but `null` when absent, like any missing result.
    Field(usize),
    /// The value of assignment `j`.
    Set(usize),
}

/// The output layout for one input schema.
#[derive(Debug, Default)]
struct Plan {
    /// The input columns the plan was made for.
    schema: Vec<String>,
    /// Column of each name in `Compute::inputs`, when the input has it.
    input_cols: Vec<Option<usize>>,
    /// Output column names.
    names: Vec<String>,
    /// Output column sources, one per name.
    sources: Vec<Source>,
}

/// A running compute stage.
pub struct Compute {
    assignments: Vec<Assignment>,
    /// Every input field any expression reads, once.
    inputs: Vec<String>,
    plan: Plan,
}

impl Compute {
    /// Remakes the plan when `input`'s columns differ from the last batch's.
    fn plan_for(&mut self, input: &Batch) {
        if input
            .columns()
            .eq(self.plan.schema.iter().map(String::as_str))
            && !self.plan.names.is_empty()
        {
            return;
        }
        let plan = &mut self.plan;
        plan.schema = input.columns().map(str::to_string).collect();
        plan.input_cols = self.inputs.iter().map(|n| input.column(n)).collect();
        plan.names = plan.schema.clone();
        plan.sources = (0..input.width()).map(Source::Copy).collect();
        for (j, a) in self.assignments.iter().enumerate() {
            let source = match a.expr.as_field().map(|slot| a.refs[slot]) {
                // A bare input field: copy the cell, keeping its type and text.
                Some(Ref::Input(k)) => plan.input_cols[k].map_or(Source::Set(j), Source::Field),
                _ => Source::Set(j),
            };
            match input.column(&a.field) {
                Some(c) => plan.sources[c] = source,
                None => {
                    plan.names.push(a.field.clone());
                    plan.sources.push(source);
                }
            }
        }
    }
}

/// The fields an assignment's expression sees: the input row, and what earlier
/// assignments set in this row.
struct RowEnv<'r, 'a> {
    row: Row<'a>,
    refs: &'r [Ref],
    input_cols: &'r [Option<usize>],
    set: &'r [Val<'a>],
}

impl<'a> Fields<'a> for RowEnv<'_, 'a> {
    fn field(&self, slot: usize) -> Val<'a> {
        match self.refs.get(slot) {
            Some(Ref::Input(k)) => match self.input_cols.get(*k) {
                Some(Some(c)) => {
                    let (kind, text) = self.row.raw(*c);
                    Val::from_cell(kind, text)
                }
                _ => Val::Missing,
            },
            // Text made by an earlier function is copied here; values read from the
            // input are borrowed.
            Some(Ref::Set(j)) => self.set.get(*j).cloned().unwrap_or(Val::Missing),
            None => Val::Missing,
        }
    }
}

impl Stage for Compute {
    type Config = ComputeConfig;

    fn new(config: ComputeConfig) -> Result<Compute, Error> {
        if config.set.0.is_empty() {
            return Err(Error::msg(
                "bad config at `set`: nothing to set; add `field = \"expression\"` entries",
            ));
        }
        let mut inputs: Vec<String> = Vec::new();
        let mut assignments: Vec<Assignment> = Vec::new();
        for (field, text) in config.set.0 {
            let expr = Expr::compile(&text)
                .map_err(|e| Error::msg(format!("bad config at `set.{field}`: {e}")))?;
            let refs = expr
                .fields()
                .iter()
                .map(
                    |name| match assignments.iter().position(|a| a.field == *name) {
                        Some(j) => Ref::Set(j),
                        None => match inputs.iter().position(|n| n == name) {
                            Some(k) => Ref::Input(k),
                            None => {
                                inputs.push(name.clone());
                                Ref::Input(inputs.len() - 1)
                            }
                        },
                    },
                )
                .collect();
            assignments.push(Assignment { field, expr, refs });
        }
        Ok(Compute {
            assignments,
            inputs,
            plan: Plan::default(),
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        self.plan_for(input);
        let Compute {
            assignments, plan, ..
        } = &*self;
        if !out
            .batch()
            .columns()
            .eq(plan.names.iter().map(String::as_str))
        {
            out.columns(&plan.names);
        }
        let mut set: Vec<Val<'_>> = Vec::with_capacity(assignments.len());
        'rows: for row in input.rows() {
            set.clear();
            for a in assignments {
                let env = RowEnv {
                    row,
                    refs: &a.refs,
                    input_cols: &plan.input_cols,
                    set: &set,
                };
                match a.expr.eval(&env) {
                    Ok(v) => set.push(v),
                    Err(e) => {
                        out.reject(row, format_args!("set.{}: {e}", a.field));
                        continue 'rows;
                    }
                }
            }
            let mut w = out.row(row);
            for source in &plan.sources {
                match *source {
                    Source::Copy(c) => {
                        w.copy(row, c);
                    }
                    Source::Field(c) => match row.raw(c) {
                        (Kind::Absent, _) => {
                            w.value(Value::Null);
                        }
                        (kind, text) => {
                            w.raw(kind, text);
                        }
                    },
                    Source::Set(j) => set[j].write(&mut w),
                }
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Compute,
    name = "compute",
    description = "sets fields to the values of expressions"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::testing::{instance, run_csv, run_jsonl};
    use serde_json::json;

    /// The config as the host passes it: JSON with the TOML table's key order.
    fn set(pairs: &[(&str, &str)]) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in pairs {
            m.insert(k.to_string(), json!(v));
        }
        json!({ "set": m })
    }

    fn csv(pairs: &[(&str, &str)], input: &str) -> String {
        run_csv::<Compute>(set(pairs), input)
            .unwrap_or_else(|e| panic!("{e}"))
            .csv()
    }

    fn jsonl(pairs: &[(&str, &str)], input: &str) -> String {
        run_jsonl::<Compute>(set(pairs), input)
            .unwrap_or_else(|e| panic!("{e}"))
            .jsonl()
    }

    #[test]
    fn the_design_example() {
        assert_eq!(
            csv(
                &[
                    ("amount_cents", "amount * 100"),
                    ("country", "upper(country)")
                ],
                "id,country,amount\n1,fr,12.34\n2,de,0.1\n3,us,\n"
            ),
            "id,country,amount,amount_cents\n1,FR,12.34,1234\n2,DE,0.1,10\n3,US,,\n"
        );
    }

    #[test]
    fn config_order_is_kept_and_later_fields_see_earlier_ones() {
        let config = r#"{"set": {"net": "price * qty", "gross": "net * 1.2", "price": "0"}}"#;
        let config: serde_json::Value = serde_json::from_str(config).expect("json");
        let out = run_csv::<Compute>(config, "price,qty\n19.99,3\n")
            .expect("runs")
            .csv();
        // `price` is replaced in place (after `net` read the input's price); `net` and
        // `gross` are appended in the order written.
        assert_eq!(out, "price,qty,net,gross\n0,3,59.97,71.964\n");
    }

    #[test]
    fn replacing_a_field_keeps_its_position() {
        assert_eq!(
            csv(&[("b", "concat(b, '!')"), ("a", "a + 1")], "a,b,c\n1,x,y\n"),
            "a,b,c\n2,x!,y\n"
        );
    }

    #[test]
    fn a_field_can_be_set_from_a_string_made_earlier() {
        assert_eq!(
            csv(
                &[
                    ("full", "concat(first, ' ', last)"),
                    ("shout", "upper(full)")
                ],
                "first,last\nann,lee\n"
            ),
            "first,last,full,shout\nann,lee,ann lee,ANN LEE\n"
        );
    }

    #[test]
    fn exact_decimals_and_json_types() {
        let input = "\
{\"id\":1,\"price\":1.10,\"qty\":3,\"ok\":true,\"tags\":[1]}
{\"id\":2,\"price\":\"2.5\",\"qty\":2}
";
        assert_eq!(
            jsonl(
                &[
                    ("total", "price * qty"),
                    ("half", "qty / 2"),
                    ("third", "qty / 3"),
                    ("flag", "ok"),
                    ("tags_copy", "tags"),
                    ("price_copy", "price"),
                    ("label", "concat('#', id)"),
                    ("big", "total > 5"),
                ],
                input
            ),
            "{\"id\":1,\"price\":1.10,\"qty\":3,\"ok\":true,\"tags\":[1],\"total\":3.3,\"half\":1.5,\
             \"third\":1,\"flag\":true,\"tags_copy\":[1],\"price_copy\":1.10,\"label\":\"#1\",\"big\":false}\n\
             {\"id\":2,\"price\":\"2.5\",\"qty\":2,\"total\":5,\"half\":1,\"third\":0.6666666666666666,\
             \"flag\":null,\"tags_copy\":null,\"price_copy\":\"2.5\",\"label\":\"#2\",\"big\":false}\n"
        );
    }

    #[test]
    fn missing_inputs_give_null() {
        assert_eq!(
            jsonl(
                &[("cents", "amount * 100"), ("name", "upper(name)")],
                "{\"id\":1}\n{\"id\":2,\"amount\":null,\"name\":\"x\"}\n"
            ),
            // `name` is a column of the batch (the second line has it): set in place.
            "{\"id\":1,\"name\":null,\"cents\":null}\n\
             {\"id\":2,\"amount\":null,\"name\":\"X\",\"cents\":null}\n"
        );
    }

    #[test]
    fn rows_that_fail_are_rejected_naming_the_field() {
        let run = run_csv::<Compute>(
            set(&[("cents", "amount * 100"), ("ratio", "amount / qty")]),
            "amount,qty\n1.5,2\nn/a,1\n3,0\n",
        )
        .expect("runs");
        assert_eq!(run.csv(), "amount,qty,cents,ratio\n1.5,2,150,0.75\n");
        let reasons: Vec<(u64, &str)> = run
            .rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "set.cents: `amount * 100`: 'n/a' is not a number"),
                (4, "set.ratio: `amount / qty`: division by zero"),
            ]
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = |config: serde_json::Value| match instance::<Compute>(config) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err(set(&[("ok", "1"), ("amount_cents", "amount * ")])),
            "bad config at `set.amount_cents`: expected a value at column 10 in \"amount * \""
        );
        assert_eq!(
            err(set(&[("x", "frobnicate(a)")])),
            "bad config at `set.x`: unknown function 'frobnicate' at column 1 in \
             \"frobnicate(a)\"; the functions are upper, lower, trim, len, replace, concat, \
             substr, round, floor, ceil, abs, min, max, coalesce, if, exists, is_missing, \
             num, int, str"
        );
        let e = err(json!({ "set": { "x": 5 } }));
        assert!(e.starts_with("bad config at `set.x`: invalid type: integer `5`, expected an expression in a string"), "{e}");
        assert!(
            err(json!({ "set": ["x"] })).contains("expected a table of `field = \"expression\"`")
        );
        assert!(err(json!({ "set": {} })).contains("nothing to set"));
        assert!(err(json!({ "set": { "": "1" } })).contains("cannot be empty"));
        assert!(err(json!({ "set": { "a": "1" }, "sett": 1 })).contains("unknown field `sett`"));
        assert!(err(json!({})).contains("missing field `set`"));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let config: serde_json::Value =
            serde_json::from_str(r#"{"set": {"a": "1"}}"#).expect("json");
        assert!(instance::<Compute>(config).is_ok());
        let e = pipe_sdk::parse_config::<ComputeConfig>(r#"{"set": {"a": "1", "a": "2"}}"#)
            .expect_err("refused");
        assert!(e.message().contains("`a` is set twice"), "{}", e.message());
    }

    #[test]
    fn batches_with_different_columns_are_planned_again() {
        let input = "{\"a\":1}\n{\"b\":2,\"a\":3}\n{\"b\":4}\n";
        let run = pipe_sdk::testing::run::<Compute>(
            set(&[("b", "a * 10"), ("c", "b")]),
            pipe_sdk::codec::Format::Jsonl,
            input,
            1,
        )
        .expect("runs");
        assert_eq!(
            run.jsonl(),
            "{\"a\":1,\"b\":10,\"c\":10}\n{\"b\":30,\"a\":3,\"c\":30}\n{\"b\":null,\"c\":null}\n"
        );
    }
}
