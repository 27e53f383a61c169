//! What a statement does to the session ([`Effect`]), why a client must keep its server
//! connection ([`Reason`]), and [`Word`], the lowercased keyword the readers dispatch on.

use core::fmt;

use super::lexer::{Token, TokenKind};
use super::name::{Name, Value};

/// What one statement does to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Nothing that outlives its transaction: queries, DML, most DDL, `NOTIFY`, `UNLISTEN`,
    /// `SET TRANSACTION`, `SET CONSTRAINTS`, `COMMIT PREPARED`, …
    Other,
    /// Transaction control.
    Transaction(Tx),
    /// `SET` of a setting (also `SET TIME ZONE` → `timezone`, `SET SCHEMA` → `search_path`,
    /// `SET NAMES` → `client_encoding`, `SET XML OPTION` → `xmloption`).
    Set {
        /// The setting; compare with [`Name::eq_ignore_ascii_case`].
        name: Name<'a>,
        /// The new value; [`Value::Default`] resets it.
        value: Value<'a>,
        /// It lasts only until the end of the transaction: `SET LOCAL`, and the
        /// `transaction_isolation`/`_read_only`/`_deferrable` settings. Nothing to replay.
        local: bool,
    },
    /// `RESET name` (also `RESET TIME ZONE`).
    Reset {
        /// The setting.
        name: Name<'a>,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD …`.
    Discard(Discard),
    /// SQL `EXECUTE name`: runs a prepared statement, which may have been prepared with the
    /// protocol's Parse (same namespace) or by SQL `PREPARE` (which pinned).
    Execute {
        /// Statement name; compare with [`Name::is`].
        name: Name<'a>,
    },
    /// SQL `DEALLOCATE [PREPARE] {name | ALL}`; `None` is `ALL`. Protocol-level statements share
    /// the namespace.
    Deallocate {
        /// Statement name, or `None` for `ALL`.
        name: Option<Name<'a>>,
    },
    /// State that cannot move to another server connection: pin the client to this one.
    Pin(Reason),
}

impl Effect<'_> {
    /// Whether the pool must act on this statement: `false` for [`Effect::Other`],
    /// [`Effect::Transaction`] and a local [`Effect::Set`].
    pub fn affects_session(&self) -> bool {
        !matches!(
            self,
            Effect::Other | Effect::Transaction(_) | Effect::Set { local: true, .. }
        )
    }
}

/// Transaction control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// `BEGIN`/`START TRANSACTION`; `read_only` if its modes say `READ ONLY` (the last of
    /// `READ ONLY`/`READ WRITE` counts).
    Begin {
        /// `READ ONLY` was given.
        read_only: bool,
    },
    /// `COMMIT`/`END`.
    Commit,
    /// `ROLLBACK`/`ABORT`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint,
    /// `RELEASE [SAVEPOINT] name`.
    ReleaseSavepoint,
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackToSavepoint,
    /// `PREPARE TRANSACTION 'gid'`: ends the transaction block like `COMMIT`.
    PrepareTransaction,
}

/// What `DISCARD` throws away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// `DISCARD ALL`: settings, prepared statements, temporary tables, listens, advisory locks, …
    All,
    /// `DISCARD PLANS`.
    Plans,
    /// `DISCARD SEQUENCES`.
    Sequences,
    /// `DISCARD TEMP`/`TEMPORARY`.
    Temp,
}

/// Why a client must keep its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `LISTEN`.
    Listen,
    /// `pg_advisory_lock`, `pg_advisory_lock_shared`, `pg_try_advisory_lock`,
    /// `pg_try_advisory_lock_shared` called (the `_xact_` variants do not pin).
    AdvisoryLock,
    /// A temporary table, sequence or view (`CREATE TEMP …` without `ON COMMIT DROP`,
    /// `SELECT … INTO TEMP`), or any `pg_temp.` object (temporary functions).
    TempTable,
    /// `DECLARE … WITH HOLD`.
    WithHoldCursor,
    /// `SET ROLE`, `SET role = …`, `RESET ROLE`.
    SetRole,
    /// `SET SESSION AUTHORIZATION`, `RESET SESSION AUTHORIZATION`.
    SessionAuthorization,
    /// SQL `PREPARE name AS …`.
    Prepare,
    /// `set_config(…)` whose third argument is not literally true, or `UPDATE pg_settings`.
    SetConfig,
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION …`.
    SessionCharacteristics,
    /// `LOAD 'library'`.
    Load,
    /// `DO`: an anonymous code block can do any of the above where the lexer cannot see it.
    DoBlock,
    /// Text that could not be understood: an unterminated quote or comment, a `SET` form not
    /// recognised, `SET … FROM CURRENT`, `SET TIME ZONE INTERVAL …`.
    Unsure,
}

impl Reason {
    /// Every reason, for registering metric labels up front.
    pub const ALL: [Reason; 12] = [
        Reason::Listen,
        Reason::AdvisoryLock,
        Reason::TempTable,
        Reason::WithHoldCursor,
        Reason::SetRole,
        Reason::SessionAuthorization,
        Reason::Prepare,
        Reason::SetConfig,
        Reason::SessionCharacteristics,
        Reason::Load,
        Reason::DoBlock,
        Reason::Unsure,
    ];

    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Listen => "listen",
            Reason::AdvisoryLock => "advisory_lock",
            Reason::TempTable => "temp_table",
            Reason::WithHoldCursor => "with_hold_cursor",
            Reason::SetRole => "set_role",
            Reason::SessionAuthorization => "session_authorization",
            Reason::Prepare => "prepare",
            Reason::SetConfig => "set_config",
            Reason::SessionCharacteristics => "session_characteristics",
            Reason::Load => "load",
            Reason::DoBlock => "do_block",
            Reason::Unsure => "unsure",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short unquoted word, lowercased on the stack so that it can be `match`ed.
pub(super) struct Word {
    buf: [u8; 16],
    len: usize,
}

impl Word {
    /// The word of `t`, or an empty one if `t` is not an unquoted word of at most 16 bytes.
    pub(super) fn of(t: Option<&Token<'_>>) -> Word {
        let mut w = Word {
            buf: [0; 16],
            len: 0,
        };
        if let Some(t) = t.filter(|t| t.kind == TokenKind::Ident && t.text.len() <= 16) {
            for (dst, src) in w.buf.iter_mut().zip(t.text) {
                *dst = src.to_ascii_lowercase();
            }
            w.len = t.text.len();
        }
        w
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}
