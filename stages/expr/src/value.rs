//! [`Val`], the value an expression computes, and the rules that compare, test and
//! convert values (the semantics the crate docs describe).
//!
//! A `Val` borrows its text from the batch (or from the compiled expression, for
//! literals) whenever it can, so reading a field and comparing it allocates nothing.

use std::borrow::Cow;
use std::cmp::Ordering;

use pipe_sdk::RowWriter;
use pipe_sdk::{Kind, Value};

use crate::num::{Num, NumBuf};

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// An absent field, a JSON `null`, or a result computed from one.
    Missing,
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(Num),
    /// Text. Text read from a field acts as a number next to a number when it parses as
    /// one (CSV cells are all text).
    Str(Cow<'a, str>),
    /// A nested JSON object or array, as its JSON text.
    Json(&'a str),
}

/// How a comparison treats text: decided when the expression is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpMode {
    /// One side is a quoted literal or `str(...)`: compare the text of both sides.
    Text,
    /// Text that parses as a number compares as one next to a number (or next to other
    /// text that parses).
    Auto,
}

impl<'a> Val<'a> {
    /// The value of a cell, as [`pipe_sdk::Row::raw`] gives it. Parses numbers on demand
    /// and borrows text; never allocates.
    pub fn from_cell(kind: Kind, text: &'a str) -> Val<'a> {
        match kind {
            Kind::Absent | Kind::Null => Val::Missing,
            Kind::Bool => Val::Bool(text == "true"),
            Kind::Int | Kind::Float => match Num::parse(text) {
                Some(n) => Val::Num(n),
                None => Val::Str(Cow::Borrowed(text)),
            },
            Kind::Str => Val::Str(Cow::Borrowed(text)),
            Kind::Json => Val::Json(text),
        }
    }

    /// A string value.
    pub fn str(s: impl Into<Cow<'a, str>>) -> Val<'a> {
        Val::Str(s.into())
    }

    /// An integer value.
    pub fn int(i: i64) -> Val<'a> {
        Val::Num(Num::int(i))
    }

    /// True for [`Val::Missing`].
    pub fn is_missing(&self) -> bool {
        matches!(self, Val::Missing)
    }

    /// A copy that borrows this value's text instead of owning it (no allocation).
    pub fn borrowed(&self) -> Val<'_> {
        match self {
            Val::Missing => Val::Missing,
            Val::Bool(b) => Val::Bool(*b),
            Val::Num(n) => Val::Num(*n),
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Json(j) => Val::Json(j),
        }
    }

