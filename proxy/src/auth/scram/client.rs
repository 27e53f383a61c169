//! The SCRAM exchange pgsteer runs as the client, logging in to Postgres as
//! the client's user: with a plaintext password (ordinary SCRAM), or with the
//! ClientKey a client proved to pgsteer (pass-through, as PgBouncer does),
//! which works while the server's salt and iteration count are the
//! verifier's. Either way the server's signature is checked.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::messages::{self, ServerFinal};
use super::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramKeys, ct_eq, hmac, xor};
use crate::auth::{Credentials, LoginError};

/// The most PBKDF2 iterations pgsteer runs for a server that asks for them
/// (about two seconds of one core); more is refused as a denial of service.
/// Pass-through never runs PBKDF2, so this only limits plaintext secrets.
pub const MAX_LOGIN_ITERATIONS: u32 = 10_000_000;

/// How pgsteer answers the server's channel-binding offer.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// gs2 flag `n`: no TLS to the server (or no usable certificate hash).
    Unsupported,
    /// gs2 flag `y`: pgsteer could bind, but the server did not offer it.
    NotOffered,
    /// `p=tls-server-end-point` with the server certificate's hash.
    TlsServerEndPoint(Vec<u8>),
}

impl fmt::Debug for ClientBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBinding::Unsupported => f.write_str("Unsupported"),
            ClientBinding::NotOffered => f.write_str("NotOffered"),
            ClientBinding::TlsServerEndPoint(_) => f.write_str("TlsServerEndPoint"),
        }
    }
}

impl ClientBinding {
    /// Chooses from the mechanisms of the server's AuthenticationSASL and the
    /// `tls-server-end-point` data of the server's certificate (`None` over
    /// plaintext): bind when both sides can. Fails when the server offers no
    /// SCRAM-SHA-256 at all.
    pub fn negotiate<'m>(
        offered: impl IntoIterator<Item = &'m str>,
        server_end_point: Option<Vec<u8>>,
    ) -> Result<ClientBinding, LoginError> {
        let (mut plain, mut plus) = (false, false);
        for mechanism in offered {
            plain |= mechanism == SCRAM_SHA_256;
            plus |= mechanism == SCRAM_SHA_256_PLUS;
        }
        match server_end_point {
            Some(data) if plus => Ok(ClientBinding::TlsServerEndPoint(data)),
            _ if !plain => Err(LoginError::NoCommonMechanism),
            Some(_) => Ok(ClientBinding::NotOffered),
            None => Ok(ClientBinding::Unsupported),
        }
    }

    /// The mechanism name for SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        match self {
            ClientBinding::TlsServerEndPoint(_) => SCRAM_SHA_256_PLUS,
            ClientBinding::Unsupported | ClientBinding::NotOffered => SCRAM_SHA_256,
        }
    }

    fn gs2_header(&self) -> &'static str {
        match self {
            ClientBinding::Unsupported => "n,,",
            ClientBinding::NotOffered => "y,,",
            ClientBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            ClientBinding::TlsServerEndPoint(data) => data,
            ClientBinding::Unsupported | ClientBinding::NotOffered => &[],
        }
    }
}

/// A login before the server-first-message.
pub struct ScramClient {
    credentials: Credentials,
    binding: ClientBinding,
    nonce: String,
    /// gs2 header + client-first-message-bare.
    client_first: String,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

/// A login after client-final was sent, waiting for the server's signature.
pub struct ScramClientFinal {
    server_signature: [u8; 32],
}

impl fmt::Debug for ScramClientFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramClientFinal")
    }
}

impl ScramClient {
    /// Starts a login with a plaintext password or SCRAM keys (an md5 hash
    /// cannot do SCRAM). `nonce` is [`super::new_nonce`] in production; it
    /// must be printable ASCII without ','. The user name goes in the startup
    /// packet; SCRAM's own is left empty, as libpq does.
    pub fn new(
        credentials: &Credentials,
        binding: ClientBinding,
        nonce: &str,
    ) -> Result<ScramClient, LoginError> {
        ScramClient::with_sasl_user(credentials, binding, nonce, "")
    }

