//! The `filter` stage: keeps the records for which an expression is true.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "filter"
//! config = { where = "status == 'paid' && amount > 100" }
//! ```
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `where` | string | an expression of the `pipe-expr` language; records for which it is true pass unchanged, the others are dropped |
//!
//! The expression is compiled once per instance: a syntax error, an unknown function or
//! a wrong number of arguments refuses the config with a message naming the key and the
//! column (``bad config at `where`: expected ')' at column 34 in "..."``). "True" follows
//! the language's truth rules: a missing value is false, so `amount > 100` drops records
//! without an amount. A record the expression cannot be evaluated on (arithmetic on
//! text that is not a number, division by zero) goes to the stage's `on_error` policy
//! with the reason, prefixed `where: `.
//!
//! Cost: field names are mapped to columns once per input schema; per record, a
//! comparison of fields with literals reads the cells in place and allocates nothing,
//! and a kept record is copied as one block.

use pipe_expr::{Columns, Expr, RowFields};
use pipe_sdk::prelude::*;

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The condition a record must meet to pass.
    #[serde(rename = "where")]
    pub condition: String,
}

/// A running filter: the compiled condition and its column cache.
pub struct Filter {
    condition: Expr,
    columns: Columns,
}

impl Stage for Filter {
    type Config = FilterConfig;

