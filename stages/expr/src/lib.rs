//! The expression language shared by the `filter` and `compute` stages.
//!
//! An expression is compiled once, when a stage instance is created, into a tree whose
//! field names are already numbered slots; a stage maps slots to the columns of a batch
//! once per input schema ([`Columns`]) and then evaluates the tree per row. Reading a
//! field borrows the batch's text and comparing it with a literal allocates nothing.
//!
//! ```
//! use pipe_expr::{Columns, Expr, RowFields};
//! use pipe_sdk::{Batch, Pos};
//!
//! let expr = Expr::compile("status == 'paid' && amount > 100").unwrap();
//! let mut batch = Batch::with_columns(["status", "amount"]);
//! batch.start_row(Pos::default());
//! batch.push_str("paid");
//! batch.push_str("120.50");
//! batch.end_row().unwrap();
//!
//! let mut columns = Columns::new(expr.fields());
//! let cols = columns.resolve(&batch);
//! let row = RowFields::new(batch.row(0), cols);
//! assert!(expr.test(&row).unwrap());
//! ```
//!
//! # Syntax
//!
//! | form | examples |
//! |---|---|
//! | numbers | `100`, `-3`, `12.34`, `.5`, `1e3` |
//! | text | `'paid'`, `"it's"`, escapes `\'` `\"` `\\` `\n` `\t` |
//! | literals | `true`, `false`, `null` |
//! | fields | `amount`, `first_name` (`[A-Za-z_][A-Za-z0-9_]*`); any other name in backticks: `` `first name` `` |
//! | comparison | `==` `!=` `<` `<=` `>` `>=` |
//! | logic | `&&` `\|\|` `!`, or the words `and` `or` `not` |
//! | arithmetic | `+` `-` `*` `/` `%`, unary `-` |
//! | text tests | `name contains 'x'`, `sku starts_with 'A-'`, `file ends_with '.csv'` |
//! | membership | `country in ('FR', 'DE', 3)`, `status not in ('void')` |
//! | calls | `upper(country)`, `round(amount * 1.2, 2)` |
//! | grouping | `(a \|\| b) && c` |
//!
//! Precedence, loosest first: `||`; `&&`; `!`/`not`; the comparisons, text tests and
//! `in` (which do not chain: write `a < b && b < c`); `+ -`; `* / %`; unary `-`. So
//! `!status == 'void'` means `!(status == 'void')`, and `a || b && c` means
//! `a || (b && c)`. Keywords and function names are case-insensitive (`AND`, `Upper`);
//! field names are not. The words `in`, `contains`, `starts_with`, `ends_with`, `true`,
//! `false` and `null` are not field names; quote such a field: `` `in` ``.
//!
//! # Functions
//!
//! | function | result |
//! |---|---|
//! | `upper(s)`, `lower(s)` | the text in upper / lower case |
//! | `trim(s)` | the text without surrounding whitespace |
//! | `len(s)` | the number of characters |
//! | `replace(s, from, to)` | every `from` replaced by `to` |
//! | `concat(a, b, ...)` | the texts joined; missing arguments count as empty |
//! | `substr(s, start[, len])` | `len` characters (default: the rest) from `start`, counted from 0; a negative `start` counts from the end |
//! | `round(x[, digits])` | `x` rounded to `digits` decimals (default 0; negative rounds to tens, hundreds...), halves away from zero |
//! | `floor(x)`, `ceil(x)`, `abs(x)` | as in mathematics |
//! | `min(a, b, ...)`, `max(a, b, ...)` | the least / greatest argument, ignoring missing ones |
//! | `coalesce(a, b, ...)` | the first argument that is neither missing nor empty text |
//! | `if(cond, a, b)` | `a` when `cond` is true, else `b` (only one of them is evaluated) |
//! | `exists(x)`, `is_missing(x)` | whether `x` is present (not absent, not null) |
//! | `num(x)` | `x` as a number; missing when it is not one |
//! | `int(x)` | `x` as a whole number, rounded toward zero; missing when it is not a number |
//! | `str(x)` | `x` as text (and compared as text) |
//!
//! Every function but `concat`, `coalesce`, `exists`, `is_missing` and `if` returns
//! missing when its main argument is missing. An unknown function or a wrong number of
//! arguments is a compile error.
//!
//! # Semantics
//!
//! **Values.** A value is missing, a bool, a number, text, or nested JSON (kept as its
//! text). A field that is absent from the record or JSON `null` is *missing*. CSV cells
//! are all text; JSON lines keep their types.
//!
//! **Text and numbers.** Text read from a field that parses as a number (`"12.50"`,
//! `" 7 "`, `"1e3"`) acts as that number next to a number: `amount > 100` compares
//! numerically on CSV input, and `amount * 100` computes. Comparing with a quoted
//! literal compares as text: `zip == '01234'` keeps its leading zero, and on a JSON
//! number `id == '5'` compares `"5"` with `"5"`. Two fields compare as numbers when
//! both parse, else as text. `str(x)` makes a side compare as text. Text is ordered
//! by code point (`'B' < 'a'`).
//!
//! **Comparisons.** Against a missing value, `==` `<` `<=` `>` `>=` are false and `!=`
//! is true, so `amount > 100` drops records without an amount and `country != 'FR'`
//! keeps them. Two missing values are equal, so `x == null` tests for missing.
//! A number and text that is not a number (`amount < 100` on `"n/a"` or an empty cell)
//! are not equal and neither is less than the other. Bools compare with bools, with
//! the text `true`/`false`/`yes`/`no`/`1`/`0` and with the numbers 1 and 0.
//! `contains`, `starts_with` and `ends_with` compare text (numbers as they print) and
//! are false when a side is missing. `x in (a, b)` is `x == a || x == b`.
//!
//! **Truth.** Where a condition is needed (a filter, `&&`, `if`): bools as they are;
//! missing is false; numbers are true when non-zero; text is true unless it is empty,
//! `0` or `false` (any case); nested JSON is true. `&&` and `||` stop early and give a
//! bool.
//!
//! **Arithmetic.** Arithmetic on a missing value, or on blank text (an empty CSV cell),
//! gives missing. Arithmetic on other text that is not a number, on a bool or on nested
//! JSON is an error for that row, as is division by zero. Numbers are exact decimals
//! where they can be: integers stay integers, and `+ - * %` on values with decimals are
//! exact (`amount * 100` on `"12.34"` is `1234`; `0.1 + 0.2` is `0.3`); `/` is exact
//! when the quotient has a finite decimal expansion (`10 / 4` is `2.5`) and a 64-bit
//! float otherwise (`1 / 3`), as are results too large for 18 digits.
//!
//! **Results.** A result is written as an int when it is a whole number, as a float with
//! its exact decimal text otherwise (`12.5`, never `12.499999`), as text, a bool, nested
//! JSON, or `null` when missing (an empty cell in CSV).
//!
//! **Errors.** A compile error says what was expected and where:
//! `expected ')' at column 34 in "status == 'paid' && (amount > 100"`. Parts of an
//! expression without fields are computed at compile time, so `'abc' + 1` and `1 / 0`
//! are compile errors too. An evaluation error names the failing part:
//! ```amount * 100`: 'abc' is not a number``.
//!
//! # Layout
//! - `lexer`: text to tokens with byte spans.
//! - `parser`: tokens to the compiled tree; precedence, slots, constant folding.
//! - `eval`: the tree and its evaluator; the [`Fields`] trait rows are read through.
//! - `func`: the built-in functions.
//! - `value`: [`Val`] and the comparison, truth and conversion rules.
//! - [`num`]: exact decimals with an `f64` fallback ([`Num`]).
//! - `error`: [`CompileError`] and [`EvalError`].
#![deny(missing_docs)]