    /// [`ScramClient::new`] with a user name in SCRAM's `n=` (the RFC test
    /// vectors have one; Postgres ignores it).
    pub(super) fn with_sasl_user(
        credentials: &Credentials,
        binding: ClientBinding,
        nonce: &str,
        sasl_user: &str,
    ) -> Result<ScramClient, LoginError> {
        if matches!(credentials, Credentials::None) {
            return Err(LoginError::Unusable(
                "no password is known (auth method trust), but the server asks for SCRAM",
            ));
        }
        if matches!(credentials, Credentials::Md5(_)) {
            return Err(LoginError::Unusable(
                "only an md5 hash is known, but the server asks for SCRAM",
            ));
        }
        if !messages::is_printable(nonce.as_bytes()) {
            return Err(LoginError::Malformed("invalid client nonce"));
        }
        let sasl_user = sasl_user.replace('=', "=3D").replace(',', "=2C");
        let client_first = format!("{}n={sasl_user},r={nonce}", binding.gs2_header());
        Ok(ScramClient {
            credentials: credentials.clone(),
            binding,
            nonce: nonce.to_owned(),
            client_first,
        })
    }

    /// The mechanism name for SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        self.binding.mechanism()
    }

    /// The client-first-message: the data of SASLInitialResponse.
    pub fn client_first(&self) -> &[u8] {
        self.client_first.as_bytes()
    }

    /// Takes the server-first-message (the data of AuthenticationSASLContinue)
    /// and returns the client-final-message for SASLResponse. With a
    /// password this runs PBKDF2 with the server's iteration count (CPU-bound,
    /// at most [`MAX_LOGIN_ITERATIONS`]); pass-through only runs two HMACs.
    pub fn server_first(self, data: &[u8]) -> Result<(ScramClientFinal, Vec<u8>), LoginError> {
        let first = messages::parse_server_first(data).map_err(LoginError::Malformed)?;
        if first.nonce.len() <= self.nonce.len() || !first.nonce.starts_with(&self.nonce) {
            return Err(LoginError::Malformed(
                "the server nonce does not extend the client nonce",
            ));
        }
        let keys = match &self.credentials {
            Credentials::Password(password) => {
                if first.iterations > MAX_LOGIN_ITERATIONS {
                    return Err(LoginError::TooManyIterations(first.iterations));
                }
                ScramKeys::from_password(
                    password.expose().as_bytes(),
                    &first.salt,
                    first.iterations,
                )
            }
            Credentials::Scram(keys)
                if keys.salt == first.salt && keys.iterations == first.iterations =>
            {
                keys.clone()
            }
            Credentials::Scram(_) => return Err(LoginError::VerifierChanged),
            Credentials::Md5(_) => return Err(LoginError::Unusable("md5 hash for SCRAM")),
            Credentials::None => return Err(LoginError::Unusable("no password for SCRAM")),
        };
        let gs2_and_data = [self.binding.gs2_header().as_bytes(), self.binding.data()].concat();
        let without_proof = format!("c={},r={}", BASE64.encode(gs2_and_data), first.nonce);
        let bare = &self.client_first[self.binding.gs2_header().len()..];
        let auth_message = [bare.as_bytes(), b",", data, b",", without_proof.as_bytes()].concat();
        let client_signature = hmac(&keys.stored_key(), &[&auth_message]);
        let proof = xor(&keys.client_key, &client_signature);
        let server_signature = hmac(&keys.server_key, &[&auth_message]);
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
        Ok((ScramClientFinal { server_signature }, client_final))
    }
}

impl ScramClientFinal {
    /// Takes the server-final-message (the data of AuthenticationSASLFinal)
    /// and checks the server's signature: a server that cannot sign does not
    /// have the verifier, so it is not the server it claims to be.
    pub fn server_final(self, data: &[u8]) -> Result<(), LoginError> {
        match messages::parse_server_final(data).map_err(LoginError::Malformed)? {
            ServerFinal::Error(e) => Err(LoginError::Rejected(e.to_owned())),
            ServerFinal::Verifier(v) if ct_eq(&v, &self.server_signature) => Ok(()),
            ServerFinal::Verifier(_) => Err(LoginError::ServerSignature),
        }
    }
}
