//! Statement boundaries: where a `;` ends a statement, the way Postgres and psql see it.
//!
//! A `;` inside quotes, dollar quotes or comments is never a boundary (the [`Lexer`] takes care of
//! that). Two more places keep a `;` inside its statement: parentheses (`CREATE RULE … DO (…; …)`),
//! and a `BEGIN ATOMIC … END` body of `CREATE [OR REPLACE] {FUNCTION|PROCEDURE}`, found with psql's
//! heuristic (`psqlscan.l`: `BEGIN`/`CASE` open, `END` closes, only outside parentheses of such a
//! statement). Text that is not valid SQL is still split somewhere; the server rejects the whole
//! query string before running any of it.

use super::lexer::{Lexer, Syntax, Token, TokenKind};

/// The tokens of one statement: stops after the `;` that ends it or at the end of the input.
///
/// `Copy`, so a caller can look ahead by copying it. The terminating `;` is consumed but not
/// yielded.
#[derive(Debug, Clone, Copy)]
pub struct StatementTokens<'a> {
    lexer: Lexer<'a>,
    paren_depth: u32,
    begin_depth: u32,
    /// First letters of the first four words if each is one of create/or/replace/function/procedure.
    head: [u8; 4],
    words: u32,
    done: bool,
    input_ended: bool,
    unterminated: bool,
}

impl<'a> StatementTokens<'a> {
    /// Tokens of the statement that starts where `lexer` is.
    pub fn new(lexer: Lexer<'a>) -> Self {
        StatementTokens {
            lexer,
            paren_depth: 0,
            begin_depth: 0,
            head: [0; 4],
            words: 0,
            done: false,
            input_ended: false,
            unterminated: false,
        }
    }

    /// The whole input.
    pub fn source(&self) -> &'a [u8] {
        self.lexer.source()
    }

    /// Whether a token so far was [`TokenKind::Unterminated`].
    pub fn saw_unterminated(&self) -> bool {
        self.unterminated
    }

    /// Whether the statement ended because the input did (rather than at a `;`).
    pub fn input_ended(&self) -> bool {
        self.input_ended
    }

    /// The lexer, positioned after what has been consumed: after the terminating `;` once this
    /// iterator has returned `None`.
    pub fn into_lexer(self) -> Lexer<'a> {
        self.lexer
    }

    /// Consumes the rest of the statement; returns the offsets from the first to the end of the last
    /// remaining token, if there were any.
    pub fn rest_span(&mut self) -> Option<(usize, usize)> {
        let first = self.next()?;
        let end = self.by_ref().last().map_or(first.end(), |t| t.end());
        Some((first.start, end))
    }

    /// Whether this statement is `CREATE [OR REPLACE] {FUNCTION|PROCEDURE}` (psql's test).
    fn is_routine_definition(&self) -> bool {
        matches!(
            self.head,
            [b'c', b'f' | b'p', ..] | [b'c', b'o', b'r', b'f' | b'p']
        )
    }

    /// Follows `BEGIN … END` nesting of a routine body for the word `t`.
    fn track_word(&mut self, t: &Token<'a>) {
        // Only the first four words can make the head.
        if let Some(slot) = self.head.get_mut(self.words as usize) {
            let letter = [&b"create"[..], b"or", b"replace", b"function", b"procedure"]
                .into_iter()
                .find(|w| t.text.eq_ignore_ascii_case(w))
                .and_then(|w| w.first().copied());
            if let Some(letter) = letter {
                *slot = letter;
            }
        }
        self.words = self.words.saturating_add(1);
        if self.paren_depth != 0 || !self.is_routine_definition() {
            return;
        }
        // CASE also ends with END; it only matters inside a BEGIN.
        if t.is_keyword(b"begin") || (t.is_keyword(b"case") && self.begin_depth > 0) {
            self.begin_depth = self.begin_depth.saturating_add(1);
        } else if t.is_keyword(b"end") {
            self.begin_depth = self.begin_depth.saturating_sub(1);
        }
    }
}