    /// The same value, owning its text.
    pub fn into_owned(self) -> Val<'static> {
        match self {
            Val::Missing => Val::Missing,
            Val::Bool(b) => Val::Bool(b),
            Val::Num(n) => Val::Num(n),
            Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
            // JSON text has nowhere to borrow from once owned: keep it as text.
            Val::Json(j) => Val::Str(Cow::Owned(j.to_string())),
        }
    }

    /// Truthiness, as a filter sees it: bools as they are; missing is false; numbers are
    /// true when non-zero; text is true unless empty, `false` (any case) or `0`; nested
    /// JSON is true.
    pub fn truthy(&self) -> bool {
        match self {
            Val::Missing => false,
            Val::Bool(b) => *b,
            Val::Num(n) => !n.is_zero(),
            Val::Str(s) => !(s.is_empty() || s.as_ref() == "0" || s.eq_ignore_ascii_case("false")),
            Val::Json(_) => true,
        }
    }

    /// The value as a number, for arithmetic: `Ok(None)` when missing or blank text;
    /// `Err` with a description of the value when it is not a number.
    pub fn to_num(&self) -> Result<Option<Num>, String> {
        match self {
            Val::Missing => Ok(None),
            Val::Num(n) => Ok(Some(*n)),
            Val::Str(s) => match Num::parse(s) {
                Some(n) => Ok(Some(n)),
                None if s.trim().is_empty() => Ok(None),
                None => Err(format!("{} is not a number", self.describe())),
            },
            Val::Bool(_) | Val::Json(_) => Err(format!("{} is not a number", self.describe())),
        }
    }

    /// Calls `f` with the value's text: numbers as they print, bools as `true`/`false`,
    /// missing as the empty string. Allocates only for floats.
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Val::Missing => f(""),
            Val::Bool(b) => f(if *b { "true" } else { "false" }),
            Val::Num(n) => {
                let mut buf = NumBuf::new();
                f(&n.write(&mut buf))
            }
            Val::Str(s) => f(s),
            Val::Json(j) => f(j),
        }
    }

    /// The value's text (see [`Val::with_text`]), borrowed when the value is text.
    pub fn to_text(&self) -> Cow<'a, str> {
        match self {
            Val::Str(Cow::Borrowed(s)) => Cow::Borrowed(s),
            Val::Json(j) => Cow::Borrowed(j),
            other => Cow::Owned(other.with_text(str::to_string)),
        }
    }

    /// The value's text (see [`Val::with_text`]), moving owned text rather than copying.
    pub fn into_text(self) -> Cow<'a, str> {
        match self {
            Val::Str(s) => s,
            Val::Json(j) => Cow::Borrowed(j),
            other => Cow::Owned(other.with_text(str::to_string)),
        }
    }

    /// A short description for error messages: `'abc'`, `true`, `12.5`, `missing`.
    pub fn describe(&self) -> String {
        const MAX: usize = 40;
        match self {
            Val::Missing => "missing".to_string(),
            Val::Str(s) => {
                let mut t: String = s.chars().take(MAX).collect();
                if t.len() < s.len() {
                    t.push('…');
                }
                format!("'{t}'")
            }
            other => other.with_text(|t| {
                let mut t: String = t.chars().take(MAX).collect();
                if t.len() < other.with_text(str::len) {
                    t.push('…');
                }
                t
            }),
        }
    }

    /// The value as an SDK [`Value`]. Exact decimals become `Float` (the nearest `f64`);
    /// [`Val::write`] keeps their exact text instead.
    pub fn to_value(&self) -> Value<'_> {
        match self {
            Val::Missing => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => match n {
                Num::Dec(d) if d.normalize().scale == 0 => Value::Int(d.normalize().m),
                n => Value::Float(n.to_f64()),
            },
            Val::Str(s) => Value::Str(s),
            Val::Json(j) => Value::Json(j),
        }
    }

    /// Writes the value as the next cell of a row: missing as `null`, whole numbers as
    /// ints, exact decimals as floats with their exact text (`12.34`, never
    /// `12.339999`), other floats as [`pipe_sdk::format_f64`] prints them.
    pub fn write(&self, w: &mut RowWriter<'_>) {
        match self {
            Val::Num(Num::Dec(d)) => {
                let d = d.normalize();
                if d.scale == 0 {
                    w.value(Value::Int(d.m));
                } else {
                    let mut buf = NumBuf::new();
                    w.raw(Kind::Float, d.write(&mut buf));
                }
            }
            other => {
                w.value(other.to_value());
            }
        }
    }
}

/// Orders two present values under `mode`; `None` when they cannot be compared (a
/// number next to text that is not a number, a bool next to a number other than 0/1).
fn order(a: &Val<'_>, b: &Val<'_>, mode: CmpMode) -> Option<Ordering> {
    if mode == CmpMode::Text {
        return a.with_text(|x| b.with_text(|y| Some(x.cmp(y))));
    }
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Num(x), Val::Str(s)) => Num::parse(s).and_then(|y| x.partial_cmp(&y)),
        (Val::Str(s), Val::Num(y)) => Num::parse(s).and_then(|x| x.partial_cmp(y)),
        (Val::Str(s), Val::Str(t)) => match (Num::parse(s), Num::parse(t)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => Some(s.as_ref().cmp(t.as_ref())),
        },
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Bool(x), other) | (other, Val::Bool(x)) => {
            let y = as_bool(other)?;
            // Keep the operands' order: `x` may have been the right-hand side.
            if matches!(a, Val::Bool(_)) {
                Some(x.cmp(&y))
            } else {
                Some(y.cmp(x))
            }
        }
        (Val::Json(x), Val::Json(y)) => Some(x.cmp(y)),
        (Val::Json(x), Val::Str(y)) => Some((*x).cmp(y.as_ref())),
        (Val::Str(x), Val::Json(y)) => Some(x.as_ref().cmp(*y)),
        _ => None,
    }
}

