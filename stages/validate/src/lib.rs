//! The `validate` stage: passes records that satisfy the rules unchanged and rejects the
//! others with a reason naming the field, the rule and the value.
//!
//! ```toml
//! [[pipelines.default.stages]]
//! plugin = "validate"
//! on_error = "dead-letter"
//! config = { required = ["id", "email"], types = { id = "int", amount = "float", paid = "bool", day = "date", email = "email", code = "regex:^[A-Z]{3}$" } }
//! ```
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `required` | list of names | `[]` | fields that must have a value: absent, null, empty and blank (spaces only) fail |
//! | `types` | table `field = "type"` | `{}` | the type each field's value must have, when it has one |
//!
//! Types:
//!
//! | type | accepts |
//! |---|---|
//! | `int` | a whole number in the 64-bit range: `42`, `-7` (not `4.0`) |
//! | `float` | any finite number: `12`, `-0.5`, `1e3` (not `12,5`, `nan`, `inf`) |
//! | `bool` | `true`/`false` (any case), `1`/`0`, `yes`/`no` |
//! | `date` | `YYYY-MM-DD`, or an RFC 3339 date-time `YYYY-MM-DDTHH:MM:SS[.frac](Z\|±HH:MM)` (`T` may be `t` or a space); ranges are checked, leap years and leap seconds included; a time without an offset is refused, as RFC 3339 requires one |
//! | `email` | a pragmatic address check: one `@`, a non-empty local part, a domain with a dot and no empty label, no whitespace |
//! | `regex:<pattern>` | values in which the pattern finds a match (Rust `regex` syntax); anchor it (`^…$`) to match the whole value |
//!
//! Numbers and bools may have spaces around them (as the SDK's typed accessors allow);
//! dates, emails and patterns see the value exactly. Checks read the value's text, so a
//! JSON `12` and a CSV `12` pass `int` alike.
//!
//! A field that is not `required` and has no value (absent, null, empty, blank) skips its
//! type check: list it in `required` too to insist on it. A record that fails gets one
//! reject whose reason lists every failure in config order, `required` first, for
//! example ``field `amount`: expected a float, got `12,5`; field `code`: expected a match
//! for `^[A-Z]{3}$`, got `ab` ``. Long values are cut to 60 characters in reasons.
//!
//! Config errors: an unknown type or a regex that does not compile is refused naming the
//! field (`types.code`), as is a config that checks nothing. Patterns compile once, when
//! the stage is created.

use std::fmt::{self, Write as _};

use pipe_sdk::prelude::*;
use regex::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};

/// The stage's config. See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Fields that must have a value.
    #[serde(default)]
    pub required: Vec<String>,
    /// `field = "type"`, in the order written.
    #[serde(default, deserialize_with = "in_order")]
    pub types: Vec<(String, String)>,
}

/// Reads a table keeping its order (a `BTreeMap` would sort it, and reasons list failures
/// in config order).
fn in_order<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of field = \"type\"")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    d.deserialize_map(Entries)
}

/// One type check.
#[derive(Debug)]
enum Rule {
    Int,
    Float,
    Bool,
    Date,
    Email,
    Regex(Regex),
}

impl Rule {
    fn parse(field: &str, spec: &str) -> Result<Rule, Error> {
        Ok(match spec {
            "int" => Rule::Int,
            "float" => Rule::Float,
            "bool" => Rule::Bool,
            "date" => Rule::Date,
            "email" => Rule::Email,
            _ => match spec.strip_prefix("regex:") {
                Some(pattern) => Rule::Regex(Regex::new(pattern).map_err(|e| {
                    Error::msg(format!(
                        "bad config at `types.{field}`: invalid regex `{pattern}`: {e}"
                    ))
                })?),
                None => {
                    return Err(Error::msg(format!(
                        "bad config at `types.{field}`: unknown type `{spec}`; expected int, \
                         float, bool, date, email or regex:<pattern>"
                    )))
                }
            },
        })
    }

    fn check(&self, text: &str) -> bool {
        match self {
            Rule::Int => text.trim().parse::<i64>().is_ok(),
            Rule::Float => text.trim().parse::<f64>().is_ok_and(f64::is_finite),
            Rule::Bool => pipe_sdk::parse_bool(text).is_some(),
            Rule::Date => is_date(text),
            Rule::Email => is_email(text),
            Rule::Regex(re) => re.is_match(text),
        }
    }
}

