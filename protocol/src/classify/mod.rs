//! SQL classification for routing and pooling, on a lexer that follows Postgres' own.
//!
//! - [`lexer`]: tokens of SQL text as bytes, borrowed, with Postgres' rules for quotes (`''`,
//!   `E'\''`, `U&''`, `$tag$…$tag$`), nested `/* */` comments and `--` comments.
//! - [`split`]: statement boundaries (a `;` outside quotes, comments, parentheses and
//!   `BEGIN ATOMIC … END` bodies).
//! - [`session_effects`]: what each statement does to session state, for transaction pooling:
//!   settings to replay, or a [`Reason`] to pin the client to its server connection.
//! - [`read_verdict`]: whether a query string only reads, so its transaction may run on a replica.
//!
//! Nothing here allocates or panics, whatever the input: text that cannot be understood (an
//! unterminated quote, an unknown `SET` form) is reported as [`Reason::Unsure`], and unsure means
//! pin (and, for routing, primary).
//!
//! The check that runs on every Query and Parse in pooled mode,
//! `session_effects(sql).affects_session()`, walks the tokens once and allocates nothing: tokens,
//! names and values are slices of `sql`, and look-ahead copies a few words of lexer state.
//!
//! Not seen (they look like ordinary queries): session state changed inside functions the query
//! calls (`set_config`, temporary tables, advisory locks in a PL/pgSQL function), and
//! `currval`/`lastval`, which read the session's last `nextval`.

mod effect;
pub mod lexer;
mod name;
mod read;
mod session;
mod set;
pub mod split;

pub use effect::{Discard, Effect, Reason, Tx};
pub use lexer::{Lexer, Syntax, Token, TokenKind};
pub use name::{Name, NameBytes, Value};
pub use read::{Verdict, Why, read_verdict};
pub use session::{Effects, plain_select, session_effects, session_effects_with};
pub use split::{Statement, StatementTokens, Statements, statements};

#[cfg(test)]
mod tests;
