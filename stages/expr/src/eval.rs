//! The compiled form of an expression ([`Node`]) and its evaluator.
//!
//! The parser builds the tree once; evaluation walks it per row. Field reads borrow the
//! batch's text, literals borrow the tree's, and boolean operators are evaluated by
//! [`truth`] straight to a `bool`, so a filter such as `status == 'paid' && amount > 100`
//! allocates nothing per row.

use std::cmp::Ordering;

use crate::error::EvalError;
use crate::func::{self, Func};
use crate::num::{Num, NumError};
use crate::value::{equal, ordered, CmpMode, Val};

/// Where a node's text is in the source, in bytes, for error messages.
pub(crate) type Span = (u32, u32);

/// Supplies field values to an expression by slot (see [`crate::Expr::fields`]).
///
/// Implementations read a row: [`crate::RowFields`] reads the columns of a batch row;
/// the `compute` stage also serves the fields set earlier in the same row.
pub trait Fields<'a> {
    /// The value of the field in `slot`; [`Val::Missing`] when the row lacks it.
    fn field(&self, slot: usize) -> Val<'a>;
}

/// A node of the compiled tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Const(Val<'static>),
    Field(usize),
    /// `field <op> literal`, the most common filter, with the literal already typed.
    CmpFieldConst(Cmp, CmpMode, usize, Val<'static>),
    Neg(Box<Node>, Span),
    Not(Box<Node>),
    /// `a && b && ...`, flat so that a long chain does not deepen the tree.
    And(Vec<Node>),
    /// `a || b || ...`, flat likewise.
    Or(Vec<Node>),
    Arith(Arith, Box<Node>, Box<Node>, Span),
    Cmp(Cmp, CmpMode, Box<Node>, Box<Node>),
    /// A comparison of two arithmetic results or numeric literals: no text involved.
    CmpNum(Cmp, Box<Node>, Box<Node>),
    Match(Match, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<(Node, CmpMode)>),
    /// `x in (...)` with only literals in the list.
    InConst(Box<Node>, Vec<(Val<'static>, CmpMode)>),
    Call(Func, Vec<Node>, Span),
}

/// `+ - * / %`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// `== != < <= > >=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `contains`, `starts_with`, `ends_with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    Contains,
    StartsWith,
    EndsWith,
}

impl Cmp {
    /// Whether an ordering satisfies the operator (`None`: unordered, only `!=` holds).
    fn test(self, o: Option<Ordering>) -> bool {
        match o {
            None => self == Cmp::Ne,
            Some(o) => match self {
                Cmp::Eq => o.is_eq(),
                Cmp::Ne => o.is_ne(),
                Cmp::Lt => o.is_lt(),
                Cmp::Le => o.is_le(),
                Cmp::Gt => o.is_gt(),
                Cmp::Ge => o.is_ge(),
            },
        }
    }

    pub(crate) fn apply(self, a: &Val<'_>, b: &Val<'_>, mode: CmpMode) -> bool {
        match self {
            Cmp::Eq => equal(a, b, mode),
            Cmp::Ne => !equal(a, b, mode),
            Cmp::Lt => ordered(a, b, mode, Ordering::is_lt),
            Cmp::Le => ordered(a, b, mode, Ordering::is_le),
            Cmp::Gt => ordered(a, b, mode, Ordering::is_gt),
            Cmp::Ge => ordered(a, b, mode, Ordering::is_ge),
        }
    }
}

impl Node {
    /// True when the node has no field below it, so it can be computed at compile time.
    pub(crate) fn children_const(&self) -> bool {
        let c = |n: &Node| matches!(n, Node::Const(_));
        match self {
            Node::Const(_) | Node::Field(_) | Node::CmpFieldConst(..) => false,
            Node::Neg(x, _) | Node::Not(x) => c(x),
            Node::And(list) | Node::Or(list) => list.iter().all(c),
            Node::Arith(_, l, r, _)
            | Node::Cmp(_, _, l, r)
            | Node::CmpNum(_, l, r)
            | Node::Match(_, l, r) => c(l) && c(r),
            Node::In(x, list) => c(x) && list.iter().all(|(n, _)| c(n)),
            Node::InConst(x, _) => c(x),
            Node::Call(_, args, _) => args.iter().all(c),
        }
    }

    /// The span to blame when the node fails at compile time.
    pub(crate) fn span(&self) -> Option<Span> {
        match self {
            Node::Neg(_, s) | Node::Arith(_, _, _, s) | Node::Call(_, _, s) => Some(*s),
            _ => None,
        }
    }
}

/// What evaluation needs besides the node: the fields and the source text (for errors).
pub(crate) struct Cx<'a, 'e, F> {
    pub env: &'e F,
    pub src: &'a str,
}

impl<F> Cx<'_, '_, F> {
    /// An error about the part of the expression at `span`.
    pub(crate) fn error(&self, span: Span, message: impl std::fmt::Display) -> EvalError {
        let text = self
            .src
            .get(span.0 as usize..span.1 as usize)
            .unwrap_or("?");
        EvalError::new(format!("`{text}`: {message}"))
    }
}

/// Evaluates `node` to a value.
pub(crate) fn eval<'a, F: Fields<'a>>(
    node: &'a Node,
    cx: &Cx<'a, '_, F>,
) -> Result<Val<'a>, EvalError> {
    match node {
        Node::Const(v) => Ok(v.borrowed()),
        Node::Field(slot) => Ok(cx.env.field(*slot)),
        Node::Arith(..) | Node::Neg(..) => Ok(number(node, cx)?.map_or(Val::Missing, Val::Num)),
        Node::Call(f, args, span) => func::call(*f, args, *span, cx),
        Node::CmpFieldConst(..)
        | Node::Not(_)
        | Node::And(..)
        | Node::Or(..)
        | Node::Cmp(..)
        | Node::CmpNum(..)
        | Node::Match(..)
        | Node::In(..)
        | Node::InConst(..) => truth(node, cx).map(Val::Bool),
    }
}

