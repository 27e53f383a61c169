//! Whether a query string only reads: the routing verdict of pooled `auto` routing, per
//! transaction. A transaction goes to a replica only when every statement of its first query
//! string is understood to read and nothing else; anything not fully understood goes to the
//! primary.
//!
//! Read-only statements: `SELECT`, `WITH … SELECT`, `VALUES`, `TABLE`, `SHOW`, and `EXPLAIN`
//! (without `ANALYZE`) of one of the first four, with no word that writes, locks or changes the
//! session anywhere in them (so no data-modifying CTE, `INTO` or locking clause), and no call of a
//! function outside the built-in read-only list or the caller's own. A read-only transaction
//! block (`BEGIN READ ONLY`, `START TRANSACTION … READ ONLY`, or `BEGIN; SET TRANSACTION READ
//! ONLY`) may be opened, hold such statements and savepoints, and end with `COMMIT` or
//! `ROLLBACK`; any other transaction block goes to the primary.
//!
//! One pass over the tokens, no allocation, no panic, linear in the input (`reader` tells calls
//! from the parentheses of the grammar; `words` holds the lists).
//!
//! Not seen (they look like reads): writes hidden in views, rules, operators, type input
//! functions, or functions the caller declares read-only. On a replica those fail ("cannot
//! execute … in a read-only transaction") rather than write.

mod reader;
#[cfg(test)]
mod tests;
mod words;

use super::effect::{Effect, Tx, Word};
use super::lexer::{Lexer, Syntax, Token, TokenKind};
use super::session::{self, AccessMode};
use super::split::StatementTokens;
use reader::Reader;

/// Where a transaction that starts with a query string may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Only reads: any replica that is fresh enough.
    Replica,
    /// The primary, and why.
    Primary(Why),
}

/// Why a query string must run on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A statement writes (INSERT, UPDATE, DELETE, MERGE, DDL, a data-modifying CTE, …).
    Writes,
    /// A locking clause (`FOR UPDATE`, `FOR SHARE`, …) or `LOCK`.
    Locks,
    /// `SELECT … INTO`: creates a table.
    Into,
    /// A call of a function not known to only read.
    Function,
    /// Opens a transaction block that is not read-only, or ends/changes one.
    Transaction,
    /// Changes session state (SET, LISTEN, PREPARE, …).
    Session,
    /// Not understood (or empty): when in doubt, the primary.
    Unsure,
}

impl Why {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Writes => "writes",
            Why::Locks => "locks",
            Why::Into => "into",
            Why::Function => "function",
            Why::Transaction => "transaction",
            Why::Session => "session",
            Why::Unsure => "unsure",
        }
    }
}

/// The verdict for `sql` (a Query string or a Parse query); `read_only` says whether a function
/// outside the built-in list only reads. It gets the function's name as Postgres stores it
/// (unquoted names folded to lower case, quoted ones as written), without schema; a name
/// qualified with `pg_catalog` is only looked up in the built-in list.
pub fn read_verdict(sql: &[u8], syntax: Syntax, read_only: &dyn Fn(&[u8]) -> bool) -> Verdict {
    let mut lexer = Lexer::with_syntax(sql, syntax);
    // `None` until the first statement.
    let mut block = None;
    loop {
        let mut st = StatementTokens::new(lexer);
        if let Some(first) = st.next() {
            let now = block.unwrap_or(Block::None);
            match statement(first, &mut st, now, read_only) {
                Ok(next) => block = Some(next),
                Err(why) => return Verdict::Primary(why),
            }
        }
        if st.input_ended() {
            break;
        }
        lexer = st.into_lexer();
    }
    match block {
        Some(Block::None | Block::ReadOnly) => Verdict::Replica,
        Some(Block::Open) => Verdict::Primary(Why::Transaction),
        None => Verdict::Primary(Why::Unsure),
    }
}

/// Where the statements read so far leave the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// No transaction block: each statement runs in the query string's implicit transaction.
    None,
    /// `BEGIN` without `READ ONLY`: read-only only if `SET TRANSACTION READ ONLY` comes next.
    Open,
    /// Inside a read-only transaction block.
    ReadOnly,
}

