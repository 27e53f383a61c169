//! The SCRAM exchange pgsteer runs as the server, towards a client: offer,
//! server-first, proof check, server-final, and the recovered ClientKey for
//! logging in to Postgres. Unknown users get a mock exchange that fails at
//! the proof, with a salt that is stable per user, so they look like real ones.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::messages::{self, Gs2Flag};
use super::{
    DEFAULT_ITERATIONS, SALT_LEN, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramKeys,
    TLS_SERVER_END_POINT, ct_eq, hmac, sha256, verifier_for, xor,
};
use crate::auth::secrets::{Password, ScramVerifier, Secret};
use crate::auth::{AuthError, Credentials, FailureReason};

/// The key from which pgsteer derives per-user salts: for unknown users (the
/// mock exchange) and for plaintext secrets, whose verifier pgsteer derives.
/// Both get the same salt for the same user name, so a plaintext entry and a
/// missing one look alike. Give every pgsteer replica the same key (and keep
/// it across restarts) so salts do not change between connections either;
/// [`SaltKey::generate`] is for a single process. Its `Debug` hides it.
#[derive(Clone)]
pub struct SaltKey([u8; 32]);

impl SaltKey {
    /// A key from configured bytes.
    pub fn new(key: [u8; 32]) -> SaltKey {
        SaltKey(key)
    }

    /// A random key.
    pub fn generate() -> Result<SaltKey, AuthError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(AuthError::Random)?;
        Ok(SaltKey(key))
    }

    /// The salt pgsteer shows for `user` when it has no verifier of its own.
    pub fn salt_for(&self, user: &str) -> [u8; SALT_LEN] {
        let mac = hmac(&self.0, &[b"pgsteer scram salt\0", user.as_bytes()]);
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&mac[..SALT_LEN]);
        salt
    }
}

impl fmt::Debug for SaltKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltKey(<redacted>)")
    }
}

/// What channel binding pgsteer offers on this client connection.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerBinding {
    /// None: a plaintext connection, or TLS with a certificate whose
    /// `tls-server-end-point` hash is undefined. Only SCRAM-SHA-256 is offered.
    None,
    /// TLS, with the `tls-server-end-point` data of pgsteer's own certificate
    /// (see [`crate::auth::endpoint`]). SCRAM-SHA-256-PLUS is offered too.
    TlsServerEndPoint(Vec<u8>),
}

impl ServerBinding {
    /// The mechanisms to list in AuthenticationSASL, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self {
            ServerBinding::None => &[SCRAM_SHA_256],
            ServerBinding::TlsServerEndPoint(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        }
    }
}

impl fmt::Debug for ServerBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerBinding::None => f.write_str("None"),
            ServerBinding::TlsServerEndPoint(_) => f.write_str("TlsServerEndPoint"),
        }
    }
}

/// Who is logging in, and what pgsteer knows about them.
#[derive(Debug, Clone, Copy)]
pub struct ServerContext<'a> {
    /// The user name from the startup packet (SCRAM's own `n=` is ignored, as in Postgres).
    pub user: &'a str,
    /// The user's secret; `None` for an unknown user or one without a password.
    pub secret: Option<&'a Secret>,
    /// The channel binding offered on this connection.
    pub binding: &'a ServerBinding,
    /// The key for derived salts.
    pub salt_key: &'a SaltKey,
}

