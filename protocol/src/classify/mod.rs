//! SQL classification for routing and pooling, on a lexer that follows Postgres' own.
//!
//! - [`lexer`]: tokens of SQL text as bytes, borrowed, with Postgres' rules for quotes (`''`,
//!   `E'\''`, `U&''`, `$tag$…$tag$`), nested `/* */` comments and `--` comments.
//! - [`split`]: statement boundaries (a `;` outside quotes, comments, parentheses and
//!   `BEGIN ATOMIC … END` bodies).
//!
//! Nothing here allocates or panics, whatever the input: an unterminated quote or comment is one
//! [`TokenKind::Unterminated`] token, which callers treat as "unsure".

pub mod lexer;
pub mod split;

pub use lexer::{Lexer, Syntax, Token, TokenKind};
pub use split::{Statement, StatementTokens, Statements, statements};
