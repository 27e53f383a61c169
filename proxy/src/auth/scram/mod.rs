//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as pgsteer
//! speaks them: the key derivations shared by both sides, channel-binding
//! negotiation, and the [`server`] (towards clients) and [`client`] (towards
//! Postgres) state machines. Crypto comes from RustCrypto's `hmac`, `sha2`
//! and `pbkdf2`; this module only arranges it.

pub mod client;
mod messages;
pub mod server;

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use super::secrets::ScramVerifier;

pub use client::{ClientBinding, ScramClient, ScramClientFinal};
pub use server::{SaltKey, ScramServer, ScramSuccess, ServerBinding, ServerContext};

/// The mechanism name of SCRAM-SHA-256 without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The mechanism name of SCRAM-SHA-256 with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel-binding type pgsteer (and Postgres) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// The iteration count for verifiers pgsteer derives itself (Postgres's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The salt length for salts pgsteer derives itself (Postgres's default).
pub const SALT_LEN: usize = 16;

/// Random bytes in a nonce (Postgres uses 18, which base64 makes 24 characters).
const NONCE_BYTES: usize = 18;

/// SCRAM keys proven by a client: enough to log in to Postgres as that user
/// (ClientKey pass-through) as long as the server still has the verifier
/// with this salt and iteration count. Its `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// `HMAC(SaltedPassword, "Client Key")`, recovered as ClientProof XOR ClientSignature.
    pub client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`, from the verifier.
    pub server_key: [u8; 32],
    /// The verifier's salt.
    pub salt: Vec<u8>,
    /// The verifier's iteration count.
    pub iterations: u32,
}

impl ScramKeys {
    /// Derives the keys from a password (SASLprep'ed as Postgres does).
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = salted_password(password, salt, iterations);
        ScramKeys {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
            salt: salt.to_vec(),
            iterations,
        }
    }

    /// `H(ClientKey)`.
    pub fn stored_key(&self) -> [u8; 32] {
        sha256(&self.client_key)
    }

    /// The verifier these keys belong to.
    pub fn verifier(&self) -> ScramVerifier {
        ScramVerifier {
            iterations: self.iterations,
            salt: self.salt.clone(),
            stored_key: self.stored_key(),
            server_key: self.server_key,
        }
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The verifier Postgres would store for this password, salt and iteration count.
pub fn verifier_for(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
    ScramKeys::from_password(password, salt, iterations).verifier()
}

/// A fresh random nonce: 18 random bytes in base64, as Postgres makes them.
pub fn new_nonce() -> Result<String, AuthError> {
    use base64::Engine as _;
    let mut raw = [0u8; NONCE_BYTES];
    getrandom::fill(&mut raw).map_err(AuthError::Random)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// SASLprep as Postgres applies it to passwords: the prepared form when the
/// password is valid UTF-8 and SASLprep accepts it, the raw bytes otherwise.
pub fn normalize(password: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(password) else {
        return Cow::Borrowed(password);
    };
    match stringprep::saslprep(text) {
        Ok(Cow::Borrowed(_)) | Err(_) => Cow::Borrowed(password),
        Ok(Cow::Owned(prepared)) => Cow::Owned(prepared.into_bytes()),
    }
}

/// `Hi(Normalize(password), salt, i)`: PBKDF2-HMAC-SHA-256 with one block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(&normalize(password), salt, iterations)
}

/// HMAC-SHA-256 of the concatenated parts.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Constant-time equality of two 32-byte values.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests;
