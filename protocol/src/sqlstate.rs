//! SQLSTATE codes pgsteer sends to clients, with the condition names Postgres uses.

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    /// The code as sent on the wire.
    pub const fn code(&self) -> &'static str {
        self.0
    }

    /// `57P01 admin_shutdown`: the session is being closed on purpose (drain, shutdown).
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// `57P03 cannot_connect_now`: no backend for the route right now.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    /// `08006 connection_failure`: the backend went away.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// `08001 sqlclient_unable_to_establish_sqlconnection`: the backend cannot be reached.
    pub const UNABLE_TO_CONNECT: SqlState = SqlState("08001");
    /// `08P01 protocol_violation`: malformed input.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// `53300 too_many_connections`.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// `25006 read_only_sql_transaction`.
    pub const READ_ONLY_SQL_TRANSACTION: SqlState = SqlState("25006");
    /// `feature_not_supported`.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// `idle_in_transaction_session_timeout`.
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState("25P03");
    /// `28000 invalid_authorization_specification`.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// `28P01 invalid_password`.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// `3D000 invalid_catalog_name`.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// `42704 undefined_object`: an unknown `pgsteer.*` setting.
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// `22023 invalid_parameter_value`: a bad value for a `pgsteer.*` setting.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// `40001 serialization_failure`: the transaction was rolled back and may be run again
    /// (its primary went away while it was open).
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    /// `08007 transaction_resolution_unknown`: the connection was lost while a statement that
    /// may have committed ran.
    pub const TRANSACTION_RESOLUTION_UNKNOWN: SqlState = SqlState("08007");
    /// `25P02 in_failed_sql_transaction`: commands are ignored until the end of the block.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    /// `XX000 internal_error`.
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
