//! Why a session ended early, and which side failed: that picks the SQLSTATE the client sees,
//! the metric label of a refused connection, and the log level.

use pgsteer_protocol::sqlstate::SqlState;
use tracing::{debug, info, warn};

/// Which side of a session an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: bad input, or it went away. Logged at debug.
    Client,
    /// The backend. Logged at warn.
    Server,
    /// pgsteer itself (routing, limits, shutdown). Logged at info.
    Internal,
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    /// Which side failed.
    pub side: Side,
    /// The SQLSTATE to send the client with a FATAL, if anything can be sent.
    pub code: Option<SqlState>,
    /// Human-readable reason (sent to the client when `code` is set).
    pub message: String,
    /// The backend could not take the session and nothing reached the client
    /// yet: the session may be routed again (held like a missing backend).
    pub retryable: bool,
    /// The IO error underneath, if any.
    #[source]
    pub source: Option<std::io::Error>,
}

impl SessionError {
    fn new(side: Side, code: Option<SqlState>, message: String) -> SessionError {
        SessionError {
            side,
            code,
            message,
            retryable: false,
            source: None,
        }
    }

    /// An error the client is told about.
    pub fn fatal(side: Side, code: SqlState, message: impl Into<String>) -> SessionError {
        SessionError::new(side, Some(code), message.into())
    }

    /// An ending nothing can or need be said about.
    pub fn quiet(side: Side, message: impl Into<String>) -> SessionError {
        SessionError::new(side, None, message.into())
    }

    /// The backend refused or dropped the session before anything reached
    /// the client (starting up, shutting down, crashed): route again.
    pub fn unavailable(message: String) -> SessionError {
        SessionError {
            retryable: true,
            ..SessionError::fatal(Side::Server, SqlState::CANNOT_CONNECT_NOW, message)
        }
    }

    /// Malformed client input: `08P01`.
    pub fn client_protocol(message: String) -> SessionError {
        SessionError::fatal(
            Side::Client,
            SqlState::PROTOCOL_VIOLATION,
            format!("pgsteer: invalid client message: {message}"),
        )
    }

    /// Malformed backend output: the client is told the backend failed.
    pub fn server_protocol(message: String) -> SessionError {
        SessionError::fatal(
            Side::Server,
            SqlState::CONNECTION_FAILURE,
            format!("pgsteer: invalid message from the server: {message}"),
        )
    }

    /// An IO error on one side.
    pub fn io(side: Side, e: std::io::Error) -> SessionError {
        let error = match side {
            Side::Server => SessionError::fatal(
                side,
                SqlState::CONNECTION_FAILURE,
                format!("pgsteer: lost the connection to the server: {e}"),
            ),
            _ => SessionError::quiet(side, format!("client connection error: {e}")),
        };
        SessionError {
            source: Some(e),
            ..error
        }
    }

    /// Label for `pgsteer_client_connections_rejected_total`, if this error
    /// refused the client before a session was established.
    pub fn rejection(&self) -> Option<&'static str> {
        let code = self.code?;
        Some(match code {
            SqlState::PROTOCOL_VIOLATION => "protocol_violation",
            SqlState::CANNOT_CONNECT_NOW => "no_backend",
            SqlState::TOO_MANY_CONNECTIONS => "too_many_connections",
            SqlState::INVALID_AUTHORIZATION
            | SqlState::UNDEFINED_OBJECT
            | SqlState::INVALID_PARAMETER_VALUE => "bad_startup",
            SqlState::UNABLE_TO_CONNECT => "unknown_member",
            _ => return None,
        })
    }

    /// Logs the error at its side's level.
    pub fn log(&self) {
        let code = self.code.map(|c| c.code()).unwrap_or("-");
        match self.side {
            Side::Client => {
                debug!(error = %self.message, sqlstate = code, "session ended by the client")
            }
            Side::Server => {
                warn!(error = %self.message, sqlstate = code, "session ended by the server")
            }
            Side::Internal => info!(error = %self.message, sqlstate = code, "session refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_maps_io_errors_to_what_the_client_can_be_told() {
        let e = SessionError::io(Side::Server, std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(e.code, Some(SqlState::CONNECTION_FAILURE));
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io error is kept"
        );
        let e = SessionError::io(Side::Client, std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(e.code, None, "a client that went away is told nothing");
    }

    #[test]
    fn refusals_before_a_session_get_their_metric_label() {
        let table = [
            (
                SessionError::client_protocol("x".into()),
                Some("protocol_violation"),
            ),
            (SessionError::unavailable("x".into()), Some("no_backend")),
            (
                SessionError::fatal(Side::Internal, SqlState::UNABLE_TO_CONNECT, "x"),
                Some("unknown_member"),
            ),
            (SessionError::server_protocol("x".into()), None),
            (SessionError::quiet(Side::Client, "x"), None),
        ];
        for (e, label) in table {
            assert_eq!(e.rejection(), label, "{e}");
        }
        assert!(SessionError::unavailable("x".into()).retryable);
    }
}