/// Evaluates `node` to its truthiness, without building a value for boolean operators.
pub(crate) fn truth<'a, F: Fields<'a>>(
    node: &'a Node,
    cx: &Cx<'a, '_, F>,
) -> Result<bool, EvalError> {
    match node {
        Node::CmpFieldConst(op, mode, slot, k) => Ok(op.apply(&cx.env.field(*slot), k, *mode)),
        Node::Cmp(op, mode, l, r) => {
            let a = eval(l, cx)?;
            let b = eval(r, cx)?;
            Ok(op.apply(&a, &b, *mode))
        }
        Node::CmpNum(op, l, r) => {
            let x = number(l, cx)?;
            let y = number(r, cx)?;
            Ok(match (x, y) {
                (Some(x), Some(y)) => op.test(x.partial_cmp(&y)),
                // Missing is only equal to missing, and neither less nor more.
                (x, y) => match op {
                    Cmp::Eq => x.is_none() && y.is_none(),
                    Cmp::Ne => x.is_some() || y.is_some(),
                    _ => false,
                },
            })
        }
        Node::And(list) => {
            for n in list {
                if !truth(n, cx)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Or(list) => {
            for n in list {
                if truth(n, cx)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::Not(x) => Ok(!truth(x, cx)?),
        Node::Match(op, l, r) => {
            let a = eval(l, cx)?;
            let b = eval(r, cx)?;
            if a.is_missing() || b.is_missing() {
                return Ok(false);
            }
            Ok(a.with_text(|s| {
                b.with_text(|t| match op {
                    Match::Contains => s.contains(t),
                    Match::StartsWith => s.starts_with(t),
                    Match::EndsWith => s.ends_with(t),
                })
            }))
        }
        Node::In(x, list) => {
            let a = eval(x, cx)?;
            for (n, mode) in list {
                if equal(&a, &eval(n, cx)?, *mode) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Node::InConst(x, list) => {
            let a = match **x {
                Node::Field(slot) => cx.env.field(slot),
                ref other => eval(other, cx)?,
            };
            Ok(list.iter().any(|(k, mode)| equal(&a, k, *mode)))
        }
        other => Ok(eval(other, cx)?.truthy()),
    }
}

/// Evaluates an arithmetic node, or an operand of one, straight to a number (`None`
/// when missing). Numeric subtrees never build a [`Val`], which keeps `amount * 100`
/// to a cell read, a parse and a multiplication.
fn number<'a, F: Fields<'a>>(node: &'a Node, cx: &Cx<'a, '_, F>) -> Result<Option<Num>, EvalError> {
    match node {
        Node::Arith(op, l, r, span) => {
            let (x, y) = match (operand(l, *op, *span, cx)?, operand(r, *op, *span, cx)?) {
                (Some(x), Some(y)) => (x, y),
                _ => return Ok(None),
            };
            let r = match op {
                Arith::Add => Ok(x + y),
                Arith::Sub => Ok(x - y),
                Arith::Mul => Ok(x * y),
                Arith::Div => x.checked_div(y),
                Arith::Rem => x.checked_rem(y),
            };
            r.map(Some).map_err(|e| cx.error(*span, num_error(e)))
        }
        Node::Neg(x, span) => Ok(operand(x, Arith::Sub, *span, cx)?.map(|n| -n)),
        Node::Const(Val::Num(n)) => Ok(Some(*n)),
        // Callers pass numeric nodes only; anything else converts as a value would.
        other => eval(other, cx)?.to_num().map_err(EvalError::new),
    }
}

/// An operand of `op` at `span`, as a number; the error names the operation.
fn operand<'a, F: Fields<'a>>(
    node: &'a Node,
    op: Arith,
    span: Span,
    cx: &Cx<'a, '_, F>,
) -> Result<Option<Num>, EvalError> {
    let v = match node {
        Node::Arith(..) | Node::Neg(..) => return number(node, cx),
        Node::Const(Val::Num(n)) => return Ok(Some(*n)),
        Node::Field(slot) => cx.env.field(*slot),
        other => eval(other, cx)?,
    };
    v.to_num().map_err(|m| {
        if op == Arith::Add && matches!(v, Val::Str(_)) {
            cx.error(span, format!("{m} (use concat() to join text)"))
        } else {
            cx.error(span, m)
        }
    })
}

pub(crate) fn num_error(e: NumError) -> &'static str {
    match e {
        NumError::DivisionByZero => "division by zero",
        NumError::OutOfRange => "out of range for an integer",
    }
}

/// Reads a whole-number argument (`round`'s digits, `substr`'s start); `None` when
/// missing.
pub(crate) fn whole<'a, F: Fields<'a>>(
    node: &'a Node,
    what: &str,
    span: Span,
    cx: &Cx<'a, '_, F>,
) -> Result<Option<i64>, EvalError> {
    let v = eval(node, cx)?;
    let n: Option<Num> = v
        .to_num()
        .map_err(|m| cx.error(span, format!("{what}: {m}")))?;
    match n {
        None => Ok(None),
        Some(n) => n.as_i64().map(Some).ok_or_else(|| {
            cx.error(
                span,
                format!("{what} must be a whole number, got {}", v.describe()),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Expr, Fields, Num, Val};

    /// Fields by slot, straight from a list.
    struct Slots(Vec<Val<'static>>);

    impl<'a> Fields<'a> for Slots {
        fn field(&self, slot: usize) -> Val<'a> {
            self.0.get(slot).cloned().unwrap_or(Val::Missing)
        }
    }

    fn test(src: &str, fields: &[Val<'static>]) -> bool {
        let e = Expr::compile(src).unwrap_or_else(|e| panic!("{e}"));
        e.test(&Slots(fields.to_vec()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn numeric_comparisons_treat_missing_like_any_comparison() {
        let m = [Val::Missing];
        assert!(!test("a * 2 > 1", &m));
        assert!(!test("a * 2 == 1", &m));
        assert!(test("a * 2 != 1", &m));
        assert!(test("a * 2 == -a", &m), "missing equals missing");
        let two = [Val::str("2")];
        assert!(test("a * 2 == 4", &two));
        assert!(test("a * 2 != 5", &two));
        assert!(test("-a < 0", &two));
    }

    #[test]
    fn in_lists_of_literals_use_each_literal_mode() {
        let one = [Val::str("1.0")];
        assert!(test("a in (1)", &one));
        assert!(!test("a in ('1')", &one));
        assert!(test("a in ('x', '1.0')", &one));
        assert!(!test("a in (2, 3)", &one));
        assert!(test("a in (null)", &[Val::Missing]));
        assert!(test("a + 1 in (2)", &[Val::Num(Num::int(1))]));
    }

    #[test]
    fn and_or_stop_early() {
        // The right side would fail: it is never evaluated.
        let x = [Val::str("x")];
        assert!(!test("false && a * 2 > 1", &x));
        assert!(test("true || a * 2 > 1", &x));
        let e = Expr::compile("true && a * 2 > 1").expect("compiles");
        assert!(e.test(&Slots(x.to_vec())).is_err());
    }
}
