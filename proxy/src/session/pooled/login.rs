//! A pooled client proves its password to pgsteer: SCRAM-SHA-256 (with -PLUS over TLS, bound
//! to pgsteer's certificate), md5 where configured for md5 secrets, or cleartext over TLS.
//! Unknown users go through the same exchange and fail with the same message.

use bytes::{Buf, BytesMut};
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::sqlstate::SqlState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::scram::{self, ScramServer, ServerBinding, ServerContext};
use crate::auth::store::AuthStore;
use crate::auth::{AuthError, Credentials, Method, Secret, cleartext, md5};
use crate::config::AuthMethod;
use crate::session::stream::Stream;
use crate::session::{SessionError, Side};

/// Largest authentication message accepted from a client.
const AUTH_MESSAGE_LIMIT: u32 = 16 * 1024;

/// Authentication request codes (AuthenticationXXX messages).
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Runs the exchange with `user`'s `secret` (`None`: unknown) and gives back what pgsteer
/// can log in to Postgres with. AuthenticationOk is not sent yet.
pub async fn authenticate(
    client: &mut Stream,
    store: &AuthStore,
    user: &str,
    secret: Option<&Secret>,
    end_point: Option<Vec<u8>>,
) -> Result<Credentials, SessionError> {
    let mut io = ClientIo {
        client,
        buf: BytesMut::with_capacity(256),
    };
    let result = match (store.method, crate::auth::choose_method(secret, true)) {
        (AuthMethod::Trust, _) => Ok(Credentials::None),
        (AuthMethod::Password, _) => {
            if !io.client.is_tls() {
                return Err(SessionError::fatal(
                    Side::Client,
                    SqlState::INVALID_AUTHORIZATION,
                    "pgsteer: password authentication in clear is only done over TLS",
                ));
            }
            io.request(AUTH_CLEARTEXT, &[]).await?;
            let body = io.password_message().await?;
            cleartext::verify(user, secret, &store.salt_key, &body)
        }
        (AuthMethod::Md5, Method::Md5) => {
            let salt = md5::new_salt().map_err(auth_failed)?;
            let server = md5::Md5Server::start(user, secret, salt);
            io.request(AUTH_MD5, &salt).await?;
            let body = io.password_message().await?;
            server.finish(&body)
        }
        _ => scram_exchange(&mut io, store, user, secret, end_point).await,
    };
    result.map_err(auth_failed)
}

async fn scram_exchange(
    io: &mut ClientIo<'_>,
    store: &AuthStore,
    user: &str,
    secret: Option<&Secret>,
    end_point: Option<Vec<u8>>,
) -> Result<Credentials, AuthError> {
    let binding = match end_point {
        Some(data) if io.client.is_tls() => ServerBinding::TlsServerEndPoint(data),
        _ => ServerBinding::None,
    };
    let mut offer = Vec::new();
    for m in binding.mechanisms() {
        offer.extend_from_slice(m.as_bytes());
        offer.push(0);
    }
    offer.push(0);
    io.request(AUTH_SASL, &offer).await.map_err(io_failed)?;
    let initial = io.password_message().await.map_err(io_failed)?;
    let (mechanism, data) =
        sasl_initial(&initial).ok_or(AuthError::Malformed("malformed SASLInitialResponse"))?;
    let nonce = scram::new_nonce()?;
    let ctx = ServerContext {
        user,
        secret,
        binding: &binding,
        salt_key: &store.salt_key,
    };
    let (server, server_first) = ScramServer::start(ctx, mechanism, data, &nonce)?;
    io.request(AUTH_SASL_CONTINUE, &server_first)
        .await
        .map_err(io_failed)?;
    let client_final = io.password_message().await.map_err(io_failed)?;
    let success = server.finish(&client_final)?;
    io.request(AUTH_SASL_FINAL, &success.server_final)
        .await
        .map_err(io_failed)?;
    Ok(success.credentials)
}

/// The mechanism and data of a SASLInitialResponse body.
fn sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = memchr::memchr(0, body)?;
    let mechanism = std::str::from_utf8(body.get(..nul)?).ok()?;
    let len = body.get(nul + 1..nul + 5)?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let data = body.get(nul + 5..)?;
    match usize::try_from(len) {
        Ok(n) if n == data.len() => Some((mechanism, data)),
        _ if len == -1 && data.is_empty() => Some((mechanism, data)),
        _ => None,
    }
}

/// An IO failure inside the SCRAM exchange, carried out as a malformed exchange (the
/// session ends either way; the client is gone or broke the protocol).
fn io_failed(_: SessionError) -> AuthError {
    AuthError::Malformed("the client went away during authentication")
}

fn auth_failed(e: AuthError) -> SessionError {
    let side = match e {
        AuthError::Random(_) => Side::Internal,
        _ => Side::Client,
    };
    SessionError::fatal(side, e.sqlstate(), e.to_string())
}

/// The client connection during authentication.
struct ClientIo<'a> {
    client: &'a mut Stream,
    buf: BytesMut,
}

impl ClientIo<'_> {
    /// Sends AuthenticationXXX `code` with `data`.
    async fn request(&mut self, code: i32, data: &[u8]) -> Result<(), SessionError> {
        let mut out = BytesMut::with_capacity(9 + data.len());
        out.extend_from_slice(b"R");
        out.extend_from_slice(&((8 + data.len()) as u32).to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(data);
        let io = async {
            self.client.write_all(&out).await?;
            self.client.flush().await
        };
        io.await.map_err(|e| SessionError::io(Side::Client, e))
    }

    /// The body of the client's next message, which must be a PasswordMessage (`p`).
    async fn password_message(&mut self) -> Result<Vec<u8>, SessionError> {
        loop {
            let frame = split_frame(&mut self.buf, AUTH_MESSAGE_LIMIT)
                .map_err(|e| SessionError::client_protocol(e.to_string()))?;
            if let Some(f) = frame {
                if f.tag != ftag::PASSWORD {
                    return Err(SessionError::client_protocol(format!(
                        "expected a password message, got message type 0x{:02x}",
                        f.tag
                    )));
                }
                return Ok(f.body.chunk().to_vec());
            }
            let n = self
                .client
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| SessionError::io(Side::Client, e))?;
            if n == 0 {
                return Err(SessionError::quiet(
                    Side::Client,
                    "client closed during authentication",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sasl_initial_response_gives_its_mechanism_and_data() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,x=");
        assert_eq!(sasl_initial(&body), Some(("SCRAM-SHA-256", &b"n,,x="[..])));
        for cut in 0..body.len() {
            assert_eq!(sasl_initial(&body[..cut]), None, "cut at {cut}");
        }
    }
}
