//! One pass over a statement's tokens looking for what makes a read more than a read: words that
//! write, lock or change the session (anywhere, so data-modifying CTEs and `SELECT … INTO` are
//! found too), locking clauses, and calls of functions not known to only read.
//!
//! A word followed by `(` is a call unless the grammar says otherwise, which the reader tells
//! from the tokens around it: a keyword (`IN (`, `OVER (`, `numeric(10, 2)`), a type after `::`
//! or an alias after `AS` (`AS t(a, b)`), a column list after `)` or a quoted alias
//! (`FROM f() g(i)`), a `TABLESAMPLE` method, or a CTE's column list (`WITH t(a) AS (…)`). An
//! alias with a column list after an unquoted name without `AS` (`FROM t x(a)`) is taken for a
//! call: when in doubt, the primary.

use super::super::effect::Word;
use super::super::lexer::{Token, TokenKind, Unescape};
use super::super::split::StatementTokens;
use super::{Why, words};

/// Postgres keeps the first 63 bytes of a name (`NAMEDATALEN - 1`); longer names are not looked
/// up (they are never built-in, and their truncation is not worth getting right).
const NAME_MAX: usize = 63;

/// What the tokens just read say about the next name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Nothing.
    Other,
    /// `::` or `AS`: a type name or an alias comes next.
    CastOrAs,
    /// That type name or alias (`(` after it is a type modifier or a column list).
    Name,
    /// A `.` inside a qualified type name: its next part comes next.
    Dot,
}

/// Reads the tokens of one statement; see the module documentation.
pub(super) struct Reader<'a, 'f> {
    read_only: &'f dyn Fn(&[u8]) -> bool,
    prev: Option<Token<'a>>,
    /// The token before the last `.`: the schema when a function's name follows that `.`.
    schema: Option<Token<'a>>,
    after: After,
    depth: u32,
    /// The parenthesis depth of a name after `WITH`, `RECURSIVE` or `,` that was followed by `(`
    /// and is not a known function: a CTE's column list if `AS (` follows its `)`, else a call.
    cte: Option<u32>,
}

impl<'a, 'f> Reader<'a, 'f> {
    /// A reader for one statement; `read_only` says whether a function outside the built-in
    /// list only reads.
    pub(super) fn new(read_only: &'f dyn Fn(&[u8]) -> bool) -> Self {
        Reader {
            read_only,
            prev: None,
            schema: None,
            after: After::Other,
            depth: 0,
            cte: None,
        }
    }

    /// Reads `first` and the rest of the statement, showing each token to `each` first. `Ok`
    /// when nothing in it needs the primary.
    pub(super) fn read(
        mut self,
        first: Token<'a>,
        st: &mut StatementTokens<'a>,
        mut each: impl FnMut(&Token<'a>),
    ) -> Result<(), Why> {
        let mut cur = Some(first);
        while let Some(t) = cur {
            let next = st.next();
            each(&t);
            self.token(&t, next.as_ref(), st)?;
            cur = next;
        }
        match self.cte {
            Some(_) => Err(Why::Function),
            None => Ok(()),
        }
    }

    /// One token `t`, followed by `next` and then by `rest`.
    fn token(
        &mut self,
        t: &Token<'a>,
        next: Option<&Token<'a>>,
        rest: &StatementTokens<'a>,
    ) -> Result<(), Why> {
        let dotted = self.prev.is_some_and(|p| p.kind == TokenKind::Dot);
        match t.kind {
            TokenKind::Unterminated => return Err(Why::Unsure),
            // After a `.` a word is a name (`t.comment`), never a command or clause.
            TokenKind::Ident if !dotted => self.word(t)?,
            TokenKind::Dot => self.schema = self.prev,
            TokenKind::LParen => self.depth = self.depth.saturating_add(1),
            TokenKind::RParen => {
                self.depth = self.depth.saturating_sub(1);
                if self.cte == Some(self.depth) {
                    self.cte = None;
                    if !cte_body_follows(next, *rest) {
                        return Err(Why::Function);
                    }
                }
            }
            _ => {}
        }
        if matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent)
            && next.is_some_and(|n| n.kind == TokenKind::LParen)
        {
            self.call(t, dotted)?;
        }
        self.after = self.next_after(t);
        self.prev = Some(*t);
        Ok(())
    }

    /// An unquoted word that is not part of a qualified name.
    fn word(&self, t: &Token<'a>) -> Result<(), Why> {
        let word = Word::of(Some(t));
        let word = word.as_bytes();
        // FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE.
        if self.prev.is_some_and(|p| p.is_keyword(b"for"))
            && matches!(word, b"update" | b"no" | b"share" | b"key")
        {
            return Err(Why::Locks);
        }
        words::writing(word).map_or(Ok(()), Err)
    }

