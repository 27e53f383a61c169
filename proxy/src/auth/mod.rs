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

pub mod secrets;
pub mod userlist;

pub use secrets::{Md5Hash, Password, ScramVerifier, Secret};
