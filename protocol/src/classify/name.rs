//! Names and values of session effects as borrowed SQL text, with Postgres' comparison rules.

use core::fmt;

use super::lexer::{Lexer, TokenKind, Unescape};

/// A possibly dotted name (`search_path`, `myapp.user_id`, `"My App".x`), borrowed as written.
///
/// Two ways to compare, because Postgres has two rules:
/// - setting names are case-insensitive even when quoted (`guc_name_compare` folds ASCII case):
///   use [`Name::eq_ignore_ascii_case`];
/// - statement names follow identifier rules (unquoted folds to lowercase, quoted is exact): use
///   [`Name::is`] or [`Name::bytes`].
///
/// Case folding is ASCII only. A `U&"…"` part is taken as written, escapes not decoded. `==`
/// compares the text as written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<'a> {
    raw: &'a [u8],
}

impl<'a> Name<'a> {
    /// A name spelled by `raw`, which must be identifiers and dots (as lexed SQL text).
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Name { raw }
    }

    /// The name as the client wrote it (comments between parts included): valid SQL to replay.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The name as Postgres reads it: unquoted parts lowercased, quotes removed, parts joined by
    /// `.`. Allocation-free; collect it when a key is needed.
    pub fn bytes(&self) -> NameBytes<'a> {
        NameBytes {
            parts: Lexer::new(self.raw),
            part: Unescape::new(&[], b'"'),
            fold: false,
        }
    }

    /// Compares as Postgres compares setting names: ASCII case-insensitively, quoted or not.
    pub fn eq_ignore_ascii_case(&self, other: &[u8]) -> bool {
        let mut mine = self.bytes();
        other
            .iter()
            .all(|b| mine.next().map(|m| m.to_ascii_lowercase()) == Some(b.to_ascii_lowercase()))
            && mine.next().is_none()
    }

    /// Compares as Postgres compares identifiers: `other` is the name as stored (an unquoted
    /// name is stored lowercased).
    pub fn is(&self, other: &[u8]) -> bool {
        self.bytes().eq(other.iter().copied())
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.raw.escape_ascii())
    }
}

/// Writes [`Name::bytes`], non-ASCII and control bytes escaped.
impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bytes()
            .try_for_each(|b| write!(f, "{}", b.escape_ascii()))
    }
}

/// The bytes of a [`Name`] as Postgres reads it; see [`Name::bytes`].
#[derive(Debug, Clone)]
pub struct NameBytes<'a> {
    parts: Lexer<'a>,
    part: Unescape<'a>,
    fold: bool,
}

impl Iterator for NameBytes<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        loop {
            if let Some(b) = self.part.next() {
                return Some(if self.fold { b.to_ascii_lowercase() } else { b });
            }
            let t = self.parts.next()?;
            self.fold = t.kind == TokenKind::Ident;
            match t.kind {
                TokenKind::QuotedIdent => self.part = Unescape::new(t.inner(), b'"'),
                TokenKind::Dot => return Some(b'.'),
                // Identifiers (and anything else) are taken as they are, folded.
                _ => self.part = Unescape::new(t.text, 0),
            }
        }
    }
}

/// The value of a `SET`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `DEFAULT` (or `LOCAL` in `SET TIME ZONE`, or nothing after `SET NAMES`): the same as
    /// `RESET name`.
    Default,
    /// Everything after `TO`/`=` up to the end of the statement, from its first token to the end
    /// of its last, as written: `'a', "$user"`. Replay it as `SET name TO <value>`.
    Text(&'a [u8]),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Default => f.write_str("Default"),
            Value::Text(t) => write!(f, "Text({})", t.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        String::from_utf8(Name::new(raw.as_bytes()).bytes().collect()).unwrap()
    }

    #[test]
    fn unquoted_parts_fold_and_quoted_parts_keep_their_case() {
        assert_eq!(norm("Search_Path"), "search_path");
        assert_eq!(norm(r#"MyApp . /* c */ "User""Id""#), r#"myapp.User"Id"#);
    }

    #[test]
    fn setting_names_compare_case_insensitively_even_when_quoted() {
        let n = Name::new(br#""MyApp".User_Id"#);
        assert!(n.eq_ignore_ascii_case(b"myapp.user_id"));
        assert!(!n.eq_ignore_ascii_case(b"myapp.user"));
        assert!(!n.is(b"myapp.user_id") && n.is(b"MyApp.user_id"));
        assert_eq!(n.to_string(), "MyApp.user_id");
    }
}
