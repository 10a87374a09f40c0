//! The parser: tokens to the compiled [`Node`] tree, in one recursive-descent pass.
//!
//! Besides building the tree it resolves function names and arities, interns field
//! names into slots, decides per comparison whether text compares as text (a quoted
//! literal or `str(...)` on either side) or may compare as numbers, and folds parts
//! without fields into constants, so that `amount > 2 * 50` compares against a ready
//! `100` and `'abc' + 1` is refused at compile time.
//!
//! Precedence, loosest first: `||`; `&&`; `!`/`not`; comparisons (`== != < <= > >=`,
//! `contains`, `starts_with`, `ends_with`, `in`, `not in`; they do not chain); `+ -`;
//! `* / %`; unary `-`; literals, fields, calls and parentheses.

use crate::error::CompileError;
use crate::eval::{eval, Arith, Cmp, Cx, Fields, Match, Node, Span};
use crate::func::{self, Func};
use crate::lexer::{lex, Tok, Token};
use crate::value::{CmpMode, Val};

/// How deep the compiled tree may be. Evaluation recurses once per level, so this
/// bounds its stack use; `&&` and `||` chains are flat and do not count.
const MAX_DEPTH: u32 = 64;

/// How deeply parentheses, calls and prefix operators may nest. The parser recurses
/// through every precedence level for each, about ten frames; 32 levels fit a 1 MiB
/// stack even unoptimized (see `the_deepest_accepted_expressions_run_on_a_small_stack`).
const MAX_NESTING: u32 = 32;

/// A parsed expression: its tree and the field names its slots stand for.
pub(crate) struct Parsed {
    pub root: Node,
    pub fields: Vec<String>,
}

/// Parses and compiles `src`.
pub(crate) fn parse(src: &str) -> Result<Parsed, CompileError> {
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        at: 0,
        fields: Vec::new(),
        nesting: 0,
    };
    if p.peek() == &Tok::Eof {
        return Err(p.error_here("expected an expression"));
    }
    let ex = p.expr()?;
    match p.peek() {
        Tok::Eof => Ok(Parsed {
            root: ex.node,
            fields: p.fields,
        }),
        Tok::RParen => Err(p.error_here("unmatched ')'")),
        _ => Err(p.error_here("expected an operator or the end")),
    }
}

/// A parsed sub-expression and what the parser needs to know about it.
struct Ex {
    node: Node,
    start: usize,
    end: usize,
    /// Statically text: a quoted literal or `str(...)`, which compare as text.
    text: bool,
    /// Height of the tree below, to bound evaluation depth.
    depth: u32,
}

struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    at: usize,
    fields: Vec<String>,
    nesting: u32,
}

/// Evaluates constant parts at compile time; they read no field.
struct NoFields;

impl<'a> Fields<'a> for NoFields {
    fn field(&self, _slot: usize) -> Val<'a> {
        Val::Missing
    }
}

fn cmp_of(t: &Tok) -> Option<Cmp> {
    Some(match t {
        Tok::Eq => Cmp::Eq,
        Tok::Ne => Cmp::Ne,
        Tok::Lt => Cmp::Lt,
        Tok::Le => Cmp::Le,
        Tok::Gt => Cmp::Gt,
        Tok::Ge => Cmp::Ge,
        _ => return None,
    })
}

fn match_of(t: &Tok) -> Option<Match> {
    match t {
        Tok::Word(w) if w.eq_ignore_ascii_case("contains") => Some(Match::Contains),
        Tok::Word(w) if w.eq_ignore_ascii_case("starts_with") => Some(Match::StartsWith),
        Tok::Word(w) if w.eq_ignore_ascii_case("ends_with") => Some(Match::EndsWith),
        _ => None,
    }
}

fn is_word(t: &Tok, word: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(word))
}