mod error;
mod eval;
mod func;
mod lexer;
pub mod num;
mod parser;
mod value;

pub use error::{CompileError, EvalError};
pub use eval::Fields;
pub use num::{Dec, Num};
pub use value::Val;

use pipe_sdk::{Batch, Row};

/// A compiled expression. Compile once per stage instance; evaluate per row.
#[derive(Debug, Clone)]
pub struct Expr {
    root: eval::Node,
    fields: Vec<String>,
    src: Box<str>,
}

impl Expr {
    /// Compiles `src`. Refuses syntax errors, unknown functions, wrong argument counts
    /// and constant parts that cannot be computed (`1 / 0`).
    ///
    /// ```
    /// let e = pipe_expr::Expr::compile("upper(country)").unwrap();
    /// assert_eq!(e.fields(), ["country"]);
    /// let err = pipe_expr::Expr::compile("uper(country)").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "unknown function 'uper' at column 1 in \"uper(country)\"; did you mean 'upper'?"
    /// );
    /// ```
    pub fn compile(src: &str) -> Result<Expr, CompileError> {
        let parsed = parser::parse(src)?;
        Ok(Expr {
            root: parsed.root,
            fields: parsed.fields,
            src: src.into(),
        })
    }

    /// The expression's text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The field names the expression reads; slot `i` of [`Fields`] is `fields()[i]`.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The slot of the field when the whole expression is one field (`amount`), so a
    /// caller can copy the cell as it is.
    pub fn as_field(&self) -> Option<usize> {
        match self.root {
            eval::Node::Field(slot) => Some(slot),
            _ => None,
        }
    }

