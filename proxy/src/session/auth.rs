//! Passthrough authentication: the client's startup goes to the backend and
//! the exchange (trust, password, md5, SCRAM) is relayed untouched until the
//! first ReadyForQuery. pgsteer keeps no passwords. On the way it swaps the
//! backend's BackendKeyData for one of its own (see `cancel`) and merges
//! protocol-version negotiation so the client sees one answer.
//!
//! SCRAM channel binding cannot work through pgsteer: the client's TLS
//! channel ends here and the server's begins here, so the binding data the
//! client would send (its channel's certificate hash) can never match the
//! server's. The `-PLUS` mechanisms are therefore removed from the
//! AuthenticationSASL offer, so `channel_binding=require` fails with libpq's
//! own message. A TLS client with `channel_binding=prefer` then answers with
//! the gs2 flag `y` ("I support binding, you do not"), which a server on a
//! TLS connection must refuse as a downgrade (RFC 5802), and which pgsteer
//! cannot rewrite (the flag is covered by the client's proof). Over a
//! plaintext server connection it works; over a TLS one pgsteer refuses it
//! itself with an explanation instead of the server's terse error.

use bytes::BytesMut;
use pgsteer_protocol::backend::{Authentication, BackendMessage, TxStatus};
use pgsteer_protocol::encode;
use pgsteer_protocol::frame::{peek_frame, split_frame};
use pgsteer_protocol::frontend::{SaslInitialResponse, tag};
use pgsteer_protocol::sqlstate::SqlState;
use pgsteer_protocol::startup::{Negotiation, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::stream::Stream;
use super::{SessionError, Side};
use crate::cancel::{CancelRegistry, CancelTarget, KeyHandle};
use crate::router::Target;

/// Largest backend message accepted during authentication.
const AUTH_MESSAGE_LIMIT: u32 = 1 << 20;
/// Most client bytes buffered during authentication (SASL messages are small).
const AUTH_CLIENT_LIMIT: usize = 64 * 1024;

/// A session that passed authentication.
pub struct Authenticated {
    /// The cancel key pgsteer gave the client, if the backend sent one.
    pub cancel_key: Option<KeyHandle>,
    /// Status of the ReadyForQuery that ended the exchange.
    pub tx: TxStatus,
}

/// Sends the startup message and relays authentication until ReadyForQuery.
pub async fn authenticate(
    client: &mut Stream,
    server: &mut Stream,
    message: &StartupMessage,
    negotiation: &Negotiation,
    target: &Target,
    cancels: &CancelRegistry,
) -> Result<Authenticated, SessionError> {
    let mut out = BytesMut::with_capacity(512);
    encode::startup_message(&mut out, message);
    send(server, &out)
        .await
        .map_err(|e| SessionError::io(Side::Server, e))?;
    out.clear();

    let mut ex = Exchange {
        minor: message.version.minor,
        negotiation,
        npv_sent: false,
        cancel_key: None,
        target,
        cancels,
        sasl_offered: false,
        relayed: false,
    };
    let mut sbuf = BytesMut::with_capacity(1024);
    let mut cbuf = BytesMut::with_capacity(256);
    let result = loop {
        tokio::select! {
            r = server.read_buf(&mut sbuf) => {
                if let Some(done) = ex.server_read(r, &mut sbuf, &mut out) {
                    break done;
                }
                if !out.is_empty() {
                    ex.relayed = true;
                    send(client, &out).await.map_err(|e| SessionError::io(Side::Client, e))?;
                    out.clear();
                }
            }
            r = client.read_buf(&mut cbuf) => {
                match ex.client_read(r, &cbuf, server.is_tls()) {
                    Ok(true) => {
                        send(server, &cbuf).await.map_err(|e| SessionError::io(Side::Server, e))?;
                        cbuf.clear();
                    }
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
        }
    };
    // Whatever the outcome, the client gets what the backend said (errors included).
    if !out.is_empty() {
        send(client, &out)
            .await
            .map_err(|e| SessionError::io(Side::Client, e))?;
    }
    match result {
        Ok(tx) => Ok(Authenticated {
            cancel_key: ex.cancel_key,
            tx,
        }),
        Err(e) => {
            if let Some(handle) = ex.cancel_key {
                cancels.unregister(handle);
            }
            Err(e)
        }
    }
}

/// The gs2 channel-binding flag (`n`, `y` or `p`) of a SASLInitialResponse
/// at the start of `buf`: `None` while the message is incomplete,
/// `Some(None)` if it is some other message, or not a well-formed one (the
/// server answers those).
fn sasl_initial_flag(buf: &[u8]) -> Option<Option<u8>> {
    if *buf.first()? != tag::PASSWORD {
        return Some(None);
    }
    // No length limit here: the caller bounds what it buffers (AUTH_CLIENT_LIMIT).
    match peek_frame(buf, u32::MAX) {
        Ok(None) => None,
        Ok(Some((_, body))) => Some(
            SaslInitialResponse::parse(body)
                .ok()
                .and_then(|m| m.gs2_flag()),
        ),
        Err(_) => Some(None),
    }
}

/// A TLS client offering channel binding to a server on a TLS connection
/// that (through pgsteer) offers none: the server would refuse it.
fn binding_downgrade() -> SessionError {
    SessionError::fatal(
        Side::Internal,
        SqlState::INVALID_AUTHORIZATION,
        "pgsteer: SCRAM channel binding cannot work through pgsteer (the client's TLS ends at \
         pgsteer, and the server refuses a client that supports channel binding on its own TLS \
         connection); connect with channel_binding=disable, or use tls.server_mode = \"disable\"",
    )
}

/// Writes and flushes (TLS buffers writes).
async fn send(s: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

enum Step {
    More,
    Ready(TxStatus),
    Failed(String),
    /// The backend cannot take sessions right now (starting up, shutting
    /// down) and nothing reached the client yet: try elsewhere or wait.
    Unavailable(String),
}

struct Exchange<'a> {
    minor: u16,
    negotiation: &'a Negotiation,
    npv_sent: bool,
    cancel_key: Option<KeyHandle>,
    target: &'a Target,
    cancels: &'a CancelRegistry,
    /// A SASL offer was relayed and the client's first answer is still to come.
    sasl_offered: bool,
    /// Something was sent to the client: the session can no longer move to
    /// another backend.
    relayed: bool,
}

impl Exchange<'_> {
    /// What the server's bytes just read mean: `Some` ends the exchange.
    fn server_read(
        &mut self,
        read: std::io::Result<usize>,
        sbuf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Option<Result<TxStatus, SessionError>> {
        let member = &self.target.member;
        let n = match read {
            Ok(n) => n,
            Err(e) if !self.relayed => {
                return Some(Err(SessionError::unavailable(format!(
                    "pgsteer: {member} failed before authentication: {e}"
                ))));
            }
            Err(e) => return Some(Err(SessionError::io(Side::Server, e))),
        };
        if n == 0 {
            let why = format!("pgsteer: {member} closed the connection during authentication");
            return Some(Err(if self.relayed {
                SessionError::fatal(Side::Server, SqlState::CONNECTION_FAILURE, why)
            } else {
                SessionError::unavailable(why)
            }));
        }
        match self.relay_frames(sbuf, out) {
            Ok(Step::More) => None,
            Ok(Step::Ready(_)) if !sbuf.is_empty() => Some(Err(SessionError::server_protocol(
                "backend sent data after ReadyForQuery before any query".into(),
            ))),
            Ok(Step::Ready(tx)) => Some(Ok(tx)),
            Ok(Step::Failed(why)) => Some(Err(SessionError::quiet(Side::Server, why))),
            Ok(Step::Unavailable(why)) => Some(Err(SessionError::unavailable(why))),
            Err(e) => Some(Err(e)),
        }
    }

    /// What the client's bytes just read mean: `Ok(true)` forwards them now, `Ok(false)`
    /// waits for more (a SASLInitialResponse whose gs2 flag decides).
    fn client_read(
        &mut self,
        read: std::io::Result<usize>,
        cbuf: &[u8],
        server_tls: bool,
    ) -> Result<bool, SessionError> {
        let n = read.map_err(|e| SessionError::io(Side::Client, e))?;
        if n == 0 {
            return Err(SessionError::quiet(
                Side::Client,
                "client closed during authentication",
            ));
        }
        if cbuf.len() > AUTH_CLIENT_LIMIT {
            return Err(SessionError::client_protocol(
                "too much data from the client during authentication".into(),
            ));
        }
        if self.sasl_offered && server_tls {
            // The SASLInitialResponse decides whether SCRAM can succeed.
            match sasl_initial_flag(cbuf) {
                None => return Ok(false),
                Some(Some(b'y')) => return Err(binding_downgrade()),
                Some(_) => self.sasl_offered = false,
            }
        }
        Ok(true)
    }

    /// Relays every whole backend frame in `sbuf` into `out`, rewriting the
    /// few that need it.
    /// Registers the backend's cancel key and gives the client the backend's process id with
    /// a secret key of pgsteer's.
    fn own_key(&mut self, pid: i32, key: &[u8], out: &mut BytesMut) {
        let key_len = if self.minor >= 2 { 32 } else { 4 };
        let (own, own_key) = self.cancels.register(
            CancelTarget {
                member: self.target.member.clone(),
                address: self.target.address.clone(),
                pid,
                key: key.to_vec(),
            },
            key_len,
        );
        if let Some(old) = self.cancel_key.replace(own) {
            self.cancels.unregister(old);
        }
        encode::backend_key_data(out, own.pid, &own_key);
    }

    fn relay_frames(
        &mut self,
        sbuf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Step, SessionError> {
        while let Some(frame) = split_frame(sbuf, AUTH_MESSAGE_LIMIT)
            .map_err(|e| SessionError::server_protocol(e.to_string()))?
        {
            let msg = BackendMessage::parse(frame.tag, &frame.body)
                .map_err(|e| SessionError::server_protocol(e.to_string()))?;
            if let BackendMessage::NegotiateProtocolVersion { minor, options } = &msg {
                // Merge with our own downgrade so the client sees one answer.
                self.minor = self.minor.min(u16::try_from(*minor).unwrap_or(0));
                let mut all: Vec<String> = self.negotiation.unsupported_options.clone();
                for o in options {
                    let o = String::from_utf8_lossy(o).into_owned();
                    if !all.contains(&o) {
                        all.push(o);
                    }
                }
                encode::negotiate_protocol_version(out, self.minor, &all);
                self.npv_sent = true;
                continue;
            }
            if self.negotiation.downgraded && !self.npv_sent {
                encode::negotiate_protocol_version(
                    out,
                    self.minor,
                    &self.negotiation.unsupported_options,
                );
                self.npv_sent = true;
            }
            match msg {
                BackendMessage::BackendKeyData(k) => self.own_key(k.pid, k.key, out),
                BackendMessage::Authentication(Authentication::Sasl { mechanisms })
                    if mechanisms.iter().any(|m| is_channel_binding(&m)) =>
                {
                    debug!("removed SCRAM channel binding (-PLUS) from the server's offer");
                    self.sasl_offered = true;
                    encode::authentication_sasl(
                        out,
                        mechanisms.iter().filter(|m| !is_channel_binding(m)),
                    );
                }
                BackendMessage::ReadyForQuery(tx) => {
                    encode::ready_for_query(out, tx);
                    return Ok(Step::Ready(tx));
                }
                BackendMessage::ErrorResponse(e)
                    if !self.relayed
                        && out.is_empty()
                        && e.code().as_deref() == Some(SqlState::CANNOT_CONNECT_NOW.code()) =>
                {
                    return Ok(Step::Unavailable(format!(
                        "{} cannot take sessions now: {}",
                        self.target.member,
                        e.message().unwrap_or_default()
                    )));
                }
                BackendMessage::ErrorResponse(e) => {
                    encode::frame(out, frame.tag, &frame.body);
                    let why = format!(
                        "backend refused the session: {} {}",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    );
                    return Ok(Step::Failed(why));
                }
                _ => encode::frame(out, frame.tag, &frame.body),
            }
        }
        Ok(Step::More)
    }
}

/// `SCRAM-SHA-256-PLUS` and the like: SASL mechanisms with channel binding.
fn is_channel_binding(mechanism: &&[u8]) -> bool {
    mechanism.ends_with(b"-PLUS")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(mechanism: &str, data: &[u8]) -> BytesMut {
        let mut m = BytesMut::new();
        encode::sasl_initial_response(&mut m, mechanism.as_bytes(), Some(data));
        m
    }

    #[test]
    fn the_gs2_flag_is_read_from_a_whole_sasl_initial_response() {
        let m = initial("SCRAM-SHA-256", b"y,,n=,r=abc");
        assert_eq!(sasl_initial_flag(&m), Some(Some(b'y')));
        for cut in 0..m.len() {
            assert_eq!(sasl_initial_flag(&m[..cut]), None, "cut at {cut}");
        }
        let m = initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(sasl_initial_flag(&m), Some(Some(b'n')));
        assert_eq!(sasl_initial_flag(b"X\0\0\0\x04"), Some(None));
        // A `p` that is not a well-formed SASLInitialResponse is left to the server.
        assert_eq!(sasl_initial_flag(b"p\0\0\0\x05y"), Some(None));
        assert_eq!(sasl_initial_flag(b"p\0\0\0\x02"), Some(None));
    }

    #[test]
    fn only_plus_mechanisms_are_channel_binding() {
        assert!(is_channel_binding(&&b"SCRAM-SHA-256-PLUS"[..]));
        assert!(!is_channel_binding(&&b"SCRAM-SHA-256"[..]));
    }
}
