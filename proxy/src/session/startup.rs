//! The start of a connection: TLS/GSS negotiation requests (and Postgres 17
//! direct TLS), cancel requests, the StartupMessage and the `pgsteer.*`
//! settings in its `options`.

use bytes::BytesMut;
use pgsteer_protocol::options;
use pgsteer_protocol::sqlstate::SqlState;
use pgsteer_protocol::startup::{
    self, CancelRequest, MAX_STARTUP_PACKET_LEN, Negotiation, ProtocolVersion, StartupMessage,
    StartupPacket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::Stream;
use super::{SessionError, Side};
use crate::config::ClientTlsMode;
use crate::router::{Consistency, Request, Route};
use crate::tls::{ALPN_POSTGRESQL, ClientSide};

/// First byte of a TLS handshake record: a direct-TLS client (Postgres 17
/// `sslnegotiation=direct`) starts with its ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a connection turned out to be.
pub enum Opening {
    /// A session to route.
    Session {
        /// The startup message, `pgsteer.*` settings and `_pq_.` options removed.
        message: StartupMessage,
        /// What the version negotiation changed.
        negotiation: Negotiation,
    },
    /// A cancel request.
    Cancel(CancelRequest),
}

/// Reads packets until a StartupMessage or CancelRequest. SSLRequest is
/// answered `S` and TLS is set up when `tls` is configured (else `N`);
/// GSSENCRequest is answered `N`; each at most once, as Postgres allows. A
/// connection whose first byte starts a TLS handshake is direct TLS.
pub async fn read_opening(
    client: &mut Stream,
    tls: Option<&ClientSide>,
) -> Result<Opening, SessionError> {
    let mut buf = BytesMut::with_capacity(256);
    let mut asked = Asked::default();
    if let Some(tls) = tls
        && first_byte(client).await? == TLS_HANDSHAKE
    {
        accept_tls(client, tls, true).await?;
        asked = Asked {
            ssl: true,
            gss: true,
        };
    }
    loop {
        let packet = read_packet(client, &mut buf).await?;
        let ssl = match packet {
            StartupPacket::SslRequest => true,
            StartupPacket::GssEncRequest => false,
            StartupPacket::Cancel(c) => return Ok(Opening::Cancel(c)),
            StartupPacket::Startup(message) => {
                return session(client, tls, message, buf.is_empty());
            }
        };
        let first = if ssl {
            !std::mem::replace(&mut asked.ssl, true)
        } else {
            !std::mem::replace(&mut asked.gss, true)
        };
        if !first || !buf.is_empty() {
            // A repeated request, or bytes sent before our answer
            // (which could be injected plaintext, CVE-2021-23222): refuse.
            return Err(SessionError::client_protocol(
                "unexpected data around an encryption request".into(),
            ));
        }
        match tls {
            Some(tls) if ssl => {
                write(client, b"S").await?;
                accept_tls(client, tls, false).await?;
                // Inside TLS, another encryption request is a violation.
                asked.gss = true;
            }
            _ => write(client, b"N").await?,
        }
    }
}

/// Which encryption requests the client made already (each is allowed once).
#[derive(Default)]
struct Asked {
    ssl: bool,
    gss: bool,
}

/// Reads until one whole startup-phase packet is in `buf` and splits it off.
async fn read_packet(
    client: &mut Stream,
    buf: &mut BytesMut,
) -> Result<StartupPacket, SessionError> {
    loop {
        match startup::parse_startup(buf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(SessionError::client_protocol(e.to_string())),
        }
        let want = startup::startup_len(buf)
            .ok()
            .flatten()
            .unwrap_or(8)
            .min(MAX_STARTUP_PACKET_LEN);
        buf.reserve(want.saturating_sub(buf.len()));
        let n = client
            .read_buf(buf)
            .await
            .map_err(|e| SessionError::io(Side::Client, e))?;
        if n == 0 {
            return Err(SessionError::quiet(
                Side::Client,
                if buf.is_empty() {
                    "client closed before sending a startup packet"
                } else {
                    "incomplete startup packet"
                },
            ));
        }
    }
}

async fn write(client: &mut Stream, answer: &[u8]) -> Result<(), SessionError> {
    client
        .write_all(answer)
        .await
        .map_err(|e| SessionError::io(Side::Client, e))
}

/// Checks a StartupMessage (nothing after it, TLS if required, a user name) and
/// negotiates the protocol version. `alone`: no bytes followed it.
fn session(
    client: &Stream,
    tls: Option<&ClientSide>,
    mut message: StartupMessage,
    alone: bool,
) -> Result<Opening, SessionError> {
    if !alone {
        return Err(SessionError::client_protocol(
            "data sent after the startup packet before authentication".into(),
        ));
    }
    if tls.is_some_and(|t| t.mode() == ClientTlsMode::Require) && !client.is_tls() {
        return Err(SessionError::fatal(
            Side::Client,
            SqlState::INVALID_AUTHORIZATION,
            "pgsteer: TLS required",
        ));
    }
    if message.user().is_none_or(str::is_empty) {
        return Err(SessionError::fatal(
            Side::Client,
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    let negotiation = message.negotiate(ProtocolVersion::LATEST);
    Ok(Opening::Session {
        message,
        negotiation,
    })
}

/// The first byte the client sent, without consuming it.
async fn first_byte(client: &Stream) -> Result<u8, SessionError> {
    let Some(tcp) = client.tcp() else {
        return Err(SessionError::quiet(
            Side::Client,
            "client connection detached",
        ));
    };
    let mut b = [0u8; 1];
    match tcp.peek(&mut b).await {
        Ok(1) => Ok(b[0]),
        Ok(_) => Err(SessionError::quiet(
            Side::Client,
            "client closed before sending a startup packet",
        )),
        Err(e) => Err(SessionError::io(Side::Client, e)),
    }
}

/// Runs the TLS handshake on a plaintext client connection and puts the TLS
/// stream in its place. A failure leaves the connection detached: nothing
/// more can be said to the client. Direct TLS must negotiate ALPN
/// `postgresql`, as Postgres 17 requires.
async fn accept_tls(
    client: &mut Stream,
    tls: &ClientSide,
    direct: bool,
) -> Result<(), SessionError> {
    let tcp = match std::mem::replace(client, Stream::Detached) {
        Stream::Plain(tcp) => tcp,
        other => {
            *client = other;
            return Err(SessionError::client_protocol(
                "TLS requested on an encrypted connection".into(),
            ));
        }
    };
    let stream = tls.acceptor().accept(tcp).await.map_err(|e| {
        SessionError::quiet(Side::Client, format!("client TLS handshake failed: {e}"))
    })?;
    let alpn = stream.get_ref().1.alpn_protocol();
    if direct && alpn != Some(ALPN_POSTGRESQL) {
        return Err(SessionError::quiet(
            Side::Client,
            "direct TLS connection without ALPN \"postgresql\"",
        ));
    }
    *client = Stream::Accepted(Box::new(stream));
    Ok(())
}

/// Reads and strips the `pgsteer.*` settings from `options`, giving the
/// routing request for a session that arrived on a listener with `route`.
pub fn take_request(message: &mut StartupMessage, route: Route) -> Result<Request, SessionError> {
    let mut req = Request {
        route,
        explicit_route: false,
        pin: None,
        consistency: Consistency::default(),
        min_lsn: 0,
    };
    let Some(opts) = message.options().map(str::to_owned) else {
        return Ok(req);
    };
    let taken = options::take_prefixed(&opts, "pgsteer.").map_err(|arg| {
        SessionError::fatal(
            Side::Client,
            SqlState::INVALID_PARAMETER_VALUE,
            format!("invalid command-line argument in options: {arg:?}"),
        )
    })?;
    for (name, value) in taken.settings {
        match name.as_str() {
            "pgsteer.route" => {
                req.route = Route::parse(&value).ok_or_else(|| {
                    SessionError::fatal(
                        Side::Client,
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for parameter \"pgsteer.route\": \"{value}\" (expected primary, replica, any or auto)"
                        ),
                    )
                })?;
                req.explicit_route = true;
            }
            "pgsteer.pod" => req.pin = Some(value),
            "pgsteer.consistency" => {
                req.consistency = Consistency::parse(&value).ok_or_else(|| {
                    SessionError::fatal(
                        Side::Client,
                        SqlState::INVALID_PARAMETER_VALUE,
                        format!(
                            "invalid value for parameter \"pgsteer.consistency\": \"{value}\" (expected eventual, read-your-writes or strong)"
                        ),
                    )
                })?;
            }
            _ => {
                return Err(SessionError::fatal(
                    Side::Client,
                    SqlState::UNDEFINED_OBJECT,
                    format!(
                        "unrecognized configuration parameter \"{name}\" (pgsteer knows pgsteer.route, pgsteer.pod and pgsteer.consistency)"
                    ),
                ));
            }
        }
    }
    match taken.rest {
        Some(rest) => message.set("options", rest),
        None => {
            message.remove("options");
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(options: &str) -> StartupMessage {
        StartupMessage::new(vec![
            ("user".into(), "app".into()),
            ("options".into(), options.into()),
        ])
    }

    #[test]
    fn own_settings_are_read_and_stripped() {
        let mut m = msg("-c pgsteer.route=replica -c pgsteer.pod=pg-2 -c statement_timeout=5s");
        let r = take_request(&mut m, Route::Primary).unwrap();
        assert_eq!(r.route, Route::Replica);
        assert!(r.explicit_route);
        assert_eq!(r.pin.as_deref(), Some("pg-2"));
        assert_eq!(m.options(), Some("-c statement_timeout=5s"));
    }

    #[test]
    fn options_holding_only_our_settings_are_removed() {
        let mut m = msg("-c pgsteer.route=any");
        take_request(&mut m, Route::Primary).unwrap();
        assert_eq!(m.options(), None);
    }

    #[test]
    fn unknown_settings_and_values_are_fatal() {
        let e = take_request(&mut msg("-c pgsteer.rout=replica"), Route::Primary).unwrap_err();
        assert_eq!(e.code, Some(SqlState::UNDEFINED_OBJECT));
        assert!(e.message.contains("pgsteer.rout"));
        let e = take_request(&mut msg("-c pgsteer.route=sideways"), Route::Primary).unwrap_err();
        assert_eq!(e.code, Some(SqlState::INVALID_PARAMETER_VALUE));
    }
}