    /// The value of the expression for the row `env` reads.
    pub fn eval<'a, F: Fields<'a>>(&'a self, env: &F) -> Result<Val<'a>, EvalError> {
        eval::eval(&self.root, &self.cx(env))
    }

    /// Whether the expression is true for the row `env` reads (see "Truth" in the crate
    /// docs). Boolean operators are evaluated without building values.
    pub fn test<'a, F: Fields<'a>>(&'a self, env: &F) -> Result<bool, EvalError> {
        eval::truth(&self.root, &self.cx(env))
    }

    fn cx<'a, 'e, F>(&'a self, env: &'e F) -> eval::Cx<'a, 'e, F> {
        eval::Cx {
            env,
            src: &self.src,
        }
    }
}

/// Maps field names to the column indexes of a batch, once per schema.
///
/// `Batch::column` is a linear scan; a stage resolves its names once per batch with
/// [`Columns::resolve`], which re-scans only when the batch's columns differ from the
/// previous batch's (batches of one CSV input all share one header).
#[derive(Debug, Clone, Default)]
pub struct Columns {
    names: Vec<String>,
    schema: Vec<String>,
    cols: Vec<Option<usize>>,
}

impl Columns {
    /// A resolver for `names` (usually [`Expr::fields`]).
    pub fn new<I, S>(names: I) -> Columns
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_string()).collect();
        Columns {
            // With no columns seen yet every name is unresolved, which is also the right
            // answer for a batch without columns.
            cols: vec![None; names.len()],
            names,
            schema: Vec::new(),
        }
    }

    /// The column of each name in `batch` (`None` when the batch has no such column).
    pub fn resolve(&mut self, batch: &Batch) -> &[Option<usize>] {
        if !batch.columns().eq(self.schema.iter().map(String::as_str)) {
            self.schema.clear();
            self.schema.extend(batch.columns().map(str::to_string));
            for (col, name) in self.cols.iter_mut().zip(&self.names) {
                *col = batch.column(name);
            }
        }
        &self.cols
    }
}

/// Reads the fields of one batch row through the columns [`Columns::resolve`] found.
#[derive(Clone, Copy)]
pub struct RowFields<'a, 'c> {
    row: Row<'a>,
    cols: &'c [Option<usize>],
}

impl<'a, 'c> RowFields<'a, 'c> {
    /// The fields of `row`; `cols[slot]` is the column of slot `slot`.
    pub fn new(row: Row<'a>, cols: &'c [Option<usize>]) -> RowFields<'a, 'c> {
        RowFields { row, cols }
    }
}

impl<'a> Fields<'a> for RowFields<'a, '_> {
    #[inline]
    fn field(&self, slot: usize) -> Val<'a> {
        match self.cols.get(slot) {
            Some(Some(c)) => {
                let (kind, text) = self.row.raw(*c);
                Val::from_cell(kind, text)
            }
            _ => Val::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipe_sdk::{Kind, Pos};

    /// Counts this thread's allocations, to check that the hot paths make none.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static COUNT: Cell<usize> = const { Cell::new(0) };
        }

