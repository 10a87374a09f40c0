//! The built-in functions: their names and arities (checked at compile time) and what
//! each computes.
//!
//! Arguments are evaluated one at a time, never collected into a vector, and text
//! functions borrow where the result is a slice of their input (`trim`, `substr`), so
//! only functions that make new text allocate.

use std::borrow::Cow;

use crate::error::EvalError;
use crate::eval::{eval, num_error, truth, whole, Cx, Fields, Node, Span};
use crate::num::Num;
use crate::value::{order_any, Val};

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Upper,
    Lower,
    Trim,
    Len,
    Replace,
    Concat,
    Substr,
    Round,
    Floor,
    Ceil,
    Abs,
    Min,
    Max,
    Coalesce,
    If,
    Exists,
    IsMissing,
    Num,
    Int,
    Str,
}

const MANY: usize = usize::MAX;

/// Every function: name, least and most arguments.
pub(crate) const FUNCS: &[(&str, Func, usize, usize)] = &[
    ("upper", Func::Upper, 1, 1),
    ("lower", Func::Lower, 1, 1),
    ("trim", Func::Trim, 1, 1),
    ("len", Func::Len, 1, 1),
    ("replace", Func::Replace, 3, 3),
    ("concat", Func::Concat, 1, MANY),
    ("substr", Func::Substr, 2, 3),
    ("round", Func::Round, 1, 2),
    ("floor", Func::Floor, 1, 1),
    ("ceil", Func::Ceil, 1, 1),
    ("abs", Func::Abs, 1, 1),
    ("min", Func::Min, 1, MANY),
    ("max", Func::Max, 1, MANY),
    ("coalesce", Func::Coalesce, 1, MANY),
    ("if", Func::If, 3, 3),
    ("exists", Func::Exists, 1, 1),
    ("is_missing", Func::IsMissing, 1, 1),
    ("num", Func::Num, 1, 1),
    ("int", Func::Int, 1, 1),
    ("str", Func::Str, 1, 1),
];

/// Looks a function up by name (any case).
pub(crate) fn lookup(name: &str) -> Option<(Func, usize, usize)> {
    FUNCS
        .iter()
        .find(|(n, ..)| n.eq_ignore_ascii_case(name))
        .map(|&(_, f, lo, hi)| (f, lo, hi))
}

/// The known function closest to `name`, for "did you mean" hints.
pub(crate) fn closest(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    FUNCS
        .iter()
        .map(|(n, ..)| (edit_distance(&name, n), *n))
        .filter(|(d, n)| *d <= 2 && *d < n.len())
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The arity part of an error message: `takes 1 argument`, `takes 2 or 3 arguments`.
pub(crate) fn arity_text(lo: usize, hi: usize) -> String {
    let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
    if hi == MANY {
        format!("takes at least {lo} {}", plural(lo))
    } else if lo == hi {
        format!("takes {lo} {}", plural(lo))
    } else {
        format!("takes {lo} or {hi} arguments")
    }
}

/// Calls `f` on its (unevaluated) arguments, whose count the parser has checked.
pub(crate) fn call<'a, F: Fields<'a>>(
    f: Func,
    args: &'a [Node],
    span: Span,
    cx: &Cx<'a, '_, F>,
) -> Result<Val<'a>, EvalError> {
    let arg = |i: usize| eval(&args[i], cx);
    let number = |v: Val<'_>| v.to_num().map_err(|m| cx.error(span, m));
    Ok(match f {
        Func::Upper | Func::Lower => {
            let v = arg(0)?;
            if v.is_missing() {
                return Ok(Val::Missing);
            }
            let t = v.into_text();
            let upper = f == Func::Upper;
            // ASCII text already in the right case comes back borrowed.
            let same = t.is_ascii()
                && !t.bytes().any(|c| {
                    if upper {
                        c.is_ascii_lowercase()
                    } else {
                        c.is_ascii_uppercase()
                    }
                });
            if same {
                Val::Str(t)
            } else if upper {
                Val::str(t.to_uppercase())
            } else {
                Val::str(t.to_lowercase())
            }
        }
        Func::Trim => match arg(0)? {
            Val::Missing => Val::Missing,
            v => Val::Str(match v.into_text() {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            }),
        },
        Func::Len => match arg(0)? {
            Val::Missing => Val::Missing,
            v => Val::int(v.with_text(|s| s.chars().count()) as i64),
        },
        Func::Replace => {
            let s = arg(0)?;
            if s.is_missing() {
                return Ok(Val::Missing);
            }
            let (from, to) = (arg(1)?, arg(2)?);
            let (from, to) = (from.into_text(), to.into_text());
            let s = s.into_text();
            if from.is_empty() || !s.contains(from.as_ref()) {
                Val::Str(s)
            } else {
                Val::str(s.replace(from.as_ref(), &to))
            }
        }
        Func::Concat => {
            let mut out = String::new();
            for a in args {
                eval(a, cx)?.with_text(|t| out.push_str(t));
            }
            Val::str(out)
        }
        Func::Substr => {
            let s = arg(0)?;
            let start = whole(&args[1], "substr start", span, cx)?;
            let len = match args.get(2) {
                Some(n) => match whole(n, "substr length", span, cx)? {
                    Some(l) => Some(l),
                    None => return Ok(Val::Missing),
                },
                None => None,
            };
            match (s.is_missing(), start) {
                (false, Some(start)) => Val::Str(substr(s.into_text(), start, len)),
                _ => Val::Missing,
            }
        }
        Func::Round => {
            let x = number(arg(0)?)?;
            let digits = match args.get(1) {
                Some(n) => match whole(n, "round digits", span, cx)? {
                    Some(d) => d,
                    None => return Ok(Val::Missing),
                },
                None => 0,
            };
            x.map_or(Val::Missing, |x| Val::Num(x.round(digits)))
        }
        Func::Floor => number(arg(0)?)?.map_or(Val::Missing, |x| Val::Num(x.floor())),
        Func::Ceil => number(arg(0)?)?.map_or(Val::Missing, |x| Val::Num(x.ceil())),
        Func::Abs => number(arg(0)?)?.map_or(Val::Missing, |x| Val::Num(x.abs())),
        Func::Min | Func::Max => {
            let want = if f == Func::Min {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            };
            let mut best = Val::Missing;
            for a in args {
                let v = eval(a, cx)?;
                if !v.is_missing() && (best.is_missing() || order_any(&v, &best) == want) {
                    best = v;
                }
            }
            best
        }
        Func::Coalesce => {
            for a in args {
                let v = eval(a, cx)?;
                let empty = matches!(&v, Val::Str(s) if s.is_empty());
                if !v.is_missing() && !empty {
                    return Ok(v);
                }
            }
            Val::Missing
        }
        Func::If => {
            if truth(&args[0], cx)? {
                arg(1)?
            } else {
                arg(2)?
            }
        }
        Func::Exists => Val::Bool(!arg(0)?.is_missing()),
        Func::IsMissing => Val::Bool(arg(0)?.is_missing()),
        Func::Num => to_number(&arg(0)?).map_or(Val::Missing, Val::Num),
        Func::Int => match to_number(&arg(0)?) {
            None => Val::Missing,
            Some(n) => Val::int(n.trunc().map_err(|e| cx.error(span, num_error(e)))?),
        },
        Func::Str => match arg(0)? {
            Val::Missing => Val::Missing,
            v => Val::Str(v.into_text()),
        },
    })
}