impl<'a> Iterator for StatementTokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if self.done {
            return None;
        }
        let Some(t) = self.lexer.next() else {
            self.done = true;
            self.input_ended = true;
            return None;
        };
        match t.kind {
            TokenKind::Semicolon if self.paren_depth == 0 && self.begin_depth == 0 => {
                self.done = true;
                return None;
            }
            TokenKind::LParen => self.paren_depth = self.paren_depth.saturating_add(1),
            TokenKind::RParen => self.paren_depth = self.paren_depth.saturating_sub(1),
            TokenKind::Unterminated => self.unterminated = true,
            TokenKind::Ident => self.track_word(&t),
            _ => {}
        }
        Some(t)
    }
}

impl core::iter::FusedIterator for StatementTokens<'_> {}

/// One statement of a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    /// From its first token to the end of its last, without the terminating `;`.
    pub text: &'a [u8],
    /// Byte offset of `text` in the query string.
    pub start: usize,
    /// It contains a quote or comment that never ends: treat it as "unsure".
    pub unterminated: bool,
    syntax: Syntax,
}

impl<'a> Statement<'a> {
    /// Its tokens, lexed again (offsets relative to `text`).
    pub fn tokens(&self) -> StatementTokens<'a> {
        StatementTokens::new(Lexer::with_syntax(self.text, self.syntax))
    }
}

/// The non-empty statements of a query string; see [`statements`].
#[derive(Debug, Clone)]
pub struct Statements<'a> {
    lexer: Lexer<'a>,
}

/// Splits a query string into its statements, skipping empty ones (`;;`, comments only).
pub fn statements(sql: &[u8], syntax: Syntax) -> Statements<'_> {
    Statements {
        lexer: Lexer::with_syntax(sql, syntax),
    }
}

impl<'a> Iterator for Statements<'a> {
    type Item = Statement<'a>;

    fn next(&mut self) -> Option<Statement<'a>> {
        loop {
            let mut tokens = StatementTokens::new(self.lexer);
            let span = tokens.rest_span();
            let ended = tokens.input_ended();
            let unterminated = tokens.saw_unterminated();
            self.lexer = tokens.into_lexer();
            match span {
                Some((start, end)) => {
                    return Some(Statement {
                        text: self.lexer.source().get(start..end).unwrap_or_default(),
                        start,
                        unterminated,
                        syntax: self.lexer.syntax(),
                    });
                }
                None if ended => return None,
                None => {}
            }
        }
    }
}

impl core::iter::FusedIterator for Statements<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<String> {
        statements(sql.as_bytes(), Syntax::default())
            .map(|s| String::from_utf8_lossy(s.text).into_owned())
            .collect()
    }

    #[test]
    fn semicolons_split_statements_outside_quotes_and_comments() {
        assert_eq!(
            split("SET a = 1; SELECT ';' -- ;\n ; LISTEN c /* ; */"),
            ["SET a = 1", "SELECT ';'", "LISTEN c"]
        );
    }

    #[test]
    fn empty_statements_are_skipped() {
        assert_eq!(split(";; -- x\n ; /* y */"), Vec::<String>::new());
        assert_eq!(split(" ;SELECT 1;; "), ["SELECT 1"]);
    }

    #[test]
    fn a_function_body_in_dollar_quotes_stays_one_statement() {
        let sql =
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; SELECT 2 $$ LANGUAGE sql; SELECT f()";
        assert_eq!(
            split(sql),
            [
                "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; SELECT 2 $$ LANGUAGE sql",
                "SELECT f()"
            ]
        );
    }

    #[test]
    fn a_begin_atomic_body_stays_one_statement() {
        let sql = "create or replace procedure p() language sql begin atomic \
                   insert into t values (case when true then 1 end); select 1; end; commit";
        assert_eq!(split(sql).len(), 2);
        assert_eq!(split(sql)[1], "commit");
        // Outside a routine definition BEGIN and END are transaction statements.
        assert_eq!(split("begin; select 1; end"), ["begin", "select 1", "end"]);
    }

    #[test]
    fn semicolons_inside_parentheses_do_not_split() {
        assert_eq!(
            split("CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT 1"),
            [
                "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b)",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn an_unterminated_statement_is_flagged() {
        let s: Vec<_> = statements(b"SELECT 1; SELECT 'x; y", Syntax::default()).collect();
        assert_eq!(s.len(), 2);
        assert!(!s[0].unterminated && s[1].unterminated);
        assert_eq!(s[1].start, 10);
    }
}