        pub struct Counting;

        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                // SAFETY: forwarded unchanged to the system allocator.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: forwarded unchanged to the system allocator.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        pub fn allocations() -> usize {
            COUNT.with(Cell::get)
        }
    }

    #[global_allocator]
    static ALLOC: counting::Counting = counting::Counting;

    /// One record: `(name, kind, text)` per field.
    fn record(fields: &[(&str, Kind, &str)]) -> Batch {
        let mut b = Batch::with_columns(fields.iter().map(|f| f.0));
        b.start_row(Pos::default());
        for (_, kind, text) in fields {
            b.push_raw(*kind, text);
        }
        b.end_row().expect("one cell per column");
        b
    }

    /// A CSV-like record: every field is text.
    fn csv(fields: &[(&str, &str)]) -> Batch {
        let f: Vec<_> = fields.iter().map(|(n, t)| (*n, Kind::Str, *t)).collect();
        record(&f)
    }

    fn compile(src: &str) -> Expr {
        Expr::compile(src).unwrap_or_else(|e| panic!("{e}"))
    }

    fn eval_on(src: &str, b: &Batch) -> Result<Val<'static>, EvalError> {
        let e = compile(src);
        let mut cols = Columns::new(e.fields());
        let env = RowFields::new(b.row(0), cols.resolve(b));
        e.eval(&env).map(Val::into_owned)
    }

    fn test_on(src: &str, b: &Batch) -> bool {
        let e = compile(src);
        let mut cols = Columns::new(e.fields());
        let env = RowFields::new(b.row(0), cols.resolve(b));
        let t = e.test(&env).unwrap_or_else(|err| panic!("{src}: {err}"));
        // `test` and `eval` agree.
        assert_eq!(Some(t), e.eval(&env).map(|v| v.truthy()).ok(), "{src}");
        t
    }

    /// The value as a stage would write it: its text.
    fn text(src: &str, b: &Batch) -> String {
        match eval_on(src, b) {
            Ok(Val::Missing) => "<missing>".into(),
            Ok(v) => v.with_text(str::to_string),
            Err(e) => format!("error: {e}"),
        }
    }

    fn compile_err(src: &str) -> String {
        match Expr::compile(src) {
            Ok(_) => panic!("{src:?} compiled"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn csv_text_compares_as_a_number_next_to_a_number() {
        let b = csv(&[("amount", "120.50"), ("n", "9"), ("zip", "01234")]);
        assert!(test_on("amount > 100", &b));
        assert!(test_on("100 < amount", &b));
        assert!(test_on("amount == 120.5", &b));
        assert!(test_on("n < 10", &b));
        // A quoted literal compares as text: "9" > "10".
        assert!(!test_on("n < '10'", &b));
        assert!(test_on("zip == '01234'", &b));
        assert!(!test_on("zip == '1234'", &b));
        assert!(test_on("zip == 1234", &b));
        // Field against field: numbers when both parse.
        assert!(test_on("n < amount", &b));
        assert!(test_on("str(n) > str(amount)", &b));
    }

    #[test]
    fn json_types_compare_by_kind() {
        let b = record(&[
            ("id", Kind::Int, "5"),
            ("price", Kind::Float, "1.50"),
            ("paid", Kind::Bool, "true"),
            ("tags", Kind::Json, "[\"a\"]"),
            ("note", Kind::Null, ""),
        ]);
        assert!(test_on("id == 5", &b));
        assert!(test_on("id == '5'", &b));
        assert!(test_on("price == 1.5", &b));
        assert!(test_on("paid", &b));
        assert!(test_on("paid == true && paid == 'true' && paid == 1", &b));
        assert!(
            !test_on("paid == 'yes'", &b),
            "a quoted literal compares as text"
        );
        assert!(test_on("tags == '[\"a\"]'", &b));
        assert!(test_on("tags contains 'a'", &b));
        assert!(test_on("note == null && !exists(note)", &b));
    }

    #[test]
    fn precedence_and_parentheses() {
        let b = csv(&[("t", "true"), ("f", "false"), ("x", "2")]);
        assert!(test_on("t || f && f", &b));
        assert!(!test_on("(t || f) && f", &b));
        assert!(test_on("t or f and f", &b));
        assert!(test_on("!x == 1", &b), "! applies to the comparison");
        assert!(!test_on("not (x == 2)", &b));
        assert!(test_on("!f && t", &b));
        assert!(test_on("not not t", &b));
        assert!(test_on("T AND NOT F", &csv(&[("T", "1"), ("F", "0")])));
        assert_eq!(text("1 + 2 * 3", &b), "7");
        assert_eq!(text("(1 + 2) * 3", &b), "9");
        assert_eq!(text("10 - 4 - 3", &b), "3");
        assert_eq!(text("2 * 3 % 4", &b), "2");
        assert_eq!(text("-x * 3", &b), "-6");
        assert_eq!(text("- -x", &b), "2");
        assert!(test_on("x * 2 > 3 && x + 1 == 3", &b));
    }

    #[test]
    fn text_tests_and_membership() {
        let b = csv(&[("name", "Annie"), ("country", "FR"), ("n", "2")]);
        assert!(test_on("name contains 'nn'", &b));
        assert!(!test_on("name contains 'NN'", &b));
        assert!(test_on("name starts_with 'An' && name ends_with 'ie'", &b));
        assert!(test_on("country in ('FR', 'DE')", &b));
        assert!(test_on("country in ('DE', 'FR',)", &b));
        assert!(!test_on("country in ('fr')", &b));
        assert!(test_on("country not in ('DE')", &b));
        assert!(test_on("n in (1, 2, 3)", &b));
        assert!(!test_on("n in ('2.0')", &b));
        assert!(test_on("n in ('x', 2.0)", &b));
        assert!(test_on("upper(name) in (concat('AN', 'NIE'))", &b));
        assert!(test_on("`name` CONTAINS 'ie'", &b));
    }

    #[test]
    fn missing_fields() {
        let b = record(&[
            ("a", Kind::Absent, ""),
            ("n", Kind::Null, ""),
            ("x", Kind::Str, ""),
        ]);
        for src in [
            "amount > 100",
            "amount == 0",
            "amount < 0",
            "a >= 0",
            "n == ''",
        ] {
            assert!(!test_on(src, &b), "{src}");
        }
        for src in [
            "amount != 100",
            "amount == null",
            "a == n",
            "is_missing(n) && !exists(a)",
            "exists(x) && x == ''",
            "country not in ('FR')",
        ] {
            assert!(test_on(src, &b), "{src}");
        }
        assert!(!test_on("amount contains ''", &b));
        assert!(!test_on("amount in (1, null)", &b) || test_on("amount == null", &b));
        for src in [
            "amount + 1",
            "-amount",
            "upper(amount)",
            "round(amount, 2)",
            "x * 2",
            "len(n)",
            "substr(a, 1)",
            "coalesce(a, n, x)",
            "num('abc')",
            "str(n)",
        ] {
            assert_eq!(text(src, &b), "<missing>", "{src}");
        }
        assert_eq!(text("concat(a, '-', x, n)", &b), "-");
        assert_eq!(text("coalesce(x, a, 'none')", &b), "none");
        assert_eq!(text("min(a, 3, n, 2)", &b), "2");
    }

    #[test]
    fn decimals_stay_exact() {
        let b = csv(&[
            ("amount", "12.34"),
            ("price", "19.99"),
            ("qty", "3"),
            ("r", "0.1"),
        ]);
        assert_eq!(eval_on("amount * 100", &b), Ok(Val::int(1234)));
        assert_eq!(text("price * qty", &b), "59.97");
        assert_eq!(text("r + 0.2", &b), "0.3");
        assert!(test_on("r + 0.2 == 0.3", &b));
        assert_eq!(text("amount / 4", &b), "3.085");
        assert_eq!(text("qty / 4", &b), "0.75");
        assert_eq!(text("10 / qty", &b), "3.3333333333333335");
        assert_eq!(text("amount % 5", &b), "2.34");
        assert_eq!(text("round(amount * 1.1, 2)", &b), "13.57");
        assert_eq!(text("round(2.675, 2)", &b), "2.68");
        assert_eq!(text("round(1234.5, -2)", &b), "1200");
        assert_eq!(text("floor(-amount)", &b), "-13");
        assert_eq!(text("ceil(amount)", &b), "13");
        assert_eq!(text("abs(0 - price)", &b), "19.99");
        assert_eq!(text("int(amount)", &b), "12");
        assert_eq!(text("int('-7.9')", &b), "-7");
        assert_eq!(text("9223372036854775807 + 1", &b), "9.223372036854776e18");
    }

    #[test]
    fn text_functions() {
        let b = csv(&[("s", "  Héllo World "), ("n", "42"), ("e", "")]);
        assert_eq!(text("upper(s)", &b), "  HÉLLO WORLD ");
        assert_eq!(text("lower(trim(s))", &b), "héllo world");
        assert_eq!(text("len(trim(s))", &b), "11");
        assert_eq!(text("len(n)", &b), "2");
        assert_eq!(text("replace(s, 'o', '0')", &b), "  Héll0 W0rld ");
        assert_eq!(text("replace(s, '', 'x')", &b), "  Héllo World ");
        assert_eq!(text("concat(n, '/', 1.50, '/', true)", &b), "42/1.5/true");
        assert_eq!(text("substr(trim(s), 0, 5)", &b), "Héllo");
        assert_eq!(text("substr(trim(s), -5)", &b), "World");
        assert_eq!(text("substr(s, n)", &b), "");
        assert_eq!(text("str(n * 2)", &b), "84");
        assert_eq!(text("num(n) + 1", &b), "43");
        assert_eq!(text("num('x')", &b), "<missing>");
        assert_eq!(text("coalesce(e, n)", &b), "42");
        assert_eq!(text("if(n > 40, 'big', 'small')", &b), "big");
        assert_eq!(text("if(e, n / 0, 'lazy')", &b), "lazy");
        assert_eq!(text("max(n, '100', 7)", &b), "100");
        assert_eq!(text("min('b', 'a', 'c')", &b), "a");
    }

    #[test]
    fn truthiness_of_plain_values() {
        let b = csv(&[
            ("zero", "0"),
            ("f", "FALSE"),
            ("e", ""),
            ("yes", "yes"),
            ("one", "1"),
        ]);
        assert!(!test_on("zero", &b));
        assert!(!test_on("f", &b));
        assert!(!test_on("e", &b));
        assert!(!test_on("missing_field", &b));
        assert!(test_on("yes", &b));
        assert!(test_on("one", &b));
        assert!(test_on("one + zero", &b));
        assert!(!test_on("zero * 5", &b));
    }

    #[test]
    fn evaluation_errors_name_the_failing_part() {
        let b = csv(&[("amount", "abc"), ("z", "0"), ("flag", "true")]);
        assert_eq!(
            text("amount * 100", &b),
            "error: `amount * 100`: 'abc' is not a number"
        );
        assert_eq!(
            text("1 + (amount + 1)", &b),
            "error: `amount + 1`: 'abc' is not a number (use concat() to join text)"
        );
        assert_eq!(text("10 / z", &b), "error: `10 / z`: division by zero");
        assert_eq!(
            text("round(amount)", &b),
            "error: `round(amount)`: 'abc' is not a number"
        );
        assert_eq!(
            text("substr(amount, z + 0.5)", &b),
            "error: `substr(amount, z + 0.5)`: substr start must be a whole number, got 0.5"
        );
        assert_eq!(
            text("int(z + 1e30)", &b),
            "error: `int(z + 1e30)`: out of range for an integer"
        );
        let j = record(&[("b", Kind::Bool, "true")]);
        assert_eq!(text("b + 1", &j), "error: `b + 1`: true is not a number");
        // A comparison never fails: text that is not a number is just not equal to one.
        assert!(!test_on("amount > 5", &b));
    }

    #[test]
    fn compile_errors_say_what_and_where() {
        assert_eq!(
            compile_err("status == 'paid' && (amount > 100"),
            "expected ')' at column 34 in \"status == 'paid' && (amount > 100\""
        );
        assert_eq!(
            compile_err(""),
            "expected an expression at column 1 in \"\""
        );
        assert_eq!(
            compile_err("amount >"),
            "expected a value at column 9 in \"amount >\""
        );
        assert_eq!(
            compile_err("a b"),
            "expected an operator or the end at column 3 in \"a b\""
        );
        assert_eq!(compile_err("(a))"), "unmatched ')' at column 4 in \"(a))\"");
        assert_eq!(
            compile_err("uper(x)"),
            "unknown function 'uper' at column 1 in \"uper(x)\"; did you mean 'upper'?"
        );
        assert!(compile_err("frob(x)").contains("the functions are upper, lower,"));
        assert_eq!(
            compile_err("x == substr(y)"),
            "substr() takes 2 or 3 arguments, got 1 at column 6 in \"x == substr(y)\""
        );
        assert_eq!(
            compile_err("1 < a < 3"),
            "comparisons do not chain at column 7 in \"1 < a < 3\"; \
             join them with &&, as in `a < b && b < c`"
        );
        assert_eq!(
            compile_err("a in 'x'"),
            "expected '(' after 'in' at column 6 in \"a in 'x'\""
        );
        assert_eq!(
            compile_err("concat(a b)"),
            "expected ',' or ')' at column 10 in \"concat(a b)\""
        );
        assert!(compile_err("in == 1").contains("write a field of that name in backticks"));
        assert_eq!(
            compile_err("1 / 0"),
            "`1 / 0`: division by zero at column 1 in \"1 / 0\""
        );
        assert_eq!(
            compile_err("x > 'abc' + 1"),
            "`'abc' + 1`: 'abc' is not a number (use concat() to join text) \
             at column 5 in \"x > 'abc' + 1\""
        );
        let deep = format!("{}x{}", "(".repeat(33), ")".repeat(33));
        assert!(compile_err(&deep).starts_with("expression nests too deeply"));
        let long = vec!["x"; 65].join(" + ");
        assert!(compile_err(&long).starts_with("expression nests too deeply"));
        // A long flat `in` list or a long `concat` is fine.
        let list = format!("x in ({})", vec!["1"; 500].join(", "));
        assert!(Expr::compile(&list).is_ok());
    }

    #[test]
    fn the_deepest_accepted_expressions_run_on_a_small_stack() {
        // Nesting is bounded (parser::MAX_DEPTH) because parsing and evaluation recurse;
        // this checks the bound leaves room even unoptimized, on a 1 MiB thread.
        let chain = vec!["x"; 60].join(" + ");
        let parens = format!("{}x + 1{}", "(".repeat(31), ")".repeat(31));
        let calls = format!("{}x{}", "abs(".repeat(31), ")".repeat(31));
        let nots = format!("{}x > 1", "not ".repeat(30));
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                let b = csv(&[("x", "2")]);
                [chain, parens, calls, nots]
                    .iter()
                    .map(|src| text(src, &b))
                    .collect::<Vec<_>>()
            })
            .expect("spawn");
        let results = worker.join().expect("no stack overflow");
        assert_eq!(results, ["120", "3", "2", "true"]);
        // `||` and `&&` chains are flat: any length is fine.
        let alternatives = (0..2000)
            .map(|i| format!("x == {i}"))
            .collect::<Vec<_>>()
            .join(" || ");
        assert!(test_on(&alternatives, &csv(&[("x", "1999")])));
    }

    #[test]
    fn constants_are_folded_at_compile_time() {
        let e = compile("amount > 2 * 50");
        assert!(matches!(
            e.root,
            eval::Node::CmpFieldConst(_, _, 0, Val::Num(_))
        ));
        assert!(matches!(
            compile("upper('a') == 'A'").root,
            eval::Node::Const(Val::Bool(true))
        ));
        assert_eq!(compile("a + b + a").fields(), ["a", "b"]);
        assert_eq!(compile("`first name`").as_field(), Some(0));
        assert_eq!(compile("x + 0").as_field(), None);
    }

    #[test]
    fn columns_are_resolved_once_per_schema() {
        let e = compile("b == 1 && c == 2");
        let mut cols = Columns::new(e.fields());
        let one = csv(&[("a", "0"), ("b", "1"), ("c", "2")]);
        assert_eq!(cols.resolve(&one), [Some(1), Some(2)]);
        let other = csv(&[("c", "2"), ("b", "1")]);
        assert_eq!(cols.resolve(&other), [Some(1), Some(0)]);
        let none = csv(&[("z", "")]);
        assert_eq!(cols.resolve(&none), [None, None]);
        assert!(test_on("b == 1 && c == 2", &other));
    }

    #[test]
    fn common_filters_allocate_nothing_per_row() {
        let b = csv(&[("status", "paid"), ("amount", "120.50"), ("country", "fr")]);
        for src in [
            "status == 'paid' && amount > 100",
            "amount * 100 >= 12050 || status != 'void'",
            "country in ('fr', 'de') and not (status contains 'x')",
            "trim(status) == 'paid' && lower(country) == 'fr'",
            "coalesce(missing, amount) > 1",
        ] {
            let e = compile(src);
            let mut cols = Columns::new(e.fields());
            let cols = cols.resolve(&b);
            let env = RowFields::new(b.row(0), cols);
            let before = counting::allocations();
            let t = e.test(&env);
            assert_eq!(counting::allocations(), before, "{src} allocated");
            assert_eq!(t, Ok(true), "{src}");
        }
    }
}
