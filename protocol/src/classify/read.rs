//! Whether a query string only reads: the routing verdict of pooled `auto` routing, per
//! transaction. A transaction goes to a replica only when every statement of its first query
//! string is understood to read and nothing else; anything not fully understood goes to the
//! primary.
//!
//! (First cut: only `SHOW` and plain `SELECT`s with no function call, locking clause or `INTO`.)

use super::lexer::{Lexer, Syntax};
use super::split::StatementTokens;

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
/// outside the built-in list (lower-case name, without schema) only reads.
pub fn read_verdict(sql: &[u8], syntax: Syntax, read_only: &dyn Fn(&[u8]) -> bool) -> Verdict {
    let _ = read_only;
    let mut lexer = Lexer::with_syntax(sql, syntax);
    let mut any = false;
    loop {
        let mut st = StatementTokens::new(lexer);
        let Some(first) = st.next() else {
            lexer = st.into_lexer();
            if st.input_ended() {
                break;
            }
            continue;
        };
        any = true;
        if first.is_keyword(b"select") {
            for t in st.by_ref() {
                if t.text == b"(" || t.is_keyword(b"for") || t.is_keyword(b"into") {
                    return Verdict::Primary(Why::Unsure);
                }
            }
        } else if !first.is_keyword(b"show") {
            return Verdict::Primary(Why::Unsure);
        }
        st.by_ref().for_each(drop);
        if st.saw_unterminated() {
            return Verdict::Primary(Why::Unsure);
        }
        lexer = st.into_lexer();
    }
    if any {
        Verdict::Replica
    } else {
        Verdict::Primary(Why::Unsure)
    }
}