/// The statement that starts with `first`, inside `block`: where it leaves the transaction, or
/// why it needs the primary. Reads the whole statement when it returns `Ok`.
fn statement<'a>(
    first: Token<'a>,
    st: &mut StatementTokens<'a>,
    block: Block,
    read_only: &dyn Fn(&[u8]) -> bool,
) -> Result<Block, Why> {
    let reader = Reader::new(read_only);
    let word = Word::of(Some(&first));
    let ahead = *st;
    let then_transaction = move || {
        let mut ahead = ahead;
        ahead.next().is_some_and(|t| t.is_keyword(b"transaction"))
    };
    match (word.as_bytes(), block) {
        (b"begin" | b"start", Block::None) => match access_mode(reader, first, st)? {
            Some(true) => Ok(Block::ReadOnly),
            _ => Ok(Block::Open),
        },
        (b"set", Block::Open | Block::ReadOnly) if then_transaction() => {
            match (access_mode(reader, first, st)?, block) {
                (Some(false), _) | (None, Block::Open) => Err(Why::Transaction),
                _ => Ok(Block::ReadOnly),
            }
        }
        (
            b"commit" | b"end" | b"rollback" | b"abort" | b"savepoint" | b"release",
            Block::ReadOnly,
        ) => {
            let effect = session::end(&first, &mut st.clone());
            reader.read(first, st, |_| {})?;
            match effect {
                Effect::Transaction(Tx::Commit | Tx::Rollback) => Ok(Block::None),
                Effect::Transaction(
                    Tx::Savepoint | Tx::ReleaseSavepoint | Tx::RollbackToSavepoint,
                ) => Ok(Block::ReadOnly),
                _ => Err(Why::Transaction),
            }
        }
        (_, Block::Open) => Err(Why::Transaction),
        (b"explain", _) => explain(reader, st).map(|()| block),
        _ if is_query(&first) => reader.read(first, st, |_| {}).map(|()| block),
        (word, _) => Err(words::command(word, then_transaction())),
    }
}

/// Reads transaction modes to the end of the statement: `Some(true)` for `READ ONLY`,
/// `Some(false)` for `READ WRITE`, `None` for neither.
fn access_mode<'a>(
    reader: Reader<'a, '_>,
    first: Token<'a>,
    st: &mut StatementTokens<'a>,
) -> Result<Option<bool>, Why> {
    let mut mode = AccessMode::default();
    reader.read(first, st, |t| mode.see(t))?;
    Ok(mode.read_only)
}

/// Whether a statement starting with `first` is a query: `SELECT`, `WITH`, `VALUES`, `TABLE`,
/// `SHOW`, or a parenthesized `SELECT`.
fn is_query(first: &Token<'_>) -> bool {
    first.kind == TokenKind::LParen
        || matches!(
            Word::of(Some(first)).as_bytes(),
            b"select" | b"with" | b"values" | b"table" | b"show"
        )
}

/// After `EXPLAIN`: `[( option, … )] [ANALYZE] [VERBOSE] statement`. Read-only when nothing asks
/// to run the statement (`ANALYZE`, in either form, goes to the primary whatever its value) and
/// the statement is a query that only reads.
fn explain<'a>(reader: Reader<'a, '_>, st: &mut StatementTokens<'a>) -> Result<(), Why> {
    let mut t = st.next();
    if t.is_some_and(|t| t.kind == TokenKind::LParen) {
        loop {
            let option = st.next().ok_or(Why::Unsure)?;
            match option.kind {
                TokenKind::RParen => break,
                TokenKind::LParen | TokenKind::Unterminated => return Err(Why::Unsure),
                TokenKind::Ident => explain_option(&option)?,
                _ => {}
            }
        }
        t = st.next();
    }
    while let Some(option) = t.filter(|t| {
        t.is_keyword(b"verbose") || t.is_keyword(b"analyze") || t.is_keyword(b"analyse")
    }) {
        explain_option(&option)?;
        t = st.next();
    }
    match t {
        Some(first) if is_query(&first) => reader.read(first, st, |_| {}),
        Some(first) => Err(words::command(Word::of(Some(&first)).as_bytes(), false)),
        None => Err(Why::Unsure),
    }
}

/// A word among `EXPLAIN`'s options.
fn explain_option(t: &Token<'_>) -> Result<(), Why> {
    match Word::of(Some(t)).as_bytes() {
        b"analyze" | b"analyse" => Err(Why::Unsure),
        word => words::writing(word).map_or(Ok(()), Err),
    }
}