    fn new(config: FilterConfig) -> Result<Filter, Error> {
        let condition = Expr::compile(&config.condition)
            .map_err(|e| Error::msg(format!("bad config at `where`: {e}")))?;
        let columns = Columns::new(condition.fields());
        Ok(Filter { condition, columns })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        out.columns_like(input);
        let cols = self.columns.resolve(input);
        for row in input.rows() {
            match self.condition.test(&RowFields::new(row, cols)) {
                Ok(true) => out.push(row),
                Ok(false) => {}
                Err(e) => out.reject(row, format_args!("where: {e}")),
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Filter,
    name = "filter",
    description = "keeps the records for which an expression is true"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::testing::{instance, run_csv, run_jsonl};
    use serde_json::json;

    const ORDERS: &str = "\
id,status,amount,country
1,paid,120.50,FR
2,void,500,DE
3,paid,99.99,FR
4,paid,,US
5,paid,1e3,de
";

    fn csv(condition: &str, input: &str) -> String {
        run_csv::<Filter>(json!({ "where": condition }), input)
            .unwrap_or_else(|e| panic!("{condition}: {e}"))
            .csv()
    }

    fn ids(condition: &str) -> Vec<String> {
        csv(condition, ORDERS)
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn keeps_rows_where_the_condition_holds() {
        assert_eq!(
            csv("status == 'paid' && amount > 100", ORDERS),
            "id,status,amount,country\n1,paid,120.50,FR\n5,paid,1e3,de\n"
        );
    }

    #[test]
    fn csv_numbers_compare_as_numbers_and_literals_as_text() {
        assert_eq!(ids("amount >= 99.99"), ["1", "2", "3", "5"]);
        assert_eq!(ids("amount < 100"), ["3"], "an empty cell is not a number");
        assert_eq!(ids("amount == 500.0"), ["2"]);
        assert_eq!(ids("amount == '500.0'"), Vec::<String>::new());
        assert_eq!(ids("id > 4"), ["5"]);
        assert_eq!(ids("id > '4'"), ["5"]);
    }

    #[test]
    fn logic_precedence_and_parentheses() {
        assert_eq!(
            ids("status == 'void' || country == 'FR' && amount > 100"),
            ["1", "2"]
        );
        assert_eq!(
            ids("(status == 'void' || country == 'FR') && amount > 100"),
            ["1", "2"]
        );
        assert_eq!(
            ids("(status == 'void' || country == 'FR') && amount < 100"),
            ["3"]
        );
        assert_eq!(
            ids("!(status == 'paid') or not country in ('FR', 'de')"),
            ["2", "4"]
        );
        assert_eq!(ids("not status == 'paid'"), ["2"]);
    }

    #[test]
    fn contains_in_and_functions() {
        assert_eq!(ids("upper(country) in ('DE', 'US')"), ["2", "4", "5"]);
        assert_eq!(ids("country in ('DE', 'US')"), ["2", "4"]);
        assert_eq!(ids("status contains 'ai'"), ["1", "3", "4", "5"]);
        assert_eq!(
            ids("country starts_with 'F' && amount ends_with '0'"),
            ["1"]
        );
        assert_eq!(ids("round(amount) == 100"), ["3"]);
        assert_eq!(ids("coalesce(amount, 0) == 0"), ["4"]);
    }

    #[test]
    fn missing_fields_are_false_except_for_not_equal() {
        let input = "{\"id\":1,\"note\":\"x\"}\n{\"id\":2}\n{\"id\":3,\"note\":null}\n";
        let run = |c: &str| {
            run_jsonl::<Filter>(json!({ "where": c }), input)
                .unwrap_or_else(|e| panic!("{c}: {e}"))
                .jsonl()
        };
        assert_eq!(run("note == 'x'"), "{\"id\":1,\"note\":\"x\"}\n");
        assert_eq!(run("note != 'x'"), "{\"id\":2}\n{\"id\":3,\"note\":null}\n");
        assert_eq!(run("note > 'a'"), "{\"id\":1,\"note\":\"x\"}\n");
        assert_eq!(
            run("!exists(note)"),
            "{\"id\":2}\n{\"id\":3,\"note\":null}\n"
        );
        assert_eq!(run("nope"), "");
    }

    #[test]
    fn jsonl_keeps_types_and_keys() {
        let input = "\
{\"id\":1,\"ok\":true,\"price\":1.50,\"tags\":[\"a\"],\"name\":\"Ann\"}
{\"id\":2,\"ok\":false,\"price\":2,\"name\":\"Bob\"}
{\"id\":3,\"ok\":true,\"price\":\"3\",\"extra\":null}
";
        let out = run_jsonl::<Filter>(json!({ "where": "ok && price >= 1.5" }), input)
            .expect("runs")
            .jsonl();
        assert_eq!(
            out,
            "{\"id\":1,\"ok\":true,\"price\":1.50,\"tags\":[\"a\"],\"name\":\"Ann\"}\n\
             {\"id\":3,\"ok\":true,\"price\":\"3\",\"extra\":null}\n"
        );
    }

    #[test]
    fn rows_that_cannot_be_evaluated_are_rejected_with_the_reason() {
        let run = run_csv::<Filter>(
            json!({ "where": "amount * 2 > 100" }),
            "id,amount\n1,60\n2,abc\n3,10\n",
        )
        .expect("runs");
        assert_eq!(run.csv(), "id,amount\n1,60\n");
        assert_eq!(run.rejects.len(), 1);
        assert_eq!(run.rejects[0].line, 3);
        assert_eq!(
            run.rejects[0].reason,
            "where: `amount * 2`: 'abc' is not a number"
        );
    }

    #[test]
    fn bad_expressions_are_refused_at_config_time() {
        let err = |config: serde_json::Value| match instance::<Filter>(config) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err(json!({ "where": "status == 'paid' && (amount > 100" })),
            "bad config at `where`: expected ')' at column 34 in \
             \"status == 'paid' && (amount > 100\""
        );
        assert_eq!(
            err(json!({ "where": "uppr(name) == 'A'" })),
            "bad config at `where`: unknown function 'uppr' at column 1 in \
             \"uppr(name) == 'A'\"; did you mean 'upper'?"
        );
        assert!(err(json!({ "where": "a = 1" })).contains("use '==' to compare"));
        assert!(err(json!({})).contains("missing field `where`"));
        assert!(err(json!({ "where": 5 })).contains("`where`"));
        assert!(err(json!({ "where": "a", "when": "b" })).contains("unknown field `when`"));
    }

    #[test]
    fn batches_with_different_columns_resolve_again() {
        // JSON lines in batches of one: every batch has its own columns.
        let input = "{\"a\":1,\"b\":2}\n{\"b\":2}\n{\"b\":5,\"a\":9}\n";
        let run = pipe_sdk::testing::run::<Filter>(
            json!({ "where": "a > 1 || b == 2" }),
            pipe_sdk::codec::Format::Jsonl,
            input,
            1,
        )
        .expect("runs");
        assert_eq!(
            run.jsonl(),
            "{\"a\":1,\"b\":2}\n{\"b\":2}\n{\"b\":5,\"a\":9}\n"
        );
        let run = pipe_sdk::testing::run::<Filter>(
            json!({ "where": "a > 1" }),
            pipe_sdk::codec::Format::Jsonl,
            input,
            1,
        )
        .expect("runs");
        assert_eq!(run.jsonl(), "{\"b\":5,\"a\":9}\n");
    }
}
