//! Authentication by pgsteer itself, for pooled mode: user secrets, and the
//! SCRAM-SHA-256(-PLUS), md5 and cleartext exchanges as pure state machines,
//! towards clients (pgsteer checks the password) and towards Postgres
//! (pgsteer logs in as the client's user without storing plaintext passwords).
//!
//! Nothing here does IO. The session parses the frames and feeds in message
//! bodies — the mechanism and data of a SASLInitialResponse, the data of a
//! SASLResponse, the body of a PasswordMessage — and writes out the bytes it
//! gets back as AuthenticationSASLContinue / AuthenticationSASLFinal data.
//! Randomness (nonces, md5 salts) is passed in, so exchanges replay in tests.
//!
//! # The flow
//!
//! ```
//! use pgsteer::auth::scram::{self, ClientBinding, SaltKey, ServerBinding, ServerContext};
//! use pgsteer::auth::scram::{ScramClient, ScramServer};
//! use pgsteer::auth::{Credentials, Password, Secret};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per process: the key for derived salts. Per user: the secret (auth_file or auth_query).
//! let salt_key = SaltKey::generate()?;
//! let secret = Secret::Scram(scram::verifier_for(b"pencil", b"0123456789abcdef", 4096));
//! let binding = ServerBinding::None; // a plaintext listener offers SCRAM-SHA-256 only
//!
//! // A client (pgsteer's own client half here, standing in for libpq) logs in to pgsteer.
//! let password = Credentials::Password(Password::new("pencil"));
//! let client = ScramClient::new(&password, ClientBinding::Unsupported, &scram::new_nonce()?)?;
//! // pgsteer sent AuthenticationSASL(binding.mechanisms()); SASLInitialResponse arrives:
//! let ctx = ServerContext { user: "alice", secret: Some(&secret), binding: &binding, salt_key: &salt_key };
//! let nonce = scram::new_nonce()?;
//! let (server, server_first) =
//!     ScramServer::start(ctx, client.mechanism(), client.client_first(), &nonce)?;
//! // AuthenticationSASLContinue(server_first) goes out, SASLResponse(client_final) comes in:
//! let (client, client_final) = client.server_first(&server_first)?;
//! let success = server.finish(&client_final)?; // a wrong password: AuthError::Failed, 28P01
//! // AuthenticationSASLFinal(success.server_final), then AuthenticationOk:
//! client.server_final(&success.server_final)?;
//!
//! // pgsteer logs in to Postgres as "alice" with the ClientKey the client just proved:
//! assert!(matches!(success.credentials, Credentials::Scram(_)));
//! let login = ScramClient::new(&success.credentials, ClientBinding::Unsupported, &nonce)?;
//! // SASLInitialResponse(login.mechanism(), login.client_first()), then login.server_first(…)
//! // and .server_final(…) with the data of Postgres's AuthenticationSASLContinue / Final.
//! # Ok(()) }
//! ```
//!
//! md5 works the same way with [`md5::Md5Server`] and [`md5::client_response`];
//! cleartext (only ever over TLS; the session enforces that) with
//! [`cleartext::verify`]. [`choose_method`] says which one a client is asked for.

pub mod cleartext;
pub mod endpoint;
pub mod md5;
pub mod scram;
pub mod secrets;
pub mod store;
pub mod userlist;

use std::fmt;

use pgsteer_protocol::sqlstate::SqlState;

pub use scram::ScramKeys;
pub use secrets::{Md5Hash, Password, ScramVerifier, Secret};

/// What pgsteer can log in to Postgres with as a user, after that user's
/// client authenticated: never more than the secret pgsteer already had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A plaintext secret: logs in with SCRAM, md5 or cleartext.
    Password(Password),
    /// An md5 secret: logs in only where the server asks for md5.
    Md5(Md5Hash),
    /// The ClientKey a client proved against a SCRAM verifier: logs in only
    /// where the server asks for SCRAM with the verifier's salt and iterations.
    Scram(ScramKeys),
    /// Nothing (`[auth] method = "trust"`): logs in only where the server asks for nothing.
    None,
}

/// Why a client's authentication failed; for the log, never for the client,
/// who only sees "password authentication failed" in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// No such user (or `auth_query` found none).
    UnknownUser,
    /// The user has no password (NULL `rolpassword`, empty plaintext).
    NoPassword,
    /// The secret cannot check this method (an md5 hash for SCRAM, a SCRAM verifier for md5).
    UnusableSecret,
    /// The password is wrong.
    WrongPassword,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureReason::UnknownUser => "user does not exist",
            FailureReason::NoPassword => "user has no password",
            FailureReason::UnusableSecret => "user's secret does not support this method",
            FailureReason::WrongPassword => "password does not match",
        })
    }
}

