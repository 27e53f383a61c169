//! Passthrough authentication: the client's startup goes to the backend and
//! the exchange (trust, password, md5, SCRAM) is relayed untouched until the
//! first ReadyForQuery. pgsteer keeps no passwords. On the way it swaps the
//! backend's BackendKeyData for one of its own (see `cancel`) and merges
//! protocol-version negotiation so the client sees one answer.

use bytes::BytesMut;
use pgsteer_protocol::backend::{BackendMessage, TxStatus};
use pgsteer_protocol::encode;
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::{Negotiation, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{SessionError, Side};
use crate::cancel::{CancelRegistry, CancelTarget};
use crate::router::Target;

/// Largest backend message accepted during authentication.
const AUTH_MESSAGE_LIMIT: u32 = 1 << 20;
/// Most client bytes buffered during authentication (SASL messages are small).
const AUTH_CLIENT_LIMIT: usize = 64 * 1024;

/// A session that passed authentication.
pub struct Authenticated {
    /// The process id pgsteer gave the client (its cancel key), if the backend sent one.
    pub cancel_pid: Option<i32>,
    /// Status of the ReadyForQuery that ended the exchange.
    pub tx: TxStatus,
}

/// Sends the startup message and relays authentication until ReadyForQuery.
pub async fn authenticate(
    client: &mut TcpStream,
    server: &mut TcpStream,
    message: &StartupMessage,
    negotiation: &Negotiation,
    target: &Target,
    cancels: &CancelRegistry,
) -> Result<Authenticated, SessionError> {
    let mut out = BytesMut::with_capacity(512);
    encode::startup_message(&mut out, message);
    server
        .write_all(&out)
        .await
        .map_err(|e| SessionError::io(Side::Server, e))?;
    out.clear();

    let mut ex = Exchange {
        minor: message.version.minor,
        negotiation,
        npv_sent: false,
        cancel_pid: None,
        target,
        cancels,
    };
    let mut sbuf = BytesMut::with_capacity(1024);
    let mut cbuf = BytesMut::with_capacity(256);
    let result = loop {
        tokio::select! {
            r = server.read_buf(&mut sbuf) => {
                let n = r.map_err(|e| SessionError::io(Side::Server, e))?;
                if n == 0 {
                    break Err(SessionError::fatal(
                        Side::Server,
                        pgsteer_protocol::sqlstate::SqlState::CONNECTION_FAILURE,
                        format!("pgsteer: {} closed the connection during authentication", target.member),
                    ));
                }
                match ex.relay_frames(&mut sbuf, &mut out) {
                    Ok(Step::More) => {}
                    Ok(Step::Ready(tx)) => {
                        if !sbuf.is_empty() {
                            break Err(SessionError::server_protocol(
                                "backend sent data after ReadyForQuery before any query".into(),
                            ));
                        }
                        break Ok(tx);
                    }
                    Ok(Step::Failed(why)) => break Err(SessionError::quiet(Side::Server, why)),
                    Err(e) => break Err(e),
                }
                client.write_all(&out).await.map_err(|e| SessionError::io(Side::Client, e))?;
                out.clear();
            }
            r = client.read_buf(&mut cbuf) => {
                let n = r.map_err(|e| SessionError::io(Side::Client, e))?;
                if n == 0 {
                    break Err(SessionError::quiet(Side::Client, "client closed during authentication"));
                }
                if cbuf.len() > AUTH_CLIENT_LIMIT {
                    break Err(SessionError::client_protocol(
                        "too much data from the client during authentication".into(),
                    ));
                }
                server.write_all(&cbuf).await.map_err(|e| SessionError::io(Side::Server, e))?;
                cbuf.clear();
            }
        }
    };
    // Whatever the outcome, the client gets what the backend said (errors included).
    if !out.is_empty() {
        client
            .write_all(&out)
            .await
            .map_err(|e| SessionError::io(Side::Client, e))?;
    }
    match result {
        Ok(tx) => Ok(Authenticated {
            cancel_pid: ex.cancel_pid,
            tx,
        }),
        Err(e) => {
            if let Some(pid) = ex.cancel_pid {
                cancels.unregister(pid);
            }
            Err(e)
        }
    }
}

enum Step {
    More,
    Ready(TxStatus),
    Failed(String),
}

struct Exchange<'a> {
    minor: u16,
    negotiation: &'a Negotiation,
    npv_sent: bool,
    cancel_pid: Option<i32>,
    target: &'a Target,
    cancels: &'a CancelRegistry,
}

impl Exchange<'_> {
    /// Relays every whole backend frame in `sbuf` into `out`, rewriting the
    /// few that need it.
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
                BackendMessage::BackendKeyData(k) => {
                    let key_len = if self.minor >= 2 { 32 } else { 4 };
                    let (pid, key) = self.cancels.register(
                        CancelTarget {
                            member: self.target.member.clone(),
                            address: self.target.address.clone(),
                            pid: k.pid,
                            key: k.key.to_vec(),
                        },
                        key_len,
                    );
                    if let Some(old) = self.cancel_pid.replace(pid) {
                        self.cancels.unregister(old);
                    }
                    encode::backend_key_data(out, pid, &key);
                }
                BackendMessage::ReadyForQuery(tx) => {
                    encode::ready_for_query(out, tx);
                    return Ok(Step::Ready(tx));
                }
                BackendMessage::ErrorResponse(e) => {
                    push_frame(out, frame.tag, &frame.body);
                    let why = format!(
                        "backend refused the session: {} {}",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    );
                    return Ok(Step::Failed(why));
                }
                _ => push_frame(out, frame.tag, &frame.body),
            }
        }
        Ok(Step::More)
    }
}

/// Re-frames a message that passes through unchanged.
fn push_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}