fn as_bool(v: &Val<'_>) -> Option<bool> {
    match v {
        Val::Num(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Val::Str(s) => pipe_sdk::parse_bool(s),
        _ => None,
    }
}

/// `a == b`: two missing values are equal; missing and present are not.
pub fn equal(a: &Val<'_>, b: &Val<'_>, mode: CmpMode) -> bool {
    match (a.is_missing(), b.is_missing()) {
        (true, true) => true,
        (false, false) => order(a, b, mode) == Some(Ordering::Equal),
        _ => false,
    }
}

/// `a < b` and friends: false whenever either side is missing or they cannot be
/// compared. `test` says which orderings count as true.
pub fn ordered(a: &Val<'_>, b: &Val<'_>, mode: CmpMode, test: fn(Ordering) -> bool) -> bool {
    if a.is_missing() || b.is_missing() {
        return false;
    }
    order(a, b, mode).is_some_and(test)
}

/// Orders two values for `min`/`max`: as comparisons do, falling back to text.
pub fn order_any(a: &Val<'_>, b: &Val<'_>) -> Ordering {
    order(a, b, CmpMode::Auto).unwrap_or_else(|| a.with_text(|x| b.with_text(|y| x.cmp(y))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Val<'_> {
        Val::str(t)
    }

    fn num(t: &str) -> Val<'static> {
        Val::Num(Num::parse(t).expect("a number"))
    }

    #[test]
    fn text_that_parses_compares_as_a_number_next_to_a_number() {
        assert!(ordered(&s("9"), &num("10"), CmpMode::Auto, Ordering::is_lt));
        assert!(equal(&s("100.0"), &num("100"), CmpMode::Auto));
        // ... but as text next to a quoted literal.
        assert!(!equal(&s("100.0"), &s("100"), CmpMode::Text));
        assert!(ordered(&s("9"), &s("10"), CmpMode::Text, Ordering::is_gt));
        // Two fields: numbers when both parse, else text.
        assert!(ordered(&s("9"), &s("10"), CmpMode::Auto, Ordering::is_lt));
        assert!(ordered(&s("9"), &s("10a"), CmpMode::Auto, Ordering::is_gt));
    }

    #[test]
    fn a_number_and_text_that_is_not_one_are_unordered() {
        assert!(!equal(&s("abc"), &num("1"), CmpMode::Auto));
        assert!(!ordered(
            &s(""),
            &num("100"),
            CmpMode::Auto,
            Ordering::is_lt
        ));
        assert!(!ordered(
            &s(""),
            &num("100"),
            CmpMode::Auto,
            Ordering::is_gt
        ));
    }

    #[test]
    fn missing_is_only_equal_to_missing() {
        assert!(equal(&Val::Missing, &Val::Missing, CmpMode::Auto));
        assert!(!equal(&Val::Missing, &s(""), CmpMode::Auto));
        assert!(!ordered(
            &Val::Missing,
            &num("1"),
            CmpMode::Auto,
            Ordering::is_lt
        ));
    }

    #[test]
    fn bools_compare_with_their_spellings() {
        assert!(equal(&Val::Bool(true), &s("true"), CmpMode::Auto));
        assert!(equal(&s("no"), &Val::Bool(false), CmpMode::Auto));
        assert!(equal(&Val::Bool(true), &num("1"), CmpMode::Auto));
        assert!(!equal(&Val::Bool(true), &num("2"), CmpMode::Auto));
        assert!(ordered(
            &s("false"),
            &Val::Bool(true),
            CmpMode::Auto,
            Ordering::is_lt
        ));
        assert!(equal(&Val::Bool(true), &s("true"), CmpMode::Text));
    }

    #[test]
    fn truthiness() {
        for (v, t) in [
            (Val::Missing, false),
            (Val::Bool(true), true),
            (num("0"), false),
            (num("0.0"), false),
            (num("-2"), true),
            (s(""), false),
            (s("0"), false),
            (s("FALSE"), false),
            (s("no"), true),
            (s("0.0"), true),
            (Val::Json("[]"), true),
        ] {
            assert_eq!(v.truthy(), t, "{v:?}");
        }
    }

    #[test]
    fn cells_read_without_copying() {
        assert_eq!(Val::from_cell(Kind::Int, "42"), Val::int(42));
        assert_eq!(Val::from_cell(Kind::Float, "1.50"), num("1.50"));
        assert_eq!(Val::from_cell(Kind::Null, ""), Val::Missing);
        assert_eq!(Val::from_cell(Kind::Bool, "false"), Val::Bool(false));
        assert!(matches!(
            Val::from_cell(Kind::Str, "x"),
            Val::Str(Cow::Borrowed("x"))
        ));
    }

    #[test]
    fn to_num_reports_what_is_not_a_number() {
        assert_eq!(s(" 12 ").to_num(), Ok(Some(Num::int(12))));
        assert_eq!(s("").to_num(), Ok(None));
        assert_eq!(s("abc").to_num(), Err("'abc' is not a number".to_string()));
        assert_eq!(
            Val::Bool(true).to_num(),
            Err("true is not a number".to_string())
        );
    }
}