    /// The name `t` is followed by `(`: a call, unless the tokens around say otherwise.
    #[inline(never)] // rare: keeps the per-token path small
    fn call(&mut self, t: &Token<'a>, dotted: bool) -> Result<(), Why> {
        if matches!(self.after, After::CastOrAs | After::Dot) {
            return Ok(()); // `x::numeric(10, 2)`, `AS g(i)`, `::pg_catalog.varchar(3)`
        }
        let mut buf = [0; NAME_MAX];
        let name = stored_name(t, &mut buf);
        if !dotted && self.not_a_call(t, name) {
            return Ok(());
        }
        let known = name.is_some_and(|name| {
            let builtin = || words::is_read_only_function(name);
            let configured = || (self.read_only)(name);
            match self.schema.filter(|_| dotted) {
                None => builtin() || configured(),
                Some(schema) if schema.is_name(b"pg_catalog") => builtin(),
                Some(_) => configured(),
            }
        });
        if known {
            return Ok(());
        }
        let cte_name = self.prev.is_some_and(|p| {
            p.kind == TokenKind::Comma || p.is_keyword(b"with") || p.is_keyword(b"recursive")
        });
        if cte_name && !dotted && self.cte.is_none() {
            self.cte = Some(self.depth);
            return Ok(());
        }
        Err(Why::Function)
    }

    /// Whether an unqualified name followed by `(` is not a function's: a keyword, a column list
    /// after `)` or a quoted name (`FROM f() g(i)`, `FROM "t" x(a)`: nothing else can come
    /// between them), or a `TABLESAMPLE` method.
    fn not_a_call(&self, t: &Token<'a>, name: Option<&[u8]>) -> bool {
        (t.kind == TokenKind::Ident && name.is_some_and(words::is_not_a_call))
            || self.prev.is_some_and(|p| {
                matches!(p.kind, TokenKind::RParen | TokenKind::QuotedIdent)
                    || p.is_keyword(b"tablesample")
            })
    }

    /// What `t` says about the next name.
    fn next_after(&self, t: &Token<'a>) -> After {
        let cast = t.kind == TokenKind::Punct
            && t.text == b":"
            && self.prev.is_some_and(|p| {
                p.kind == TokenKind::Punct && p.text == b":" && p.end() == t.start
            });
        match t.kind {
            _ if cast || t.is_keyword(b"as") => After::CastOrAs,
            TokenKind::Ident | TokenKind::QuotedIdent
                if matches!(self.after, After::CastOrAs | After::Dot) =>
            {
                After::Name
            }
            TokenKind::Dot if self.after == After::Name => After::Dot,
            _ => After::Other,
        }
    }
}

/// The name `t` stands for, as Postgres stores it: an unquoted word folded to lower case, a
/// quoted one as written (`""` unescaped). `None` for a `U&"…"` name, an empty or too long one.
fn stored_name<'b>(t: &Token<'_>, buf: &'b mut [u8; NAME_MAX]) -> Option<&'b [u8]> {
    let len = match t.kind {
        TokenKind::Ident => fill(buf, t.text.iter().map(u8::to_ascii_lowercase)),
        TokenKind::QuotedIdent if t.text.first() == Some(&b'"') => {
            fill(buf, Unescape::new(t.inner(), b'"'))
        }
        _ => None,
    }?;
    buf.get(..len).filter(|name| !name.is_empty())
}

/// Copies `bytes` into `buf`; their count, or `None` if they do not fit.
fn fill(buf: &mut [u8], bytes: impl Iterator<Item = u8>) -> Option<usize> {
    let mut len = 0;
    for b in bytes {
        *buf.get_mut(len)? = b;
        len += 1;
    }
    Some(len)
}

/// After the `)` that closes a CTE's column list: `AS [[NOT] MATERIALIZED] (`, where `next` is
/// the token after the `)` and `rest` follows it.
fn cte_body_follows(next: Option<&Token<'_>>, mut rest: StatementTokens<'_>) -> bool {
    if !next.is_some_and(|t| t.is_keyword(b"as")) {
        return false;
    }
    let mut t = rest.next();
    if t.is_some_and(|t| t.is_keyword(b"not")) {
        t = rest.next();
    }
    if t.is_some_and(|t| t.is_keyword(b"materialized")) {
        t = rest.next();
    }
    t.is_some_and(|t| t.kind == TokenKind::LParen)
}