impl fmt::Display for Rule {
    /// What the rule expects, as a reason says it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Int => f.write_str("an int"),
            Rule::Float => f.write_str("a float"),
            Rule::Bool => f.write_str("a bool"),
            Rule::Date => f.write_str("a date (YYYY-MM-DD or RFC 3339)"),
            Rule::Email => f.write_str("an email address"),
            Rule::Regex(re) => write!(f, "a match for `{}`", re.as_str()),
        }
    }
}

/// The value of `b` when it is all ASCII digits.
fn number(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DD`, or an RFC 3339 date-time.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (number(&b[..4]), number(&b[5..7]), number(&b[8..10])) else {
        return false;
    };
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return false;
    }
    match b.get(10) {
        None => true,
        Some(b'T' | b't' | b' ') => is_time(&b[11..]),
        Some(_) => false,
    }
}

/// RFC 3339 `full-time`: `HH:MM:SS[.frac](Z|±HH:MM)`.
fn is_time(b: &[u8]) -> bool {
    let two = |at: usize, max: u32| b.get(at..at + 2).and_then(number).is_some_and(|n| n <= max);
    if !(b.len() >= 9 && two(0, 23) && b[2] == b':' && two(3, 59) && b[5] == b':' && two(6, 60)) {
        return false;
    }
    let mut rest = &b[8..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &frac[digits..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            number(&[*h1, *h2]).is_some_and(|h| h <= 23)
                && number(&[*m1, *m2]).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

/// One `@`, a non-empty local part, a domain with a dot and no empty label, no spaces.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
        && !s.chars().any(char::is_whitespace)
}

/// A value for a reason: cut to 60 characters.
fn shown(text: &str) -> (&str, &str) {
    match text.char_indices().nth(60) {
        Some((i, _)) => (&text[..i], "…"),
        None => (text, ""),
    }
}

/// The running stage.
pub struct Validate {
    required: Vec<String>,
    types: Vec<(String, Rule)>,
    /// Per batch: the column of each required field, then of each typed field.
    required_cols: Vec<Option<usize>>,
    type_cols: Vec<Option<usize>>,
    /// The reason being built for the current row, reused.
    reason: String,
}

/// Column `col` of `row`, absent when the input has no such column.
fn cell<'a>(row: &Row<'a>, col: Option<usize>) -> (Kind, &'a str) {
    match col {
        Some(c) => row.raw(c),
        None => (Kind::Absent, ""),
    }
}

impl Stage for Validate {
    type Config = ValidateConfig;

    fn new(config: ValidateConfig) -> Result<Self, Error> {
        if config.required.is_empty() && config.types.is_empty() {
            return Err(Error::msg(
                "bad config: nothing to check; set `required` or `types`",
            ));
        }
        for (i, name) in config.required.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::msg(
                    "bad config at `required`: field names cannot be empty",
                ));
            }
            if config.required[..i].contains(name) {
                return Err(Error::msg(format!(
                    "bad config at `required`: `{name}` is listed twice"
                )));
            }
        }
        let mut types = Vec::with_capacity(config.types.len());
        for (field, spec) in config.types {
            let rule = Rule::parse(&field, &spec)?;
            types.push((field, rule));
        }
        Ok(Validate {
            required: config.required,
            types,
            required_cols: Vec::new(),
            type_cols: Vec::new(),
            reason: String::new(),
        })
    }

    fn process(&mut self, input: &Batch, out: &mut Output) -> Result<(), Error> {
        self.required_cols.clear();
        self.required_cols
            .extend(self.required.iter().map(|f| input.column(f)));
        self.type_cols.clear();
        self.type_cols
            .extend(self.types.iter().map(|(f, _)| input.column(f)));
        out.columns_like(input);
        for row in input.rows() {
            self.reason.clear();
            for (field, &col) in self.required.iter().zip(&self.required_cols) {
                let what = match cell(&row, col) {
                    (Kind::Absent, _) => "missing",
                    (Kind::Null, _) => "null",
                    (_, text) if text.trim().is_empty() => "empty",
                    _ => continue,
                };
                if !self.reason.is_empty() {
                    self.reason.push_str("; ");
                }
                let _ = write!(self.reason, "field `{field}`: required but {what}");
            }
            for ((field, rule), &col) in self.types.iter().zip(&self.type_cols) {
                let (kind, text) = cell(&row, col);
                let missing = matches!(kind, Kind::Absent | Kind::Null) || text.trim().is_empty();
                if missing || rule.check(text) {
                    continue;
                }
                if !self.reason.is_empty() {
                    self.reason.push_str("; ");
                }
                let (value, cut) = shown(text);
                let _ = write!(
                    self.reason,
                    "field `{field}`: expected {rule}, got `{value}{cut}`"
                );
            }
            if self.reason.is_empty() {
                out.push(row);
            } else {
                out.reject(row, &self.reason);
            }
        }
        Ok(())
    }
}

pipe_sdk::export_stage!(
    Validate,
    name = "validate",
    description = "rejects records with missing required fields or values of the wrong type"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::codec::Format;
    use pipe_sdk::testing::{instance, run, run_csv, run_jsonl};
    use serde_json::json;

    fn config_error(config: serde_json::Value) -> String {
        match instance::<Validate>(config) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.message.to_string(),
        }
    }

    fn reasons(run: &pipe_sdk::testing::TestRun) -> Vec<(u64, &str)> {
        run.rejects
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect()
    }

    fn config() -> serde_json::Value {
        json!({"required": ["id", "email"], "types": {"id": "int", "amount": "float",
               "paid": "bool", "day": "date", "email": "email", "code": "regex:^[A-Z]{3}$"}})
    }

    #[test]
    fn csv_passes_good_rows_unchanged_and_rejects_bad_ones_with_reasons() {
        let input = "id,email,amount,paid,day,code\n\
                     1,ann@example.com,12.5,true,2024-02-29,ABC\n\
                     x,bob@example,\"12,5\",maybe,2023-02-29,AB\n\
                     3,,7,no,,XYZ\n\
                     4,dan@example.org,,1,2024-01-01T10:00:00Z,\n";
        let out = run_csv::<Validate>(config(), input).unwrap();
        assert_eq!(
            out.csv(),
            "id,email,amount,paid,day,code\n\
             1,ann@example.com,12.5,true,2024-02-29,ABC\n\
             4,dan@example.org,,1,2024-01-01T10:00:00Z,\n"
        );
        assert_eq!(
            reasons(&out),
            [
                (
                    3,
                    "field `id`: expected an int, got `x`; \
                     field `amount`: expected a float, got `12,5`; \
                     field `paid`: expected a bool, got `maybe`; \
                     field `day`: expected a date (YYYY-MM-DD or RFC 3339), got `2023-02-29`; \
                     field `email`: expected an email address, got `bob@example`; \
                     field `code`: expected a match for `^[A-Z]{3}$`, got `AB`"
                ),
                (4, "field `email`: required but empty"),
            ]
        );
    }

    #[test]
    fn jsonl_checks_text_and_tells_missing_from_null() {
        let input = "{\"id\":1,\"amount\":3,\"paid\":false,\"tags\":[1]}\n\
                     {\"id\":1.5,\"amount\":\"2.50\",\"paid\":1}\n\
                     {\"amount\":null}\n\
                     {\"id\":null,\"paid\":\"\"}\n\
                     {\"id\":\" 7 \",\"amount\":true,\"paid\":2}\n";
        let config = json!({"required": ["id"],
                            "types": {"id": "int", "amount": "float", "paid": "bool"}});
        let out = run_jsonl::<Validate>(config, input).unwrap();
        // Passing rows keep their types, keys and order.
        assert_eq!(
            out.jsonl(),
            "{\"id\":1,\"amount\":3,\"paid\":false,\"tags\":[1]}\n"
        );
        assert_eq!(
            reasons(&out),
            [
                (2, "field `id`: expected an int, got `1.5`"),
                (3, "field `id`: required but missing"),
                (4, "field `id`: required but null"),
                (
                    5,
                    "field `amount`: expected a float, got `true`; \
                     field `paid`: expected a bool, got `2`"
                ),
            ]
        );
    }

    #[test]
    fn optional_empty_fields_skip_type_checks() {
        let out = run_csv::<Validate>(
            json!({"types": {"n": "int", "d": "date"}}),
            "n,d\n,\n  ,2024-01-01\n5,\n",
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.rejects.is_empty());
    }

    #[test]
    fn multi_batch_rejects_keep_their_lines() {
        let input = "id\n1\na\n3\nb\nc\n6\n";
        let out = run::<Validate>(json!({"types": {"id": "int"}}), Format::Csv, input, 2);
        let out = out.unwrap();
        assert_eq!(out.csv(), "id\n1\n3\n6\n");
        let lines: Vec<u64> = out.rejects.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 5, 6]);
    }

    #[test]
    fn long_values_are_cut_in_reasons() {
        let long = "é".repeat(100);
        let out = run_csv::<Validate>(json!({"types": {"v": "int"}}), &format!("v\n{long}\n"));
        let out = out.unwrap();
        let want = format!("field `v`: expected an int, got `{}…`", "é".repeat(60));
        assert_eq!(out.rejects[0].reason, want);
    }

    #[test]
    fn dates() {
        for good in [
            "2024-02-29",
            "2000-02-29",
            "2023-12-31",
            "0001-01-01",
            "2024-01-01T00:00:00Z",
            "2024-01-01t10:20:30.123+05:30",
            "2024-01-01 10:20:30-00:00",
            "2016-12-31T23:59:60Z",
            "2024-06-30T23:59:59.999999999z",
        ] {
            assert!(is_date(good), "{good}");
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-01-00",
            "2024-1-01",
            "20240101",
            "2024/01/01",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:60:00Z",
            "2024-01-01T10:00:61Z",
            "2024-01-01T10:00:00",
            "2024-01-01T10:00Z",
            "2024-01-01T10:00:00.Z",
            "2024-01-01T10:00:00+24:00",
            "2024-01-01T10:00:00+05:60",
            "2024-01-01T10:00:00+0530",
            "2024-01-01X10:00:00Z",
            "2024-01-01T10:00:00Zjunk",
            "2024-01-01 ",
            " 2024-01-01",
            "２０２４-01-01",
            "2024-é1-01",
            "",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
    }

    #[test]
    fn emails() {
        for good in [
            "a@b.co",
            "jane.doe+tag@mail.example.org",
            "élodie@exemple.fr",
        ] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@example",
            "a@@example.com",
            "a@b@example.com",
            "a b@example.com",
            "ab@example.com ",
            "a@.example.com",
            "a@example.com.",
            "a@example..com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn numbers_and_bools() {
        assert!(Rule::Int.check(" -42 "));
        assert!(!Rule::Int.check("4.0"));
        assert!(!Rule::Int.check("99999999999999999999"));
        for good in ["12", "-0.5", "1e3", " 3.25 ", ".5"] {
            assert!(Rule::Float.check(good), "{good}");
        }
        for bad in ["12,5", "nan", "inf", "-Infinity", "1e999", "0x10", "1_000"] {
            assert!(!Rule::Float.check(bad), "{bad}");
        }
        for good in ["true", "FALSE", "1", "0", "yes", "No"] {
            assert!(Rule::Bool.check(good), "{good}");
        }
        assert!(!Rule::Bool.check("y"));
    }

    #[test]
    fn regex_searches_unless_anchored() {
        let out = run_csv::<Validate>(
            json!({"types": {"a": "regex:[0-9]", "b": "regex:^[0-9]+$"}}),
            "a,b\nx1y,123\nxy,1x\n",
        )
        .unwrap();
        assert_eq!(out.csv(), "a,b\nx1y,123\n");
        assert_eq!(
            reasons(&out),
            [(
                3,
                "field `a`: expected a match for `[0-9]`, got `xy`; \
                 field `b`: expected a match for `^[0-9]+$`, got `1x`"
            )]
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        assert_eq!(
            config_error(json!({})),
            "bad config: nothing to check; set `required` or `types`"
        );
        assert_eq!(
            config_error(json!({"types": {"id": "integer"}})),
            "bad config at `types.id`: unknown type `integer`; expected int, float, bool, \
             date, email or regex:<pattern>"
        );
        let re = config_error(json!({"types": {"id": "int", "code": "regex:^[A-Z{3}$"}}));
        assert!(
            re.starts_with("bad config at `types.code`: invalid regex `^[A-Z{3}$`:"),
            "{re}"
        );
        assert_eq!(
            config_error(json!({"required": ["a", "a"]})),
            "bad config at `required`: `a` is listed twice"
        );
        let typed = config_error(json!({"types": {"id": 3}}));
        assert!(typed.starts_with("bad config at `types.id`"), "{typed}");
        assert!(config_error(json!({"require": ["a"]})).contains("require"));
    }
}