/// Why a client could not authenticate to pgsteer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user or unusable secret: indistinguishable to
    /// the client on purpose (no user enumeration). The reason is for logs.
    #[error("password authentication failed for user \"{user}\"")]
    Failed {
        /// The user name from the startup packet.
        user: String,
        /// The real reason, for the log.
        reason: FailureReason,
    },
    /// The client's message is malformed or out of turn.
    #[error("invalid authentication message: {0}")]
    Malformed(&'static str),
    /// SCRAM channel binding did not match pgsteer's certificate (a man in
    /// the middle?), or a client that could bind was told pgsteer cannot
    /// (a downgrade).
    #[error("SCRAM channel binding failed: {0}")]
    ChannelBinding(&'static str),
    /// The operating system's random generator failed.
    #[error("could not generate random bytes: {0}")]
    Random(getrandom::Error),
}

impl AuthError {
    /// The SQLSTATE for the client's ErrorResponse, as Postgres sends it:
    /// `28P01` for failed passwords, `28000` for channel-binding failures,
    /// `08P01` for protocol violations, `XX000` for pgsteer's own failures.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AuthError::Failed { .. } => SqlState::INVALID_PASSWORD,
            AuthError::ChannelBinding(_) => SqlState::INVALID_AUTHORIZATION,
            AuthError::Malformed(_) => SqlState::PROTOCOL_VIOLATION,
            AuthError::Random(_) => SqlState::INTERNAL_ERROR,
        }
    }
}

/// Why pgsteer could not log in to Postgres as a user.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The server's authentication message is malformed.
    #[error("invalid authentication message from the server: {0}")]
    Malformed(&'static str),
    /// The server offered no SASL mechanism pgsteer speaks.
    #[error("the server offers neither SCRAM-SHA-256 nor SCRAM-SHA-256-PLUS")]
    NoCommonMechanism,
    /// What pgsteer knows cannot answer what the server asks.
    #[error("cannot answer the server's authentication request: {0}")]
    Unusable(&'static str),
    /// The server's salt or iteration count differ from the verifier's: the
    /// password was changed on the server, so the userlist or the cached
    /// `auth_query` result is stale.
    #[error(
        "the server's SCRAM salt or iteration count differ from pgsteer's verifier (password changed?)"
    )]
    VerifierChanged,
    /// The server asks for more PBKDF2 iterations than pgsteer runs.
    #[error("the server asks for {0} SCRAM iterations, more than pgsteer runs")]
    TooManyIterations(u32),
    /// The server's SCRAM signature is wrong: it does not know the verifier.
    #[error("the server's SCRAM signature is wrong")]
    ServerSignature,
    /// The server refused the SCRAM exchange (`e=` in server-final).
    #[error("the server refused the SCRAM exchange: {0}")]
    Rejected(String),
}

/// How pgsteer asks a client for its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SCRAM-SHA-256, and -PLUS when the connection offers channel binding.
    Scram,
    /// md5 (AuthenticationMD5Password).
    Md5,
}

/// The method for a user: md5 only for users whose secret is an md5 hash and
/// only where md5 is configured; SCRAM for everyone else, unknown users
/// included (so they look like the many).
pub fn choose_method(secret: Option<&Secret>, md5_allowed: bool) -> Method {
    match secret {
        Some(Secret::Md5(_)) if md5_allowed => Method::Md5,
        _ => Method::Scram,
    }
}

/// Strips the NUL that terminates a PasswordMessage body, if present.
fn password_message(body: &[u8]) -> &[u8] {
    body.strip_suffix(b"\0").unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_28p01_binding_failures_to_28000_and_protocol_errors_to_08p01() {
        let failed = AuthError::Failed {
            user: "alice".into(),
            reason: FailureReason::UnknownUser,
        };
        assert_eq!(failed.sqlstate().code(), "28P01");
        assert_eq!(
            failed.to_string(),
            "password authentication failed for user \"alice\""
        );
        assert_eq!(AuthError::Malformed("x").sqlstate().code(), "08P01");
        assert_eq!(AuthError::ChannelBinding("x").sqlstate().code(), "28000");
    }

    #[test]
    fn md5_is_chosen_only_for_md5_secrets_where_allowed() {
        let md5 = Secret::parse("md5a3556571e93b0d20722ba62be61e8c2d").unwrap();
        let plain = Secret::parse("pencil").unwrap();
        assert_eq!(choose_method(Some(&md5), true), Method::Md5);
        assert_eq!(choose_method(Some(&md5), false), Method::Scram);
        assert_eq!(choose_method(Some(&plain), true), Method::Scram);
        assert_eq!(choose_method(None, true), Method::Scram);
    }
}
