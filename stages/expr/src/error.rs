//! The two errors of the language: [`CompileError`] when an expression is refused (once,
//! at config time) and [`EvalError`] when a row cannot be evaluated.

use std::fmt;

/// An expression that does not compile: what was wrong or expected, and where.
///
/// Displays as `expected ')' at column 34 in "status == 'paid' && (amount > 100"`, with
/// a hint after a `;` when there is one (`did you mean 'upper'?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    message: String,
    column: usize,
    source: String,
    hint: Option<String>,
}

impl CompileError {
    /// An error at byte offset `at` of `source`.
    pub(crate) fn new(source: &str, at: usize, message: impl Into<String>) -> CompileError {
        let at = at.min(source.len());
        // Columns count characters, from 1, as an editor shows them.
        let column = source.get(..at).map_or(at, |s| s.chars().count()) + 1;
        CompileError {
            message: message.into(),
            column,
            source: source.to_string(),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> CompileError {
        self.hint = Some(hint.into());
        self
    }

    /// What was wrong or expected (`expected ')'`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based column, in characters, where the problem was found.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The expression's text.
    pub fn source_text(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at column {} in {:?}",
            self.message, self.column, self.source
        )?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

/// A row the expression cannot be evaluated on, such as arithmetic on text that is not
/// a number. The message names the part of the expression that failed:
/// ```amount * 100`: 'abc' is not a number``.
///
/// Boxed, so a `Result<Val, EvalError>` stays small on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(Box<str>);

impl EvalError {
    pub(crate) fn new(message: impl Into<String>) -> EvalError {
        EvalError(message.into().into_boxed_str())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}