/// `num(x)`: numbers as they are, text parsed, bools as 1/0; anything else is missing.
fn to_number(v: &Val<'_>) -> Option<Num> {
    match v {
        Val::Num(n) => Some(*n),
        Val::Str(s) => Num::parse(s),
        Val::Bool(b) => Some(Num::int(i64::from(*b))),
        Val::Missing | Val::Json(_) => None,
    }
}

/// The characters of `s` from `start` (negative: from the end), `len` of them (all when
/// `None`; none when negative). Borrows when `s` does.
fn substr(s: Cow<'_, str>, start: i64, len: Option<i64>) -> Cow<'_, str> {
    let count = if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    };
    let count = count as i64;
    let from = if start < 0 {
        (count + start).max(0)
    } else {
        start.min(count)
    };
    let to = match len {
        Some(l) => from.saturating_add(l.max(0)).min(count),
        None => count,
    };
    let byte = |c: i64| -> usize {
        if s.is_ascii() {
            c as usize
        } else {
            s.char_indices().nth(c as usize).map_or(s.len(), |(b, _)| b)
        }
    };
    let (a, b) = (byte(from), byte(to));
    match s {
        Cow::Borrowed(t) => Cow::Borrowed(&t[a..b]),
        Cow::Owned(t) => Cow::Owned(t[a..b].to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substr_counts_characters_and_clamps() {
        let s = |t: &str, a, l| substr(Cow::Borrowed(t), a, l).into_owned();
        assert_eq!(s("hello", 1, Some(3)), "ell");
        assert_eq!(s("hello", 0, None), "hello");
        assert_eq!(s("hello", -3, None), "llo");
        assert_eq!(s("hello", -10, Some(2)), "he");
        assert_eq!(s("hello", 9, Some(2)), "");
        assert_eq!(s("hello", 2, Some(-1)), "");
        assert_eq!(s("héllo", 1, Some(2)), "él");
        assert!(matches!(
            substr(Cow::Borrowed("abc"), 1, None),
            Cow::Borrowed("bc")
        ));
    }

    #[test]
    fn hints_suggest_near_names() {
        assert_eq!(closest("uper"), Some("upper"));
        assert_eq!(closest("UPPR"), Some("upper"));
        assert_eq!(closest("coalese"), Some("coalesce"));
        assert_eq!(closest("frobnicate"), None);
        assert_eq!(arity_text(2, 3), "takes 2 or 3 arguments");
        assert_eq!(arity_text(1, 1), "takes 1 argument");
        assert_eq!(arity_text(1, MANY), "takes at least 1 argument");
    }
}
