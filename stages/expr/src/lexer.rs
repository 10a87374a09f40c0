//! The lexer: expression text to tokens, each with its byte span for error messages.
//!
//! Runs once per expression at compile time, so it favours clear errors over speed.

use crate::error::CompileError;
use crate::num::Num;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Num(Num),
    Str(String),
    /// A bare word: a field name, a function name or a keyword (`in`, `true`, ...).
    Word(String),
    /// A backtick-quoted field name: never a keyword or function.
    Quoted(String),
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `&&` or `and`.
    And,
    /// `||` or `or`.
    Or,
    /// `!` or `not`.
    Not,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eof,
}

/// A token and where it is: `start..end` in bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, CompileError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let two = |t: Tok, i: &mut usize| {
            *i += 2;
            t
        };
        let next = b.get(i + 1).copied();
        let tok = match c {
            b'(' | b')' | b',' | b'+' | b'-' | b'*' | b'/' | b'%' => {
                i += 1;
                match c {
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b',' => Tok::Comma,
                    b'+' => Tok::Plus,
                    b'-' => Tok::Minus,
                    b'*' => Tok::Star,
                    b'/' => Tok::Slash,
                    _ => Tok::Percent,
                }
            }
            b'=' if next == Some(b'=') => two(Tok::Eq, &mut i),
            b'=' => {
                return Err(
                    CompileError::new(src, i, "unexpected '='").with_hint("use '==' to compare")
                )
            }
            b'!' if next == Some(b'=') => two(Tok::Ne, &mut i),
            b'!' => {
                i += 1;
                Tok::Not
            }
            b'<' if next == Some(b'=') => two(Tok::Le, &mut i),
            b'<' if next == Some(b'>') => {
                return Err(CompileError::new(src, i, "unexpected '<>'")
                    .with_hint("use '!=' for not equal"))
            }
            b'<' => {
                i += 1;
                Tok::Lt
            }
            b'>' if next == Some(b'=') => two(Tok::Ge, &mut i),
            b'>' => {
                i += 1;
                Tok::Gt
            }
            b'&' if next == Some(b'&') => two(Tok::And, &mut i),
            b'|' if next == Some(b'|') => two(Tok::Or, &mut i),
            b'&' | b'|' => {
                let (one, both) = if c == b'&' { ("&", "&&") } else { ("|", "||") };
                return Err(CompileError::new(src, i, format!("unexpected '{one}'"))
                    .with_hint(format!("use '{both}'")));
            }
            b'\'' | b'"' => {
                let (s, end) = string(src, i)?;
                i = end;
                Tok::Str(s)
            }
            b'`' => {
                let (s, end) = string(src, i)?;
                if s.is_empty() {
                    return Err(CompileError::new(src, start, "empty field name"));
                }
                i = end;
                Tok::Quoted(s)
            }
            b'0'..=b'9' | b'.' if c != b'.' || next.is_some_and(|d| d.is_ascii_digit()) => {
                i = number_end(b, i);
                let text = &src[start..i];
                match Num::parse(text) {
                    Some(n) => Tok::Num(n),
                    None => {
                        return Err(CompileError::new(
                            src,
                            start,
                            format!("malformed number '{text}'"),
                        ))
                    }
                }
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let w = &src[start..i];
                if w.eq_ignore_ascii_case("and") {
                    Tok::And
                } else if w.eq_ignore_ascii_case("or") {
                    Tok::Or
                } else if w.eq_ignore_ascii_case("not") {
                    Tok::Not
                } else {
                    Tok::Word(w.to_string())
                }
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                let mut e = CompileError::new(src, i, format!("unexpected character '{ch}'"));
                if !ch.is_ascii() || ch == '.' || ch == '$' || ch == '#' || ch == '@' {
                    e = e.with_hint(
                        "quote field names with other characters in backticks: `first name`",
                    );
                }
                return Err(e);
            }
        };
        out.push(Token { tok, start, end: i });
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

/// The end of the number starting at `i`: digits, a fraction, an exponent.
fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

/// Reads the quoted text starting at the quote at byte `open`; returns the text and the
/// offset after the closing quote. Escapes: `\'`, `\"`, `` \` ``, `\\`, `\n`, `\t`.
fn string(src: &str, open: usize) -> Result<(String, usize), CompileError> {
    let quote = src.as_bytes()[open] as char;
    let mut s = String::new();
    let mut chars = src[open + 1..].char_indices();
    while let Some((k, ch)) = chars.next() {
        let at = open + 1 + k;
        match ch {
            c if c == quote => return Ok((s, at + 1)),
            '\\' => match chars.next() {
                Some((_, c @ ('\'' | '"' | '`' | '\\'))) => s.push(c),
                Some((_, 'n')) => s.push('\n'),
                Some((_, 't')) => s.push('\t'),
                Some((_, c)) => {
                    return Err(
                        CompileError::new(src, at, format!("unknown escape '\\{c}'"))
                            .with_hint("escapes are \\' \\\" \\` \\\\ \\n \\t"),
                    )
                }
                None => break,
            },
            c => s.push(c),
        }
    }
    let what = if quote == '`' { "field name" } else { "string" };
    Err(CompileError::new(src, open, format!("unterminated {what}"))
        .with_hint(format!("close it with {quote}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src)
            .expect("lexes")
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn operators_words_and_literals() {
        assert_eq!(
            toks("a>=1 and not `first name` != 'it\\'s' || x<=.5"),
            vec![
                Tok::Word("a".into()),
                Tok::Ge,
                Tok::Num(Num::int(1)),
                Tok::And,
                Tok::Not,
                Tok::Quoted("first name".into()),
                Tok::Ne,
                Tok::Str("it's".into()),
                Tok::Or,
                Tok::Word("x".into()),
                Tok::Le,
                Tok::Num(Num::parse("0.5").expect("number")),
                Tok::Eof,
            ]
        );
        assert_eq!(
            toks(r#""say \"hi\"\\""#),
            vec![Tok::Str(r#"say "hi"\"#.into()), Tok::Eof]
        );
        assert_eq!(toks("1e3"), vec![Tok::Num(Num::int(1000)), Tok::Eof]);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = lex("a = 1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected '=' at column 3 in \"a = 1\"; use '==' to compare"
        );
        let e = lex("name == 'ann").unwrap_err();
        assert_eq!(e.message(), "unterminated string");
        assert_eq!(e.column(), 9);
        assert_eq!(lex("a & b").unwrap_err().message(), "unexpected '&'");
        assert_eq!(lex("'\\q'").unwrap_err().message(), "unknown escape '\\q'");
        let e = lex("é == 1").unwrap_err();
        assert_eq!(e.column(), 1);
        let e = lex("'é' # 1").unwrap_err();
        assert_eq!(e.column(), 5, "columns count characters, not bytes");
    }
}