/// A SCRAM exchange after server-first was sent, waiting for client-final.
pub struct ScramServer {
    user: String,
    verifier: ScramVerifier,
    /// Set when the exchange must fail whatever the client proves.
    doomed: Option<FailureReason>,
    /// The plaintext secret, when that is what the user has.
    password: Option<Password>,
    /// The expected (decoded) `c=` attribute.
    binding_input: Vec<u8>,
    /// Whether the client chose SCRAM-SHA-256-PLUS.
    plus: bool,
    /// client nonce + server nonce.
    nonce: String,
    /// client-first-message-bare "," server-first-message ",".
    auth_message: Vec<u8>,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A successful exchange.
#[derive(Debug)]
pub struct ScramSuccess {
    /// The server-final-message (`v=…`): the data of AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// What pgsteer can now log in to Postgres with as this user.
    pub credentials: Credentials,
}

impl ScramServer {
    /// Starts an exchange from a SASLInitialResponse: its mechanism name and
    /// its data (the client-first-message). Returns the state to keep and the
    /// server-first-message, the data of AuthenticationSASLContinue.
    ///
    /// `server_nonce` is appended to the client's nonce: [`super::new_nonce`]
    /// in production, fixed in tests. It must be printable ASCII without ','.
    ///
    /// For a plaintext secret this derives the verifier: 4096 PBKDF2
    /// iterations, milliseconds of CPU, so run it off the async reactor.
    /// Verifiers and unknown users cost nothing here, so the time taken can
    /// tell a plaintext entry apart: prefer SCRAM verifiers in `auth_file`.
    pub fn start(
        ctx: ServerContext<'_>,
        mechanism: &str,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ScramServer, Vec<u8>), AuthError> {
        if !ctx.binding.mechanisms().contains(&mechanism) {
            return Err(AuthError::Malformed(
                "the client selected a SASL mechanism that was not offered",
            ));
        }
        if !messages::is_printable(server_nonce.as_bytes()) {
            return Err(AuthError::Malformed("invalid server nonce"));
        }
        let first = messages::parse_client_first(client_first).map_err(AuthError::Malformed)?;
        let binding_input = expected_binding(ctx.binding, mechanism, first.flag, first.gs2_header)?;
        let (verifier, doomed, password) = lookup(&ctx);
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&verifier.salt),
            verifier.iterations
        );
        let auth_message = [first.bare, b",", server_first.as_bytes(), b","].concat();
        let state = ScramServer {
            user: ctx.user.to_owned(),
            verifier,
            doomed,
            password,
            binding_input,
            plus: mechanism == SCRAM_SHA_256_PLUS,
            nonce,
            auth_message,
        };
        Ok((state, server_first.into_bytes()))
    }

    /// Checks the client-final-message (the data of the client's SASLResponse).
    /// On success, returns the server-final-message and the credentials for
    /// the server login; a wrong proof, an unknown user or an unusable secret
    /// are all the same [`AuthError::Failed`].
    pub fn finish(self, client_final: &[u8]) -> Result<ScramSuccess, AuthError> {
        let fin = messages::parse_client_final(client_final).map_err(AuthError::Malformed)?;
        if fin.channel_binding != self.binding_input && self.plus {
            return Err(AuthError::ChannelBinding(
                "the client's channel-binding data is not pgsteer's certificate hash",
            ));
        }
        if fin.channel_binding != self.binding_input {
            return Err(AuthError::Malformed("unexpected channel-binding attribute"));
        }
        if fin.nonce != self.nonce.as_bytes() {
            return Err(AuthError::Malformed("the nonce does not match"));
        }
        let auth_message = [&self.auth_message[..], fin.without_proof].concat();
        let client_signature = hmac(&self.verifier.stored_key, &[&auth_message]);
        let client_key = xor(&fin.proof, &client_signature);
        let proven = ct_eq(&sha256(&client_key), &self.verifier.stored_key);
        let fail = |reason| AuthError::Failed {
            user: self.user.clone(),
            reason,
        };
        if let Some(reason) = self.doomed {
            return Err(fail(reason));
        }
        if !proven {
            return Err(fail(FailureReason::WrongPassword));
        }
        let server_signature = hmac(&self.verifier.server_key, &[&auth_message]);
        let server_final = format!("v={}", BASE64.encode(server_signature)).into_bytes();
        let credentials = match self.password {
            Some(password) => Credentials::Password(password),
            None => Credentials::Scram(ScramKeys {
                client_key,
                server_key: self.verifier.server_key,
                salt: self.verifier.salt,
                iterations: self.verifier.iterations,
            }),
        };
        Ok(ScramSuccess {
            server_final,
            credentials,
        })
    }
}

/// The decoded `c=` the client must send, after checking the mechanism and
/// gs2 flag against what was offered (RFC 5802 §6, RFC 5929).
fn expected_binding(
    binding: &ServerBinding,
    mechanism: &str,
    flag: Gs2Flag<'_>,
    gs2_header: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let offered = matches!(binding, ServerBinding::TlsServerEndPoint(_));
    match (mechanism == SCRAM_SHA_256_PLUS, flag, binding) {
        (true, Gs2Flag::Bind(name), ServerBinding::TlsServerEndPoint(data)) => {
            if name != TLS_SERVER_END_POINT.as_bytes() {
                return Err(AuthError::Malformed("unsupported channel-binding type"));
            }
            Ok([gs2_header, data].concat())
        }
        (true, _, _) => Err(AuthError::Malformed(
            "SCRAM-SHA-256-PLUS was selected but the message has no channel binding",
        )),
        (false, Gs2Flag::Bind(_), _) => Err(AuthError::Malformed(
            "SCRAM-SHA-256 without channel binding was selected but the message has channel binding",
        )),
        (false, Gs2Flag::Yes, _) if offered => Err(AuthError::ChannelBinding(
            "the client supports channel binding and thinks pgsteer does not, but it does",
        )),
        (false, Gs2Flag::Yes | Gs2Flag::No, _) => Ok(gs2_header.to_vec()),
    }
}

/// The verifier to run the exchange with, why it must fail (if it must), and
/// the plaintext password when that is the secret.
fn lookup(ctx: &ServerContext<'_>) -> (ScramVerifier, Option<FailureReason>, Option<Password>) {
    let salt = ctx.salt_key.salt_for(ctx.user);
    let mock = |reason| {
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.to_vec(),
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        (verifier, Some(reason), None)
    };
    match ctx.secret {
        None => mock(FailureReason::UnknownUser),
        Some(s) if s.is_empty_password() => mock(FailureReason::NoPassword),
        Some(Secret::Md5(_)) => mock(FailureReason::UnusableSecret),
        Some(Secret::Plain(p)) => {
            let verifier = verifier_for(p.expose().as_bytes(), &salt, DEFAULT_ITERATIONS);
            (verifier, None, Some(p.clone()))
        }
        Some(Secret::Scram(v)) => (v.clone(), None, None),
    }
}