/// Words that are operators or literals, so not field names unless backtick-quoted.
const RESERVED: &[&str] = &[
    "in",
    "contains",
    "starts_with",
    "ends_with",
    "true",
    "false",
    "null",
];

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].tok
    }

    fn peek2(&self) -> &Tok {
        &self.toks[(self.at + 1).min(self.toks.len() - 1)].tok
    }

    fn bump(&mut self) -> Token {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn error_here(&self, message: impl Into<String>) -> CompileError {
        CompileError::new(self.src, self.toks[self.at].start, message)
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<Token, CompileError> {
        if self.peek() == &t {
            Ok(self.bump())
        } else {
            Err(self.error_here(format!("expected {what}")))
        }
    }

    /// Counts one level of parser recursion.
    fn enter(&mut self) -> Result<(), CompileError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.error_here("expression nests too deeply"));
        }
        Ok(())
    }

    fn slot(&mut self, name: &str) -> usize {
        match self.fields.iter().position(|f| f == name) {
            Some(i) => i,
            None => {
                self.fields.push(name.to_string());
                self.fields.len() - 1
            }
        }
    }

    /// Wraps `node` over children spanning `start..end`, folding it when constant.
    fn make(
        &self,
        node: Node,
        start: usize,
        end: usize,
        text: bool,
        children: &[u32],
    ) -> Result<Ex, CompileError> {
        let depth = 1 + children.iter().copied().max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(CompileError::new(
                self.src,
                start,
                "expression nests too deeply",
            ));
        }
        let node = if node.children_const() {
            let cx = Cx {
                env: &NoFields,
                src: self.src,
            };
            match eval(&node, &cx) {
                Ok(v) => Node::Const(v.into_owned()),
                Err(e) => {
                    let at = node.span().map_or(start, |s| s.0 as usize);
                    return Err(CompileError::new(self.src, at, e.message().to_string()));
                }
            }
        } else {
            node
        };
        Ok(Ex {
            node,
            start,
            end,
            text,
            depth,
        })
    }

    fn span(start: usize, end: usize) -> Span {
        (start as u32, end as u32)
    }

    fn expr(&mut self) -> Result<Ex, CompileError> {
        self.enter()?;
        let r = self.or();
        self.nesting -= 1;
        r
    }

    fn or(&mut self) -> Result<Ex, CompileError> {
        self.chain(Tok::Or, Parser::and, Node::Or)
    }

    fn and(&mut self) -> Result<Ex, CompileError> {
        self.chain(Tok::And, Parser::not, Node::And)
    }

    /// `operand (op operand)*` as one flat node.
    fn chain(
        &mut self,
        op: Tok,
        operand: fn(&mut Self) -> Result<Ex, CompileError>,
        node: fn(Vec<Node>) -> Node,
    ) -> Result<Ex, CompileError> {
        let first = operand(self)?;
        if self.peek() != &op {
            return Ok(first);
        }
        let (start, mut end) = (first.start, first.end);
        let mut depths = vec![first.depth];
        let mut list = vec![first.node];
        while self.peek() == &op {
            self.bump();
            let next = operand(self)?;
            end = next.end;
            depths.push(next.depth);
            list.push(next.node);
        }
        self.make(node(list), start, end, false, &depths)
    }

    fn not(&mut self) -> Result<Ex, CompileError> {
        if self.peek() != &Tok::Not {
            return self.cmp();
        }
        let t = self.bump();
        self.enter()?;
        let x = self.not();
        self.nesting -= 1;
        let x = x?;
        let end = x.end;
        self.make(Node::Not(Box::new(x.node)), t.start, end, false, &[x.depth])
    }

    fn cmp(&mut self) -> Result<Ex, CompileError> {
        let l = self.sum()?;
        let ex = if let Some(op) = cmp_of(self.peek()) {
            self.bump();
            let r = self.sum()?;
            let mode = if l.text || r.text {
                CmpMode::Text
            } else {
                CmpMode::Auto
            };
            let numeric = |n: &Node| {
                matches!(
                    n,
                    Node::Arith(..) | Node::Neg(..) | Node::Const(Val::Num(_))
                )
            };
            let node = match (&l.node, &r.node) {
                (Node::Field(s), Node::Const(k)) => Node::CmpFieldConst(op, mode, *s, k.clone()),
                (Node::Const(k), Node::Field(s)) => {
                    Node::CmpFieldConst(flip(op), mode, *s, k.clone())
                }
                (a, b) if numeric(a) && numeric(b) => {
                    Node::CmpNum(op, Box::new(l.node), Box::new(r.node))
                }
                _ => Node::Cmp(op, mode, Box::new(l.node), Box::new(r.node)),
            };
            self.make(node, l.start, r.end, false, &[l.depth, r.depth])?
        } else if let Some(op) = match_of(self.peek()) {
            self.bump();
            let r = self.sum()?;
            let node = Node::Match(op, Box::new(l.node), Box::new(r.node));
            self.make(node, l.start, r.end, false, &[l.depth, r.depth])?
        } else if is_word(self.peek(), "in") {
            self.bump();
            self.in_list(l)?
        } else if self.peek() == &Tok::Not && is_word(self.peek2(), "in") {
            self.bump();
            self.bump();
            let ex = self.in_list(l)?;
            let (start, end) = (ex.start, ex.end);
            self.make(Node::Not(Box::new(ex.node)), start, end, false, &[ex.depth])?
        } else {
            return Ok(l);
        };
        if cmp_of(self.peek()).is_some()
            || match_of(self.peek()).is_some()
            || is_word(self.peek(), "in")
        {
            return Err(self
                .error_here("comparisons do not chain")
                .with_hint("join them with &&, as in `a < b && b < c`"));
        }
        Ok(ex)
    }

    /// `( item, item, ... )` after `in`.
    fn in_list(&mut self, needle: Ex) -> Result<Ex, CompileError> {
        self.expect(Tok::LParen, "'(' after 'in'")?;
        let mut items = Vec::new();
        loop {
            let item = self.expr()?;
            items.push(item);
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                    if self.peek() == &Tok::RParen {
                        break;
                    }
                }
                Tok::RParen => break,
                _ => return Err(self.error_here("expected ',' or ')'")),
            }
        }
        let close = self.expect(Tok::RParen, "')'")?;
        let depths: Vec<u32> = items.iter().map(|i| i.depth).collect();
        let list: Vec<(Node, CmpMode)> = items
            .into_iter()
            .map(|i| {
                let mode = if needle.text || i.text {
                    CmpMode::Text
                } else {
                    CmpMode::Auto
                };
                (i.node, mode)
            })
            .collect();
        let mut children = depths;
        children.push(needle.depth);
        let start = needle.start;
        let node = if list.iter().all(|(n, _)| matches!(n, Node::Const(_))) {
            let consts = list
                .into_iter()
                .filter_map(|(n, mode)| match n {
                    Node::Const(k) => Some((k, mode)),
                    _ => None,
                })
                .collect();
            Node::InConst(Box::new(needle.node), consts)
        } else {
            Node::In(Box::new(needle.node), list)
        };
        self.make(node, start, close.end, false, &children)
    }

    fn sum(&mut self) -> Result<Ex, CompileError> {
        let mut l = self.product()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => Arith::Add,
                Tok::Minus => Arith::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.product()?;
            l = self.arith(op, l, r)?;
        }
    }

    fn product(&mut self) -> Result<Ex, CompileError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => Arith::Mul,
                Tok::Slash => Arith::Div,
                Tok::Percent => Arith::Rem,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = self.arith(op, l, r)?;
        }
    }

    fn arith(&self, op: Arith, l: Ex, r: Ex) -> Result<Ex, CompileError> {
        let (start, end) = (l.start, r.end);
        let node = Node::Arith(
            op,
            Box::new(l.node),
            Box::new(r.node),
            Parser::span(start, end),
        );
        self.make(node, start, end, false, &[l.depth, r.depth])
    }

    fn unary(&mut self) -> Result<Ex, CompileError> {
        match self.peek() {
            Tok::Minus | Tok::Plus => {
                let t = self.bump();
                self.enter()?;
                let x = self.unary();
                self.nesting -= 1;
                let x = x?;
                if t.tok == Tok::Plus {
                    return Ok(x);
                }
                let end = x.end;
                let node = Node::Neg(Box::new(x.node), Parser::span(t.start, end));
                self.make(node, t.start, end, false, &[x.depth])
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Ex, CompileError> {
        let t = self.bump();
        let leaf = |node: Node, text: bool| {
            Ok(Ex {
                node,
                start: t.start,
                end: t.end,
                text,
                depth: 1,
            })
        };
        match &t.tok {
            Tok::Num(n) => leaf(Node::Const(Val::Num(*n)), false),
            Tok::Str(s) => leaf(Node::Const(Val::str(s.clone())), true),
            Tok::Quoted(name) => {
                let slot = self.slot(name);
                leaf(Node::Field(slot), false)
            }
            Tok::Word(w) if self.peek() == &Tok::LParen => {
                let w = w.clone();
                self.call(&w, t.start)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => {
                leaf(Node::Const(Val::Bool(true)), false)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => {
                leaf(Node::Const(Val::Bool(false)), false)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => {
                leaf(Node::Const(Val::Missing), false)
            }
            Tok::Word(w) if RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)) => Err(
                CompileError::new(self.src, t.start, "expected a value").with_hint(format!(
                    "'{w}' is an operator; write a field of that name in backticks: `{w}`"
                )),
            ),
            Tok::Word(w) => {
                let slot = self.slot(&w.clone());
                leaf(Node::Field(slot), false)
            }
            Tok::LParen => {
                let x = self.expr()?;
                let close = self.expect(Tok::RParen, "')'")?;
                Ok(Ex {
                    start: t.start,
                    end: close.end,
                    ..x
                })
            }
            _ => Err(CompileError::new(self.src, t.start, "expected a value")),
        }
    }

    /// `name(args)`: the name has been read and `(` is next.
    fn call(&mut self, name: &str, start: usize) -> Result<Ex, CompileError> {
        let Some((f, lo, hi)) = func::lookup(name) else {
            let e = CompileError::new(self.src, start, format!("unknown function '{name}'"));
            return Err(match func::closest(name) {
                Some(near) => e.with_hint(format!("did you mean '{near}'?")),
                None => e.with_hint(format!(
                    "the functions are {}",
                    func::FUNCS
                        .iter()
                        .map(|f| f.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
        };
        self.bump();
        let mut args = Vec::new();
        if self.peek() != &Tok::RParen {
            loop {
                args.push(self.expr()?);
                match self.peek() {
                    Tok::Comma => {
                        self.bump();
                    }
                    Tok::RParen => break,
                    _ => return Err(self.error_here("expected ',' or ')'")),
                }
            }
        }
        let close = self.expect(Tok::RParen, "')'")?;
        if args.len() < lo || args.len() > hi {
            return Err(CompileError::new(
                self.src,
                start,
                format!(
                    "{}() {}, got {}",
                    name.to_ascii_lowercase(),
                    func::arity_text(lo, hi),
                    args.len()
                ),
            ));
        }
        let children: Vec<u32> = args.iter().map(|a| a.depth).collect();
        let nodes = args.into_iter().map(|a| a.node).collect();
        let node = Node::Call(f, nodes, Parser::span(start, close.end));
        self.make(node, start, close.end, f == Func::Str, &children)
    }
}

/// The operator with its operands swapped: `1 < x` is `x > 1`.
fn flip(op: Cmp) -> Cmp {
    match op {
        Cmp::Lt => Cmp::Gt,
        Cmp::Le => Cmp::Ge,
        Cmp::Gt => Cmp::Lt,
        Cmp::Ge => Cmp::Le,
        same => same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(src: &str) -> Node {
        parse(src).unwrap_or_else(|e| panic!("{e}")).root
    }

    #[test]
    fn hot_shapes_get_their_own_nodes() {
        assert!(matches!(
            root("amount > 100"),
            Node::CmpFieldConst(Cmp::Gt, CmpMode::Auto, 0, _)
        ));
        assert!(matches!(
            root("100 <= amount"),
            Node::CmpFieldConst(Cmp::Ge, CmpMode::Auto, 0, _)
        ));
        assert!(matches!(
            root("status == 'paid'"),
            Node::CmpFieldConst(Cmp::Eq, CmpMode::Text, 0, _)
        ));
        assert!(matches!(root("a * 100 > 5"), Node::CmpNum(Cmp::Gt, ..)));
        assert!(matches!(root("a in (1, 'x')"), Node::InConst(..)));
        assert!(matches!(root("a in (1, b)"), Node::In(..)));
        assert!(matches!(root("a not in (1)"), Node::Not(_)));
    }

    #[test]
    fn quoted_literals_and_str_compare_as_text() {
        let Node::Cmp(_, mode, ..) = root("a == str(b)") else {
            panic!("a comparison")
        };
        assert_eq!(mode, CmpMode::Text);
        let Node::Cmp(_, mode, ..) = root("a == trim(b)") else {
            panic!("a comparison")
        };
        assert_eq!(mode, CmpMode::Auto);
        let Node::InConst(_, list) = root("a in (1, '1')") else {
            panic!("an in list")
        };
        let modes: Vec<CmpMode> = list.iter().map(|(_, m)| *m).collect();
        assert_eq!(modes, [CmpMode::Auto, CmpMode::Text]);
    }

    #[test]
    fn precedence() {
        // `||` is loosest, then `&&`, then `!`.
        assert!(matches!(root("a || b && c"), Node::Or(l) if matches!(l[1], Node::And(..))));
        assert!(matches!(root("!a && b"), Node::And(l) if matches!(l[0], Node::Not(_))));
        assert!(
            matches!(root("a && b && c || d"), Node::Or(l) if matches!(&l[0], Node::And(a) if a.len() == 3))
        );
        assert!(matches!(root("!a == 1"), Node::Not(x) if matches!(*x, Node::CmpFieldConst(..))));
        assert!(matches!(
            root("a + b * c"),
            Node::Arith(Arith::Add, _, r, _) if matches!(*r, Node::Arith(Arith::Mul, ..))
        ));
        assert!(matches!(
            root("a - b - c"),
            Node::Arith(Arith::Sub, l, _, _) if matches!(*l, Node::Arith(Arith::Sub, ..))
        ));
    }

    #[test]
    fn fields_are_slots_in_first_seen_order() {
        let p = parse("b + `a b` * b - a").expect("parses");
        assert_eq!(p.fields, ["b", "a b", "a"]);
    }
}
